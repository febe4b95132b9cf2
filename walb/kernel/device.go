package kernel

import (
	"context"
	"os"
	"path/filepath"

	"github.com/pkg/errors"
)

// Limits the driver applies to device commands.
const (
	// DefaultCheckpointIntervalMs is the interval a new device starts with.
	DefaultCheckpointIntervalMs = 10000
	// MaxCheckpointIntervalMs is the largest interval SET_CHECKPOINT_INTERVAL
	// accepts (one day).
	MaxCheckpointIntervalMs = 24 * 60 * 60 * 1000
	// MaxFreezeTimeoutSec is where the driver clips FREEZE's timeout.
	MaxFreezeTimeoutSec = 86400
)

// Device talks to one walb device node, /dev/walb/NAME, with one method per
// WALB_IOCTL_WDEV command (named after wdevc's commands), and reads its sysfs
// lsids. Like wdevc it opens the node for each call, so it never keeps the
// device busy. Set Name; the other fields have working defaults.
type Device struct {
	// Name of the walb device.
	Name string
	// Path of the node; DevDir+Name if empty.
	Path string
	// SysfsDir is the device's sysfs directory; SysfsDir(Name) if empty.
	SysfsDir string
	// Ioctl performs the ioctls; SysIoctl if nil.
	Ioctl IoctlFunc
}

// NewDevice returns a Device for /dev/walb/NAME.
func NewDevice(name string) *Device { return &Device{Name: name} }

func (d *Device) node() node {
	n := node{path: d.Path, flag: os.O_RDWR, ioctl: d.Ioctl}
	if n.path == "" {
		n.path = DevDir + d.Name
	}
	if n.ioctl == nil {
		n.ioctl = SysIoctl
	}
	return n
}

// wdev runs one command without buffers, as walb-tools does for every device
// command, and returns the driver's copy of the struct.
func (d *Device) wdev(ctx context.Context, ctl Ctl) (Ctl, error) {
	err := d.node().exchange(ctx, ReqWdev, &ctl, nil, nil)
	return ctl, err
}

func (d *Device) getU64(ctx context.Context, cmd Command) (uint64, error) {
	ctl, err := d.wdev(ctx, Ctl{Command: cmd})
	if err != nil {
		return 0, err
	}
	return ctl.ValU64, nil
}

// getLsid reads an lsid and, like walb-tools' getLsid, refuses INVALID_LSID.
func (d *Device) getLsid(ctx context.Context, cmd Command) (uint64, error) {
	v, err := d.getU64(ctx, cmd)
	if err != nil {
		return 0, err
	}
	if v == InvalidLsid {
		return 0, errors.Wrapf(ErrInvalidLsid, "%s on %s", cmd, d.node().path)
	}
	return v, nil
}

func (d *Device) getBool(ctx context.Context, cmd Command) (bool, error) {
	ctl, err := d.wdev(ctx, Ctl{Command: cmd})
	if err != nil {
		return false, err
	}
	return ctl.ValInt != 0, nil
}

func (d *Device) run(ctx context.Context, ctl Ctl) error {
	_, err := d.wdev(ctx, ctl)
	return err
}

// Version asks the driver for its version through the device node.
func (d *Device) Version(ctx context.Context) (Version, error) {
	return d.node().version(ctx)
}

// OldestLsid returns oldest_lsid: logs below it may be overwritten
// (get-oldest-lsid).
func (d *Device) OldestLsid(ctx context.Context) (uint64, error) {
	return d.getLsid(ctx, CmdGetOldestLsid)
}

// SetOldestLsid discards the logs below lsid (set-oldest-lsid). The driver
// accepts lsid == prev_written, or oldest <= lsid < prev_written when a valid
// logpack header for lsid is on the log device; it then syncs the super
// block. Anything else fails with ErrFailed.
func (d *Device) SetOldestLsid(ctx context.Context, lsid uint64) error {
	return d.run(ctx, Ctl{Command: CmdSetOldestLsid, ValU64: lsid})
}

// WrittenLsid returns written_lsid: logs below it are also on the data
// device (get-written-lsid).
func (d *Device) WrittenLsid(ctx context.Context) (uint64, error) {
	return d.getLsid(ctx, CmdGetWrittenLsid)
}

// PermanentLsid returns permanent_lsid: logs below it are durable on the log
// device, so they may be extracted (get-permanent-lsid).
func (d *Device) PermanentLsid(ctx context.Context) (uint64, error) {
	return d.getLsid(ctx, CmdGetPermanentLsid)
}

// CompletedLsid returns completed_lsid (get-completed-lsid).
func (d *Device) CompletedLsid(ctx context.Context) (uint64, error) {
	return d.getLsid(ctx, CmdGetCompletedLsid)
}

// LogUsage returns latest - oldest in physical blocks (get-log-usage). More
// than LogCapacity means the log has overflowed.
func (d *Device) LogUsage(ctx context.Context) (uint64, error) {
	return d.getU64(ctx, CmdGetLogUsage)
}

// LogCapacity returns the ring buffer size in physical blocks
// (get-log-capacity).
func (d *Device) LogCapacity(ctx context.Context) (uint64, error) {
	return d.getU64(ctx, CmdGetLogCapacity)
}

// IsFlushCapable reports whether the device accepts flush requests
// (is-flush-capable).
func (d *Device) IsFlushCapable(ctx context.Context) (bool, error) {
	return d.getBool(ctx, CmdIsFlushCapable)
}

// Resize grows the device to sizeLb logical blocks, or to the data device's
// size if sizeLb is 0 (resize). Shrinking and growing past the data device
// fail with ErrFailed.
func (d *Device) Resize(ctx context.Context, sizeLb uint64) error {
	return d.run(ctx, Ctl{Command: CmdResize, ValU64: sizeLb})
}

// ClearLog empties the log (reset-wal): every lsid becomes 0, the device
// gets a new uuid and checksum salt, the ring is re-measured if the log
// device grew, and the overflow flag is cleared. It fails while the device
// is frozen.
func (d *Device) ClearLog(ctx context.Context) error {
	return d.run(ctx, Ctl{Command: CmdClearLog})
}

// IsLogOverflow reports whether the log has overflowed (is-log-overflow);
// only ClearLog resets it.
func (d *Device) IsLogOverflow(ctx context.Context) (bool, error) {
	return d.getBool(ctx, CmdIsLogOverflow)
}

// Freeze stops write processing (freeze). After timeoutSec seconds the
// driver melts the device by itself; 0 means never. The driver clips the
// timeout to MaxFreezeTimeoutSec. Freezing a frozen device replaces its
// timeout (0 removes it).
func (d *Device) Freeze(ctx context.Context, timeoutSec uint32) error {
	return d.run(ctx, Ctl{Command: CmdFreeze, ValU32: timeoutSec})
}

// Melt resumes write processing (melt). Melting a device that is not
// frozen does nothing.
func (d *Device) Melt(ctx context.Context) error {
	return d.run(ctx, Ctl{Command: CmdMelt})
}

// IsFrozen reports whether the device is frozen (is-frozen; wdevc spells it
// is-flozen).
func (d *Device) IsFrozen(ctx context.Context) (bool, error) {
	return d.getBool(ctx, CmdIsFrozen)
}

// TakeCheckpoint writes the super block now (force-checkpoint).
func (d *Device) TakeCheckpoint(ctx context.Context) error {
	return d.run(ctx, Ctl{Command: CmdTakeCheckpoint})
}

// CheckpointInterval returns the checkpoint interval in milliseconds
// (get-checkpoint-interval).
func (d *Device) CheckpointInterval(ctx context.Context) (uint32, error) {
	ctl, err := d.wdev(ctx, Ctl{Command: CmdGetCheckpointInterval})
	if err != nil {
		return 0, err
	}
	return ctl.ValU32, nil
}

// SetCheckpointInterval sets the checkpoint interval in milliseconds
// (set-checkpoint-interval). The driver refuses more than
// MaxCheckpointIntervalMs; this method refuses it before asking.
func (d *Device) SetCheckpointInterval(ctx context.Context, ms uint32) error {
	if ms > MaxCheckpointIntervalMs {
		return errors.Wrapf(ErrInvalidArgument, "checkpoint interval %d ms > %d ms", ms, MaxCheckpointIntervalMs)
	}
	return d.run(ctx, Ctl{Command: CmdSetCheckpointInterval, ValU32: ms})
}

// LsidsPath is the sysfs attribute Lsids reads.
func (d *Device) LsidsPath() string {
	dir := d.SysfsDir
	if dir == "" {
		dir = SysfsDir(d.Name)
	}
	return filepath.Join(dir, "walb", "lsids")
}

// Lsids reads all lsid indicators at once from sysfs. It is the only way to
// get latest and prev_written, and the values come from one snapshot taken
// under the driver's lock, unlike a series of ioctls.
func (d *Device) Lsids(ctx context.Context) (LsidSet, error) {
	if err := ctx.Err(); err != nil {
		return LsidSet{}, err
	}
	path := d.LsidsPath()
	f, err := os.Open(path)
	if err != nil {
		return LsidSet{}, errors.Wrap(err, "kernel: lsids")
	}
	defer f.Close()
	s, err := ParseLsids(f)
	if err != nil {
		return LsidSet{}, errors.WithMessagef(err, "kernel: %s", path)
	}
	return s, nil
}
