package devhost

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/pkg/errors"
	"golang.org/x/sys/unix"

	"github.com/walb-go/walb/walb"
	"github.com/walb-go/walb/walb/kernel"
	"github.com/walb-go/walb/wlog"
)

// KernelController is the Controller of devices of the WalB kernel driver
// (Linux up to 4.x), through the ioctls of package walb/kernel: the
// control node /dev/walb/control creates, deletes and lists devices, and
// each device node /dev/walb/NAME answers the rest. cat-log reads the
// device's log node /dev/walb/LNAME, as walb-tools' wlog-cat reads a log
// device.
//
// This package's tests drive it against a fake ioctl; it cannot be run
// against the real driver on kernels the driver does not build for.
type KernelController struct {
	// Control talks to the control node; kernel.NewController() if nil.
	Control *kernel.Controller
	// DevDir holds the device nodes NAME and LNAME; kernel.DevDir if
	// empty.
	DevDir string
	// Ioctl performs device ioctls; kernel.SysIoctl if nil.
	Ioctl kernel.IoctlFunc
	// SysBlockDir is where sysfs lists block devices, holding walb!NAME
	// with the attributes size and walb/lsids; kernel.SysBlockDir if
	// empty.
	SysBlockDir string
}

// NewKernelController returns a KernelController for the real driver.
func NewKernelController() *KernelController {
	return &KernelController{Control: kernel.NewController()}
}

func (k *KernelController) dir() string {
	if k.DevDir == "" {
		return kernel.DevDir
	}
	return k.DevDir
}

func (k *KernelController) ctl() *kernel.Controller {
	if k.Control == nil {
		return kernel.NewController()
	}
	return k.Control
}

// kernelName checks a kernel device name less strictly than ValidName:
// names come from the driver, which takes any byte but '/' and NUL.
func kernelName(name string) error {
	if name == "" || name == "." || name == ".." || len(name) > kernel.MaxDevNameLen || strings.ContainsAny(name, "/\x00") {
		return errors.Wrapf(ErrInvalid, "kernel device name %q", name)
	}
	return nil
}

func (k *KernelController) dev(name string) (*kernel.Device, error) {
	if err := kernelName(name); err != nil {
		return nil, err
	}
	return &kernel.Device{Name: name, Path: k.dir() + name, SysfsDir: k.sysfsDir(name), Ioctl: k.Ioctl}, nil
}

// sysfsDir is the sysfs directory of the walb disk name.
func (k *KernelController) sysfsDir(name string) string {
	if k.SysBlockDir == "" {
		return kernel.SysfsDir(name)
	}
	return filepath.Join(k.SysBlockDir, filepath.Base(kernel.SysfsDir(name)))
}

// CreateWdev implements Controller with START_DEV. ldev and ddev must be
// block devices; the log device must be formatted (wdevc format-ldev).
func (k *KernelController) CreateWdev(ctx context.Context, ldev, ddev string, opts CreateOptions) (DeviceInfo, error) {
	if opts.Name != "" {
		if err := kernelName(opts.Name); err != nil {
			return DeviceInfo{}, err
		}
	}
	p := kernel.DefaultStartParam()
	p.Name = opts.Name
	set := func(dst *uint32, v uint32) {
		if v != 0 {
			*dst = v
		}
	}
	set(&p.MaxLogpackKB, opts.MaxLogpackKB)
	set(&p.MaxPendingMB, opts.MaxPendingMB)
	set(&p.MinPendingMB, opts.MinPendingMB)
	set(&p.LogFlushIntervalMs, opts.LogFlushIntervalMs)
	set(&p.LogFlushIntervalMB, opts.LogFlushIntervalMB)
	set(&p.QueueStopTimeoutMs, opts.QueueStopTimeoutMs)
	set(&p.NPackBulk, opts.NPackBulk)
	set(&p.NIOBulk, opts.NIOBulk)
	s, err := k.ctl().StartDev(ctx, ldev, ddev, p)
	if err != nil {
		return DeviceInfo{}, classify(err)
	}
	return DeviceInfo{Name: s.Name, State: StateRunning, Major: s.Major, Minor: s.Minor, Path: k.dir() + s.Name}, nil
}

// DeleteWdev implements Controller with STOP_DEV. Without force the driver
// refuses a device that is open.
func (k *KernelController) DeleteWdev(ctx context.Context, name string, force bool) error {
	if err := kernelName(name); err != nil {
		return err
	}
	return classify(k.ctl().StopDev(ctx, k.dir()+name, force))
}

// List implements Controller with LIST_DEV. Devices come in minor order,
// as the driver lists them (and walb-tools prints them).
func (k *KernelController) List(ctx context.Context) ([]DeviceInfo, error) {
	recs, err := k.ctl().ListDev(ctx)
	if err != nil {
		return nil, classify(err)
	}
	out := make([]DeviceInfo, 0, len(recs))
	for _, r := range recs {
		out = append(out, DeviceInfo{Name: r.Name(), State: StateRunning, Major: r.Major, Minor: r.Minor, Path: k.dir() + r.Name()})
	}
	return out, nil
}

func (k *KernelController) u64(ctx context.Context, name string, get func(*kernel.Device, context.Context) (uint64, error)) (uint64, error) {
	d, err := k.dev(name)
	if err != nil {
		return 0, err
	}
	v, err := get(d, ctx)
	return v, classify(err)
}

func (k *KernelController) flag(ctx context.Context, name string, get func(*kernel.Device, context.Context) (bool, error)) (bool, error) {
	d, err := k.dev(name)
	if err != nil {
		return false, err
	}
	v, err := get(d, ctx)
	return v, classify(err)
}

func (k *KernelController) do(name string, fn func(*kernel.Device) error) error {
	d, err := k.dev(name)
	if err != nil {
		return err
	}
	return classify(fn(d))
}

// OldestLsid implements Controller.
func (k *KernelController) OldestLsid(ctx context.Context, name string) (uint64, error) {
	return k.u64(ctx, name, (*kernel.Device).OldestLsid)
}

// WrittenLsid implements Controller.
func (k *KernelController) WrittenLsid(ctx context.Context, name string) (uint64, error) {
	return k.u64(ctx, name, (*kernel.Device).WrittenLsid)
}

// PermanentLsid implements Controller.
func (k *KernelController) PermanentLsid(ctx context.Context, name string) (uint64, error) {
	return k.u64(ctx, name, (*kernel.Device).PermanentLsid)
}

// CompletedLsid implements Controller.
func (k *KernelController) CompletedLsid(ctx context.Context, name string) (uint64, error) {
	return k.u64(ctx, name, (*kernel.Device).CompletedLsid)
}

// Lsids implements Controller with one read of the sysfs attribute
// walb/lsids, the driver's only source of latest and prev_written. The
// "submitted" line of older drivers is dropped: walb.Lsids has no such
// indicator.
func (k *KernelController) Lsids(ctx context.Context, name string) (walb.Lsids, error) {
	d, err := k.dev(name)
	if err != nil {
		return walb.Lsids{}, err
	}
	s, err := d.Lsids(ctx)
	switch {
	case err == nil:
		return walb.Lsids{Latest: s.Latest, Completed: s.Completed, Flush: s.Flush, Permanent: s.Permanent,
			Written: s.Written, PrevWritten: s.PrevWritten, Oldest: s.Oldest}, nil
	case errors.Is(err, os.ErrNotExist), ctx.Err() != nil:
		return walb.Lsids{}, classify(err)
	default:
		// Text the driver wrote that does not parse (an INVALID_LSID
		// among it too) is the driver's failure, not a bad argument.
		return walb.Lsids{}, &codeError{sentinel: ErrFailed, cause: err}
	}
}

// Info implements Controller: the flags and the log capacity from the
// driver (ioctls), the size from the sysfs attribute size, and the uuid,
// salt and block size from the super sector of the log node
// /dev/walb/LNAME. The driver keeps the super sector on disk current for
// these three: it syncs it when reset-wal gives the log a new uuid and
// salt.
func (k *KernelController) Info(ctx context.Context, name string) (DeviceStatus, error) {
	d, err := k.dev(name)
	if err != nil {
		return DeviceStatus{}, err
	}
	st := DeviceStatus{Name: name}
	if st.Frozen, err = d.IsFrozen(ctx); err != nil {
		return DeviceStatus{}, classify(err)
	}
	if st.Overflow, err = d.IsLogOverflow(ctx); err != nil {
		return DeviceStatus{}, classify(err)
	}
	if st.LogCapacityPB, err = d.LogCapacity(ctx); err != nil {
		return DeviceStatus{}, classify(err)
	}
	if st.SizeLB, err = readSysfsU64(filepath.Join(k.sysfsDir(name), "size")); err != nil {
		return DeviceStatus{}, classify(err)
	}
	sup, err := readLogSuper(k.LogPath(name))
	if err != nil {
		return DeviceStatus{}, classify(err)
	}
	st.UUID, st.Salt, st.PBS = sup.UUID, sup.Salt, sup.PBS
	return st, nil
}

// readSysfsU64 reads a sysfs attribute holding one decimal number, as the
// block layer's size (in 512-byte sectors) does.
func readSysfsU64(path string) (uint64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, errors.Wrap(err, "devhost: sysfs")
	}
	defer f.Close()
	// An attribute is at most a page; a number is far shorter.
	b, err := io.ReadAll(io.LimitReader(f, 64))
	if err != nil {
		return 0, errors.Wrapf(err, "devhost: read %s", path)
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, errors.Wrapf(ErrFailed, "%s: %q is not a decimal number", path, b)
	}
	return v, nil
}

// SetOldestLsid implements Controller.
func (k *KernelController) SetOldestLsid(ctx context.Context, name string, lsid uint64) error {
	return k.do(name, func(d *kernel.Device) error { return d.SetOldestLsid(ctx, lsid) })
}

// Freeze implements Controller. The driver counts whole seconds: a timeout
// is rounded up, and clipped to a day as the driver does.
func (k *KernelController) Freeze(ctx context.Context, name string, timeout time.Duration) error {
	if timeout < 0 {
		return errors.Wrapf(ErrInvalid, "freeze timeout %v", timeout)
	}
	sec := uint64((timeout + time.Second - 1) / time.Second)
	sec = min(sec, kernel.MaxFreezeTimeoutSec)
	return k.do(name, func(d *kernel.Device) error { return d.Freeze(ctx, uint32(sec)) })
}

// Melt implements Controller.
func (k *KernelController) Melt(ctx context.Context, name string) error {
	return k.do(name, func(d *kernel.Device) error { return d.Melt(ctx) })
}

// IsFrozen implements Controller.
func (k *KernelController) IsFrozen(ctx context.Context, name string) (bool, error) {
	return k.flag(ctx, name, (*kernel.Device).IsFrozen)
}

// ResetWAL implements Controller with CLEAR_LOG. A frozen device is
// refused with ErrState before asking the driver, which would only answer
// EFAULT.
func (k *KernelController) ResetWAL(ctx context.Context, name string) error {
	return k.do(name, func(d *kernel.Device) error {
		frozen, err := d.IsFrozen(ctx)
		if err != nil {
			return err
		}
		if frozen {
			return errors.Wrapf(ErrState, "device %s is frozen: melt it before reset-wal", name)
		}
		return d.ClearLog(ctx)
	})
}

// Resize implements Controller.
func (k *KernelController) Resize(ctx context.Context, name string, sizeLB uint64) error {
	return k.do(name, func(d *kernel.Device) error { return d.Resize(ctx, sizeLB) })
}

// IsLogOverflow implements Controller.
func (k *KernelController) IsLogOverflow(ctx context.Context, name string) (bool, error) {
	return k.flag(ctx, name, (*kernel.Device).IsLogOverflow)
}

// LogUsage implements Controller.
func (k *KernelController) LogUsage(ctx context.Context, name string) (uint64, error) {
	return k.u64(ctx, name, (*kernel.Device).LogUsage)
}

// LogCapacity implements Controller.
func (k *KernelController) LogCapacity(ctx context.Context, name string) (uint64, error) {
	return k.u64(ctx, name, (*kernel.Device).LogCapacity)
}

// IsFlushCapable implements Controller.
func (k *KernelController) IsFlushCapable(ctx context.Context, name string) (bool, error) {
	return k.flag(ctx, name, (*kernel.Device).IsFlushCapable)
}

// TakeCheckpoint implements Controller.
func (k *KernelController) TakeCheckpoint(ctx context.Context, name string) error {
	return k.do(name, func(d *kernel.Device) error { return d.TakeCheckpoint(ctx) })
}

// CheckpointInterval implements Controller.
func (k *KernelController) CheckpointInterval(ctx context.Context, name string) (time.Duration, error) {
	var ms uint32
	err := k.do(name, func(d *kernel.Device) (err error) { ms, err = d.CheckpointInterval(ctx); return err })
	return time.Duration(ms) * time.Millisecond, err
}

// SetCheckpointInterval implements Controller; the driver takes whole
// milliseconds up to a day.
func (k *KernelController) SetCheckpointInterval(ctx context.Context, name string, iv time.Duration) error {
	if iv < 0 || iv > kernel.MaxCheckpointIntervalMs*time.Millisecond {
		return errors.Wrapf(ErrInvalid, "checkpoint interval %v (0 to %d ms)", iv, kernel.MaxCheckpointIntervalMs)
	}
	return k.do(name, func(d *kernel.Device) error { return d.SetCheckpointInterval(ctx, uint32(iv/time.Millisecond)) })
}

// LogPath is the log node of the kernel device name: DevDir + "L" + name.
func (k *KernelController) LogPath(name string) string { return k.dir() + "L" + name }

// CatLog implements Controller: the lsid range is taken from the driver
// (oldest and permanent lsids), the packs from the log node. The end is
// clipped to the permanent lsid, since packs above it may not be durable.
func (k *KernelController) CatLog(ctx context.Context, name string, begin, end uint64, w io.Writer) (uint64, error) {
	d, err := k.dev(name)
	if err != nil {
		return 0, err
	}
	oldest, err := d.OldestLsid(ctx)
	if err != nil {
		return 0, classify(err)
	}
	permanent, err := d.PermanentLsid(ctx)
	if err != nil {
		return 0, classify(err)
	}
	if begin == AutoLsid {
		begin = oldest
	}
	end = min(end, permanent)
	switch {
	case begin < oldest:
		return begin, errors.Wrapf(ErrInvalid, "begin lsid %d is below the oldest lsid %d", begin, oldest)
	case end < begin:
		return begin, errors.Wrapf(ErrInvalid, "lsid range [%d, %d) (permanent lsid %d)", begin, end, permanent)
	}
	ld, err := openLogNode(k.LogPath(name))
	if err != nil {
		return begin, classify(err)
	}
	defer ld.Close()
	if begin == end {
		s := ld.Super()
		return begin, writeEmptyWlog(w, wlog.FileHeader{Salt: s.Salt, PBS: s.PBS, UUID: s.UUID, BeginLsid: begin})
	}
	got, err := ld.ReadLog(ctx, begin, end, w)
	return got, classify(err)
}

// openLogStorage opens a log device read-only. A block device's buffer
// cache is dropped first (BLKFLSBUF): the driver writes the log below it,
// so pages cached by an earlier reader could be stale.
func openLogStorage(path string) (*walb.FileStorage, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	st, err := walb.NewFileStorage(f)
	if err != nil {
		f.Close()
		return nil, err
	}
	if st.IsBlockDevice() {
		if err := unix.IoctlSetInt(int(f.Fd()), unix.BLKFLSBUF, 0); err != nil {
			st.Close()
			return nil, errors.Wrapf(err, "devhost: BLKFLSBUF %s", path)
		}
	}
	return st, nil
}

// openLogNode opens a log device read-only for its log (openLogStorage).
func openLogNode(path string) (*walb.LogDevice, error) {
	st, err := openLogStorage(path)
	if err != nil {
		return nil, err
	}
	ld, err := walb.NewLogDevice(st, st.PhysicalBlockSize())
	if err != nil {
		st.Close()
		return nil, errors.WithMessage(err, path)
	}
	return ld, nil
}

// readLogSuper reads super sector 0 of a log device (openLogStorage). A
// block device's physical block size must match the super sector's; a
// regular file (a test's stand-in) has none, and the super sector gives
// it.
func readLogSuper(path string) (*walb.Super, error) {
	st, err := openLogStorage(path)
	if err != nil {
		return nil, err
	}
	defer st.Close()
	s, err := walb.ReadSuper(st, st.PhysicalBlockSize())
	if err != nil {
		return nil, errors.WithMessage(err, path)
	}
	return s, nil
}

var _ Controller = (*KernelController)(nil)
