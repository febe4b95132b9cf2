package wlog

import (
	"io"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/checksum"
)

// Reader reads a wlog file as a stream of logpacks and records. It validates
// every header, record and IO checksum. Memory use is bounded by one header
// block and the largest single record (32 MiB). Errors are sticky.
type Reader struct {
	r       io.Reader
	hdr     FileHeader
	off     int64 // file offset of the next unread byte
	lsid    uint64
	pack    PackHeader
	inPack  bool
	next    int // index of the next record of the current pack
	block   []byte
	buf     []byte
	err     error
	nPacks  uint64
	endSeen bool
	dataOff int64 // file offset of the last record's data
}

// NewReader reads and validates the file header from r.
func NewReader(r io.Reader) (*Reader, error) {
	b := make([]byte, FileHeaderSize)
	if n, err := io.ReadFull(r, b); err != nil {
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return nil, errors.Wrapf(ErrTruncated, "wlog header: %d of %d bytes", n, FileHeaderSize)
		}
		return nil, errors.Wrap(err, "wlog: read header")
	}
	h, err := ParseFileHeader(b)
	if err != nil {
		return nil, err
	}
	return &Reader{r: r, hdr: h, off: FileHeaderSize, lsid: h.BeginLsid, block: make([]byte, h.PBS)}, nil
}

// Header returns the file header.
func (r *Reader) Header() FileHeader { return r.hdr }

// EndLsid returns the lsid just after the last pack read so far; after the
// end of the file, the real end of the log.
func (r *Reader) EndLsid() uint64 { return r.lsid }

// DataOffset returns the file offset (from the start of the stream) of the
// data of the last record NextRecord returned, so a caller holding the file
// can read it again later with ReadAt.
func (r *Reader) DataOffset() int64 { return r.dataOff }

// NumPacks returns the packs read so far.
func (r *Reader) NumPacks() uint64 { return r.nPacks }

func (r *Reader) fail(err error) error {
	r.err = err
	return err
}

func (r *Reader) readFull(b []byte, what string) error {
	n, err := io.ReadFull(r.r, b)
	r.off += int64(n)
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return errors.Wrapf(ErrTruncated, "%s at lsid %d, offset %d: %d of %d bytes",
			what, r.lsid, r.off-int64(n), n, len(b))
	}
	return errors.Wrapf(err, "wlog: read %s at offset %d", what, r.off-int64(n))
}

// NextPack skips whatever is left of the current pack, then reads and
// validates the next logpack header. It returns io.EOF at the end of the log.
// The returned header is valid until the next call.
func (r *Reader) NextPack() (*PackHeader, error) {
	if r.err != nil {
		return nil, r.err
	}
	for r.inPack {
		if _, _, err := r.NextRecord(); err != nil && err != io.EOF {
			return nil, err
		}
	}
	if r.endSeen {
		return nil, io.EOF
	}
	start := r.off
	n, err := io.ReadFull(r.r, r.block)
	r.off += int64(n)
	switch {
	case err == io.EOF:
		r.endSeen = true
		return nil, io.EOF
	case err == io.ErrUnexpectedEOF:
		return nil, r.fail(errors.Wrapf(ErrTruncated, "logpack header at lsid %d, offset %d: %d of %d bytes",
			r.lsid, start, n, len(r.block)))
	case err != nil:
		return nil, r.fail(errors.Wrapf(err, "wlog: read logpack header at offset %d", start))
	}
	if IsEndBlock(r.block) {
		r.endSeen = true
		return nil, io.EOF
	}
	k, err := r.pack.parse(r.block, r.hdr.Salt)
	if err != nil {
		return nil, r.fail(errors.Wrapf(err, "logpack at lsid %d, offset %d", r.lsid, start))
	}
	if k == kindEnd {
		return nil, r.fail(errors.Wrapf(ErrCorrupt, "logpack at lsid %d, offset %d: empty header that is not an end block", r.lsid, start))
	}
	if r.pack.LogpackLsid != r.lsid {
		return nil, r.fail(errors.Wrapf(ErrCorrupt, "logpack at offset %d: lsid %d, expected %d",
			start, r.pack.LogpackLsid, r.lsid))
	}
	r.inPack = true
	r.next = 0
	r.nPacks++
	return &r.pack, nil
}

// NextRecord returns the next record of the current pack and, for a normal
// record, its io_size*512 bytes of data (checksum verified; valid until the
// next call). Padding and discard records come with nil data. It returns
// io.EOF after the last record of the pack.
func (r *Reader) NextRecord() (*Record, []byte, error) {
	if r.err != nil {
		return nil, nil, r.err
	}
	if !r.inPack {
		return nil, nil, io.EOF
	}
	if r.next == len(r.pack.Records) {
		r.inPack = false
		r.lsid = r.pack.NextLsid()
		return nil, nil, io.EOF
	}
	rec := &r.pack.Records[r.next]
	r.next++
	if !rec.HasData() {
		return rec, nil, nil
	}
	size := int(rec.DataPBs(r.hdr.PBS)) * int(r.hdr.PBS)
	if cap(r.buf) < size {
		r.buf = make([]byte, size)
	}
	b := r.buf[:size]
	start := r.off
	if err := r.readFull(b, "logpack data"); err != nil {
		return nil, nil, r.fail(err)
	}
	r.dataOff = start
	if rec.IsPadding() {
		return rec, nil, nil
	}
	data := b[:int(rec.IOSize)*LogicalBlockSize]
	if checksum.Sum(data, r.hdr.Salt) != rec.Checksum {
		return nil, nil, r.fail(errors.Wrapf(ErrChecksum, "io data of record %d (lsid %d, address %d, %d LB) in logpack lsid %d, offset %d",
			r.next-1, rec.Lsid, rec.Offset, rec.IOSize, r.pack.LogpackLsid, start))
	}
	return rec, data, nil
}

// ReadPackData reads all data blocks of the current pack into dst (grown as
// needed) and returns them, verifying each normal record's checksum. It is
// the raw form used to copy packs without looking at records; call it right
// after NextPack.
func (r *Reader) ReadPackData(dst []byte) ([]byte, error) {
	if r.err != nil {
		return nil, r.err
	}
	if !r.inPack || r.next != 0 {
		return nil, errors.Wrap(ErrInvalid, "ReadPackData must follow NextPack")
	}
	size := r.pack.DataSize()
	if cap(dst) < size {
		dst = make([]byte, size)
	}
	dst = dst[:size]
	start := r.off
	if err := r.readFull(dst, "logpack data"); err != nil {
		return nil, r.fail(err)
	}
	if err := VerifyPackData(&r.pack, dst, r.hdr.Salt); err != nil {
		return nil, r.fail(errors.Wrapf(err, "offset %d", start))
	}
	r.inPack = false
	r.lsid = r.pack.NextLsid()
	return dst, nil
}

// VerifyPackData checks the IO checksum of every normal record of h against
// data, the pack's data blocks. It returns the index of the first bad record
// in the error.
func VerifyPackData(h *PackHeader, data []byte, salt uint32) error {
	if len(data) != h.DataSize() {
		return errors.Wrapf(ErrCorrupt, "logpack lsid %d: %d data bytes, want %d", h.LogpackLsid, len(data), h.DataSize())
	}
	_, err := FirstBadRecord(h, data, salt)
	return err
}

// FirstBadRecord returns the index of the first normal record whose data does
// not match its checksum (and an ErrChecksum naming it), or len(h.Records).
func FirstBadRecord(h *PackHeader, data []byte, salt uint32) (int, error) {
	pbs := int(h.PBS)
	for i := range h.Records {
		rec := &h.Records[i]
		if !rec.IsNormal() {
			continue
		}
		off := (int(rec.LsidLocal) - 1) * pbs
		end := off + int(rec.IOSize)*LogicalBlockSize
		if end > len(data) || checksum.Sum(data[off:end], salt) != rec.Checksum {
			return i, errors.Wrapf(ErrChecksum, "io data of record %d (lsid %d, address %d, %d LB) in logpack lsid %d",
				i, rec.Lsid, rec.Offset, rec.IOSize, h.LogpackLsid)
		}
	}
	return len(h.Records), nil
}
