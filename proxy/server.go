package proxy

import (
	"context"
	"net"
	"strconv"
	"strings"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/server"
	"github.com/walb-go/walb/wire"
)

// HostType is what a proxy answers to get host-type.
const HostType = "proxy"

// Commands a proxy serves besides the common ones of package server
// (status, get, kick, shutdown, sleep, version, handler-stat).
const (
	CmdArchiveInfo  = "archive-info"
	CmdStart        = "start"
	CmdStop         = "stop"
	CmdClearVol     = "clear-vol"
	CmdResize       = "resize"
	CmdWlogTransfer = "wlog-transfer"
)

// Get targets a proxy answers besides host-type, pid and handler-stat.
const (
	GetState            = "state"
	GetVol              = "vol"
	GetIsWdiffSendError = "is-wdiff-send-error"
	GetLatestSnap       = "latest-snap"
	GetProxyDiff        = "proxy-diff"
)

// Server is the proxy daemon: a Proxy driven by the connections of a
// server.Server (system.md §4, §6). It is the server.Service the framework
// runs: Recover loads the volumes, RunTask sends wdiffs, Status and Kick
// answer those commands, and Close releases the proxy.
type Server struct {
	srv *server.Server
	p   *Proxy
}

// NewServer builds a proxy server. scfg configures the network side
// (HostType is set to "proxy"); pcfg the proxy, whose task queue and
// foreground limit become the framework's (-bg, -fg).
func NewServer(scfg server.Config, pcfg Config) (*Server, error) {
	scfg.HostType = HostType
	if scfg.RetryMin == 0 {
		scfg.RetryMin = pcfg.Delay
	}
	if scfg.RetryMax == 0 {
		scfg.RetryMax = pcfg.MaxDelay
	}
	srv, err := server.New(scfg)
	if err != nil {
		return nil, err
	}
	pcfg.Tasks = srv.Tasks()
	pcfg.Foreground = srv.Foreground
	if pcfg.Logger == nil {
		pcfg.Logger = srv.Logger()
	}
	p, err := New(pcfg)
	if err != nil {
		return nil, err
	}
	s := &Server{srv: srv, p: p}
	srv.Handle(CmdArchiveInfo, s.cmdArchiveInfo)
	srv.Handle(CmdStart, s.cmdStart)
	srv.Handle(CmdStop, s.cmdStop)
	srv.Handle(CmdClearVol, s.cmdClearVol)
	srv.Handle(CmdResize, s.cmdResize)
	srv.Handle(CmdWlogTransfer, s.handleWlogTransfer)
	srv.HandleGet(GetState, s.getState)
	srv.HandleGet(GetVol, s.getVol)
	srv.HandleGet(GetIsWdiffSendError, s.getIsWdiffSendError)
	srv.HandleGet(GetLatestSnap, s.getLatestSnap)
	srv.HandleGet(GetProxyDiff, s.getProxyDiff)
	return s, nil
}

// Proxy returns the volume manager.
func (s *Server) Proxy() *Proxy { return s.p }

// Framework returns the underlying server.Server.
func (s *Server) Framework() *server.Server { return s.srv }

// Listen binds the address early, so Addr tells the port of ":0".
func (s *Server) Listen() error { return s.srv.Listen() }

// Addr returns the listening address (nil before Listen or Run).
func (s *Server) Addr() net.Addr { return s.srv.Addr() }

// Run serves until a shutdown (the shutdown command, Shutdown, or ctx
// done, which forces it).
func (s *Server) Run(ctx context.Context) error { return s.srv.Run(ctx, s) }

// Shutdown starts a graceful or forced shutdown; Run returns when it ends.
func (s *Server) Shutdown(mode server.ShutdownMode) { s.srv.Shutdown(mode) }

// Recover implements server.Service.
func (s *Server) Recover(ctx context.Context) error { return s.p.Recover(ctx) }

// RunTask implements server.TaskRunner: the sends to archives.
func (s *Server) RunTask(ctx context.Context, key string) error { return s.p.RunTask(ctx, key) }

// Status implements server.StatusReporter.
func (s *Server) Status(ctx context.Context, args []string) ([]string, error) {
	return s.p.Status(ctx, args)
}

// Kick implements server.Kicker: kick [VOL [ARCHIVE]].
func (s *Server) Kick(ctx context.Context, args []string) error {
	if len(args) > 2 {
		return errors.Wrapf(server.ErrBadArgs, "kick [VOL [ARCHIVE]], got %q", args)
	}
	args = append(args, "", "")
	return s.p.Kick(ctx, args[0], args[1])
}

// Close implements io.Closer; the framework calls it last.
func (s *Server) Close() error { return s.p.Close() }

// nargs checks the argument count.
func nargs(args []string, lo, hi int, usage string) error {
	if len(args) < lo || len(args) > hi {
		return errors.Wrapf(server.ErrBadArgs, "usage: %s; got %q", usage, args)
	}
	for _, a := range args {
		if a == "" {
			return errors.Wrapf(server.ErrBadArgs, "usage: %s; empty argument in %q", usage, args)
		}
	}
	return nil
}

// archive-info add|update VOL NAME ADDR:PORT [TYPE:LEVEL:NCPU [DELAY]]: ok
// archive-info delete VOL NAME: ok
// archive-info get VOL NAME: ok, string "ADDR:PORT TYPE:LEVEL:NCPU DELAY"
// archive-info list VOL: ok, strings (archive names)
func (s *Server) cmdArchiveInfo(ctx context.Context, c *wire.Conn, args []string) error {
	const usage = "archive-info add|update VOL NAME ADDR:PORT [TYPE:LEVEL:NCPU [DELAY]] | delete|get VOL NAME | list VOL"
	if err := nargs(args, 2, 6, usage); err != nil {
		return err
	}
	sub, vol := args[0], args[1]
	switch sub {
	case "add", "update":
		if err := nargs(args, 4, 6, usage); err != nil {
			return err
		}
		info, err := ParseArchiveInfo(args[3:])
		if err != nil {
			return err
		}
		if err := s.p.AddArchiveInfo(ctx, vol, args[2], info, sub == "update"); err != nil {
			return err
		}
		return c.SendOK(ctx)
	case "delete":
		if err := nargs(args, 3, 3, usage); err != nil {
			return err
		}
		if err := s.p.DeleteArchiveInfo(ctx, vol, args[2]); err != nil {
			return err
		}
		return c.SendOK(ctx)
	case "get":
		if err := nargs(args, 3, 3, usage); err != nil {
			return err
		}
		info, err := s.p.ArchiveInfo(vol, args[2])
		if err != nil {
			return err
		}
		if err := c.SendOK(ctx); err != nil {
			return err
		}
		return c.SendString(ctx, info.String())
	case "list":
		if err := nargs(args, 2, 2, usage); err != nil {
			return err
		}
		names, err := s.p.ArchiveNames(vol)
		if err != nil {
			return err
		}
		if err := c.SendOK(ctx); err != nil {
			return err
		}
		return c.SendStrings(ctx, names)
	}
	return errors.Wrapf(server.ErrBadArgs, "archive-info: unknown subcommand %q", sub)
}

// start VOL: ok once Started.
func (s *Server) cmdStart(ctx context.Context, c *wire.Conn, args []string) error {
	if err := nargs(args, 1, 1, "start VOL"); err != nil {
		return err
	}
	if err := s.p.Start(ctx, args[0]); err != nil {
		return err
	}
	return c.SendOK(ctx)
}

// stop VOL [graceful|force|empty]: accept, then the stop runs on this
// connection's goroutine (a failure is logged and, if the client still
// listens, sent).
func (s *Server) cmdStop(ctx context.Context, c *wire.Conn, args []string) error {
	if err := nargs(args, 1, 2, "stop VOL [graceful|force|empty]"); err != nil {
		return err
	}
	mode := StopGraceful
	if len(args) == 2 {
		var err error
		if mode, err = ParseStopMode(args[1]); err != nil {
			return err
		}
	}
	if err := server.ValidateVolumeName(args[0]); err != nil {
		return err
	}
	if err := c.SendAccept(ctx); err != nil {
		return err
	}
	return s.p.Stop(ctx, args[0], mode)
}

// clear-vol VOL: ok.
func (s *Server) cmdClearVol(ctx context.Context, c *wire.Conn, args []string) error {
	if err := nargs(args, 1, 1, "clear-vol VOL"); err != nil {
		return err
	}
	if err := s.p.ClearVol(ctx, args[0]); err != nil {
		return err
	}
	return c.SendOK(ctx)
}

// resize VOL SIZE: ok. SIZE is in bytes with an optional k/m/g/t/p suffix
// (powers of 1024), a positive multiple of 512.
func (s *Server) cmdResize(ctx context.Context, c *wire.Conn, args []string) error {
	if err := nargs(args, 2, 2, "resize VOL SIZE"); err != nil {
		return err
	}
	size, err := ParseSize(args[1])
	if err != nil {
		return err
	}
	if size == 0 || size%512 != 0 {
		return errors.Wrapf(server.ErrBadArgs, "resize: size %d is not a positive multiple of 512", size)
	}
	if err := s.p.Resize(ctx, args[0], size/512); err != nil {
		return err
	}
	return c.SendOK(ctx)
}

// ParseSize parses a byte count with an optional k, m, g, t or p suffix
// (either case; powers of 1024), as walb-tools' size arguments.
func ParseSize(s string) (uint64, error) {
	shift := 0
	if n := len(s); n > 0 {
		switch strings.ToLower(s[n-1:]) {
		case "k":
			shift = 10
		case "m":
			shift = 20
		case "g":
			shift = 30
		case "t":
			shift = 40
		case "p":
			shift = 50
		}
		if shift > 0 {
			s = s[:n-1]
		}
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil || v > (^uint64(0))>>shift {
		return 0, errors.Wrapf(server.ErrBadArgs, "bad size %q", s)
	}
	return v << shift, nil
}

// get state VOL: the state name.
func (s *Server) getState(_ context.Context, args []string) (any, error) {
	if err := nargs(args, 1, 1, "get state VOL"); err != nil {
		return nil, err
	}
	if err := server.ValidateVolumeName(args[0]); err != nil {
		return nil, err
	}
	return s.p.State(args[0]), nil
}

// get vol: the volumes that are not Clear.
func (s *Server) getVol(_ context.Context, args []string) (any, error) {
	if err := nargs(args, 0, 0, "get vol"); err != nil {
		return nil, err
	}
	return s.p.VolumeNames(), nil
}

// get is-wdiff-send-error VOL ARCHIVE: a bool.
func (s *Server) getIsWdiffSendError(_ context.Context, args []string) (any, error) {
	if err := nargs(args, 2, 2, "get is-wdiff-send-error VOL ARCHIVE"); err != nil {
		return nil, err
	}
	return s.p.IsWdiffSendError(args[0], args[1])
}

// get latest-snap [VOL]: strings.
func (s *Server) getLatestSnap(_ context.Context, args []string) (any, error) {
	if err := nargs(args, 0, 1, "get latest-snap [VOL]"); err != nil {
		return nil, err
	}
	vol := ""
	if len(args) == 1 {
		vol = args[0]
	}
	return s.p.LatestSnap(vol)
}

// get proxy-diff VOL [ARCHIVE]: strings, the listing of received/ or of
// the archive's queue.
func (s *Server) getProxyDiff(_ context.Context, args []string) (any, error) {
	if err := nargs(args, 1, 2, "get proxy-diff VOL [ARCHIVE]"); err != nil {
		return nil, err
	}
	archive := ""
	if len(args) == 2 {
		archive = args[1]
	}
	return s.p.ProxyDiff(args[0], archive)
}
