package cli

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/wlog"
)

// openInput opens path for reading; "-" or "" is standard input.
func openInput(path string) (io.ReadCloser, error) {
	if path == "" || path == "-" {
		return io.NopCloser(bufio.NewReaderSize(os.Stdin, 1<<20)), nil
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	return f, nil
}

// WlogShow prints a wlog file (wlog-show).
func WlogShow(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o := NewOptions("wlog-show", "Print a wlog file's header, packs and statistics; every checksum is verified.")
	var in string
	var head, pack, stat, validate bool
	o.Param(&in, "WLOG_PATH", "input wlog ('-' for stdin, the default)", true)
	o.Bool(&head, "head", "show the file header")
	o.Bool(&pack, "pack", "show packs and records")
	o.Bool(&stat, "stat", "show statistics")
	o.Bool(&validate, "validate", "validate each IO checksum (always done)")
	if err := parse(o, args, stdout); err != nil {
		return err
	}
	if !head && !pack && !stat {
		head, pack, stat = true, true, true
	}
	r, err := openInput(in)
	if err != nil {
		return err
	}
	defer r.Close()
	_, err = wlog.Show(stdout, r, wlog.ShowOptions{Records: pack || head, Stats: stat})
	return err
}

// WlogRedo applies wlog files to a block device or image file (wlog-redo).
func WlogRedo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o := NewOptions("wlog-redo", "Apply wlogs, in order, to a block device or image file.")
	var target string
	var in string
	var zero, discard bool
	o.Param(&target, "DEVICE_PATH", "block device or image file to write", false)
	o.String(&in, "i", "WLOG_PATH", "-", "input wlog ('-' for stdin)")
	o.Bool(&zero, "z", "write zeros for discards")
	o.Bool(&discard, "d", "issue discards for discard records (block devices)")
	if err := parse(o, args, stdout); err != nil {
		return err
	}
	if zero && discard {
		return errors.Wrap(ErrUsage, "-z and -d exclude each other")
	}
	dev, err := OpenTarget(target)
	if err != nil {
		return err
	}
	defer dev.Close()
	if err := redoWlog(ctx, in, dev, wlog.RedoOptions{ZeroDiscard: zero, Discard: discard, Size: dev.Size()}, stdout); err != nil {
		return err
	}
	return dev.Close()
}

func redoWlog(ctx context.Context, in string, dev *Target, opt wlog.RedoOptions, stdout io.Writer) error {
	r, err := openInput(in)
	if err != nil {
		return err
	}
	defer r.Close()
	rd, err := wlog.NewReader(bufio.NewReaderSize(r, 1<<20))
	if err != nil {
		return errors.Wrapf(err, "%s", in)
	}
	st, err := wlog.Redo(ctx, rd, dev, opt)
	if err != nil {
		return errors.Wrapf(err, "%s", in)
	}
	fmt.Fprint(stdout, st.String())
	return nil
}
