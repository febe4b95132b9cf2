package wlog

import (
	"encoding/binary"
	"fmt"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/checksum"
)

// Format constants shared by the log device and wlog files.
const (
	LogicalBlockSize = 512
	Version          = 2

	SectorTypeSuper      = 0x0001
	SectorTypeLogpack    = 0x0003
	SectorTypeWlogHeader = 0x0004
	InvalidLsid          = ^uint64(0)
	MaxLsid              = InvalidLsid - 1
	MaxTotalIOSize       = 65535 // PBs of data in one logpack
	MaxNormalIOSize      = 65535 // LBs of one normal IO
	MinPBS               = 512
	MaxPBS               = 65536
	packHeaderSize       = 24
	recordSize           = 32
)

// Sentinel errors. Wrapped errors name the lsid and offset where it failed.
var (
	ErrChecksum  = errors.New("wlog: checksum mismatch")
	ErrCorrupt   = errors.New("wlog: corrupt data")
	ErrTruncated = errors.New("wlog: truncated")
	ErrInvalid   = errors.New("wlog: invalid argument")
	ErrFull      = errors.New("wlog: logpack full")
)

// ValidPBS reports whether pbs is a supported physical block size.
func ValidPBS(pbs uint32) bool {
	return pbs >= MinPBS && pbs <= MaxPBS && pbs%LogicalBlockSize == 0
}

// PBsFor returns the number of physical blocks covering n logical blocks.
func PBsFor(pbs uint32, nLB uint64) uint64 {
	lbPerPB := uint64(pbs / LogicalBlockSize)
	return (nLB + lbPerPB - 1) / lbPerPB
}

// MaxRecords returns how many records fit in a logpack header of pbs bytes.
func MaxRecords(pbs uint32) int { return int(pbs-packHeaderSize) / recordSize }

// RecordFlags are the flag bits of a log record.
type RecordFlags uint32

// Record flag bits.
const (
	FlagExist   RecordFlags = 0x1
	FlagPadding RecordFlags = 0x2
	FlagDiscard RecordFlags = 0x4
)

// Record is one entry of a logpack header.
type Record struct {
	Checksum  uint32      // csum of the IO data; 0 for padding and discard
	Flags     RecordFlags // FlagExist plus at most one of FlagPadding, FlagDiscard
	Offset    uint64      // data-device address in LB
	IOSize    uint32      // LB
	LsidLocal uint16      // Lsid - logpack lsid
	Lsid      uint64      // lsid of the first data PB
}

// IsPadding reports whether r is a padding record.
func (r *Record) IsPadding() bool { return r.Flags&FlagPadding != 0 }

// IsDiscard reports whether r is a discard record.
func (r *Record) IsDiscard() bool { return r.Flags&FlagDiscard != 0 }

// IsNormal reports whether r is an ordinary write.
func (r *Record) IsNormal() bool { return r.Flags&(FlagPadding|FlagDiscard) == 0 }

// HasData reports whether r owns data blocks in the log (normal or padding).
func (r *Record) HasData() bool { return !r.IsDiscard() }

// DataPBs returns the PBs of log space that r owns.
func (r *Record) DataPBs(pbs uint32) uint64 {
	if !r.HasData() {
		return 0
	}
	return PBsFor(pbs, uint64(r.IOSize))
}

// String formats r for diagnostics.
func (r *Record) String() string {
	return fmt.Sprintf("lsid %d (+%d) io %d+%d flags %s csum %08x",
		r.Lsid, r.LsidLocal, r.Offset, r.IOSize, r.Flags, r.Checksum)
}

// String renders the flags as walb-tools does: E (exist), P (padding), D (discard).
func (f RecordFlags) String() string {
	b := []byte("---")
	if f&FlagExist != 0 {
		b[0] = 'E'
	}
	if f&FlagPadding != 0 {
		b[1] = 'P'
	}
	if f&FlagDiscard != 0 {
		b[2] = 'D'
	}
	return string(b)
}

// PackHeader is a decoded logpack header.
type PackHeader struct {
	PBS         uint32
	Checksum    uint32 // as read or last marshalled
	LogpackLsid uint64
	TotalIOSize uint16 // PBs of data
	NPadding    uint16
	Records     []Record
}

// NewPackHeader returns an empty logpack header for lsid.
func NewPackHeader(pbs uint32, lsid uint64) *PackHeader {
	return &PackHeader{PBS: pbs, LogpackLsid: lsid}
}

// Reset empties h for reuse at lsid.
func (h *PackHeader) Reset(lsid uint64) {
	h.LogpackLsid = lsid
	h.TotalIOSize = 0
	h.NPadding = 0
	h.Checksum = 0
	h.Records = h.Records[:0]
}

// NextLsid returns the lsid just after this pack.
func (h *PackHeader) NextLsid() uint64 { return h.LogpackLsid + 1 + uint64(h.TotalIOSize) }

// DataSize returns the bytes of data that follow the header.
func (h *PackHeader) DataSize() int { return int(h.TotalIOSize) * int(h.PBS) }

// IsFull reports whether no record slot is left.
func (h *PackHeader) IsFull() bool { return len(h.Records) >= MaxRecords(h.PBS) }

func (h *PackHeader) room(pbs uint64) bool {
	return !h.IsFull() && uint64(h.TotalIOSize)+pbs <= MaxTotalIOSize
}

// AddNormal appends a write of ioSize LB at offset. ringLeft is the number of
// PBs left before the ring end at the next data position (0 = no ring); when
// the IO would cross it, a padding record is added first, as the driver does.
// It returns ErrFull when the IO does not fit in this pack (nothing is added
// then, except possibly the padding record, which is the driver's behaviour
// too: the caller starts a new pack).
func (h *PackHeader) AddNormal(offset uint64, ioSize uint32, csum uint32, ringLeft uint64) error {
	if ioSize == 0 || ioSize > MaxNormalIOSize {
		return errors.Wrapf(ErrInvalid, "normal io size %d", ioSize)
	}
	n := PBsFor(h.PBS, uint64(ioSize))
	if ringLeft != 0 && ringLeft < n {
		if h.NPadding > 0 || !h.room(ringLeft) {
			return ErrFull
		}
		h.addRecord(Record{Flags: FlagExist | FlagPadding, IOSize: uint32(ringLeft * uint64(h.PBS/LogicalBlockSize))}, ringLeft)
		h.NPadding++
	}
	if !h.room(n) {
		return ErrFull
	}
	h.addRecord(Record{Checksum: csum, Flags: FlagExist, Offset: offset, IOSize: ioSize}, n)
	return nil
}

// AddDiscard appends a discard of size LB at offset. Discards use no log space.
func (h *PackHeader) AddDiscard(offset uint64, size uint32) error {
	if size == 0 {
		return errors.Wrap(ErrInvalid, "discard of zero size")
	}
	if h.IsFull() || h.TotalIOSize == MaxTotalIOSize {
		// A discard after a full pack would get lsid_local 65536, which
		// wraps to 0 in the u16 field; start a new pack instead.
		return ErrFull
	}
	h.addRecord(Record{Flags: FlagExist | FlagDiscard, Offset: offset, IOSize: size}, 0)
	return nil
}

func (h *PackHeader) addRecord(r Record, pbs uint64) {
	r.LsidLocal = h.TotalIOSize + 1
	r.Lsid = h.LogpackLsid + uint64(r.LsidLocal)
	h.Records = append(h.Records, r)
	h.TotalIOSize += uint16(pbs)
}

// Truncate keeps records [0, n) and recomputes the derived fields, as a
// reader does when record n's data is damaged.
func (h *PackHeader) Truncate(n int) {
	h.Records = h.Records[:n]
	h.TotalIOSize = 0
	h.NPadding = 0
	for i := range h.Records {
		r := &h.Records[i]
		h.TotalIOSize += uint16(r.DataPBs(h.PBS))
		if r.IsPadding() {
			h.NPadding++
		}
	}
}

// MarshalTo encodes h into b (len(b) must be h.PBS) and stores the checksum
// computed with salt.
func (h *PackHeader) MarshalTo(b []byte, salt uint32) {
	clear(b)
	le := binary.LittleEndian
	le.PutUint16(b[4:], SectorTypeLogpack)
	le.PutUint16(b[6:], h.TotalIOSize)
	le.PutUint64(b[8:], h.LogpackLsid)
	le.PutUint16(b[16:], uint16(len(h.Records)))
	le.PutUint16(b[18:], h.NPadding)
	for i := range h.Records {
		r := &h.Records[i]
		p := b[packHeaderSize+i*recordSize:]
		le.PutUint32(p[0:], r.Checksum)
		le.PutUint32(p[4:], uint32(r.Flags))
		le.PutUint64(p[8:], r.Offset)
		le.PutUint32(p[16:], r.IOSize)
		le.PutUint16(p[20:], r.LsidLocal)
		le.PutUint64(p[24:], r.Lsid)
	}
	checksum.Store(b, 0, salt)
	h.Checksum = le.Uint32(b)
}

// Marshal returns the encoded header block.
func (h *PackHeader) Marshal(salt uint32) []byte {
	b := make([]byte, h.PBS)
	h.MarshalTo(b, salt)
	return b
}

// MarshalEndBlock returns the block that ends a wlog file: a logpack header
// with no records and logpack_lsid 2^64-1, checksummed with salt.
func MarshalEndBlock(pbs uint32, salt uint32) []byte {
	h := PackHeader{PBS: pbs, LogpackLsid: InvalidLsid}
	return h.Marshal(salt)
}

// headerKind classifies a header block.
type headerKind int

const (
	kindPack headerKind = iota
	kindEnd             // n_records == 0: the wlog end marker
)

// ParsePackHeader decodes and validates the header block b (len(b) is the
// pbs) with salt. It checks the sector type, checksum and every record (the
// userland checks of formats.md 5.1 plus the record-count limit and data
// contiguity). It does not check that logpack_lsid is the expected one. A
// block with no records is reported as ErrCorrupt; use [IsEndBlock] first to
// recognise an end marker.
func ParsePackHeader(b []byte, salt uint32) (*PackHeader, error) {
	h := &PackHeader{}
	k, err := h.parse(b, salt)
	if err != nil {
		return nil, err
	}
	if k == kindEnd {
		return nil, errors.Wrap(ErrCorrupt, "logpack header has no records")
	}
	return h, nil
}

// IsEndBlock reports whether b is a wlog end block: a logpack header with no
// records and logpack_lsid 2^64-1 (its checksum is not required to match,
// as walb-tools never verifies it).
func IsEndBlock(b []byte) bool {
	le := binary.LittleEndian
	return len(b) >= packHeaderSize && le.Uint16(b[4:]) == SectorTypeLogpack &&
		le.Uint16(b[16:]) == 0 && le.Uint16(b[6:]) == 0 && le.Uint16(b[18:]) == 0 &&
		le.Uint64(b[8:]) == InvalidLsid
}

func (h *PackHeader) parse(b []byte, salt uint32) (headerKind, error) {
	le := binary.LittleEndian
	pbs := uint32(len(b))
	if !ValidPBS(pbs) {
		return 0, errors.Wrapf(ErrInvalid, "block size %d", pbs)
	}
	h.PBS = pbs
	if t := le.Uint16(b[4:]); t != SectorTypeLogpack {
		return 0, errors.Wrapf(ErrCorrupt, "sector type %#04x is not a logpack header", t)
	}
	h.Checksum = le.Uint32(b[0:])
	h.TotalIOSize = le.Uint16(b[6:])
	h.LogpackLsid = le.Uint64(b[8:])
	n := int(le.Uint16(b[16:]))
	h.NPadding = le.Uint16(b[18:])
	h.Records = h.Records[:0]
	if n == 0 {
		if h.TotalIOSize != 0 || h.NPadding != 0 {
			return 0, errors.Wrap(ErrCorrupt, "empty logpack header with data")
		}
		return kindEnd, nil
	}
	if !checksum.Valid(b, salt) {
		return 0, errors.Wrapf(ErrChecksum, "logpack header lsid %d", h.LogpackLsid)
	}
	if n > MaxRecords(pbs) {
		return 0, errors.Wrapf(ErrCorrupt, "logpack lsid %d: %d records, max %d", h.LogpackLsid, n, MaxRecords(pbs))
	}
	if h.NPadding > 1 || int(h.NPadding) > n {
		return 0, errors.Wrapf(ErrCorrupt, "logpack lsid %d: n_padding %d", h.LogpackLsid, h.NPadding)
	}
	if h.LogpackLsid > MaxLsid-1-uint64(h.TotalIOSize) {
		return 0, errors.Wrapf(ErrCorrupt, "logpack lsid %d: lsid overflow", h.LogpackLsid)
	}
	var pos uint64 = 1 // lsid_local of the next data
	for i := 0; i < n; i++ {
		p := b[packHeaderSize+i*recordSize:]
		r := Record{
			Checksum:  le.Uint32(p[0:]),
			Flags:     RecordFlags(le.Uint32(p[4:])),
			Offset:    le.Uint64(p[8:]),
			IOSize:    le.Uint32(p[16:]),
			LsidLocal: le.Uint16(p[20:]),
			Lsid:      le.Uint64(p[24:]),
		}
		if err := h.checkRecord(&r, i, pos); err != nil {
			return 0, err
		}
		pos += r.DataPBs(pbs)
		h.Records = append(h.Records, r)
	}
	if pos-1 != uint64(h.TotalIOSize) {
		return 0, errors.Wrapf(ErrCorrupt, "logpack lsid %d: total_io_size %d but records hold %d PBs",
			h.LogpackLsid, h.TotalIOSize, pos-1)
	}
	// n_padding is not checked against the records: walb-tools' wlog-restore
	// turns clipped IOs into padding records without counting them, and
	// logs written that way are valid input.
	return kindPack, nil
}

func (h *PackHeader) checkRecord(r *Record, i int, pos uint64) error {
	bad := func(format string, args ...any) error {
		return errors.Wrapf(ErrCorrupt, "logpack lsid %d record %d: "+format,
			append([]any{h.LogpackLsid, i}, args...)...)
	}
	switch {
	case r.Flags&FlagExist == 0:
		return bad("EXIST flag not set")
	case r.Flags&^(FlagExist|FlagPadding|FlagDiscard) != 0:
		return bad("unknown flags %#x", uint32(r.Flags))
	case r.IsPadding() && r.IsDiscard():
		return bad("both padding and discard")
	case r.IOSize == 0 && !r.IsPadding():
		return bad("zero io size")
	case r.IOSize > MaxNormalIOSize && !r.IsDiscard():
		return bad("io size %d too large", r.IOSize)
	case r.LsidLocal == 0:
		return bad("lsid_local is 0")
	case r.Lsid > MaxLsid || r.Lsid-uint64(r.LsidLocal) != h.LogpackLsid:
		return bad("lsid %d does not match lsid_local %d", r.Lsid, r.LsidLocal)
	case uint64(r.LsidLocal) != pos:
		return bad("lsid_local %d, expected %d", r.LsidLocal, pos)
	}
	return nil
}
