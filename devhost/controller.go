package devhost

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"strings"
	"time"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/walb"
	"github.com/walb-go/walb/walb/kernel"
	"github.com/walb-go/walb/wlog"
)

// Controller is the control interface of walb devices, one method per wdevc
// command. Three implementations exist: Host (userspace devices in this
// process), Client (userspace devices of a walb-dev daemon, through its
// control socket) and KernelController (devices of the WalB kernel driver,
// through ioctls). Devices are named by their name, not by a path.
//
// Every error matches one of the package's sentinels (ErrNotFound,
// ErrInvalid, ErrState, ...) with errors.Is.
type Controller interface {
	// CreateWdev starts a walb device on the formatted log device ldev and
	// the data device ddev (create-wdev). opts.Name names it; if empty, the
	// name stored in the log device's super sector is used.
	CreateWdev(ctx context.Context, ldev, ddev string, opts CreateOptions) (DeviceInfo, error)
	// DeleteWdev stops the device (delete-wdev). A frozen userspace device,
	// or an open kernel device, is only deleted with force.
	DeleteWdev(ctx context.Context, name string, force bool) error
	// List returns the devices sorted by name (list).
	List(ctx context.Context) ([]DeviceInfo, error)

	OldestLsid(ctx context.Context, name string) (uint64, error)    // get-oldest-lsid
	WrittenLsid(ctx context.Context, name string) (uint64, error)   // get-written-lsid
	PermanentLsid(ctx context.Context, name string) (uint64, error) // get-permanent-lsid
	CompletedLsid(ctx context.Context, name string) (uint64, error) // get-completed-lsid
	// Lsids returns every lsid indicator of the device at once (get-lsids),
	// latest and prev_written included, which have no command of their
	// own. Userspace devices take the values under one lock, kernel devices
	// from one read of the sysfs attribute walb/lsids, so they are mutually
	// consistent, which a series of the single getters is not.
	Lsids(ctx context.Context, name string) (walb.Lsids, error)
	// Info returns the identity, geometry and flags of a running device
	// (info): what a backup needs to know of its log besides the lsids.
	Info(ctx context.Context, name string) (DeviceStatus, error)
	// SetOldestLsid releases the log below lsid (set-oldest-lsid). lsid must
	// be the written lsid of the last checkpoint (Lsids' PrevWritten), or
	// the lsid of a logpack between the oldest lsid and it; anything else
	// is ErrInvalid (userspace) or ErrFailed (the driver only says EFAULT).
	SetOldestLsid(ctx context.Context, name string, lsid uint64) error

	// Freeze stops write processing (freeze); a positive timeout melts the
	// device after that long (whole seconds for kernel devices).
	Freeze(ctx context.Context, name string, timeout time.Duration) error
	Melt(ctx context.Context, name string) error                   // melt
	IsFrozen(ctx context.Context, name string) (bool, error)       // is-frozen
	ResetWAL(ctx context.Context, name string) error               // reset-wal; refused while frozen
	Resize(ctx context.Context, name string, sizeLB uint64) error  // resize; 0 = data device size
	IsLogOverflow(ctx context.Context, name string) (bool, error)  // is-log-overflow
	LogUsage(ctx context.Context, name string) (uint64, error)     // get-log-usage [PB]
	LogCapacity(ctx context.Context, name string) (uint64, error)  // get-log-capacity [PB]
	IsFlushCapable(ctx context.Context, name string) (bool, error) // is-flush-capable

	TakeCheckpoint(ctx context.Context, name string) error                          // force-checkpoint
	CheckpointInterval(ctx context.Context, name string) (time.Duration, error)     // get-checkpoint-interval
	SetCheckpointInterval(ctx context.Context, name string, iv time.Duration) error // set-checkpoint-interval

	// CatLog writes the log in [begin, end) as a wlog file to w and returns
	// the real end lsid (cat-log). AutoLsid as begin means the oldest lsid,
	// as end the permanent lsid at the time of the call. begin must be a
	// logpack lsid not below the oldest lsid. An empty range gives a wlog
	// file without packs (its header's end lsid is 2^64-1, since the format
	// needs begin < end).
	CatLog(ctx context.Context, name string, begin, end uint64, w io.Writer) (uint64, error)
}

// AutoLsid, as an lsid argument of CatLog, asks for the default: the oldest
// lsid for begin, the permanent lsid for end. It is u64 max, which
// walb-tools uses for "not given" as well.
const AutoLsid = ^uint64(0)

// CreateOptions tune a new device. Zero fields take the default of the kind
// of device: walb.Options' defaults for userspace devices, wdevc
// create-wdev's (kernel.DefaultStartParam) for kernel devices.
type CreateOptions struct {
	// Name of the device; empty takes the name in the log device's super
	// sector. See ValidName.
	Name string `json:"-"`
	// MaxLogpackKB caps the size of one logpack (-maxl).
	MaxLogpackKB uint32 `json:"max_logpack_kb,omitempty"`
	// MaxPendingMB and MinPendingMB bound the write data logged but not yet
	// on the data device (-maxp, -minp).
	MaxPendingMB uint32 `json:"max_pending_mb,omitempty"`
	MinPendingMB uint32 `json:"min_pending_mb,omitempty"`
	// LogFlushIntervalMs and LogFlushIntervalMB bound how long and how much
	// log may stay unflushed (-fp, -fs).
	LogFlushIntervalMs uint32 `json:"log_flush_interval_ms,omitempty"`
	LogFlushIntervalMB uint32 `json:"log_flush_interval_mb,omitempty"`
	// QueueStopTimeoutMs, NPackBulk and NIOBulk tune the kernel driver's
	// queues (-qp, -bp, -bi). Userspace devices have no such queues and
	// ignore them.
	QueueStopTimeoutMs uint32 `json:"queue_stop_timeout_ms,omitempty"`
	NPackBulk          uint32 `json:"n_pack_bulk,omitempty"`
	NIOBulk            uint32 `json:"n_io_bulk,omitempty"`
}

// DeviceInfo describes a device as List and CreateWdev report it. Fields
// that do not apply to a kind of device are zero.
type DeviceInfo struct {
	Name string `json:"name"`
	// State is StateRunning, StateFailed (userspace: the device could not be
	// opened, see Error) or StateDeleting.
	State string `json:"state"`
	// Error says why the device is not running or why it failed.
	Error string `json:"error,omitempty"`
	// LogDevice and DataDevice are the registered paths (userspace).
	LogDevice  string `json:"log_device,omitempty"`
	DataDevice string `json:"data_device,omitempty"`
	// SizeLB is the device size in logical blocks; PBS its physical block
	// size (userspace).
	SizeLB uint64 `json:"size_lb,omitempty"`
	PBS    uint32 `json:"pbs,omitempty"`
	// URI is where the NBD export of a userspace device is served, e.g.
	// nbd://127.0.0.1:10809/vol0.
	URI string `json:"uri,omitempty"`
	// Major and Minor are the block device numbers (kernel).
	Major uint32 `json:"major,omitempty"`
	Minor uint32 `json:"minor,omitempty"`
	// Path is the device node of a kernel device, /dev/walb/NAME.
	Path string `json:"path,omitempty"`
}

// DeviceStatus is what Info reports of a running device: the identity of
// its log (uuid and salt, which change at every reset-wal), its geometry
// and its flags. On the wire it is a JSON object with the keys of the
// struct tags; the uuid is 32 lowercase hex digits.
type DeviceStatus struct {
	Name string    `json:"name"`
	UUID wlog.UUID `json:"-"`
	// Salt seeds the checksums of the log's packs and IO data.
	Salt uint32 `json:"salt"`
	// PBS is the log's physical block size in bytes.
	PBS uint32 `json:"pbs"`
	// SizeLB is the device size in logical blocks (512 bytes).
	SizeLB uint64 `json:"size_lb"`
	// LogCapacityPB is the size of the log's ring buffer in physical
	// blocks (get-log-capacity).
	LogCapacityPB uint64 `json:"log_capacity_pb"`
	// Overflow reports that the log ring overwrote packs not yet released
	// (is-log-overflow); Frozen that write processing is stopped
	// (is-frozen).
	Overflow bool `json:"overflow"`
	Frozen   bool `json:"frozen"`
}

// deviceStatusFields is DeviceStatus without its methods, for the JSON
// codec.
type deviceStatusFields DeviceStatus

// deviceStatusJSON is the wire form: the uuid as hex text rather than an
// array of 16 numbers.
type deviceStatusJSON struct {
	deviceStatusFields
	UUID string `json:"uuid"`
}

// MarshalJSON encodes s with its uuid as hex text.
func (s DeviceStatus) MarshalJSON() ([]byte, error) {
	return json.Marshal(deviceStatusJSON{deviceStatusFields: deviceStatusFields(s), UUID: s.UUID.String()})
}

// UnmarshalJSON decodes the wire form strictly: unknown keys and a uuid
// that is not 32 hex digits are errors, as everywhere in the protocol.
func (s *DeviceStatus) UnmarshalJSON(b []byte) error {
	var w deviceStatusJSON
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&w); err != nil {
		return err
	}
	u, err := wlog.ParseUUID(w.UUID)
	if err != nil {
		return errors.Wrapf(ErrProtocol, "device status: uuid %q", w.UUID)
	}
	*s = DeviceStatus(w.deviceStatusFields)
	s.UUID = u
	return nil
}

// Device states reported in DeviceInfo.State.
const (
	StateRunning  = "running"
	StateFailed   = "failed"
	StateDeleting = "deleting"
)

// ValidName checks a device name. Names are 1 to 25 bytes (the kernel
// driver's limit, so that a log device can move between the driver and
// this package under the same name) of letters, digits, '.', '_' and '-',
// not starting with '.' or '-', and not "control" (/dev/walb/control is
// the driver's control node). The name is also the NBD export name and
// appears in file names, hence the conservative alphabet.
func ValidName(name string) error {
	if name == "" || len(name) > kernel.MaxDevNameLen {
		return errors.Wrapf(ErrInvalid, "device name %q: want 1 to %d bytes", name, kernel.MaxDevNameLen)
	}
	if name == "control" {
		return errors.Wrapf(ErrInvalid, "device name %q is the kernel driver's control node", name)
	}
	if name[0] == '.' || name[0] == '-' {
		return errors.Wrapf(ErrInvalid, "device name %q: must not start with %q", name, name[0])
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '.' || c == '_' || c == '-') {
			return errors.Wrapf(ErrInvalid, "device name %q: character %q not allowed", name, c)
		}
	}
	return nil
}

// NameFromPath turns a walb device argument into a device name: the node
// path /dev/walb/NAME, as walb-tools takes it, or the bare NAME.
func NameFromPath(wdev string) string {
	return strings.TrimPrefix(wdev, kernel.DevDir)
}
