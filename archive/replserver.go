package archive

import (
	"context"
	"os"
	"time"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/server"
	"github.com/walb-go/walb/wire"
)

// replServer is the target side of one ProtoReplSync session: the first
// phase it chose, then the loop. Between steps the volume is in a steady
// state; each step holds its own transaction (FullSync, Resync or
// ReplSyncAsServer), so a cut or a crash never leaves a transient state
// behind.
type replServer struct {
	e     *Engine
	v     *volume
	aUUID meta.UUID // the source's archive uuid
	first ReplFirst
}

// prepareReplServer checks a session's opening (the volume SyncReady or
// Archived, nothing running, not stopping) and chooses the first phase
// (system.md §5.6): SyncReady: RESYNC if doResync and the base image
// exists, else FULL; Archived: RESYNC if the archive uuids differ or
// doResync, else none. A RESYNC without doResync is ErrResyncRequired.
// Nothing is held or changed.
func (e *Engine) prepareReplServer(vol string, aUUID meta.UUID, doResync bool) (*replServer, error) {
	if err := server.ValidateVolumeName(vol); err != nil {
		return nil, err
	}
	if err := e.vols.Check(vol, guard(CmdReplServer)); err != nil {
		return nil, err
	}
	v, err := e.volume(vol)
	if err != nil {
		return nil, err
	}
	if aUUID.IsZero() {
		return nil, errorf(ErrBadArgs, "repl-sync %s: the source has no archive uuid", vol)
	}
	first := ReplFirstNone
	v.mu.Lock()
	cur := v.archiveUUID
	v.mu.Unlock()
	switch st := e.vols.State(vol); st {
	case StateSyncReady:
		first = ReplFirstFull
		if doResync && v.hasBaseImage() {
			first = ReplFirstResync
		}
	case StateArchived:
		if cur != aUUID && !doResync {
			return nil, errorf(ErrResyncRequired, "volume %s: the target's archive uuid is %s, the source's %s", vol, cur, aUUID)
		}
		if doResync { // asked for, or needed: another lineage
			first = ReplFirstResync
		}
	default:
		return nil, errorf(ErrWrongState, "repl-sync %s: volume is %s", vol, st)
	}
	return &replServer{e: e, v: v, aUUID: aUUID, first: first}, nil
}

func (v *volume) hasBaseImage() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.sizeLB > 0
}

// serve runs the session after the accept and the first phase's number.
func (rs *replServer) serve(ctx context.Context, c *wire.Conn) error {
	log := rs.e.logv(rs.v.name).With("peer", c.Peer())
	switch rs.first {
	case ReplFirstFull:
		if err := rs.serveFull(ctx, c); err != nil {
			return err
		}
	case ReplFirstResync:
		if err := rs.serveResync(ctx, c); err != nil {
			return err
		}
	}
	for {
		latest := rs.v.latestState()
		if err := c.SendValue(ctx, latest); err != nil {
			return err
		}
		a, err := c.RecvU64(ctx)
		if err != nil {
			return err
		}
		switch ReplAction(a) {
		case ReplDont:
			log.Info("repl-sync done", "latest", latest.StringTs())
			return c.SendAck(ctx)
		case ReplHash:
			err = rs.serveHash(ctx, c, latest)
		case ReplDiff:
			err = rs.serveDiff(ctx, c, latest)
		default:
			err = errorf(ErrReplProtocol, "repl-sync %s: action %d", rs.v.name, a)
		}
		if err != nil {
			return err
		}
	}
}

// latestState is the base with the whole chain applied; for a base left
// applying whose minimum list is missing, the snapshot the chain reaches.
func (v *volume) latestState() meta.State {
	base := v.getBase()
	st, err := v.diffs.LatestState(base)
	if err != nil {
		return meta.NewState(v.diffs.LatestSnap(base), base.Timestamp)
	}
	return st
}

// recvReplHeader receives the sizes, state and uuid that open FULL and
// RESYNC.
func recvReplHeader(ctx context.Context, c *wire.Conn) (sizeLB, bulkLB uint64, st meta.State, uuid meta.UUID, err error) {
	if sizeLB, bulkLB, uuid, err = recvStepHeader(ctx, c, &st); err != nil {
		return
	}
	if sizeLB == 0 || sizeLB > maxVolumeLB {
		err = errorf(ErrBadArgs, "repl-sync: size %d LB", sizeLB)
	} else if bulkLB == 0 || bulkLB > MaxBulkLB {
		err = errorf(ErrBadArgs, "repl-sync: bulk of %d LB (1..%d)", bulkLB, MaxBulkLB)
	}
	return
}

// recvStepHeader receives the frames that open FULL, RESYNC and HASH:
// U64 SIZE_LB, U64 BULK_LB, the step's Value (into val), Bytes uuid. The
// caller checks the sizes, whose limits differ by step.
func recvStepHeader(ctx context.Context, c *wire.Conn, val meta.Decodable) (sizeLB, bulkLB uint64, uuid meta.UUID, err error) {
	if sizeLB, err = c.RecvU64(ctx); err != nil {
		return
	}
	if bulkLB, err = c.RecvU64(ctx); err != nil {
		return
	}
	if err = c.RecvValue(ctx, val); err != nil {
		return
	}
	uuid, err = recvUUID(ctx, c, "repl-sync")
	return
}

// recvUUID receives a device uuid, a Bytes frame of 16 bytes; a frame of
// another length is ErrBadArgs, its message prefixed with op when op is
// not empty.
func recvUUID(ctx context.Context, c *wire.Conn, op string) (meta.UUID, error) {
	var u meta.UUID
	b, err := c.RecvBytes(ctx)
	if err != nil {
		return u, err
	}
	if len(b) != len(u) {
		if op != "" {
			return u, errorf(ErrBadArgs, "%s: uuid of %d bytes", op, len(b))
		}
		return u, errorf(ErrBadArgs, "uuid of %d bytes", len(b))
	}
	copy(u[:], b)
	return u, nil
}

// serveFull receives the source's base image into the volume's base
// (FullSync, reusing the full backup's receiver). It resumes from the
// saved full_repl_state when the source's archive uuid and base state are
// those of the interrupted copy; each fdatasync moves the resume point,
// and so does a failure after which the image could still be synced.
func (rs *replServer) serveFull(ctx context.Context, c *wire.Conn) error {
	e, v := rs.e, rs.v
	sizeLB, bulkLB, base, uuid, err := recvReplHeader(ctx, c)
	if err != nil {
		return err
	}
	stop := c.KeepAlive(ctx, 0)
	f, st, err := rs.beginFull(ctx, sizeLB, base)
	stop()
	if err != nil {
		return err
	}
	defer f.Abort()
	startLB := st.ProgressLB
	e.logv(v.name).Info("full-repl started", "sizeLb", sizeLB, "startLb", startLB, "base", base.StringTs())
	if err := c.SendOK(ctx); err != nil {
		return err
	}
	if err := c.SendU64(ctx, startLB); err != nil {
		return err
	}
	if err := f.recvReplBulks(c.NewStreamReader(f.Context()), bulkLB, st); err != nil {
		if f.pos > st.ProgressLB*lbSize {
			if serr := f.syncReplProgress(st); serr != nil {
				e.logv(v.name).Warn("full-repl: progress not saved", "err", serr)
			} else {
				e.logv(v.name).Info("full-repl interrupted; the next one resumes", "progressLb", st.ProgressLB)
			}
		}
		return err
	}
	stop = c.KeepAlive(ctx, 0)
	err = f.Flush()
	if err == nil {
		err = f.commitRepl(base, uuid, rs.aUUID)
	}
	stop()
	if err != nil {
		return err
	}
	return c.SendAck(ctx)
}

// beginFull enters FullSync (the base image made or grown) and sets up
// the resume point: the archive uuid, the copy's identity for a resume,
// is written first, while the persisted state stays SyncReady; then
// full_repl_state with the start, so that an older resume point can never
// be combined with this copy's data.
func (rs *replServer) beginFull(ctx context.Context, sizeLB uint64, base meta.State) (*FullSyncRecv, *FullReplState, error) {
	v := rs.v
	f, err := rs.e.BeginFullSync(ctx, v.name, sizeLB)
	if err != nil {
		return nil, nil, err
	}
	startLB := rs.fullReplStart(base, sizeLB)
	st := &FullReplState{State: base, ProgressLB: startLB, Timestamp: time.Now()}
	if err := saveUUID(v.dir, archiveUUIDFileName, rs.aUUID); err != nil {
		f.Abort()
		return nil, nil, errors.Wrapf(err, "archive: full-repl %s", v.name)
	}
	v.mu.Lock()
	v.archiveUUID = rs.aUUID
	v.mu.Unlock()
	if err := meta.Save(v.path(fullReplStateFileName), *st); err != nil {
		f.Abort()
		return nil, nil, errors.Wrapf(err, "archive: full-repl %s", v.name)
	}
	f.pos = startLB * lbSize
	v.progressLB.Store(startLB)
	return f, st, nil
}

// fullReplStart returns where a full replication of base (sizeLB blocks)
// starts: the saved progress if the interrupted copy was of the same
// lineage and base, else 0.
func (rs *replServer) fullReplStart(base meta.State, sizeLB uint64) uint64 {
	v := rs.v
	saved, ok, err := v.loadFullReplState()
	if err != nil {
		// A torn or foreign file only costs a restart from 0.
		rs.e.logv(v.name).Warn("full_repl_state unreadable; starting from 0", "err", err)
		return 0
	}
	v.mu.Lock()
	cur := v.archiveUUID
	v.mu.Unlock()
	if ok && cur == rs.aUUID && saved.State.Equal(base) && saved.State.Timestamp.Equal(base.Timestamp) && saved.ProgressLB <= sizeLB {
		return saved.ProgressLB
	}
	return 0
}

// recvReplBulks writes the bulk stream into f, saving st at each fsync.
func (f *FullSyncRecv) recvReplBulks(sr *wire.StreamReader, bulkLB uint64, st *FullReplState) error {
	return readBulks(sr, bulkLB, func(b bulk) error { return f.writeReplBulk(b, st) })
}

// writeReplBulk writes one bulk of a full replication. It is the full
// backup's Write / WriteZeros with one more step at each fdatasync: the
// progress is saved in full_repl_state.
func (f *FullSyncRecv) writeReplBulk(b bulk, st *FullReplState) error {
	n := int64(b.nLB * lbSize)
	if err := f.check(n); err != nil {
		return err
	}
	var err error
	if b.zero {
		err = f.img.Punch(int64(f.pos), n)
	} else {
		_, err = f.img.WriteAt(b.data, int64(f.pos))
	}
	if err != nil {
		return errors.Wrapf(err, "archive: full-repl %s: write at %d", f.v.name, f.pos)
	}
	f.advance(n)
	if f.dirty < f.e.cfg.fsyncInterval() {
		return nil
	}
	return f.syncReplProgress(st)
}

// syncReplProgress makes everything written durable, then records it as
// the resume point.
func (f *FullSyncRecv) syncReplProgress(st *FullReplState) error {
	if err := f.img.Sync(); err != nil {
		return errors.Wrapf(err, "archive: full-repl %s: fdatasync", f.v.name)
	}
	f.dirty = 0
	st.ProgressLB = f.pos / lbSize
	st.Timestamp = time.Now()
	if err := meta.Save(f.v.path(fullReplStateFileName), *st); err != nil {
		return errors.Wrapf(err, "archive: full-repl %s", f.v.name)
	}
	return nil
}

// commitRepl ends a full replication once every block has arrived: the
// image is synced, then the base becomes the source's base state, the
// uuids the source's, and the volume Archived (the state file last); the
// resume point goes after that. It is Commit with the source's state and
// lineage instead of a new snapshot and a new archive uuid.
func (f *FullSyncRecv) commitRepl(base meta.State, uuid, aUUID meta.UUID) error {
	if f.ended {
		return errors.Wrap(ErrBadArgs, "archive: full-repl already ended")
	}
	defer f.Abort()
	v := f.v
	if f.pos != f.sizeLB*lbSize {
		return errorf(ErrCorruptStream, "full-repl %s: %d of %d bytes received", v.name, f.pos, f.sizeLB*lbSize)
	}
	if err := base.Validate(); err != nil {
		return errorf(ErrBadArgs, "full-repl %s: base %s: %v", v.name, base, err)
	}
	if err := f.img.Sync(); err != nil {
		return errors.Wrapf(err, "archive: full-repl %s: fdatasync", v.name)
	}
	if err := f.installBase("full-repl", base, aUUID, uuid); err != nil {
		return err
	}
	if err := v.removeFullReplState(); err != nil {
		f.e.logv(v.name).Warn("full_repl_state not removed", "err", err)
	}
	f.e.logv(v.name).Info("full-repl done", "base", base.StringTs(), "uuid", uuid.String())
	return nil
}

// removeFullReplState deletes the resume point. A leftover is harmless
// (a full replication only runs on a SyncReady volume, and must match the
// volume's archive uuid and base state), so callers only log a failure.
func (v *volume) removeFullReplState() error {
	err := os.Remove(v.path(fullReplStateFileName))
	if os.IsNotExist(err) {
		return nil
	}
	if err != nil {
		return err
	}
	return meta.SyncDir(v.dir)
}

// serveDiff receives one diff (DIFF step) through the wdiff transfer's
// receiver and checks: the volume goes ReplSyncAsServer, the diff must
// apply to the latest snapshot the source decided on (else too-old-diff,
// too-new-diff, not-applicable-diff), and the base must be large enough
// (smaller-lv-size after an automatic resize). Once the diff is committed,
// the diffs lying inside its range are removed (gcRange), then the source
// gets the Ack.
func (rs *replServer) serveDiff(ctx context.Context, c *wire.Conn, sent meta.State) error {
	e, v := rs.e, rs.v
	sizeLB, err := c.RecvU64(ctx)
	if err != nil {
		return err
	}
	uuid, err := recvUUID(ctx, c, "repl-sync")
	if err != nil {
		return err
	}
	var d meta.Diff
	if err := c.RecvValue(ctx, &d); err != nil {
		return err
	}
	if sizeLB == 0 || sizeLB > maxVolumeLB {
		return errorf(ErrBadArgs, "diff-repl %s: size %d LB", v.name, sizeLB)
	}
	tx, err := rs.beginStep(ctx, sizeLB, sent, d)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	actx, done := v.actionContext(ctx)
	r := &WdiffRecv{e: e, v: v, tx: tx, ctx: actx, done: done,
		h: WdiffHeader{Sender: SenderArchive, UUID: uuid, SizeLB: sizeLB, Diff: d}}
	defer r.Abort()
	if err := c.SendOK(ctx); err != nil {
		return err
	}
	if err := r.receiveFrom(ctx, c); err != nil {
		return err
	}
	v.mu.Lock()
	gone := v.diffs.GcRange(d.SnapB.GidB, d.SnapE.GidB)
	v.mu.Unlock()
	v.dropRemoved(gone)
	e.logv(v.name).Info("diff-repl received", "diff", d.String(), "gcRange", len(gone))
	return c.SendAck(ctx)
}

// beginStep opens a HASH or DIFF step that brings the diff d from a
// source volume of sizeLB blocks: the volume goes ReplSyncAsServer, then
// checkStep, and d must apply to the latest snapshot. On success the
// caller owns the transaction (and rolls it back unless it commits).
func (rs *replServer) beginStep(ctx context.Context, sizeLB uint64, sent meta.State, d meta.Diff) (*server.StateTxn, error) {
	tx, err := rs.e.vols.Begin(ctx, rs.v.name, StateReplSyncAsServer, guard(CmdReplServer))
	if err != nil {
		return nil, err
	}
	if err := rs.checkStep(ctx, sizeLB, sent); err != nil {
		tx.Rollback()
		return nil, err
	}
	if err := rs.e.relationReply(rs.v, d); err != nil {
		tx.Rollback()
		return nil, err
	}
	return tx, nil
}

// checkStep runs the checks common to HASH and DIFF inside the step's
// transaction: the base large enough for the source's volume (after an
// automatic resize), and the latest snapshot still the one the source
// decided on.
func (rs *replServer) checkStep(ctx context.Context, sizeLB uint64, sent meta.State) error {
	e, v := rs.e, rs.v
	if err := e.autoResize(ctx, v, sizeLB); err != nil {
		return err
	}
	v.mu.Lock()
	size := v.sizeLB
	v.mu.Unlock()
	if size < sizeLB {
		return errorf(ErrSmallerLvSize, "volume %s: base %d LB, source %d LB", v.name, size, sizeLB)
	}
	if size > sizeLB {
		e.logv(v.name).Warn("base image larger than the source volume", "baseLb", size, "sourceLb", sizeLB)
	}
	if latest := v.diffs.LatestSnap(v.getBase()); latest != sent.SnapB {
		return errorf(ErrReplTiming, "volume %s: latest snapshot moved from %s to %s during the session", v.name, sent.SnapB, latest)
	}
	return nil
}
