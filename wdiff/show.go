package wdiff

import (
	"bufio"
	"encoding/binary"
	"fmt"
	"io"
	"os"

	"github.com/pkg/errors"
)

// ShowOptions mirror wdiff-show's flags.
type ShowOptions struct {
	// NoHead omits the file header block (-nohead).
	NoHead bool
	// NoRec omits the record lines (-norec).
	NoRec bool
	// Stat appends the wdiff_stat lines (-stat).
	Stat bool
	// Search prints only the records holding block Addr (-search -addr).
	Search bool
	// Addr is the block to search for.
	Addr uint64
	// VerifyData also decompresses every record's data (-csum). Stored
	// checksums are always verified.
	VerifyData bool
}

// Stat holds wdiff-show's statistics.
type Stat struct {
	// WdiffNr counts indexed files only: walb-tools' sorted reader in
	// wdiff-show never increments it, and the output shows that.
	WdiffNr   uint64
	NormalNr  uint64
	AllZeroNr uint64
	DiscardNr uint64
	NormalLb  uint64
	AllZeroLb uint64
	DiscardLb uint64
	// DataSize sums data_size for sorted files; for indexed files it is
	// index_offset - 32 (images, including unreferenced ones, and padding).
	DataSize uint64
}

func (s *Stat) add(r Record) {
	switch {
	case r.IsNormal():
		s.NormalNr++
		s.NormalLb += uint64(r.Blocks)
	case r.IsDiscard():
		s.DiscardNr++
		s.DiscardLb += uint64(r.Blocks)
	default:
		s.AllZeroNr++
		s.AllZeroLb += uint64(r.Blocks)
	}
}

// WriteTo prints the statistics as wdiff-show -stat does.
func (s *Stat) WriteTo(w io.Writer) (int64, error) {
	n, err := fmt.Fprintf(w, "wdiff_stat: wdiffNr %d\nwdiff_stat: normalNr %d\nwdiff_stat: allZeroNr %d\n"+
		"wdiff_stat: discardNr %d\nwdiff_stat: normalLb %d\nwdiff_stat: allZeroLb %d\n"+
		"wdiff_stat: discardLb %d\nwdiff_stat: dataSize %d\n",
		s.WdiffNr, s.NormalNr, s.AllZeroNr, s.DiscardNr, s.NormalLb, s.AllZeroLb, s.DiscardLb, s.DataSize)
	return int64(n), err
}

// Show prints wdiff files the way walb-tools' wdiff-show does: for each
// file its header block and one line per record, then, with opts.Stat, the
// statistics of all files together. Unlike wdiff-show it stops at the first
// invalid structure and returns the error.
func Show(w io.Writer, opts ShowOptions, paths ...string) error {
	bw := bufio.NewWriter(w)
	var st Stat
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return errors.Wrap(err, "wdiff: show")
		}
		fi, err := f.Stat()
		if err == nil {
			err = showOne(bw, opts, f, fi.Size(), &st)
		}
		f.Close()
		if err != nil {
			bw.Flush()
			return errors.WithMessagef(err, "wdiff: show %s", p)
		}
	}
	if opts.Stat {
		st.WriteTo(bw)
	}
	return bw.Flush()
}

// ShowReaderAt is Show for one file given as a ReaderAt of size bytes.
func ShowReaderAt(w io.Writer, opts ShowOptions, r io.ReaderAt, size int64) error {
	bw := bufio.NewWriter(w)
	var st Stat
	err := showOne(bw, opts, r, size, &st)
	if err == nil && opts.Stat {
		st.WriteTo(bw)
	}
	if ferr := bw.Flush(); err == nil {
		err = ferr
	}
	return err
}

func showOne(w *bufio.Writer, opts ShowOptions, r io.ReaderAt, size int64, st *Stat) error {
	rd, err := NewReader(r, size)
	if err != nil {
		return err
	}
	var raw [FileHeaderSize]byte
	if _, err := r.ReadAt(raw[:], 0); err != nil {
		return errors.Wrap(err, "wdiff: reading file header")
	}
	h := rd.Header()
	if !opts.NoHead {
		fmt.Fprintf(w, "wdiff_h:\n  checksum: %08x\n  version: %d\n  type: %s\n  uuid: %s\n",
			binary.LittleEndian.Uint32(raw[:]), binary.LittleEndian.Uint16(raw[4:]), h.Type, h.UUIDString())
	}
	show := func(r Record) bool {
		return !opts.NoRec && (!opts.Search || (r.Addr <= opts.Addr && opts.Addr < r.End()))
	}
	switch rd := rd.(type) {
	case *SortedReader:
		var buf []byte
		for {
			sr, err := rd.NextRaw()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
			st.add(sr.Record)
			st.DataSize += uint64(sr.DataSize)
			if opts.VerifyData && sr.IsNormal() {
				d := rd.data[sr.DataOffset : sr.DataOffset+sr.DataSize]
				if buf, err = Decompress(buf, d, sr.Codec, sr.Size()); err != nil {
					return errors.WithMessagef(err, "record %d+%d", sr.Addr, sr.Blocks)
				}
			}
			if show(sr.Record) {
				fmt.Fprintf(w, "wdiff_sorted_rec:\t%s\n", sr)
			}
		}
	case *IndexedReader:
		st.WdiffNr++
		st.DataSize += rd.super.IndexOffset - FileHeaderSize
		for {
			ir, err := rd.NextRaw()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
			st.add(ir.Record)
			if opts.VerifyData && ir.IsNormal() {
				if _, err := rd.image(&ir); err != nil {
					return err
				}
			}
			if show(ir.Record) {
				fmt.Fprintf(w, "wdiff_indexed_rec:\t%s\n", ir)
			}
		}
	}
	return nil
}
