package main

import (
	"bytes"
	"context"
	"log/slog"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pkg/errors"
	"golang.org/x/sys/unix"

	"github.com/walb-go/walb/walb"
)

// The device suite's child operations write one pattern to the data device
// file, either directly (rawio) or through a walb.Device over it and a log
// device file (devio). Both time the same span: the first write to the end
// of the final fdatasync or Flush.

func init() {
	childOps["rawio"] = opRawIO // PATTERN PATH BYTES SEED SYNC STATS
	childOps["devio"] = opDevIO // PATTERN LDEV DDEV BYTES SEED OPTIONS STATS
}

const (
	seqChunk  = 1 << 20 // each sequential write
	randBlock = 4096    // each random write, at a multiple of it
	randDepth = 32      // random writers in flight (goroutines)
	devPBS    = 4096    // physical block size of the suites' walb devices
)

// writeFunc writes p at off.
type writeFunc func(p []byte, off int64) error

// seqBuffer is the content of every sequential write of a run with seed.
func seqBuffer(seed uint64) []byte {
	b := make([]byte, seqChunk)
	_, _ = rand.NewChaCha8(seedBytes(seed)).Read(b) // never fails
	return b
}

// writeSeq writes total bytes of buf in order from offset 0, wrapping at
// span (a multiple of len(buf)).
func writeSeq(ctx context.Context, w writeFunc, buf []byte, span, total int64) error {
	for off := int64(0); off < total; off += int64(len(buf)) {
		if off%(256<<20) == 0 && ctx.Err() != nil {
			return ctx.Err()
		}
		if err := w(buf[:min(int64(len(buf)), total-off)], off%span); err != nil {
			return err
		}
	}
	return nil
}

// writeRandom writes total bytes in randBlock writes at uniformly random
// aligned offsets below span, from randDepth goroutines, each with its own
// random generator and block content derived from seed.
func writeRandom(ctx context.Context, w writeFunc, seed uint64, span, total int64) error {
	ios := total / randBlock
	blocks := span / randBlock
	var (
		wg    sync.WaitGroup
		once  sync.Once
		first error
	)
	for g := range int64(randDepth) {
		n := ios / randDepth
		if g < ios%randDepth {
			n++
		}
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(seed, uint64(g)))
			buf := make([]byte, randBlock)
			_, _ = rand.NewChaCha8(seedBytes(seed*randDepth + uint64(g))).Read(buf)
			for i := range n {
				if i%4096 == 0 && ctx.Err() != nil {
					once.Do(func() { first = ctx.Err() })
					return
				}
				if err := w(buf, rng.Int64N(blocks)*randBlock); err != nil {
					once.Do(func() { first = err })
					return
				}
			}
		})
	}
	wg.Wait()
	return first
}

// writePattern runs pattern "seq" or "rand" through w.
func writePattern(ctx context.Context, pattern string, w writeFunc, seed uint64, span, total int64) error {
	switch pattern {
	case "seq":
		return writeSeq(ctx, w, seqBuffer(seed), span/seqChunk*seqChunk, total)
	case "rand":
		return writeRandom(ctx, w, seed, span, total)
	}
	return errors.Errorf("unknown pattern %q (want seq or rand)", pattern)
}

func parseCount(name, s string) (int64, error) {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return 0, errors.Errorf("bad %s %q", name, s)
	}
	return n, nil
}

// opRawIO writes PATTERN to the existing file PATH with pwrite, then
// fdatasyncs it if SYNC is "sync" ("nosync": the page cache baseline).
func opRawIO(ctx context.Context, args []string) (time.Duration, error) {
	if err := wantArgs(args, 6, "PATTERN PATH BYTES SEED SYNC STATS"); err != nil {
		return 0, err
	}
	pattern, path, syncMode, stats := args[0], args[1], args[4], args[5]
	total, err := parseCount("byte count", args[2])
	if err != nil {
		return 0, err
	}
	seed, err := parseCount("seed", args[3])
	if err != nil {
		return 0, err
	}
	if syncMode != "sync" && syncMode != "nosync" {
		return 0, errors.Errorf("bad sync mode %q (want sync or nosync)", syncMode)
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	span, err := fileSize(path)
	if err != nil {
		return 0, err
	}
	w := func(p []byte, off int64) error {
		_, err := f.WriteAt(p, off)
		return err
	}
	watch := startCPUWatch()
	start := time.Now()
	if err := writePattern(ctx, pattern, w, uint64(seed), span, total); err != nil {
		return 0, err
	}
	wrote := time.Since(start)
	if syncMode == "sync" {
		if err := unix.Fdatasync(int(f.Fd())); err != nil {
			return 0, errors.Wrap(err, "fdatasync")
		}
	}
	d := time.Since(start)
	st := childStats{"write_ns": int64(wrote), "sync_ns": int64(d - wrote)}
	st.addOthers(watch, 0)
	return d, st.appendTo(stats)
}

// opDevIO opens the walb device LDEV+DDEV with OPTIONS, writes PATTERN
// through it and flushes it. Close, which applies what is left and takes a
// checkpoint (fdatasync of the data device), is timed apart.
func opDevIO(ctx context.Context, args []string) (time.Duration, error) {
	if err := wantArgs(args, 7, "PATTERN LDEV DDEV BYTES SEED OPTIONS STATS"); err != nil {
		return 0, err
	}
	pattern, ldev, ddev, stats := args[0], args[1], args[2], args[6]
	total, err := parseCount("byte count", args[3])
	if err != nil {
		return 0, err
	}
	seed, err := parseCount("seed", args[4])
	if err != nil {
		return 0, err
	}
	opts, err := parseDevOptions(args[5])
	if err != nil {
		return 0, err
	}
	dev, err := walb.Open(ctx, ldev, ddev, opts.walb(childLogger()))
	if err != nil {
		return 0, err
	}
	before := dev.Lsids()
	w := func(p []byte, off int64) error { return dev.WriteContext(ctx, p, off, false) }
	watch := startCPUWatch()
	start := time.Now()
	err = writePattern(ctx, pattern, w, uint64(seed), dev.Size(), total)
	wrote := time.Since(start)
	if err == nil {
		err = dev.FlushContext(ctx)
	}
	d := time.Since(start)
	st := childStats{}
	st.addOthers(watch, 0)
	after := dev.Lsids()
	closing := time.Now()
	if e := dev.Close(); err == nil {
		err = e
	}
	if err != nil {
		return 0, err
	}
	st["write_ns"] = int64(wrote)
	st["sync_ns"] = int64(d - wrote)
	st["close_ns"] = int64(time.Since(closing))
	st["log_bytes"] = int64(after.Latest-before.Latest) * int64(dev.PBS())
	return d, st.appendTo(stats)
}

// childLogger reports the device's and server's warnings on the child's
// stderr, which the parent shows when the child fails.
func childLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// devOptions are the walb.Options the device suite varies. Zero fields
// keep walb's defaults.
type devOptions struct {
	flushMB, pendingMB, packKB uint32
	flushInterval, gcDelay     time.Duration
	gcDepth                    int
}

// devOptionKeys name the options in the order String lists them, with
// the walb.Options field each sets.
var devOptionKeys = []struct{ key, field string }{
	{"flushmb", "LogFlushIntervalMB"},
	{"flushint", "LogFlushInterval"},
	{"pendingmb", "MaxPendingMB"},
	{"packkb", "MaxLogpackKB"},
	{"gcdelay", "GroupCommitDelay"},
	{"gcdepth", "GroupCommitDepth"},
}

const devOptionsUsage = "flushmb=N (LogFlushIntervalMB), flushint=DUR (LogFlushInterval), pendingmb=N (MaxPendingMB), " +
	"packkb=N (MaxLogpackKB), gcdelay=DUR (GroupCommitDelay), gcdepth=N (GroupCommitDepth)"

// defaultSweep changes one option at a time, around walb's defaults
// (flushmb 4, pendingmb 64, packkb 1024, no group commit delay).
const defaultSweep = "flushmb=1 flushmb=16 flushmb=64 pendingmb=256 packkb=256 packkb=4096 gcdelay=50us gcdelay=500us"

// parseDevOptions parses "default" or comma-separated key=value pairs.
func parseDevOptions(s string) (devOptions, error) {
	var o devOptions
	if s == "default" {
		return o, nil
	}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			return o, errors.Errorf("bench: device option %q: want key=value", kv)
		}
		var err error
		switch k {
		case "flushmb":
			o.flushMB, err = parsePositive32(v)
		case "pendingmb":
			o.pendingMB, err = parsePositive32(v)
		case "packkb":
			o.packKB, err = parsePositive32(v)
		case "gcdepth":
			var n uint32
			n, err = parsePositive32(v)
			o.gcDepth = int(n)
		case "flushint", "gcdelay":
			var d time.Duration
			if d, err = time.ParseDuration(v); err == nil && d <= 0 {
				err = errors.New("not positive")
			}
			if k == "flushint" {
				o.flushInterval = d
			} else {
				o.gcDelay = d
			}
		default:
			return o, errors.Errorf("bench: unknown device option %q (have %s)", k, devOptionsUsage)
		}
		if err != nil {
			return o, errors.Errorf("bench: device option %s: bad value %q", k, v)
		}
	}
	return o, nil
}

func parsePositive32(s string) (uint32, error) {
	n, err := strconv.ParseUint(s, 10, 32)
	if err == nil && n == 0 {
		err = errors.New("zero")
	}
	return uint32(n), err
}

// parseSweep parses the -devsweep list: space-separated option sets.
func parseSweep(s string) ([]devOptions, error) {
	if strings.TrimSpace(s) == "none" {
		return nil, nil
	}
	var sets []devOptions
	seen := map[string]bool{"default": true}
	for _, f := range strings.Fields(s) {
		o, err := parseDevOptions(f)
		if err != nil {
			return nil, err
		}
		if seen[o.String()] {
			continue
		}
		seen[o.String()] = true
		sets = append(sets, o)
	}
	return sets, nil
}

// values returns the set options by key.
func (o devOptions) values() map[string]string {
	m := map[string]string{}
	set := func(k string, ok bool, v string) {
		if ok {
			m[k] = v
		}
	}
	set("flushmb", o.flushMB > 0, strconv.FormatUint(uint64(o.flushMB), 10))
	set("flushint", o.flushInterval > 0, o.flushInterval.String())
	set("pendingmb", o.pendingMB > 0, strconv.FormatUint(uint64(o.pendingMB), 10))
	set("packkb", o.packKB > 0, strconv.FormatUint(uint64(o.packKB), 10))
	set("gcdelay", o.gcDelay > 0, o.gcDelay.String())
	set("gcdepth", o.gcDepth > 0, strconv.Itoa(o.gcDepth))
	return m
}

// String is the canonical form parseDevOptions reads back.
func (o devOptions) String() string {
	m := o.values()
	var parts []string
	for _, k := range devOptionKeys {
		if v, ok := m[k.key]; ok {
			parts = append(parts, k.key+"="+v)
		}
	}
	if len(parts) == 0 {
		return "default"
	}
	return strings.Join(parts, ",")
}

// fields names the walb.Options fields o sets.
func (o devOptions) fields() string {
	m := o.values()
	var names []string
	for _, k := range devOptionKeys {
		if _, ok := m[k.key]; ok {
			names = append(names, k.field)
		}
	}
	return strings.Join(names, "+")
}

// with returns o with the options p sets.
func (o devOptions) with(p devOptions) devOptions {
	if p.flushMB > 0 {
		o.flushMB = p.flushMB
	}
	if p.flushInterval > 0 {
		o.flushInterval = p.flushInterval
	}
	if p.pendingMB > 0 {
		o.pendingMB = p.pendingMB
	}
	if p.packKB > 0 {
		o.packKB = p.packKB
	}
	if p.gcDelay > 0 {
		o.gcDelay = p.gcDelay
	}
	if p.gcDepth > 0 {
		o.gcDepth = p.gcDepth
	}
	return o
}

func (o devOptions) walb(logger *slog.Logger) walb.Options {
	return walb.Options{
		LogFlushIntervalMB: o.flushMB,
		LogFlushInterval:   o.flushInterval,
		MaxPendingMB:       o.pendingMB,
		MaxLogpackKB:       o.packKB,
		GroupCommitDelay:   o.gcDelay,
		GroupCommitDepth:   o.gcDepth,
		Logger:             logger,
	}
}

// zeroFile makes path a file of size zero bytes, written rather than
// sparse so that later writes overwrite allocated blocks, as on a block
// device, and synced so that its writeback is over before measurements.
// An existing file is overwritten in place, keeping its blocks.
//
// The zeros go out in 4 KiB writes, so that the file stays in the page
// cache in 4 KiB folios. Since Linux 6.16, ext4 caches files in large
// folios sized by the writes that create them, and a 4 KiB write into a
// large folio costs tens of microseconds of CPU (ext4_block_write_begin
// walks every block of the folio): random 4 KiB writes, raw or through
// the device (its applier and its small log packs alike), would measure
// that instead of themselves. Sequential writes into small folios cost
// about the same as into large ones. The page cache is never dropped
// during the suites: on a VM, pages given back to the host make the next
// writes into them pay for host page faults.
func zeroFile(path string, size int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE, 0o644)
	if err != nil {
		return errors.Wrap(err, "bench")
	}
	defer f.Close()
	if err := f.Truncate(size); err != nil {
		return errors.Wrap(err, "bench: zero fill")
	}
	var buf [4096]byte
	for off := int64(0); off < size; off += int64(len(buf)) {
		if _, err := f.WriteAt(buf[:min(int64(len(buf)), size-off)], off); err != nil {
			return errors.Wrap(err, "bench: zero fill")
		}
	}
	if err := unix.Fdatasync(int(f.Fd())); err != nil {
		return errors.Wrap(err, "bench: zero fill: fdatasync")
	}
	return errors.Wrap(f.Close(), "bench")
}

// checkSeq verifies that the first total bytes of path (wrapping at its
// size) hold the sequential pattern of seed.
func checkSeq(path string, seed uint64, total int64) error {
	f, err := os.Open(path)
	if err != nil {
		return errors.Wrap(err, "bench: verify")
	}
	defer f.Close()
	size, err := fileSize(path)
	if err != nil {
		return err
	}
	want := seqBuffer(seed)
	got := make([]byte, len(want))
	for off := int64(0); off < min(total, size/seqChunk*seqChunk); off += seqChunk {
		n := min(int64(seqChunk), total-off)
		if _, err := f.ReadAt(got[:n], off); err != nil {
			return errors.Wrap(err, "bench: verify")
		}
		if !bytes.Equal(got[:n], want[:n]) {
			return errors.Errorf("bench: %s: the data at offset %d is not what was written", path, off)
		}
	}
	return nil
}

// sameContent reports an error unless files a and b are byte-identical.
func sameContent(a, b string) error {
	fa, err := os.Open(a)
	if err != nil {
		return errors.Wrap(err, "bench: verify")
	}
	defer fa.Close()
	fb, err := os.Open(b)
	if err != nil {
		return errors.Wrap(err, "bench: verify")
	}
	defer fb.Close()
	sa, err := fileSize(a)
	if err != nil {
		return err
	}
	sb, err := fileSize(b)
	if err != nil {
		return err
	}
	if sa != sb {
		return errors.Errorf("bench: %s has %d bytes, %s %d", a, sa, b, sb)
	}
	ba, bb := make([]byte, 4<<20), make([]byte, 4<<20)
	for off := int64(0); off < sa; off += int64(len(ba)) {
		n := min(int64(len(ba)), sa-off)
		if _, err := fa.ReadAt(ba[:n], off); err != nil {
			return errors.Wrap(err, "bench: verify")
		}
		if _, err := fb.ReadAt(bb[:n], off); err != nil {
			return errors.Wrap(err, "bench: verify")
		}
		if !bytes.Equal(ba[:n], bb[:n]) {
			return errors.Errorf("bench: %s and %s differ in [%d, %d)", a, b, off, off+n)
		}
	}
	return nil
}
