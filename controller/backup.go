package controller

import (
	"context"
	"fmt"
	"slices"

	"github.com/pkg/errors"
)

// BackupOptions are the optional arguments of FullBackup and HashBackup.
type BackupOptions struct {
	// BulkSize is the copy unit in bytes (0: the storage's default, 256
	// KiB; at most 4 MiB).
	BulkSize uint64
	// Sync sets the archive info the primary archive gets on every proxy
	// (nil: the proxies' defaults, snappy:0:1 and no delay).
	Sync *SyncOpt
}

func (o *BackupOptions) args(vol string) []string {
	args := []string{vol}
	if o != nil && o.BulkSize > 0 {
		args = append(args, fmt.Sprint(o.BulkSize))
	}
	return args
}

func (o *BackupOptions) sync() *SyncOpt {
	if o == nil {
		return nil
	}
	return o.Sync
}

// PrepareBackup readies a backup of vol from storage sx (walb-tools
// _prepare_backup):
//  1. sx's volume is brought to SyncReady (a Standby one is stopped, a
//     Stopped one reset; a Target one is refused: stop it first);
//  2. every other storage must have vol Standby or Clear (one target per
//     volume);
//  3. every archive stops synchronizing;
//  4. the primary archive gets the volume (init-vol) if it is Clear;
//  5. the primary archive starts synchronizing, with opt's options.
func (c *Controller) PrepareBackup(ctx context.Context, sx Server, vol string, opt *SyncOpt) error {
	if err := needKind(sx, KindStorage); err != nil {
		return err
	}
	a0, err := c.layout.Primary()
	if err != nil {
		return err
	}
	st, err := c.GetState(ctx, sx, vol)
	if err != nil {
		return err
	}
	switch st {
	case StateSyncReady:
	case StateStandby:
		if err := c.Stop(ctx, sx, vol, StopGraceful); err != nil {
			return err
		}
	case StateStopped:
		if err := c.Reset(ctx, sx, vol); err != nil {
			return err
		}
	default:
		return errors.Wrapf(ErrBadState, "%s: volume %s is %s; stop it before a backup", sx, vol, st)
	}
	for _, s := range c.layout.Storages {
		if s.Name == sx.Name {
			continue
		}
		st, err := c.GetState(ctx, s, vol)
		if err != nil {
			return err
		}
		if !slices.Contains(storageStandbyOrClear, st) {
			return errors.Wrapf(ErrBadState, "%s: volume %s is %s; other storages must be Standby or Clear during a backup from %s", s, vol, st, sx.Name)
		}
	}
	for _, ax := range c.layout.Archives {
		syncing, err := c.IsSynchronizing(ctx, ax, vol)
		if err != nil && !errors.Is(err, ErrMixedSync) {
			return err
		}
		// A half-synchronizing archive is cleaned up the same way.
		if syncing || err != nil {
			if err := c.StopSynchronizing(ctx, ax, vol); err != nil {
				return err
			}
		}
	}
	if st, err = c.GetState(ctx, a0, vol); err != nil {
		return err
	}
	if st == StateClear {
		if err := c.InitVol(ctx, a0, vol, ""); err != nil {
			return err
		}
	}
	return c.StartSynchronizing(ctx, a0, vol, opt)
}

// FullBackupNB prepares and starts a full backup of vol from storage sx
// to the primary archive and returns once the storage accepted it.
func (c *Controller) FullBackupNB(ctx context.Context, sx Server, vol string, opt *BackupOptions) error {
	if err := c.PrepareBackup(ctx, sx, vol, opt.sync()); err != nil {
		return err
	}
	return c.Client(sx).Accept(ctx, "full-bkp", opt.args(vol)...)
}

// FullBackup runs a full backup of vol from storage sx to the primary
// archive (walb-tools full_backup): PrepareBackup, full-bkp, then it
// waits for the storage to become Target (the image is copied), checks
// that the primary is active, kicks the proxies so that the logs written
// during the copy reach the primary at once, and waits for the first
// restorable snapshot. It returns that snapshot's gid (the newest of the
// restorable list when it first is not empty, as walb-tools does).
func (c *Controller) FullBackup(ctx context.Context, sx Server, vol string, opt *BackupOptions) (uint64, error) {
	if err := c.FullBackupNB(ctx, sx, vol, opt); err != nil {
		return 0, err
	}
	return c.finishBackup(ctx, sx, vol, storageDuringFullSync, nil)
}

// HashBackupNB prepares and starts a hash backup (only the blocks that
// differ from the primary archive's latest image are sent) and returns
// once the storage accepted it.
func (c *Controller) HashBackupNB(ctx context.Context, sx Server, vol string, opt *BackupOptions) error {
	if err := c.PrepareBackup(ctx, sx, vol, opt.sync()); err != nil {
		return err
	}
	return c.Client(sx).Accept(ctx, "hash-bkp", opt.args(vol)...)
}

// HashBackup runs a hash backup of vol from storage sx (walb-tools
// hash_backup): like FullBackup, and the gid it returns is newer than
// every snapshot restorable before.
func (c *Controller) HashBackup(ctx context.Context, sx Server, vol string, opt *BackupOptions) (uint64, error) {
	a0, err := c.layout.Primary()
	if err != nil {
		return 0, err
	}
	if err := c.PrepareBackup(ctx, sx, vol, opt.sync()); err != nil {
		return 0, err
	}
	var prev *uint64
	if st, err := c.GetState(ctx, a0, vol); err != nil {
		return 0, err
	} else if IsArchiveActive(st) {
		gids, err := c.GetRestorableGids(ctx, a0, vol, false)
		if err != nil {
			return 0, err
		}
		if len(gids) > 0 {
			prev = &gids[len(gids)-1]
		}
	}
	if err := c.Client(sx).Accept(ctx, "hash-bkp", opt.args(vol)...); err != nil {
		return 0, err
	}
	return c.finishBackup(ctx, sx, vol, storageDuringHashSync, prev)
}

// finishBackup waits for the end of a backup and its first restorable
// snapshot newer than after (any if nil).
func (c *Controller) finishBackup(ctx context.Context, sx Server, vol string, during []string, after *uint64) (uint64, error) {
	a0, err := c.layout.Primary()
	if err != nil {
		return 0, err
	}
	if _, err := c.WaitForStateChange(ctx, sx, vol, during, []string{StateTarget}); err != nil {
		return 0, errors.WithMessage(err, "backup failed")
	}
	st, err := c.GetState(ctx, a0, vol)
	if err != nil {
		return 0, err
	}
	if !IsArchiveActive(st) {
		return 0, errors.Wrapf(ErrNotReached, "%s: backup of %s from %s ended but the archive is %s", a0, vol, sx.Name, st)
	}
	if err := c.KickProxyAll(ctx); err != nil {
		return 0, err
	}
	var gid uint64
	err = c.poll(ctx, fmt.Sprintf("%s: a restorable snapshot of %s after the backup", a0, vol), func(ctx context.Context) (bool, string, error) {
		gids, err := c.GetRestorableGids(ctx, a0, vol, false)
		if err != nil || len(gids) == 0 {
			return false, fmt.Sprint(gids), err
		}
		gid = gids[len(gids)-1]
		return after == nil || gid > *after, fmt.Sprint(gids), nil
	})
	return gid, err
}

// WaitForBackup waits until the full or hash backup of vol running on
// storage sx has copied the image and the storage is Target again
// (ErrBadState if it rolled back to SyncReady: the backup failed).
func (c *Controller) WaitForBackup(ctx context.Context, sx Server, vol string) error {
	if err := needKind(sx, KindStorage); err != nil {
		return err
	}
	during := append(slices.Clone(storageDuringFullSync), "HashSync")
	_, err := c.WaitForStateChange(ctx, sx, vol, during, []string{StateTarget})
	return errors.WithMessage(err, "backup failed")
}

// SnapshotNB takes an explicit snapshot of vol on storage sx and returns
// its gid; the archives get it when the logs up to it have flowed there.
func (c *Controller) SnapshotNB(ctx context.Context, sx Server, vol string) (uint64, error) {
	if err := needKind(sx, KindStorage); err != nil {
		return 0, err
	}
	if err := checkVol(vol); err != nil {
		return 0, err
	}
	v, err := c.Client(sx).CallValue(ctx, U64Value, "snapshot", vol)
	if err != nil {
		return 0, err
	}
	gid, _ := v.(uint64)
	return gid, nil
}

// Snapshot takes an explicit snapshot of vol on storage sx and waits
// until it is restorable on every archive of axs (walb-tools snapshot).
// The archives must be active and the storage Target, or nothing would
// ever arrive. If the wait fails, the gid is returned with the error.
func (c *Controller) Snapshot(ctx context.Context, sx Server, vol string, axs []Server) (uint64, error) {
	for _, ax := range axs {
		if err := needKind(ax, KindArchive); err != nil {
			return 0, err
		}
		st, err := c.GetState(ctx, ax, vol)
		if err != nil {
			return 0, err
		}
		if !IsArchiveActive(st) {
			return 0, errors.Wrapf(ErrBadState, "%s: volume %s is %s, not active", ax, vol, st)
		}
	}
	gid, err := c.SnapshotNB(ctx, sx, vol)
	if err != nil {
		return 0, err
	}
	if err := c.VerifyState(ctx, sx, vol, StateTarget); err != nil {
		return gid, errors.WithMessagef(err, "snapshot %d taken but cannot be waited for", gid)
	}
	for _, ax := range axs {
		if err := c.WaitForRestorable(ctx, ax, vol, gid); err != nil {
			return gid, err
		}
	}
	return gid, nil
}
