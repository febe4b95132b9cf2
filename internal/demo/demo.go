// Package demo runs the SDK's demonstration: a WalB device is written to
// while its log is extracted continuously, and every snapshot taken on the
// way is rebuilt from a base image plus diffs and verified bit for bit.
// cmd/walb-demo is its front end.
package demo

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"time"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/walb"
	"github.com/walb-go/walb/wdiff"
)

// Options sizes the demo.
type Options struct {
	Dir         string // work directory (a temp dir when empty; removed afterwards)
	DeviceMiB   int    // data device size
	LogMiB      int    // log device size
	Snapshots   int    // snapshots to take and verify
	WritesPerGo int    // writes between snapshots
	Seed        uint64
}

// DefaultOptions is what cmd/walb-demo runs.
var DefaultOptions = Options{DeviceMiB: 64, LogMiB: 32, Snapshots: 5, WritesPerGo: 400, Seed: 1}

// Run executes the demo, reporting to out.
func Run(ctx context.Context, out io.Writer, opt Options) error {
	dir := opt.Dir
	if dir == "" {
		d, err := os.MkdirTemp("", "walb-demo-*")
		if err != nil {
			return err
		}
		defer os.RemoveAll(d)
		dir = d
	}
	say := func(format string, args ...any) { fmt.Fprintf(out, format+"\n", args...) }
	ldev, ddev := filepath.Join(dir, "ldev.img"), filepath.Join(dir, "ddev.img")
	size := int64(opt.DeviceMiB) << 20
	if err := makeFile(ldev, int64(opt.LogMiB)<<20); err != nil {
		return err
	}
	if err := makeFile(ddev, size); err != nil {
		return err
	}
	sup, err := walb.FormatLogDevice(ldev, ddev, walb.FormatOptions{Name: "demo", PBS: 4096})
	if err != nil {
		return err
	}
	say("formatted log device: pbs %d, ring %d blocks, uuid %s", sup.PBS, sup.RingBufferSize, sup.UUID)
	dev, err := walb.Open(ctx, ldev, ddev, walb.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		return err
	}
	defer dev.Close()

	// The "archive": a base image (the device's initial, all-zero state)
	// and one wdiff per snapshot interval.
	base := filepath.Join(dir, "base.img")
	if err := makeFile(base, size); err != nil {
		return err
	}
	var diffs []string
	var snapSums [][32]byte
	rng := rand.New(rand.NewPCG(opt.Seed, 7))
	buf := make([]byte, 64<<10)
	lsid := dev.Lsids().Oldest
	start := time.Now()
	var written int64
	for s := 1; s <= opt.Snapshots; s++ {
		for i := 0; i < opt.WritesPerGo; i++ {
			n := (1 + rng.IntN(16)) * 4096
			off := int64(rng.IntN(int(size/4096)-16)) * 4096
			for j := 0; j < n; j += 8 {
				buf[j] = byte(rng.Uint32())
			}
			if _, err := dev.WriteAt(buf[:n], off); err != nil {
				return err
			}
			written += int64(n)
		}
		if err := dev.Flush(); err != nil {
			return err
		}
		// Snapshot: the lsid up to which the log is durable.
		end := dev.Lsids().Permanent
		sum, err := imageSum(dev, size)
		if err != nil {
			return err
		}
		snapSums = append(snapSums, sum)
		// Extract [lsid, end) as a wlog and turn it into a wdiff.
		var wl bytes.Buffer
		if _, err := dev.ReadLog(ctx, lsid, end, &wl); err != nil {
			return errors.Wrap(err, "extract log")
		}
		diffPath := filepath.Join(dir, fmt.Sprintf("snap%02d.wdiff", s))
		f, err := os.Create(diffPath)
		if err != nil {
			return err
		}
		st, err := wdiff.ConvertWlogs(ctx, []wdiff.WlogInput{{Name: "log", R: bytes.NewReader(wl.Bytes())}}, f,
			wdiff.ConvertOptions{MaxIOBlocks: wdiff.DefaultMaxIOBlocks, Compression: wdiff.DefaultCompression})
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
		// Log space can be released up to what the data device holds
		// durably (prev_written, advanced by a checkpoint).
		if err := dev.TakeCheckpoint(); err != nil {
			return err
		}
		if err := dev.SetOldestLsid(min(end, dev.Lsids().PrevWritten)); err != nil {
			return err
		}
		diffs = append(diffs, diffPath)
		say("snapshot %d: lsid [%d, %d) wlog %d KiB -> wdiff %d records (%d KiB data), log space released",
			s, lsid, end, wl.Len()>>10, st.Records, st.NormalLB/2)
		lsid = end
	}
	say("wrote %d MiB through the device in %v", written>>20, time.Since(start).Round(time.Millisecond))

	// Restore every snapshot: base + diffs[0..s] applied in order.
	for s := range diffs {
		img := filepath.Join(dir, fmt.Sprintf("restore%02d.img", s+1))
		if err := copyFile(base, img); err != nil {
			return err
		}
		for _, d := range diffs[:s+1] {
			if err := applyDiff(ctx, d, img); err != nil {
				return err
			}
		}
		f, err := os.Open(img)
		if err != nil {
			return err
		}
		sum, err := readerSum(f, size)
		f.Close()
		if err != nil {
			return err
		}
		if sum != snapSums[s] {
			return errors.Errorf("snapshot %d restored with sha256 %x, device had %x", s+1, sum, snapSums[s])
		}
		say("restored snapshot %d from base + %d diffs: sha256 %x... matches the device", s+1, s+1, sum[:8])
		os.Remove(img)
	}
	say("demo complete: %d snapshots restored bit-exact", len(diffs))
	return nil
}

func makeFile(path string, size int64) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

func applyDiff(ctx context.Context, diff, img string) error {
	d, err := wdiff.Open(diff)
	if err != nil {
		return err
	}
	defer d.Close()
	f, err := os.OpenFile(img, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	if _, err := wdiff.Apply(ctx, d, f, wdiff.ApplyOptions{ZeroDiscard: true}); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func imageSum(r io.ReaderAt, size int64) ([32]byte, error) { return readerSum(r, size) }

func readerSum(r io.ReaderAt, size int64) ([32]byte, error) {
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(r, 0, size)); err != nil {
		return [32]byte{}, err
	}
	var s [32]byte
	copy(s[:], h.Sum(nil))
	return s, nil
}
