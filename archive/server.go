package archive

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/server"
)

// HostType is what `get host-type` answers.
const HostType = "archive"

// Server is the archive server: package server's framework (connections,
// handshake, common commands, foreground limit, shutdown) around an Engine,
// with a handler for every archive command and protocol. Build it with
// NewServer, then Run it.
type Server struct {
	srv  *server.Server
	ecfg Config
	e    *Engine
}

// NewServer returns a server for the engine configuration ecfg; scfg sets
// the address, id, limits and wire options (HostType is forced to
// "archive"). The engine is opened, and a crash recovered, when Run starts.
func NewServer(scfg server.Config, ecfg Config) (*Server, error) {
	scfg.HostType = HostType
	if scfg.Logger == nil {
		scfg.Logger = ecfg.Logger
	}
	if ecfg.Logger == nil {
		ecfg.Logger = scfg.Logger
	}
	srv, err := server.New(scfg)
	if err != nil {
		return nil, err
	}
	s := &Server{srv: srv, ecfg: ecfg}
	s.register()
	return s, nil
}

// Framework returns the underlying server (for Addr, Shutdown, Config).
func (s *Server) Framework() *server.Server { return s.srv }

// Listen binds the address, so that Addr is known before Run (port 0).
func (s *Server) Listen() error { return s.srv.Listen() }

// Addr returns the listening address (nil before Listen).
func (s *Server) Addr() net.Addr { return s.srv.Addr() }

// Engine returns the engine; nil until Run has recovered it.
func (s *Server) Engine() *Engine { return s.e }

// Run opens the engine (recovering from a crash), serves until a shutdown
// (the shutdown command, Shutdown, or ctx canceled, which forces it), then
// closes the engine.
func (s *Server) Run(ctx context.Context) error { return s.srv.Run(ctx, s) }

// Shutdown starts a graceful or forced shutdown; Run returns when it ends.
func (s *Server) Shutdown(mode server.ShutdownMode) { s.srv.Shutdown(mode) }

// Recover implements server.Service: it opens the engine, then finishes the
// applies a crash interrupted, in the background.
func (s *Server) Recover(ctx context.Context) error {
	e, err := Open(ctx, s.ecfg)
	if err != nil {
		return err
	}
	s.e = e
	if vols := e.Applying(); len(vols) > 0 {
		s.srv.Go("resume-apply", func(ctx context.Context) {
			if err := e.ResumeApplies(ctx); err != nil {
				server.LoggerFrom(ctx).Error("finishing interrupted applies", "err", err)
			}
		})
	}
	return nil
}

// Close implements io.Closer for the framework: it closes the engine.
func (s *Server) Close() error {
	if s.e == nil {
		return nil
	}
	return s.e.Close()
}

// Status implements server.StatusReporter: without arguments one line per
// volume, with a volume its detailed status.
func (s *Server) Status(ctx context.Context, args []string) ([]string, error) {
	switch len(args) {
	case 0:
		var lines []string
		for _, vol := range s.e.VolumeNames() {
			st, err := s.e.Status(vol)
			if err != nil {
				continue
			}
			lines = append(lines, fmt.Sprintf("volume\tname:%s\tstate:%s\tbase:%s\tlatest:%s\tsizeLb:%d\tnumDiff:%d\twdiffTotalSize:%d\tnumRestored:%d",
				vol, st.State, st.Base.StringTs(), st.Latest.StringTs(), st.SizeLB, st.NumDiff, st.WdiffTotalSize, st.NumRestored))
		}
		return lines, nil
	case 1:
		st, err := s.e.Status(args[0])
		if err != nil {
			return nil, err
		}
		return st.Lines(), nil
	}
	return nil, errors.Wrap(server.ErrBadArgs, "status [VOL]")
}

// register installs the handlers.
func (s *Server) register() {
	h := s.srv.Handle
	h(CmdNameInitVol, s.cmdInitVol)
	h(CmdNameClearVol, s.cmdClearVol)
	h(CmdNameResetVol, s.cmdResetVol)
	h(CmdNameStart, s.cmdStart)
	h(CmdNameStop, s.cmdStop)
	h(CmdNameRestore, s.cmdRestore)
	h(CmdNameDelRestored, s.cmdDelRestored)
	h(CmdNameApply, s.cmdApply)
	h(CmdNameMerge, s.cmdMerge)
	h(CmdNameGcDiff, s.cmdGcDiff)
	h(CmdNameResize, s.cmdResize)
	h(CmdNameDisableSnapshot, s.cmdSnapshotFlag(false))
	h(CmdNameEnableSnapshot, s.cmdSnapshotFlag(true))
	h(ProtoFullSync, s.serveFullSync)
	h(ProtoWdiffTransfer, s.serveWdiffTransfer)
	s.registerHashSync()
	s.registerReplication()
	s.registerGets()
}

// Argument helpers. Every handler validates its arguments before touching
// anything; errors wrap server.ErrBadArgs (wire.ErrBadRequest).

func wantArgs(args []string, min, max int, usage string) error {
	if len(args) < min || len(args) > max {
		return errors.Wrapf(server.ErrBadArgs, "usage: %s (got %d arguments)", usage, len(args))
	}
	return nil
}

func volArg(args []string, i int) (string, error) {
	if err := server.ValidateVolumeName(args[i]); err != nil {
		return "", err
	}
	return args[i], nil
}

func u64Arg(args []string, i int, what string) (uint64, error) {
	v, err := strconv.ParseUint(args[i], 10, 64)
	if err != nil {
		return 0, errors.Wrapf(server.ErrBadArgs, "%s %q is not a decimal number", what, args[i])
	}
	return v, nil
}

// ParseSize parses a size in bytes with an optional k/m/g/t/p suffix
// (powers of 1024), as walb-tools' size arguments.
func ParseSize(s string) (uint64, error) {
	if s == "" {
		return 0, errors.Wrap(server.ErrBadArgs, "empty size")
	}
	mul := uint64(1)
	switch strings.ToLower(s[len(s)-1:]) {
	case "k":
		mul = 1 << 10
	case "m":
		mul = 1 << 20
	case "g":
		mul = 1 << 30
	case "t":
		mul = 1 << 40
	case "p":
		mul = 1 << 50
	}
	num := s
	if mul != 1 {
		num = s[:len(s)-1]
	}
	v, err := strconv.ParseUint(num, 10, 64)
	if err != nil || v > (1<<63)/mul {
		return 0, errors.Wrapf(server.ErrBadArgs, "size %q", s)
	}
	return v * mul, nil
}

// logAfterAccept logs the failure of work that went on after accept: the
// client has gone, only the log can tell.
func logAfterAccept(ctx context.Context, what string, err error, attrs ...any) {
	log := server.LoggerFrom(ctx)
	if err != nil {
		log.Error(what+" failed", append(attrs, "err", err)...)
		return
	}
	log.Log(ctx, slog.LevelDebug, what+" succeeded", attrs...)
}
