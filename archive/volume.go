package archive

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/nbd"
	"github.com/walb-go/walb/wdiff"
)

// Names of the files in a volume directory (system.md §5.2).
const (
	stateFileName       = "state"
	uuidFileName        = "uuid"
	archiveUUIDFileName = "archive_uuid"
	baseFileName        = "base"
)

// Prefixes of the engine's own entries in the base directory. They start
// with '.', which no volume name can, so they never collide with a volume.
const (
	initDirPrefix  = ".init-"  // a volume directory being created by init-vol
	clearDirPrefix = ".clear-" // a volume directory being deleted by clear-vol
)

// Image names, as walb-tools names its logical volumes. Volume names have
// no '_', so the gid parses back unambiguously.
func baseImageName(vol string) string { return "wb_" + vol }

func restoredImageName(vol string, gid uint64) string {
	return "wr_" + vol + "_" + strconv.FormatUint(gid, 10)
}

// parseRestoredImageName returns the volume and gid of a restored image
// name, ok false for any other name.
func parseRestoredImageName(name string) (vol string, gid uint64, ok bool) {
	rest, found := strings.CutPrefix(name, "wr_")
	if !found {
		return "", 0, false
	}
	i := strings.LastIndexByte(rest, '_')
	if i <= 0 {
		return "", 0, false
	}
	g, err := strconv.ParseUint(rest[i+1:], 10, 64)
	if err != nil || strconv.FormatUint(g, 10) != rest[i+1:] {
		return "", 0, false
	}
	return rest[:i], g, true
}

// ExportName is the NBD export name of a restored image.
func ExportName(vol string, gid uint64) string {
	return vol + "/" + strconv.FormatUint(gid, 10)
}

// diffKey identifies a diff as meta.Diff.Equal does: by its snapshots.
type diffKey struct{ b, e meta.Snap }

func keyOf(d meta.Diff) diffKey { return diffKey{d.SnapB, d.SnapE} }

// export is a restored image served over NBD.
type export struct {
	name    string
	backend *nbd.FileBackend
}

// volume is the in-memory side of one volume directory. Its state lives
// in the engine's server.Volumes; everything else is here.
type volume struct {
	name string
	dir  string

	// baseMu orders access to the base image's content and size: readers
	// (a restore reading the base state and cloning the image) hold it
	// shared; writers (an in-place apply, the commit of a cloned apply, a
	// resize) hold it exclusively.
	baseMu sync.RWMutex

	diffs *meta.DiffSet

	progressLB atomic.Uint64

	mu            sync.Mutex // guards the fields below
	base          meta.State
	uuid          meta.UUID
	archiveUUID   meta.UUID
	sizeLB        uint64 // base image size; 0 without a base image
	restored      map[uint64]*export
	pins          map[diffKey]int
	doomed        map[diffKey]string // removed from diffs while pinned: file to unlink at unpin
	lastSync      time.Time
	lastWdiffRecv time.Time
	cancels       map[int]context.CancelFunc
	nextCancel    int
}

func newVolume(name, dir string) *volume {
	ds, _ := meta.NewDiffSet()
	return &volume{
		name:     name,
		dir:      dir,
		diffs:    ds,
		base:     meta.DefaultState(),
		restored: map[uint64]*export{},
		pins:     map[diffKey]int{},
		doomed:   map[diffKey]string{},
		cancels:  map[int]context.CancelFunc{},
	}
}

func (v *volume) path(name string) string { return filepath.Join(v.dir, name) }

// Metadata files. Each is written atomically with an integrity trailer
// (meta.Save); a torn or corrupt file is refused at load.

func saveState(dir, st string) error {
	return meta.SaveFunc(filepath.Join(dir, stateFileName), func(e *meta.Encoder) error { return e.String(st) })
}

func loadState(dir string) (string, error) {
	var st string
	err := meta.LoadFunc(filepath.Join(dir, stateFileName), func(d *meta.Decoder) error {
		var err error
		st, err = d.String(64)
		return err
	})
	return st, err
}

func saveUUID(dir, name string, u meta.UUID) error {
	return meta.Save(filepath.Join(dir, name), u)
}

func loadUUID(dir, name string) (meta.UUID, error) {
	var u meta.UUID
	err := meta.Load(filepath.Join(dir, name), &u)
	return u, err
}

func saveBase(dir string, st meta.State) error {
	return meta.Save(filepath.Join(dir, baseFileName), st)
}

func loadBase(dir string) (meta.State, error) {
	var st meta.State
	err := meta.Load(filepath.Join(dir, baseFileName), &st)
	return st, err
}

// writeInitialMetadata writes what init-vol and reset-vol leave: zero
// uuids, the default base, and the SyncReady state, written last so that
// a crash before it leaves the previous state.
func writeInitialMetadata(dir string) error {
	var zero meta.UUID
	if err := saveUUID(dir, uuidFileName, zero); err != nil {
		return err
	}
	if err := saveUUID(dir, archiveUUIDFileName, zero); err != nil {
		return err
	}
	if err := saveBase(dir, meta.DefaultState()); err != nil {
		return err
	}
	return saveState(dir, StateSyncReady)
}

// getBase returns the base state.
func (v *volume) getBase() meta.State {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.base
}

// setBase persists st as the base, then caches it.
func (v *volume) setBase(st meta.State) error {
	if err := saveBase(v.dir, st); err != nil {
		return errors.Wrapf(err, "archive: volume %s: save base %s", v.name, st)
	}
	v.mu.Lock()
	v.base = st
	v.mu.Unlock()
	return nil
}

// pin keeps the files of ds from being unlinked while a restore reads
// them; unpin releases them and unlinks those removed meanwhile.
func (v *volume) pin(ds []meta.Diff) {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, d := range ds {
		v.pins[keyOf(d)]++
	}
}

func (v *volume) unpin(ds []meta.Diff) {
	v.mu.Lock()
	var unlink []string
	for _, d := range ds {
		k := keyOf(d)
		v.pins[k]--
		if v.pins[k] > 0 {
			continue
		}
		delete(v.pins, k)
		if name, ok := v.doomed[k]; ok {
			delete(v.doomed, k)
			unlink = append(unlink, name)
		}
	}
	v.mu.Unlock()
	v.unlinkFiles(unlink)
}

// removeDiffs drops ds from the index and unlinks their files, except
// those pinned by a running restore, which go when it ends. A crash before
// the unlink leaves files that gc removes at the next start, since they are
// off the chain by then.
func (v *volume) removeDiffs(ds []meta.Diff) {
	v.mu.Lock()
	var unlink []string
	for _, d := range ds {
		cur, ok := v.diffs.Get(d)
		if !ok {
			continue
		}
		v.diffs.Remove(cur)
		name, err := meta.FileName(cur)
		if err != nil {
			continue
		}
		if v.pins[keyOf(cur)] > 0 {
			v.doomed[keyOf(cur)] = name
		} else {
			unlink = append(unlink, name)
		}
	}
	v.mu.Unlock()
	v.unlinkFiles(unlink)
}

func (v *volume) unlinkFiles(names []string) {
	if len(names) == 0 {
		return
	}
	for _, n := range names {
		_ = os.Remove(v.path(n))
	}
	_ = meta.SyncDir(v.dir)
}

// addDiff registers a diff whose file has just been committed. A file
// pending deletion under the same snapshots is replaced by it, so it must
// not be unlinked later.
func (v *volume) addDiff(d meta.Diff) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	delete(v.doomed, keyOf(d))
	return v.diffs.Add(d)
}

// openDiff opens the current file of d. The name is resolved and the file
// opened under the lock, so that a concurrent rename (enable/disable
// snapshot) or removal cannot slip between them.
func (v *volume) openDiff(d meta.Diff) (*wdiff.File, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	name, err := v.diffFileNameLocked(d)
	if err != nil {
		return nil, err
	}
	f, err := wdiff.Open(v.path(name))
	if err != nil {
		return nil, errors.Wrapf(err, "archive: volume %s: open %s", v.name, name)
	}
	return f, nil
}

// diffFileNameLocked returns the name of d's current file: indexed, or
// removed from the index but still pinned by a reader (ErrNotFound when
// neither). v.mu must be held, and kept until the file is open.
func (v *volume) diffFileNameLocked(d meta.Diff) (string, error) {
	if cur, ok := v.diffs.Get(d); ok {
		return meta.FileName(cur)
	}
	if n, ok := v.doomed[keyOf(d)]; ok {
		return n, nil
	}
	return "", errorf(ErrNotFound, "volume %s: diff %s is gone", v.name, d)
}

// openDiffs opens the files of ds, in order, and returns them as readers
// with a function that closes them all; on failure, those already opened
// are closed.
func (v *volume) openDiffs(ds []meta.Diff) ([]wdiff.Reader, func(), error) {
	files := make([]*wdiff.File, 0, len(ds))
	closeAll := func() {
		for _, f := range files {
			_ = f.Close()
		}
	}
	readers := make([]wdiff.Reader, 0, len(ds))
	for _, d := range ds {
		f, err := v.openDiff(d)
		if err != nil {
			closeAll()
			return nil, nil, err
		}
		files = append(files, f)
		readers = append(readers, f)
	}
	return readers, closeAll, nil
}

// actionContext derives a context that a force stop of the volume cancels.
func (v *volume) actionContext(ctx context.Context) (context.Context, func()) {
	ctx, cancel := context.WithCancel(ctx)
	v.mu.Lock()
	id := v.nextCancel
	v.nextCancel++
	v.cancels[id] = cancel
	v.mu.Unlock()
	return ctx, func() {
		v.mu.Lock()
		delete(v.cancels, id)
		v.mu.Unlock()
		cancel()
	}
}

// cancelActions cancels every running action's context (force stop).
func (v *volume) cancelActions() {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, c := range v.cancels {
		c()
	}
}

// restoredGids returns the gids of the restored images, sorted.
func (v *volume) restoredGids() []uint64 {
	v.mu.Lock()
	defer v.mu.Unlock()
	out := make([]uint64, 0, len(v.restored))
	for g := range v.restored {
		out = append(out, g)
	}
	sortU64(out)
	return out
}
