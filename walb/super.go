package walb

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"strings"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/checksum"
	"github.com/walb-go/walb/wlog"
)

// Layout constants of the log device.
const (
	// PageSize is the host page size the on-disk layout is built on: the
	// first super sector starts at this byte offset for every pbs.
	PageSize = 4096
	// LBS is the logical block size: every data-device address and size is
	// in units of LBS bytes.
	LBS = wlog.LogicalBlockSize
	// NameLen is the size of the name field, NUL terminator included.
	NameLen = 32
	// SuperVersion is the only log format version (WALB_LOG_VERSION).
	SuperVersion = 2

	superFieldsSize = 104
)

// ValidPBS reports whether pbs can be the physical block size of a log
// device: a multiple of 512 that divides the 4096-byte page (512, 1024,
// 2048 or 4096). The layout puts super sector 0 at PB PageSize/pbs, so pbs
// must divide the page; the driver asserts the same.
func ValidPBS(pbs uint32) bool {
	return pbs >= LBS && pbs <= PageSize && pbs%LBS == 0 && PageSize%pbs == 0
}

// Super is the decoded super sector of a log device (formats.md §2).
type Super struct {
	Checksum       uint32    // as read, or as last marshalled
	PBS            uint32    // physical block size of the log and data devices
	MetadataSize   uint32    // PBs of the obsolete metadata area (0)
	Salt           uint32    // log_checksum_salt of logpack headers and IO data
	UUID           wlog.UUID // log identity
	Name           string    // device name, shorter than NameLen bytes
	RingBufferSize uint64    // PBs of the ring buffer
	OldestLsid     uint64    // lsids below it may be overwritten
	WrittenLsid    uint64    // packs below it reached the data device; redo starts here
	DeviceSize     uint64    // size of the walb device in LB
}

// Super0PB returns the PB address of super sector 0.
func (s *Super) Super0PB() uint64 { return PageSize / uint64(s.PBS) }

// Super0Offset returns the byte offset of super sector 0 (always 4096).
func (s *Super) Super0Offset() int64 { return int64(s.Super0PB()) * int64(s.PBS) }

// Super1PB returns the PB address of super sector 1, which is reserved and
// never read or written.
func (s *Super) Super1PB() uint64 { return s.Super0PB() + 1 + uint64(s.MetadataSize) }

// RingBufferOffset returns the PB address where the ring buffer starts.
func (s *Super) RingBufferOffset() uint64 { return s.Super1PB() + 1 }

// LsidOffset returns the byte offset on the log device of the PB holding lsid.
func (s *Super) LsidOffset(lsid uint64) int64 {
	return int64(s.RingBufferOffset()+lsid%s.RingBufferSize) * int64(s.PBS)
}

// MinLogDeviceSize returns the smallest log device, in bytes, that holds
// this layout.
func (s *Super) MinLogDeviceSize() int64 {
	return int64(s.RingBufferOffset()+s.RingBufferSize) * int64(s.PBS)
}

// RingSizeFor returns the ring buffer size, in PBs, that a log device of
// ldevBytes bytes gets at format time.
func RingSizeFor(pbs uint32, metadataSize uint32, ldevBytes int64) uint64 {
	s := Super{PBS: pbs, MetadataSize: metadataSize}
	total := uint64(ldevBytes) / uint64(pbs)
	if total <= s.RingBufferOffset() {
		return 0
	}
	return total - s.RingBufferOffset()
}

// Validate checks the fields that do not depend on the encoding: the
// driver's load-time checks and the userland checker's.
func (s *Super) Validate() error {
	switch {
	case !ValidPBS(s.PBS):
		return errors.Wrapf(ErrCorrupt, "super sector: physical block size %d", s.PBS)
	case len(s.Name) >= NameLen || strings.IndexByte(s.Name, 0) >= 0:
		return errors.Wrapf(ErrCorrupt, "super sector: name %q is too long or holds NUL", s.Name)
	case s.RingBufferSize == 0:
		return errors.Wrap(ErrCorrupt, "super sector: empty ring buffer")
	case s.OldestLsid == wlog.InvalidLsid || s.WrittenLsid == wlog.InvalidLsid:
		return errors.Wrapf(ErrCorrupt, "super sector: invalid lsid (oldest %d, written %d)", s.OldestLsid, s.WrittenLsid)
	case s.OldestLsid > s.WrittenLsid:
		return errors.Wrapf(ErrCorrupt, "super sector: oldest lsid %d > written lsid %d", s.OldestLsid, s.WrittenLsid)
	}
	return nil
}

// MarshalTo encodes s into b (len(b) must be s.PBS), storing the checksum.
func (s *Super) MarshalTo(b []byte) {
	clear(b)
	le := binary.LittleEndian
	le.PutUint16(b[0:], wlog.SectorTypeSuper)
	le.PutUint16(b[2:], SuperVersion)
	le.PutUint32(b[8:], LBS)
	le.PutUint32(b[12:], s.PBS)
	le.PutUint32(b[16:], s.MetadataSize)
	le.PutUint32(b[20:], s.Salt)
	copy(b[24:40], s.UUID[:])
	copy(b[40:40+NameLen-1], s.Name)
	le.PutUint64(b[72:], s.RingBufferSize)
	le.PutUint64(b[80:], s.OldestLsid)
	le.PutUint64(b[88:], s.WrittenLsid)
	le.PutUint64(b[96:], s.DeviceSize)
	checksum.Store(b, 4, 0)
	s.Checksum = le.Uint32(b[4:])
}

// Marshal returns the encoded super sector, one PB long.
func (s *Super) Marshal() []byte {
	b := make([]byte, s.PBS)
	s.MarshalTo(b)
	return b
}

// ParseSuper decodes and validates a super sector block; len(b) is the pbs.
// Unlike walb-tools 1.0.19, whose reader skips it, the checksum is checked,
// as the kernel does.
func ParseSuper(b []byte) (*Super, error) {
	pbs := uint32(len(b))
	if !ValidPBS(pbs) {
		return nil, errors.Wrapf(ErrInvalid, "super sector: block of %d bytes", len(b))
	}
	le := binary.LittleEndian
	if t := le.Uint16(b[0:]); t != wlog.SectorTypeSuper {
		return nil, errors.Wrapf(ErrCorrupt, "super sector: sector type %#04x, not a walb log device", t)
	}
	if v := le.Uint16(b[2:]); v != SuperVersion {
		return nil, errors.Wrapf(ErrCorrupt, "super sector: version %d, want %d", v, SuperVersion)
	}
	if !checksum.Valid(b, 0) {
		return nil, errors.Wrap(ErrChecksum, "super sector")
	}
	if lbs := le.Uint32(b[8:]); lbs != LBS {
		return nil, errors.Wrapf(ErrCorrupt, "super sector: logical block size %d", lbs)
	}
	if p := le.Uint32(b[12:]); p != pbs {
		return nil, errors.Wrapf(ErrCorrupt, "super sector: physical block size %d, read as %d", p, pbs)
	}
	name := b[40 : 40+NameLen]
	end := bytes.IndexByte(name, 0)
	if end < 0 {
		return nil, errors.Wrap(ErrCorrupt, "super sector: name is not NUL-terminated")
	}
	s := &Super{
		Checksum:       le.Uint32(b[4:]),
		PBS:            pbs,
		MetadataSize:   le.Uint32(b[16:]),
		Salt:           le.Uint32(b[20:]),
		Name:           string(name[:end]),
		RingBufferSize: le.Uint64(b[72:]),
		OldestLsid:     le.Uint64(b[80:]),
		WrittenLsid:    le.Uint64(b[88:]),
		DeviceSize:     le.Uint64(b[96:]),
	}
	copy(s.UUID[:], b[24:40])
	if err := s.Validate(); err != nil {
		return nil, err
	}
	return s, nil
}

// ReadSuper reads super sector 0 from r. With pbs 0 the block size is taken
// from the super sector itself (its physical_bs field sits in the first 512
// bytes, and super sector 0 is at byte 4096 for every pbs), which is how
// plain image files of any pbs are read.
func ReadSuper(r io.ReaderAt, pbs uint32) (*Super, error) {
	if pbs == 0 {
		var head [LBS]byte
		if _, err := r.ReadAt(head[:], PageSize); err != nil {
			return nil, errors.Wrap(err, "walb: read super sector")
		}
		pbs = binary.LittleEndian.Uint32(head[12:])
		if binary.LittleEndian.Uint16(head[0:]) != wlog.SectorTypeSuper {
			return nil, errors.Wrapf(ErrCorrupt, "super sector: sector type %#04x, not a walb log device",
				binary.LittleEndian.Uint16(head[0:]))
		}
		if !ValidPBS(pbs) {
			return nil, errors.Wrapf(ErrCorrupt, "super sector: physical block size %d", pbs)
		}
	} else if !ValidPBS(pbs) {
		return nil, errors.Wrapf(ErrInvalid, "physical block size %d", pbs)
	}
	b := make([]byte, pbs)
	if _, err := r.ReadAt(b, PageSize); err != nil {
		return nil, errors.Wrap(err, "walb: read super sector")
	}
	return ParseSuper(b)
}

// String renders s as walb-tools' wldev-info prints it (one "key: value"
// line per field).
func (s *Super) String() string {
	return fmt.Sprintf("sectorType: %d\nversion: %d\nchecksum: %d\nlbs: %d\npbs: %d\nmetadataSize: %d\n"+
		"salt: %d\nname: %s\nringBufferSize: %d\noldestLsid: %d\nwrittenLsid: %d\ndeviceSize: %d\n"+
		"ringBufferOffset: %d\nuuid: %s\n",
		wlog.SectorTypeSuper, SuperVersion, s.Checksum, LBS, s.PBS, s.MetadataSize,
		s.Salt, s.Name, s.RingBufferSize, s.OldestLsid, s.WrittenLsid, s.DeviceSize,
		s.RingBufferOffset(), s.UUID)
}
