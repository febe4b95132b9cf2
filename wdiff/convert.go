package wdiff

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"os"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/wlog"
)

// ConvertOptions configures ConvertWlogs.
type ConvertOptions struct {
	// MaxIOBlocks cuts IOs larger than this many LB into pieces, counted from
	// the start of each IO (0: no limit). wlog-to-wdiff's -x, in LB.
	MaxIOBlocks uint32
	// Indexed selects the indexed format; the default is sorted.
	Indexed bool
	// Compression of the output data.
	Compression Compression
	// TempDir holds the spool file used when an input is not a regular file
	// (sorted output only). Empty means os.TempDir().
	TempDir string
}

// ConvertStats counts what a conversion read and wrote.
type ConvertStats struct {
	BeginLsid, EndLsid uint64
	InputIOs           uint64 // normal and discard IOs read
	InputLB            uint64
	Records            uint64 // records written
	NormalLB           uint64
	AllZeroLB          uint64
	DiscardLB          uint64
}

// WlogInput is one wlog stream to convert. If R is also an io.ReaderAt over
// the same bytes (an *os.File), sorted conversion reads the data back from it
// instead of spooling it.
type WlogInput struct {
	Name string
	R    io.Reader
}

// ConvertWlogs turns lsid-contiguous wlogs of one device into a single wdiff
// written to w: records sorted by address, later writes winning over earlier
// ones, overlaps cut, IOs split at opt.MaxIOBlocks, discards kept as discard
// records and all-zero writes stored as all-zero records.
//
// Memory is bounded by the number of IOs (about 48 bytes each), not by the
// data: the first pass validates the logs and notes where each IO's data
// lies (or, for indexed output, writes it out at once); the second pass
// resolves overlaps and writes the records in address order.
func ConvertWlogs(ctx context.Context, inputs []WlogInput, w io.Writer, opt ConvertOptions) (ConvertStats, error) {
	var st ConvertStats
	if len(inputs) == 0 {
		return st, errors.Wrap(ErrInvalid, "no input wlog")
	}
	if err := opt.Compression.Validate(); err != nil {
		return st, err
	}
	c := &converter{opt: opt, st: &st, w: w}
	defer c.cleanup()
	for i, in := range inputs {
		if err := c.scan(ctx, i, in); err != nil {
			return st, errors.Wrapf(err, "%s", in.Name)
		}
	}
	if opt.Indexed {
		return st, c.finishIndexed(ctx)
	}
	return st, c.writeSorted(ctx, w, FileHeader{Type: TypeSorted, UUID: c.uuid})
}

type converter struct {
	w       io.Writer
	opt     ConvertOptions
	st      *ConvertStats
	uuid    [16]byte
	pbs     uint32
	exts    []Extent
	srcs    []io.ReaderAt // data sources by input index (sorted output)
	spool   *os.File
	spoolSz int64
	iw      *IndexedWriter
	images  []Image
	started bool
}

// Src of a normal extent in sorted mode: input index in the top 16 bits,
// byte offset of the IO's data in the low 48.
const srcShift = 48

func (c *converter) cleanup() {
	if c.spool != nil {
		c.spool.Close()
		os.Remove(c.spool.Name())
	}
}

func (c *converter) scan(ctx context.Context, idx int, in WlogInput) error {
	if idx >= 1<<16 {
		return errors.Wrap(ErrInvalid, "too many inputs")
	}
	ra, direct := in.R.(io.ReaderAt)
	if c.opt.Indexed {
		direct = false
	}
	rd, err := wlog.NewReader(bufio.NewReaderSize(in.R, 1<<20))
	if err != nil {
		return err
	}
	h := rd.Header()
	if !c.started {
		c.started = true
		c.uuid = h.UUID
		c.pbs = h.PBS
		c.st.BeginLsid = h.BeginLsid
		c.st.EndLsid = h.BeginLsid
		if c.opt.Indexed {
			c.iw, err = NewIndexedWriter(c.w, FileHeader{Type: TypeIndexed, UUID: h.UUID}, c.opt.Compression)
			if err != nil {
				return err
			}
			c.iw.MaxIOBlocks = c.opt.MaxIOBlocks
		}
	} else {
		if h.UUID != c.uuid {
			return errors.Wrapf(ErrInvalid, "uuid %s differs from the first log's %x", h.UUID, c.uuid)
		}
		if h.BeginLsid != c.st.EndLsid {
			return errors.Wrapf(ErrInvalid, "begins at lsid %d, previous log ended at %d", h.BeginLsid, c.st.EndLsid)
		}
	}
	if direct {
		c.srcs = append(c.srcs, ra)
	} else {
		c.srcs = append(c.srcs, nil)
	}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		_, err := rd.NextPack()
		if err == io.EOF {
			break
		}
		if err != nil {
			return err
		}
		for {
			rec, data, err := rd.NextRecord()
			if err == io.EOF {
				break
			}
			if err != nil {
				return err
			}
			if rec.IsPadding() {
				continue
			}
			if err := c.add(idx, rec, data, rd.DataOffset(), direct); err != nil {
				return err
			}
		}
	}
	c.st.EndLsid = rd.EndLsid()
	return nil
}

func (c *converter) add(idx int, rec *wlog.Record, data []byte, dataOff int64, direct bool) error {
	c.st.InputIOs++
	c.st.InputLB += uint64(rec.IOSize)
	e := Extent{Addr: rec.Offset, Blocks: rec.IOSize}
	switch {
	case rec.IsDiscard():
		e.Flags = FlagDiscard
	case isAllZero(data):
		e.Flags = FlagAllZero
	case c.opt.Indexed:
		img, err := c.iw.WriteImage(data)
		if err != nil {
			return err
		}
		e.Src = int64(len(c.images))
		c.images = append(c.images, img)
	case direct:
		e.Src = int64(idx)<<srcShift | dataOff
	default:
		if err := c.spoolData(data); err != nil {
			return err
		}
		e.Src = int64(idx)<<srcShift | (c.spoolSz - int64(len(data)))
	}
	if e.Addr+uint64(e.Blocks) < e.Addr {
		return errors.Wrapf(ErrInvalid, "io at lsid %d overflows the address space", rec.Lsid)
	}
	max := c.opt.MaxIOBlocks
	if c.opt.Indexed {
		// The indexed writer cuts pieces into aligned powers of two capped
		// at the max IO size; walb-tools does not pre-cut IOs for it.
		max = 0
	}
	c.exts = AppendExtent(c.exts, e, max)
	return nil
}

func (c *converter) spoolData(data []byte) error {
	if c.spool == nil {
		f, err := os.CreateTemp(c.opt.TempDir, "wdiff-convert-*.spool")
		if err != nil {
			return errors.Wrap(err, "wdiff: create spool file")
		}
		c.spool = f
	}
	if _, err := c.spool.Write(data); err != nil {
		return errors.Wrap(err, "wdiff: write spool file")
	}
	c.spoolSz += int64(len(data))
	return nil
}

func (c *converter) source(src int64) io.ReaderAt {
	if r := c.srcs[src>>srcShift]; r != nil {
		return r
	}
	return c.spool
}

func (c *converter) count(e Extent) {
	c.st.Records++
	switch {
	case e.Flags&FlagDiscard != 0:
		c.st.DiscardLB += uint64(e.Blocks)
	case e.Flags&FlagAllZero != 0:
		c.st.AllZeroLB += uint64(e.Blocks)
	default:
		c.st.NormalLB += uint64(e.Blocks)
	}
}

func (c *converter) writeSorted(ctx context.Context, w io.Writer, hdr FileHeader) error {
	sw, err := NewSortedWriter(w, hdr, c.opt.Compression)
	if err != nil {
		return err
	}
	var buf []byte
	err = ResolveExtents(c.exts, func(e Extent) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		c.count(e)
		rec := Record{Addr: e.Addr, Blocks: e.Blocks, Flags: e.Flags}
		if rec.IsNormal() {
			n := int(e.Blocks) * LogicalBlockSize
			if cap(buf) < n {
				buf = make([]byte, n)
			}
			buf = buf[:n]
			off := e.Src&(1<<srcShift-1) + int64(e.SrcOff)*LogicalBlockSize
			if _, err := c.source(e.Src).ReadAt(buf, off); err != nil {
				return errors.Wrapf(err, "wdiff: read back io data for address %d", e.Addr)
			}
			return sw.Write(IO{Record: rec, Data: buf})
		}
		return sw.Write(IO{Record: rec})
	})
	if err != nil {
		return err
	}
	return sw.Close()
}

func (c *converter) finishIndexed(ctx context.Context) error {
	err := ResolveExtents(c.exts, func(e Extent) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		c.count(e)
		rec := Record{Addr: e.Addr, Blocks: e.Blocks, Flags: e.Flags}
		if !rec.IsNormal() {
			return c.iw.WriteIndex(rec, Image{}, 0)
		}
		return c.iw.WriteIndex(rec, c.images[e.Src], e.SrcOff)
	})
	if err != nil {
		return err
	}
	return c.iw.Close()
}

var zeros [64 << 10]byte

// isAllZero reports whether b holds only zero bytes.
func isAllZero(b []byte) bool {
	for len(b) > 0 {
		n := min(len(b), len(zeros))
		if !bytes.Equal(b[:n], zeros[:n]) {
			return false
		}
		b = b[n:]
	}
	return true
}
