package walb

import (
	"bufio"
	"context"
	"io"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/wlog"
)

// ring addresses the ring buffer of a log device.
type ring struct {
	st   Storage
	pbs  uint32
	off  uint64 // first PB of the ring
	size uint64 // PBs
}

func newRing(st Storage, s *Super) ring {
	return ring{st: st, pbs: s.PBS, off: s.RingBufferOffset(), size: s.RingBufferSize}
}

// offset returns the byte offset of the PB holding lsid.
func (r *ring) offset(lsid uint64) int64 {
	return int64(r.off+lsid%r.size) * int64(r.pbs)
}

// read fills b (a whole number of PBs) from lsid on, wrapping at the ring end.
func (r *ring) read(lsid uint64, b []byte) error {
	pbs := uint64(r.pbs)
	for len(b) > 0 {
		n := min(uint64(len(b))/pbs, r.size-lsid%r.size)
		if _, err := r.st.ReadAt(b[:n*pbs], r.offset(lsid)); err != nil {
			return errors.Wrapf(err, "walb: read log at lsid %d", lsid)
		}
		b = b[n*pbs:]
		lsid += n
	}
	return nil
}

// packHeaderAt reads the PB at lsid and returns the logpack header it holds,
// or nil and the reason when it is not a valid header for lsid (§5.1 items
// 1-4; a stale header from an earlier lap fails the lsid check).
func (r *ring) packHeaderAt(lsid uint64, salt uint32, buf []byte) (*wlog.PackHeader, error, error) {
	if err := r.read(lsid, buf); err != nil {
		return nil, nil, err
	}
	h, err := wlog.ParsePackHeader(buf, salt)
	if err != nil {
		return nil, err, nil
	}
	if h.LogpackLsid != lsid {
		return nil, errors.Errorf("logpack lsid %d where %d was expected", h.LogpackLsid, lsid), nil
	}
	return h, nil, nil
}

// readPack reads the logpack at lsid and its data blocks (padding included)
// into *data, then checks each normal record's IO checksum. A pack whose
// record i is damaged is truncated to records [0, i) (truncated = true); if
// even record 0 is damaged, or the header is invalid, h is nil and why says
// why. err reports IO errors only.
func (r *ring) readPack(lsid uint64, salt uint32, hbuf []byte, data *[]byte) (h *wlog.PackHeader, truncated bool, why, err error) {
	h, why, err = r.packHeaderAt(lsid, salt, hbuf)
	if h == nil {
		return nil, false, why, err
	}
	if uint64(h.TotalIOSize)+1 > r.size {
		return nil, false, errors.Errorf("logpack lsid %d: %d data PBs do not fit in the ring", lsid, h.TotalIOSize), nil
	}
	n := h.DataSize()
	if cap(*data) < n {
		*data = make([]byte, n)
	}
	*data = (*data)[:n]
	if err := r.read(lsid+1, *data); err != nil {
		return nil, false, nil, err
	}
	bad, why := wlog.FirstBadRecord(h, *data, salt)
	if bad == len(h.Records) {
		return h, false, nil, nil
	}
	if bad == 0 {
		return nil, false, why, nil
	}
	h.Truncate(bad)
	*data = (*data)[:h.DataSize()]
	return h, true, why, nil
}

// logSource tells a PackReader how far it may read and whether what it read
// is still intact.
type logSource interface {
	// limit returns the lsid the reader must stop before.
	limit() (uint64, error)
	// verify reports an error if the log in [begin, end) may have been
	// overwritten or reset while it was read.
	verify(begin, end uint64) error
	// strict reports whether an invalid or truncated pack below the limit
	// is corruption (a running device) rather than the end of the log (an
	// image, read like wlog-cat).
	strict() bool
}

// PackReader iterates over the logpacks of a log device, validating each
// one (formats.md §5.1). Memory use is one pack (at most 65535 PBs).
// Errors are sticky.
type PackReader struct {
	ring   ring
	salt   uint32
	src    logSource
	lsid   uint64
	end    uint64
	hbuf   []byte
	data   []byte
	nPacks uint64
	done   bool
	err    error
}

func newPackReader(rg ring, salt uint32, src logSource, begin, end uint64) *PackReader {
	return &PackReader{ring: rg, salt: salt, src: src, lsid: begin, end: end, hbuf: make([]byte, rg.pbs)}
}

// Lsid returns the lsid of the next pack: after the last pack, the real end
// of the log read.
func (r *PackReader) Lsid() uint64 { return r.lsid }

// NumPacks returns how many packs Next has returned.
func (r *PackReader) NumPacks() uint64 { return r.nPacks }

// Next returns the next logpack and its data blocks (TotalIOSize PBs,
// padding blocks included as they are on the ring), valid until the next
// call. It returns io.EOF at the end. Packs starting before the requested
// end are returned whole, as wlog-cat does. A pack truncated at a damaged
// record (log images only) is returned in truncated form and ends the log.
func (r *PackReader) Next(ctx context.Context) (*wlog.PackHeader, []byte, error) {
	if r.err != nil {
		return nil, nil, r.err
	}
	if r.done {
		return nil, nil, io.EOF
	}
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	lim, err := r.src.limit()
	if err != nil {
		r.err = err
		return nil, nil, err
	}
	if r.lsid >= min(r.end, lim) {
		r.done = true
		return nil, nil, io.EOF
	}
	h, truncated, why, err := r.ring.readPack(r.lsid, r.salt, r.hbuf, &r.data)
	if err != nil {
		r.err = err
		return nil, nil, err
	}
	next := r.lsid + 1
	if h != nil {
		next = h.NextLsid()
	}
	if err := r.src.verify(r.lsid, next); err != nil {
		r.err = err
		return nil, nil, err
	}
	if h == nil || truncated {
		if r.src.strict() {
			r.err = errors.Wrapf(ErrCorrupt, "log at lsid %d (below the permanent lsid %d): %v", r.lsid, lim, why)
			return nil, nil, r.err
		}
		r.done = true
		if h == nil {
			return nil, nil, io.EOF
		}
	}
	r.lsid = h.NextLsid()
	r.nPacks++
	return h, r.data, nil
}

// writeLog copies the packs of pr into a wlog file with header hdr on w and
// returns the real end lsid.
func writeLog(ctx context.Context, pr *PackReader, hdr wlog.FileHeader, w io.Writer) (uint64, error) {
	bw := bufio.NewWriterSize(w, 1<<20)
	ww, err := wlog.NewWriter(bw, hdr)
	if err != nil {
		return pr.Lsid(), err
	}
	for {
		h, data, err := pr.Next(ctx)
		if err == io.EOF {
			break
		}
		if err != nil {
			return pr.Lsid(), err
		}
		if err := ww.WritePack(h, data); err != nil {
			return pr.Lsid(), err
		}
	}
	if err := ww.Close(); err != nil {
		return pr.Lsid(), err
	}
	return pr.Lsid(), errors.Wrap(bw.Flush(), "walb: write wlog")
}

// LogDevice is a log device image opened read-only, not as a running
// device: the equivalent of walb-tools' wldev-show and wlog-cat.
type LogDevice struct {
	st    Storage
	super Super
	ring  ring
}

// OpenLogDevice opens the log device (image file or block device) at path
// read-only. pbs 0 takes the block size from the block device or, for a
// plain file, from the super sector; walb-tools assumes 512 for files, so
// pbs 4096 images only worked through a 4096-byte loop device there.
func OpenLogDevice(path string, pbs uint32) (*LogDevice, error) {
	st, err := OpenFile(path, true)
	if err != nil {
		return nil, err
	}
	if pbs == 0 {
		pbs = st.PhysicalBlockSize()
	}
	l, err := NewLogDevice(st, pbs)
	if err != nil {
		st.Close()
		return nil, errors.WithMessage(err, path)
	}
	return l, nil
}

// NewLogDevice reads the super sector of st (pbs 0: from the super sector)
// and returns a read-only view of the log. The LogDevice owns st.
func NewLogDevice(st Storage, pbs uint32) (*LogDevice, error) {
	s, err := ReadSuper(st, pbs)
	if err != nil {
		return nil, err
	}
	size, err := st.Size()
	if err != nil {
		return nil, err
	}
	if size < s.MinLogDeviceSize() {
		return nil, errors.Wrapf(ErrCorrupt, "log device of %d bytes is smaller than its layout (%d bytes)", size, s.MinLogDeviceSize())
	}
	return &LogDevice{st: st, super: *s, ring: newRing(st, s)}, nil
}

// Super returns the super sector.
func (l *LogDevice) Super() Super { return l.super }

type imageSource struct{ bound uint64 }

func (s imageSource) limit() (uint64, error) { return s.bound, nil }
func (imageSource) verify(_, _ uint64) error { return nil }
func (imageSource) strict() bool             { return false }

// NewPackReader returns a reader of the packs in [begin, end). As wlog-cat
// does, begin is raised to the oldest lsid, and the log ends at the first
// invalid pack.
func (l *LogDevice) NewPackReader(begin, end uint64) (*PackReader, error) {
	begin = max(begin, l.super.OldestLsid)
	if begin >= end {
		return nil, errors.Wrapf(ErrInvalid, "lsid range [%d, %d)", begin, end)
	}
	bound := begin + l.super.RingBufferSize
	if bound < begin {
		bound = wlog.MaxLsid
	}
	return newPackReader(l.ring, l.super.Salt, imageSource{bound: bound}, begin, end), nil
}

// ReadLog writes the log in [begin, end) as a wlog file to w, like wlog-cat:
// the file header carries the requested end, begin is raised to the oldest
// lsid, and the log ends at the first invalid pack (a pack damaged after its
// first record is written in truncated form). It returns the real end lsid.
func (l *LogDevice) ReadLog(ctx context.Context, begin, end uint64, w io.Writer) (uint64, error) {
	pr, err := l.NewPackReader(begin, end)
	if err != nil {
		return begin, err
	}
	hdr := wlog.FileHeader{Salt: l.super.Salt, PBS: l.super.PBS, UUID: l.super.UUID, BeginLsid: pr.Lsid(), EndLsid: end}
	return writeLog(ctx, pr, hdr, w)
}

// Close closes the underlying storage.
func (l *LogDevice) Close() error { return l.st.Close() }
