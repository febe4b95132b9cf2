package archive

import (
	"context"
	"io"
	"time"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/server"
	"github.com/walb-go/walb/wdiff"
)

// Sender says who sends a wdiff: a proxy (log diffs of the storage's
// device, whose uuid must match) or another archive (diff replication).
type Sender string

// Senders, named as in walb-tools' wdiff-transfer.
const (
	SenderProxy   Sender = "proxy"
	SenderArchive Sender = "archive"
)

// WdiffHeader is what a wdiff transfer announces before its data.
type WdiffHeader struct {
	Sender Sender
	// UUID is the source device's uuid; it goes into the file header.
	UUID meta.UUID
	// SizeLB is the source volume's size.
	SizeLB uint64
	// Diff is the diff's metadata. DataSize is ignored (it becomes the
	// file's size).
	Diff meta.Diff
}

// WdiffRecv receives one wdiff into a volume: the volume sits in
// WdiffRecv while the data arrives into a temporary file; Commit renames
// it into place and registers it. A crash or an error leaves nothing but a
// temporary file that the next start deletes.
type WdiffRecv struct {
	e     *Engine
	v     *volume
	tx    *server.StateTxn
	h     WdiffHeader
	ctx   context.Context
	done  func()
	tmp   *meta.TempFile
	got   bool
	ended bool
}

// BeginWdiffRecv checks a wdiff transfer against the volume (system.md
// §5.9, in this order: ErrVolStopped, ErrSyncing, ErrWdiffRecv, another
// state (ErrWrongState), ErrArchiveNotFound, ErrDifferentUUID,
// ErrSmallerLvSize after an automatic resize, ErrTooOldDiff / ErrTooNewDiff
// / ErrNotApplicableDiff from the relation with the latest snapshot) and,
// if it is accepted, moves the volume to WdiffRecv.
func (e *Engine) BeginWdiffRecv(ctx context.Context, vol string, h WdiffHeader) (*WdiffRecv, error) {
	if h.Sender != SenderProxy && h.Sender != SenderArchive {
		return nil, errorf(ErrBadArgs, "wdiff-transfer %s: bad sender %q", vol, h.Sender)
	}
	if err := h.Diff.Validate(); err != nil {
		return nil, errorf(ErrBadArgs, "wdiff-transfer %s: %v", vol, err)
	}
	if err := server.ValidateVolumeName(vol); err != nil {
		return nil, err
	}
	if err := e.wdiffStateReply(vol); err != nil {
		return nil, err
	}
	v, err := e.volume(vol)
	if err != nil {
		return nil, errorf(ErrArchiveNotFound, "%s", vol)
	}
	v.mu.Lock()
	uuid := v.uuid
	v.mu.Unlock()
	if h.Sender == SenderProxy && uuid != h.UUID {
		return nil, errorf(ErrDifferentUUID, "volume %s has %s, diff from %s", vol, uuid, h.UUID)
	}
	if err := e.autoResize(ctx, v, h.SizeLB); err != nil {
		return nil, err
	}
	v.mu.Lock()
	size := v.sizeLB
	v.mu.Unlock()
	if size < h.SizeLB {
		return nil, errorf(ErrSmallerLvSize, "volume %s: base %d LB, source %d LB", vol, size, h.SizeLB)
	}
	if size > h.SizeLB {
		e.logv(vol).Warn("base image larger than the source volume", "baseLb", size, "sourceLb", h.SizeLB)
	}
	// The relation is checked before the transaction, so that refusals do
	// not log state changes, and again inside it, where no other transfer
	// can add a diff.
	if err := e.relationReply(v, h.Diff); err != nil {
		return nil, err
	}
	tx, err := e.vols.Begin(ctx, vol, StateWdiffRecv, guard(CmdWdiffTransfer))
	if err != nil {
		if err2 := e.wdiffStateReply(vol); err2 != nil {
			return nil, err2
		}
		return nil, err
	}
	if err := e.relationReply(v, h.Diff); err != nil {
		tx.Rollback()
		return nil, err
	}
	actx, done := v.actionContext(ctx)
	return &WdiffRecv{e: e, v: v, tx: tx, h: h, ctx: actx, done: done}, nil
}

// relationReply checks d against the latest snapshot of v: nil when it
// applies, else the too-old / too-new / not-applicable reply.
func (e *Engine) relationReply(v *volume, d meta.Diff) error {
	latest := v.diffs.LatestSnap(v.getBase())
	switch meta.RelationOf(latest, d) {
	case meta.Applicable:
		return nil
	case meta.TooOld:
		return errorf(ErrTooOldDiff, "volume %s: latest %s, diff %s", v.name, latest, d)
	case meta.TooNew:
		return errorf(ErrTooNewDiff, "volume %s: latest %s, diff %s", v.name, latest, d)
	default:
		return errorf(ErrNotApplicableDiff, "volume %s: latest %s, diff %s", v.name, latest, d)
	}
}

// wdiffStateReply maps a state that refuses transfers to its reply.
func (e *Engine) wdiffStateReply(vol string) error {
	switch st := e.vols.State(vol); st {
	case StateStopped, StateStart:
		return errorf(ErrVolStopped, "%s", vol)
	case StateFullSync, StateHashSync:
		return errorf(ErrSyncing, "%s", vol)
	case StateWdiffRecv:
		return errorf(ErrWdiffRecv, "%s", vol)
	case StateArchived:
		if e.vols.StopState(vol) != server.NotStopping {
			return errorf(ErrStopping, "%s", vol)
		}
		return nil
	default:
		return errorf(ErrWrongState, "wdiff-transfer %s: volume is %s", vol, st)
	}
}

// autoResize grows the base to sizeLB when AutoResize is on. It refuses
// (ErrBusy) while an apply or restore holds the image, since a clone being
// applied would undo the growth when it replaces the base.
func (e *Engine) autoResize(ctx context.Context, v *volume, sizeLB uint64) error {
	if !e.cfg.AutoResize {
		return nil
	}
	v.mu.Lock()
	size := v.sizeLB
	v.mu.Unlock()
	if size == 0 || sizeLB <= size {
		return nil
	}
	if !v.baseMu.TryLock() {
		return errorf(ErrBusy, "volume %s: auto-resize to %d LB", v.name, sizeLB)
	}
	defer v.baseMu.Unlock()
	if e.vols.NumAction(v.name, ActionApply) > 0 {
		return errorf(ErrBusy, "volume %s: auto-resize to %d LB during apply", v.name, sizeLB)
	}
	if err := e.cfg.Images.Resize(ctx, baseImageName(v.name), int64(sizeLB*lbSize)); err != nil {
		return errors.Wrapf(err, "archive: volume %s: auto-resize", v.name)
	}
	v.mu.Lock()
	v.sizeLB = sizeLB
	v.mu.Unlock()
	e.logv(v.name).Info("auto-resized the base image", "fromLb", size, "toLb", sizeLB)
	return nil
}

// Context returns the transfer's context: canceled by a force stop of the
// volume or by the context BeginWdiffRecv got.
func (r *WdiffRecv) Context() context.Context { return r.ctx }

// Receive reads the whole wdiff from src, a sorted wdiff file (32-byte
// file header, packs, end pack), into a temporary file. Every pack header
// and every record's data checksum is verified and the data decompressed;
// records must be sorted, inside the source volume, and the stream must end
// right after the end pack. The file keeps the packs as sent, under a
// header carrying the transfer's uuid (as walb-tools writes it). On any
// failure the temporary file is removed and the error wraps
// ErrCorruptStream (or the reader's error).
func (r *WdiffRecv) Receive(src io.Reader) error {
	if r.ended || r.got {
		return errors.Wrap(ErrBadArgs, "archive: wdiff already received or ended")
	}
	tmp, err := meta.CreateTemp(r.v.dir, 0o644)
	if err != nil {
		return errors.Wrapf(err, "archive: wdiff-transfer %s", r.v.name)
	}
	if err := r.receive(src, tmp); err != nil {
		_ = tmp.Abort()
		return err
	}
	r.tmp = tmp
	r.got = true
	return nil
}

func (r *WdiffRecv) receive(src io.Reader, tmp *meta.TempFile) error {
	vol := r.v.name
	var hb [wdiff.FileHeaderSize]byte
	if _, err := io.ReadFull(src, hb[:]); err != nil {
		return streamErr(err, "wdiff-transfer %s: file header", vol)
	}
	fh, err := wdiff.ParseFileHeader(hb[:])
	if err != nil {
		return errorf(ErrCorruptStream, "wdiff-transfer %s: %v", vol, err)
	}
	if fh.Type != wdiff.TypeSorted {
		return errorf(ErrCorruptStream, "wdiff-transfer %s: not a sorted wdiff", vol)
	}
	out := wdiff.FileHeader{Type: wdiff.TypeSorted, UUID: r.h.UUID}
	ob, err := out.MarshalBinary()
	if err != nil {
		return err
	}
	w := &syncingFileWriter{f: tmp.File, interval: r.e.cfg.fsyncInterval()}
	if _, err := w.Write(ob); err != nil {
		return errors.Wrapf(err, "archive: wdiff-transfer %s", vol)
	}
	// The packs go to the file exactly as read, while the reader checks
	// them; eofReader notes whether the stream ended before an end pack.
	body := &eofReader{r: &ctxReader{ctx: r.ctx, r: src}}
	tee := io.TeeReader(body, w)
	sr, err := wdiff.NewSortedReader(io.MultiReader(bytesReader(ob), tee))
	if err != nil {
		return errorf(ErrCorruptStream, "wdiff-transfer %s: %v", vol, err)
	}
	limit := r.h.SizeLB
	for {
		rec, err := sr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			if cerr := r.ctx.Err(); cerr != nil {
				return errors.Wrapf(cerr, "archive: wdiff-transfer %s", vol)
			}
			if w.err != nil {
				return errors.Wrapf(w.err, "archive: wdiff-transfer %s", vol)
			}
			if body.err != nil && !errors.Is(body.err, io.EOF) {
				return errors.Wrapf(body.err, "archive: wdiff-transfer %s", vol)
			}
			return errorf(ErrCorruptStream, "wdiff-transfer %s: %v", vol, err)
		}
		if rec.End() > limit {
			return errorf(ErrCorruptStream, "wdiff-transfer %s: record [%d, %d) passes the volume size %d LB", vol, rec.Addr, rec.End(), limit)
		}
	}
	if body.eof {
		return errorf(ErrCorruptStream, "wdiff-transfer %s: stream ended without an end pack", vol)
	}
	var one [1]byte
	if n, err := body.Read(one[:]); n != 0 || err != io.EOF {
		if err != nil && err != io.EOF {
			return errors.Wrapf(err, "archive: wdiff-transfer %s", vol)
		}
		return errorf(ErrCorruptStream, "wdiff-transfer %s: data after the end pack", vol)
	}
	if w.err != nil {
		return errors.Wrapf(w.err, "archive: wdiff-transfer %s", vol)
	}
	return nil
}

// Commit makes the received file durable under its wdiff name, registers
// it and returns the volume to Archived; the caller then acknowledges.
// Commit or Abort must be called exactly once.
func (r *WdiffRecv) Commit() error {
	if r.ended {
		return errors.Wrap(ErrBadArgs, "archive: wdiff already ended")
	}
	if !r.got {
		r.Abort()
		return errors.Wrap(ErrBadArgs, "archive: wdiff commit without data")
	}
	defer r.Abort()
	if err := r.ctx.Err(); err != nil {
		return errors.Wrapf(err, "archive: wdiff-transfer %s", r.v.name)
	}
	d := r.h.Diff
	fi, err := r.tmp.Stat()
	if err != nil {
		return err
	}
	d.DataSize = uint64(fi.Size())
	path, err := meta.DiffPath(r.v.dir, d)
	if err != nil {
		return err
	}
	if err := r.tmp.Commit(path); err != nil {
		return errors.Wrapf(err, "archive: wdiff-transfer %s", r.v.name)
	}
	r.tmp = nil
	if err := r.v.addDiff(d); err != nil {
		return errors.Wrapf(err, "archive: wdiff-transfer %s", r.v.name)
	}
	r.v.mu.Lock()
	r.v.lastWdiffRecv = time.Now()
	r.v.mu.Unlock()
	if err := r.tx.Commit(StateArchived); err != nil {
		return err
	}
	r.e.logv(r.v.name).Debug("wdiff received", "diff", d.String(), "size", d.DataSize)
	return nil
}

// Abort drops the transfer: the temporary file is removed and the volume
// returns to Archived. It is a no-op after Commit.
func (r *WdiffRecv) Abort() {
	if r.ended {
		return
	}
	r.ended = true
	if r.tmp != nil {
		_ = r.tmp.Abort()
		r.tmp = nil
	}
	r.tx.Rollback()
	r.done()
}

// ReceiveWdiff runs a whole transfer from an io.Reader: BeginWdiffRecv,
// Receive, Commit. Tests and local tools use it; the network server runs
// the steps itself to reply between them.
func (e *Engine) ReceiveWdiff(ctx context.Context, vol string, h WdiffHeader, src io.Reader) error {
	r, err := e.BeginWdiffRecv(ctx, vol, h)
	if err != nil {
		return err
	}
	if err := r.Receive(src); err != nil {
		r.Abort()
		return err
	}
	return r.Commit()
}

// streamErr reports a read error of a received stream: a short stream is
// ErrCorruptStream, anything else keeps its cause.
func streamErr(err error, format string, args ...any) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return errorf(ErrCorruptStream, format+": truncated", args...)
	}
	return errors.Wrapf(err, "archive: "+format, args...)
}
