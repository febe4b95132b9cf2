package archive

import (
	"context"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/meta"
)

// RestoreCheck is a validated restore, ready to run: the server replies
// accept between PrepareRestore and Run, as walb-tools does.
type RestoreCheck struct {
	e   *Engine
	v   *volume
	gid uint64
	end func()
	ran bool
}

// PrepareRestore checks a restore of gid (the volume active, not stopping,
// no Restore or Resize running, gid restorable and not restored yet) and
// starts the Restore action. Run, or Cancel, must follow.
func (e *Engine) PrepareRestore(vol string, gid uint64) (*RestoreCheck, error) {
	v, end, err := e.startAction(vol, ActionRestore, CmdRestore)
	if err != nil {
		return nil, err
	}
	v.mu.Lock()
	_, done := v.restored[gid]
	v.mu.Unlock()
	if done {
		end()
		return nil, errorf(ErrExists, "volume %s: gid %d is already restored", vol, gid)
	}
	if !v.diffs.IsRestorable(v.getBase(), gid) {
		end()
		return nil, errorf(ErrNotRestorable, "volume %s: gid %d", vol, gid)
	}
	return &RestoreCheck{e: e, v: v, gid: gid, end: end}, nil
}

// Cancel ends a prepared restore that will not run.
func (r *RestoreCheck) Cancel() {
	if !r.ran {
		r.ran = true
		r.end()
	}
}

// Run materializes the snapshot: the base is cloned to a temporary image
// (a reflink where the store can), the restore list is applied to the clone
// (merged on the fly, at most MaxOpen files per pass), and the clone is
// committed as wr_VOL_GID and exported. A crash or error at any point
// leaves no restored image but a temporary one, which the next start
// deletes; the base and the diffs are only read.
func (r *RestoreCheck) Run(ctx context.Context) error {
	if r.ran {
		return errors.Wrap(ErrBadArgs, "archive: restore already run")
	}
	r.ran = true
	defer r.end()
	e, v, gid := r.e, r.v, r.gid
	ctx, done := v.actionContext(ctx)
	defer done()
	log := e.logv(v.name).With("gid", gid)
	name := restoredImageName(v.name, gid)

	// The base state and the image cloned must belong together: an apply
	// changes both under baseMu held exclusively.
	v.baseMu.RLock()
	base := v.getBase()
	v.mu.Lock()
	list, ok := v.diffs.RestoreList(base, gid)
	if ok {
		for _, d := range list {
			v.pins[keyOf(d)]++
		}
	}
	v.mu.Unlock()
	if !ok {
		v.baseMu.RUnlock()
		return errorf(ErrNotRestorable, "volume %s: gid %d", v.name, gid)
	}
	defer v.unpin(list)
	pending, err := e.cfg.Images.CloneTemp(ctx, baseImageName(v.name), name)
	v.baseMu.RUnlock()
	if err != nil {
		return errors.Wrapf(err, "archive: restore %s %d: clone the base", v.name, gid)
	}
	defer func() { _ = pending.Abort() }()
	log.Info("restore started", "base", base.String(), "diffs", len(list))
	if len(list) > 0 {
		if err := e.applyDiffs(ctx, v, pending, list); err != nil {
			return err
		}
	}
	reached, err := base.Apply(list...)
	if err != nil || reached.IsApplying || reached.SnapB != meta.CleanSnap(gid) {
		return errors.Errorf("archive: restore %s %d: the list reaches %s (%v)", v.name, gid, reached, err)
	}
	if err := ctx.Err(); err != nil {
		return errors.Wrapf(err, "archive: restore %s %d", v.name, gid)
	}
	if err := pending.Commit(ctx); err != nil {
		return errors.Wrapf(err, "archive: restore %s %d: commit", v.name, gid)
	}
	if err := e.addExport(v, gid); err != nil {
		// The image exists; the next start exports it again.
		log.Error("restored image not exported", "err", err)
	}
	log.Info("restore done", "image", name)
	return nil
}

// Restore runs a whole restore (PrepareRestore then Run).
func (e *Engine) Restore(ctx context.Context, vol string, gid uint64) error {
	r, err := e.PrepareRestore(vol, gid)
	if err != nil {
		return err
	}
	return r.Run(ctx)
}

// DelRestored withdraws the export of restored image gid and deletes it
// (the volume active or Stopped, no Restore or Resize running).
func (e *Engine) DelRestored(ctx context.Context, vol string, gid uint64) error {
	v, err := e.checkedVolume(vol, CmdDelRestored)
	if err != nil {
		return err
	}
	v.mu.Lock()
	_, ok := v.restored[gid]
	v.mu.Unlock()
	if !ok {
		return errorf(ErrNotFound, "volume %s: gid %d is not restored", vol, gid)
	}
	if err := e.deleteRestored(ctx, v, gid); err != nil {
		return err
	}
	e.logv(vol).Info("del-restored done", "gid", gid)
	return nil
}

// Restored returns the gids of vol's restored images, sorted.
func (e *Engine) Restored(vol string) ([]uint64, error) {
	v, err := e.volume(vol)
	if err != nil {
		return nil, err
	}
	return v.restoredGids(), nil
}

// RestoredPath returns the path of a restored image, for tools that open
// it directly (qemu-img, dd, a loop device).
func (e *Engine) RestoredPath(vol string, gid uint64) (string, error) {
	v, err := e.volume(vol)
	if err != nil {
		return "", err
	}
	v.mu.Lock()
	_, ok := v.restored[gid]
	v.mu.Unlock()
	if !ok {
		return "", errorf(ErrNotFound, "volume %s: gid %d is not restored", vol, gid)
	}
	return e.cfg.Images.Path(restoredImageName(vol, gid))
}
