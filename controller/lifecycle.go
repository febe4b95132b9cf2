package controller

import (
	"context"
	stderrors "errors"
	"slices"
	"strconv"

	"github.com/pkg/errors"
)

// StopMode is how stop ends a volume's activity.
type StopMode string

// Stop modes (walbc stop VOL [graceful|force|empty]).
const (
	// StopGraceful waits for running transfers to finish.
	StopGraceful StopMode = "graceful"
	// StopForce aborts them.
	StopForce StopMode = "force"
	// StopEmpty (proxies only) refuses new wlogs and stops once every
	// queued diff has reached its archive.
	StopEmpty StopMode = "empty"
)

// ShutdownMode is how a server shuts down.
type ShutdownMode string

// Shutdown modes (walbc shutdown [graceful|force]).
const (
	ShutdownGraceful ShutdownMode = "graceful"
	ShutdownForce    ShutdownMode = "force"
)

// InitVol runs init-vol: on a storage with its WalB device path, on an
// archive without (wdev must then be "").
func (c *Controller) InitVol(ctx context.Context, s Server, vol, wdev string) error {
	if err := needKind(s, KindStorage, KindArchive); err != nil {
		return err
	}
	if err := checkVol(vol); err != nil {
		return err
	}
	args := []string{vol}
	switch {
	case s.Kind == KindStorage && wdev == "":
		return errors.Wrapf(ErrBadArgs, "%s: init-vol %s needs the device path", s, vol)
	case s.Kind == KindStorage:
		args = append(args, wdev)
	case wdev != "":
		return errors.Wrapf(ErrBadArgs, "%s: an archive's init-vol takes no device", s)
	}
	return c.Client(s).Call(ctx, "init-vol", args...)
}

// InitStorage makes vol known to storage sx on device wdev and starts it
// as Standby (walb-tools init_storage): its logs are discarded until a
// full or hash backup makes it the target.
func (c *Controller) InitStorage(ctx context.Context, sx Server, vol, wdev string) error {
	if err := needKind(sx, KindStorage); err != nil {
		return err
	}
	if err := c.InitVol(ctx, sx, vol, wdev); err != nil {
		return err
	}
	return c.startStandby(ctx, sx, vol)
}

// startStandby moves a SyncReady storage volume to Standby.
func (c *Controller) startStandby(ctx context.Context, sx Server, vol string) error {
	if err := c.VerifyState(ctx, sx, vol, StateSyncReady); err != nil {
		return err
	}
	if err := c.Client(sx).Call(ctx, "start", vol, "standby"); err != nil {
		return err
	}
	sctx, cancel := c.short(ctx)
	defer cancel()
	_, err := c.WaitForStateChange(sctx, sx, vol, []string{"StartStandby"}, []string{StateStandby})
	return err
}

// GoStandby brings vol on storage sx to Standby from wherever it is
// (walb-tools go_standby): from SyncReady it starts standby; from Target it
// force-stops, stops synchronizing the primary archive, resets and starts
// standby. This is how a target replica hands over to another storage.
func (c *Controller) GoStandby(ctx context.Context, sx Server, vol string) error {
	if err := needKind(sx, KindStorage); err != nil {
		return err
	}
	st, err := c.GetState(ctx, sx, vol)
	if err != nil {
		return err
	}
	switch st {
	case StateStandby:
		return nil
	case StateSyncReady:
		return c.startStandby(ctx, sx, vol)
	case StateTarget:
		if err := c.Stop(ctx, sx, vol, StopForce); err != nil {
			return err
		}
		a0, err := c.layout.Primary()
		if err != nil {
			return err
		}
		if err := c.StopSynchronizing(ctx, a0, vol); err != nil {
			return err
		}
		if err := c.Reset(ctx, sx, vol); err != nil {
			return err
		}
		return c.startStandby(ctx, sx, vol)
	}
	return errors.Wrapf(ErrBadState, "%s: cannot go standby from %s", sx, st)
}

// ClearVol removes vol from s, stopping or resetting it first as needed
// (walb-tools clear): nothing to do if it is Clear already.
func (c *Controller) ClearVol(ctx context.Context, s Server, vol string) error {
	st, err := c.GetState(ctx, s, vol)
	if err != nil {
		return err
	}
	if st == StateClear {
		return nil
	}
	switch s.Kind {
	case KindStorage:
		if st == StateTarget || st == StateStandby {
			if err := c.Stop(ctx, s, vol, StopForce); err != nil {
				return err
			}
			if st, err = c.GetState(ctx, s, vol); err != nil {
				return err
			}
		}
		if st == StateStopped {
			if err := c.Reset(ctx, s, vol); err != nil {
				return err
			}
			st = StateSyncReady
		}
		if st != StateSyncReady {
			return errors.Wrapf(ErrBadState, "%s: cannot clear %s from %s", s, vol, st)
		}
	case KindProxy:
		if slices.Contains(proxyActive, st) {
			if err := c.Stop(ctx, s, vol, StopForce); err != nil {
				return err
			}
			if st, err = c.GetState(ctx, s, vol); err != nil {
				return err
			}
		}
		if st != StateStopped {
			return errors.Wrapf(ErrBadState, "%s: cannot clear %s from %s", s, vol, st)
		}
	case KindArchive:
		if st == StateArchived {
			if err := c.Stop(ctx, s, vol, StopForce); err != nil {
				return err
			}
			if st, err = c.GetState(ctx, s, vol); err != nil {
				return err
			}
		}
		if !slices.Contains(archiveAcceptForClearVol, st) {
			return errors.Wrapf(ErrBadState, "%s: cannot clear %s from %s", s, vol, st)
		}
	default:
		return needKind(s, KindStorage, KindProxy, KindArchive)
	}
	return c.Client(s).Call(ctx, "clear-vol", vol)
}

// Reset runs reset-vol on a storage (Stopped -> SyncReady, with a new log)
// or an archive (Stopped or SyncReady -> SyncReady, data dropped) and
// checks that the volume is SyncReady.
func (c *Controller) Reset(ctx context.Context, s Server, vol string) error {
	if err := needKind(s, KindStorage, KindArchive); err != nil {
		return err
	}
	if err := checkVol(vol); err != nil {
		return err
	}
	if err := c.Client(s).Call(ctx, "reset-vol", vol); err != nil {
		return err
	}
	return c.VerifyState(ctx, s, vol, StateSyncReady)
}

// Start starts vol on s and waits until it runs: a storage becomes
// Target, a proxy Started, an archive Archived.
func (c *Controller) Start(ctx context.Context, s Server, vol string) error {
	if err := checkVol(vol); err != nil {
		return err
	}
	var args, transient, goal []string
	switch s.Kind {
	case KindStorage:
		args, transient, goal = []string{vol, "target"}, []string{"StartTarget"}, []string{StateTarget}
	case KindProxy:
		args, transient, goal = []string{vol}, []string{"Start"}, proxyActive
	case KindArchive:
		args, transient, goal = []string{vol}, []string{"Start"}, archiveActive
	default:
		return needKind(s, KindStorage, KindProxy, KindArchive)
	}
	if err := c.Client(s).Call(ctx, "start", args...); err != nil {
		return err
	}
	sctx, cancel := c.short(ctx)
	defer cancel()
	_, err := c.WaitForStateChange(sctx, s, vol, transient, goal)
	return err
}

// StopNB sends stop and returns the state vol was in before, which
// WaitForStopped needs; the stop goes on in the server.
func (c *Controller) StopNB(ctx context.Context, s Server, vol string, mode StopMode) (prev string, err error) {
	switch mode {
	case StopGraceful, StopForce:
	case StopEmpty:
		if s.Kind != KindProxy {
			return "", errors.Wrapf(ErrBadArgs, "%s: stop mode empty is for proxies", s)
		}
	default:
		return "", errors.Wrapf(ErrBadArgs, "stop mode %q: want graceful, force or empty", mode)
	}
	if prev, err = c.GetState(ctx, s, vol); err != nil {
		return "", err
	}
	return prev, c.Client(s).Accept(ctx, "stop", vol, string(mode))
}

// Stop stops vol on s and waits until it is stopped: a Target storage
// becomes Stopped, a Standby one SyncReady, a proxy or archive Stopped.
func (c *Controller) Stop(ctx context.Context, s Server, vol string, mode StopMode) error {
	prev, err := c.StopNB(ctx, s, vol, mode)
	if err != nil {
		return err
	}
	sctx, cancel := c.short(ctx)
	defer cancel()
	return c.WaitForStopped(sctx, s, vol, prev)
}

// Shutdown asks s to shut down; the server answers accept and stops
// (graceful: after its running commands; force: aborting them).
func (c *Controller) Shutdown(ctx context.Context, s Server, mode ShutdownMode) error {
	if mode != ShutdownGraceful && mode != ShutdownForce {
		return errors.Wrapf(ErrBadArgs, "shutdown mode %q: want graceful or force", mode)
	}
	return c.Client(s).Accept(ctx, "shutdown", string(mode))
}

// ShutdownList shuts every server of ss down, going on after failures;
// the error joins them.
func (c *Controller) ShutdownList(ctx context.Context, ss []Server, mode ShutdownMode) error {
	var errs []error
	for _, s := range ss {
		if err := c.Shutdown(ctx, s, mode); err != nil {
			errs = append(errs, err)
		}
	}
	return stderrors.Join(errs...)
}

// ShutdownAll shuts the whole layout down, storages first (walb-tools
// starts archives, then proxies, then storages, and stops in reverse).
func (c *Controller) ShutdownAll(ctx context.Context, mode ShutdownMode) error {
	return c.ShutdownList(ctx, c.layout.All(), mode)
}

// Kick makes s retry its delayed work now: a storage re-checks its
// proxies and sends; a proxy clears its send errors and sends (args may
// narrow it to VOL [ARCHIVE]).
func (c *Controller) Kick(ctx context.Context, s Server, args ...string) error {
	return c.Client(s).Call(ctx, "kick", args...)
}

// KickAll kicks each server of ss (storages and proxies).
func (c *Controller) KickAll(ctx context.Context, ss []Server) error {
	for _, s := range ss {
		if err := needKind(s, KindStorage, KindProxy); err != nil {
			return err
		}
		if err := c.Kick(ctx, s); err != nil {
			return err
		}
	}
	return nil
}

// KickStorageAll kicks every storage of the layout.
func (c *Controller) KickStorageAll(ctx context.Context) error {
	return c.KickAll(ctx, c.layout.Storages)
}

// KickProxyAll kicks every proxy of the layout.
func (c *Controller) KickProxyAll(ctx context.Context) error {
	return c.KickAll(ctx, c.layout.Proxies)
}

// SetFullScanBps limits the read rate of full and hash backups on storage
// sx in bytes per second (0: unlimited).
func (c *Controller) SetFullScanBps(ctx context.Context, sx Server, bps uint64) error {
	if err := needKind(sx, KindStorage); err != nil {
		return err
	}
	return c.Client(sx).Call(ctx, "set-full-scan-bps", strconv.FormatUint(bps, 10))
}
