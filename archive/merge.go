package archive

import (
	"context"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/wdiff"
)

// MergeRange says which diffs `merge VOL gidB ...` takes: the mergeable
// list from GidB, either up to a total input of MaxBytes (`size MB`) or
// stopping at the first diff starting at or after GidE (`gid GIDE`).
type MergeRange struct {
	GidB     uint64
	MaxBytes uint64 // size mode when non-zero
	GidE     uint64 // gid mode when MaxBytes is zero
}

// MergeCheck is a validated merge, ready to run.
type MergeCheck struct {
	e    *Engine
	v    *volume
	r    MergeRange
	end  func()
	ran  bool
	list []meta.Diff
}

// mergeList selects the diffs of r, capped to MaxWdiffFiles.
func (e *Engine) mergeList(v *volume, r MergeRange) ([]meta.Diff, error) {
	var list []meta.Diff
	var err error
	if r.MaxBytes > 0 {
		list, err = v.diffs.MergeListBySize(r.GidB, r.MaxBytes)
	} else {
		if r.GidE <= r.GidB {
			return nil, errorf(ErrBadArgs, "merge %s: gidE %d <= gidB %d", v.name, r.GidE, r.GidB)
		}
		list, err = v.diffs.MergeListByGid(r.GidB, r.GidE)
	}
	if errors.Is(err, meta.ErrTooFewDiffs) {
		return nil, errorf(ErrNothingToMerge, "volume %s from gid %d", v.name, r.GidB)
	}
	if err != nil {
		return nil, errors.Wrapf(err, "archive: merge %s", v.name)
	}
	if n := e.cfg.maxWdiffFiles(); len(list) > n {
		list = list[:n]
	}
	if len(list) < 2 {
		return nil, errorf(ErrNothingToMerge, "volume %s from gid %d", v.name, r.GidB)
	}
	return list, nil
}

// PrepareMerge checks a merge (the volume active and not stopping, no
// Apply, Merge or Resize running, the base not applying, at least two
// diffs to merge) and starts the Merge action.
func (e *Engine) PrepareMerge(vol string, r MergeRange) (*MergeCheck, error) {
	v, end, err := e.startAction(vol, ActionMerge, CmdMerge)
	if err != nil {
		return nil, err
	}
	if base := v.getBase(); base.IsApplying {
		end()
		return nil, errorf(ErrApplying, "merge %s: base %s", vol, base)
	}
	list, err := e.mergeList(v, r)
	if err != nil {
		end()
		return nil, err
	}
	return &MergeCheck{e: e, v: v, r: r, end: end, list: list}, nil
}

// Cancel ends a prepared merge that will not run.
func (m *MergeCheck) Cancel() {
	if !m.ran {
		m.ran = true
		m.end()
	}
}

// Run merges the selected diffs into one sorted, snappy-compressed diff
// (system.md §5.4): written to a temporary file (fdatasynced every
// FsyncInterval), fsynced, renamed into place and registered; then the
// sources are deleted. A crash before the rename leaves the sources only;
// after it, both, and the next start's gc deletes the sources because the
// merged diff has more progress.
func (m *MergeCheck) Run(ctx context.Context) error {
	if m.ran {
		return errors.Wrap(ErrBadArgs, "archive: merge already run")
	}
	m.ran = true
	defer m.end()
	e, v := m.e, m.v
	ctx, done := v.actionContext(ctx)
	defer done()
	// Sources are selected again: diffs may have arrived since Prepare.
	list, err := e.mergeList(v, m.r)
	if err != nil {
		return err
	}
	merged, err := meta.MergeAll(list)
	if err != nil {
		return errors.Wrapf(err, "archive: merge %s", v.name)
	}
	if v.diffs.Exists(merged) {
		return errorf(ErrExists, "merge %s: diff %s exists; gc-diff removes its parts", v.name, merged)
	}
	v.pin(list)
	defer v.unpin(list)
	readers, closeAll, err := v.openDiffs(list)
	if err != nil {
		return err
	}
	defer closeAll()
	tmp, err := meta.CreateTemp(v.dir, 0o644)
	if err != nil {
		return errors.Wrapf(err, "archive: merge %s", v.name)
	}
	defer func() { _ = tmp.Abort() }()
	w := &syncingFileWriter{f: tmp.File, interval: e.cfg.fsyncInterval()}
	st, err := wdiff.Merge(ctx, readers, w, wdiff.MergeOptions{Compression: e.cfg.mergeCompression()})
	if err != nil {
		return errors.Wrapf(err, "archive: merge %s", v.name)
	}
	fi, err := tmp.Stat()
	if err != nil {
		return err
	}
	merged.DataSize = uint64(fi.Size())
	path, err := meta.DiffPath(v.dir, merged)
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return errors.Wrapf(err, "archive: merge %s", v.name)
	}
	if err := tmp.Commit(path); err != nil {
		return errors.Wrapf(err, "archive: merge %s", v.name)
	}
	if err := v.addDiff(merged); err != nil {
		return errors.Wrapf(err, "archive: merge %s", v.name)
	}
	v.removeDiffs(list)
	e.logv(v.name).Info("merge done", "diffs", len(list), "merged", merged.String(), "size", merged.DataSize, "records", st.OutputRecords)
	return nil
}

// Merge runs a whole merge (PrepareMerge then Run).
func (e *Engine) Merge(ctx context.Context, vol string, r MergeRange) error {
	m, err := e.PrepareMerge(vol, r)
	if err != nil {
		return err
	}
	return m.Run(ctx)
}
