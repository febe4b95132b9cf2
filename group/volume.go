package group

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/controller"
	"github.com/walb-go/walb/devhost"
	"github.com/walb-go/walb/server"
	"github.com/walb-go/walb/storage"
	"github.com/walb-go/walb/walb"
)

// DevicePathPrefix starts the device path under which a storage knows a
// volume's device: /dev/walb/NAME, the node walb-tools' storages are given.
// In a group it is a name the storage resolves through the group, not a
// file.
const DevicePathPrefix = "/dev/walb/"

// Names of the files of a volume's device directory.
const (
	logFile  = "log"
	dataFile = "data"
)

// Prefixes of device directories being created or deleted; a crash leaves
// them behind and the next Start removes them.
const (
	newPrefix = ".new-"
	delPrefix = ".del-"
)

// Volume is one WalB device of the group and the volume its storage
// backs up. The device is an io.ReaderAt and io.WriterAt (with Flush,
// WriteAtFUA, Trim...) usable directly, and an NBD export unless the group
// runs with NoNBD.
type Volume struct {
	g    *Group
	name string
	st   *storageNode
	dir  string // DIR/devices/sN/NAME
	dev  *walb.Device
}

// Name returns the volume name, which is also the device's name and NBD
// export name.
func (v *Volume) Name() string { return v.name }

// Device returns the userspace WalB device. Every write to it is logged
// and reaches the archives through the storage and the proxies. It is
// closed by DeleteVolume and Close.
func (v *Volume) Device() *walb.Device { return v.dev }

// Size returns the device size in bytes.
func (v *Volume) Size() int64 { return v.dev.Size() }

// Storage returns the storage that backs the volume up.
func (v *Volume) Storage() controller.Server { return v.st.server() }

// DevicePath returns the path the storage knows the device by (init-vol's
// WDEV argument).
func (v *Volume) DevicePath() string { return DevicePathPrefix + v.name }

// LogDevicePath returns the device's log device (super sector and ring),
// a sparse file.
func (v *Volume) LogDevicePath() string { return filepath.Join(v.dir, logFile) }

// DataDevicePath returns the device's data device, a sparse file.
func (v *Volume) DataDevicePath() string { return filepath.Join(v.dir, dataFile) }

// NBDURI returns the URI of the device's read-write NBD export, e.g.
// nbd://127.0.0.1:40123/vol0 ("" with NoNBD).
func (v *Volume) NBDURI() string {
	if v.g.devNBD == nil {
		return ""
	}
	return v.g.nbdURI(v.g.devNBD.addr.String(), v.name)
}

// FullBackup copies the device to the primary archive while writes go on
// and returns the first restorable gid (controller.FullBackup with the
// group's compression). Afterwards the volume is Target: every write
// flows to the archive.
func (v *Volume) FullBackup(ctx context.Context) (uint64, error) {
	return v.g.ctl.FullBackup(ctx, v.Storage(), v.name, v.g.BackupOptions())
}

// Snapshot takes an explicit snapshot of the device as it is now (every
// write that returned is in it) and waits until the primary archive can
// restore it. It flushes the device first: the storage sends logs only
// once they are durable, and would otherwise wait for the device's next
// periodic log flush and look again only up to a second later.
func (v *Volume) Snapshot(ctx context.Context) (uint64, error) {
	if err := v.dev.FlushContext(ctx); err != nil {
		return 0, errors.Wrapf(err, "group: flush %s before a snapshot", v.name)
	}
	return v.g.ctl.Snapshot(ctx, v.Storage(), v.name, []controller.Server{v.g.Primary()})
}

// Restorable returns the explicit snapshots the primary archive can
// restore, oldest first.
func (v *Volume) Restorable(ctx context.Context) ([]uint64, error) {
	return v.g.ctl.GetRestorableGids(ctx, v.g.Primary(), v.name, false)
}

// Restore materializes snapshot gid on the primary archive as a read-only
// image and returns where it is: a file (Path) and, unless NoNBD, an
// export of the archive's NBD server (Group.RestoredURI). Delete it with
// the controller's DelRestored when done.
func (v *Volume) Restore(ctx context.Context, gid uint64) (controller.RestoredImage, error) {
	return v.g.ctl.Restore(ctx, v.g.Primary(), v.name, gid)
}

// Apply folds the diffs up to gid into the primary archive's base image:
// gid becomes the oldest restorable snapshot.
func (v *Volume) Apply(ctx context.Context, gid uint64) error {
	return v.g.ctl.Apply(ctx, v.g.Primary(), v.name, gid)
}

// HashBackup brings the volume back under backup by comparing the device
// with the primary archive's latest image and sending only the chunks that
// differ (controller.HashBackup): after GoStandby, after the log
// overflowed, or to move the backup to another storage holding a replica.
// It returns a gid restorable afterwards; the volume is then Target.
func (v *Volume) HashBackup(ctx context.Context) (uint64, error) {
	return v.g.ctl.HashBackup(ctx, v.Storage(), v.name, v.g.BackupOptions())
}

// GoStandby stops backing the volume up: its storage discards the log
// instead of sending it (controller.GoStandby). HashBackup resumes.
func (v *Volume) GoStandby(ctx context.Context) error {
	return v.g.ctl.GoStandby(ctx, v.Storage(), v.name)
}

// ReplicateTo copies the volume from the primary archive to archive ax up
// to its newest restorable snapshot (controller.ReplicateOnce: full, hash
// or diff replication, whichever the archives' states call for) and
// returns that gid.
func (v *Volume) ReplicateTo(ctx context.Context, ax controller.Server) (uint64, error) {
	return v.g.ctl.ReplicateOnce(ctx, v.g.Primary(), v.name, ax, nil)
}

// ValidName checks that name can name a volume of a group: a server volume
// name ([0-9A-Za-z-], at most 64 bytes) that is also a WalB device name
// (at most 25 bytes, not starting with '-').
func ValidName(name string) error {
	if err := server.ValidateVolumeName(name); err != nil {
		return errors.Wrapf(ErrBadName, "%v", err)
	}
	if err := devhost.ValidName(name); err != nil {
		return errors.Wrapf(ErrBadName, "%v", err)
	}
	return nil
}

// AddVolume makes a new volume: it creates the log and data devices as
// sparse files under the group directory, formats the log device, opens
// the WalB device, exports it over NBD, and initializes the volume on its
// storage, where it is then Standby (walb-tools' init_storage). Run
// FullBackup next to put it under backup. On failure nothing is left.
func (g *Group) AddVolume(ctx context.Context, name string, opt VolumeOptions) (*Volume, error) {
	if err := ValidName(name); err != nil {
		return nil, err
	}
	opt, err := opt.withDefaults(len(g.storages))
	if err != nil {
		return nil, err
	}
	if err := g.beginOp(); err != nil {
		return nil, err
	}
	defer g.opWG.Done()
	g.mu.Lock()
	if _, ok := g.vols[name]; ok {
		g.mu.Unlock()
		return nil, errors.Wrapf(ErrExists, "volume %s", name)
	}
	g.vols[name] = nil // reserved while it is made
	g.mu.Unlock()
	var v *Volume
	defer func() {
		g.mu.Lock()
		if v != nil {
			g.vols[name] = v
		} else {
			delete(g.vols, name)
		}
		g.mu.Unlock()
	}()

	st := g.storageOf(opt.Storage)
	nv, err := g.createDevice(ctx, st, name, opt)
	if err != nil {
		return nil, err
	}
	if err := g.ctl.InitStorage(ctx, st.server(), name, nv.DevicePath()); err != nil {
		if derr := g.destroyDevice(ctx, nv); derr != nil {
			g.log.Warn("group: removing the device of a failed AddVolume", "vol", name, "err", derr.Error())
		}
		return nil, errors.WithMessagef(err, "group: init volume %s on %s", name, st.name)
	}
	g.log.Info("group: volume added", "vol", name, "storage", st.name, "size", nv.Size())
	v = nv
	return v, nil
}

// DeleteVolume deletes a volume from the whole group: from its storage,
// from every proxy (queued diffs are dropped) and from every archive (its
// base image, diffs and restored images), then closes the device and
// removes its files. If clearing fails on a server the volume stays and
// DeleteVolume can be run again.
func (g *Group) DeleteVolume(ctx context.Context, name string) error {
	if err := g.beginOp(); err != nil {
		return err
	}
	defer g.opWG.Done()
	g.mu.Lock()
	v := g.vols[name]
	if v == nil {
		g.mu.Unlock()
		if _, busy := g.vols[name]; busy {
			return errors.Wrapf(ErrExists, "volume %s is being added or deleted", name)
		}
		return errors.Wrapf(ErrNotFound, "volume %s", name)
	}
	g.vols[name] = nil
	g.mu.Unlock()
	deleted := false
	defer func() {
		g.mu.Lock()
		if deleted {
			delete(g.vols, name)
		} else {
			g.vols[name] = v
		}
		g.mu.Unlock()
	}()
	servers := []controller.Server{v.Storage()}
	servers = append(servers, g.layout.Proxies...)
	servers = append(servers, g.layout.Archives...)
	for _, s := range servers {
		if err := g.ctl.ClearVol(ctx, s, name); err != nil {
			return errors.WithMessagef(err, "group: delete volume %s", name)
		}
	}
	if err := g.destroyDevice(ctx, v); err != nil {
		// The device is closed and unregistered by now: the volume is gone
		// even if its files could not all be removed.
		deleted = true
		return err
	}
	deleted = true
	g.log.Info("group: volume deleted", "vol", name)
	return nil
}

// beginOp registers a volume operation, which Close waits for.
func (g *Group) beginOp() error {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return ErrClosed
	}
	g.opWG.Add(1)
	return nil
}

// createDevice makes the device files in a temporary directory, formats
// the log device and renames the directory into place, so that a crash
// never leaves a half-made device under a volume's name; then it opens
// and registers the device.
func (g *Group) createDevice(ctx context.Context, st *storageNode, name string, opt VolumeOptions) (*Volume, error) {
	if err := os.MkdirAll(st.devDir, 0o700); err != nil {
		return nil, errors.Wrap(err, "group: device directory")
	}
	final := filepath.Join(st.devDir, name)
	if _, err := os.Lstat(final); err == nil {
		return nil, errors.Wrapf(ErrExists, "device directory %s", final)
	}
	tmp, err := os.MkdirTemp(st.devDir, newPrefix+name+"-")
	if err != nil {
		return nil, errors.Wrap(err, "group: device directory")
	}
	made := false
	defer func() {
		if !made {
			os.RemoveAll(tmp)
		}
	}()
	ldev, ddev := filepath.Join(tmp, logFile), filepath.Join(tmp, dataFile)
	if err := makeSparse(ddev, opt.Size); err != nil {
		return nil, err
	}
	if err := makeSparse(ldev, opt.LogSize); err != nil {
		return nil, err
	}
	if _, err := walb.FormatLogDevice(ldev, ddev, walb.FormatOptions{Name: name, PBS: opt.PBS}); err != nil {
		return nil, errors.Wrapf(err, "group: format the log device of %s", name)
	}
	if err := syncDir(tmp); err != nil {
		return nil, err
	}
	if err := os.Rename(tmp, final); err != nil {
		return nil, errors.Wrap(err, "group: device directory")
	}
	made = true
	if err := syncDir(st.devDir); err != nil {
		os.RemoveAll(final)
		return nil, err
	}
	v, err := g.openDevice(ctx, st, name, final)
	if err != nil {
		os.RemoveAll(final)
		return nil, err
	}
	return v, nil
}

// openDevice opens the device in dir (running its crash recovery),
// registers it with its storage and exports it.
func (g *Group) openDevice(ctx context.Context, st *storageNode, name, dir string) (*Volume, error) {
	lf, err := devhost.OpenExclusive(filepath.Join(dir, logFile), "log device")
	if err != nil {
		return nil, errors.WithMessagef(err, "group: volume %s", name)
	}
	df, err := devhost.OpenExclusive(filepath.Join(dir, dataFile), "data device")
	if err != nil {
		lf.Close()
		return nil, errors.WithMessagef(err, "group: volume %s", name)
	}
	ls, err := walb.NewFileStorage(lf)
	if err != nil {
		lf.Close()
		df.Close()
		return nil, errors.WithMessagef(err, "group: volume %s", name)
	}
	ds, err := walb.NewFileStorage(df)
	if err != nil {
		ls.Close()
		df.Close()
		return nil, errors.WithMessagef(err, "group: volume %s", name)
	}
	dev, err := walb.OpenStorage(ctx, ls, ds, g.cfg.Device) // its logs carry "vol" already
	if err != nil {
		ls.Close()
		ds.Close()
		return nil, errors.WithMessagef(err, "group: open device %s", name)
	}
	v := &Volume{g: g, name: name, st: st, dir: dir, dev: dev}
	st.devs.Add(v.DevicePath(), storage.WalbDevice{D: dev})
	if g.devNBD != nil {
		desc := fmt.Sprintf("walb device %s (storage %s, %d bytes)", name, st.name, dev.Size())
		if err := g.devNBD.srv.AddExport(name, dev, false, desc); err != nil {
			st.devs.Remove(v.DevicePath())
			dev.Close()
			return nil, errors.Wrapf(err, "group: export device %s", name)
		}
	}
	return v, nil
}

// destroyDevice withdraws the device's export (in-flight requests finish),
// unregisters and closes it and deletes its files.
func (g *Group) destroyDevice(ctx context.Context, v *Volume) error {
	var first error
	if g.devNBD != nil {
		if err := g.devNBD.srv.RemoveExport(ctx, v.name); err != nil {
			first = errors.Wrapf(err, "group: withdraw the export of %s", v.name)
		}
	}
	v.st.devs.Remove(v.DevicePath())
	if err := v.dev.Close(); err != nil && first == nil {
		first = errors.Wrapf(err, "group: close device %s", v.name)
	}
	// Rename first, so that a crash during the removal leaves a directory
	// the next Start recognizes as garbage rather than a broken device.
	gone, err := os.MkdirTemp(v.st.devDir, delPrefix+v.name+"-")
	if err == nil {
		err = os.Rename(v.dir, filepath.Join(gone, "dev"))
		if err == nil {
			err = syncDir(v.st.devDir)
		}
		if rerr := os.RemoveAll(gone); err == nil {
			err = rerr
		}
	}
	if err != nil && first == nil {
		first = errors.Wrapf(err, "group: remove the files of %s", v.name)
	}
	return first
}

// openDevices reopens the devices left in the group directory by an
// earlier run, and removes what interrupted creations and deletions left.
func (g *Group) openDevices(ctx context.Context) error {
	root := filepath.Join(g.dir, "devices")
	ents, err := os.ReadDir(root)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return errors.Wrap(err, "group: device directory")
	}
	for _, e := range ents {
		i, ok := storageIndex(e.Name())
		if !ok || !e.IsDir() {
			return errors.Wrapf(ErrLayout, "unexpected %s in %s", e.Name(), root)
		}
		if i >= len(g.storages) {
			return errors.Wrapf(ErrLayout, "%s holds devices of storage %s but the group has %d storages",
				root, e.Name(), len(g.storages))
		}
	}
	for _, st := range g.storages {
		ents, err := os.ReadDir(st.devDir)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return errors.Wrap(err, "group: device directory")
		}
		for _, e := range ents {
			name := e.Name()
			if strings.HasPrefix(name, newPrefix) || strings.HasPrefix(name, delPrefix) {
				if err := os.RemoveAll(filepath.Join(st.devDir, name)); err != nil {
					return errors.Wrap(err, "group: remove a leftover device directory")
				}
				continue
			}
			if !e.IsDir() || ValidName(name) != nil {
				return errors.Wrapf(ErrLayout, "unexpected %s in %s", name, st.devDir)
			}
			if _, dup := g.vols[name]; dup {
				return errors.Wrapf(ErrLayout, "volume %s has a device on two storages", name)
			}
			v, err := g.openDevice(ctx, st, name, filepath.Join(st.devDir, name))
			if err != nil {
				return err
			}
			g.vols[name] = v
			g.log.Info("group: device reopened", "vol", name, "storage", st.name)
		}
	}
	return nil
}

// storageIndex parses "sN".
func storageIndex(s string) (int, bool) {
	if len(s) < 2 || len(s) > 4 || s[0] != 's' || (len(s) > 2 && s[1] == '0') {
		return 0, false
	}
	for _, c := range s[1:] {
		if c < '0' || c > '9' {
			return 0, false
		}
	}
	n, err := strconv.Atoi(s[1:])
	return n, err == nil
}

// makeSparse creates a file of size bytes that takes no space yet.
func makeSparse(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return errors.Wrap(err, "group: create device file")
	}
	err = f.Truncate(size)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return errors.Wrapf(err, "group: size device file %s", path)
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return errors.Wrap(err, "group: sync directory")
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return errors.Wrapf(err, "group: sync directory %s", dir)
}
