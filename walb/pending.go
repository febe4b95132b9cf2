package walb

import (
	"math/bits"
	"slices"
	"sync"
	"sync/atomic"
)

// pendingIO is a write that has been logged but may not have reached the
// data device yet. Reads overlay it on what the data device returns, so
// that every acknowledged write is visible before it is applied.
type pendingIO struct {
	seq  uint64 // overlay order, which is log order
	off  uint64 // LB
	nLB  uint64
	data []byte // nLB*LBS bytes; nil reads as zeros (discards)
	buf  *[]byte
	refs atomic.Int32 // the overlay's reference plus readers'
}

func (p *pendingIO) release() {
	if p.refs.Add(-1) == 0 && p.buf != nil {
		putBuf(p.buf)
		p.buf, p.data = nil, nil
	}
}

// Overlay index granularity. IOs are indexed in every 64 KiB chunk they
// touch, except very large ones (discards, mostly), which a short list
// holds so that indexing them never costs more than the IO.
const (
	chunkShift = 7        // 128 LB
	largeLB    = 64 << 10 // 32 MiB
)

// overlay indexes the pending IOs by address.
type overlay struct {
	mu     sync.Mutex
	chunks map[uint64][]*pendingIO
	large  []*pendingIO
	seq    uint64
	count  atomic.Int64
}

func newOverlay() *overlay { return &overlay{chunks: make(map[uint64][]*pendingIO)} }

// add indexes ps, in log order. The overlay holds one reference to each.
func (o *overlay) add(ps []*pendingIO) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, p := range ps {
		o.seq++
		p.seq = o.seq
		p.refs.Store(1)
		if p.nLB > largeLB {
			o.large = append(o.large, p)
		} else {
			for c := p.off >> chunkShift; c <= (p.off+p.nLB-1)>>chunkShift; c++ {
				o.chunks[c] = append(o.chunks[c], p)
			}
		}
	}
	o.count.Add(int64(len(ps)))
}

// remove drops ps (already on the data device) from the index.
func (o *overlay) remove(ps []*pendingIO) {
	o.mu.Lock()
	for _, p := range ps {
		if p.nLB > largeLB {
			o.large = deleteIO(o.large, p)
			continue
		}
		for c := p.off >> chunkShift; c <= (p.off+p.nLB-1)>>chunkShift; c++ {
			l := deleteIO(o.chunks[c], p)
			if len(l) == 0 {
				delete(o.chunks, c)
			} else {
				o.chunks[c] = l
			}
		}
	}
	o.count.Add(-int64(len(ps)))
	o.mu.Unlock()
	for _, p := range ps {
		p.release()
	}
}

func deleteIO(l []*pendingIO, p *pendingIO) []*pendingIO {
	// IOs leave in log order, so p is nearly always first.
	for i, q := range l {
		if q == p {
			copy(l[i:], l[i+1:])
			l[len(l)-1] = nil
			return l[:len(l)-1]
		}
	}
	return l
}

// collect appends the pending IOs overlapping [off, off+n) LB to dst, in log
// order, each with a reference the caller must release.
func (o *overlay) collect(off, n uint64, dst []*pendingIO) []*pendingIO {
	if o.count.Load() == 0 {
		return dst
	}
	end := off + n
	first := off >> chunkShift
	o.mu.Lock()
	for c := first; c <= (end-1)>>chunkShift; c++ {
		for _, p := range o.chunks[c] {
			// An IO spanning several chunks is taken in the first chunk
			// that both it and the range touch.
			if p.off < end && off < p.off+p.nLB && c == max(first, p.off>>chunkShift) {
				p.refs.Add(1)
				dst = append(dst, p)
			}
		}
	}
	for _, p := range o.large {
		if p.off < end && off < p.off+p.nLB {
			p.refs.Add(1)
			dst = append(dst, p)
		}
	}
	o.mu.Unlock()
	slices.SortFunc(dst, func(a, b *pendingIO) int {
		switch {
		case a.seq < b.seq:
			return -1
		case a.seq > b.seq:
			return 1
		}
		return 0
	})
	return dst
}

// apply overlays ios (from collect, in log order) onto p, which holds the
// data device's content of [off, ...) LB, and releases them.
func applyOverlay(p []byte, off uint64, ios []*pendingIO) {
	end := off + uint64(len(p))/LBS
	for _, io := range ios {
		b := max(off, io.off)
		e := min(end, io.off+io.nLB)
		dst := p[(b-off)*LBS : (e-off)*LBS]
		if io.data == nil {
			clear(dst)
		} else {
			copy(dst, io.data[(b-io.off)*LBS:(e-io.off)*LBS])
		}
		io.release()
	}
}

// Data buffers are pooled by power-of-two size class from 4 KiB up, so
// that the write path does not allocate (and zero) a buffer per IO.
const (
	minBufShift = 12
	numBufPools = 14 // up to 32 MiB, the largest normal IO
)

var bufPools [numBufPools]sync.Pool

func bufClass(n int) int {
	if n <= 1<<minBufShift {
		return 0
	}
	return bits.Len(uint(n-1)) - minBufShift
}

// getBuf returns a buffer of n bytes (contents undefined).
func getBuf(n int) *[]byte {
	c := bufClass(n)
	if c >= numBufPools {
		b := make([]byte, n)
		return &b
	}
	if v := bufPools[c].Get(); v != nil {
		b := v.(*[]byte)
		*b = (*b)[:n]
		return b
	}
	b := make([]byte, n, 1<<(c+minBufShift))
	return &b
}

func putBuf(b *[]byte) {
	c := bufClass(cap(*b))
	if c < numBufPools && cap(*b) == 1<<(c+minBufShift) {
		bufPools[c].Put(b)
	}
}
