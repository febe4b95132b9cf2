package controller

import (
	"context"
	"slices"
	"strconv"
	"time"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/wire"
)

// delRetries and delRetryDelay are walb-tools' del-restored / del-cold
// retries: the image may still be busy (open by a reader) for a moment.
const delRetries = 3

var delRetryDelay = time.Second // a variable for the tests

// RestoredImage is a restored snapshot on an archive's host: Path is the
// image (a file or block device there), Export the NBD export name under
// which the archive serves it, if it does ("" otherwise).
type RestoredImage struct {
	Vol    string
	Gid    uint64
	Path   string
	Export string
}

// RestoreNB checks that gid of vol is not restored yet on ax and starts
// its restore.
func (c *Controller) RestoreNB(ctx context.Context, ax Server, vol string, gid uint64) error {
	gids, err := c.GetRestored(ctx, ax, vol)
	if err != nil {
		return err
	}
	if slices.Contains(gids, gid) {
		return errors.Wrapf(ErrBadGid, "%s: gid %d of %s is already restored", ax, gid, vol)
	}
	return c.Client(ax).Accept(ctx, "restore", vol, gidStr(gid))
}

// Restore materializes snapshot gid of vol on archive ax as a read-only
// image and returns where it is (walb-tools restore, then
// get_restored_path). gid must be restorable (GetRestorable).
func (c *Controller) Restore(ctx context.Context, ax Server, vol string, gid uint64) (RestoredImage, error) {
	if err := c.RestoreNB(ctx, ax, vol, gid); err != nil {
		return RestoredImage{}, err
	}
	if err := c.WaitForRestored(ctx, ax, vol, gid); err != nil {
		return RestoredImage{}, err
	}
	return c.RestoredImage(ctx, ax, vol, gid)
}

// RestoredImage locates the restored image of gid of vol on ax. An archive
// without get restored-path (walb-tools') gets walb-tools' LV path,
// /dev/VG/wr_VOL_GID.
func (c *Controller) RestoredImage(ctx context.Context, ax Server, vol string, gid uint64) (RestoredImage, error) {
	img := RestoredImage{Vol: vol, Gid: gid}
	var err error
	if img.Path, err = c.GetRestoredPath(ctx, ax, vol, gid); err != nil {
		if !errors.Is(err, wire.ErrRemote) {
			return RestoredImage{}, err
		}
		vg, verr := c.Client(ax).GetString(ctx, "volume-group")
		if verr != nil {
			return RestoredImage{}, err
		}
		img.Path = "/dev/" + vg + "/wr_" + vol + "_" + gidStr(gid)
	}
	if img.Export, err = c.GetRestoredExport(ctx, ax, vol, gid); err != nil {
		if !errors.Is(err, wire.ErrRemote) {
			return RestoredImage{}, err
		}
		img.Export = "" // the archive exports nothing
	}
	return img, nil
}

// DelRestored deletes the restored image of gid of vol on ax and waits
// until it is gone (three tries a second apart, as walb-tools).
func (c *Controller) DelRestored(ctx context.Context, ax Server, vol string, gid uint64) error {
	return c.delGid(ctx, ax, vol, gid, "del-restored", "restored")
}

// DelCold deletes the cold snapshot gid of vol on ax (thin mode) and waits
// until it is gone.
func (c *Controller) DelCold(ctx context.Context, ax Server, vol string, gid uint64) error {
	return c.delGid(ctx, ax, vol, gid, "del-cold", "cold")
}

func (c *Controller) delGid(ctx context.Context, ax Server, vol string, gid uint64, cmd, target string) error {
	if err := needKind(ax, KindArchive); err != nil {
		return err
	}
	if err := checkVol(vol); err != nil {
		return err
	}
	var err error
	for i := 0; i < delRetries; i++ {
		if i > 0 {
			gids, gerr := c.archiveGids(ctx, ax, target, vol)
			if gerr != nil {
				return gerr
			}
			if !slices.Contains(gids, gid) {
				err = nil
				break
			}
		}
		if err = c.Client(ax).Call(ctx, cmd, vol, gidStr(gid)); err == nil {
			break
		}
		c.opt.Logger.WarnContext(ctx, cmd+" failed; retrying", "peer", ax.Name, "vol", vol, "gid", gid, "err", err)
		if i+1 < delRetries {
			if serr := sleepCtx(ctx, delRetryDelay); serr != nil {
				return errors.WithMessagef(err, "%s (interrupted: %v)", cmd, serr)
			}
		}
	}
	if err != nil {
		return err
	}
	sctx, cancel := c.short(ctx)
	defer cancel()
	return c.waitForNotGid(sctx, ax, vol, target, gid)
}

// checkApplyGid requires gid to end one of vol's applicable diffs.
func (c *Controller) checkApplyGid(ctx context.Context, ax Server, vol string, gid uint64) error {
	ds, err := c.GetApplicableDiffList(ctx, ax, vol, LatestGid)
	if err != nil {
		return err
	}
	for _, d := range ds {
		if d.SnapE.GidB == gid {
			return nil
		}
	}
	return errors.Wrapf(ErrBadGid, "%s: gid %d ends no applicable diff of %s", ax, gid, vol)
}

// ApplyNB checks gid and starts applying vol's diffs up to gid into the
// base image on ax.
func (c *Controller) ApplyNB(ctx context.Context, ax Server, vol string, gid uint64) error {
	if err := c.checkApplyGid(ctx, ax, vol, gid); err != nil {
		return err
	}
	return c.Client(ax).Accept(ctx, "apply", vol, gidStr(gid))
}

// Apply applies vol's diffs up to gid into the base image on ax and waits
// for the end (walb-tools apply): gid must end an applicable diff; after
// it, snapshots older than gid are gone and gid is the oldest restorable.
func (c *Controller) Apply(ctx context.Context, ax Server, vol string, gid uint64) error {
	if err := c.ApplyNB(ctx, ax, vol, gid); err != nil {
		return err
	}
	return c.WaitForApplied(ctx, ax, vol, gid)
}

// MergeNB checks the bounds and starts merging vol's diffs from gidB to
// gidE on ax into one.
func (c *Controller) MergeNB(ctx context.Context, ax Server, vol string, gidB, gidE uint64) error {
	if gidB >= gidE {
		return errors.Wrapf(ErrBadArgs, "merge range [%d, %d] is empty", gidB, gidE)
	}
	ds, err := c.GetApplicableDiffList(ctx, ax, vol, gidE)
	if err != nil {
		return err
	}
	var hasB, hasE bool
	for _, d := range ds {
		hasB = hasB || d.SnapB.GidB == gidB
		hasE = hasE || d.SnapE.GidB == gidE
	}
	if !hasB || !hasE {
		return errors.Wrapf(ErrBadGid, "%s: merge of %s needs exact diff boundaries, %d and %d are not", ax, vol, gidB, gidE)
	}
	return c.Client(ax).Accept(ctx, "merge", vol, gidStr(gidB), "gid", gidStr(gidE))
}

// Merge merges vol's diffs from gidB to gidE on ax into one and waits until
// the merged diff is there (walb-tools merge). gidB and gidE must be
// boundaries of applicable diffs; a merge never crosses an explicit
// snapshot or a compared diff, so disable the snapshots in between first.
func (c *Controller) Merge(ctx context.Context, ax Server, vol string, gidB, gidE uint64) error {
	if err := c.MergeNB(ctx, ax, vol, gidB, gidE); err != nil {
		return err
	}
	return c.WaitForMerged(ctx, ax, vol, gidB, gidE)
}

// EnableSnapshot makes the snapshots gids of vol on ax explicit again:
// listed as restorable by default and never merged away.
func (c *Controller) EnableSnapshot(ctx context.Context, ax Server, vol string, gids ...uint64) error {
	return c.snapshotFlag(ctx, ax, vol, "enable-snapshot", gids)
}

// DisableSnapshot makes the snapshots gids of vol on ax implicit, so that
// merges may go across them.
func (c *Controller) DisableSnapshot(ctx context.Context, ax Server, vol string, gids ...uint64) error {
	return c.snapshotFlag(ctx, ax, vol, "disable-snapshot", gids)
}

func (c *Controller) snapshotFlag(ctx context.Context, ax Server, vol, cmd string, gids []uint64) error {
	if err := needKind(ax, KindArchive); err != nil {
		return err
	}
	if err := checkVol(vol); err != nil {
		return err
	}
	if len(gids) == 0 {
		return errors.Wrapf(ErrBadArgs, "%s needs at least one gid", cmd)
	}
	args := []string{vol}
	for _, g := range gids {
		args = append(args, gidStr(g))
	}
	return c.Client(ax).Call(ctx, cmd, args...)
}

// GcDiff removes vol's diffs on ax that are off the chain from the base,
// and returns how many went (0 from a server that does not say).
func (c *Controller) GcDiff(ctx context.Context, ax Server, vol string) (uint64, error) {
	if err := needKind(ax, KindArchive); err != nil {
		return 0, err
	}
	if err := checkVol(vol); err != nil {
		return 0, err
	}
	req := Request{Command: "gc-diff", Args: []string{vol}, Value: U64Value, ValueOptional: true}
	resp, err := c.Client(ax).Do(ctx, req)
	if err != nil {
		return 0, err
	}
	if resp.Reply != wire.ReplyOK {
		return 0, errors.Wrapf(wire.ErrUnexpectedReply, "%s gc-diff %s: got %s, want ok", ax, vol, resp.Reply)
	}
	n, _ := resp.Value.(uint64)
	return n, nil
}

// ResizeArchive grows vol's base image on ax to sizeMB MiB (walb-tools
// resize_archive); zeroClear zero-fills the new area. A Clear volume and
// an unchanged size are no-ops; shrinking is refused.
func (c *Controller) ResizeArchive(ctx context.Context, ax Server, vol string, sizeMB uint64, zeroClear bool) error {
	if err := needKind(ax, KindArchive); err != nil {
		return err
	}
	if sizeMB == 0 || sizeMB > 1<<43 {
		return errors.Wrapf(ErrBadArgs, "resize %s to %d MiB", vol, sizeMB)
	}
	return c.resizeArchiveLB(ctx, ax, vol, sizeMB<<11, zeroClear)
}

// resizeArchiveLB grows vol on ax to newLB logical blocks and checks the
// result. The size is sent in MiB when it is a whole number of them (as
// walb-tools does), in bytes otherwise.
func (c *Controller) resizeArchiveLB(ctx context.Context, ax Server, vol string, newLB uint64, zeroClear bool) error {
	st, err := c.GetState(ctx, ax, vol)
	if err != nil {
		return err
	}
	if st == StateClear {
		return nil
	}
	if !slices.Contains(archiveAcceptForResize, st) {
		return errors.Wrapf(ErrBadState, "%s: cannot resize %s in state %s", ax, vol, st)
	}
	oldLB, err := c.GetVolSizeLB(ctx, ax, vol)
	if err != nil {
		return err
	}
	switch {
	case oldLB == newLB:
		return nil
	case oldLB > newLB:
		return errors.Wrapf(ErrBadArgs, "%s: shrinking %s from %d to %d LB is not supported", ax, vol, oldLB, newLB)
	}
	size := strconv.FormatUint(newLB*512, 10)
	if newLB%(1<<11) == 0 {
		size = strconv.FormatUint(newLB>>11, 10) + "m"
	}
	args := []string{vol, size}
	if zeroClear {
		args = append(args, "zeroclear")
	}
	if err := c.Client(ax).Call(ctx, "resize", args...); err != nil {
		return err
	}
	sctx, cancel := c.short(ctx)
	defer cancel()
	if err := c.WaitForNoAction(sctx, ax, vol, ActionResize); err != nil {
		return err
	}
	cur, err := c.GetVolSizeLB(ctx, ax, vol)
	if err != nil {
		return err
	}
	if cur != newLB {
		return errors.Wrapf(ErrNotReached, "%s: %s is %d LB after resizing to %d LB (a restored image may block it)", ax, vol, cur, newLB)
	}
	return nil
}

// ResizeStorage tells storage sx that vol's device grew (grow its data
// device first); sizeMB 0 takes the data device's size. A Clear volume is
// a no-op.
func (c *Controller) ResizeStorage(ctx context.Context, sx Server, vol string, sizeMB uint64) error {
	if err := needKind(sx, KindStorage); err != nil {
		return err
	}
	if sizeMB > 1<<43 {
		return errors.Wrapf(ErrBadArgs, "resize %s to %d MiB", vol, sizeMB)
	}
	st, err := c.GetState(ctx, sx, vol)
	if err != nil {
		return err
	}
	if st == StateClear {
		return nil
	}
	return c.Client(sx).Call(ctx, "resize", vol, strconv.FormatUint(sizeMB, 10)+"m")
}

// Resize grows vol to sizeMB MiB on every archive, then on every storage
// (walb-tools resize): archives first, so that they never refuse the
// bigger diffs (smaller-lv-size).
func (c *Controller) Resize(ctx context.Context, vol string, sizeMB uint64, zeroClear bool) error {
	for _, ax := range c.layout.Archives {
		if err := c.ResizeArchive(ctx, ax, vol, sizeMB, zeroClear); err != nil {
			return err
		}
	}
	for _, sx := range c.layout.Storages {
		if err := c.ResizeStorage(ctx, sx, vol, sizeMB); err != nil {
			return err
		}
	}
	return nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
