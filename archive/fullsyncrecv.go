package archive

import (
	"context"
	"time"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/imagestore"
	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/server"
)

// FullSyncRecv receives a full image into a volume's base (full backup,
// system.md §6.5 dirty-full-sync3): the volume sits in FullSync while the
// bulks arrive in address order; Commit makes the image the base and the
// volume Archived. Until Commit the persisted state stays SyncReady, so a
// crash or an error leaves SyncReady and the backup must be rerun.
type FullSyncRecv struct {
	syncTxn
	img    imagestore.Image
	sizeLB uint64
	pos    uint64 // bytes written so far
	dirty  int64  // bytes since the last fdatasync
	ended  bool
}

// BeginFullSync starts receiving a full image of sizeLB blocks into vol,
// which must be SyncReady with nothing running and not stopping. The base
// image is created, or grown if smaller; an existing image's content is
// overwritten by the bulks (zero bulks deallocate), and anything past
// sizeLB is deallocated.
func (e *Engine) BeginFullSync(ctx context.Context, vol string, sizeLB uint64) (*FullSyncRecv, error) {
	t, err := e.beginSyncTxn(ctx, vol, "full-sync", sizeLB, StateFullSync, CmdFullSync)
	if err != nil {
		return nil, err
	}
	f := &FullSyncRecv{syncTxn: t, sizeLB: sizeLB}
	if err := f.openBase(ctx); err != nil {
		f.Abort()
		return nil, err
	}
	t.v.progressLB.Store(0)
	e.logv(vol).Info("full-sync started", "sizeLb", sizeLB)
	return f, nil
}

// maxVolumeLB bounds volume sizes (2^63 bytes).
const maxVolumeLB = 1 << 54

// syncTxn is what a receiving sync from a storage (FullSyncRecv,
// HashSyncRecv) holds while its volume sits in the sync's transient
// state: the state transaction, and the action context that a force stop
// of the volume cancels.
type syncTxn struct {
	e    *Engine
	v    *volume
	tx   *server.StateTxn
	ctx  context.Context
	done func()
}

// beginSyncTxn checks the device size (op names the sync in the error),
// moves vol into the state via under cmd's guard and makes the action
// context. The caller ends it with end.
func (e *Engine) beginSyncTxn(ctx context.Context, vol, op string, sizeLB uint64, via string, cmd Command) (syncTxn, error) {
	if sizeLB == 0 || sizeLB > maxVolumeLB {
		return syncTxn{}, errorf(ErrBadArgs, "%s %s: size %d LB", op, vol, sizeLB)
	}
	tx, v, err := e.beginOn(ctx, vol, via, cmd)
	if err != nil {
		return syncTxn{}, err
	}
	actx, done := v.actionContext(ctx)
	return syncTxn{e: e, v: v, tx: tx, ctx: actx, done: done}, nil
}

// end rolls the state transaction back (a no-op after its commit), clears
// the progress shown and releases the action context.
func (t *syncTxn) end() {
	t.tx.Rollback()
	t.v.progressLB.Store(0)
	t.done()
}

func (f *FullSyncRecv) openBase(ctx context.Context) error {
	store := f.e.cfg.Images
	name := baseImageName(f.v.name)
	want := int64(f.sizeLB * lbSize)
	img, err := store.Open(ctx, name, imagestore.ReadWrite)
	switch {
	case errors.Is(err, imagestore.ErrNotFound):
		img, err = store.Create(ctx, name, want)
		if err != nil {
			return errors.Wrapf(err, "archive: full-sync %s: create base image", f.v.name)
		}
	case err != nil:
		return errors.Wrapf(err, "archive: full-sync %s: open base image", f.v.name)
	case img.Size() < want:
		_ = img.Close()
		if err := store.Resize(ctx, name, want); err != nil {
			return errors.Wrapf(err, "archive: full-sync %s: grow base image", f.v.name)
		}
		if img, err = store.Open(ctx, name, imagestore.ReadWrite); err != nil {
			return errors.Wrapf(err, "archive: full-sync %s: open base image", f.v.name)
		}
	}
	f.img = img
	if img.Size() > want {
		if err := img.Punch(want, img.Size()-want); err != nil {
			return errors.Wrapf(err, "archive: full-sync %s: clear the tail of the base image", f.v.name)
		}
	}
	f.v.mu.Lock()
	f.v.sizeLB = uint64(img.Size()) / lbSize
	f.v.mu.Unlock()
	return nil
}

// SizeLB returns the announced size.
func (f *FullSyncRecv) SizeLB() uint64 { return f.sizeLB }

// Context returns the context of the transfer: canceled by a force stop of
// the volume or by the context BeginFullSync got.
func (f *FullSyncRecv) Context() context.Context { return f.ctx }

func (f *FullSyncRecv) check(n int64) error {
	if f.ended {
		return errors.Wrap(ErrBadArgs, "archive: full-sync already ended")
	}
	if err := f.ctx.Err(); err != nil {
		return errors.Wrapf(err, "archive: full-sync %s", f.v.name)
	}
	if n%lbSize != 0 {
		return errorf(ErrCorruptStream, "full-sync %s: bulk of %d bytes is not a whole number of blocks", f.v.name, n)
	}
	if f.pos+uint64(n) > f.sizeLB*lbSize {
		return errorf(ErrCorruptStream, "full-sync %s: bulk at %d of %d bytes passes the volume size %d LB", f.v.name, f.pos, n, f.sizeLB)
	}
	return nil
}

// Write writes the next bulk of data (a whole number of blocks).
func (f *FullSyncRecv) Write(p []byte) (int, error) {
	if err := f.check(int64(len(p))); err != nil {
		return 0, err
	}
	n, err := f.img.WriteAt(p, int64(f.pos))
	f.advance(int64(n))
	if err != nil {
		return n, errors.Wrapf(err, "archive: full-sync %s: write at %d", f.v.name, f.pos)
	}
	return n, f.maybeSync()
}

// WriteZeros records that the next nLB blocks are zero.
func (f *FullSyncRecv) WriteZeros(nLB uint64) error {
	if nLB > f.sizeLB {
		return errorf(ErrCorruptStream, "full-sync %s: zero bulk of %d LB", f.v.name, nLB)
	}
	n := int64(nLB * lbSize)
	if err := f.check(n); err != nil {
		return err
	}
	if err := f.img.Punch(int64(f.pos), n); err != nil {
		return errors.Wrapf(err, "archive: full-sync %s: zero at %d", f.v.name, f.pos)
	}
	f.advance(n)
	return f.maybeSync()
}

func (f *FullSyncRecv) advance(n int64) {
	f.pos += uint64(n)
	f.dirty += n
	f.v.progressLB.Store(f.pos / lbSize)
}

func (f *FullSyncRecv) maybeSync() error {
	if f.dirty < f.e.cfg.fsyncInterval() {
		return nil
	}
	f.dirty = 0
	if err := f.img.Sync(); err != nil {
		return errors.Wrapf(err, "archive: full-sync %s: fdatasync", f.v.name)
	}
	return nil
}

// Flush checks that every block has arrived and makes them durable (the
// archive acknowledges the data before the storage takes its snapshot).
func (f *FullSyncRecv) Flush() error {
	if f.ended {
		return errors.Wrap(ErrBadArgs, "archive: full-sync already ended")
	}
	if f.pos != f.sizeLB*lbSize {
		return errorf(ErrCorruptStream, "full-sync %s: %d of %d bytes received", f.v.name, f.pos, f.sizeLB*lbSize)
	}
	if err := f.img.Sync(); err != nil {
		return errors.Wrapf(err, "archive: full-sync %s: fdatasync", f.v.name)
	}
	f.dirty = 0
	return nil
}

// Commit ends the transfer once every block has arrived: the image is
// synced, then the base becomes <snap> stamped ts, a new archive uuid is
// generated, uuid is stored as the source device's, and the volume becomes
// Archived (the state file is written last). Commit or Abort must be
// called exactly once.
func (f *FullSyncRecv) Commit(snap meta.Snap, ts time.Time, uuid meta.UUID) error {
	if f.ended {
		return errors.Wrap(ErrBadArgs, "archive: full-sync already ended")
	}
	defer f.Abort()
	if f.pos != f.sizeLB*lbSize {
		return errorf(ErrCorruptStream, "full-sync %s: %d of %d bytes received", f.v.name, f.pos, f.sizeLB*lbSize)
	}
	if err := snap.Validate(); err != nil {
		return errorf(ErrBadArgs, "full-sync %s: snapshot %s: %v", f.v.name, snap, err)
	}
	base := meta.NewState(snap, ts)
	if err := base.Validate(); err != nil {
		return errorf(ErrBadArgs, "full-sync %s: base %s: %v", f.v.name, base, err)
	}
	if err := f.img.Sync(); err != nil {
		return errors.Wrapf(err, "archive: full-sync %s: fdatasync", f.v.name)
	}
	aUUID, err := meta.NewUUID()
	if err != nil {
		return err
	}
	if err := f.installBase("full-sync", base, aUUID, uuid); err != nil {
		return err
	}
	f.e.logv(f.v.name).Info("full-sync done", "base", base.StringTs(), "uuid", uuid.String())
	return nil
}

// installBase ends a full image transfer whose image is synced: base, the
// archive uuid aUUID and the device uuid are saved, in that order, and
// become the volume's, then the volume is committed Archived (the state
// file last, so that a crash before leaves SyncReady). op names the
// transfer in errors.
func (f *FullSyncRecv) installBase(op string, base meta.State, aUUID, uuid meta.UUID) error {
	v := f.v
	if err := saveBase(v.dir, base); err != nil {
		return errors.Wrapf(err, "archive: %s %s", op, v.name)
	}
	if err := saveUUID(v.dir, archiveUUIDFileName, aUUID); err != nil {
		return errors.Wrapf(err, "archive: %s %s", op, v.name)
	}
	if err := saveUUID(v.dir, uuidFileName, uuid); err != nil {
		return errors.Wrapf(err, "archive: %s %s", op, v.name)
	}
	v.mu.Lock()
	v.base, v.archiveUUID, v.uuid = base, aUUID, uuid
	v.lastSync = time.Now()
	v.mu.Unlock()
	return f.e.commitState(f.tx, v, StateArchived)
}

// Abort ends the transfer without committing: the volume returns to
// SyncReady. It is a no-op after Commit.
func (f *FullSyncRecv) Abort() {
	if f.ended {
		return
	}
	f.ended = true
	if f.img != nil {
		_ = f.img.Close()
	}
	f.end()
}
