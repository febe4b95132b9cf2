package wdiff

import (
	"context"
	"fmt"
	"io"

	"github.com/pkg/errors"
)

// Discarder is implemented by targets that can discard a byte range.
type Discarder interface {
	Discard(off, length int64) error
}

// ApplyOptions says how non-normal records are applied.
type ApplyOptions struct {
	ZeroDiscard bool  // write zeros over discarded ranges (-z)
	Discard     bool  // pass discards to the target's Discarder (-d)
	Size        int64 // target size in bytes; records beyond it fail (0 = unchecked)
}

// ApplyStats counts what Apply did.
type ApplyStats struct {
	Records            uint64
	NormalLB           uint64
	AllZeroLB          uint64
	DiscardLB          uint64 // discarded or zeroed
	IgnoredDiscardLB   uint64
	Writes             uint64 // write calls issued after coalescing
	NormalRecords      uint64
	AllZeroRecords     uint64
	DiscardRecords     uint64
	IgnoredDiscardRecs uint64
}

// String formats s for the redo tool's summary.
func (s ApplyStats) String() string {
	return fmt.Sprintf("records:    %10d\nnormal:     %10d LB (%d)\nallZero:    %10d LB (%d)\ndiscard:    %10d LB (%d)\nignored:    %10d LB (%d)\n",
		s.Records, s.NormalLB, s.NormalRecords, s.AllZeroLB, s.AllZeroRecords,
		s.DiscardLB, s.DiscardRecords, s.IgnoredDiscardLB, s.IgnoredDiscardRecs)
}

// applyBufSize bounds write coalescing: adjacent normal records are gathered
// into one write of up to this many bytes.
const applyBufSize = 4 << 20

var zeroBlock = make([]byte, 1<<20)

// Apply writes every record of r onto target (a block device or an image
// file), as walb-tools' wdiff-redo does. Adjacent normal records are written
// with one call. It stops at the first error.
func Apply(ctx context.Context, r Reader, target io.WriterAt, opt ApplyOptions) (ApplyStats, error) {
	var st ApplyStats
	a := applier{target: target, buf: make([]byte, 0, applyBufSize), st: &st}
	for {
		if err := ctx.Err(); err != nil {
			return st, err
		}
		x, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return st, err
		}
		st.Records++
		off := int64(x.Addr) * LogicalBlockSize
		n := int64(x.Blocks) * LogicalBlockSize
		if opt.Size > 0 && off+n > opt.Size {
			return st, errors.Wrapf(ErrInvalid, "record [%d, +%d) LB beyond the target size %d LB",
				x.Addr, x.Blocks, opt.Size/LogicalBlockSize)
		}
		switch {
		case x.IsNormal():
			st.NormalRecords++
			st.NormalLB += uint64(x.Blocks)
			err = a.write(x.Data, off)
		case x.IsAllZero():
			st.AllZeroRecords++
			st.AllZeroLB += uint64(x.Blocks)
			err = a.zero(off, n)
		case opt.Discard:
			st.DiscardRecords++
			st.DiscardLB += uint64(x.Blocks)
			d, ok := target.(Discarder)
			if !ok {
				return st, errors.Wrap(ErrInvalid, "target cannot discard")
			}
			if err = a.flush(); err == nil {
				err = d.Discard(off, n)
			}
		case opt.ZeroDiscard:
			st.DiscardRecords++
			st.DiscardLB += uint64(x.Blocks)
			err = a.zero(off, n)
		default:
			st.IgnoredDiscardRecs++
			st.IgnoredDiscardLB += uint64(x.Blocks)
		}
		if err != nil {
			return st, errors.Wrapf(err, "wdiff: apply record at address %d", x.Addr)
		}
	}
	return st, errors.Wrap(a.flush(), "wdiff: apply")
}

type applier struct {
	target io.WriterAt
	buf    []byte
	off    int64 // target offset of buf[0]
	st     *ApplyStats
}

func (a *applier) write(p []byte, off int64) error {
	if len(a.buf) > 0 && (a.off+int64(len(a.buf)) != off || len(a.buf)+len(p) > cap(a.buf)) {
		if err := a.flush(); err != nil {
			return err
		}
	}
	if len(p) >= cap(a.buf) {
		a.st.Writes++
		_, err := a.target.WriteAt(p, off)
		return err
	}
	if len(a.buf) == 0 {
		a.off = off
	}
	a.buf = append(a.buf, p...)
	return nil
}

func (a *applier) zero(off, n int64) error {
	for n > 0 {
		k := min(n, int64(len(zeroBlock)))
		if err := a.write(zeroBlock[:k], off); err != nil {
			return err
		}
		off += k
		n -= k
	}
	return nil
}

func (a *applier) flush() error {
	if len(a.buf) == 0 {
		return nil
	}
	a.st.Writes++
	_, err := a.target.WriteAt(a.buf, a.off)
	a.buf = a.buf[:0]
	return err
}
