package wlog

import (
	"bufio"
	"fmt"
	"io"

	"github.com/pkg/errors"
)

// Stats sums up a log.
type Stats struct {
	BeginLsid     uint64
	EndLsid       uint64 // from the file header
	RealEndLsid   uint64 // lsid after the last pack
	NumPacks      uint64
	NormalLB      uint64
	DiscardLB     uint64
	PaddingPB     uint64
	NumNormalIOs  uint64
	NumDiscardIOs uint64
}

func (s *Stats) add(rec *Record, pbs uint32) {
	switch {
	case rec.IsPadding():
		s.PaddingPB += rec.DataPBs(pbs)
	case rec.IsDiscard():
		s.DiscardLB += uint64(rec.IOSize)
		s.NumDiscardIOs++
	default:
		s.NormalLB += uint64(rec.IOSize)
		s.NumNormalIOs++
	}
}

// ShowOptions selects what Show prints.
type ShowOptions struct {
	Records bool // print each pack and record (the default of wlog-show)
	Stats   bool // print the summary lines
}

// Show reads a whole wlog from r, validating it, and prints it in the text
// form of walb-tools' wlog-show. It returns the statistics.
func Show(w io.Writer, r io.Reader, opt ShowOptions) (Stats, error) {
	bw := bufio.NewWriter(w)
	defer bw.Flush()
	rd, err := NewReader(r)
	if err != nil {
		return Stats{}, err
	}
	h := rd.Header()
	st := Stats{BeginLsid: h.BeginLsid, EndLsid: h.EndLsid}
	if opt.Records {
		fmt.Fprintln(bw, h.String())
	}
	for {
		p, err := rd.NextPack()
		if err == io.EOF {
			break
		}
		if err != nil {
			return st, err
		}
		if opt.Records {
			fmt.Fprintf(bw, "wlog_p: lsid %10d total %4d n_rec %2d n_pad %2d csum %08x\n",
				p.LogpackLsid, p.TotalIOSize, len(p.Records), p.NPadding, p.Checksum)
		}
		for {
			rec, _, err := rd.NextRecord()
			if err == io.EOF {
				break
			}
			if err != nil {
				return st, err
			}
			st.add(rec, h.PBS)
			if opt.Records {
				fmt.Fprintf(bw, "wlog_r: lsid %10d %4d io %10d %4d flags %s csum %08x\n",
					rec.Lsid, rec.LsidLocal, rec.Offset, rec.IOSize, rec.Flags, rec.Checksum)
			}
		}
	}
	st.NumPacks = rd.NumPacks()
	st.RealEndLsid = rd.EndLsid()
	if opt.Stats {
		fmt.Fprintf(bw, "bgnLsid %d\nendLsid %d\nreallyEndLsid %d\nnrPacks %d\nnormalLb %d\ndiscardLb %d\npaddingPb %d\n",
			st.BeginLsid, st.EndLsid, st.RealEndLsid, st.NumPacks, st.NormalLB, st.DiscardLB, st.PaddingPB)
	}
	return st, errors.Wrap(bw.Flush(), "wlog: show")
}
