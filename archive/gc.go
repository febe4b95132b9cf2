package archive

import (
	"context"

	"github.com/walb-go/walb/meta"
)

// GcDiff deletes the diffs that are not on the chain from the base (the
// volume active or Stopped, nothing running) and returns them: the
// sources of an interrupted merge, dead branches, parts of a diff that a
// replication delivered whole.
func (e *Engine) GcDiff(ctx context.Context, vol string) ([]meta.Diff, error) {
	v, err := e.volume(vol)
	if err != nil {
		if err2 := e.vols.Check(vol, guard(CmdGcDiff)); err2 != nil {
			return nil, err2
		}
		return nil, err
	}
	end, err := e.vols.StartAction(vol, gcAction, guard(CmdGcDiff))
	if err != nil {
		return nil, err
	}
	defer end()
	base := v.getBase()
	v.mu.Lock()
	gone := v.diffs.Gc(base.SnapB)
	v.mu.Unlock()
	v.dropRemoved(gone)
	if len(gone) > 0 {
		e.logv(vol).Info("gc-diff done", "removed", len(gone))
	}
	return gone, nil
}

// gcAction is held while gc-diff runs, so that the precondition check and
// the removal are atomic with respect to the other commands. It is not one
// of the counted actions of get num-action.
const gcAction = "GcDiff"

// dropRemoved unlinks the files of diffs already taken out of the index,
// deferring those pinned by a restore.
func (v *volume) dropRemoved(ds []meta.Diff) {
	v.mu.Lock()
	var unlink []string
	for _, d := range ds {
		name, err := meta.FileName(d)
		if err != nil {
			continue
		}
		if v.pins[keyOf(d)] > 0 {
			v.doomed[keyOf(d)] = name
		} else {
			unlink = append(unlink, name)
		}
	}
	v.mu.Unlock()
	v.unlinkFiles(unlink)
}
