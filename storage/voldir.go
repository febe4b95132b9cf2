package storage

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/meta"
)

// Files of a volume directory <base>/<vol>/ (system.md §3.2). Every file but
// the queue is a small metadata file written atomically (meta.SaveFunc): the
// cybozu serialization of its value, as walb-tools writes it, plus an
// integrity trailer.
const (
	fileState = "state" // string: SyncReady, Stopped, Target or Standby
	filePath  = "path"  // string: the device path the volume is bound to
	fileUUID  = "uuid"  // 16 bytes: the log uuid, copied at every WAL reset
	fileDone  = "done"  // LsidGid: wlogs below lsid are acknowledged
	fileQueue = "queue" // queue file of LsidGid snapshot records
)

// tmpDirPrefix starts the names of directories being created or removed.
// It cannot start a volume name, so a crash leftover is never mistaken for
// a volume and is removed at startup.
const tmpDirPrefix = ".tmp-"

// volume is the in-memory side of a volume directory. mu serializes every
// change of the metadata (done, queue, uuid) and of the device's log (WAL
// reset, log release), so that a snapshot, a transfer's prepare and finish
// steps, and a reset never interleave.
type volume struct {
	name string
	dir  string

	mu      sync.Mutex
	devPath string
	devMu   sync.Mutex // guards dev; taken after mu when both are
	dev     Device     // resolved lazily; nil until then
	queue   *meta.Queue
	done    meta.LsidGid
	uuid    meta.UUID

	// monitored is set while the volume is watched for new logs (Target,
	// Standby and during a backup). Guarded by Storage.monMu.
	monitored  bool
	lastLatest uint64
	lastSend   time.Time // last acknowledged wlog transfer (status)

	// backup is the running full-bkp or hash-bkp, for its progress.
	backup atomic.Pointer[backupRun]
}

func (v *volume) file(name string) string { return filepath.Join(v.dir, name) }

func saveString(path, s string) error {
	return meta.SaveFunc(path, func(e *meta.Encoder) error { return e.String(s) })
}

func loadString(path string, max int) (string, error) {
	var s string
	err := meta.LoadFunc(path, func(d *meta.Decoder) error {
		var err error
		s, err = d.String(max)
		return err
	})
	return s, err
}

// maxPathLen bounds the device path a `path` file may hold.
const maxPathLen = 4096

func (v *volume) saveState(st string) error {
	if !slices.Contains(persistedStates, st) {
		return errors.Wrapf(ErrCorrupt, "volume %s: state %q is not persisted", v.name, st)
	}
	return errors.WithMessagef(saveString(v.file(fileState), st), "volume %s: save state", v.name)
}

func (v *volume) loadState() (string, error) {
	st, err := loadString(v.file(fileState), 64)
	if err != nil {
		return "", errors.WithMessagef(err, "volume %s: load state", v.name)
	}
	if !slices.Contains(persistedStates, st) {
		return "", errors.Wrapf(ErrCorrupt, "volume %s: state file holds %q", v.name, st)
	}
	return st, nil
}

// saveDone makes rec the durable done record, then the in-memory one.
func (v *volume) saveDone(rec meta.LsidGid) error {
	if err := meta.Save(v.file(fileDone), rec); err != nil {
		return errors.WithMessagef(err, "volume %s: save done", v.name)
	}
	v.done = rec
	return nil
}

func (v *volume) saveUUID(u meta.UUID) error {
	if err := meta.Save(v.file(fileUUID), u); err != nil {
		return errors.WithMessagef(err, "volume %s: save uuid", v.name)
	}
	v.uuid = u
	return nil
}

// createVolumeDir builds a complete volume directory for vol bound to
// devPath under a temporary name and renames it into place, so that a crash
// leaves either no volume or a whole one in SyncReady.
func createVolumeDir(ctx context.Context, base, vol, devPath string, now time.Time) (*volume, error) {
	tmp := filepath.Join(base, tmpDirPrefix+"init-"+vol)
	if err := os.RemoveAll(tmp); err != nil {
		return nil, errors.Wrapf(err, "storage: init-vol %s", vol)
	}
	if err := os.Mkdir(tmp, 0o755); err != nil {
		return nil, errors.Wrapf(err, "storage: init-vol %s", vol)
	}
	v := &volume{name: vol, dir: tmp, devPath: devPath}
	fail := func(err error) (*volume, error) {
		if v.queue != nil {
			v.queue.Close()
		}
		os.RemoveAll(tmp)
		return nil, errors.WithMessagef(err, "storage: init-vol %s", vol)
	}
	q, err := meta.CreateQueue(ctx, v.file(fileQueue), 0o644)
	if err != nil {
		return fail(err)
	}
	v.queue = q
	done := meta.DefaultLsidGid()
	done.Timestamp = now
	steps := []func() error{
		func() error { return saveString(v.file(filePath), devPath) },
		func() error { return v.saveState(StateSyncReady) },
		func() error { return v.saveDone(done) },
		func() error { return v.saveUUID(meta.UUID{}) },
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return fail(err)
		}
	}
	final := filepath.Join(base, vol)
	if err := os.Rename(tmp, final); err != nil {
		return fail(err)
	}
	v.dir = final
	if err := meta.SyncDir(base); err != nil {
		v.queue.Close()
		return nil, errors.WithMessagef(err, "storage: init-vol %s", vol)
	}
	return v, nil
}

// openVolumeDir loads an existing volume directory. It returns the
// persisted state with the volume.
func openVolumeDir(ctx context.Context, dir, vol string) (*volume, string, error) {
	v := &volume{name: vol, dir: dir}
	if _, err := meta.CleanTemps(dir); err != nil {
		return nil, "", err
	}
	st, err := v.loadState()
	if err != nil {
		return nil, "", err
	}
	if v.devPath, err = loadString(v.file(filePath), maxPathLen); err != nil {
		return nil, "", errors.WithMessagef(err, "volume %s: load path", vol)
	}
	if err := meta.Load(v.file(fileDone), &v.done); err != nil {
		return nil, "", errors.WithMessagef(err, "volume %s: load done", vol)
	}
	if err := meta.Load(v.file(fileUUID), &v.uuid); err != nil {
		return nil, "", errors.WithMessagef(err, "volume %s: load uuid", vol)
	}
	q, err := meta.OpenQueue(ctx, v.file(fileQueue))
	if err != nil {
		return nil, "", errors.WithMessagef(err, "volume %s", vol)
	}
	v.queue = q
	if err := v.checkQueue(); err != nil {
		q.Close()
		return nil, "", err
	}
	return v, st, nil
}

// checkQueue verifies the queue's order: lsids and gids never decrease from
// back (oldest) to front (newest), gids strictly increase.
func (v *volume) checkQueue() error {
	items := v.queue.Items()
	for i := len(items) - 1; i > 0; i-- {
		older, newer := items[i], items[i-1]
		if newer.Lsid < older.Lsid || newer.Gid <= older.Gid {
			return errors.Wrapf(ErrCorrupt, "volume %s: queue records out of order: %s then %s", v.name, older, newer)
		}
	}
	return nil
}

// removeVolumeDir deletes a volume directory: rename it away first, so a
// crash never leaves a half-deleted volume that looks valid.
func removeVolumeDir(base, vol string) error {
	dir := filepath.Join(base, vol)
	tmp := filepath.Join(base, tmpDirPrefix+"clear-"+vol)
	if err := os.RemoveAll(tmp); err != nil {
		return errors.Wrapf(err, "storage: clear-vol %s", vol)
	}
	if err := os.Rename(dir, tmp); err != nil {
		return errors.Wrapf(err, "storage: clear-vol %s", vol)
	}
	if err := meta.SyncDir(base); err != nil {
		return err
	}
	return errors.Wrapf(os.RemoveAll(tmp), "storage: clear-vol %s", vol)
}

// isTmpDir reports whether a base directory entry is a crash leftover.
func isTmpDir(name string) bool { return strings.HasPrefix(name, tmpDirPrefix) }
