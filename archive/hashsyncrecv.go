package archive

import (
	"context"
	"io"
	"path/filepath"
	"time"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/hashsync"
	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/server"
	"github.com/walb-go/walb/wdiff"
)

// HashSide runs the hash side of a hash-sync session: it hashes old over
// the session s, sends the hashes to the data side and writes the chunks
// that come back to sink (hashsync.RunHashSide's shape; the server passes
// hashsync.WireHashSide over its connection). It returns once the data
// side's stream has ended and been checked.
type HashSide func(ctx context.Context, old io.ReaderAt, s hashsync.Session, sink hashsync.Sink, opt hashsync.HashOptions) (hashsync.Stats, error)

// HashSyncRecv receives a hash backup into a volume (system.md §3.7 and
// §6.5 dirty-hash-sync2): the volume sits in HashSync while the image at
// its latest snapshot From is compared with the storage's device and the
// chunks that differ are written to a temporary sorted wdiff; Commit
// registers that file as the dirty diff From -> |gidB,gidE|. The steps
// are BeginHashSync, Open, Receive, Commit; Abort (or any failure) leaves
// the volume Archived with its diffs unchanged, and removes the temporary
// file and image.
type HashSyncRecv struct {
	syncTxn
	sizeLB uint64
	from   meta.Snap
	uuid   meta.UUID
	img    *virtualImage
	tmp    *meta.TempFile
	stats  hashsync.Stats
	opened bool
	ran    bool // Receive ran (once: it closes the image)
	got    bool
	ended  bool
}

// BeginHashSync starts receiving a hash backup of a device of sizeLB
// blocks into vol, which must be Archived with nothing running and not
// stopping (ErrWrongState, ErrActionRunning, ErrStopping otherwise). The
// volume enters HashSync. If the device is larger than the base image, the
// base is grown when AutoResize is on; otherwise, or if the growth fails,
// the backup is refused with ErrSmallerLvSize (as a wdiff transfer from a
// larger source is). A smaller device is compared over its own size only:
// the archive image keeps whatever lies beyond it.
func (e *Engine) BeginHashSync(ctx context.Context, vol string, sizeLB uint64) (*HashSyncRecv, error) {
	t, err := e.beginSyncTxn(ctx, vol, "hash-sync", sizeLB, StateHashSync, CmdHashSync)
	if err != nil {
		return nil, err
	}
	r := &HashSyncRecv{syncTxn: t, sizeLB: sizeLB}
	if err := r.begin(); err != nil {
		r.Abort()
		return nil, err
	}
	t.v.progressLB.Store(0)
	e.logv(vol).Info("hash-sync started", "sizeLb", sizeLB, "from", r.from.String())
	return r, nil
}

func (r *HashSyncRecv) begin() error {
	e, v := r.e, r.v
	if err := e.autoResize(r.ctx, v, r.sizeLB); err != nil {
		return err
	}
	v.mu.Lock()
	size := v.sizeLB
	v.mu.Unlock()
	switch {
	case size < r.sizeLB:
		return errorf(ErrSmallerLvSize, "hash-sync %s: base %d LB, device %d LB", v.name, size, r.sizeLB)
	case size > r.sizeLB:
		e.logv(v.name).Warn("base image larger than the device; only the device's size is compared", "baseLb", size, "deviceLb", r.sizeLB)
	}
	from, _, err := v.latestList()
	if err != nil {
		return err
	}
	r.from = from
	return nil
}

// From returns the archive's latest snapshot, which the device is compared
// against; the storage resets its log with gidB = From().GidE + 1.
func (r *HashSyncRecv) From() meta.Snap { return r.from }

// SizeLB returns the device size announced by the storage.
func (r *HashSyncRecv) SizeLB() uint64 { return r.sizeLB }

// Context returns the context of the backup: canceled by a force stop of
// the volume or by the context BeginHashSync got.
func (r *HashSyncRecv) Context() context.Context { return r.ctx }

// Open records the device's uuid (sent once the storage has reset its log)
// and prepares the image at From to compare with: a virtual image, which
// may take a while (a clone and the diffs applied to it).
func (r *HashSyncRecv) Open(uuid meta.UUID) error {
	switch {
	case r.ended:
		return errors.Wrap(ErrBadArgs, "archive: hash-sync already ended")
	case r.opened:
		return errors.Wrap(ErrBadArgs, "archive: hash-sync already opened")
	}
	img, err := r.e.openVirtualSnap(r.ctx, r.v, r.from)
	if err != nil {
		return errors.WithMessagef(err, "archive: hash-sync %s: image at %s", r.v.name, r.from)
	}
	if img.Size() < int64(r.sizeLB*lbSize) {
		_ = img.Close()
		return errorf(ErrSmallerLvSize, "hash-sync %s: image of %d bytes, device %d LB", r.v.name, img.Size(), r.sizeLB)
	}
	r.img, r.uuid, r.opened = img, uuid, true
	return nil
}

// Receive runs the comparison over the whole device, [0, SizeLB*512), in
// chunks of chunkSize bytes with a fresh random seed: run is the hash side
// (over the network, hashsync.WireHashSide). The differing chunks go into
// a temporary sorted wdiff in the volume directory, stored as they arrive
// (every record checked, never recompressed) under a header carrying the
// device's uuid, fdatasynced every FsyncInterval bytes. get progress shows
// how far the comparison is. On failure the temporary file is removed.
func (r *HashSyncRecv) Receive(chunkSize int, run HashSide) (hashsync.Stats, error) {
	switch {
	case r.ended:
		return hashsync.Stats{}, errors.Wrap(ErrBadArgs, "archive: hash-sync already ended")
	case !r.opened:
		return hashsync.Stats{}, errors.Wrap(ErrBadArgs, "archive: hash-sync not opened")
	case r.ran:
		return hashsync.Stats{}, errors.Wrap(ErrBadArgs, "archive: hash-sync already received")
	}
	if chunkSize <= 0 || chunkSize > hashsync.MaxChunkSize || chunkSize%lbSize != 0 {
		return hashsync.Stats{}, errorf(ErrBadArgs, "hash-sync %s: chunk size %d: want a multiple of 512 up to %d", r.v.name, chunkSize, hashsync.MaxChunkSize)
	}
	seed, err := hashsync.NewSeed()
	if err != nil {
		return hashsync.Stats{}, err
	}
	s := hashsync.Session{ChunkSize: chunkSize, Start: 0, End: int64(r.sizeLB * lbSize), Seed: seed}
	tmp, err := meta.CreateTemp(r.v.dir, 0o644)
	if err != nil {
		return hashsync.Stats{}, errors.Wrapf(err, "archive: hash-sync %s", r.v.name)
	}
	r.ran = true
	st, err := r.receive(tmp, s, run)
	// The comparison is over: the image at From is no longer needed (and a
	// base read in place is released for applies).
	_ = r.img.Close()
	if err != nil {
		_ = tmp.Abort()
		return st, err
	}
	r.tmp, r.got, r.stats = tmp, true, st
	r.e.logv(r.v.name).Info("hash-sync compared", "stats", st.String())
	return st, nil
}

func (r *HashSyncRecv) receive(tmp *meta.TempFile, s hashsync.Session, run HashSide) (hashsync.Stats, error) {
	vol := r.v.name
	w := &syncingFileWriter{f: tmp.File, interval: r.e.cfg.fsyncInterval()}
	sw, err := wdiff.NewSortedWriter(w, wdiff.FileHeader{Type: wdiff.TypeSorted, UUID: r.uuid}, wdiff.Compression{Codec: wdiff.CodecSnappy})
	if err != nil {
		return hashsync.Stats{}, errors.Wrapf(err, "archive: hash-sync %s", vol)
	}
	opt := hashsync.HashOptions{Checkpoint: func(st hashsync.Stats) error {
		r.v.progressLB.Store(uint64(st.Offset) / lbSize)
		return nil
	}}
	st, err := run(r.ctx, r.img, s, &checkedSink{w: sw, vol: vol}, opt)
	if cerr := sw.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = w.err
	}
	if err != nil {
		if cerr := r.ctx.Err(); cerr != nil {
			return st, errors.Wrapf(cerr, "archive: hash-sync %s", vol)
		}
		return st, hashStreamErr(err, vol)
	}
	r.v.progressLB.Store(r.sizeLB)
	return st, nil
}

// hashStreamErr classifies a failed comparison: a malformed or truncated
// data stream from the storage is ErrCorruptStream (a bad request), the
// rest (the network, the local disk, the peer's own failure) keeps its
// cause.
func hashStreamErr(err error, vol string) error {
	if errors.Is(err, ErrCorruptStream) {
		return err
	}
	for _, bad := range []error{hashsync.ErrCorrupt, hashsync.ErrTruncated, hashsync.ErrProtocol, hashsync.ErrSession} {
		if errors.Is(err, bad) {
			return errorf(ErrCorruptStream, "hash-sync %s: %v", vol, err)
		}
	}
	return errors.Wrapf(err, "archive: hash-sync %s", vol)
}

// Stats returns what Receive compared and found.
func (r *HashSyncRecv) Stats() hashsync.Stats { return r.stats }

// Commit ends the backup with the storage's snapshot snap = |gidB,gidE|,
// taken after the scan: gidB must be From().GidE+1 and gidE >= gidB. The
// temporary wdiff is fsynced and renamed to the name of the diff
// From -> snap (dirty; mergeable iff From is dirty, since a clean From is
// a restorable snapshot that must stay; stamped ts, the backup's start
// time), registered, then the device's uuid is saved and the volume
// returns to Archived. The snapshot becomes clean, and restorable, once
// diffs from |gidB| reach gidE. Commit or Abort must be called exactly
// once; after a failed Commit nothing has changed.
func (r *HashSyncRecv) Commit(snap meta.Snap, ts time.Time) error {
	if r.ended {
		return errors.Wrap(ErrBadArgs, "archive: hash-sync already ended")
	}
	defer r.Abort()
	if !r.got {
		return errors.Wrap(ErrBadArgs, "archive: hash-sync commit without data")
	}
	v := r.v
	if err := snap.Validate(); err != nil || snap.GidB != r.from.GidE+1 {
		return errorf(ErrBadArgs, "hash-sync %s: snapshot %s does not start right after %s", v.name, snap, r.from)
	}
	d := meta.Diff{SnapB: r.from, SnapE: snap, Mergeable: r.from.IsDirty(), Timestamp: ts}
	if err := d.Validate(); err != nil {
		return errorf(ErrBadArgs, "hash-sync %s: %v", v.name, err)
	}
	if err := r.ctx.Err(); err != nil {
		return errors.Wrapf(err, "archive: hash-sync %s", v.name)
	}
	// Nothing else adds diffs while the volume is in HashSync; merges and
	// applies keep the latest snapshot. Checked anyway: the diff must
	// extend the chain exactly.
	if latest := v.diffs.LatestSnap(v.getBase()); latest != r.from {
		return errorf(ErrNotApplicableDiff, "hash-sync %s: latest snapshot moved from %s to %s", v.name, r.from, latest)
	}
	d, err := v.commitComparedDiff("hash-sync", r.tx, r.tmp, d, r.uuid)
	if err != nil {
		return err
	}
	r.tmp = nil
	r.e.logv(v.name).Info("hash-sync done", "diff", d.String(), "size", d.DataSize, "uuid", r.uuid.String(),
		"diffChunks", r.stats.DiffChunks, "scanned", r.stats.Scanned)
	return nil
}

// commitComparedDiff ends a hash comparison (a hash backup or a HASH
// step) whose differing chunks are in tmp: tmp becomes the file of d, with
// its DataSize set, and d is registered; then the sender's device uuid is
// saved and tx commits the volume Archived. The diff comes first, then the
// uuid, as walb-tools does: a crash between leaves the diff under the old
// uuid, and the sender, which got no ACK, reruns from the new latest
// snapshot. A failure leaves d unregistered; op names the exchange in
// errors. It returns d as registered.
func (v *volume) commitComparedDiff(op string, tx *server.StateTxn, tmp *meta.TempFile, d meta.Diff, uuid meta.UUID) (meta.Diff, error) {
	fi, err := tmp.Stat()
	if err != nil {
		return d, errors.Wrapf(err, "archive: %s %s", op, v.name)
	}
	d.DataSize = uint64(fi.Size())
	path, err := meta.DiffPath(v.dir, d)
	if err != nil {
		return d, errors.Wrapf(err, "archive: %s %s", op, v.name)
	}
	if err := tmp.Commit(path); err != nil {
		return d, errors.Wrapf(err, "archive: %s %s", op, v.name)
	}
	if err := v.addDiff(d); err != nil {
		v.unlinkFiles([]string{filepath.Base(path)})
		return d, errors.Wrapf(err, "archive: %s %s", op, v.name)
	}
	if err := saveUUID(v.dir, uuidFileName, uuid); err != nil {
		v.removeDiffs([]meta.Diff{d})
		return d, errors.Wrapf(err, "archive: %s %s", op, v.name)
	}
	v.mu.Lock()
	v.uuid = uuid
	v.lastSync = time.Now()
	v.mu.Unlock()
	return d, tx.Commit(StateArchived)
}

// Abort drops the backup: the image and the temporary file are removed
// and the volume returns to Archived. It is a no-op after Commit.
func (r *HashSyncRecv) Abort() {
	if r.ended {
		return
	}
	r.ended = true
	if r.img != nil {
		_ = r.img.Close()
	}
	if r.tmp != nil {
		_ = r.tmp.Abort()
		r.tmp = nil
	}
	r.end()
}

// checkedSink stores the differing chunks in the temporary wdiff after
// checking that each compressed one decompresses to its whole chunk.
// package hashsync has verified the framing and the checksum of the stored
// bytes; this catches a sender whose compressor produced garbage with a
// good checksum, which would otherwise fail only when the diff is applied,
// long after the backup was acknowledged.
type checkedSink struct {
	w   *wdiff.SortedWriter
	vol string
	buf []byte
}

func (s *checkedSink) WriteStored(rec wdiff.Record, st wdiff.Stored) error {
	if rec.IsNormal() && st.Codec != wdiff.CodecNone {
		out, err := wdiff.Decompress(s.buf[:0], st.Data, st.Codec, rec.Size())
		if err != nil {
			return errorf(ErrCorruptStream, "hash-sync %s: record %d+%d: %v", s.vol, rec.Addr, rec.Blocks, err)
		}
		s.buf = out
	}
	return s.w.WriteStored(rec, st)
}
