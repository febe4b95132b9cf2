package devhost

import (
	"context"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/pkg/errors"
	"golang.org/x/sys/unix"

	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/nbd"
	"github.com/walb-go/walb/walb"
	"github.com/walb-go/walb/wlog"
)

// LockFile is the name of the file in the base directory that a Host keeps
// locked (flock) while it runs, so two daemons never share a registry.
const LockFile = "lock"

// DefaultDrainTimeout bounds how long deleting or closing a device waits for
// the NBD requests in flight on it before closing their connections.
const DefaultDrainTimeout = 30 * time.Second

// HostOptions configure a Host. The zero value opens devices without
// exporting them.
type HostOptions struct {
	// Logger receives the host's logs (key "vol" names the device); nil
	// means slog.Default().
	Logger *slog.Logger
	// NBD, when set, gets one export per open device, named after it.
	NBD *nbd.Server
	// ExportURI returns the URI clients use for the export of a device; it
	// is reported in DeviceInfo.URI. Nil reports none.
	ExportURI func(name string) string
	// Device is the template of the walb.Options every device is opened
	// with; the CreateOptions of the device override its tuning fields.
	Device walb.Options
	// DrainTimeout bounds the wait for in-flight NBD requests when a device
	// is deleted or the host closed; 0 means DefaultDrainTimeout.
	DrainTimeout time.Duration
}

// Host manages the named userspace walb devices of one base directory: it
// keeps their registry, opens them (running crash recovery), exports them
// over NBD and implements every control operation. Its methods are safe for
// concurrent use; operations on different devices do not wait for each
// other.
type Host struct {
	base string
	opts HostOptions
	log  *slog.Logger
	lock *os.File

	mu       sync.Mutex
	reg      *Registry
	devs     map[string]*hostDevice
	creating map[string]bool
	closed   bool
	busy     sync.WaitGroup // CreateWdev and DeleteWdev calls in progress
}

// hostDevice is one registered device.
type hostDevice struct {
	entry    Entry
	dev      *walb.Device // nil if it could not be opened
	openErr  error        // why dev is nil
	deleting bool
	exported bool
	ops      sync.WaitGroup // control operations in progress
	ctx      context.Context
	cancel   context.CancelFunc // ends long operations (cat-log) on delete
}

// OpenHost opens the base directory dir (creating it, mode 0700, if needed),
// locks it, removes temporary files left by a crash, and opens and exports
// every registered device. A device that cannot be opened stays registered
// in StateFailed, with the reason, so that the others still serve; it can
// be deleted and created again once the cause is fixed.
func OpenHost(ctx context.Context, dir string, opts HostOptions) (*Host, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.DrainTimeout <= 0 {
		opts.DrainTimeout = DefaultDrainTimeout
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, errors.Wrap(err, "devhost: base directory")
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, errors.Wrap(err, "devhost: base directory")
	}
	lock, err := os.OpenFile(filepath.Join(dir, LockFile), os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, errors.Wrap(err, "devhost: lock file")
	}
	if err := unix.Flock(int(lock.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		lock.Close()
		if err == unix.EWOULDBLOCK {
			return nil, errors.Wrapf(ErrBusy, "base directory %s is used by another walb-dev", dir)
		}
		return nil, errors.Wrap(err, "devhost: lock base directory")
	}
	h := &Host{base: dir, opts: opts, log: opts.Logger, lock: lock,
		devs: map[string]*hostDevice{}, creating: map[string]bool{}}
	if err := h.removeTemps(); err != nil {
		lock.Close()
		return nil, err
	}
	if h.reg, err = LoadRegistry(dir); err != nil {
		lock.Close()
		return nil, err
	}
	for _, e := range h.reg.Entries() {
		if err := ctx.Err(); err != nil {
			h.Close()
			return nil, err
		}
		hd := newHostDevice(e)
		h.devs[e.Name] = hd
		dev, err := h.openDevice(ctx, e)
		if err != nil {
			hd.openErr = err
			h.log.Error("devhost: cannot open device; it stays registered as failed", "vol", e.Name, "err", err.Error())
			continue
		}
		hd.dev = dev
		if err := h.export(hd); err != nil {
			h.log.Error("devhost: cannot export device", "vol", e.Name, "err", err.Error())
		}
		h.log.Info("devhost: device opened", "vol", e.Name, "lsid", dev.Lsids().Latest)
	}
	return h, nil
}

func newHostDevice(e Entry) *hostDevice {
	ctx, cancel := context.WithCancel(context.Background())
	return &hostDevice{entry: e, ctx: ctx, cancel: cancel}
}

// removeTemps deletes the temporary files of registry writes interrupted by
// a crash.
func (h *Host) removeTemps() error {
	ents, err := os.ReadDir(h.base)
	if err != nil {
		return errors.Wrap(err, "devhost: base directory")
	}
	for _, e := range ents {
		if meta.IsTempName(e.Name()) && e.Type().IsRegular() {
			if err := os.Remove(filepath.Join(h.base, e.Name())); err != nil {
				return errors.Wrap(err, "devhost: remove temporary file")
			}
		}
	}
	return nil
}

// BaseDir returns the absolute base directory.
func (h *Host) BaseDir() string { return h.base }

// walbOptions derives a device's options from the template and its
// CreateOptions.
func (h *Host) walbOptions(e Entry) walb.Options {
	o := h.opts.Device
	if o.Logger == nil {
		o.Logger = h.log
	}
	c := e.Options
	if c.MaxLogpackKB != 0 {
		o.MaxLogpackKB = c.MaxLogpackKB
	}
	if c.MaxPendingMB != 0 {
		o.MaxPendingMB = c.MaxPendingMB
	}
	if c.MinPendingMB != 0 {
		o.MinPendingMB = c.MinPendingMB
	}
	if c.LogFlushIntervalMs != 0 {
		o.LogFlushInterval = time.Duration(c.LogFlushIntervalMs) * time.Millisecond
	}
	if c.LogFlushIntervalMB != 0 {
		o.LogFlushIntervalMB = c.LogFlushIntervalMB
	}
	if e.CheckpointIntervalMs != 0 {
		o.CheckpointInterval = time.Duration(e.CheckpointIntervalMs) * time.Millisecond
	}
	return o
}

// openDevice opens the files of e and the walb device on them, which runs
// crash recovery.
func (h *Host) openDevice(ctx context.Context, e Entry) (*walb.Device, error) {
	lf, err := OpenExclusive(e.LogDevice, "log device")
	if err != nil {
		return nil, classify(err)
	}
	df, err := OpenExclusive(e.DataDevice, "data device")
	if err != nil {
		lf.Close()
		return nil, classify(err)
	}
	lfi, err1 := lf.Stat()
	dfi, err2 := df.Stat()
	if err1 == nil && err2 == nil && os.SameFile(lfi, dfi) {
		lf.Close()
		df.Close()
		return nil, errors.Wrapf(ErrInvalid, "log device %s and data device %s are the same file", e.LogDevice, e.DataDevice)
	}
	ls, err := walb.NewFileStorage(lf)
	if err != nil {
		lf.Close()
		df.Close()
		return nil, classify(err)
	}
	ds, err := walb.NewFileStorage(df)
	if err != nil {
		ls.Close()
		df.Close()
		return nil, classify(err)
	}
	dev, err := walb.OpenStorage(ctx, ls, ds, h.walbOptions(e))
	if err != nil {
		ls.Close()
		ds.Close()
		return nil, classify(errors.WithMessagef(err, "open %s", e.Name))
	}
	return dev, nil
}

func (h *Host) export(hd *hostDevice) error {
	if h.opts.NBD == nil {
		return nil
	}
	e := hd.entry
	desc := "walb device " + e.Name + " (log " + e.LogDevice + ", data " + e.DataDevice + ")"
	if err := h.opts.NBD.AddExport(e.Name, hd.dev, false, desc); err != nil {
		return classify(err)
	}
	hd.exported = true
	return nil
}

// unexport withdraws the export of hd and waits (at most DrainTimeout) for
// the requests in flight on it.
func (h *Host) unexport(ctx context.Context, hd *hostDevice) {
	h.mu.Lock()
	exported := hd.exported
	hd.exported = false
	h.mu.Unlock()
	if !exported {
		return
	}
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), h.opts.DrainTimeout)
	defer cancel()
	if err := h.opts.NBD.RemoveExport(dctx, hd.entry.Name); err != nil {
		h.log.Warn("devhost: export removed without draining", "vol", hd.entry.Name, "err", err.Error())
	}
}

// sameFile reports whether two paths name the same file (or, if either
// cannot be examined, the same path).
func sameFile(a, b string) bool {
	if a == b {
		return true
	}
	fa, err1 := os.Stat(a)
	fb, err2 := os.Stat(b)
	return err1 == nil && err2 == nil && os.SameFile(fa, fb)
}

// CreateWdev opens a new device on ldev and ddev (regular files or block
// devices; the log device must be formatted), registers and exports it.
// Relative paths are made absolute.
func (h *Host) CreateWdev(ctx context.Context, ldev, ddev string, opts CreateOptions) (DeviceInfo, error) {
	var err error
	if ldev, err = filepath.Abs(ldev); err != nil {
		return DeviceInfo{}, classify(err)
	}
	if ddev, err = filepath.Abs(ddev); err != nil {
		return DeviceInfo{}, classify(err)
	}
	if sameFile(ldev, ddev) {
		return DeviceInfo{}, errors.Wrapf(ErrInvalid, "log device %s and data device %s are the same file", ldev, ddev)
	}
	name := opts.Name
	if name == "" {
		ld, err := walb.OpenLogDevice(ldev, 0)
		if err != nil {
			return DeviceInfo{}, classify(errors.WithMessage(err, "read the device name from the log device"))
		}
		name = ld.Super().Name
		ld.Close()
		if name == "" {
			return DeviceInfo{}, errors.Wrapf(ErrInvalid, "log device %s has no name in its super sector: give one", ldev)
		}
	}
	if err := ValidName(name); err != nil {
		return DeviceInfo{}, err
	}
	e := Entry{Name: name, LogDevice: ldev, DataDevice: ddev, Options: opts}
	e.Options.Name = ""

	h.mu.Lock()
	switch {
	case h.closed:
		h.mu.Unlock()
		return DeviceInfo{}, ErrShutdown
	case h.devs[name] != nil || h.creating[name]:
		h.mu.Unlock()
		return DeviceInfo{}, errors.Wrapf(ErrExists, "device %s", name)
	}
	for _, other := range h.devs {
		for _, p := range []string{other.entry.LogDevice, other.entry.DataDevice} {
			if sameFile(p, ldev) || sameFile(p, ddev) {
				h.mu.Unlock()
				return DeviceInfo{}, errors.Wrapf(ErrBusy, "%s is used by device %s", p, other.entry.Name)
			}
		}
	}
	h.creating[name] = true
	h.busy.Add(1)
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		delete(h.creating, name)
		h.mu.Unlock()
		h.busy.Done()
	}()

	dev, err := h.openDevice(ctx, e)
	if err != nil {
		return DeviceInfo{}, err
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		dev.Close()
		return DeviceInfo{}, ErrShutdown
	}
	if err := h.reg.Put(e); err != nil {
		dev.Close()
		return DeviceInfo{}, err
	}
	hd := newHostDevice(e)
	hd.dev = dev
	if err := h.export(hd); err != nil {
		if rerr := h.reg.Remove(name); rerr != nil {
			h.log.Error("devhost: cannot unregister a device whose export failed", "vol", name, "err", rerr.Error())
		}
		dev.Close()
		return DeviceInfo{}, err
	}
	h.devs[name] = hd
	h.log.Info("devhost: device created", "vol", name, "ldev", ldev, "ddev", ddev)
	return h.info(hd), nil
}

// DeleteWdev withdraws the device's export (in-flight NBD requests finish
// first, within the drain timeout), closes it (the final checkpoint) and
// removes it from the registry. A frozen device is refused unless force,
// which melts it first.
// The operation runs to its end even if ctx is cancelled meanwhile.
func (h *Host) DeleteWdev(ctx context.Context, name string, force bool) error {
	h.mu.Lock()
	hd := h.devs[name]
	switch {
	case h.closed:
		h.mu.Unlock()
		return ErrShutdown
	case hd == nil:
		h.mu.Unlock()
		return errors.Wrapf(ErrNotFound, "device %s", name)
	case hd.deleting:
		h.mu.Unlock()
		return errors.Wrapf(ErrState, "device %s is being deleted", name)
	case hd.dev != nil && hd.dev.IsFrozen() && !force:
		h.mu.Unlock()
		return errors.Wrapf(ErrState, "device %s is frozen: melt it first, or force", name)
	}
	hd.deleting = true
	h.busy.Add(1)
	h.mu.Unlock()
	defer h.busy.Done()

	// Writes waiting on a frozen device would hold the export until the
	// drain timeout: let them through first.
	if hd.dev != nil && hd.dev.IsFrozen() {
		_ = hd.dev.Melt()
	}
	h.unexport(ctx, hd)
	hd.cancel()
	hd.ops.Wait()
	var closeErr error
	if hd.dev != nil {
		closeErr = hd.dev.Close()
	}

	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.reg.Remove(name); err != nil {
		// The device is closed but still registered: keep it listed as
		// failed so that delete-wdev can be retried.
		hd.dev, hd.deleting = nil, false
		hd.openErr = errors.WithMessage(err, "closed, but removing it from the registry failed")
		return err
	}
	delete(h.devs, name)
	h.log.Info("devhost: device deleted", "vol", name)
	if closeErr != nil {
		return classify(errors.WithMessagef(closeErr, "device %s was deleted, but closing it failed", name))
	}
	return nil
}

// List returns every registered device, sorted by name.
func (h *Host) List(ctx context.Context) ([]DeviceInfo, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	names := make([]string, 0, len(h.devs))
	for n := range h.devs {
		names = append(names, n)
	}
	sort.Strings(names)
	out := make([]DeviceInfo, 0, len(names))
	for _, n := range names {
		out = append(out, h.info(h.devs[n]))
	}
	return out, nil
}

// Describe returns the description of one device, as List reports it;
// unlike Info it also answers for a device that is not open.
func (h *Host) Describe(ctx context.Context, name string) (DeviceInfo, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	hd := h.devs[name]
	if hd == nil {
		return DeviceInfo{}, errors.Wrapf(ErrNotFound, "device %s", name)
	}
	return h.info(hd), nil
}

// info describes hd; h.mu is held.
func (h *Host) info(hd *hostDevice) DeviceInfo {
	e := hd.entry
	di := DeviceInfo{Name: e.Name, State: StateRunning, LogDevice: e.LogDevice, DataDevice: e.DataDevice}
	switch {
	case hd.dev == nil:
		di.State = StateFailed
		if hd.openErr != nil {
			di.Error = hd.openErr.Error()
		}
	default:
		di.SizeLB = uint64(hd.dev.Size()) / walb.LBS
		di.PBS = hd.dev.PBS()
		if err := hd.dev.Err(); err != nil {
			di.State = StateFailed
			di.Error = err.Error()
		}
	}
	if hd.deleting {
		di.State = StateDeleting
	}
	if hd.exported && h.opts.ExportURI != nil {
		di.URI = h.opts.ExportURI(e.Name)
	}
	return di
}

// acquire returns the open device named name and counts an operation on
// it; release ends the operation. A device being deleted waits for the
// operations counted before.
func (h *Host) acquire(name string) (*hostDevice, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	hd := h.devs[name]
	switch {
	case h.closed:
		return nil, ErrShutdown
	case hd == nil:
		return nil, errors.Wrapf(ErrNotFound, "device %s", name)
	case hd.deleting:
		return nil, errors.Wrapf(ErrState, "device %s is being deleted", name)
	case hd.dev == nil:
		return nil, errors.Wrapf(ErrState, "device %s is not open: %v", name, hd.openErr)
	}
	hd.ops.Add(1)
	return hd, nil
}

// with runs fn on the open device named name.
func (h *Host) with(name string, fn func(d *walb.Device) error) error {
	hd, err := h.acquire(name)
	if err != nil {
		return err
	}
	defer hd.ops.Done()
	return classify(fn(hd.dev))
}

func (h *Host) lsid(name string, pick func(walb.Lsids) uint64) (uint64, error) {
	var v uint64
	err := h.with(name, func(d *walb.Device) error { v = pick(d.Lsids()); return nil })
	return v, err
}

// OldestLsid implements Controller.
func (h *Host) OldestLsid(ctx context.Context, name string) (uint64, error) {
	return h.lsid(name, func(l walb.Lsids) uint64 { return l.Oldest })
}

// WrittenLsid implements Controller.
func (h *Host) WrittenLsid(ctx context.Context, name string) (uint64, error) {
	return h.lsid(name, func(l walb.Lsids) uint64 { return l.Written })
}

// PermanentLsid implements Controller.
func (h *Host) PermanentLsid(ctx context.Context, name string) (uint64, error) {
	return h.lsid(name, func(l walb.Lsids) uint64 { return l.Permanent })
}

// CompletedLsid implements Controller.
func (h *Host) CompletedLsid(ctx context.Context, name string) (uint64, error) {
	return h.lsid(name, func(l walb.Lsids) uint64 { return l.Completed })
}

// Lsids implements Controller: the device's lsids, taken under its lock.
func (h *Host) Lsids(ctx context.Context, name string) (walb.Lsids, error) {
	var l walb.Lsids
	err := h.with(name, func(d *walb.Device) error { l = d.Lsids(); return nil })
	return l, err
}

// Info implements Controller. A device that failed (an I/O error on its
// log or data device) is reported as an error, not described: its log can
// no longer be trusted.
func (h *Host) Info(ctx context.Context, name string) (DeviceStatus, error) {
	var s DeviceStatus
	err := h.with(name, func(d *walb.Device) error {
		if err := d.Err(); err != nil {
			return errors.WithMessagef(err, "device %s failed", name)
		}
		// One copy of the super sector, so that the uuid and the salt
		// belong to the same log even if reset-wal runs meanwhile.
		sup := d.Super()
		s = DeviceStatus{Name: name, UUID: sup.UUID, Salt: sup.Salt, PBS: sup.PBS,
			SizeLB: uint64(d.Size()) / walb.LBS, LogCapacityPB: sup.RingBufferSize,
			Overflow: d.IsLogOverflow(), Frozen: d.IsFrozen()}
		return nil
	})
	return s, err
}

// SetOldestLsid implements Controller.
func (h *Host) SetOldestLsid(ctx context.Context, name string, lsid uint64) error {
	return h.with(name, func(d *walb.Device) error { return d.SetOldestLsid(lsid) })
}

// Freeze implements Controller.
func (h *Host) Freeze(ctx context.Context, name string, timeout time.Duration) error {
	return h.with(name, func(d *walb.Device) error { return d.FreezeContext(ctx, timeout) })
}

// Melt implements Controller.
func (h *Host) Melt(ctx context.Context, name string) error {
	return h.with(name, func(d *walb.Device) error { return d.Melt() })
}

// IsFrozen implements Controller.
func (h *Host) IsFrozen(ctx context.Context, name string) (bool, error) {
	var v bool
	err := h.with(name, func(d *walb.Device) error { v = d.IsFrozen(); return nil })
	return v, err
}

// ResetWAL implements Controller. Like the driver, it refuses a frozen
// device.
func (h *Host) ResetWAL(ctx context.Context, name string) error {
	return h.with(name, func(d *walb.Device) error {
		if d.IsFrozen() {
			return errors.Wrapf(ErrState, "device %s is frozen: melt it before reset-wal", name)
		}
		return d.ResetWAL(ctx)
	})
}

// Resize implements Controller. NBD clients see the new size when they
// connect again.
func (h *Host) Resize(ctx context.Context, name string, sizeLB uint64) error {
	return h.with(name, func(d *walb.Device) error { return d.Resize(sizeLB) })
}

// IsLogOverflow implements Controller.
func (h *Host) IsLogOverflow(ctx context.Context, name string) (bool, error) {
	var v bool
	err := h.with(name, func(d *walb.Device) error { v = d.IsLogOverflow(); return nil })
	return v, err
}

// LogUsage implements Controller.
func (h *Host) LogUsage(ctx context.Context, name string) (uint64, error) {
	var v uint64
	err := h.with(name, func(d *walb.Device) error { v = d.LogUsage(); return nil })
	return v, err
}

// LogCapacity implements Controller.
func (h *Host) LogCapacity(ctx context.Context, name string) (uint64, error) {
	var v uint64
	err := h.with(name, func(d *walb.Device) error { v = d.LogCapacity(); return nil })
	return v, err
}

// IsFlushCapable implements Controller: userspace devices always take
// flushes (NBD_CMD_FLUSH and FUA).
func (h *Host) IsFlushCapable(ctx context.Context, name string) (bool, error) {
	err := h.with(name, func(*walb.Device) error { return nil })
	return err == nil, err
}

// TakeCheckpoint implements Controller.
func (h *Host) TakeCheckpoint(ctx context.Context, name string) error {
	return h.with(name, func(d *walb.Device) error { return d.TakeCheckpoint() })
}

// CheckpointInterval implements Controller.
func (h *Host) CheckpointInterval(ctx context.Context, name string) (time.Duration, error) {
	var v time.Duration
	err := h.with(name, func(d *walb.Device) error { v = d.CheckpointInterval(); return nil })
	return v, err
}

// SetCheckpointInterval implements Controller. The interval is recorded in
// the registry, so the device keeps it when the daemon restarts.
func (h *Host) SetCheckpointInterval(ctx context.Context, name string, iv time.Duration) error {
	ms := iv / time.Millisecond
	if iv <= 0 || iv%time.Millisecond != 0 || ms > math.MaxUint32 {
		return errors.Wrapf(ErrInvalid, "checkpoint interval %v: want a positive whole number of milliseconds", iv)
	}
	hd, err := h.acquire(name)
	if err != nil {
		return err
	}
	defer hd.ops.Done()
	if err := hd.dev.SetCheckpointInterval(iv); err != nil {
		return classify(err)
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	e := hd.entry
	e.CheckpointIntervalMs = uint32(ms)
	if err := h.reg.Put(e); err != nil {
		return errors.WithMessagef(err, "device %s: the interval is set but not recorded for restarts", name)
	}
	hd.entry = e
	return nil
}

// CatLog implements Controller. It ends early with ErrState if the device
// is deleted meanwhile.
func (h *Host) CatLog(ctx context.Context, name string, begin, end uint64, w io.Writer) (uint64, error) {
	hd, err := h.acquire(name)
	if err != nil {
		return 0, err
	}
	defer hd.ops.Done()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(hd.ctx, cancel)
	defer stop()
	got, err := catLog(ctx, hd.dev, begin, end, w)
	if err != nil && hd.ctx.Err() != nil {
		return got, errors.Wrapf(ErrState, "device %s was deleted during cat-log", name)
	}
	return got, classify(err)
}

func catLog(ctx context.Context, d *walb.Device, begin, end uint64, w io.Writer) (uint64, error) {
	l := d.Lsids()
	if begin == AutoLsid {
		begin = l.Oldest
	}
	if end == AutoLsid {
		end = l.Permanent
	}
	switch {
	case begin < l.Oldest:
		return begin, errors.Wrapf(ErrInvalid, "begin lsid %d is below the oldest lsid %d", begin, l.Oldest)
	case end < begin:
		return begin, errors.Wrapf(ErrInvalid, "lsid range [%d, %d)", begin, end)
	case end == begin:
		return begin, writeEmptyWlog(w, wlog.FileHeader{Salt: d.Salt(), PBS: d.PBS(), UUID: d.UUID(), BeginLsid: begin})
	}
	return d.ReadLog(ctx, begin, end, w)
}

// writeEmptyWlog writes a wlog file without packs: what an extraction of
// an empty range yields. Its header's end lsid is 2^64-1, the usual "no
// end" of walb-tools, since the format needs begin < end.
func writeEmptyWlog(w io.Writer, hdr wlog.FileHeader) error {
	hdr.EndLsid = AutoLsid
	ww, err := wlog.NewWriter(w, hdr)
	if err != nil {
		return err
	}
	return ww.Close()
}

// MeltAll melts every frozen device, so that the NBD requests waiting on
// them can finish before a shutdown.
func (h *Host) MeltAll() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, hd := range h.devs {
		if hd.dev != nil && hd.dev.IsFrozen() {
			h.log.Info("devhost: melting for shutdown", "vol", hd.entry.Name)
			_ = hd.dev.Melt()
		}
	}
}

// Close closes the host: every export is withdrawn (in-flight requests
// finish within the drain timeout), every device closed with a final
// checkpoint, and the base directory unlocked. The registry is kept, so the
// next OpenHost reopens the same devices.
func (h *Host) Close() error {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return ErrShutdown
	}
	h.closed = true
	h.mu.Unlock()
	// No create or delete starts once closed is set; wait for those
	// running, after which the device map no longer changes.
	h.busy.Wait()
	h.mu.Lock()
	devs := make([]*hostDevice, 0, len(h.devs))
	for _, hd := range h.devs {
		devs = append(devs, hd)
	}
	h.mu.Unlock()

	var first error
	for _, hd := range devs {
		h.unexport(context.Background(), hd)
		hd.cancel()
		hd.ops.Wait()
		if hd.dev == nil {
			continue
		}
		if err := hd.dev.Close(); err != nil {
			h.log.Error("devhost: closing device failed", "vol", hd.entry.Name, "err", err.Error())
			if first == nil {
				first = classify(errors.WithMessagef(err, "close %s", hd.entry.Name))
			}
		} else {
			h.log.Info("devhost: device closed", "vol", hd.entry.Name)
		}
	}
	if err := h.lock.Close(); err != nil && first == nil {
		first = errors.Wrap(err, "devhost: unlock base directory")
	}
	return first
}

var _ Controller = (*Host)(nil)
