package wdiff

import (
	"encoding/binary"
	"fmt"
	"io"
	"math/bits"

	"github.com/pkg/errors"
	"github.com/walb-go/walb/checksum"
)

// IndexRecord is an index record of an indexed file as stored.
type IndexRecord struct {
	Record
	// Codec is the compression of the image.
	Codec Codec
	// DataOffset is the absolute file offset of the image. walb-tools also
	// fills it for non-normal records (with the writer's offset when the IO
	// arrived); it has no meaning there.
	DataOffset uint64
	// DataSize is the stored size of the image; 0 unless normal.
	DataSize uint32
	// IOOffset is the record's first block inside the decompressed image.
	IOOffset uint32
	// OrigBlocks is the decompressed image size in blocks; 0 unless normal.
	OrigBlocks uint32
	// IOChecksum is checksum.Sum of the stored image; 0 unless normal.
	IOChecksum uint32
	// RecChecksum makes the 48-byte record checksum to zero.
	RecChecksum uint32
}

// String formats the record as wdiff-show's indexed record columns: addr,
// blocks, codec, data offset, data size, orig blocks, io offset,
// io checksum, record checksum, flags.
func (r IndexRecord) String() string {
	return fmt.Sprintf("%d\t%d\t%s\t%d\t%d\t%d\t%d\t%08x\t%08x\t%s",
		r.Addr, r.Blocks, r.Codec, r.DataOffset, r.DataSize, r.OrigBlocks, r.IOOffset,
		r.IOChecksum, r.RecChecksum, r.flagString())
}

func (r *IndexRecord) decode(b []byte) {
	r.Addr = binary.LittleEndian.Uint64(b[0:])
	r.Blocks = binary.LittleEndian.Uint32(b[8:])
	r.Flags = Flags(b[12])
	r.Codec = Codec(b[13])
	r.DataOffset = binary.LittleEndian.Uint64(b[16:])
	r.DataSize = binary.LittleEndian.Uint32(b[24:])
	r.IOOffset = binary.LittleEndian.Uint32(b[28:])
	r.OrigBlocks = binary.LittleEndian.Uint32(b[32:])
	r.IOChecksum = binary.LittleEndian.Uint32(b[40:])
	r.RecChecksum = binary.LittleEndian.Uint32(b[44:])
}

// encode writes the record and computes its record checksum.
func (r *IndexRecord) encode(b []byte) {
	b = b[:IndexRecordSize]
	binary.LittleEndian.PutUint64(b[0:], r.Addr)
	binary.LittleEndian.PutUint32(b[8:], r.Blocks)
	b[12] = byte(r.Flags & flagMask)
	b[13] = byte(r.Codec)
	binary.LittleEndian.PutUint16(b[14:], 0)
	binary.LittleEndian.PutUint64(b[16:], r.DataOffset)
	binary.LittleEndian.PutUint32(b[24:], r.DataSize)
	binary.LittleEndian.PutUint32(b[28:], r.IOOffset)
	binary.LittleEndian.PutUint32(b[32:], r.OrigBlocks)
	binary.LittleEndian.PutUint32(b[36:], 0)
	binary.LittleEndian.PutUint32(b[40:], r.IOChecksum)
	checksum.Store(b, 44, 0)
	r.RecChecksum = binary.LittleEndian.Uint32(b[44:])
}

// check validates a record read from a file whose data area ends at
// dataEnd (the index offset).
func (r *IndexRecord) check(dataEnd uint64) error {
	if r.Flags&flagMask == flagMask {
		return errors.Wrap(ErrCorrupt, "allzero and discard flags are exclusive")
	}
	if r.End() < r.Addr {
		return errors.Wrapf(ErrCorrupt, "range %d+%d overflows", r.Addr, r.Blocks)
	}
	if !r.IsNormal() {
		if r.DataSize != 0 || r.OrigBlocks != 0 || r.IOChecksum != 0 {
			return errors.Wrapf(ErrCorrupt, "non-normal record with data_size %d, orig_blocks %d, io_checksum %08x",
				r.DataSize, r.OrigBlocks, r.IOChecksum)
		}
		return nil
	}
	if !r.Codec.Valid() {
		return errors.Wrapf(ErrUnknownCodec, "compression type %d", r.Codec)
	}
	if r.Blocks == 0 {
		return errors.Wrap(ErrCorrupt, "normal record with io_blocks 0")
	}
	if r.OrigBlocks > MaxRecordBlocks {
		return errors.Wrapf(ErrCorrupt, "orig_blocks %d exceeds the limit %d", r.OrigBlocks, MaxRecordBlocks)
	}
	if uint64(r.IOOffset)+uint64(r.Blocks) > uint64(r.OrigBlocks) {
		return errors.Wrapf(ErrCorrupt, "io_offset %d + io_blocks %d exceed orig_blocks %d", r.IOOffset, r.Blocks, r.OrigBlocks)
	}
	raw := uint64(r.OrigBlocks) * LogicalBlockSize
	if r.DataSize == 0 || uint64(r.DataSize) > raw || (r.Codec == CodecNone && uint64(r.DataSize) != raw) {
		return errors.Wrapf(ErrCorrupt, "data_size %d for an image of %d blocks of %s data", r.DataSize, r.OrigBlocks, r.Codec)
	}
	if r.DataOffset < FileHeaderSize || r.DataOffset > dataEnd || uint64(r.DataSize) > dataEnd-r.DataOffset {
		return errors.Wrapf(ErrCorrupt, "image %d+%d lies outside the data area [%d, %d)", r.DataOffset, r.DataSize, FileHeaderSize, dataEnd)
	}
	return nil
}

// IndexSuper is the 24-byte trailer of an indexed file.
type IndexSuper struct {
	// IndexOffset is where the index records start (8-byte aligned).
	IndexOffset uint64
	// NRecords is the number of index records.
	NRecords uint32
	// NData is the number of IOs the writer received (informational).
	NData uint32
}

func (s IndexSuper) encode(b []byte) {
	b = b[:IndexSuperSize]
	binary.LittleEndian.PutUint64(b[0:], s.IndexOffset)
	binary.LittleEndian.PutUint32(b[8:], s.NRecords)
	binary.LittleEndian.PutUint32(b[12:], s.NData)
	binary.LittleEndian.PutUint32(b[16:], 0)
	checksum.Store(b, 20, 0)
}

// indexChunkRecords is how many index records a reader loads per ReadAt.
const indexChunkRecords = 1024

type imageKey struct {
	off        uint64
	size       uint32
	codec      Codec
	origBlocks uint32
	csum       uint32
}

// IndexedReader reads an indexed wdiff file through random access. The
// index is streamed in chunks; the last decompressed image is cached,
// since consecutive records usually share it. Errors are sticky.
type IndexedReader struct {
	r     io.ReaderAt
	size  int64
	h     FileHeader
	super IndexSuper
	err   error

	next       int    // index of the next record
	chunk      []byte // index bytes of records [chunkFirst, chunkFirst+len/48)
	chunkFirst int
	order      orderCheck

	imgOK  bool
	imgKey imageKey
	img    []byte // decompressed image (aliases stored for CodecNone)
	stored []byte
	out    []byte
}

// NewIndexedReader validates the file header and the index super of the
// size-byte file r.
func NewIndexedReader(r io.ReaderAt, size int64) (*IndexedReader, error) {
	if size < FileHeaderSize+IndexSuperSize {
		return nil, errors.Wrapf(ErrTruncated, "indexed file of %d bytes, need at least %d", size, FileHeaderSize+IndexSuperSize)
	}
	var b [FileHeaderSize]byte
	if n, err := r.ReadAt(b[:], 0); n < len(b) {
		return nil, readErr(eofIfNil(err), "file header", 0, n, FileHeaderSize)
	}
	h, err := ParseFileHeader(b[:])
	if err != nil {
		return nil, err
	}
	if h.Type != TypeIndexed {
		return nil, errors.Wrapf(ErrType, "file header: %s file, want indexed", h.Type)
	}
	return newIndexedReaderAfterHeader(r, size, h)
}

func eofIfNil(err error) error {
	if err == nil {
		return io.ErrUnexpectedEOF
	}
	return err
}

func newIndexedReaderAfterHeader(r io.ReaderAt, size int64, h FileHeader) (*IndexedReader, error) {
	if size < FileHeaderSize+IndexSuperSize {
		return nil, errors.Wrapf(ErrTruncated, "indexed file of %d bytes, need at least %d", size, FileHeaderSize+IndexSuperSize)
	}
	superOff := size - IndexSuperSize
	var sb [IndexSuperSize]byte
	if n, err := r.ReadAt(sb[:], superOff); n < len(sb) {
		return nil, readErr(eofIfNil(err), "index super", superOff, n, IndexSuperSize)
	}
	if !checksum.Valid(sb[:], 0) {
		// A cut-off file ends in arbitrary bytes, so this is also how
		// truncation shows; the error matches both sentinels.
		return nil, fmt.Errorf("wdiff: index super at offset %d: %w (a truncated file looks the same: %w)",
			superOff, ErrChecksum, ErrTruncated)
	}
	s := IndexSuper{
		IndexOffset: binary.LittleEndian.Uint64(sb[0:]),
		NRecords:    binary.LittleEndian.Uint32(sb[8:]),
		NData:       binary.LittleEndian.Uint32(sb[12:]),
	}
	// The super describes the file relative to its end, so a super that
	// does not fit the file is also what a cut-off file looks like.
	if s.IndexOffset%8 != 0 || s.IndexOffset < FileHeaderSize || s.IndexOffset > uint64(superOff) {
		return nil, fmt.Errorf("wdiff: index super at offset %d: index_offset %d is unaligned or outside [%d, %d]: %w (a truncated file looks the same: %w)",
			superOff, s.IndexOffset, FileHeaderSize, superOff, ErrCorrupt, ErrTruncated)
	}
	span := uint64(superOff) - s.IndexOffset
	if span%IndexRecordSize != 0 || span/IndexRecordSize != uint64(s.NRecords) {
		return nil, fmt.Errorf("wdiff: index super at offset %d: %d index bytes for %d records: %w (a truncated file looks the same: %w)",
			superOff, span, s.NRecords, ErrCorrupt, ErrTruncated)
	}
	return &IndexedReader{r: r, size: size, h: h, super: s}, nil
}

// Header returns the file header.
func (r *IndexedReader) Header() FileHeader { return r.h }

// Super returns the index super.
func (r *IndexedReader) Super() IndexSuper { return r.super }

// NIndex returns the number of index records.
func (r *IndexedReader) NIndex() int { return int(r.super.NRecords) }

// Next returns the next index record, in address order, with its data.
// Data stays valid until the next call. At the end it returns io.EOF.
func (r *IndexedReader) Next() (IO, error) {
	ir, err := r.NextRaw()
	if err != nil {
		return IO{}, err
	}
	if !ir.IsNormal() {
		return IO{Record: ir.Record}, nil
	}
	img, err := r.image(&ir)
	if err != nil {
		r.err = err
		return IO{}, err
	}
	lo := int(ir.IOOffset) * LogicalBlockSize
	return IO{Record: ir.Record, Data: img[lo : lo+ir.Size()]}, nil
}

// NextStored returns the next record with its image as stored and the
// record's position inside the decompressed image, without decompressing.
// The image checksum is verified. Only a record covering its whole image
// (IOOffset 0, Blocks == OrigBlocks) can be passed on to
// SortedWriter.WriteStored as is. At the end it returns io.EOF.
func (r *IndexedReader) NextStored() (IndexRecord, Stored, error) {
	ir, err := r.NextRaw()
	if err != nil || !ir.IsNormal() {
		return ir, Stored{}, err
	}
	st, err := r.readStored(&ir)
	if err != nil {
		r.err = err
		return IndexRecord{}, Stored{}, err
	}
	return ir, st, nil
}

// NextRaw returns the next index record after validating it (record
// checksum, fields, bounds and order), without touching its image.
func (r *IndexedReader) NextRaw() (IndexRecord, error) {
	if r.err != nil {
		return IndexRecord{}, r.err
	}
	if r.next >= int(r.super.NRecords) {
		r.err = io.EOF
		return IndexRecord{}, io.EOF
	}
	b, err := r.indexBytes(r.next)
	if err != nil {
		r.err = err
		return IndexRecord{}, err
	}
	off := int64(r.super.IndexOffset) + int64(r.next)*IndexRecordSize
	r.next++
	if !checksum.Valid(b, 0) {
		r.err = errors.Wrapf(ErrChecksum, "index record at offset %d", off)
		return IndexRecord{}, r.err
	}
	var ir IndexRecord
	ir.decode(b)
	if err := ir.check(r.super.IndexOffset); err != nil {
		r.err = errors.WithMessagef(err, "index record at offset %d", off)
		return IndexRecord{}, r.err
	}
	prevEnd := r.order.end
	if !r.order.next(ir.Record) {
		r.err = errors.Wrapf(ErrUnsorted, "index record at offset %d: %d+%d starts before the previous record's end %d",
			off, ir.Addr, ir.Blocks, prevEnd)
		return IndexRecord{}, r.err
	}
	return ir, nil
}

// indexBytes returns the 48 bytes of record i, loading a chunk if needed.
func (r *IndexedReader) indexBytes(i int) ([]byte, error) {
	if i < r.chunkFirst || i >= r.chunkFirst+len(r.chunk)/IndexRecordSize {
		n := min(indexChunkRecords, int(r.super.NRecords)-i)
		if cap(r.chunk) < n*IndexRecordSize {
			r.chunk = make([]byte, indexChunkRecords*IndexRecordSize)
		}
		r.chunk = r.chunk[:n*IndexRecordSize]
		off := int64(r.super.IndexOffset) + int64(i)*IndexRecordSize
		if got, err := r.r.ReadAt(r.chunk, off); got < len(r.chunk) {
			r.chunk = r.chunk[:0]
			return nil, readErr(eofIfNil(err), "index records", off, got, n*IndexRecordSize)
		}
		r.chunkFirst = i
	}
	lo := (i - r.chunkFirst) * IndexRecordSize
	return r.chunk[lo : lo+IndexRecordSize], nil
}

// readStored reads and verifies the stored image of a normal record.
func (r *IndexedReader) readStored(ir *IndexRecord) (Stored, error) {
	n := int(ir.DataSize)
	if cap(r.stored) < n {
		r.stored = make([]byte, n)
	}
	r.stored = r.stored[:n]
	r.imgOK = false // the cached image may alias stored
	if got, err := r.r.ReadAt(r.stored, int64(ir.DataOffset)); got < n {
		return Stored{}, readErr(eofIfNil(err), "image", int64(ir.DataOffset), got, n)
	}
	if got := checksum.Sum(r.stored, 0); got != ir.IOChecksum {
		return Stored{}, errors.Wrapf(ErrChecksum, "image at offset %d: stored %08x, computed %08x", ir.DataOffset, ir.IOChecksum, got)
	}
	return Stored{Codec: ir.Codec, Data: r.stored, Checksum: ir.IOChecksum}, nil
}

// image returns the decompressed image of a normal record, from the cache
// when the previous record used the same one.
func (r *IndexedReader) image(ir *IndexRecord) ([]byte, error) {
	key := imageKey{ir.DataOffset, ir.DataSize, ir.Codec, ir.OrigBlocks, ir.IOChecksum}
	if r.imgOK && r.imgKey == key {
		return r.img, nil
	}
	st, err := r.readStored(ir)
	if err != nil {
		return nil, err
	}
	img := st.Data
	if st.Codec != CodecNone {
		if img, err = Decompress(r.out, st.Data, st.Codec, int(ir.OrigBlocks)*LogicalBlockSize); err != nil {
			return nil, errors.WithMessagef(err, "image at offset %d", ir.DataOffset)
		}
		r.out = img
	}
	r.img, r.imgKey, r.imgOK = img, key, true
	return img, nil
}

// Image locates one image written by an IndexedWriter.
type Image struct {
	// Offset is the absolute file offset of the stored image.
	Offset uint64
	// Size is the stored size.
	Size uint32
	// Codec is the stored compression.
	Codec Codec
	// Checksum is checksum.Sum of the stored bytes.
	Checksum uint32
	// OrigBlocks is the uncompressed size in logical blocks.
	OrigBlocks uint32
}

// IndexedWriter writes an indexed wdiff file in two phases: first the data
// images (WriteImage), then the index records in address order
// (WriteIndex), then Close. Index records go straight to the output, so
// memory use does not depend on the file size.
type IndexedWriter struct {
	// MaxIOBlocks caps the size of index record pieces at the largest power
	// of two not above it; 0 means no cap. NewIndexedWriter sets it to
	// DefaultMaxIOBlocks.
	MaxIOBlocks uint32

	w        io.Writer
	c        Compression
	off      uint64
	phase    int // 0 images, 1 index, 2 closed
	indexOff uint64
	nrec     uint32
	nData    uint32
	nDataSet uint32
	hasNData bool
	order    orderCheck
	ibuf     []byte
	scratch  []byte
	err      error
}

// NewIndexedWriter writes the file header (type forced to indexed).
// Images are compressed with c on the calling goroutine; c.Workers is not
// used.
func NewIndexedWriter(w io.Writer, h FileHeader, c Compression) (*IndexedWriter, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	h.Type = TypeIndexed
	iw := &IndexedWriter{w: w, c: c, MaxIOBlocks: DefaultMaxIOBlocks}
	var hb [FileHeaderSize]byte
	h.encode(hb[:])
	if err := iw.write(hb[:]); err != nil {
		return nil, err
	}
	return iw, nil
}

// Offset returns the number of bytes written so far. walb-tools stores this
// value as the data_offset of non-normal records received at that moment.
func (w *IndexedWriter) Offset() uint64 { return w.off }

// SetNData overrides the n_data field of the index super. By default it is
// the number of images plus the number of non-normal WriteIndex calls,
// which is walb-tools' count of received IOs when each IO has one image.
func (w *IndexedWriter) SetNData(n uint32) { w.nDataSet, w.hasNData = n, true }

func (w *IndexedWriter) write(b []byte) error {
	n, err := w.w.Write(b)
	w.off += uint64(n)
	if err == nil && n != len(b) {
		err = io.ErrShortWrite
	}
	if err != nil {
		w.err = errors.Wrapf(err, "wdiff: writing at offset %d", w.off)
		return w.err
	}
	return nil
}

func (w *IndexedWriter) usable(phase int) error {
	if w.err != nil {
		return w.err
	}
	if w.phase > phase {
		if w.phase == 2 {
			return ErrClosed
		}
		return errors.Wrap(ErrClosed, "images cannot follow index records")
	}
	return nil
}

// WriteImage compresses data (a whole number of logical blocks) and appends
// it to the data area.
func (w *IndexedWriter) WriteImage(data []byte) (Image, error) {
	if err := w.usable(0); err != nil {
		return Image{}, err
	}
	if len(data) == 0 || len(data)%LogicalBlockSize != 0 || len(data)/LogicalBlockSize > MaxRecordBlocks {
		return Image{}, errors.Wrapf(ErrInvalid, "image of %d bytes", len(data))
	}
	stored, codec, err := Compress(w.scratch, data, w.c.Codec, w.c.Level)
	if err != nil {
		return Image{}, err
	}
	if codec != CodecNone {
		w.scratch = stored
	}
	return w.appendImage(Stored{Codec: codec, Data: stored, Checksum: checksum.Sum(stored, 0)}, uint32(len(data)/LogicalBlockSize))
}

// WriteStoredImage appends an image already in stored form, such as one
// compressed elsewhere or copied from another file. The checksum is
// verified.
func (w *IndexedWriter) WriteStoredImage(s Stored, origBlocks uint32) (Image, error) {
	if err := w.usable(0); err != nil {
		return Image{}, err
	}
	raw := uint64(origBlocks) * LogicalBlockSize
	if !s.Codec.Valid() {
		return Image{}, errors.Wrapf(ErrUnknownCodec, "code %d", s.Codec)
	}
	if origBlocks == 0 || origBlocks > MaxRecordBlocks || len(s.Data) == 0 || uint64(len(s.Data)) > raw ||
		(s.Codec == CodecNone && uint64(len(s.Data)) != raw) {
		return Image{}, errors.Wrapf(ErrInvalid, "stored %s image of %d bytes for %d blocks", s.Codec, len(s.Data), origBlocks)
	}
	if got := checksum.Sum(s.Data, 0); got != s.Checksum {
		return Image{}, errors.Wrapf(ErrChecksum, "stored image checksum %08x, given %08x", got, s.Checksum)
	}
	return w.appendImage(s, origBlocks)
}

func (w *IndexedWriter) appendImage(s Stored, origBlocks uint32) (Image, error) {
	img := Image{Offset: w.off, Size: uint32(len(s.Data)), Codec: s.Codec, Checksum: s.Checksum, OrigBlocks: origBlocks}
	if err := w.write(s.Data); err != nil {
		return Image{}, err
	}
	w.nData++
	return img, nil
}

// WriteIndex adds the index records for rec, whose data is blocks
// [ioOffset, ioOffset+rec.Blocks) of img. Records must come in ascending,
// non-overlapping order; the first call ends the image phase. The writer
// splits rec into power-of-two, naturally aligned pieces no larger than
// MaxIOBlocks allows, as walb-tools does. For a non-normal record only
// img.Offset is used (stored as data_offset; see Offset).
func (w *IndexedWriter) WriteIndex(rec Record, img Image, ioOffset uint32) error {
	if err := w.usable(1); err != nil {
		return err
	}
	if err := rec.validateWrite(); err != nil {
		return err
	}
	if err := w.beginIndex(); err != nil {
		return err
	}
	ir := IndexRecord{Record: rec, DataOffset: img.Offset, IOOffset: ioOffset}
	if rec.IsNormal() {
		if !img.Codec.Valid() || img.Size == 0 || img.OrigBlocks == 0 ||
			img.Offset < FileHeaderSize || img.Offset+uint64(img.Size) > w.indexOff {
			return errors.Wrapf(ErrInvalid, "record %d+%d: image %+v is not in the data area", rec.Addr, rec.Blocks, img)
		}
		if uint64(ioOffset)+uint64(rec.Blocks) > uint64(img.OrigBlocks) {
			return errors.Wrapf(ErrInvalid, "record %d+%d: io_offset %d beyond the image's %d blocks",
				rec.Addr, rec.Blocks, ioOffset, img.OrigBlocks)
		}
		ir.Codec, ir.DataSize, ir.OrigBlocks, ir.IOChecksum = img.Codec, img.Size, img.OrigBlocks, img.Checksum
	} else {
		if uint64(ioOffset)+uint64(rec.Blocks) > 0xffffffff {
			return errors.Wrapf(ErrInvalid, "record %d+%d: io_offset %d overflows", rec.Addr, rec.Blocks, ioOffset)
		}
	}
	prevEnd := w.order.end
	if !w.order.next(rec) {
		return errors.Wrapf(ErrUnsorted, "record %d+%d starts before the previous record's end %d", rec.Addr, rec.Blocks, prevEnd)
	}
	if !rec.IsNormal() {
		w.nData++
	}
	var err error
	SplitAligned(rec.Addr, rec.Blocks, w.MaxIOBlocks, func(addr uint64, blocks uint32) {
		if err != nil {
			return
		}
		piece := ir
		piece.Addr, piece.Blocks = addr, blocks
		piece.IOOffset = ioOffset + uint32(addr-rec.Addr)
		n := len(w.ibuf)
		w.ibuf = append(w.ibuf, zeroIndexRecord[:]...)
		piece.encode(w.ibuf[n:])
		w.nrec++
		if len(w.ibuf) >= 64<<10 {
			err = w.flushIndex()
		}
	})
	return err
}

func (w *IndexedWriter) beginIndex() error {
	if w.phase != 0 {
		return nil
	}
	w.phase = 1
	var pad [8]byte
	if err := w.write(pad[:(8-w.off%8)%8]); err != nil {
		return err
	}
	w.indexOff = w.off
	return nil
}

func (w *IndexedWriter) flushIndex() error {
	err := w.write(w.ibuf)
	w.ibuf = w.ibuf[:0]
	return err
}

// Close ends the image phase if needed, writes the remaining index records
// and the index super. It does not close the underlying writer.
func (w *IndexedWriter) Close() error {
	if w.phase == 2 {
		return w.err
	}
	if w.err != nil {
		w.phase = 2
		return w.err
	}
	if err := w.beginIndex(); err != nil {
		return err
	}
	w.phase = 2
	if err := w.flushIndex(); err != nil {
		return err
	}
	var sb [IndexSuperSize]byte
	nData := w.nData
	if w.hasNData {
		nData = w.nDataSet
	}
	IndexSuper{IndexOffset: w.indexOff, NRecords: w.nrec, NData: nData}.encode(sb[:])
	return w.write(sb[:])
}

var zeroIndexRecord [IndexRecordSize]byte

// SplitAligned calls fn for each piece of [addr, addr+blocks) when the
// range is cut the way walb-tools cuts indexed records: each piece is a
// power of two long, starts at a multiple of its length, and is as long as
// possible, but no longer than the largest power of two not above
// maxBlocks (0 = no limit).
func SplitAligned(addr uint64, blocks, maxBlocks uint32, fn func(addr uint64, blocks uint32)) {
	var limit uint32
	if maxBlocks > 0 {
		limit = 1 << (31 - bits.LeadingZeros32(maxBlocks))
	}
	for blocks > 0 {
		s := uint32(1) << 31
		if tz := bits.TrailingZeros64(addr); addr != 0 && tz < 31 {
			s = 1 << tz
		}
		if s > blocks {
			s = 1 << (31 - bits.LeadingZeros32(blocks))
		}
		if limit > 0 && s > limit {
			s = limit
		}
		fn(addr, s)
		addr += uint64(s)
		blocks -= s
	}
}
