package archive

import (
	"context"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/server"
	"github.com/walb-go/walb/wire"
)

// Command names on the wire (walbc's spelling).
const (
	CmdNameInitVol         = "init-vol"
	CmdNameClearVol        = "clear-vol"
	CmdNameResetVol        = "reset-vol"
	CmdNameStart           = "start"
	CmdNameStop            = "stop"
	CmdNameRestore         = "restore"
	CmdNameDelRestored     = "del-restored"
	CmdNameApply           = "apply"
	CmdNameMerge           = "merge"
	CmdNameGcDiff          = "gc-diff"
	CmdNameResize          = "resize"
	CmdNameDisableSnapshot = "disable-snapshot"
	CmdNameEnableSnapshot  = "enable-snapshot"
)

// oneVol handles the commands that take only a volume and reply ok.
func (s *Server) oneVol(ctx context.Context, c *wire.Conn, args []string, usage string, run func(context.Context, string) error) error {
	if err := wantArgs(args, 1, 1, usage); err != nil {
		return err
	}
	vol, err := volArg(args, 0)
	if err != nil {
		return err
	}
	if err := run(ctx, vol); err != nil {
		return err
	}
	return c.SendOK(ctx)
}

// init-vol VOL: ok.
func (s *Server) cmdInitVol(ctx context.Context, c *wire.Conn, args []string) error {
	return s.oneVol(ctx, c, args, "init-vol VOL", s.e.InitVol)
}

// clear-vol VOL: ok.
func (s *Server) cmdClearVol(ctx context.Context, c *wire.Conn, args []string) error {
	return s.oneVol(ctx, c, args, "clear-vol VOL", s.e.ClearVol)
}

// reset-vol VOL: ok.
func (s *Server) cmdResetVol(ctx context.Context, c *wire.Conn, args []string) error {
	return s.oneVol(ctx, c, args, "reset-vol VOL", s.e.ResetVol)
}

// start VOL: ok.
func (s *Server) cmdStart(ctx context.Context, c *wire.Conn, args []string) error {
	return s.oneVol(ctx, c, args, "start VOL", s.e.Start)
}

// stop VOL [graceful|force]: accept at once, then the stop waits (up to
// StopWait) for running work and changes the state. "empty" is a proxy
// mode; the archive refuses it.
func (s *Server) cmdStop(ctx context.Context, c *wire.Conn, args []string) error {
	if err := wantArgs(args, 1, 2, "stop VOL [graceful|force]"); err != nil {
		return err
	}
	vol, err := volArg(args, 0)
	if err != nil {
		return err
	}
	mode := StopGraceful
	if len(args) == 2 {
		if mode, err = ParseStopMode(args[1]); err != nil {
			return err
		}
	}
	run, err := s.e.PrepareStop(vol, mode)
	if err != nil {
		return err
	}
	if err := c.SendAccept(ctx); err != nil {
		// The client is gone, but the stop was asked for: do it.
		server.LoggerFrom(ctx).Warn("stop: accept not delivered", "vol", vol, "err", err)
	}
	logAfterAccept(ctx, "stop", run(ctx), "vol", vol)
	return nil
}

// volGid parses "VOL GID".
func volGid(args []string, usage string) (string, uint64, error) {
	if err := wantArgs(args, 2, 2, usage); err != nil {
		return "", 0, err
	}
	vol, err := volArg(args, 0)
	if err != nil {
		return "", 0, err
	}
	gid, err := u64Arg(args, 1, "gid")
	return vol, gid, err
}

// prepared is a validated long command: Run it or Cancel it.
type prepared interface {
	Run(ctx context.Context) error
	Cancel()
}

// prep turns a Prepare result into a prepared (never a nil pointer in a
// non-nil interface).
func prep[T prepared](p T, err error) (prepared, error) {
	if err != nil {
		return nil, err
	}
	return p, nil
}

// runLong runs a long command the walb-tools way: take a foreground slot,
// prepare (every check, so that refusals get an error reply), reply
// accept, then run on the connection's goroutine.
func (s *Server) runLong(ctx context.Context, c *wire.Conn, what string, prepare func() (prepared, error), attrs ...any) error {
	release, err := s.srv.Foreground()
	if err != nil {
		return err
	}
	defer release()
	p, err := prepare()
	if err != nil {
		return err
	}
	if err := c.SendAccept(ctx); err != nil {
		p.Cancel()
		return err
	}
	logAfterAccept(ctx, what, p.Run(ctx), attrs...)
	return nil
}

// restore VOL GID: accept, then the restore runs.
func (s *Server) cmdRestore(ctx context.Context, c *wire.Conn, args []string) error {
	vol, gid, err := volGid(args, "restore VOL GID")
	if err != nil {
		return err
	}
	return s.runLong(ctx, c, "restore", func() (prepared, error) { return prep(s.e.PrepareRestore(vol, gid)) }, "vol", vol, "gid", gid)
}

// apply VOL GID: accept, then the apply runs.
func (s *Server) cmdApply(ctx context.Context, c *wire.Conn, args []string) error {
	vol, gid, err := volGid(args, "apply VOL GID")
	if err != nil {
		return err
	}
	return s.runLong(ctx, c, "apply", func() (prepared, error) { return prep(s.e.PrepareApply(vol, gid)) }, "vol", vol, "gid", gid)
}

// merge VOL GIDB size MB | merge VOL GIDB gid GIDE: accept, then the
// merge runs.
func (s *Server) cmdMerge(ctx context.Context, c *wire.Conn, args []string) error {
	const usage = "merge VOL GIDB size MB | merge VOL GIDB gid GIDE"
	if err := wantArgs(args, 4, 4, usage); err != nil {
		return err
	}
	vol, err := volArg(args, 0)
	if err != nil {
		return err
	}
	gidB, err := u64Arg(args, 1, "gidB")
	if err != nil {
		return err
	}
	n, err := u64Arg(args, 3, args[2])
	if err != nil {
		return err
	}
	r := MergeRange{GidB: gidB}
	switch args[2] {
	case "size":
		if n == 0 || n > 1<<40 {
			return errors.Wrapf(server.ErrBadArgs, "merge size %d MiB", n)
		}
		r.MaxBytes = n << 20
	case "gid":
		r.GidE = n
	default:
		return errors.Wrapf(server.ErrBadArgs, "usage: %s", usage)
	}
	return s.runLong(ctx, c, "merge", func() (prepared, error) { return prep(s.e.PrepareMerge(vol, r)) }, "vol", vol, "gidB", gidB)
}

// del-restored VOL GID: ok.
func (s *Server) cmdDelRestored(ctx context.Context, c *wire.Conn, args []string) error {
	vol, gid, err := volGid(args, "del-restored VOL GID")
	if err != nil {
		return err
	}
	if err := s.e.DelRestored(ctx, vol, gid); err != nil {
		return err
	}
	return c.SendOK(ctx)
}

// gc-diff VOL: ok, then the number of diffs removed.
func (s *Server) cmdGcDiff(ctx context.Context, c *wire.Conn, args []string) error {
	if err := wantArgs(args, 1, 1, "gc-diff VOL"); err != nil {
		return err
	}
	vol, err := volArg(args, 0)
	if err != nil {
		return err
	}
	gone, err := s.e.GcDiff(ctx, vol)
	if err != nil {
		return err
	}
	if err := c.SendOK(ctx); err != nil {
		return err
	}
	return c.SendU64(ctx, uint64(len(gone)))
}

// resize VOL SIZE [zeroclear]: ok once the base has grown. SIZE is in
// bytes with an optional k/m/g/t/p suffix and must be a whole number of
// blocks. The grown area always reads as zeros, so zeroclear changes
// nothing here.
func (s *Server) cmdResize(ctx context.Context, c *wire.Conn, args []string) error {
	if err := wantArgs(args, 2, 3, "resize VOL SIZE [zeroclear]"); err != nil {
		return err
	}
	vol, err := volArg(args, 0)
	if err != nil {
		return err
	}
	size, err := ParseSize(args[1])
	if err != nil {
		return err
	}
	if size == 0 || size%lbSize != 0 {
		return errors.Wrapf(server.ErrBadArgs, "resize: size %d is not a positive multiple of %d", size, lbSize)
	}
	if len(args) == 3 && args[2] != "zeroclear" {
		return errors.Wrapf(server.ErrBadArgs, "resize: unknown option %q", args[2])
	}
	if err := s.e.Resize(ctx, vol, size/lbSize); err != nil {
		return err
	}
	return c.SendOK(ctx)
}

// disable-snapshot / enable-snapshot VOL GID...: ok.
func (s *Server) cmdSnapshotFlag(enable bool) server.Handler {
	return func(ctx context.Context, c *wire.Conn, args []string) error {
		if err := wantArgs(args, 2, 1<<16, "disable-snapshot|enable-snapshot VOL GID..."); err != nil {
			return err
		}
		vol, err := volArg(args, 0)
		if err != nil {
			return err
		}
		gids := make([]uint64, 0, len(args)-1)
		for i := 1; i < len(args); i++ {
			g, err := u64Arg(args, i, "gid")
			if err != nil {
				return err
			}
			gids = append(gids, g)
		}
		if err := s.e.SetSnapshotEnabled(ctx, vol, gids, enable); err != nil {
			return err
		}
		return c.SendOK(ctx)
	}
}
