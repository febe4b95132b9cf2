package storage

import (
	"context"
	"sync"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/walb"
	"github.com/walb-go/walb/wlog"
)

// Checkpointer is implemented by devices that can sync their super sector on
// demand, which advances prev_written to written. The storage uses it to
// release acknowledged log at once instead of waiting for the device's next
// periodic checkpoint (every 10 s on a kernel device).
type Checkpointer interface {
	TakeCheckpoint(ctx context.Context) error
}

// Device is what the storage needs of a WalB device. It is implemented for
// an in-process userspace device by WalbDevice; a device host (package
// devhost) or a kernel device provides the same operations remotely. Every
// method may block and fail (the device may live in another process).
type Device interface {
	// Lsids returns the device's log positions, read at one instant.
	Lsids(ctx context.Context) (walb.Lsids, error)
	// SetOldestLsid releases the log below lsid. lsid is prev_written or
	// the lsid of a logpack in [oldest, prev_written).
	SetOldestLsid(ctx context.Context, lsid uint64) error
	// IsLogOverflow reports whether the log ring overwrote logs that were
	// not released: they can no longer be extracted.
	IsLogOverflow(ctx context.Context) (bool, error)
	// Info returns the log identity and sizes.
	Info(ctx context.Context) (DeviceInfo, error)
	// NewPackReader returns a reader of the logpacks in [begin, end). It
	// never reads past the permanent lsid; begin is a logpack lsid not
	// below the oldest lsid.
	NewPackReader(ctx context.Context, begin, end uint64) (PackReader, error)
	// ReadAt reads the device image at byte offset off while writes go on
	// (a backup's online copy). A hash backup calls it from several
	// goroutines at once.
	ReadAt(ctx context.Context, p []byte, off int64) (int, error)
	// ResetWAL clears the log: lsids 0, a new uuid and salt, no overflow.
	ResetWAL(ctx context.Context) error
	// Resize grows the device to sizeLB logical blocks; 0 means the size of
	// the data device. Shrinking fails.
	Resize(ctx context.Context, sizeLB uint64) error
}

// DeviceInfo is the identity and geometry of a device's log.
type DeviceInfo struct {
	UUID          wlog.UUID // log identity; changes at every WAL reset
	Salt          uint32    // checksum salt of logpacks and IO data
	PBS           uint32    // physical block size of the log, bytes
	SizeLB        uint64    // device size, logical blocks (512 B)
	LogCapacityPB uint64    // ring buffer size, PBs
}

// PackReader iterates over logpacks. Next returns io.EOF at the end; the
// data (TotalIOSize PBs) is valid until the next call.
type PackReader interface {
	Next(ctx context.Context) (*wlog.PackHeader, []byte, error)
	Close() error
}

// DeviceResolver finds the Device a volume's `path` names. init-vol checks
// that the path resolves; later operations resolve it again after a
// restart.
type DeviceResolver interface {
	Resolve(ctx context.Context, path string) (Device, error)
}

// WalbDevice adapts an in-process userspace device (*walb.Device) to Device.
type WalbDevice struct{ D *walb.Device }

// Lsids implements Device.
func (w WalbDevice) Lsids(context.Context) (walb.Lsids, error) {
	if err := w.D.Err(); err != nil {
		return walb.Lsids{}, err
	}
	return w.D.Lsids(), nil
}

// TakeCheckpoint implements Checkpointer.
func (w WalbDevice) TakeCheckpoint(_ context.Context) error { return w.D.TakeCheckpoint() }

// SetOldestLsid implements Device.
func (w WalbDevice) SetOldestLsid(_ context.Context, lsid uint64) error {
	return w.D.SetOldestLsid(lsid)
}

// IsLogOverflow implements Device.
func (w WalbDevice) IsLogOverflow(context.Context) (bool, error) { return w.D.IsLogOverflow(), nil }

// Info implements Device.
func (w WalbDevice) Info(context.Context) (DeviceInfo, error) {
	return DeviceInfo{
		UUID:          w.D.UUID(),
		Salt:          w.D.Salt(),
		PBS:           w.D.PBS(),
		SizeLB:        uint64(w.D.Size()) / walb.LBS,
		LogCapacityPB: w.D.LogCapacity(),
	}, nil
}

// NewPackReader implements Device.
func (w WalbDevice) NewPackReader(_ context.Context, begin, end uint64) (PackReader, error) {
	r, err := w.D.NewPackReader(begin, end)
	if err != nil {
		return nil, err
	}
	return walbPackReader{r}, nil
}

type walbPackReader struct{ *walb.PackReader }

func (walbPackReader) Close() error { return nil }

// ReadAt implements Device.
func (w WalbDevice) ReadAt(_ context.Context, p []byte, off int64) (int, error) {
	return w.D.ReadAt(p, off)
}

// ResetWAL implements Device.
func (w WalbDevice) ResetWAL(ctx context.Context) error { return w.D.ResetWAL(ctx) }

// Resize implements Device.
func (w WalbDevice) Resize(_ context.Context, sizeLB uint64) error { return w.D.Resize(sizeLB) }

// DeviceMap is a DeviceResolver over devices registered by name: the
// embedded backup group hands its in-process devices to the storage this
// way. It is safe for concurrent use.
type DeviceMap struct {
	mu sync.Mutex
	m  map[string]Device
}

// NewDeviceMap returns an empty map.
func NewDeviceMap() *DeviceMap { return &DeviceMap{m: map[string]Device{}} }

// Add registers dev under path (replacing any previous one).
func (m *DeviceMap) Add(path string, dev Device) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.m[path] = dev
}

// AddWalb registers an in-process userspace device under path.
func (m *DeviceMap) AddWalb(path string, d *walb.Device) { m.Add(path, WalbDevice{d}) }

// Remove unregisters path.
func (m *DeviceMap) Remove(path string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.m, path)
}

// Resolve implements DeviceResolver.
func (m *DeviceMap) Resolve(_ context.Context, path string) (Device, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if d, ok := m.m[path]; ok {
		return d, nil
	}
	return nil, errors.Wrapf(ErrNoDevice, "no device %q", path)
}
