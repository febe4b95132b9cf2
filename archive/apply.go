package archive

import (
	"context"
	"slices"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/imagestore"
	"github.com/walb-go/walb/meta"
)

// ApplyCheck is a validated apply, ready to run (the server replies accept
// in between, as walb-tools does).
type ApplyCheck struct {
	e   *Engine
	v   *volume
	gid uint64
	end func()
	ran bool
}

// PrepareApply checks an apply up to gid (the volume active and not
// stopping; no Restore, ReplSyncAsClient, Apply, Merge or Resize running;
// at least one diff to apply) and starts the Apply action. Run, or Cancel,
// must follow.
func (e *Engine) PrepareApply(vol string, gid uint64) (*ApplyCheck, error) {
	v, end, err := e.startAction(vol, ActionApply, CmdApply)
	if err != nil {
		return nil, err
	}
	if len(v.diffs.ApplyList(v.getBase(), gid)) == 0 {
		end()
		return nil, errorf(ErrNothingToApply, "volume %s: base %s, gid %d", vol, v.getBase(), gid)
	}
	return &ApplyCheck{e: e, v: v, gid: gid, end: end}, nil
}

// Cancel ends a prepared apply that will not run.
func (a *ApplyCheck) Cancel() {
	if !a.ran {
		a.ran = true
		a.end()
	}
}

// Run applies the diffs up to gid to the base (system.md §5.3). Each pass
// takes the chain from the base cut at gid (at most MaxOpen files, never
// fewer than the minimum list), persists the applying state <B-->E>,
// writes the merged diffs into the base, persists <E>, then deletes the
// diffs the base has passed. The base image is written in place, or, with
// a clone (ApplyClone, or ApplyAuto on a reflink store), the diffs go into
// a clone that replaces the base atomically. A crash leaves the applying
// state over an image somewhere between B and E; the minimum list, applied
// again, completes it (applying is idempotent), which the next apply (or
// ResumeApplies) does. Restores meanwhile include the minimum list.
func (a *ApplyCheck) Run(ctx context.Context) error {
	if a.ran {
		return errors.Wrap(ErrBadArgs, "archive: apply already run")
	}
	a.ran = true
	defer a.end()
	e, v := a.e, a.v
	ctx, done := v.actionContext(ctx)
	defer done()
	log := e.logv(v.name).With("gid", a.gid)
	clone := e.cfg.Apply == ApplyClone || e.cfg.Apply == ApplyAuto && e.cfg.Images.Capabilities().Reflink
	start := v.getBase()
	for pass := 0; ; pass++ {
		if err := ctx.Err(); err != nil {
			return errors.Wrapf(err, "archive: apply %s %d", v.name, a.gid)
		}
		base := v.getBase()
		list := v.diffs.ApplyList(base, a.gid)
		if len(list) == 0 {
			if pass == 0 {
				return errorf(ErrNothingToApply, "volume %s: base %s, gid %d", v.name, base, a.gid)
			}
			break
		}
		if m := e.cfg.MaxOpen; m > 0 && len(list) > m {
			list = list[:max(m, len(v.diffs.MinimumList(base)))]
		}
		begin, err := base.BeginApplying(list)
		if err != nil {
			return errors.Wrapf(err, "archive: apply %s", v.name)
		}
		end, err := base.EndApplying(list)
		if err != nil {
			return errors.Wrapf(err, "archive: apply %s", v.name)
		}
		log.Info("apply pass", "from", base.String(), "to", end.String(), "diffs", len(list), "clone", clone)
		if clone {
			err = e.applyToClone(ctx, v, list, begin, end)
		} else {
			err = e.applyInPlace(ctx, v, list, begin, end)
		}
		if err != nil {
			return err
		}
		e.eraseBefore(v, end.SnapB.GidB)
	}
	log.Info("apply done", "from", start.StringTs(), "base", v.getBase().StringTs())
	return nil
}

// applyInPlace writes list into the base image itself. Readers of the base
// (a restore taking its clone) wait meanwhile.
func (e *Engine) applyInPlace(ctx context.Context, v *volume, list []meta.Diff, begin, end meta.State) error {
	v.baseMu.Lock()
	defer v.baseMu.Unlock()
	if err := v.setBase(begin); err != nil {
		return err
	}
	img, err := e.cfg.Images.Open(ctx, baseImageName(v.name), imagestore.ReadWrite)
	if err != nil {
		return errors.Wrapf(err, "archive: apply %s: open base", v.name)
	}
	defer img.Close()
	if err := e.applyDiffs(ctx, v, img, list); err != nil {
		return err
	}
	return v.setBase(end)
}

// applyToClone writes list into a clone of the base and renames the clone
// over the base. The base image is never half-applied; the applying state
// still brackets the change, since a crash between the rename and saving
// <E> leaves state <B-->E> over an image already at E.
func (e *Engine) applyToClone(ctx context.Context, v *volume, list []meta.Diff, begin, end meta.State) error {
	if err := v.setBase(begin); err != nil {
		return err
	}
	name := baseImageName(v.name)
	v.baseMu.RLock()
	pending, err := e.cfg.Images.CloneTemp(ctx, name, name)
	v.baseMu.RUnlock()
	if err != nil {
		return errors.Wrapf(err, "archive: apply %s: clone the base", v.name)
	}
	defer func() { _ = pending.Abort() }()
	if err := e.applyDiffs(ctx, v, pending, list); err != nil {
		return err
	}
	v.baseMu.Lock()
	defer v.baseMu.Unlock()
	if err := ctx.Err(); err != nil {
		return errors.Wrapf(err, "archive: apply %s", v.name)
	}
	if err := pending.Commit(ctx); err != nil {
		return errors.Wrapf(err, "archive: apply %s: replace the base", v.name)
	}
	return v.setBase(end)
}

// eraseBefore deletes the diffs that end at or before gid: the base has
// passed them.
func (e *Engine) eraseBefore(v *volume, gid uint64) {
	var gone []meta.Diff
	for _, d := range v.diffs.All() {
		if d.SnapE.GidB <= gid {
			gone = append(gone, d)
		}
	}
	v.removeDiffs(gone)
}

// Apply runs a whole apply (PrepareApply then Run).
func (e *Engine) Apply(ctx context.Context, vol string, gid uint64) error {
	a, err := e.PrepareApply(vol, gid)
	if err != nil {
		return err
	}
	return a.Run(ctx)
}

// Applying returns the volumes whose base was left applying (by a crash or
// a failed apply) and that are active, so ResumeApplies can finish them.
func (e *Engine) Applying() []string {
	var out []string
	for _, name := range e.VolumeNames() {
		v, err := e.volume(name)
		if err != nil {
			continue
		}
		if v.getBase().IsApplying && slices.Contains(ActiveStates, e.vols.State(name)) {
			out = append(out, name)
		}
	}
	return out
}

// ResumeApplies finishes the applies a crash interrupted: each applying
// base is applied up to its target (the worker's first rule, system.md
// §8.3). Volumes busy with another action are skipped and reported in the
// error.
func (e *Engine) ResumeApplies(ctx context.Context) error {
	var errs []error
	for _, vol := range e.Applying() {
		v, err := e.volume(vol)
		if err != nil {
			continue
		}
		target := v.getBase().SnapE.GidB
		e.logv(vol).Info("finishing an interrupted apply", "base", v.getBase().String())
		if err := e.Apply(ctx, vol, target); err != nil {
			errs = append(errs, errors.WithMessagef(err, "volume %s", vol))
		}
	}
	if len(errs) > 0 {
		return errors.Errorf("archive: resume applies: %v", errs)
	}
	return nil
}
