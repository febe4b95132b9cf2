package main

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"github.com/pkg/errors"
	"golang.org/x/sys/unix"
)

// childFlag is the hidden first argument that makes the binary run one
// operation (see childMain) instead of the harness.
const childFlag = "-op"

// innerPrefix starts the line on which a child reports how long its
// operation took by its own clock.
const innerPrefix = "bench-inner-ns "

// sample is one run of an operation in a child process.
type sample struct {
	wall   time.Duration // around the child: exec, runtime start-up and the operation
	inner  time.Duration // the operation alone, by the child's clock
	cpu    time.Duration // user + system CPU time of the child
	maxRSS int64         // peak resident set of the child, bytes
}

// runChild runs the operation args (op name first) in a fresh process of
// this same binary and measures it. A fresh process per operation makes the
// peak RSS that operation's own and gives every run a cold heap.
func runChild(ctx context.Context, args []string) (sample, error) {
	exe, err := os.Executable()
	if err != nil {
		return sample{}, errors.Wrap(err, "bench: find own executable")
	}
	cmd := exec.CommandContext(ctx, exe, append([]string{childFlag}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err = cmd.Run()
	wall := time.Since(start)
	if err != nil {
		return sample{}, errors.Wrapf(err, "bench: %s: %s", strings.Join(args, " "), strings.TrimSpace(stderr.String()))
	}
	s := sample{wall: wall}
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		s.maxRSS = int64(ru.Maxrss) * 1024 // KiB on Linux
		s.cpu = time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	sc := bufio.NewScanner(&stdout)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), innerPrefix); ok {
			ns, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				return s, errors.Wrapf(err, "bench: %s: bad timing line", args[0])
			}
			s.inner = time.Duration(ns)
		}
	}
	if s.inner == 0 {
		return s, errors.Errorf("bench: %s: the child reported no timing", args[0])
	}
	return s, nil
}

// result is what the report prints for one operation.
type result struct {
	label   string
	bytes   int64 // counted bytes per run
	inner   bool  // rate from the child's own clock instead of the wall clock
	samples []sample
	note    string
}

func (r result) duration(s sample) time.Duration {
	if r.inner {
		return s.inner
	}
	return s.wall
}

func (r result) durations() []time.Duration {
	d := make([]time.Duration, len(r.samples))
	for i, s := range r.samples {
		d[i] = r.duration(s)
	}
	slices.Sort(d)
	return d
}

// bestSample is the fastest run.
func (r result) bestSample() sample {
	return slices.MinFunc(r.samples, func(a, b sample) int { return cmp.Compare(r.duration(a), r.duration(b)) })
}

// best and median are in MB/s (1e6 bytes per second).
func (r result) best() float64 { return rate(r.bytes, r.durations()[0]) }

func (r result) median() float64 {
	d := r.durations()
	n := len(d)
	if n%2 == 1 {
		return rate(r.bytes, d[n/2])
	}
	return rate(r.bytes, (d[n/2-1]+d[n/2])/2)
}

func (r result) peakRSS() int64 {
	var m int64
	for _, s := range r.samples {
		m = max(m, s.maxRSS)
	}
	return m
}

func rate(n int64, d time.Duration) float64 { return float64(n) / d.Seconds() / 1e6 }

// dropCache asks the kernel to forget path's clean pages, so the next read
// comes from the device; it needs no privileges, unlike drop_caches.
func dropCache(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return errors.Wrap(err, "bench: drop cache")
	}
	defer f.Close()
	if err := unix.Fdatasync(int(f.Fd())); err != nil {
		return errors.Wrap(err, "bench: drop cache: fdatasync")
	}
	return errors.Wrap(unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED), "bench: drop cache: fadvise")
}

// residentFraction is the share of path's pages in the page cache.
func residentFraction(path string) (float64, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, errors.Wrap(err, "bench: mincore")
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || st.Size() == 0 {
		return 0, errors.Wrap(err, "bench: mincore: stat")
	}
	m, err := unix.Mmap(int(f.Fd()), 0, int(st.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return 0, errors.Wrap(err, "bench: mincore: mmap")
	}
	defer unix.Munmap(m)
	page := os.Getpagesize()
	vec := make([]byte, (len(m)+page-1)/page)
	// x/sys/unix has no mincore wrapper.
	if _, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(&m[0])), uintptr(len(m)), uintptr(unsafe.Pointer(&vec[0]))); e != 0 {
		return 0, errors.Wrap(e, "bench: mincore")
	}
	in := 0
	for _, v := range vec {
		in += int(v & 1)
	}
	return float64(in) / float64(len(vec)), nil
}
