package archive

import (
	"bufio"
	"context"
	"encoding/binary"
	"io"
	"os"
	"sort"
	"sync"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/checksum"
	"github.com/walb-go/walb/imagestore"
	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/wdiff"
)

// An overlay is the image of a volume at a snapshot read without copying
// the base: the base image is read in place and the diffs' records are laid
// over each read (walb-tools' virtual full scan). It is what openVirtual
// returns on a store that cannot reflink, where a clone would copy the
// whole base first.
//
// The diffs are grouped into layers exactly as apply groups them into
// passes (MaxOpen files each, all at once without MaxOpen): a pass of
// several diffs is merged with wdiff.Merge into one temporary sorted wdiff
// in the volume directory (later diffs win, as in the merged stream apply
// writes), a pass of one sorted diff is read directly. Reads lay the
// layers over the base in order, each record treated as wdiff.Apply treats
// it under the archive's discard mode, so the overlay reads exactly what a
// restore writes, passes included (with DiscardIgnore a discard in a later
// pass leaves an earlier pass's data visible, as it does in a restore).
//
// Index memory: wdiff.SortedReader does not tell where in the file a
// record's data is, so the overlay walks the pack headers itself with
// ReadAt (4 KiB per pack; the data is not read at open). Per layer it keeps
// 16 bytes per pack of up to 127 records: the records themselves stay on
// disk in the pack headers, which are re-read (and cached a few at a time)
// as reads reach them. A diff rewriting every 4 KiB block of a 1 TiB
// volume has 2^28 records, at least 2^28/127 packs: a 34 MiB index. Only
// diffs made of sub-4 KiB records can pass that, at most 16 bytes per 127
// records in any case, so no spill file is needed.
//
// Reads may run concurrently. The last few decoded pack headers and the
// last few decompressed records (up to 64 MiB, and always the last one)
// are cached, since a scan walks addresses in order with a few workers
// reading neighbouring ranges.

// overlayCacheSize is how many decoded pack headers and how many
// decompressed records an overlay keeps: one or two per concurrent
// reader of a scan.
const overlayCacheSize = 8

// overlayCacheBytes bounds the decompressed records kept, except that the
// last one is always kept (a record is at most wdiff.MaxRecordBlocks; WalB
// IOs are far smaller).
const overlayCacheBytes = 64 << 20

// overlay is an io.ReaderAt over a base image and layers of records.
type overlay struct {
	base    imagestore.Image
	size    int64
	discard DiscardMode
	layers  []*overlayLayer
	pinned  []meta.Diff // diffs read directly, pinned until close

	mu     sync.Mutex
	packs  lru[packKey, []packRec]
	blocks lru[dataKey, []byte]
}

// overlayLayer is one sorted wdiff file and the index of its packs.
type overlayLayer struct {
	name  string         // for errors
	f     *os.File       // the file, read with ReadAt only
	tmp   *meta.TempFile // a merged pass, removed on close; nil for a diff
	packs []packRef
}

// packRef locates one non-empty pack: the address of its first record and
// the file offset of its header.
type packRef struct {
	addr uint64
	off  int64
}

// packRec is a record of a decoded pack header: its range and kind, and
// for a normal record where its stored data is (absolute file offset).
type packRec struct {
	addr    uint64
	dataOff int64
	blocks  uint32
	size    uint32
	csum    uint32
	flags   wdiff.Flags
	codec   wdiff.Codec
}

func (r *packRec) end() uint64 { return r.addr + uint64(r.blocks) }

type packKey struct {
	layer int
	pack  int
}

type dataKey struct {
	layer int
	off   int64
}

// lru is a tiny most-recently-used list; n is a handful, so a linear scan
// beats a map. With weight set, the entries past the first are also
// evicted once their weights sum over overlayCacheBytes.
type lru[K comparable, V any] struct {
	keys   []K
	vals   []V
	weight func(V) int
}

func (c *lru[K, V]) get(k K) (V, bool) {
	for i, x := range c.keys {
		if x == k {
			v := c.vals[i]
			c.touch(i)
			return v, true
		}
	}
	var zero V
	return zero, false
}

// touch moves entry i to the front.
func (c *lru[K, V]) touch(i int) {
	k, v := c.keys[i], c.vals[i]
	copy(c.keys[1:i+1], c.keys[:i])
	copy(c.vals[1:i+1], c.vals[:i])
	c.keys[0], c.vals[0] = k, v
}

func (c *lru[K, V]) put(k K, v V) {
	for i, x := range c.keys {
		if x == k {
			c.vals[i] = v
			c.touch(i)
			return
		}
	}
	if len(c.keys) < overlayCacheSize {
		c.keys = append(c.keys, k)
		c.vals = append(c.vals, v)
	} else {
		c.keys[len(c.keys)-1], c.vals[len(c.vals)-1] = k, v
	}
	c.touch(len(c.keys) - 1)
	if c.weight == nil {
		return
	}
	total := 0
	for i, v := range c.vals {
		total += c.weight(v)
		if i > 0 && total > overlayCacheBytes {
			clear(c.keys[i:])
			clear(c.vals[i:])
			c.keys, c.vals = c.keys[:i], c.vals[:i]
			return
		}
	}
}

// openOverlay builds the overlay of ds over base (held open and locked by
// the caller, which hands both to the overlay on success). Diffs read
// directly are pinned until Close; the caller's pins cover the merges.
func (e *Engine) openOverlay(ctx context.Context, v *volume, base imagestore.Image, ds []meta.Diff) (_ *overlay, err error) {
	ov := &overlay{base: base, size: base.Size(), discard: e.cfg.Discard}
	ov.blocks.weight = func(b []byte) int { return len(b) }
	defer func() {
		if err != nil {
			_ = ov.closeLayers()
			v.unpin(ov.pinned)
		}
	}()
	per := e.cfg.MaxOpen
	if per <= 0 {
		per = len(ds)
	}
	for i := 0; i < len(ds); i += per {
		pass := ds[i:min(i+per, len(ds))]
		var l *overlayLayer
		if len(pass) == 1 {
			l, err = v.openSortedDiff(pass[0])
			if err != nil {
				return nil, err
			}
			if l != nil {
				v.pin(pass)
				ov.pinned = append(ov.pinned, pass...)
			}
		}
		if l == nil {
			if l, err = e.mergeLayer(ctx, v, pass); err != nil {
				return nil, err
			}
		}
		ov.layers = append(ov.layers, l)
		if err := l.index(ov.size); err != nil {
			return nil, errors.WithMessagef(err, "archive: volume %s: overlay of %s", v.name, l.name)
		}
	}
	return ov, nil
}

// openSortedDiff opens d's file for direct reading, or returns nil when
// it is indexed (and must be merged into sorted form first).
func (v *volume) openSortedDiff(d meta.Diff) (*overlayLayer, error) {
	v.mu.Lock()
	name, err := v.diffFileNameLocked(d)
	var f *os.File
	if err == nil {
		f, err = os.Open(v.path(name))
	}
	v.mu.Unlock()
	if err != nil {
		return nil, errors.Wrapf(err, "archive: volume %s: open %s", v.name, d)
	}
	var b [wdiff.FileHeaderSize]byte
	if n, err := f.ReadAt(b[:], 0); err != nil {
		_ = f.Close()
		return nil, errors.Wrapf(wdiff.ErrTruncated, "archive: volume %s: %s: file header: %d bytes: %v", v.name, name, n, err)
	}
	h, err := wdiff.ParseFileHeader(b[:])
	if err != nil {
		_ = f.Close()
		return nil, errors.WithMessagef(err, "archive: volume %s: %s", v.name, name)
	}
	if h.Type != wdiff.TypeSorted {
		_ = f.Close()
		return nil, nil
	}
	return &overlayLayer{name: name, f: f}, nil
}

// mergeLayer merges ds into a temporary sorted wdiff in the volume
// directory (a crash leaves it to the start's CleanTemps).
func (e *Engine) mergeLayer(ctx context.Context, v *volume, ds []meta.Diff) (*overlayLayer, error) {
	readers, closeAll, err := v.openDiffs(ds)
	if err != nil {
		return nil, err
	}
	defer closeAll()
	tmp, err := meta.CreateTemp(v.dir, 0o600)
	if err != nil {
		return nil, errors.Wrapf(err, "archive: volume %s: overlay", v.name)
	}
	bw := bufio.NewWriterSize(tmp.File, 1<<20)
	_, err = wdiff.Merge(ctx, readers, bw, wdiff.MergeOptions{Compression: e.cfg.mergeCompression()})
	if err == nil {
		err = bw.Flush()
	}
	if err != nil {
		_ = tmp.Abort()
		return nil, errors.Wrapf(err, "archive: volume %s: overlay: merge %d diffs %s..%s", v.name, len(ds), ds[0], ds[len(ds)-1])
	}
	return &overlayLayer{name: "merged " + ds[0].String() + ".." + ds[len(ds)-1].String(), f: tmp.File, tmp: tmp}, nil
}

func (l *overlayLayer) close() error {
	if l.tmp != nil {
		return l.tmp.Abort()
	}
	return l.f.Close()
}

// close removes the merged files, closes the diffs and the base and
// unpins the diffs. The caller releases baseMu.
func (ov *overlay) close(v *volume) error {
	err := ov.closeLayers()
	if cerr := ov.base.Close(); err == nil {
		err = cerr
	}
	v.unpin(ov.pinned)
	ov.pinned = nil
	return err
}

func (ov *overlay) closeLayers() error {
	var first error
	for _, l := range ov.layers {
		if err := l.close(); err != nil && first == nil {
			first = err
		}
	}
	ov.layers = nil
	return first
}

// fileSize returns the layer's file size.
func (l *overlayLayer) fileSize() (int64, error) {
	fi, err := l.f.Stat()
	if err != nil {
		return 0, errors.Wrap(err, "archive: overlay: stat")
	}
	return fi.Size(), nil
}

// index walks the pack headers, validating them as wdiff.SortedReader
// does (the data checksums are verified when a read decodes a record),
// and checks every record against the image size as wdiff.Apply does.
func (l *overlayLayer) index(imageSize int64) error {
	fsize, err := l.fileSize()
	if err != nil {
		return err
	}
	var b [wdiff.FileHeaderSize]byte
	if n, err := l.f.ReadAt(b[:], 0); n < len(b) {
		return readAtErr(err, "file header", 0, n, len(b))
	}
	h, err := wdiff.ParseFileHeader(b[:])
	if err != nil {
		return err
	}
	if h.Type != wdiff.TypeSorted {
		return errors.Wrapf(wdiff.ErrType, "file header: %s file, want sorted", h.Type)
	}
	var prevEnd uint64
	var recs []packRec
	for off := int64(wdiff.FileHeaderSize); ; {
		if off == fsize {
			return nil // ends where a pack header would start
		}
		var end bool
		var total int64
		recs, total, end, err = l.readPack(off, recs[:0])
		if err != nil {
			return err
		}
		if end {
			return nil
		}
		if off+wdiff.PackHeaderSize+total > fsize {
			return errors.Wrapf(wdiff.ErrTruncated, "pack at offset %d: %d data bytes, the file ends at %d", off, total, fsize)
		}
		for i := range recs {
			r := &recs[i]
			if r.addr < prevEnd {
				return errors.Wrapf(wdiff.ErrUnsorted, "pack at offset %d: %d+%d starts before the previous record's end %d",
					off, r.addr, r.blocks, prevEnd)
			}
			prevEnd = r.end()
			if imageSize > 0 && prevEnd > uint64(imageSize)/wdiff.LogicalBlockSize {
				return errors.Wrapf(wdiff.ErrInvalid, "record [%d, +%d) LB beyond the image size %d LB",
					r.addr, r.blocks, imageSize/wdiff.LogicalBlockSize)
			}
		}
		if len(recs) > 0 {
			l.packs = append(l.packs, packRef{addr: recs[0].addr, off: off})
		}
		off += wdiff.PackHeaderSize + total
	}
}

func readAtErr(err error, what string, off int64, got, want int) error {
	if err == nil || err == io.EOF {
		return errors.Wrapf(wdiff.ErrTruncated, "%s at offset %d: %d of %d bytes", what, off, got, want)
	}
	return errors.Wrapf(err, "archive: overlay: reading %s at offset %d", what, off)
}

// readPack reads and decodes the pack header at off, appending its records
// to recs with absolute data offsets. end reports the end pack.
func (l *overlayLayer) readPack(off int64, recs []packRec) (_ []packRec, total int64, end bool, err error) {
	var b [wdiff.PackHeaderSize]byte
	if n, err := l.f.ReadAt(b[:], off); n < len(b) {
		return nil, 0, false, readAtErr(err, "pack header", off, n, len(b))
	}
	if !checksum.Valid(b[:], 0) {
		return nil, 0, false, errors.Wrapf(wdiff.ErrChecksum, "pack header at offset %d", off)
	}
	nrec := int(binary.LittleEndian.Uint16(b[4:]))
	t := binary.LittleEndian.Uint32(b[8:])
	if b[6]&0x01 != 0 { // END
		if nrec != 0 || t != 0 {
			return nil, 0, false, errors.Wrapf(wdiff.ErrCorrupt, "end pack at offset %d has %d records and %d data bytes", off, nrec, t)
		}
		return recs, 0, true, nil
	}
	if nrec > wdiff.MaxPackRecords {
		return nil, 0, false, errors.Wrapf(wdiff.ErrCorrupt, "pack header at offset %d: %d records", off, nrec)
	}
	if t > wdiff.MaxPackDataSize && nrec != 1 {
		return nil, 0, false, errors.Wrapf(wdiff.ErrCorrupt, "pack header at offset %d: %d data bytes in %d records", off, t, nrec)
	}
	dataStart := off + wdiff.PackHeaderSize
	var sum uint64
	for i := range nrec {
		p := b[16+wdiff.SortedRecordSize*i:]
		r := packRec{
			addr:   binary.LittleEndian.Uint64(p[0:]),
			blocks: binary.LittleEndian.Uint32(p[8:]),
			flags:  wdiff.Flags(p[12]) & (wdiff.FlagAllZero | wdiff.FlagDiscard),
			codec:  wdiff.Codec(p[13]),
			size:   binary.LittleEndian.Uint32(p[20:]),
			csum:   binary.LittleEndian.Uint32(p[24:]),
		}
		dataOff := binary.LittleEndian.Uint32(p[16:])
		recOff := off + 16 + int64(wdiff.SortedRecordSize*i)
		if err := r.check(); err != nil {
			return nil, 0, false, errors.WithMessagef(err, "record at offset %d", recOff)
		}
		if uint64(dataOff) != sum {
			return nil, 0, false, errors.Wrapf(wdiff.ErrCorrupt, "record at offset %d: data_offset %d, want %d", recOff, dataOff, sum)
		}
		r.dataOff = dataStart + int64(dataOff)
		sum += uint64(r.size)
		if r.blocks == 0 {
			continue // an empty non-normal record changes nothing
		}
		recs = append(recs, r)
	}
	if sum != uint64(t) {
		return nil, 0, false, errors.Wrapf(wdiff.ErrCorrupt, "pack header at offset %d: total_size %d, records hold %d", off, t, sum)
	}
	return recs, int64(t), false, nil
}

// check applies wdiff's record rules.
func (r *packRec) check() error {
	if r.flags == wdiff.FlagAllZero|wdiff.FlagDiscard {
		return errors.Wrap(wdiff.ErrCorrupt, "allzero and discard flags are exclusive")
	}
	if r.end() < r.addr {
		return errors.Wrapf(wdiff.ErrCorrupt, "range %d+%d overflows", r.addr, r.blocks)
	}
	if r.flags != 0 {
		if r.size != 0 {
			return errors.Wrapf(wdiff.ErrCorrupt, "non-normal record with %d data bytes", r.size)
		}
		return nil
	}
	if !r.codec.Valid() {
		return errors.Wrapf(wdiff.ErrUnknownCodec, "compression type %d", r.codec)
	}
	if r.blocks == 0 || r.blocks > wdiff.MaxRecordBlocks {
		return errors.Wrapf(wdiff.ErrCorrupt, "normal record with io_blocks %d", r.blocks)
	}
	raw := uint64(r.blocks) * wdiff.LogicalBlockSize
	if r.size == 0 || uint64(r.size) > raw || (r.codec == wdiff.CodecNone && uint64(r.size) != raw) {
		return errors.Wrapf(wdiff.ErrCorrupt, "data_size %d for %d blocks of %s data", r.size, r.blocks, r.codec)
	}
	return nil
}

// ReadAt reads the base, then lays every layer's records over the bytes
// read. Reads past the size return io.EOF.
func (ov *overlay) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.Wrapf(ErrBadArgs, "archive: overlay read at offset %d", off)
	}
	if off >= ov.size {
		return 0, io.EOF
	}
	var eof error
	if int64(len(p)) > ov.size-off {
		p = p[:ov.size-off]
		eof = io.EOF
	}
	if n, err := ov.base.ReadAt(p, off); n < len(p) {
		if err == nil || err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
		return n, errors.Wrapf(err, "archive: overlay: read the base at %d", off)
	}
	for i := range ov.layers {
		if err := ov.lay(i, p, off); err != nil {
			return 0, err
		}
	}
	return len(p), eof
}

// lay applies layer i's records overlapping [off, off+len(p)) to p.
func (ov *overlay) lay(i int, p []byte, off int64) error {
	l := ov.layers[i]
	lo := uint64(off) / wdiff.LogicalBlockSize
	hi := (uint64(off) + uint64(len(p)) + wdiff.LogicalBlockSize - 1) / wdiff.LogicalBlockSize
	// The last pack starting at or before lo may hold a record covering
	// it; later packs matter while they start before hi.
	j := sort.Search(len(l.packs), func(k int) bool { return l.packs[k].addr > lo })
	if j > 0 {
		j--
	}
	for ; j < len(l.packs) && l.packs[j].addr < hi; j++ {
		recs, err := ov.pack(i, j)
		if err != nil {
			return err
		}
		k := sort.Search(len(recs), func(k int) bool { return recs[k].end() > lo })
		for ; k < len(recs) && recs[k].addr < hi; k++ {
			if err := ov.layRecord(i, &recs[k], p, off); err != nil {
				return err
			}
		}
	}
	return nil
}

// layRecord copies r's effect on [off, off+len(p)) into p, as wdiff.Apply
// under the discard mode would write it: data, zeros, or (a discard
// ignored) nothing. A passed-down discard punches the image, which reads
// as zeros afterwards.
func (ov *overlay) layRecord(i int, r *packRec, p []byte, off int64) error {
	ra := int64(r.addr) * wdiff.LogicalBlockSize
	rb := int64(r.end()) * wdiff.LogicalBlockSize
	x, y := max(ra, off), min(rb, off+int64(len(p)))
	if x >= y {
		return nil
	}
	dst := p[x-off : y-off]
	switch {
	case r.flags == 0:
		data, err := ov.data(i, r)
		if err != nil {
			return err
		}
		copy(dst, data[x-ra:y-ra])
	case r.flags == wdiff.FlagAllZero, ov.discard != DiscardIgnore:
		clear(dst)
	}
	return nil
}

// pack returns the decoded records of pack j of layer i.
func (ov *overlay) pack(i, j int) ([]packRec, error) {
	k := packKey{i, j}
	ov.mu.Lock()
	recs, ok := ov.packs.get(k)
	ov.mu.Unlock()
	if ok {
		return recs, nil
	}
	l := ov.layers[i]
	recs, _, _, err := l.readPack(l.packs[j].off, nil)
	if err != nil {
		return nil, errors.WithMessagef(err, "archive: overlay of %s", l.name)
	}
	ov.mu.Lock()
	ov.packs.put(k, recs)
	ov.mu.Unlock()
	return recs, nil
}

// data returns the decompressed data of normal record r of layer i,
// verifying the stored checksum. Cached slices are never written.
func (ov *overlay) data(i int, r *packRec) ([]byte, error) {
	k := dataKey{i, r.dataOff}
	ov.mu.Lock()
	b, ok := ov.blocks.get(k)
	ov.mu.Unlock()
	if ok {
		return b, nil
	}
	l := ov.layers[i]
	st := make([]byte, r.size)
	if n, err := l.f.ReadAt(st, r.dataOff); n < len(st) {
		return nil, errors.WithMessagef(readAtErr(err, "record data", r.dataOff, n, len(st)), "archive: overlay of %s", l.name)
	}
	if got := checksum.Sum(st, 0); got != r.csum {
		return nil, errors.Wrapf(wdiff.ErrChecksum, "archive: overlay of %s: record %d+%d data at offset %d: stored %08x, computed %08x",
			l.name, r.addr, r.blocks, r.dataOff, r.csum, got)
	}
	b = st
	if r.codec != wdiff.CodecNone {
		var err error
		b, err = wdiff.Decompress(nil, st, r.codec, int(r.blocks)*wdiff.LogicalBlockSize)
		if err != nil {
			return nil, errors.WithMessagef(err, "archive: overlay of %s: record %d+%d data at offset %d", l.name, r.addr, r.blocks, r.dataOff)
		}
	}
	ov.mu.Lock()
	ov.blocks.put(k, b)
	ov.mu.Unlock()
	return b, nil
}
