package wdiff

import (
	"encoding/binary"
	"encoding/hex"
	"strconv"

	"github.com/pkg/errors"
	"github.com/walb-go/walb/checksum"
)

// Sizes and limits of the formats (walb-tools' walb_diff.h).
const (
	// LogicalBlockSize is the unit of record addresses and lengths.
	LogicalBlockSize = 512
	// Version is WALB_DIFF_VERSION, the only version in use.
	Version = 2
	// FileHeaderSize is the size of the header that starts every wdiff file.
	FileHeaderSize = 32
	// PackHeaderSize is the size of a sorted-format pack header block.
	PackHeaderSize = 4096
	// SortedRecordSize is the size of a record inside a pack header.
	SortedRecordSize = 32
	// MaxPackRecords is the most records one pack holds.
	MaxPackRecords = (PackHeaderSize - 16) / SortedRecordSize
	// MaxPackDataSize is the data limit of a pack, unless it holds a single
	// record.
	MaxPackDataSize = 32 << 20
	// IndexRecordSize is the size of an indexed-format index record.
	IndexRecordSize = 48
	// IndexSuperSize is the size of the trailer ending an indexed file.
	IndexSuperSize = 24
	// DefaultMaxIOBlocks is walb-tools' default maximum IO size (1 MiB).
	DefaultMaxIOBlocks = 2048
	// MaxRecordBlocks bounds the uncompressed size of one record or image
	// that readers accept (512 MiB). No WalB IO can be larger (a logpack
	// holds at most 65535 physical blocks), and the bound keeps hostile
	// input from making a reader allocate more.
	MaxRecordBlocks = 1 << 20
)

// Type is the layout code in the file header.
type Type uint8

// File layouts.
const (
	// TypeSorted is a stream of packs, records in address order.
	TypeSorted Type = 0
	// TypeIndexed is data images followed by an address-ordered index.
	TypeIndexed Type = 1
)

// String returns the name wdiff-show prints for the layout.
func (t Type) String() string {
	switch t {
	case TypeSorted:
		return "sorted"
	case TypeIndexed:
		return "indexed"
	}
	return "unknown:" + strconv.Itoa(int(t))
}

// FileHeader is the 32-byte header of every wdiff file (version 2).
type FileHeader struct {
	// Type is the layout of the rest of the file.
	Type Type
	// UUID is the log UUID of the source volume (all zeros in merge output).
	UUID [16]byte
}

// MarshalBinary encodes the header with its checksum. Reserved fields are
// written as zero.
func (h FileHeader) MarshalBinary() ([]byte, error) {
	b := make([]byte, FileHeaderSize)
	h.encode(b)
	return b, nil
}

func (h FileHeader) encode(b []byte) {
	clear(b[:FileHeaderSize])
	binary.LittleEndian.PutUint16(b[4:], Version)
	b[6] = byte(h.Type)
	copy(b[16:32], h.UUID[:])
	checksum.Store(b[:FileHeaderSize], 0, 0)
}

// ParseFileHeader decodes and validates a 32-byte file header: checksum,
// version 2 and a known type. The reserved fields (max_io_blocks in early
// version-2 writers) are ignored.
func ParseFileHeader(b []byte) (FileHeader, error) {
	if len(b) < FileHeaderSize {
		return FileHeader{}, errors.Wrapf(ErrTruncated, "file header: %d of %d bytes", len(b), FileHeaderSize)
	}
	b = b[:FileHeaderSize]
	if !checksum.Valid(b, 0) {
		return FileHeader{}, errors.Wrapf(ErrChecksum, "file header at offset 0 (stored %08x)", binary.LittleEndian.Uint32(b))
	}
	if v := binary.LittleEndian.Uint16(b[4:]); v != Version {
		return FileHeader{}, errors.Wrapf(ErrVersion, "file header at offset 0: version %d, want %d", v, Version)
	}
	h := FileHeader{Type: Type(b[6])}
	if h.Type != TypeSorted && h.Type != TypeIndexed {
		return FileHeader{}, errors.Wrapf(ErrType, "file header at offset 0: type %d", b[6])
	}
	copy(h.UUID[:], b[16:32])
	return h, nil
}

// UUIDString formats the UUID as 32 lowercase hex digits, as walb-tools does.
func (h FileHeader) UUIDString() string { return hex.EncodeToString(h.UUID[:]) }

// Flags are a record's kind bits.
type Flags uint8

// Record flags. A record with neither flag is normal and carries data.
const (
	// flagExist is a legacy bit: ignored on read, never written.
	flagExist Flags = 0x01
	// FlagAllZero marks a range that reads as zeros.
	FlagAllZero Flags = 0x02
	// FlagDiscard marks a discarded range.
	FlagDiscard Flags = 0x04
	// flagMask keeps the bits readers interpret.
	flagMask = FlagAllZero | FlagDiscard
)

// Record is a range of logical blocks and its kind, common to both layouts.
type Record struct {
	// Addr is the first logical block.
	Addr uint64
	// Blocks is the length in logical blocks.
	Blocks uint32
	// Flags is zero for a normal record, else FlagAllZero or FlagDiscard.
	Flags Flags
}

// IsNormal reports whether the record carries data.
func (r Record) IsNormal() bool { return r.Flags&flagMask == 0 }

// IsAllZero reports whether the record stands for zeros.
func (r Record) IsAllZero() bool { return r.Flags&FlagAllZero != 0 }

// IsDiscard reports whether the record stands for a discard.
func (r Record) IsDiscard() bool { return r.Flags&FlagDiscard != 0 }

// End returns the block just past the record.
func (r Record) End() uint64 { return r.Addr + uint64(r.Blocks) }

// Size returns the uncompressed length of the record's range in bytes.
func (r Record) Size() int { return int(r.Blocks) * LogicalBlockSize }

// flagString renders the flags as wdiff-show does: Z or -, then D or -.
func (r Record) flagString() string {
	b := []byte("--")
	if r.IsAllZero() {
		b[0] = 'Z'
	}
	if r.IsDiscard() {
		b[1] = 'D'
	}
	return string(b)
}

// validateWrite checks a record handed to a writer.
func (r Record) validateWrite() error {
	if r.Flags&^flagMask != 0 || r.Flags == flagMask {
		return errors.Wrapf(ErrInvalid, "record at %d: flags %#x", r.Addr, r.Flags)
	}
	if r.IsNormal() && r.Blocks == 0 {
		return errors.Wrapf(ErrInvalid, "normal record at %d has no blocks", r.Addr)
	}
	if r.End() < r.Addr {
		return errors.Wrapf(ErrInvalid, "record at %d+%d overflows the address space", r.Addr, r.Blocks)
	}
	if r.IsNormal() && uint64(r.Blocks)*LogicalBlockSize > 0xffffffff {
		return errors.Wrapf(ErrInvalid, "record at %d: %d blocks do not fit a 32-bit data size", r.Addr, r.Blocks)
	}
	return nil
}

// IO is a record with its uncompressed data.
type IO struct {
	Record
	// Data holds Blocks*512 bytes for a normal record and is nil otherwise.
	// Data returned by readers is only valid until their next call.
	Data []byte
}

// Stored is the data of a normal record as a file holds it, still
// compressed, so records can be copied between files without recompression.
type Stored struct {
	// Codec is the compression of Data.
	Codec Codec
	// Data is the stored bytes.
	Data []byte
	// Checksum is checksum.Sum(Data, 0).
	Checksum uint32
}

// orderCheck enforces ascending, non-overlapping records.
type orderCheck struct {
	started bool
	end     uint64
}

func (o *orderCheck) next(r Record) bool {
	if o.started && r.Addr < o.end {
		return false
	}
	o.started = true
	o.end = r.End()
	return true
}
