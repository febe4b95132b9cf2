package archive

import (
	"context"
	"os"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/meta"
)

// SetSnapshotEnabled implements enable-snapshot (enabled true: the
// snapshots at gids become explicit, so they are listed by default and
// never merged away) and disable-snapshot (false: implicit). The diffs
// starting at each gid have their mergeable flag flipped, which renames
// their files; each rename is atomic, so a crash leaves every diff with
// either flag. It fails (ErrNotFound) for a gid where no diff starts,
// after handling the others.
func (e *Engine) SetSnapshotEnabled(ctx context.Context, vol string, gids []uint64, enabled bool) error {
	cmd := CmdDisableSnapshot
	if enabled {
		cmd = CmdEnableSnapshot
	}
	v, err := e.volume(vol)
	if err != nil {
		if err2 := e.vols.Check(vol, guard(cmd)); err2 != nil {
			return err2
		}
		return err
	}
	if len(gids) == 0 {
		return errorf(ErrBadArgs, "%s %s: no gid", cmd, vol)
	}
	end, err := e.vols.StartAction(vol, string(cmd), guard(cmd))
	if err != nil {
		return err
	}
	defer end()
	// Under the volume lock: restores resolve file names under it too.
	v.mu.Lock()
	defer v.mu.Unlock()
	var failed []uint64
	for _, gid := range gids {
		changes, err := v.diffs.SetMergeable(gid, !enabled)
		if err != nil {
			failed = append(failed, gid)
			continue
		}
		if err := v.renameChanged(changes); err != nil {
			// Put the index back as the files are.
			for _, c := range changes {
				v.diffs.Remove(c.New)
				_ = v.diffs.Add(c.Old)
			}
			return errors.Wrapf(err, "archive: %s %s", cmd, vol)
		}
		e.logv(vol).Info(string(cmd), "gid", gid, "diffs", len(changes))
	}
	if err := meta.SyncDir(v.dir); err != nil {
		return errors.Wrapf(err, "archive: %s %s", cmd, vol)
	}
	if len(failed) > 0 {
		return errorf(ErrNotFound, "%s %s: no diff starts at %v", cmd, vol, failed)
	}
	return nil
}

// renameChanged renames the file of each changed diff. On failure the
// renames done are undone, so the files match the old flags again.
func (v *volume) renameChanged(changes []meta.DiffChange) error {
	type pair struct{ from, to string }
	var done []pair
	for _, c := range changes {
		oldName, err := meta.FileName(c.Old)
		if err != nil {
			return err
		}
		newName, err := meta.FileName(c.New)
		if err != nil {
			return err
		}
		if err := os.Rename(v.path(oldName), v.path(newName)); err != nil {
			for i := len(done) - 1; i >= 0; i-- {
				_ = os.Rename(v.path(done[i].to), v.path(done[i].from))
			}
			return err
		}
		done = append(done, pair{oldName, newName})
	}
	return nil
}
