package wdiff

import (
	"encoding/binary"
	"io"
	"sync"

	"github.com/pkg/errors"
	"github.com/walb-go/walb/checksum"
)

// SortedWriter writes a sorted wdiff file. Records must come in ascending,
// non-overlapping order. With Compression.Workers > 1 the data is compressed
// by that many goroutines while packs are assembled and written in order by
// another; at most a few packs' worth of data is in flight. Close must be
// called to finish the file and stop the goroutines.
type SortedWriter struct {
	c       Compression
	order   orderCheck
	err     error // sticky; set by the caller's goroutine
	closed  bool
	pk      packer
	scratch []byte // compression output in synchronous mode

	// Pipeline, used when c.Workers > 1.
	async   bool
	cur     *wbatch
	free    chan *wbatch
	work    chan *wbatch
	queue   chan *wbatch
	done    chan struct{}
	workers sync.WaitGroup
	mu      sync.Mutex
	aerr    error // first error of a pipeline goroutine
}

// NewSortedWriter writes the file header (type forced to sorted) and returns
// a writer compressing with c.
func NewSortedWriter(w io.Writer, h FileHeader, c Compression) (*SortedWriter, error) {
	if err := c.Validate(); err != nil {
		return nil, err
	}
	h.Type = TypeSorted
	sw := &SortedWriter{c: c, pk: newPacker(w)}
	var hb [FileHeaderSize]byte
	h.encode(hb[:])
	if err := sw.pk.write(hb[:]); err != nil {
		return nil, err
	}
	if n := c.workers(); n > 1 && c.Codec != CodecNone {
		sw.startPipeline(n)
	}
	return sw, nil
}

// Write appends one record. For a normal record, Data must hold exactly
// Blocks*512 bytes; it is copied or compressed before Write returns.
func (w *SortedWriter) Write(in IO) error {
	if err := w.usable(); err != nil {
		return err
	}
	if err := in.validateWrite(); err != nil {
		return err
	}
	if in.IsNormal() && len(in.Data) != in.Size() {
		return errors.Wrapf(ErrInvalid, "record %d+%d: %d data bytes, want %d", in.Addr, in.Blocks, len(in.Data), in.Size())
	}
	if err := w.checkOrder(in.Record); err != nil {
		return err
	}
	if !in.IsNormal() {
		return w.add(in.Record, CodecNone, nil, 0, true)
	}
	if w.async {
		return w.add(in.Record, w.c.Codec, in.Data, 0, false)
	}
	data, codec, err := Compress(w.scratch, in.Data, w.c.Codec, w.c.Level)
	if err != nil {
		w.err = err
		return err
	}
	if codec != CodecNone {
		w.scratch = data
	}
	return w.add(in.Record, codec, data, checksum.Sum(data, 0), true)
}

// WriteStored appends a normal record whose data is already in stored form
// (as NextStored returns it), without recompressing it. The checksum is
// verified. A non-normal record may be passed with an empty Stored.
func (w *SortedWriter) WriteStored(rec Record, s Stored) error {
	if err := w.usable(); err != nil {
		return err
	}
	if !rec.IsNormal() {
		return w.Write(IO{Record: rec})
	}
	if err := rec.validateWrite(); err != nil {
		return err
	}
	if !s.Codec.Valid() {
		return errors.Wrapf(ErrUnknownCodec, "record %d+%d: code %d", rec.Addr, rec.Blocks, s.Codec)
	}
	if len(s.Data) == 0 || len(s.Data) > rec.Size() || (s.Codec == CodecNone && len(s.Data) != rec.Size()) {
		return errors.Wrapf(ErrInvalid, "record %d+%d: %d stored %s bytes", rec.Addr, rec.Blocks, len(s.Data), s.Codec)
	}
	if got := checksum.Sum(s.Data, 0); got != s.Checksum {
		return errors.Wrapf(ErrChecksum, "record %d+%d: stored data checksum %08x, given %08x", rec.Addr, rec.Blocks, got, s.Checksum)
	}
	if err := w.checkOrder(rec); err != nil {
		return err
	}
	return w.add(rec, s.Codec, s.Data, s.Checksum, true)
}

// Close flushes the buffered records and writes the end pack. It does not
// close the underlying writer. Calling Close again returns the first result.
func (w *SortedWriter) Close() error {
	if w.closed {
		return w.err
	}
	w.closed = true
	if w.async {
		if w.err == nil && w.cur != nil && len(w.cur.ents) > 0 {
			w.submit()
		}
		w.stopPipeline()
		if w.err == nil {
			w.err = w.pipelineErr()
		}
	}
	if w.err == nil {
		w.err = w.pk.flush()
	}
	if w.err == nil {
		w.err = w.pk.writeEnd()
	}
	if w.err == nil {
		return nil
	}
	return w.err
}

func (w *SortedWriter) usable() error {
	if w.closed {
		return ErrClosed
	}
	if w.err == nil && w.async {
		w.err = w.pipelineErr()
	}
	return w.err
}

func (w *SortedWriter) checkOrder(rec Record) error {
	prevEnd := w.order.end
	if !w.order.next(rec) {
		return errors.Wrapf(ErrUnsorted, "record %d+%d starts before the previous record's end %d", rec.Addr, rec.Blocks, prevEnd)
	}
	return nil
}

// add hands a record to the packer (synchronous mode) or the current batch.
// final says data is already in stored form with its checksum.
func (w *SortedWriter) add(rec Record, codec Codec, data []byte, csum uint32, final bool) error {
	if !w.async {
		if err := w.pk.add(rec, codec, data, csum); err != nil {
			w.err = err
			return err
		}
		return nil
	}
	if w.cur == nil {
		w.cur = <-w.free
	}
	b := w.cur
	if cap(b.raw)-len(b.raw) < len(data) && len(b.raw)+len(data) <= batchBytes+64<<10 {
		nb := make([]byte, len(b.raw), batchBytes+64<<10)
		copy(nb, b.raw)
		b.raw = nb
	}
	e := wentry{rec: rec, codec: codec, csum: csum, final: final, rawOff: len(b.raw), rawLen: len(data)}
	b.raw = append(b.raw, data...)
	b.ents = append(b.ents, e)
	if len(b.raw) >= batchBytes || len(b.ents) >= batchRecords {
		w.submit()
	}
	return nil
}

// packer assembles packs in one buffer (header block followed by data) and
// writes each with a single Write call.
type packer struct {
	w     io.Writer
	off   int64 // bytes written so far
	buf   []byte
	n     int
	total int
}

func newPacker(w io.Writer) packer {
	return packer{w: w, buf: make([]byte, PackHeaderSize, PackHeaderSize+64<<10)}
}

func (p *packer) write(b []byte) error {
	n, err := p.w.Write(b)
	p.off += int64(n)
	if err == nil && n != len(b) {
		err = io.ErrShortWrite
	}
	if err != nil {
		return errors.Wrapf(err, "wdiff: writing at offset %d", p.off)
	}
	return nil
}

// canAdd is walb-tools' rule: at most 127 records, and at most 32 MiB of
// data unless the record is alone in its pack.
func (p *packer) canAdd(size int) bool {
	return p.n < MaxPackRecords && (p.n == 0 || p.total+size <= MaxPackDataSize)
}

func (p *packer) add(rec Record, codec Codec, data []byte, csum uint32) error {
	if !p.canAdd(len(data)) {
		if err := p.flush(); err != nil {
			return err
		}
	}
	sr := SortedRecord{Record: rec, DataOffset: uint32(p.total)}
	if rec.IsNormal() {
		sr.Codec, sr.DataSize, sr.Checksum = codec, uint32(len(data)), csum
	}
	sr.encode(p.buf[16+SortedRecordSize*p.n:])
	p.buf = append(p.buf, data...)
	p.n++
	p.total += len(data)
	return nil
}

func (p *packer) flush() error {
	if p.n == 0 {
		return nil
	}
	h := p.buf[:PackHeaderSize]
	binary.LittleEndian.PutUint16(h[4:], uint16(p.n))
	binary.LittleEndian.PutUint32(h[8:], uint32(p.total))
	checksum.Store(h, 0, 0)
	err := p.write(p.buf)
	if cap(p.buf) > 2*(PackHeaderSize+MaxPackDataSize) {
		p.buf = make([]byte, PackHeaderSize, PackHeaderSize+64<<10)
	}
	p.buf = p.buf[:PackHeaderSize]
	clear(p.buf)
	p.n, p.total = 0, 0
	return err
}

func (p *packer) writeEnd() error {
	var h [PackHeaderSize]byte
	h[6] = packEndFlag
	checksum.Store(h[:], 0, 0)
	return p.write(h[:])
}

// Pipeline. The caller fills batches; workers compress them; the packer
// goroutine takes them in submission order, waits for each, and writes.

const (
	batchBytes   = 1 << 20
	batchRecords = 1024
)

type wentry struct {
	rec            Record
	codec          Codec
	csum           uint32
	final          bool // data in raw is already stored form with csum
	rawOff, rawLen int
	outOff, outLen int // compressed form in out, when codec != CodecNone && !final
}

type wbatch struct {
	ents  []wentry
	raw   []byte
	out   []byte
	ready chan struct{}
	err   error
}

func (w *SortedWriter) startPipeline(n int) {
	w.async = true
	nb := 2*n + 2
	w.free = make(chan *wbatch, nb)
	w.work = make(chan *wbatch, nb)
	w.queue = make(chan *wbatch, nb)
	w.done = make(chan struct{})
	for range nb {
		w.free <- batchPool.Get().(*wbatch)
	}
	w.workers.Add(n)
	for range n {
		go w.compressLoop()
	}
	go w.packLoop()
}

func (w *SortedWriter) submit() {
	b := w.cur
	w.cur = nil
	w.queue <- b
	w.work <- b
}

func (w *SortedWriter) stopPipeline() {
	close(w.work)
	close(w.queue)
	<-w.done
	w.workers.Wait()
	if w.cur != nil {
		w.cur.reset()
		w.free <- w.cur
		w.cur = nil
	}
	for len(w.free) > 0 {
		batchPool.Put(<-w.free)
	}
}

// batchPool shares batch buffers between writers, so short-lived writers
// do not allocate megabytes each.
var batchPool = sync.Pool{New: func() any { return &wbatch{ready: make(chan struct{}, 1)} }}

func (b *wbatch) reset() {
	b.ents, b.raw, b.out, b.err = b.ents[:0], b.raw[:0], b.out[:0], nil
	if cap(b.raw) > 4*batchBytes {
		b.raw, b.out = nil, nil // drop buffers grown by one huge record
	}
}

func (w *SortedWriter) setPipelineErr(err error) {
	w.mu.Lock()
	if w.aerr == nil {
		w.aerr = err
	}
	w.mu.Unlock()
}

func (w *SortedWriter) pipelineErr() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.aerr
}

func (w *SortedWriter) compressLoop() {
	defer w.workers.Done()
	for b := range w.work {
		b.err = nil
		if w.pipelineErr() == nil {
			b.err = b.compress(w.c)
		}
		b.ready <- struct{}{}
	}
}

func (b *wbatch) compress(c Compression) error {
	b.out = b.out[:0]
	if cap(b.out) < len(b.raw) {
		b.out = make([]byte, 0, len(b.raw)+len(b.raw)/8)
	}
	for i := range b.ents {
		e := &b.ents[i]
		if e.final || !e.rec.IsNormal() {
			continue
		}
		src := b.raw[e.rawOff : e.rawOff+e.rawLen]
		start := len(b.out)
		var ok bool
		var err error
		b.out, ok, err = appendCompressed(b.out, src, c.Codec, c.Level)
		if err != nil {
			return err
		}
		if ok {
			e.outOff, e.outLen = start, len(b.out)-start
			e.csum = checksum.Sum(b.out[start:], 0)
		} else {
			e.codec = CodecNone
			e.csum = checksum.Sum(src, 0)
		}
	}
	return nil
}

func (w *SortedWriter) packLoop() {
	defer close(w.done)
	for b := range w.queue {
		<-b.ready
		if b.err != nil {
			w.setPipelineErr(b.err)
		}
		if w.pipelineErr() == nil {
			for i := range b.ents {
				e := &b.ents[i]
				data := b.raw[e.rawOff : e.rawOff+e.rawLen]
				if !e.final && e.rec.IsNormal() && e.codec != CodecNone {
					data = b.out[e.outOff : e.outOff+e.outLen]
				}
				if err := w.pk.add(e.rec, e.codec, data, e.csum); err != nil {
					w.setPipelineErr(err)
					break
				}
			}
		}
		b.reset()
		w.free <- b
	}
}
