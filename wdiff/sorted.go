package wdiff

import (
	"encoding/binary"
	"fmt"
	"io"

	"github.com/pkg/errors"
	"github.com/walb-go/walb/checksum"
)

const packEndFlag = 0x01

// SortedRecord is a record as a sorted file's pack header stores it.
type SortedRecord struct {
	Record
	// Codec is the compression of the stored data.
	Codec Codec
	// DataOffset is the data's offset from the end of the pack header.
	DataOffset uint32
	// DataSize is the stored (compressed) size; 0 unless normal.
	DataSize uint32
	// Checksum is checksum.Sum of the stored data; 0 unless normal.
	Checksum uint32
}

// String formats the record as wdiff-show's sorted record columns:
// addr, blocks, codec, data offset, data size, checksum, flags.
func (r SortedRecord) String() string {
	return fmt.Sprintf("%d\t%d\t%s\t%d\t%d\t%08x\t%s",
		r.Addr, r.Blocks, r.Codec, r.DataOffset, r.DataSize, r.Checksum, r.flagString())
}

func (r *SortedRecord) decode(b []byte) {
	r.Addr = binary.LittleEndian.Uint64(b[0:])
	r.Blocks = binary.LittleEndian.Uint32(b[8:])
	r.Flags = Flags(b[12])
	r.Codec = Codec(b[13])
	r.DataOffset = binary.LittleEndian.Uint32(b[16:])
	r.DataSize = binary.LittleEndian.Uint32(b[20:])
	r.Checksum = binary.LittleEndian.Uint32(b[24:])
}

// encode writes the record; the legacy EXIST bit is never written.
func (r *SortedRecord) encode(b []byte) {
	binary.LittleEndian.PutUint64(b[0:], r.Addr)
	binary.LittleEndian.PutUint32(b[8:], r.Blocks)
	b[12] = byte(r.Flags & flagMask)
	b[13] = byte(r.Codec)
	binary.LittleEndian.PutUint16(b[14:], 0)
	binary.LittleEndian.PutUint32(b[16:], r.DataOffset)
	binary.LittleEndian.PutUint32(b[20:], r.DataSize)
	binary.LittleEndian.PutUint32(b[24:], r.Checksum)
	binary.LittleEndian.PutUint32(b[28:], 0)
}

// check validates the fields of a record read from a file, the checks
// walb-tools makes (flag exclusivity, codec, io_blocks) plus bounds that keep
// a reader's memory proportional to real data.
func (r *SortedRecord) check() error {
	if r.Flags&flagMask == flagMask {
		return errors.Wrap(ErrCorrupt, "allzero and discard flags are exclusive")
	}
	if r.End() < r.Addr {
		return errors.Wrapf(ErrCorrupt, "range %d+%d overflows", r.Addr, r.Blocks)
	}
	if !r.IsNormal() {
		if r.DataSize != 0 {
			return errors.Wrapf(ErrCorrupt, "non-normal record with %d data bytes", r.DataSize)
		}
		return nil
	}
	if !r.Codec.Valid() {
		return errors.Wrapf(ErrUnknownCodec, "compression type %d", r.Codec)
	}
	if r.Blocks == 0 {
		return errors.Wrap(ErrCorrupt, "normal record with io_blocks 0")
	}
	if r.Blocks > MaxRecordBlocks {
		return errors.Wrapf(ErrCorrupt, "io_blocks %d exceeds the limit %d", r.Blocks, MaxRecordBlocks)
	}
	raw := uint64(r.Blocks) * LogicalBlockSize
	if r.DataSize == 0 || uint64(r.DataSize) > raw || (r.Codec == CodecNone && uint64(r.DataSize) != raw) {
		return errors.Wrapf(ErrCorrupt, "data_size %d for %d blocks of %s data", r.DataSize, r.Blocks, r.Codec)
	}
	return nil
}

// SortedReader reads a sorted wdiff file as a stream. Errors are sticky: once
// Next fails, every later call returns the same error.
type SortedReader struct {
	r   io.Reader
	h   FileHeader
	off int64 // file offset of the next byte r yields
	err error

	pack    [PackHeaderSize]byte
	packOff int64 // file offset of the current pack header
	nrec    int
	idx     int
	data    []byte // the current pack's data
	dataOff int64  // file offset of data[0]
	order   orderCheck
	out     []byte // decompression buffer, reused
}

// NewSortedReader reads and validates the file header from r. The reader
// consumes r in pack-sized reads; it needs no buffering.
func NewSortedReader(r io.Reader) (*SortedReader, error) {
	var b [FileHeaderSize]byte
	if n, err := io.ReadFull(r, b[:]); err != nil {
		return nil, readErr(err, "file header", 0, n, FileHeaderSize)
	}
	h, err := ParseFileHeader(b[:])
	if err != nil {
		return nil, err
	}
	if h.Type != TypeSorted {
		return nil, errors.Wrapf(ErrType, "file header: %s file, want sorted", h.Type)
	}
	return newSortedReaderAfterHeader(r, h), nil
}

func newSortedReaderAfterHeader(r io.Reader, h FileHeader) *SortedReader {
	return &SortedReader{r: r, h: h, off: FileHeaderSize}
}

// readErr turns a short read into ErrTruncated with the position.
func readErr(err error, what string, off int64, got, want int) error {
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return errors.Wrapf(ErrTruncated, "%s at offset %d: %d of %d bytes", what, off, got, want)
	}
	return errors.Wrapf(err, "wdiff: reading %s at offset %d", what, off)
}

// Header returns the file header.
func (r *SortedReader) Header() FileHeader { return r.h }

// Next returns the next record with its data decompressed. Data stays valid
// until the next call. At the end it returns io.EOF.
func (r *SortedReader) Next() (IO, error) {
	rec, st, err := r.NextStored()
	if err != nil {
		return IO{}, err
	}
	if !rec.IsNormal() {
		return IO{Record: rec}, nil
	}
	if st.Codec == CodecNone {
		return IO{Record: rec, Data: st.Data}, nil
	}
	out, err := Decompress(r.out, st.Data, st.Codec, rec.Size())
	if err != nil {
		r.err = errors.WithMessagef(err, "record %d+%d data at offset %d", rec.Addr, rec.Blocks, r.lastDataOff())
		return IO{}, r.err
	}
	r.out = out
	return IO{Record: rec, Data: out}, nil
}

// NextStored returns the next record with its data as stored, without
// decompressing it; the data checksum is still verified. Data stays valid
// until the next call. At the end it returns io.EOF.
func (r *SortedReader) NextStored() (Record, Stored, error) {
	sr, err := r.NextRaw()
	if err != nil {
		return Record{}, Stored{}, err
	}
	if !sr.IsNormal() {
		return sr.Record, Stored{}, nil
	}
	return sr.Record, Stored{Codec: sr.Codec, Data: r.data[sr.DataOffset : sr.DataOffset+sr.DataSize], Checksum: sr.Checksum}, nil
}

// lastDataOff is the file offset of the data of the record last returned.
func (r *SortedReader) lastDataOff() int64 {
	var sr SortedRecord
	sr.decode(r.pack[16+SortedRecordSize*(r.idx-1):])
	return r.dataOff + int64(sr.DataOffset)
}

// NextRaw returns the next record exactly as the pack header stores it,
// after validating it and its data checksum. At the end it returns io.EOF.
func (r *SortedReader) NextRaw() (SortedRecord, error) {
	if r.err != nil {
		return SortedRecord{}, r.err
	}
	for r.idx == r.nrec {
		if err := r.readPack(); err != nil {
			r.err = err
			return SortedRecord{}, err
		}
	}
	var sr SortedRecord
	sr.decode(r.pack[16+SortedRecordSize*r.idx:])
	r.idx++
	if sr.IsNormal() {
		d := r.data[sr.DataOffset : sr.DataOffset+sr.DataSize]
		if got := checksum.Sum(d, 0); got != sr.Checksum {
			r.err = errors.Wrapf(ErrChecksum, "record %d+%d data at offset %d: stored %08x, computed %08x",
				sr.Addr, sr.Blocks, r.dataOff+int64(sr.DataOffset), sr.Checksum, got)
			return SortedRecord{}, r.err
		}
	}
	return sr, nil
}

// readPack reads and validates the next pack header and its data. It
// returns io.EOF at the end pack, or when the input ends exactly where a
// pack header would start (walb-tools accepts both).
func (r *SortedReader) readPack() error {
	r.packOff = r.off
	n, err := io.ReadFull(r.r, r.pack[:])
	r.off += int64(n)
	if err == io.EOF {
		return io.EOF
	}
	if err != nil {
		return readErr(err, "pack header", r.packOff, n, PackHeaderSize)
	}
	if !checksum.Valid(r.pack[:], 0) {
		return errors.Wrapf(ErrChecksum, "pack header at offset %d", r.packOff)
	}
	nrec := int(binary.LittleEndian.Uint16(r.pack[4:]))
	flags := r.pack[6]
	total := binary.LittleEndian.Uint32(r.pack[8:])
	if flags&packEndFlag != 0 {
		if nrec != 0 || total != 0 {
			return errors.Wrapf(ErrCorrupt, "end pack at offset %d has %d records and %d data bytes", r.packOff, nrec, total)
		}
		return io.EOF
	}
	if nrec > MaxPackRecords {
		return errors.Wrapf(ErrCorrupt, "pack header at offset %d: %d records, at most %d", r.packOff, nrec, MaxPackRecords)
	}
	if total > MaxPackDataSize && nrec != 1 {
		return errors.Wrapf(ErrCorrupt, "pack header at offset %d: %d data bytes in %d records exceed %d",
			r.packOff, total, nrec, MaxPackDataSize)
	}
	var sum uint64
	for i := range nrec {
		var sr SortedRecord
		sr.decode(r.pack[16+SortedRecordSize*i:])
		recOff := r.packOff + 16 + int64(SortedRecordSize*i)
		if err := sr.check(); err != nil {
			return errors.WithMessagef(err, "record %d of pack at offset %d (record at offset %d)", i, r.packOff, recOff)
		}
		if uint64(sr.DataOffset) != sum {
			return errors.Wrapf(ErrCorrupt, "record at offset %d: data_offset %d, want %d", recOff, sr.DataOffset, sum)
		}
		sum += uint64(sr.DataSize)
		if !r.order.next(sr.Record) {
			return errors.Wrapf(ErrUnsorted, "record at offset %d: %d+%d starts before the previous record's end %d",
				recOff, sr.Addr, sr.Blocks, r.order.end)
		}
	}
	if sum != uint64(total) {
		return errors.Wrapf(ErrCorrupt, "pack header at offset %d: total_size %d, records hold %d", r.packOff, total, sum)
	}
	r.dataOff = r.off
	if err := r.readData(int(total)); err != nil {
		return err
	}
	r.nrec, r.idx = nrec, 0
	return nil
}

// readData reads n bytes of pack data. The buffer grows only as data
// actually arrives, so a forged size cannot make the reader allocate more
// than the input holds (plus one step).
func (r *SortedReader) readData(n int) error {
	const step = 8 << 20
	if cap(r.data) > 4*MaxPackDataSize && n <= MaxPackDataSize {
		r.data = nil // drop a buffer left by one huge record
	}
	r.data = r.data[:0]
	for len(r.data) < n {
		chunk := min(n-len(r.data), step)
		if cap(r.data) < len(r.data)+chunk {
			nb := make([]byte, len(r.data), min(n, max(2*cap(r.data), len(r.data)+chunk)))
			copy(nb, r.data)
			r.data = nb
		}
		start := len(r.data)
		got, err := io.ReadFull(r.r, r.data[start:start+chunk])
		r.off += int64(got)
		r.data = r.data[:start+got]
		if err != nil {
			return readErr(err, "pack data", r.dataOff, len(r.data), n)
		}
	}
	return nil
}
