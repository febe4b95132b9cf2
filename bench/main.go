package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pkg/errors"
	"golang.org/x/sys/unix"

	"github.com/walb-go/walb/internal/cli"
	"github.com/walb-go/walb/wdiff"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == childFlag {
		os.Exit(childMain(os.Args[2:]))
	}
	cfg, err := parseFlags(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if _, err := run(ctx, cfg, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, err)
		stop()
		os.Exit(1)
	}
}

// Suites, in the order they run.
var allSuites = []string{"baselines", "convert", "merge", "apply", "device", "nbd", "rpo", "hashbkp"}

// config is the parsed command line.
type config struct {
	size    int64 // bytes of normal IO data per workload log
	device  int64 // size of the simulated device (and of the apply image)
	suites  map[string]bool
	workers int           // compression goroutines (the tools' -cmpr CPUS)
	count   int           // runs per operation
	dir     string        // parent of the work directory
	keep    bool          // keep the work directory
	cold    bool          // drop the inputs' page cache before every run
	profile string        // directory for the children's CPU profiles
	settle  time.Duration // pause after the sync before every run

	devSize  int64        // bytes written by every device suite run
	ldevSize int64        // log device of the device and nbd suites
	nbdSize  int64        // bytes copied by every nbd suite run
	hashSize int64        // device size of the hashbkp suite
	plainFS  bool         // hashbkp: archive images in the work directory, not on XFS
	imgDir   string       // hashbkp: where the archives' image file system lives ("": the work directory)
	sweep    []devOptions // device options tried besides the defaults
}

func parseFlags(args []string, stderr io.Writer) (config, error) {
	cfg := config{suites: map[string]bool{}}
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	fs.SetOutput(stderr)
	size := fs.String("size", "768M", "normal IO data per workload log (K, M, G suffixes; a multiple of 1 MiB)")
	quick := fs.Bool("quick", false, "a quick run: -size 64M -devsize 256M -nbdsize 256M")
	device := fs.String("device", "4G", "size of the simulated device, of the apply image and of the device suite's data device")
	devSize := fs.String("devsize", "2G", "data written by every run of the device suite")
	ldev := fs.String("ldev", "1G", "log device size of the device and nbd suites")
	nbdSize := fs.String("nbdsize", "1G", "data copied by every run of the nbd suite (and its export size)")
	hashSize := fs.String("hashsize", "2G", "device size of the hashbkp suite (hash-bkp and replicate)")
	fs.BoolVar(&cfg.plainFS, "plainfs", false, "hashbkp: keep the archives' images in the work directory (no loop-mounted XFS, so no reflink)")
	fs.StringVar(&cfg.imgDir, "imagesdir", "", "hashbkp: put the archives' images (their XFS backing file, or with -plainfs the images) in this directory, "+
		"e.g. on another disk as on a separate archive host (/dev/shm: a disk faster than the device); default: the work directory")
	sweep := fs.String("devsweep", defaultSweep, "device options to try besides the defaults: space-separated sets of comma-separated "+
		devOptionsUsage+" (\"none\": no sweep)")
	suites := fs.String("suites", strings.Join(allSuites, ","), "comma-separated suites to run: "+strings.Join(allSuites, ", "))
	fs.IntVar(&cfg.workers, "workers", runtime.GOMAXPROCS(0), "compression goroutines for convert and merge")
	fs.IntVar(&cfg.count, "count", 1, "runs of each operation; the report gives the best and the median")
	fs.StringVar(&cfg.dir, "dir", os.TempDir(), "directory for the work files (a fresh subdirectory is made)")
	fs.BoolVar(&cfg.keep, "keep", false, "keep the work files")
	fs.BoolVar(&cfg.cold, "cold", false, "drop each operation's input files from the page cache before every run")
	fs.DurationVar(&cfg.settle, "settle", 2*time.Second, "before every run, sync and pause this long so writeback of earlier steps settles (0: neither)")
	fs.StringVar(&cfg.profile, "cpuprofile", "", "write a CPU profile of every measured operation into this directory")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: go run ./bench [flags]\nMeasures wlog-to-wdiff, wdiff-merge and wdiff-redo against memmove and raw file I/O.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, errors.Errorf("bench: unexpected argument %q", fs.Arg(0))
	}
	if *quick {
		*size, *devSize, *nbdSize, *hashSize = "64M", "256M", "256M", "256M"
	}
	var err error
	for _, f := range []struct {
		name string
		val  string
		dst  *int64
	}{{"-size", *size, &cfg.size}, {"-device", *device, &cfg.device}, {"-devsize", *devSize, &cfg.devSize},
		{"-ldev", *ldev, &cfg.ldevSize}, {"-nbdsize", *nbdSize, &cfg.nbdSize}, {"-hashsize", *hashSize, &cfg.hashSize}} {
		if *f.dst, err = parseMiB(f.name, f.val); err != nil {
			return cfg, err
		}
	}
	if cfg.sweep, err = parseSweep(*sweep); err != nil {
		return cfg, err
	}
	for _, s := range strings.Split(*suites, ",") {
		s = strings.TrimSpace(s)
		if !contains(allSuites, s) {
			return cfg, errors.Errorf("bench: unknown suite %q (have %s)", s, strings.Join(allSuites, ", "))
		}
		cfg.suites[s] = true
	}
	if cfg.workers < 1 || cfg.count < 1 {
		return cfg, errors.New("bench: -workers and -count must be at least 1")
	}
	return cfg, nil
}

func parseMiB(name, s string) (int64, error) {
	n, err := cli.ParseSize(s)
	if err != nil || n == 0 || n%(1<<20) != 0 || n > 1<<50 {
		return 0, errors.Errorf("bench: %s %s: want a positive multiple of 1 MiB", name, s)
	}
	return int64(n), nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// bench is one run of the harness.
type bench struct {
	cfg      config
	out, log io.Writer
	dir      string
	rawWrite float64           // best MB/s of the raw write baseline; 0 if not run
	results  map[string]result // by label
}

// codecs measured by the convert suite; snappy is walb-tools' default.
var convertCodecs = []string{"none", "snappy", "zstd"}

// run runs the selected suites, writes the report to out and progress to
// log, and returns the work directory (already removed unless cfg.keep).
func run(ctx context.Context, cfg config, out, log io.Writer) (string, error) {
	if err := os.MkdirAll(cfg.dir, 0o755); err != nil {
		return "", errors.Wrap(err, "bench")
	}
	dir, err := os.MkdirTemp(cfg.dir, "walb-bench-")
	if err != nil {
		return "", errors.Wrap(err, "bench")
	}
	if cfg.keep {
		fmt.Fprintf(log, "work files kept in %s\n", dir)
	} else {
		defer os.RemoveAll(dir)
	}
	if cfg.profile != "" {
		if err := os.MkdirAll(cfg.profile, 0o755); err != nil {
			return dir, errors.Wrap(err, "bench")
		}
	}
	b := &bench{cfg: cfg, out: out, log: log, dir: dir, results: map[string]result{}}
	free, err := freeBytes(dir)
	if err != nil {
		return dir, err
	}
	if need := cfg.diskNeed(); free < need {
		return dir, errors.Errorf("bench: %s has %s free; the suites need about %s (use -dir or smaller sizes)",
			dir, mib(free), mib(need))
	}
	b.header(free)
	logs := map[string]logInfo{}
	if cfg.suites["convert"] || cfg.suites["apply"] {
		for i, w := range workloads {
			path := b.path(w.name + ".wlog")
			fmt.Fprintf(log, "generating %s\n", path)
			info, err := genLog(path, w, cfg.device, cfg.size, uint64(1+i), 0)
			if err != nil {
				return dir, err
			}
			logs[w.name] = info
			fmt.Fprintf(out, "  %s\n", info)
		}
	}
	if cfg.suites["baselines"] {
		if err := b.baselines(ctx); err != nil {
			return dir, err
		}
	}
	if cfg.suites["convert"] {
		for _, w := range workloads {
			for _, codec := range convertCodecs {
				if err := b.convert(ctx, logs[w.name], w, codec); err != nil {
					return dir, err
				}
			}
		}
	}
	if cfg.suites["merge"] {
		for i, w := range workloads {
			if err := b.merge(ctx, w, uint64(100*(i+1))); err != nil {
				return dir, err
			}
		}
	}
	if cfg.suites["apply"] {
		for _, w := range workloads {
			if err := b.apply(ctx, logs[w.name], w); err != nil {
				return dir, err
			}
		}
	}
	if cfg.suites["device"] {
		if err := b.device(ctx); err != nil {
			return dir, err
		}
	}
	if cfg.suites["rpo"] {
		if err := b.rpo(ctx); err != nil {
			return dir, err
		}
	}
	if cfg.suites["nbd"] {
		if err := b.nbd(ctx); err != nil {
			return dir, err
		}
	}
	if cfg.suites["hashbkp"] {
		if err := b.hashRepl(ctx); err != nil {
			return dir, err
		}
	}
	b.targets()
	return dir, nil
}

// diskNeed is about the most the selected suites hold on disk at once.
func (c config) diskNeed() int64 {
	var need int64
	if c.suites["baselines"] || c.suites["convert"] || c.suites["merge"] || c.suites["apply"] {
		need = 7 * c.size
	}
	if c.suites["device"] {
		need = max(need, c.device+c.ldevSize)
	}
	if c.suites["nbd"] {
		need = max(need, 3*c.nbdSize+c.ldevSize)
	}
	if c.suites["hashbkp"] {
		// device, log, a0's base and restores, a1's copy
		need = max(need, 4*c.hashSize+512<<20)
	}
	return need
}

func (b *bench) path(name string) string { return filepath.Join(b.dir, name) }

func (b *bench) cmpr(codec string) string { return codec + ":0:" + strconv.Itoa(b.cfg.workers) }

// op is one operation to measure.
type op struct {
	label   string
	args    []string // child operation and its arguments
	bytes   int64    // counted per run
	inner   bool     // rate from the child's own clock
	inputs  []string // dropped from the page cache before each run with -cold
	prepare func() error
}

// measure runs o cfg.count times, each in a child process.
func (b *bench) measure(ctx context.Context, o op) (result, error) {
	r := result{label: o.label, bytes: o.bytes, inner: o.inner}
	for i := range b.cfg.count {
		fmt.Fprintf(b.log, "measuring %s (run %d of %d)\n", o.label, i+1, b.cfg.count)
		if o.prepare != nil {
			if err := o.prepare(); err != nil {
				return r, err
			}
		}
		if b.cfg.settle > 0 {
			// A VM's disk can swing from 100 MB/s to 1 GB/s when a run
			// starts while earlier writes are still draining.
			unix.Sync()
			select {
			case <-ctx.Done():
				return r, ctx.Err()
			case <-time.After(b.cfg.settle):
			}
		}
		if b.cfg.cold {
			for _, in := range o.inputs {
				if err := dropCache(in); err != nil {
					return r, err
				}
			}
		}
		args := o.args
		if b.cfg.profile != "" {
			name := strings.ReplaceAll(o.label, " ", "_") + ".pprof"
			args = append([]string{args[0], "-cpuprofile", filepath.Join(b.cfg.profile, name)}, args[1:]...)
		}
		s, err := runChild(ctx, args)
		if err != nil {
			return r, err
		}
		r.samples = append(r.samples, s)
	}
	return r, nil
}

// runTool runs a walb tool in a child process outside any measurement.
func (b *bench) runTool(ctx context.Context, tool string, args ...string) error {
	_, err := runChild(ctx, append([]string{"tool", tool}, args...))
	return err
}

func (b *bench) baselines(ctx context.Context) error {
	moved := max(b.cfg.size, 256<<20)
	r, err := b.measure(ctx, op{label: "baseline memmove", args: []string{"memmove", strconv.FormatInt(moved, 10)}, bytes: moved, inner: true})
	if err != nil {
		return err
	}
	r.note = fmt.Sprintf("(copy %s through %d MiB buffers; timed inside the child)", mib(moved), memmoveBuf>>20)
	b.emit(r)

	raw := b.path("raw.dat")
	size := strconv.FormatInt(b.cfg.size, 10)
	if r, err = b.measure(ctx, op{label: "baseline raw file write", args: []string{"write", raw, size}, bytes: b.cfg.size}); err != nil {
		return err
	}
	r.note = fmt.Sprintf("(%s sequentially in 1 MiB writes to a new file in the work dir, fdatasync at end)", mib(b.cfg.size))
	b.rawWrite = r.best()
	b.emit(r)

	var resident float64
	cold := op{label: "baseline raw file read (cold)", args: []string{"read", raw}, bytes: b.cfg.size, prepare: func() error {
		if err := dropCache(raw); err != nil {
			return err
		}
		resident, err = residentFraction(raw)
		return err
	}}
	if r, err = b.measure(ctx, cold); err != nil {
		return err
	}
	r.note = fmt.Sprintf("(after the write; page cache dropped with fadvise(DONTNEED): %.1f%% resident before the read)", 100*resident)
	b.emit(r)

	warm := op{label: "baseline raw file read (warm)", args: []string{"read", raw}, bytes: b.cfg.size, prepare: func() error {
		resident, err = residentFraction(raw)
		return err
	}}
	if r, err = b.measure(ctx, warm); err != nil {
		return err
	}
	r.note = fmt.Sprintf("(again: %.1f%% resident before the read)", 100*resident)
	b.emit(r)
	return b.remove(raw)
}

func (b *bench) convert(ctx context.Context, log logInfo, w workload, codec string) error {
	out := b.path(w.name + "." + codec + ".wdiff")
	r, err := b.measure(ctx, op{
		label:  "convert " + w.name + " " + codec,
		args:   []string{"tool", "wlog-to-wdiff", "-cmpr", b.cmpr(codec), "-i", log.path, "-o", out},
		bytes:  log.fileBytes,
		inputs: []string{log.path},
	})
	if err != nil {
		return err
	}
	n, err := fileSize(out)
	if err != nil {
		return err
	}
	r.note = fmt.Sprintf("wlog %s -> wdiff %s", mb(log.fileBytes), mb(n))
	b.emit(r)
	if codec == "snappy" { // apply's input
		return nil
	}
	return b.remove(out)
}

// merge makes four lsid-contiguous logs of a quarter of the size each,
// converts each to a snappy wdiff, then measures merging the four.
func (b *bench) merge(ctx context.Context, w workload, seed uint64) error {
	var ins []string
	var counted, stored int64
	lsid := uint64(0)
	for i := range 4 {
		path := b.path(fmt.Sprintf("%s.merge%d.wlog", w.name, i))
		fmt.Fprintf(b.log, "generating %s\n", path)
		info, err := genLog(path, w, b.cfg.device, b.cfg.size/4, seed+uint64(i), lsid)
		if err != nil {
			return err
		}
		lsid = info.endLsid
		wd := b.path(fmt.Sprintf("%s.merge%d.wdiff", w.name, i))
		if err := b.runTool(ctx, "wlog-to-wdiff", "-cmpr", b.cmpr("snappy"), "-i", path, "-o", wd); err != nil {
			return err
		}
		if err := b.remove(path); err != nil {
			return err
		}
		n, err := normalBytes(wd)
		if err != nil {
			return err
		}
		sz, err := fileSize(wd)
		if err != nil {
			return err
		}
		counted += n
		stored += sz
		ins = append(ins, wd)
	}
	out := b.path(w.name + ".merged.wdiff")
	r, err := b.measure(ctx, op{
		label:  "merge " + w.name + " 4 wdiffs snappy",
		args:   append(append([]string{"tool", "wdiff-merge", "-cmpr", b.cmpr("snappy"), "-i"}, ins...), "-o", out),
		bytes:  counted,
		inputs: ins,
	})
	if err != nil {
		return err
	}
	n, err := fileSize(out)
	if err != nil {
		return err
	}
	r.note = fmt.Sprintf("4 x %s logs; records %s (stored %s) -> %s", mib(b.cfg.size/4), mb(counted), mb(stored), mb(n))
	b.emit(r)
	for _, in := range append(ins, out) {
		if err := b.remove(in); err != nil {
			return err
		}
	}
	return nil
}

// apply measures wdiff-redo of the snappy wdiff of log onto a new sparse
// image. Discards are written as zeros (-z), so the image must equal the
// log replayed with wlog-redo -z.
func (b *bench) apply(ctx context.Context, log logInfo, w workload) error {
	wd := b.path(w.name + ".snappy.wdiff")
	if _, err := os.Stat(wd); err != nil {
		if err := b.runTool(ctx, "wlog-to-wdiff", "-cmpr", b.cmpr("snappy"), "-i", log.path, "-o", wd); err != nil {
			return err
		}
	}
	counted, err := normalBytes(wd)
	if err != nil {
		return err
	}
	img := b.path(w.name + ".img")
	r, err := b.measure(ctx, op{
		label:   "apply " + w.name + " sorted",
		args:    []string{"tool", "wdiff-redo", "-z", "-i", wd, img},
		bytes:   counted,
		inputs:  []string{wd},
		prepare: func() error { return sparseFile(img, b.cfg.device) },
	})
	if err != nil {
		return err
	}
	r.note = fmt.Sprintf("snappy wdiff %s of records onto a new %s sparse image, -z, fsync at end", mb(counted), mib(b.cfg.device))
	b.emit(r)
	for _, p := range []string{wd, img, log.path} {
		if err := b.remove(p); err != nil {
			return err
		}
	}
	return nil
}

// remove deletes a work file unless the run keeps them.
func (b *bench) remove(path string) error {
	if b.cfg.keep {
		return nil
	}
	return errors.Wrap(os.Remove(path), "bench")
}

// normalBytes is the uncompressed size of a sorted wdiff's normal records,
// the bytes merge and apply rates count.
func normalBytes(path string) (int64, error) {
	f, err := wdiff.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sr := f.Sorted()
	if sr == nil {
		return 0, errors.Errorf("bench: %s is not a sorted wdiff", path)
	}
	var n int64
	for {
		rec, err := sr.NextRaw()
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return 0, err
		}
		if rec.IsNormal() {
			n += int64(rec.Size())
		}
	}
}

// sparseFile makes path a new, empty file of size bytes.
func sparseFile(path string, size int64) error {
	if err := os.Remove(path); err != nil && !os.IsNotExist(err) {
		return errors.Wrap(err, "bench")
	}
	f, err := os.Create(path)
	if err != nil {
		return errors.Wrap(err, "bench")
	}
	if err := f.Truncate(size); err != nil {
		f.Close()
		return errors.Wrap(err, "bench")
	}
	return errors.Wrap(f.Close(), "bench")
}

func fileSize(path string) (int64, error) {
	st, err := os.Stat(path)
	if err != nil {
		return 0, errors.Wrap(err, "bench")
	}
	return st.Size(), nil
}

func freeBytes(dir string) (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, errors.Wrap(err, "bench: statfs")
	}
	return int64(st.Bavail) * st.Bsize, nil
}
