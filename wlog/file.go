package wlog

import (
	"encoding/binary"
	"encoding/hex"
	"fmt"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/checksum"
)

// FileHeaderSize is the size of a wlog file header.
const FileHeaderSize = 4096

// UUID is a 16-byte WalB log identity (random bytes, not RFC 4122).
type UUID [16]byte

// String renders u as 32 lowercase hex digits, as walb-tools does.
func (u UUID) String() string { return hex.EncodeToString(u[:]) }

// ParseUUID parses 32 hex digits.
func ParseUUID(s string) (UUID, error) {
	var u UUID
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(u) {
		return u, errors.Wrapf(ErrInvalid, "uuid %q", s)
	}
	copy(u[:], b)
	return u, nil
}

// FileHeader is the header of a wlog file.
type FileHeader struct {
	Salt      uint32 // log checksum salt of the packs
	PBS       uint32 // physical block size of the packs
	UUID      UUID   // log device uuid
	BeginLsid uint64 // lsid of the first pack
	EndLsid   uint64 // requested end; may exceed the real end
}

// Marshal encodes h into a FileHeaderSize-byte block with its checksum.
func (h *FileHeader) Marshal() []byte {
	b := make([]byte, FileHeaderSize)
	le := binary.LittleEndian
	le.PutUint16(b[0:], SectorTypeWlogHeader)
	le.PutUint16(b[2:], Version)
	le.PutUint16(b[4:], FileHeaderSize)
	le.PutUint32(b[12:], h.Salt)
	le.PutUint32(b[16:], LogicalBlockSize)
	le.PutUint32(b[20:], h.PBS)
	copy(b[24:40], h.UUID[:])
	le.PutUint64(b[40:], h.BeginLsid)
	le.PutUint64(b[48:], h.EndLsid)
	checksum.Store(b, 8, 0)
	return b
}

// Validate checks the fields that do not depend on the encoding.
func (h *FileHeader) Validate() error {
	if !ValidPBS(h.PBS) {
		return errors.Wrapf(ErrInvalid, "wlog header: physical block size %d", h.PBS)
	}
	if h.BeginLsid >= h.EndLsid {
		return errors.Wrapf(ErrInvalid, "wlog header: begin lsid %d >= end lsid %d", h.BeginLsid, h.EndLsid)
	}
	return nil
}

// ParseFileHeader decodes and validates a wlog file header block.
func ParseFileHeader(b []byte) (FileHeader, error) {
	var h FileHeader
	if len(b) < FileHeaderSize {
		return h, errors.Wrapf(ErrTruncated, "wlog header: %d of %d bytes", len(b), FileHeaderSize)
	}
	b = b[:FileHeaderSize]
	le := binary.LittleEndian
	if t := le.Uint16(b[0:]); t != SectorTypeWlogHeader {
		return h, errors.Wrapf(ErrCorrupt, "wlog header: sector type %#04x, not a wlog file", t)
	}
	if v := le.Uint16(b[2:]); v != Version {
		return h, errors.Wrapf(ErrCorrupt, "wlog header: version %d, want %d", v, Version)
	}
	if s := le.Uint16(b[4:]); s != FileHeaderSize {
		return h, errors.Wrapf(ErrCorrupt, "wlog header: header size %d", s)
	}
	if !checksum.Valid(b, 0) {
		return h, errors.Wrap(ErrChecksum, "wlog header")
	}
	if lbs := le.Uint32(b[16:]); lbs != LogicalBlockSize {
		return h, errors.Wrapf(ErrCorrupt, "wlog header: logical block size %d", lbs)
	}
	h.Salt = le.Uint32(b[12:])
	h.PBS = le.Uint32(b[20:])
	copy(h.UUID[:], b[24:40])
	h.BeginLsid = le.Uint64(b[40:])
	h.EndLsid = le.Uint64(b[48:])
	if err := h.Validate(); err != nil {
		return h, errors.Wrap(ErrCorrupt, err.Error())
	}
	return h, nil
}

// String formats h like the first line of wlog-show.
func (h *FileHeader) String() string {
	return fmt.Sprintf("wlog_h: ver %3d pbs %4d salt %08x uuid %s lsid %d %d",
		Version, h.PBS, h.Salt, h.UUID, h.BeginLsid, h.EndLsid)
}
