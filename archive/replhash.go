package archive

import (
	"context"
	"time"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/hashsync"
	"github.com/walb-go/walb/imagestore"
	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/server"
	"github.com/walb-go/walb/wdiff"
	"github.com/walb-go/walb/wire"
)

// The two steps of a replication that compare images with package
// hashsync rather than send diffs: RESYNC (the target's raw base patched
// in place to become the source's oldest state) and HASH (a compared diff
// from the target's latest snapshot to the source's oldest clean one, for
// a target whose diffs the source has already applied). In both the
// target is the hash side and the source the data side, scanning a
// virtual image.

// hashSession is the comparison of [0, sizeLB) in chunks of bulkLB blocks;
// the hash side draws the seed.
func hashSession(sizeLB, bulkLB uint64) hashsync.Session {
	return hashsync.Session{ChunkSize: int(bulkLB * lbSize), Start: 0, End: int64(sizeLB * lbSize)}
}

// dataOptions are the source's options for a comparison of sizeLB blocks
// in chunks of bulkLB: the session the target announces must be exactly
// that.
func (r *ReplicateCheck) dataOptions(sizeLB uint64) hashsync.DataOptions {
	return hashsync.DataOptions{
		Compression:     *r.opt.Compression,
		ExpectEnd:       int64(sizeLB * lbSize),
		ExpectChunkSize: int(r.opt.BulkLB) * lbSize,
		Progress:        func(st hashsync.Stats) { r.v.progressLB.Store(uint64(st.Offset) / lbSize) },
	}
}

// runResync is the source side of RESYNC: it sends its oldest state (the
// base completed by its minimum list) and lets the target compare its raw
// base with the virtual image at that state.
func (r *ReplicateCheck) runResync(ctx context.Context) error {
	e, v, c := r.e, r.v, r.c
	var img *virtualImage
	var oldest meta.State
	// Making the image may take a while (a clone, diffs applied): the
	// target waits for the header meanwhile.
	stop := c.KeepAlive(ctx, 0)
	defer stop()
	for try := 0; ; try++ {
		base := v.getBase()
		list := v.diffs.MinimumList(base)
		st, err := base.EndApplying(list)
		if err != nil {
			return errorf(ErrNotRestorable, "resync %s: base %s cannot be completed: %v", v.name, base, err)
		}
		img, err = e.openVirtual(ctx, v, list)
		if errors.Is(err, errStaleList) && try < maxStaleRetries {
			continue
		}
		if err != nil {
			return err
		}
		oldest = st
		break
	}
	stop()
	defer img.Close()
	sizeLB, uuid := uint64(img.Size())/lbSize, r.uuid()
	if err := r.sendHashHeader(ctx, sizeLB, func() error { return c.SendValue(ctx, oldest) }, uuid); err != nil {
		return err
	}
	if err := c.ExpectOK(ctx); err != nil {
		return err
	}
	e.logv(v.name).Info("resync sending", "sizeLb", sizeLB, "state", oldest.StringTs())
	st, err := hashsync.WireDataSide(ctx, c, img, r.dataOptions(sizeLB))
	if err != nil {
		return errors.WithMessagef(err, "archive: resync %s", v.name)
	}
	if err := c.RecvAck(ctx); err != nil {
		return err
	}
	e.logv(v.name).Info("resync sent", "stats", st.String())
	r.observe(ReplEvent{Step: ReplStepResync, Remote: oldest})
	return nil
}

func (r *ReplicateCheck) uuid() meta.UUID {
	_, u := r.v.sourceInfo()
	return u
}

// sendHashHeader sends SIZE_LB, BULK_LB, the step's state or diff (sent by
// value), and the device uuid.
func (r *ReplicateCheck) sendHashHeader(ctx context.Context, sizeLB uint64, value func() error, uuid meta.UUID) error {
	c := r.c
	if err := c.SendU64(ctx, sizeLB); err != nil {
		return err
	}
	if err := c.SendU64(ctx, uint64(r.opt.BulkLB)); err != nil {
		return err
	}
	if err := value(); err != nil {
		return err
	}
	return c.SendBytes(ctx, uuid[:])
}

// runHash is the source side of HASH: the compared diff from the target's
// latest snapshot srv to the source's oldest clean snapshot (mergeable and
// compared, stamped with that snapshot's time), made by the target
// comparing its latest image with the source's image there.
func (r *ReplicateCheck) runHash(ctx context.Context, srv meta.State) error {
	e, v, c := r.e, r.v, r.c
	oldest, err := v.diffs.OldestCleanState(v.getBase())
	if err != nil {
		return errorf(ErrReplTiming, "hash-repl %s: %v", v.name, err)
	}
	d := meta.Diff{SnapB: srv.SnapB, SnapE: oldest.SnapB, Mergeable: true, CompDiff: true, Timestamp: oldest.Timestamp}
	if srv.SnapB.GidB >= oldest.SnapB.GidB || d.Validate() != nil {
		return errorf(ErrReplTiming, "hash-repl %s: cannot compare the target's %s with the oldest clean snapshot %s", v.name, srv.SnapB, oldest.SnapB)
	}
	stop := c.KeepAlive(ctx, 0)
	img, err := e.openVirtualGid(ctx, v, oldest.SnapB.GidB)
	stop()
	if err != nil {
		return err
	}
	defer img.Close()
	sizeLB := uint64(img.Size()) / lbSize
	if err := r.sendHashHeader(ctx, sizeLB, func() error { return c.SendValue(ctx, d) }, r.uuid()); err != nil {
		return err
	}
	if err := c.ExpectOK(ctx); err != nil {
		return err
	}
	st, err := hashsync.WireDataSide(ctx, c, img, r.dataOptions(sizeLB))
	if err != nil {
		return errors.WithMessagef(err, "archive: hash-repl %s", v.name)
	}
	if err := c.RecvAck(ctx); err != nil {
		return err
	}
	e.logv(v.name).Info("hash-repl sent", "diff", d.String(), "stats", st.String())
	r.observe(ReplEvent{Step: ReplStepHash, Diff: d, Remote: srv})
	return nil
}

// serveHash is the target side of HASH: in ReplSyncAsServer, the image at
// the latest snapshot (which the compared diff must start at) is compared
// with the source's, and the chunks that differ go into a temporary sorted
// wdiff, which becomes the diff once complete. A failure leaves the volume
// Archived with its diffs unchanged.
func (rs *replServer) serveHash(ctx context.Context, c *wire.Conn, sent meta.State) error {
	e, v := rs.e, rs.v
	sizeLB, bulkLB, d, uuid, err := recvHashHeader(ctx, c)
	if err != nil {
		return err
	}
	if !d.CompDiff || d.SnapB != sent.SnapB {
		return errorf(ErrNotApplicableDiff, "hash-repl %s: diff %s%s does not start at the latest snapshot %s", v.name, d, d.Flags(), sent.SnapB)
	}
	tx, err := rs.beginStep(ctx, sizeLB, sent, d)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	ctx, done := v.actionContext(ctx)
	defer done()
	defer v.progressLB.Store(0)
	stop := c.KeepAlive(ctx, 0)
	img, err := e.openVirtualSnap(ctx, v, sent.SnapB)
	stop()
	if err != nil {
		return err
	}
	defer img.Close()
	tmp, err := meta.CreateTemp(v.dir, 0o644)
	if err != nil {
		return errors.Wrapf(err, "archive: hash-repl %s", v.name)
	}
	defer func() {
		if tmp != nil {
			_ = tmp.Abort()
		}
	}()
	w := &syncingFileWriter{f: tmp.File, interval: e.cfg.fsyncInterval()}
	sw, err := wdiff.NewSortedWriter(w, wdiff.FileHeader{Type: wdiff.TypeSorted, UUID: uuid}, wdiff.DefaultCompression)
	if err != nil {
		return errors.Wrapf(err, "archive: hash-repl %s", v.name)
	}
	if err := c.SendOK(ctx); err != nil {
		return err
	}
	st, err := hashsync.WireHashSide(ctx, c, img, hashSession(sizeLB, bulkLB), &checkedSink{w: sw, vol: v.name}, rs.hashOptions())
	if cerr := sw.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = w.err
	}
	if err != nil {
		return replHashErr(ctx, err, "hash-repl", v.name)
	}
	_ = img.Close()
	stop = c.KeepAlive(ctx, 0)
	_, err = v.commitComparedDiff("hash-repl", tx, tmp, d, uuid)
	stop()
	if err != nil {
		return err
	}
	tmp = nil
	e.logv(v.name).Info("hash-repl received", "diff", d.String(), "stats", st.String())
	return c.SendAck(ctx)
}

func (rs *replServer) hashOptions() hashsync.HashOptions {
	return hashsync.HashOptions{Checkpoint: func(st hashsync.Stats) error {
		rs.v.progressLB.Store(uint64(st.Offset) / lbSize)
		return nil
	}}
}

// replHashErr classifies a failed comparison like a hash backup's.
func replHashErr(ctx context.Context, err error, what, vol string) error {
	if cerr := ctx.Err(); cerr != nil {
		return errors.Wrapf(cerr, "archive: %s %s", what, vol)
	}
	return errors.WithMessage(hashStreamErr(err, vol), what)
}

// recvHashHeader receives what opens a HASH step.
func recvHashHeader(ctx context.Context, c *wire.Conn) (sizeLB, bulkLB uint64, d meta.Diff, uuid meta.UUID, err error) {
	if sizeLB, bulkLB, uuid, err = recvStepHeader(ctx, c, &d); err != nil {
		return
	}
	err = checkHashSizes(sizeLB, bulkLB)
	return
}

func checkHashSizes(sizeLB, bulkLB uint64) error {
	if sizeLB == 0 || sizeLB > maxVolumeLB {
		return errorf(ErrBadArgs, "repl-sync: size %d LB", sizeLB)
	}
	if bulkLB == 0 || bulkLB*lbSize > hashsync.MaxChunkSize {
		return errorf(ErrBadArgs, "repl-sync: bulk of %d LB (1..%d)", bulkLB, hashsync.MaxChunkSize/lbSize)
	}
	return nil
}

// serveResync is the target side of RESYNC. The volume leaves its lineage
// first (Archived -> Stop -> Stopped -> ResetVol -> SyncReady, persisted,
// with its restored images and diffs dropped and the base image kept),
// then in Resync its raw base is compared with the source's image at the
// source's oldest state and patched in place, chunk by chunk. Only then do
// the base state, the uuids and Archived change. A cut leaves SyncReady: a
// retry with doResync resyncs again, one without copies the whole image.
func (rs *replServer) serveResync(ctx context.Context, c *wire.Conn) error {
	e, v := rs.e, rs.v
	sizeLB, bulkLB, st, uuid, err := recvReplHeader(ctx, c)
	if err != nil {
		return err
	}
	if err := checkHashSizes(sizeLB, bulkLB); err != nil {
		return err
	}
	if st.IsApplying {
		return errorf(ErrBadArgs, "resync %s: state %s is applying", v.name, st)
	}
	stop := c.KeepAlive(ctx, 0)
	tx, img, err := rs.beginResync(ctx, sizeLB)
	stop()
	if err != nil {
		return err
	}
	defer tx.Rollback()
	ctx, done := v.actionContext(ctx)
	defer done()
	defer v.progressLB.Store(0)
	defer img.Close()
	if err := c.SendOK(ctx); err != nil {
		return err
	}
	e.logv(v.name).Info("resync started", "sizeLb", sizeLB, "state", st.StringTs())
	patch := &imagePatcher{img: img, vol: v.name, interval: e.cfg.fsyncInterval()}
	stats, err := hashsync.WireHashSide(ctx, c, img, hashSession(sizeLB, bulkLB), patch, rs.hashOptions())
	if err != nil {
		return replHashErr(ctx, err, "resync", v.name)
	}
	stop = c.KeepAlive(ctx, 0)
	err = rs.commitResync(tx, img, st, uuid)
	stop()
	if err != nil {
		return err
	}
	e.logv(v.name).Info("resync done", "base", st.StringTs(), "stats", stats.String())
	return c.SendAck(ctx)
}

// beginResync leaves the old lineage and enters Resync with the base
// image open for patching.
func (rs *replServer) beginResync(ctx context.Context, sizeLB uint64) (*server.StateTxn, imagestore.Image, error) {
	if err := rs.dropLineage(ctx); err != nil {
		return nil, nil, err
	}
	tx, err := rs.e.vols.Begin(ctx, rs.v.name, StateResync, server.Guard{States: []string{StateSyncReady}, Idle: true, NotStopping: true})
	if err != nil {
		return nil, nil, err
	}
	img, err := rs.openBaseForResync(ctx, sizeLB)
	if err != nil {
		tx.Rollback()
		return nil, nil, err
	}
	return tx, img, nil
}

// dropLineage takes an Archived volume to SyncReady for a resync: its
// restored images, diffs and resume point go, its base image stays, and
// SyncReady is persisted. A SyncReady volume only loses its resume point.
func (rs *replServer) dropLineage(ctx context.Context) error {
	e, v := rs.e, rs.v
	idle := func(st string) server.Guard {
		return server.Guard{States: []string{st}, Idle: true, NotStopping: true}
	}
	if e.vols.State(v.name) == StateArchived {
		txStop, err := e.vols.Begin(ctx, v.name, StateStop, idle(StateArchived))
		if err != nil {
			return err
		}
		if err := txStop.Commit(StateStopped); err != nil {
			txStop.Rollback()
			return err
		}
		txReset, err := e.vols.Begin(ctx, v.name, StateResetVol, idle(StateStopped))
		if err != nil {
			rs.restart(ctx)
			return err
		}
		err = rs.dropData(ctx)
		if err == nil {
			err = e.commitState(txReset, v, StateSyncReady)
		}
		if err != nil {
			txReset.Rollback()
			rs.restart(ctx)
			return err
		}
		e.logv(v.name).Info("resync: restored images and diffs dropped", "archiveUuid", rs.aUUID.String())
	}
	if err := v.removeFullReplState(); err != nil {
		return errors.Wrapf(err, "archive: resync %s: remove %s", v.name, fullReplStateFileName)
	}
	return nil
}

// restart returns a volume dropLineage left Stopped (in memory only: its
// state file still says Archived) to Archived.
func (rs *replServer) restart(ctx context.Context) {
	tx, err := rs.e.vols.Begin(ctx, rs.v.name, StateStart, server.Guard{States: []string{StateStopped}})
	if err != nil {
		rs.e.logv(rs.v.name).Error("resync: volume left Stopped; start it", "err", err)
		return
	}
	_ = tx.Commit(StateArchived)
}

// dropData removes the restored images and all diffs. The state file still
// says Archived until the caller persists SyncReady, so a crash meanwhile
// leaves an Archived volume with fewer images and diffs: a smaller but
// consistent restorable list, which the retried resync replaces.
func (rs *replServer) dropData(ctx context.Context) error {
	e, v := rs.e, rs.v
	for _, g := range v.restoredGids() {
		if err := e.deleteRestored(ctx, v, g); err != nil {
			return err
		}
	}
	v.removeDiffs(v.diffs.All())
	return nil
}

// openBaseForResync opens the base image read-write, grown to sizeLB if
// smaller (the grown area reads as zeros and the comparison fills it).
func (rs *replServer) openBaseForResync(ctx context.Context, sizeLB uint64) (imagestore.Image, error) {
	e, v := rs.e, rs.v
	store, name := e.cfg.Images, baseImageName(v.name)
	v.baseMu.Lock()
	defer v.baseMu.Unlock()
	v.mu.Lock()
	cur := v.sizeLB
	v.mu.Unlock()
	if cur == 0 {
		return nil, errorf(ErrNoBaseImage, "resync %s", v.name)
	}
	if cur < sizeLB {
		if err := store.Resize(ctx, name, int64(sizeLB*lbSize)); err != nil {
			return nil, errors.Wrapf(err, "archive: resync %s: grow the base", v.name)
		}
		v.mu.Lock()
		v.sizeLB = sizeLB
		v.mu.Unlock()
	}
	img, err := store.Open(ctx, name, imagestore.ReadWrite)
	if err != nil {
		return nil, errors.Wrapf(err, "archive: resync %s: open the base", v.name)
	}
	return img, nil
}

// commitResync makes the patched image durable, then records the source's
// state, uuid and lineage and persists Archived (last).
func (rs *replServer) commitResync(tx *server.StateTxn, img imagestore.Image, st meta.State, uuid meta.UUID) error {
	e, v := rs.e, rs.v
	if err := img.Sync(); err != nil {
		return errors.Wrapf(err, "archive: resync %s: fdatasync", v.name)
	}
	if err := saveBase(v.dir, st); err != nil {
		return errors.Wrapf(err, "archive: resync %s", v.name)
	}
	if err := saveUUID(v.dir, uuidFileName, uuid); err != nil {
		return errors.Wrapf(err, "archive: resync %s", v.name)
	}
	if err := saveUUID(v.dir, archiveUUIDFileName, rs.aUUID); err != nil {
		return errors.Wrapf(err, "archive: resync %s", v.name)
	}
	v.mu.Lock()
	v.base, v.uuid, v.archiveUUID = st, uuid, rs.aUUID
	v.lastSync = time.Now()
	v.mu.Unlock()
	return e.commitState(tx, v, StateArchived)
}

// imagePatcher is the sink of a resync: each differing chunk is written
// over the image in place (an all-zero chunk is deallocated), with an
// fdatasync every interval bytes. The hash side has read a chunk before
// its record can arrive, so writing it cannot disturb the comparison.
type imagePatcher struct {
	img      imagestore.Image
	vol      string
	interval int64
	dirty    int64
	buf      []byte
}

func (p *imagePatcher) WriteStored(rec wdiff.Record, st wdiff.Stored) error {
	off, n := int64(rec.Addr)*lbSize, int64(rec.Size())
	if rec.IsAllZero() {
		if err := p.img.Punch(off, n); err != nil {
			return errors.Wrapf(err, "archive: resync %s: zero %d+%d", p.vol, rec.Addr, rec.Blocks)
		}
	} else {
		data := st.Data
		if st.Codec != wdiff.CodecNone {
			out, err := wdiff.Decompress(p.buf[:0], st.Data, st.Codec, rec.Size())
			if err != nil {
				return errorf(ErrCorruptStream, "resync %s: record %d+%d: %v", p.vol, rec.Addr, rec.Blocks, err)
			}
			p.buf, data = out, out
		}
		if int64(len(data)) != n {
			return errorf(ErrCorruptStream, "resync %s: record %d+%d holds %d bytes", p.vol, rec.Addr, rec.Blocks, len(data))
		}
		if _, err := p.img.WriteAt(data, off); err != nil {
			return errors.Wrapf(err, "archive: resync %s: write %d+%d", p.vol, rec.Addr, rec.Blocks)
		}
	}
	p.dirty += n
	if p.dirty >= p.interval {
		p.dirty = 0
		if err := p.img.Sync(); err != nil {
			return errors.Wrapf(err, "archive: resync %s: fdatasync", p.vol)
		}
	}
	return nil
}
