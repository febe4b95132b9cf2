package cli

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/wdiff"
	"github.com/walb-go/walb/wlog"
)

// cmprOption registers -cmpr TYPE:LEVEL:CPUS.
func cmprOption(o *Options, p *string) {
	o.String(p, "cmpr", "TYPE:LEVEL:CPUS", "snappy:0:1",
		"compression: none, gzip (zlib), snappy, lzma (xz), lz4 or zstd; level 0 = library default; CPUS worker goroutines")
}

func parseCmpr(s string) (wdiff.Compression, error) {
	c, err := wdiff.ParseCompression(s)
	if err != nil {
		return c, errors.Wrapf(ErrUsage, "-cmpr %s: %v", s, err)
	}
	return c, nil
}

// maxIOBlocks turns a -x byte size into LB; 0 stays unlimited.
func maxIOBlocks(x uint64) (uint32, error) {
	if x%wlog.LogicalBlockSize != 0 || x/wlog.LogicalBlockSize > 1<<31 {
		return 0, errors.Wrapf(ErrUsage, "-x %d: must be a multiple of 512 bytes", x)
	}
	return uint32(x / wlog.LogicalBlockSize), nil
}

// createOutput opens path for writing through a temporary file renamed into
// place on commit, so an interrupted run never leaves a half-written file
// under the final name. "-" is standard output.
type output struct {
	f    *os.File
	w    *bufio.Writer
	path string
	tmp  string
}

func createOutput(path string) (*output, error) {
	if path == "" || path == "-" {
		return &output{w: bufio.NewWriterSize(os.Stdout, 1<<20)}, nil
	}
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return nil, err
	}
	return &output{f: f, w: bufio.NewWriterSize(f, 1<<20), path: path, tmp: f.Name()}, nil
}

func (o *output) Write(p []byte) (int, error) { return o.w.Write(p) }

func (o *output) commit() error {
	if err := o.w.Flush(); err != nil {
		return err
	}
	if o.f == nil {
		return nil
	}
	if err := o.f.Sync(); err != nil {
		return err
	}
	if err := o.f.Close(); err != nil {
		return err
	}
	o.f = nil
	return os.Rename(o.tmp, o.path)
}

func (o *output) abort() {
	if o.f != nil {
		o.f.Close()
		os.Remove(o.tmp)
	}
}

// WlogToWdiff converts wlogs to a wdiff (wlog-to-wdiff).
func WlogToWdiff(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o := NewOptions("wlog-to-wdiff", "Convert lsid-contiguous wlogs of one device to a wdiff (later writes win).")
	var inputs []string
	var out, cmpr string
	var x uint64
	var indexed, stat bool
	o.Strings(&inputs, "i", "WLOG_PATH", "input wlogs in lsid order ('-' for stdin, the default)")
	o.String(&out, "o", "WDIFF_PATH", "-", "output wdiff ('-' for stdout)")
	o.Size(&x, "x", "SIZE", wdiff.DefaultMaxIOBlocks*wlog.LogicalBlockSize, "max IO size in the output, bytes (0: unlimited)")
	o.Bool(&indexed, "indexed", "write the indexed format instead of sorted")
	o.Bool(&stat, "stat", "print statistics to stderr")
	cmprOption(o, &cmpr)
	if err := parse(o, args, stdout); err != nil {
		return err
	}
	c, err := parseCmpr(cmpr)
	if err != nil {
		return err
	}
	maxLB, err := maxIOBlocks(x)
	if err != nil {
		return err
	}
	if len(inputs) == 0 {
		inputs = []string{"-"}
	}
	var ins []wdiff.WlogInput
	for _, in := range inputs {
		if in == "-" {
			ins = append(ins, wdiff.WlogInput{Name: "stdin", R: os.Stdin})
			continue
		}
		f, err := os.Open(in)
		if err != nil {
			return err
		}
		defer f.Close()
		ins = append(ins, wdiff.WlogInput{Name: in, R: f})
	}
	w, err := createOutput(out)
	if err != nil {
		return err
	}
	defer w.abort()
	st, err := wdiff.ConvertWlogs(ctx, ins, w, wdiff.ConvertOptions{MaxIOBlocks: maxLB, Indexed: indexed, Compression: c})
	if err != nil {
		return err
	}
	if stat {
		fmt.Fprintf(stderr, "lsid [%d, %d) ios %d (%d LB) -> records %d: normal %d LB, allZero %d LB, discard %d LB\n",
			st.BeginLsid, st.EndLsid, st.InputIOs, st.InputLB, st.Records, st.NormalLB, st.AllZeroLB, st.DiscardLB)
	}
	return w.commit()
}

// WdiffShow prints wdiff files (wdiff-show).
func WdiffShow(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o := NewOptions("wdiff-show", "Print wdiff files (sorted or indexed); every checksum is verified.")
	var path string
	var opt wdiff.ShowOptions
	var addr uint64
	o.Param(&path, "WDIFF_PATH", "input wdiff", false)
	o.Bool(&opt.Stat, "stat", "show statistics")
	o.Bool(&opt.NoHead, "nohead", "do not show the file header")
	o.Bool(&opt.NoRec, "norec", "do not show records")
	o.Bool(&opt.VerifyData, "csum", "decompress and verify every record's data")
	o.Bool(&opt.Search, "search", "show only records holding the block given by -addr")
	o.Size(&addr, "addr", "LB", 0, "block address for -search")
	if err := parse(o, args, stdout); err != nil {
		return err
	}
	opt.Addr = addr
	bw := bufio.NewWriter(stdout)
	if err := wdiff.Show(bw, opt, path); err != nil {
		bw.Flush()
		return err
	}
	return bw.Flush()
}

// WdiffMerge merges wdiffs (wdiff-merge).
func WdiffMerge(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o := NewOptions("wdiff-merge", "Merge wdiffs, oldest first (later records win), into one sorted wdiff.")
	var inputs []string
	var out, cmpr string
	var x uint64
	var stat bool
	o.Strings(&inputs, "i", "WDIFF_PATH", "input wdiffs, oldest first (sorted or indexed)")
	o.String(&out, "o", "WDIFF_PATH", "-", "output wdiff ('-' for stdout)")
	o.Size(&x, "x", "SIZE", 0, "max IO size in the output, bytes (0: unlimited)")
	o.Bool(&stat, "stat", "print statistics to stderr")
	cmprOption(o, &cmpr)
	if err := parse(o, args, stdout); err != nil {
		return err
	}
	if len(inputs) == 0 {
		return errors.Wrap(ErrUsage, "no input (-i)")
	}
	c, err := parseCmpr(cmpr)
	if err != nil {
		return err
	}
	maxLB, err := maxIOBlocks(x)
	if err != nil {
		return err
	}
	var readers []wdiff.Reader
	for _, in := range inputs {
		f, err := wdiff.Open(in)
		if err != nil {
			return err
		}
		defer f.Close()
		readers = append(readers, f)
	}
	w, err := createOutput(out)
	if err != nil {
		return err
	}
	defer w.abort()
	st, err := wdiff.Merge(ctx, readers, w, wdiff.MergeOptions{MaxIOBlocks: maxLB, Compression: c})
	if err != nil {
		return err
	}
	if stat {
		fmt.Fprintf(stderr, "records in %d out %d (copied compressed %d): normal %d LB, allZero %d LB, discard %d LB\n",
			st.InputRecords, st.OutputRecords, st.Copied, st.NormalLB, st.AllZeroLB, st.DiscardLB)
	}
	return w.commit()
}

// WdiffRedo applies a wdiff to a block device or image file (wdiff-redo).
func WdiffRedo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o := NewOptions("wdiff-redo", "Apply a wdiff to a block device or image file.")
	var target, in string
	var zero, discard, stat bool
	o.Param(&target, "DEVICE_PATH", "block device or image file to write", false)
	o.String(&in, "i", "WDIFF_PATH", "-", "input wdiff ('-' for stdin: sorted format only)")
	o.Bool(&zero, "z", "write zeros for discards")
	o.Bool(&discard, "d", "issue discards for discard records (block devices)")
	o.Bool(&stat, "stat", "print statistics")
	if err := parse(o, args, stdout); err != nil {
		return err
	}
	if zero && discard {
		return errors.Wrap(ErrUsage, "-z and -d exclude each other")
	}
	var r wdiff.Reader
	if in == "-" {
		sr, err := wdiff.NewSortedReader(bufio.NewReaderSize(os.Stdin, 1<<20))
		if err != nil {
			return err
		}
		r = sr
	} else {
		f, err := wdiff.Open(in)
		if err != nil {
			return err
		}
		defer f.Close()
		r = f
	}
	dev, err := OpenTarget(target)
	if err != nil {
		return err
	}
	defer dev.Close()
	st, err := wdiff.Apply(ctx, r, dev, wdiff.ApplyOptions{ZeroDiscard: zero, Discard: discard, Size: dev.Size()})
	if err != nil {
		return err
	}
	if stat {
		fmt.Fprint(stdout, st.String())
	}
	return dev.Close()
}

func init() {
	Tools["wlog-to-wdiff"] = WlogToWdiff
	Tools["wdiff-show"] = WdiffShow
	Tools["wdiff-merge"] = WdiffMerge
	Tools["wdiff-redo"] = WdiffRedo
}
