package archive

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/imagestore"
	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/server"
)

// Engine is the archive's volume engine: it owns the base directory and the
// image store and runs every archive command without any network. The
// network server (Server) and tests drive it. Its methods are safe for
// concurrent use; the state table and the precondition table decide which
// commands may run together on one volume.
type Engine struct {
	cfg  Config
	log  *slog.Logger
	vols *server.Volumes

	mu      sync.Mutex
	volumes map[string]*volume
	closed  bool
}

// Open checks the base directory and the image store, recovers what a crash
// left (system.md §7) and returns the engine:
//
//   - temporary images and files are deleted (interrupted restores, applies
//     to a clone, wdiff receptions and merges);
//   - half-created (init-vol) and half-deleted (clear-vol) volume
//     directories are removed;
//   - each volume's state, uuids and base are loaded, and its *.wdiff files
//     re-indexed from their names; an active volume must have its base
//     image, and the diffs off the chain from the base (sources of an
//     interrupted merge, diffs an apply had finished with) are deleted;
//   - restored images are registered and exported.
//
// A base left applying by a crash stays applying (it is consistent: the
// minimum list completes it); ResumeApplies finishes such applies.
func Open(ctx context.Context, cfg Config) (*Engine, error) {
	if cfg.BaseDir == "" {
		return nil, errors.Wrap(ErrBadArgs, "archive: no base directory")
	}
	if cfg.Images == nil {
		return nil, errors.Wrap(ErrBadArgs, "archive: no image store")
	}
	if fi, err := os.Stat(cfg.BaseDir); err != nil {
		return nil, errors.Wrap(err, "archive: base directory")
	} else if !fi.IsDir() {
		return nil, errors.Errorf("archive: base directory %s is not a directory", cfg.BaseDir)
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	e := &Engine{
		cfg:     cfg,
		log:     cfg.Logger,
		vols:    server.NewVolumes(Table, cfg.Logger),
		volumes: map[string]*volume{},
	}
	if err := e.recover(ctx); err != nil {
		e.closeExports()
		return nil, err
	}
	return e, nil
}

// Volumes returns the state registry (states, actions, stop states), which
// the network server shares.
func (e *Engine) Volumes() *server.Volumes { return e.vols }

// Config returns the engine's configuration.
func (e *Engine) Config() Config { return e.cfg }

// Close withdraws the NBD exports. Running commands should have ended
// (the server's shutdown waits for them).
func (e *Engine) Close() error {
	e.mu.Lock()
	e.closed = true
	e.mu.Unlock()
	e.closeExports()
	return nil
}

// VolumeNames returns the volumes that have a directory, sorted.
func (e *Engine) VolumeNames() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	names := make([]string, 0, len(e.volumes))
	for n := range e.volumes {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// volume returns the in-memory volume vol (which has a directory).
func (e *Engine) volume(vol string) (*volume, error) {
	if err := server.ValidateVolumeName(vol); err != nil {
		return nil, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	v, ok := e.volumes[vol]
	if !ok {
		return nil, errorf(ErrNotFound, "volume %s", vol)
	}
	return v, nil
}

// startAction starts action on vol under cmd's guard and returns the
// volume with the action's end, which the caller must call. The guard
// speaks first: an unknown volume in a state that refuses cmd gets the
// state error; one that passes the guard without a directory is
// ErrNotFound, the action ended again.
func (e *Engine) startAction(vol, action string, cmd Command) (*volume, func(), error) {
	v, err := e.volume(vol)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return nil, nil, err
	}
	end, err := e.vols.StartAction(vol, action, guard(cmd))
	if err != nil {
		return nil, nil, err
	}
	if v == nil {
		end()
		return nil, nil, errorf(ErrNotFound, "volume %s", vol)
	}
	return v, end, nil
}

// checkedVolume returns vol once cmd's guard allows the command, with the
// guard's error first, as startAction does, for commands that run without
// an action of their own.
func (e *Engine) checkedVolume(vol string, cmd Command) (*volume, error) {
	v, err := e.volume(vol)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return nil, err
	}
	if err := e.vols.Check(vol, guard(cmd)); err != nil {
		return nil, err
	}
	if v == nil {
		return nil, errorf(ErrNotFound, "volume %s", vol)
	}
	return v, nil
}

// beginOn moves vol into the transient state via under cmd's guard and
// returns the transaction with the volume; on error nothing is held.
func (e *Engine) beginOn(ctx context.Context, vol, via string, cmd Command) (*server.StateTxn, *volume, error) {
	tx, err := e.vols.Begin(ctx, vol, via, guard(cmd))
	if err != nil {
		return nil, nil, err
	}
	v, err := e.volume(vol)
	if err != nil {
		tx.Rollback()
		return nil, nil, err
	}
	return tx, v, nil
}

// State returns vol's state (Clear for an unknown volume).
func (e *Engine) State(vol string) (string, error) {
	if err := server.ValidateVolumeName(vol); err != nil {
		return "", err
	}
	return e.vols.State(vol), nil
}

// commitState persists st as the volume's state, then commits tx to it: the
// order that keeps the file and memory agreeing after a crash (the file
// may be ahead, never behind, of what a client was told).
func (e *Engine) commitState(tx *server.StateTxn, v *volume, st string) error {
	if err := saveState(v.dir, st); err != nil {
		return errors.Wrapf(err, "archive: volume %s: save state %s", v.name, st)
	}
	return tx.Commit(st)
}

// logv returns the engine logger with the volume key.
func (e *Engine) logv(vol string) *slog.Logger { return e.log.With("vol", vol) }

// recover implements Open's recovery.
func (e *Engine) recover(ctx context.Context) error {
	store := e.cfg.Images
	if temps, err := store.CleanTemps(ctx); err != nil {
		return errors.Wrap(err, "archive: clean temporary images")
	} else if len(temps) > 0 {
		e.log.Info("removed temporary images left by a crash", "images", temps)
	}
	entries, err := os.ReadDir(e.cfg.BaseDir)
	if err != nil {
		return errors.Wrap(err, "archive: read base directory")
	}
	cleaned := false
	for _, ent := range entries {
		name := ent.Name()
		if strings.HasPrefix(name, initDirPrefix) || strings.HasPrefix(name, clearDirPrefix) {
			if err := os.RemoveAll(filepath.Join(e.cfg.BaseDir, name)); err != nil {
				return errors.Wrapf(err, "archive: remove leftover %s", name)
			}
			e.log.Info("removed a volume directory left by an interrupted init-vol or clear-vol", "dir", name)
			cleaned = true
			continue
		}
		if !ent.IsDir() || server.ValidateVolumeName(name) != nil {
			continue
		}
		if err := e.loadVolume(ctx, name); err != nil {
			return err
		}
	}
	if cleaned {
		if err := meta.SyncDir(e.cfg.BaseDir); err != nil {
			return errors.Wrap(err, "archive: sync base directory")
		}
	}
	return e.loadImages(ctx)
}

// loadVolume loads one volume directory.
func (e *Engine) loadVolume(ctx context.Context, name string) error {
	dir := filepath.Join(e.cfg.BaseDir, name)
	log := e.logv(name)
	if temps, err := meta.CleanTemps(dir); err != nil {
		return errors.Wrapf(err, "archive: volume %s: clean temporary files", name)
	} else if len(temps) > 0 {
		log.Info("removed temporary files left by a crash", "files", temps)
	}
	st, err := loadState(dir)
	if err != nil {
		return errorf(ErrBroken, "volume %s: state file: %v", name, err)
	}
	if !slices.Contains([]string{StateSyncReady, StateArchived, StateStopped}, st) {
		return errorf(ErrBroken, "volume %s: state file holds %q", name, st)
	}
	v := newVolume(name, dir)
	if v.uuid, err = loadUUID(dir, uuidFileName); err != nil {
		return errorf(ErrBroken, "volume %s: uuid file: %v", name, err)
	}
	if v.archiveUUID, err = loadUUID(dir, archiveUUIDFileName); err != nil {
		return errorf(ErrBroken, "volume %s: archive_uuid file: %v", name, err)
	}
	if v.base, err = loadBase(dir); err != nil {
		return errorf(ErrBroken, "volume %s: base file: %v", name, err)
	}
	ds, bad, err := meta.LoadDir(dir)
	if err != nil {
		return errors.Wrapf(err, "archive: volume %s: index wdiffs", name)
	}
	for _, b := range bad {
		log.Warn("wdiff file not indexed; left in place", "file", b.Name, "err", b.Err)
	}
	v.diffs = ds
	img, err := e.cfg.Images.Open(ctx, baseImageName(name), imagestore.ReadOnly)
	switch {
	case err == nil:
		v.sizeLB = uint64(img.Size()) / lbSize
		_ = img.Close()
	case errors.Is(err, imagestore.ErrNotFound):
		if slices.Contains(ActiveStates, st) {
			return errorf(ErrBroken, "volume %s is %s but its base image %s does not exist", name, st, baseImageName(name))
		}
	default:
		return errors.Wrapf(err, "archive: volume %s: open base image", name)
	}
	if st == StateArchived {
		if gone := ds.Gc(v.base.SnapB); len(gone) > 0 {
			v.unlinkDiffFiles(gone)
			log.Info("removed diffs off the chain from the base", "n", len(gone), "base", v.base.String())
		}
	}
	if v.base.IsApplying {
		log.Warn("base was left applying by a crash; it is completed by the next apply", "base", v.base.String())
	}
	if err := e.vols.Set(name, st); err != nil {
		return err
	}
	e.mu.Lock()
	e.volumes[name] = v
	e.mu.Unlock()
	log.Debug("volume loaded", "state", st, "base", v.base.StringTs(), "diffs", ds.Len())
	return nil
}

// unlinkDiffFiles deletes the files of diffs already out of the index.
func (v *volume) unlinkDiffFiles(ds []meta.Diff) {
	names := make([]string, 0, len(ds))
	for _, d := range ds {
		if n, err := meta.FileName(d); err == nil {
			names = append(names, n)
		}
	}
	v.unlinkFiles(names)
}

// loadImages registers and exports the restored images of known volumes
// and reports images that belong to no volume.
func (e *Engine) loadImages(ctx context.Context) error {
	names, err := e.cfg.Images.List(ctx)
	if err != nil {
		return errors.Wrap(err, "archive: list images")
	}
	for _, n := range names {
		if vol, gid, ok := parseRestoredImageName(n); ok {
			v, err := e.volume(vol)
			if err != nil {
				e.log.Warn("restored image of an unknown volume; left in place", "image", n)
				continue
			}
			if err := e.addExport(v, gid); err != nil {
				return err
			}
			continue
		}
		if vol, ok := strings.CutPrefix(n, "wb_"); ok {
			if _, err := e.volume(vol); err != nil {
				e.log.Warn("base image of an unknown volume; left in place", "image", n)
			}
		}
	}
	return nil
}

// lbSize is the logical block size.
const lbSize = 512

func sortU64(s []uint64) { slices.Sort(s) }
