package wdiff

import (
	"container/heap"
	"slices"
)

// Extent is a run of blocks written by one input IO (or one max-size chunk
// of it), as seen by the overlap resolver. Src and SrcOff locate the data; the
// resolver only carries them along.
type Extent struct {
	Addr   uint64 // first LB
	Blocks uint32 // LB count
	Flags  Flags  // 0 (normal), FlagAllZero or FlagDiscard
	Seq    uint32 // input order: among overlapping extents the highest wins
	Src    int64  // caller's handle of the source data
	SrcOff uint32 // LB offset of Addr inside the source
}

// End returns the LB after the extent.
func (e *Extent) End() uint64 { return e.Addr + uint64(e.Blocks) }

type extentHeap []*Extent

func (h extentHeap) Len() int           { return len(h) }
func (h extentHeap) Less(i, j int) bool { return h[i].Seq > h[j].Seq }
func (h extentHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *extentHeap) Push(x any)        { *h = append(*h, x.(*Extent)) }
func (h *extentHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// ResolveExtents computes what a sequence of overlapping writes leaves
// visible: exts (in any order; Seq says which is later) are cut so that every
// block belongs to the latest extent covering it. emit receives the visible
// pieces in address order. A piece never spans two input extents, and the
// uncovered parts of one extent stay separate pieces where a later extent
// splits it, which is how walb-tools' in-memory diff cuts records.
//
// exts is sorted in place. Memory is O(len(exts)); time O(n log n).
func ResolveExtents(exts []Extent, emit func(Extent) error) error {
	slices.SortFunc(exts, func(a, b Extent) int {
		switch {
		case a.Addr < b.Addr:
			return -1
		case a.Addr > b.Addr:
			return 1
		}
		return 0
	})
	var (
		h      extentHeap
		cur    Extent
		have   bool
		i      int
		n      = len(exts)
		pos    uint64
		flushE = func() error {
			if !have {
				return nil
			}
			have = false
			return emit(cur)
		}
	)
	for i < n || h.Len() > 0 {
		if h.Len() == 0 && exts[i].Addr > pos {
			pos = exts[i].Addr
		}
		for i < n && exts[i].Addr <= pos {
			if exts[i].Blocks > 0 {
				heap.Push(&h, &exts[i])
			}
			i++
		}
		for h.Len() > 0 && h[0].End() <= pos {
			heap.Pop(&h)
		}
		if h.Len() == 0 {
			continue
		}
		top := h[0]
		next := top.End()
		if i < n && exts[i].Addr < next {
			next = exts[i].Addr
		}
		piece := Extent{
			Addr:   pos,
			Blocks: uint32(next - pos),
			Flags:  top.Flags,
			Seq:    top.Seq,
			Src:    top.Src,
			SrcOff: top.SrcOff + uint32(pos-top.Addr),
		}
		if have && cur.Seq == piece.Seq && cur.End() == piece.Addr {
			cur.Blocks += piece.Blocks
		} else {
			if err := flushE(); err != nil {
				return err
			}
			cur, have = piece, true
		}
		pos = next
	}
	return flushE()
}

// AppendExtent appends e to dst cut into chunks of at most max blocks from
// its start (max 0: no cut), as walb-tools splits an IO larger than the
// maximum IO size. Each chunk's Seq is its index in dst, so later appends win
// and the chunks of one IO stay separate records.
func AppendExtent(dst []Extent, e Extent, max uint32) []Extent {
	if max == 0 || e.Blocks <= max {
		e.Seq = uint32(len(dst))
		return append(dst, e)
	}
	for off := uint32(0); off < e.Blocks; off += max {
		c := e
		c.Addr = e.Addr + uint64(off)
		c.Blocks = min(max, e.Blocks-off)
		c.SrcOff = e.SrcOff + off
		c.Seq = uint32(len(dst))
		dst = append(dst, c)
	}
	return dst
}
