package controller

import (
	"context"
	stderrors "errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/wire"
)

// Replication copies a volume from one archive (the source, the client of
// the transfer) to another (the destination, its server): a full copy the
// first time, then the diffs the destination lacks, or a hash comparison
// when the destination's base is newer than what the source still holds
// (system.md §5.6). The source runs it as its ReplSyncAsClient action after
// answering accept; the destination goes through ReplSyncAsServer (or
// FullSync, Resync from SyncReady). Synchronizing mode then makes every
// proxy forward the volume's diffs to the destination too (§5.7).

// ReplicateOptions are the optional arguments of a replication (walb-tools
// replicate_once_nbk). The zero value replicates up to the source's newest
// restorable snapshot with the servers' defaults.
type ReplicateOptions struct {
	// Gid is the snapshot to replicate up to. 0 takes the newest explicit
	// restorable snapshot of the source (gid 0 is never restorable: the
	// first clean snapshot of a full backup is at least 1).
	Gid uint64
	// Resync allows the destination to be brought in line by a resync (a
	// hash comparison of the whole image) when its lineage differs from
	// the source's (different archive UUIDs). It is required then, and
	// costly otherwise: an Archived destination is resynced whenever it is
	// set (walb-tools doResync).
	Resync bool
	// DontMerge sends the diffs one by one as they are, without merging or
	// recompressing them (walb-tools dontMerge).
	DontMerge bool
	// Sync sets the transfer's compression, merge limit and bulk size
	// (SyncOpt.ReplicateArgs); nil leaves the source archive's defaults.
	Sync *SyncOpt
}

func (o *ReplicateOptions) value() ReplicateOptions {
	if o == nil {
		return ReplicateOptions{}
	}
	return *o
}

func flagArg(b bool) string {
	if b {
		return "1"
	}
	return "0"
}

// checkReplPair checks the two archives of a replication and the volume.
func checkReplPair(aSrc Server, vol string, aDst Server) error {
	if err := needKind(aSrc, KindArchive); err != nil {
		return err
	}
	if err := needKind(aDst, KindArchive); err != nil {
		return err
	}
	if aSrc.Name == aDst.Name || aSrc.Addr == aDst.Addr {
		return errors.Wrapf(ErrBadArgs, "replication of %s from %s to itself", vol, aSrc)
	}
	return checkVol(vol)
}

// ReplicateOnceNB prepares and starts a replication of vol from archive
// aSrc to archive aDst and returns the gid it replicates up to once aSrc
// has accepted (walb-tools replicate_once_nbk):
//  1. vol must be active on aSrc, and Clear, SyncReady or active on aDst;
//  2. unless opt.Resync, an active aDst must have aSrc's archive UUID
//     (ErrUUIDMismatch otherwise);
//  3. the gid is opt.Gid, or aSrc's newest explicit restorable snapshot;
//     it must not be newer than aSrc's newest clean snapshot (ErrBadGid);
//  4. a Clear aDst gets the volume (init-vol); an aDst with a base image
//     smaller than aSrc's is grown to aSrc's size (a larger one is
//     refused: sizes never shrink);
//  5. aSrc gets replicate VOL gid GID ADDR DORESYNC DONTMERGE [CMPR
//     MAXMERGE BULK], ADDR being aDst.Addr (HOST:PORT or unix:PATH),
//     which aSrc must be able to reach.
//
// Nothing changes when a check of 1–3 fails. WaitForReplicated finishes
// the operation.
func (c *Controller) ReplicateOnceNB(ctx context.Context, aSrc Server, vol string, aDst Server, opt *ReplicateOptions) (gid uint64, err error) {
	o := opt.value()
	if err := checkReplPair(aSrc, vol, aDst); err != nil {
		return 0, err
	}
	if network, a := wire.ParseAddr(aDst.Addr); network == "unix" && a == "" {
		return 0, errors.Wrapf(ErrBadArgs, "%s: empty socket path", aDst)
	} else if host, _, err := net.SplitHostPort(a); network != "unix" && (err != nil || host == "") {
		return 0, errors.Wrapf(ErrBadArgs, "%s: a replication destination needs a HOST:PORT address the source can reach", aDst)
	}
	if o.Sync != nil {
		if err := o.Sync.Validate(); err != nil {
			return 0, err
		}
	}
	srcSt, err := c.GetState(ctx, aSrc, vol)
	if err != nil {
		return 0, err
	}
	if !IsArchiveActive(srcSt) {
		return 0, errors.Wrapf(ErrBadState, "%s: volume %s is %s; a replication source must be active", aSrc, vol, srcSt)
	}
	dstSt, err := c.GetState(ctx, aDst, vol)
	if err != nil {
		return 0, err
	}
	switch {
	case dstSt == StateClear, dstSt == StateSyncReady:
	case IsArchiveActive(dstSt):
		if !o.Resync {
			if err := c.verifySameLineage(ctx, aSrc, vol, aDst); err != nil {
				return 0, err
			}
		}
	default:
		return 0, errors.Wrapf(ErrBadState, "%s: volume %s is %s; a replication destination must be Clear, SyncReady or active", aDst, vol, dstSt)
	}
	if gid, err = c.replicationGid(ctx, aSrc, vol, o.Gid); err != nil {
		return 0, err
	}
	if dstSt == StateClear {
		if err := c.InitVol(ctx, aDst, vol, ""); err != nil {
			return 0, err
		}
	}
	if err := c.growForReplication(ctx, aSrc, vol, aDst); err != nil {
		return 0, err
	}
	args := []string{vol, "gid", gidStr(gid), aDst.Addr, flagArg(o.Resync), flagArg(o.DontMerge)}
	if o.Sync != nil {
		args = append(args, o.Sync.ReplicateArgs()...)
	}
	if err := c.Client(aSrc).Accept(ctx, "replicate", args...); err != nil {
		return 0, err
	}
	return gid, nil
}

// verifySameLineage fails with ErrUUIDMismatch unless vol has the same
// archive UUID on both archives.
func (c *Controller) verifySameLineage(ctx context.Context, aSrc Server, vol string, aDst Server) error {
	us, err := c.GetArchiveUUID(ctx, aSrc, vol)
	if err != nil {
		return err
	}
	ud, err := c.GetArchiveUUID(ctx, aDst, vol)
	if err != nil {
		return err
	}
	if us != ud {
		return errors.Wrapf(ErrUUIDMismatch, "volume %s: %s has archive uuid %s, %s has %s; replicate with resync",
			vol, aSrc.Name, us, aDst.Name, ud)
	}
	return nil
}

// replicationGid resolves and checks the gid a replication goes up to.
func (c *Controller) replicationGid(ctx context.Context, aSrc Server, vol string, want uint64) (uint64, error) {
	if want == 0 {
		return c.GetLatestClean(ctx, aSrc, vol)
	}
	all, err := c.GetRestorableGids(ctx, aSrc, vol, true)
	if err != nil {
		return 0, err
	}
	if len(all) == 0 {
		return 0, errors.Wrapf(ErrBadGid, "%s: volume %s has no restorable snapshot", aSrc, vol)
	}
	if latest := all[len(all)-1]; want > latest {
		return 0, errors.Wrapf(ErrBadGid, "%s: gid %d of %s is newer than its newest clean snapshot %d", aSrc, want, vol, latest)
	}
	return want, nil
}

// growForReplication grows aDst's base image to aSrc's size (walb-tools
// _grow_if_necessary_for_replicate); an aDst without a base image takes
// the source's size with the copy.
func (c *Controller) growForReplication(ctx context.Context, aSrc Server, vol string, aDst Server) error {
	exists, err := c.ExistsBaseImage(ctx, aDst, vol)
	if err != nil || !exists {
		return err
	}
	srcLB, err := c.GetVolSizeLB(ctx, aSrc, vol)
	if err != nil {
		return err
	}
	dstLB, err := c.GetVolSizeLB(ctx, aDst, vol)
	if err != nil {
		return err
	}
	switch {
	case srcLB < dstLB:
		return errors.Wrapf(ErrBadState, "volume %s is larger on the destination %s (%d LB) than on the source %s (%d LB)",
			vol, aDst.Name, dstLB, aSrc.Name, srcLB)
	case srcLB > dstLB:
		return c.resizeArchiveLB(ctx, aDst, vol, srcLB, false)
	}
	return nil
}

// WaitForReplicated waits until the replication of vol from aSrc to aDst
// has ended and checks that aDst can restore gid or a newer snapshot
// (walb-tools wait_for_replicated): the ReplSyncAsClient action is over
// on aSrc and aDst has left ReplSyncAsServer, FullSync and Resync. A
// replication that ended short of gid is ErrNotReached, with aDst's state
// and newest restorable snapshot; the archives report the cause only in
// their logs.
func (c *Controller) WaitForReplicated(ctx context.Context, aSrc Server, vol string, aDst Server, gid uint64) error {
	if err := checkReplPair(aSrc, vol, aDst); err != nil {
		return err
	}
	var dstSt string
	what := fmt.Sprintf("%s: replication of %s to %s to end", aSrc, vol, aDst.Name)
	err := c.poll(ctx, what, func(ctx context.Context) (bool, string, error) {
		n, err := c.GetNumAction(ctx, aSrc, vol, ActionReplSyncAsClient)
		if err != nil {
			return false, "", err
		}
		if n > 0 {
			return false, fmt.Sprintf("%d running on %s", n, aSrc.Name), nil
		}
		if dstSt, err = c.GetState(ctx, aDst, vol); err != nil {
			return false, "", err
		}
		return !slices.Contains(archiveDuringReplicate, dstSt), fmt.Sprintf("%s is %s", aDst.Name, dstSt), nil
	})
	if err != nil {
		return err
	}
	gids, err := c.GetRestorableGids(ctx, aDst, vol, true)
	if err != nil {
		return err
	}
	if len(gids) > 0 && gid <= gids[len(gids)-1] {
		return nil
	}
	have := "no restorable snapshot"
	if len(gids) > 0 {
		have = fmt.Sprintf("restorable up to gid %d", gids[len(gids)-1])
	}
	return errors.Wrapf(ErrNotReached, "replication of %s from %s to %s ended without reaching gid %d: %s is %s with %s (see %s's log)",
		vol, aSrc.Name, aDst.Name, gid, aDst.Name, dstSt, have, aSrc.Name)
}

// ReplicateOnce replicates vol from archive aSrc to archive aDst up to
// opt.Gid (default: aSrc's newest restorable snapshot) and waits for the
// end (walb-tools replicate_once): ReplicateOnceNB, then
// WaitForReplicated. It returns the gid; if the wait fails, the gid is
// returned with the error.
func (c *Controller) ReplicateOnce(ctx context.Context, aSrc Server, vol string, aDst Server, opt *ReplicateOptions) (uint64, error) {
	gid, err := c.ReplicateOnceNB(ctx, aSrc, vol, aDst, opt)
	if err != nil {
		return 0, err
	}
	return gid, c.WaitForReplicated(ctx, aSrc, vol, aDst, gid)
}

// Replicate replicates vol from archive aSrc to archive aDst once and,
// with synchronizing, then makes aDst synchronizing (walb-tools replicate):
// ReplicateOnce with opt, then Synchronize with opt.Sync. It returns the
// gid last replicated.
func (c *Controller) Replicate(ctx context.Context, aSrc Server, vol string, aDst Server, synchronizing bool, opt *ReplicateOptions) (uint64, error) {
	gid, err := c.ReplicateOnce(ctx, aSrc, vol, aDst, opt)
	if err != nil || !synchronizing {
		return gid, err
	}
	return c.Synchronize(ctx, aSrc, vol, aDst, opt.value().Sync)
}

// Synchronize makes archive aDst a synchronizing replica of vol, which
// archive aSrc holds and synchronizes (walb-tools synchronize, system.md
// §5.7):
//  1. every running proxy is stopped with empty: it takes no more logs and
//     stops once its queued diffs have reached their archives, so aSrc has
//     every diff the proxies received;
//  2. every proxy gets (or updates) an archive info for aDst, with sync's
//     compression and delay (nil: the proxies' defaults);
//  3. ReplicateOnce brings aDst to aSrc's newest snapshot (sync's
//     compression, merge limit and bulk size);
//  4. every proxy is started, and the storages are kicked to send the
//     logs held meanwhile, now to both archives.
//
// A replica synchronized from an archive that does not get every diff
// would miss those between its snapshot and the proxies' restart, so aSrc
// must be synchronizing (ErrBadState otherwise). Writes go on during the
// replication: the storages keep their logs until the proxies start. If
// a step fails, the archive infos added for aDst are deleted and the
// proxies that were running started again, so that backups go on
// (walb-tools leaves the proxies stopped). It returns the replicated gid.
func (c *Controller) Synchronize(ctx context.Context, aSrc Server, vol string, aDst Server, sync *SyncOpt) (uint64, error) {
	if err := checkReplPair(aSrc, vol, aDst); err != nil {
		return 0, err
	}
	if sync != nil {
		if err := sync.Validate(); err != nil {
			return 0, err
		}
	}
	if len(c.layout.Proxies) == 0 {
		return 0, errors.Wrap(ErrBadLayout, "no proxy: synchronizing needs the layout's proxies")
	}
	syncing, err := c.IsSynchronizing(ctx, aSrc, vol)
	if err != nil {
		return 0, err
	}
	if !syncing {
		return 0, errors.Wrapf(ErrBadState, "%s is not synchronizing %s: a replica made from it would miss diffs", aSrc, vol)
	}

	// 1. Stop the proxies once their queues are empty.
	var running, added []Server
	undo := func(cause error) error { return c.undoSynchronize(ctx, vol, aDst, added, running, cause) }
	for _, px := range c.layout.Proxies {
		st, err := c.GetState(ctx, px, vol)
		if err != nil {
			return 0, undo(err)
		}
		if st == StateClear || st == StateStopped {
			continue
		}
		running = append(running, px)
		if slices.Contains(proxyActive, st) {
			if _, err := c.StopNB(ctx, px, vol, StopEmpty); err != nil {
				return 0, undo(err)
			}
		}
		if err := c.WaitForStopped(ctx, px, vol, st); err != nil {
			return 0, undo(err)
		}
	}

	// 2. Register aDst on every proxy.
	for _, px := range c.layout.Proxies {
		names, err := c.GetArchiveInfoList(ctx, px, vol)
		if err != nil {
			return 0, undo(err)
		}
		cmd := "add"
		if slices.Contains(names, aDst.Name) {
			cmd = "update"
		}
		args, err := archiveInfoArgs(cmd, vol, aDst, sync)
		if err == nil {
			err = c.Client(px).Call(ctx, "archive-info", args...)
		}
		if err != nil {
			return 0, undo(err)
		}
		if cmd == "add" {
			added = append(added, px)
		}
	}

	// 3. Replicate while nothing new reaches aSrc.
	gid, err := c.ReplicateOnce(ctx, aSrc, vol, aDst, &ReplicateOptions{Sync: sync})
	if err != nil {
		return gid, undo(err)
	}

	// 4. Forward again, to both.
	for _, px := range c.layout.Proxies {
		if err := c.Start(ctx, px, vol); err != nil {
			return gid, err
		}
	}
	return gid, c.KickStorageAll(ctx)
}

// undoSynchronize runs after a failed Synchronize: it deletes the archive
// infos added for aDst and starts the proxies that were running before, so
// that the storages' logs flow to the other archives instead of piling up.
// It runs even if ctx has ended, within ShortTimeout, and returns cause
// with any failure of its own.
func (c *Controller) undoSynchronize(ctx context.Context, vol string, aDst Server, added, running []Server, cause error) error {
	uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.opt.ShortTimeout)
	defer cancel()
	var errs []error
	for _, px := range added {
		if err := c.Client(px).Call(uctx, "archive-info", "delete", vol, aDst.Name); err != nil {
			errs = append(errs, err)
		}
	}
	for _, px := range running {
		st, err := c.GetState(uctx, px, vol)
		if err == nil && st == StateStopped {
			err = c.Start(uctx, px, vol)
		}
		if err != nil {
			errs = append(errs, err)
		}
	}
	if err := c.KickStorageAll(uctx); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		err := stderrors.Join(errs...)
		c.opt.Logger.WarnContext(ctx, "synchronize: undo incomplete", "vol", vol, "peer", aDst.Name, "err", err)
		return errors.WithMessagef(cause, "(undo incomplete: %v)", err)
	}
	return cause
}

// BlockHash returns the block hashes of vol's image at gid on archive ax
// (walb-tools get_block_hash, bhash VOL GID [BULK [SIZE]]), read as it was
// at gid without restoring it: one line, the hash of the scanned range,
// with bulk 0 (size must then be 0: the whole image); otherwise one
// "ADDR<TAB>HASH" line per bulk bytes (ADDR the bulk's first block in 16
// hex digits) over the first size bytes (0: all of them). The hashes are
// the bhash tool's, so they compare with it run on a device or a restored
// image, and two archives' answers check a replica.
func (c *Controller) BlockHash(ctx context.Context, ax Server, vol string, gid, bulk, size uint64) ([]string, error) {
	if err := needKind(ax, KindArchive); err != nil {
		return nil, err
	}
	if err := checkVol(vol); err != nil {
		return nil, err
	}
	args := []string{vol, gidStr(gid)}
	switch {
	case bulk == 0 && size > 0:
		return nil, errors.Wrap(ErrBadArgs, "bhash: a scan size needs a bulk size")
	case bulk > 0:
		args = append(args, FormatSize(bulk))
		if size > 0 {
			args = append(args, FormatSize(size))
		}
	}
	v, err := c.Client(ax).CallValue(ctx, StringsValue, "bhash", args...)
	if err != nil {
		return nil, err
	}
	lines, _ := v.([]string)
	return lines, nil
}

// Progress is how far the copy of a volume's image has come: a full or
// hash backup on the storage that reads the device and on the archive that
// receives it, or a replication on either archive (get progress, with the
// state and size).
type Progress struct {
	// State is the volume's state on the server: FullSync or HashSync
	// while a backup runs, ReplSyncAsServer or Resync on a replication's
	// destination.
	State string
	// DoneLB is how many logical blocks the running copy has done; 0 when
	// none runs.
	DoneLB uint64
	// SizeLB is the volume's size in logical blocks; 0 while unknown (an
	// archive volume without a base image yet).
	SizeLB uint64
}

// Fraction returns DoneLB/SizeLB in [0, 1]; 0 while the size is unknown.
func (p Progress) Fraction() float64 {
	if p.SizeLB == 0 {
		return 0
	}
	return min(1, float64(p.DoneLB)/float64(p.SizeLB))
}

// String returns "STATE 42.0% (DONE / SIZE LB)", or "STATE DONE LB" while
// the size is unknown.
func (p Progress) String() string {
	if p.SizeLB == 0 {
		return fmt.Sprintf("%s %d LB", p.State, p.DoneLB)
	}
	return fmt.Sprintf("%s %5.1f%% (%d / %d LB)", p.State, 100*p.Fraction(), p.DoneLB, p.SizeLB)
}

// GetProgress returns the progress of the copy running on vol on a
// storage (the backup it reads; the size is the device's, from its
// status) or an archive (the backup or replication it receives or sends;
// walb-tools get_progress_lb).
func (c *Controller) GetProgress(ctx context.Context, s Server, vol string) (Progress, error) {
	if err := needKind(s, KindStorage, KindArchive); err != nil {
		return Progress{}, err
	}
	st, err := c.GetState(ctx, s, vol)
	if err != nil {
		return Progress{}, err
	}
	p := Progress{State: st}
	if p.DoneLB, err = c.Client(s).GetU64(ctx, "progress", vol); err != nil {
		return Progress{}, err
	}
	if s.Kind == KindStorage {
		lines, err := c.Client(s).Status(ctx, vol)
		if err != nil {
			return Progress{}, err
		}
		p.SizeLB = statusU64(lines, "sizeLb")
		return p, nil
	}
	// An archive volume without a base has no size yet; not a failure.
	if p.SizeLB, err = c.GetVolSizeLB(ctx, s, vol); err != nil {
		if !errors.Is(err, wire.ErrRemote) {
			return Progress{}, err
		}
		p.SizeLB = 0
	}
	return p, nil
}

// statusU64 returns the number of the "KEY N" line of status lines, 0 if
// there is none.
func statusU64(lines []string, key string) uint64 {
	for _, l := range lines {
		if v, ok := strings.CutPrefix(l, key+" "); ok {
			if n, err := strconv.ParseUint(v, 10, 64); err == nil {
				return n
			}
		}
	}
	return 0
}
