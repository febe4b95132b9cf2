package storage

import (
	"context"
	"strconv"
	"strings"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/server"
	"github.com/walb-go/walb/wire"
)

// HostType is what a storage answers to get host-type.
const HostType = "storage"

// Commands a storage Server answers besides package server's common ones
// (status, get, kick, shutdown, sleep, version, handler-stat).
const (
	CmdInitVol        = "init-vol"
	CmdClearVol       = "clear-vol"
	CmdResetVol       = "reset-vol"
	CmdStart          = "start"
	CmdStop           = "stop"
	CmdSnapshot       = "snapshot"
	CmdFullBkp        = "full-bkp"
	CmdHashBkp        = "hash-bkp"
	CmdResize         = "resize"
	CmdSetFullScanBps = "set-full-scan-bps"
)

// Get targets a storage Server answers besides host-type, pid and
// handler-stat.
const (
	GetState      = "state"
	GetVol        = "vol"
	GetIsOverflow = "is-overflow"
	GetLogUsage   = "log-usage"
	GetLatestSnap = "latest-snap"
	GetUUID       = "uuid"
	GetTsDelta    = "ts-delta"
	GetProgress   = "progress"
)

// Server serves a Storage over the network with package server: one
// handler per storage command (system.md §3, §9) and the get targets of
// §3.8. Replies follow walb-tools: ok (with a value for snapshot), or
// accept for stop, full-bkp and hash-bkp, which go on after the reply.
type Server struct {
	srv *server.Server
	st  *Storage
}

// NewServer builds a storage server. scfg configures the network side (ID,
// Addr, MaxConns, Wire, Logger); its HostType is set to "storage" and its
// foreground and background limits and retry delays are cfg's. cfg's ID and
// Logger default to scfg's.
func NewServer(scfg server.Config, cfg Config) (*Server, error) {
	scfg.HostType = HostType
	scfg.MaxForeground = cfg.MaxForeground
	scfg.MaxBackground = cfg.MaxBackground
	scfg.RetryMin, scfg.RetryMax = cfg.RetryMin, cfg.RetryMax
	srv, err := server.New(scfg)
	if err != nil {
		return nil, err
	}
	if cfg.ID == "" {
		cfg.ID = srv.Config().ID
	}
	if cfg.Logger == nil {
		cfg.Logger = srv.Logger()
	}
	if cfg.Foreground == nil {
		cfg.Foreground = srv.Foreground
	}
	cfg.Tasks = srv.Tasks()
	st, err := New(cfg)
	if err != nil {
		return nil, err
	}
	s := &Server{srv: srv, st: st}
	srv.Handle(CmdInitVol, s.initVol)
	srv.Handle(CmdClearVol, s.clearVol)
	srv.Handle(CmdResetVol, s.resetVol)
	srv.Handle(CmdStart, s.start)
	srv.Handle(CmdStop, s.stop)
	srv.Handle(CmdSnapshot, s.snapshot)
	srv.Handle(CmdFullBkp, s.backup(CmdFullBkp, s.st.FullBackup))
	srv.Handle(CmdHashBkp, s.backup(CmdHashBkp, s.st.HashBackup))
	srv.Handle(CmdResize, s.resize)
	srv.Handle(CmdSetFullScanBps, s.setFullScanBps)
	srv.HandleGet(GetState, s.getState)
	srv.HandleGet(GetVol, s.getVol)
	srv.HandleGet(GetIsOverflow, s.getIsOverflow)
	srv.HandleGet(GetLogUsage, s.getLogUsage)
	srv.HandleGet(GetLatestSnap, s.getLatestSnap)
	srv.HandleGet(GetUUID, s.getUUID)
	srv.HandleGet(GetTsDelta, s.getTsDelta)
	srv.HandleGet(GetProgress, s.getProgress)
	return s, nil
}

// Storage returns the engine.
func (s *Server) Storage() *Storage { return s.st }

// Server returns the network server (Listen, Addr, Shutdown).
func (s *Server) Server() *server.Server { return s.srv }

// Run serves until a shutdown (see server.Server.Run).
func (s *Server) Run(ctx context.Context) error { return s.srv.Run(ctx, s) }

// Recover loads the volumes and starts the storage's background work as a
// service loop (server.Service).
func (s *Server) Recover(ctx context.Context) error {
	if err := s.st.Recover(ctx); err != nil {
		return err
	}
	s.srv.Go("storage", func(ctx context.Context) { s.st.Run(ctx) })
	return nil
}

// RunTask runs a volume's extraction task (server.TaskRunner).
func (s *Server) RunTask(ctx context.Context, key string) error { return s.st.RunTask(ctx, key) }

// Close releases the volumes (io.Closer; called by Run at the end).
func (s *Server) Close() error { return s.st.Close() }

// Status answers status (server.StatusReporter): the global lines, or a
// volume's.
func (s *Server) Status(ctx context.Context, args []string) ([]string, error) {
	switch len(args) {
	case 0:
		return s.st.Status(ctx), nil
	case 1:
		if err := server.ValidateVolumeName(args[0]); err != nil {
			return nil, err
		}
		return s.st.VolStatus(ctx, args[0])
	}
	return nil, errors.Wrap(server.ErrBadArgs, "status [VOL]")
}

// Kick answers kick (server.Kicker); its arguments are ignored, as by
// walb-tools' storage.
func (s *Server) Kick(context.Context, []string) error {
	s.st.Kick()
	return nil
}

// argsN checks the argument count and returns args padded to max.
func argsN(args []string, lo, hi int, usage string) ([]string, error) {
	if len(args) < lo || len(args) > hi {
		return nil, errors.Wrapf(server.ErrBadArgs, "usage: %s (got %d arguments)", usage, len(args))
	}
	return append(args, make([]string, hi-len(args))...), nil
}

// ParseSize parses a size with an optional k/m/g/t/p suffix (powers of
// 1024), as walb-tools' size arguments.
func ParseSize(s string) (uint64, error) {
	t := strings.TrimSpace(s)
	shift := 0
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'k', 'K':
			shift = 10
		case 'm', 'M':
			shift = 20
		case 'g', 'G':
			shift = 30
		case 't', 'T':
			shift = 40
		case 'p', 'P':
			shift = 50
		}
		if shift > 0 {
			t = t[:n-1]
		}
	}
	v, err := strconv.ParseUint(t, 10, 64)
	if err != nil || v > ^uint64(0)>>shift {
		return 0, errors.Wrapf(server.ErrBadArgs, "bad size %q", s)
	}
	return v << shift, nil
}

func (s *Server) initVol(ctx context.Context, c *wire.Conn, args []string) error {
	a, err := argsN(args, 2, 2, "init-vol VOL WDEV")
	if err != nil {
		return err
	}
	if err := s.st.InitVol(ctx, a[0], a[1]); err != nil {
		return err
	}
	return c.SendOK(ctx)
}

func (s *Server) clearVol(ctx context.Context, c *wire.Conn, args []string) error {
	a, err := argsN(args, 1, 1, "clear-vol VOL")
	if err != nil {
		return err
	}
	if err := s.st.ClearVol(ctx, a[0]); err != nil {
		return err
	}
	return c.SendOK(ctx)
}

func (s *Server) resetVol(ctx context.Context, c *wire.Conn, args []string) error {
	a, err := argsN(args, 1, 2, "reset-vol VOL [GID]")
	if err != nil {
		return err
	}
	var gid uint64
	if a[1] != "" {
		if gid, err = strconv.ParseUint(a[1], 10, 64); err != nil {
			return errors.Wrapf(server.ErrBadArgs, "reset-vol: bad gid %q", a[1])
		}
	}
	if err := s.st.ResetVol(ctx, a[0], gid); err != nil {
		return err
	}
	return c.SendOK(ctx)
}

func (s *Server) start(ctx context.Context, c *wire.Conn, args []string) error {
	a, err := argsN(args, 1, 2, "start VOL [target|standby]")
	if err != nil {
		return err
	}
	mode := Target
	if a[1] != "" {
		if mode, err = ParseMode(a[1]); err != nil {
			return err
		}
	}
	if err := s.st.StartVol(ctx, a[0], mode); err != nil {
		return err
	}
	return c.SendOK(ctx)
}

// stop replies accept at once and then stops the volume, as walb-tools
// does; a failure after the reply is only logged.
func (s *Server) stop(ctx context.Context, c *wire.Conn, args []string) error {
	a, err := argsN(args, 1, 2, "stop VOL [graceful|force]")
	if err != nil {
		return err
	}
	mode, err := server.ParseStopMode(a[1], server.StopGraceful, server.StopForce)
	if err != nil {
		return err
	}
	if _, err := s.st.volume(a[0]); err != nil {
		return err
	}
	if err := c.SendAccept(ctx); err != nil {
		return err
	}
	return s.st.StopVol(ctx, a[0], mode == server.StopForce)
}

func (s *Server) snapshot(ctx context.Context, c *wire.Conn, args []string) error {
	a, err := argsN(args, 1, 1, "snapshot VOL")
	if err != nil {
		return err
	}
	gid, err := s.st.Snapshot(ctx, a[0])
	if err != nil {
		return err
	}
	if err := c.SendOK(ctx); err != nil {
		return err
	}
	return c.SendU64(ctx, gid)
}

// backup serves full-bkp or hash-bkp: it relays the archive's acceptance
// as accept (or its refusal as the error), then runs the backup on the
// connection's goroutine; a failure after the reply is only logged.
func (s *Server) backup(cmd string, run func(context.Context, string, BackupOptions) error) server.Handler {
	return func(ctx context.Context, c *wire.Conn, args []string) error {
		a, err := argsN(args, 1, 2, cmd+" VOL [BULK]")
		if err != nil {
			return err
		}
		var bulk uint64
		if a[1] != "" {
			if bulk, err = ParseSize(a[1]); err != nil {
				return err
			}
			if bulk == 0 {
				return errors.Wrapf(server.ErrBadArgs, "%s: bulk size 0", cmd)
			}
		}
		return run(ctx, a[0], BackupOptions{
			BulkSize: bulk,
			Accepted: func() {
				if err := c.SendAccept(ctx); err != nil {
					server.LoggerFrom(ctx).Warn(cmd+": accept not delivered; the backup goes on", "vol", a[0], "err", err)
				}
			},
		})
	}
}

func (s *Server) resize(ctx context.Context, c *wire.Conn, args []string) error {
	a, err := argsN(args, 2, 2, "resize VOL SIZE")
	if err != nil {
		return err
	}
	size, err := ParseSize(a[1])
	if err != nil {
		return err
	}
	if size%512 != 0 {
		return errors.Wrapf(server.ErrBadArgs, "resize: size %d is not a multiple of 512", size)
	}
	if err := s.st.Resize(ctx, a[0], size/512); err != nil {
		return err
	}
	return c.SendOK(ctx)
}

func (s *Server) setFullScanBps(ctx context.Context, c *wire.Conn, args []string) error {
	a, err := argsN(args, 1, 1, "set-full-scan-bps BPS")
	if err != nil {
		return err
	}
	bps, err := ParseSize(a[0])
	if err != nil {
		return err
	}
	s.st.SetFullScanBps(bps)
	server.LoggerFrom(ctx).Info("full scan throttle set", "bps", bps)
	return c.SendOK(ctx)
}

func oneVol(args []string, usage string) (string, error) {
	a, err := argsN(args, 1, 1, usage)
	if err != nil {
		return "", err
	}
	return a[0], server.ValidateVolumeName(a[0])
}

func (s *Server) getState(_ context.Context, args []string) (any, error) {
	vol, err := oneVol(args, "get state VOL")
	if err != nil {
		return nil, err
	}
	return s.st.State(vol), nil
}

func (s *Server) getVol(_ context.Context, args []string) (any, error) {
	if _, err := argsN(args, 0, 0, "get vol"); err != nil {
		return nil, err
	}
	return append([]string{}, s.st.VolumeNames()...), nil
}

func (s *Server) getIsOverflow(ctx context.Context, args []string) (any, error) {
	vol, err := oneVol(args, "get is-overflow VOL")
	if err != nil {
		return nil, err
	}
	return s.st.IsOverflow(ctx, vol)
}

func (s *Server) getLogUsage(ctx context.Context, args []string) (any, error) {
	a, err := argsN(args, 0, 1, "get log-usage [VOL]")
	if err != nil {
		return nil, err
	}
	lines := []string{}
	if a[0] == "" {
		for _, u := range s.st.LogUsageAll(ctx) {
			lines = append(lines, u.String())
		}
		return lines, nil
	}
	u, err := s.st.LogUsage(ctx, a[0])
	if err != nil {
		return nil, err
	}
	return append(lines, u.String()), nil
}

func (s *Server) getLatestSnap(_ context.Context, args []string) (any, error) {
	a, err := argsN(args, 0, 1, "get latest-snap [VOL]")
	if err != nil {
		return nil, err
	}
	lines := []string{}
	if a[0] == "" {
		for _, vol := range s.st.VolumeNames() {
			if i, ok := s.st.LatestSnap(vol); ok {
				lines = append(lines, LatestSnapLine(i))
			}
		}
		return lines, nil
	}
	if err := server.ValidateVolumeName(a[0]); err != nil {
		return nil, err
	}
	i, ok := s.st.LatestSnap(a[0])
	if !ok {
		return nil, errors.Wrapf(server.ErrWrongState, "latest-snap %s: not a Target volume (%s)", a[0], s.st.State(a[0]))
	}
	return append(lines, LatestSnapLine(i)), nil
}

func (s *Server) getUUID(_ context.Context, args []string) (any, error) {
	vol, err := oneVol(args, "get uuid VOL")
	if err != nil {
		return nil, err
	}
	u, err := s.st.UUID(vol)
	if err != nil {
		return nil, err
	}
	return u.String(), nil
}

func (s *Server) getTsDelta(_ context.Context, args []string) (any, error) {
	if _, err := argsN(args, 0, 0, "get ts-delta"); err != nil {
		return nil, err
	}
	return append([]string{}, s.st.TsDelta()...), nil
}

// getProgress answers get progress VOL: the logical blocks a running
// backup has dealt with (BackupProgress.DoneBytes), 0 when none runs, as
// the archive's get progress.
func (s *Server) getProgress(_ context.Context, args []string) (any, error) {
	vol, err := oneVol(args, "get progress VOL")
	if err != nil {
		return nil, err
	}
	if _, err := s.st.volume(vol); err != nil {
		return nil, err
	}
	p, _ := s.st.BackupProgress(vol)
	return p.DoneBytes() / 512, nil
}

// uuidOf parses a uuid get answer.
func uuidOf(s string) (meta.UUID, error) { return meta.ParseUUID(s) }
