package wdiff

import (
	"context"
	"io"

	"github.com/pkg/errors"
)

// MergeOptions configures Merge.
type MergeOptions struct {
	// MaxIOBlocks cuts each input record into pieces of at most this many LB
	// counted from the record's start (0: no limit). wdiff-merge's -x, in LB.
	MaxIOBlocks uint32
	// Compression of the output; records already stored with this codec and
	// kept whole are copied without recompressing.
	Compression Compression
}

// MergeStats counts what Merge read and wrote.
type MergeStats struct {
	InputRecords  uint64
	OutputRecords uint64
	Copied        uint64 // records passed through still compressed
	NormalLB      uint64
	AllZeroLB     uint64
	DiscardLB     uint64
}

// mergeHead is the current record of one merge input.
type mergeHead struct {
	r      Reader
	sr     *SortedReader // non-nil: read stored records, decompress lazily
	ok     bool
	rec    Record
	stored Stored
	data   []byte // decompressed, when known
	have   bool   // data is valid for rec
	buf    []byte
	prev   uint64 // end of the previous record, to check order
}

func (h *mergeHead) advance() error {
	h.have = false
	var err error
	if h.sr != nil {
		h.rec, h.stored, err = h.sr.NextStored()
	} else {
		var x IO
		x, err = h.r.Next()
		h.rec, h.data, h.have = x.Record, x.Data, true
		h.stored = Stored{}
	}
	if err == io.EOF {
		h.ok = false
		return nil
	}
	if err != nil {
		h.ok = false
		return err
	}
	if h.rec.Addr < h.prev {
		return errors.Wrapf(ErrUnsorted, "record at %d after one ending at %d", h.rec.Addr, h.prev)
	}
	h.prev = h.rec.End()
	h.ok = true
	return nil
}

func (h *mergeHead) payload() ([]byte, error) {
	if h.have {
		return h.data, nil
	}
	var err error
	h.buf, err = Decompress(h.buf[:0], h.stored.Data, h.stored.Codec, h.rec.Size())
	if err != nil {
		return nil, errors.Wrapf(err, "record at address %d", h.rec.Addr)
	}
	h.data, h.have = h.buf, true
	return h.data, nil
}

// Merge combines wdiffs into one sorted wdiff written to w. inputs are in
// age order: where records overlap, the later input wins. The inputs may mix
// sorted and indexed files. Merging streams: memory holds one record per
// input and the writer's packs in flight. The output header carries the last
// input's uuid.
func Merge(ctx context.Context, inputs []Reader, w io.Writer, opt MergeOptions) (MergeStats, error) {
	var st MergeStats
	if len(inputs) == 0 {
		return st, errors.Wrap(ErrInvalid, "no input wdiff")
	}
	if err := opt.Compression.Validate(); err != nil {
		return st, err
	}
	heads := make([]*mergeHead, len(inputs))
	for i, r := range inputs {
		h := &mergeHead{r: r}
		switch v := r.(type) {
		case *SortedReader:
			h.sr = v
		case *File:
			h.sr = v.Sorted()
		}
		if err := h.advance(); err != nil {
			return st, errors.Wrapf(err, "input %d", i)
		}
		if h.ok {
			st.InputRecords++
		}
		heads[i] = h
	}
	sw, err := NewSortedWriter(w, FileHeader{Type: TypeSorted, UUID: inputs[len(inputs)-1].Header().UUID}, opt.Compression)
	if err != nil {
		return st, err
	}
	var pos uint64
	for {
		if err := ctx.Err(); err != nil {
			return st, err
		}
		for i, h := range heads {
			for h.ok && h.rec.End() <= pos {
				if err := h.advance(); err != nil {
					return st, errors.Wrapf(err, "input %d", i)
				}
				if h.ok {
					st.InputRecords++
				}
			}
		}
		top := -1
		for i := len(heads) - 1; i >= 0; i-- {
			if heads[i].ok && heads[i].rec.Addr <= pos {
				top = i
				break
			}
		}
		if top < 0 {
			next, any := ^uint64(0), false
			for _, h := range heads {
				if h.ok && h.rec.Addr < next {
					next, any = h.rec.Addr, true
				}
			}
			if !any {
				break
			}
			pos = next
			continue
		}
		t := heads[top]
		next := t.rec.End()
		for _, h := range heads[top+1:] {
			if h.ok && h.rec.Addr < next {
				next = h.rec.Addr
			}
		}
		if m := uint64(opt.MaxIOBlocks); m > 0 {
			next = min(next, t.rec.Addr+((pos-t.rec.Addr)/m+1)*m)
		}
		if err := mergeEmit(sw, t, pos, next, opt, &st); err != nil {
			return st, err
		}
		pos = next
	}
	return st, sw.Close()
}

func mergeEmit(sw *SortedWriter, t *mergeHead, pos, next uint64, opt MergeOptions, st *MergeStats) error {
	rec := Record{Addr: pos, Blocks: uint32(next - pos), Flags: t.rec.Flags}
	st.OutputRecords++
	switch {
	case rec.IsDiscard():
		st.DiscardLB += uint64(rec.Blocks)
		return sw.Write(IO{Record: rec})
	case rec.IsAllZero():
		st.AllZeroLB += uint64(rec.Blocks)
		return sw.Write(IO{Record: rec})
	}
	st.NormalLB += uint64(rec.Blocks)
	whole := pos == t.rec.Addr && next == t.rec.End()
	if whole && t.sr != nil && !t.have && (t.stored.Codec == opt.Compression.Codec || t.stored.Codec == CodecNone) {
		st.Copied++
		return sw.WriteStored(rec, t.stored)
	}
	data, err := t.payload()
	if err != nil {
		return err
	}
	off := int(pos-t.rec.Addr) * LogicalBlockSize
	return sw.Write(IO{Record: rec, Data: data[off : off+rec.Size()]})
}
