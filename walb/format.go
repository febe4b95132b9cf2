package walb

import (
	"crypto/rand"
	"encoding/binary"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/wlog"
)

// FormatOptions configures FormatLogDevice.
type FormatOptions struct {
	// Name is stored in the super sector (shorter than NameLen bytes).
	Name string
	// PBS is the physical block size. 0 takes it from the log device when
	// it is a block device (BLKPBSZGET) and uses 512 for regular files,
	// which is what walb-tools assumes for image files.
	PBS uint32
	// DeviceSize is the walb device size in LB; 0 means the whole data device.
	DeviceSize uint64
}

// FormatLogDevice formats the log device at ldevPath for the data device at
// ddevPath, like `wdevc format-ldev`: a new random uuid and salt, all lsids
// 0, the ring buffer over the rest of the log device, and the PB at lsid 0
// zeroed so that no stale logpack is mistaken for the first one. Both paths
// may be regular files or block devices.
func FormatLogDevice(ldevPath, ddevPath string, opts FormatOptions) (*Super, error) {
	ldev, err := OpenFile(ldevPath, false)
	if err != nil {
		return nil, err
	}
	defer ldev.Close()
	ddev, err := OpenFile(ddevPath, true)
	if err != nil {
		return nil, err
	}
	defer ddev.Close()
	return Format(ldev, ddev, opts)
}

// Format formats ldev for ddev; see FormatLogDevice. It syncs ldev.
func Format(ldev, ddev Storage, opts FormatOptions) (*Super, error) {
	pbs, err := devicePBS(ldev, ddev, opts.PBS)
	if err != nil {
		return nil, err
	}
	if pbs == 0 {
		pbs = LBS
	}
	ldevSize, err := ldev.Size()
	if err != nil {
		return nil, err
	}
	ddevSize, err := ddev.Size()
	if err != nil {
		return nil, err
	}
	s := &Super{PBS: pbs, Name: opts.Name, DeviceSize: uint64(ddevSize) / LBS}
	if opts.DeviceSize != 0 {
		if opts.DeviceSize > s.DeviceSize {
			return nil, errors.Wrapf(ErrInvalid, "device size %d LB exceeds the data device (%d LB)", opts.DeviceSize, s.DeviceSize)
		}
		s.DeviceSize = opts.DeviceSize
	}
	s.RingBufferSize = RingSizeFor(pbs, 0, ldevSize)
	if s.RingBufferSize < 2 {
		return nil, errors.Wrapf(ErrInvalid, "log device of %d bytes is too small for pbs %d", ldevSize, pbs)
	}
	if s.UUID, s.Salt, err = newIdentity(); err != nil {
		return nil, err
	}
	if err := s.Validate(); err != nil {
		return nil, errors.Wrap(ErrInvalid, err.Error())
	}
	if _, err := ldev.WriteAt(s.Marshal(), s.Super0Offset()); err != nil {
		return nil, errors.Wrap(err, "walb: write super sector")
	}
	if _, err := ldev.WriteAt(make([]byte, pbs), s.LsidOffset(0)); err != nil {
		return nil, errors.Wrap(err, "walb: clear the first log block")
	}
	if err := ldev.Sync(); err != nil {
		return nil, err
	}
	return s, nil
}

// newIdentity returns a random log uuid and checksum salt.
func newIdentity() (wlog.UUID, uint32, error) {
	var b [20]byte
	var u wlog.UUID
	if _, err := rand.Read(b[:]); err != nil {
		return u, 0, errors.Wrap(err, "walb: random uuid")
	}
	copy(u[:], b[:16])
	return u, binary.LittleEndian.Uint32(b[16:]), nil
}

// devicePBS returns the pbs to use: want if given, else the block devices'
// physical block size, else 0 (unknown: plain files). Block devices must
// agree with each other and with want.
func devicePBS(ldev, ddev Storage, want uint32) (uint32, error) {
	if want != 0 && !ValidPBS(want) {
		return 0, errors.Wrapf(ErrInvalid, "physical block size %d (want 512, 1024, 2048 or 4096)", want)
	}
	pbs := want
	for _, st := range []Storage{ldev, ddev} {
		fs, ok := st.(*FileStorage)
		if !ok || fs.PhysicalBlockSize() == 0 {
			continue
		}
		got := fs.PhysicalBlockSize()
		if pbs == 0 {
			pbs = got
		} else if got != pbs {
			return 0, errors.Wrapf(ErrInvalid, "%s has physical block size %d, want %d", fs.Name(), got, pbs)
		}
	}
	if pbs != 0 && !ValidPBS(pbs) {
		return 0, errors.Wrapf(ErrInvalid, "physical block size %d is not supported", pbs)
	}
	return pbs, nil
}
