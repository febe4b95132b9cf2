package wlog

import (
	"context"
	"fmt"
	"io"

	"github.com/pkg/errors"
)

// Discarder is implemented by targets that can discard a range (a block
// device's BLKDISCARD, a file's hole punch).
type Discarder interface {
	Discard(off, length int64) error
}

// RedoOptions says how discards are applied.
type RedoOptions struct {
	ZeroDiscard bool  // write zeros over discarded ranges (-z)
	Discard     bool  // pass discards to the target's Discarder (-d)
	Size        int64 // target size in bytes; IOs beyond it fail (0 = unchecked)
}

// RedoStats counts what Redo did, in the units walb-tools' wlog-redo prints.
type RedoStats struct {
	BeginLsid, EndLsid uint64
	NormalLB           uint64 // written
	DiscardLB          uint64 // passed down as discards
	AllZeroLB          uint64 // discards written as zeros
	IgnoredLB          uint64 // discards skipped
	PaddingPB          uint64
}

// String formats s like wlog-redo's summary.
func (s RedoStats) String() string {
	return fmt.Sprintf("Applied lsid range [%d, %d)\nnormal:     %7d LB\ndiscard:    %7d LB\nallZero:    %7d LB\nignored:    %7d LB\npadding:    %7d PB\n",
		s.BeginLsid, s.EndLsid, s.NormalLB, s.DiscardLB, s.AllZeroLB, s.IgnoredLB, s.PaddingPB)
}

const zeroChunk = 1 << 20

var zeroBuf = make([]byte, zeroChunk)

// WriteZeros writes length zero bytes at off.
func WriteZeros(w io.WriterAt, off, length int64) error {
	for length > 0 {
		n := min(length, zeroChunk)
		if _, err := w.WriteAt(zeroBuf[:n], off); err != nil {
			return err
		}
		off += n
		length -= n
	}
	return nil
}

// Redo applies every IO of the wlog read by r to target, in log order, as
// walb-tools' wlog-redo does. It stops at the first error; IOs before it have
// been written.
func Redo(ctx context.Context, r *Reader, target io.WriterAt, opt RedoOptions) (RedoStats, error) {
	h := r.Header()
	st := RedoStats{BeginLsid: h.BeginLsid, EndLsid: h.BeginLsid}
	for {
		if err := ctx.Err(); err != nil {
			return st, err
		}
		_, err := r.NextPack()
		if err == io.EOF {
			return st, nil
		}
		if err != nil {
			return st, err
		}
		for {
			rec, data, err := r.NextRecord()
			if err == io.EOF {
				break
			}
			if err != nil {
				return st, err
			}
			if err := redoRecord(rec, data, target, opt, &st, h.PBS); err != nil {
				return st, err
			}
		}
		st.EndLsid = r.EndLsid()
	}
}

func redoRecord(rec *Record, data []byte, target io.WriterAt, opt RedoOptions, st *RedoStats, pbs uint32) error {
	if rec.IsPadding() {
		st.PaddingPB += rec.DataPBs(pbs)
		return nil
	}
	off := int64(rec.Offset) * LogicalBlockSize
	length := int64(rec.IOSize) * LogicalBlockSize
	if opt.Size > 0 && off+length > opt.Size {
		return errors.Wrapf(ErrInvalid, "record lsid %d: io [%d, +%d) LB beyond the target size %d LB",
			rec.Lsid, rec.Offset, rec.IOSize, opt.Size/LogicalBlockSize)
	}
	var err error
	switch {
	case rec.IsNormal():
		_, err = target.WriteAt(data, off)
		st.NormalLB += uint64(rec.IOSize)
	case opt.Discard:
		d, ok := target.(Discarder)
		if !ok {
			return errors.Wrap(ErrInvalid, "target cannot discard")
		}
		err = d.Discard(off, length)
		st.DiscardLB += uint64(rec.IOSize)
	case opt.ZeroDiscard:
		err = WriteZeros(target, off, length)
		st.AllZeroLB += uint64(rec.IOSize)
	default:
		st.IgnoredLB += uint64(rec.IOSize)
	}
	return errors.Wrapf(err, "wlog: redo record lsid %d", rec.Lsid)
}
