package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/pkg/errors"
	"golang.org/x/sys/unix"
)

// childStats are figures a child reports besides its duration (phase
// times, request counts, the rusage of the processes it ran), by name.
// Names ending in _ns are durations.
type childStats map[string]int64

// dur returns the duration stored under name.
func (s childStats) dur(name string) time.Duration { return time.Duration(s[name]) }

// appendTo adds one run's figures to the stats file at path. A child
// appends, so the file holds one block per run, in the order of the
// result's samples.
func (s childStats) appendTo(path string) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return errors.Wrap(err, "bench: stats")
	}
	w := bufio.NewWriter(f)
	keys := make([]string, 0, len(s))
	for k := range s {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		fmt.Fprintf(w, "%s %d\n", k, s[k])
	}
	fmt.Fprintln(w, "end")
	if err := w.Flush(); err != nil {
		f.Close()
		return errors.Wrap(err, "bench: stats")
	}
	return errors.Wrap(f.Close(), "bench: stats")
}

// readStats reads every run's block from a stats file.
func readStats(path string) ([]childStats, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, errors.Wrap(err, "bench: stats")
	}
	defer f.Close()
	var runs []childStats
	cur := childStats{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if line == "end" {
			runs = append(runs, cur)
			cur = childStats{}
			continue
		}
		k, v, ok := strings.Cut(line, " ")
		n, err := strconv.ParseInt(v, 10, 64)
		if !ok || err != nil {
			return nil, errors.Errorf("bench: %s: bad stats line %q", path, line)
		}
		cur[k] = n
	}
	return runs, errors.Wrap(sc.Err(), "bench: stats")
}

// bestStats is the stats block of r's fastest run.
func bestStats(r result, runs []childStats) (childStats, error) {
	if len(runs) != len(r.samples) {
		return nil, errors.Errorf("bench: %s: %d stats blocks for %d runs", r.label, len(runs), len(r.samples))
	}
	best := 0
	for i, s := range r.samples {
		if r.duration(s) < r.duration(r.samples[best]) {
			best = i
		}
	}
	return runs[best], nil
}

// measureWithStats measures o, whose child appends its figures to stats,
// and returns the figures of the fastest run too.
func (b *bench) measureWithStats(ctx context.Context, o op, stats string) (result, childStats, error) {
	if err := os.Remove(stats); err != nil && !os.IsNotExist(err) {
		return result{}, nil, errors.Wrap(err, "bench: stats")
	}
	r, err := b.measure(ctx, o)
	if err != nil {
		return r, nil, err
	}
	runs, err := readStats(stats)
	if err != nil {
		return r, nil, err
	}
	st, err := bestStats(r, runs)
	if err != nil {
		return r, nil, err
	}
	return r, st, b.remove(stats)
}

// addSelfUsage records the calling process's own CPU time and peak RSS,
// without the processes it waited for (RUSAGE_SELF), under prefix.
func (s childStats) addSelfUsage(prefix string) error {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return errors.Wrap(err, "bench: getrusage")
	}
	s[prefix+"cpu_ns"] = ru.Utime.Nano() + ru.Stime.Nano()
	s[prefix+"rss"] = ru.Maxrss * 1024
	return nil
}

// addProcUsage records the CPU time and peak RSS of a process the child
// ran and waited for, under prefix.
func (s childStats) addProcUsage(prefix string, ps *os.ProcessState) {
	if ru, ok := ps.SysUsage().(*syscall.Rusage); ok {
		s[prefix+"cpu_ns"] = ru.Utime.Nano() + ru.Stime.Nano()
		s[prefix+"rss"] = ru.Maxrss * 1024
	}
}

// cpuWatch measures, over a span, the CPU time the rest of the machine
// used: all processes' busy time from /proc/stat (steal included) less
// this process's own. A shared machine shows there.
type cpuWatch struct{ busy, self time.Duration }

func startCPUWatch() cpuWatch {
	busy, _ := systemBusy() // 0 where /proc/stat is missing: the figure is then left out
	self, _ := selfCPU()
	return cpuWatch{busy: busy, self: self}
}

// others is the CPU time other processes used since w started, less
// exclude (time of processes this one ran, which are not others).
func (w cpuWatch) others(exclude time.Duration) (time.Duration, bool) {
	busy, err := systemBusy()
	if err != nil || w.busy == 0 {
		return 0, false
	}
	self, err := selfCPU()
	if err != nil {
		return 0, false
	}
	return max(0, busy-w.busy-(self-w.self)-exclude), true
}

// addOthers records w's figure under others_cpu_ns, if there is one.
func (s childStats) addOthers(w cpuWatch, exclude time.Duration) {
	if d, ok := w.others(exclude); ok {
		s["others_cpu_ns"] = int64(d)
	}
}

// clockTick is USER_HZ, the unit of /proc/stat: 100 on every Linux
// architecture Go supports.
const clockTick = 10 * time.Millisecond

// systemBusy sums the non-idle CPU time of the machine from /proc/stat.
func systemBusy() (time.Duration, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, errors.Wrap(err, "bench")
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0, errors.New("bench: /proc/stat: unexpected first line")
	}
	var busy int64
	// user nice system idle iowait irq softirq steal: all but idle and iowait.
	for _, i := range []int{1, 2, 3, 6, 7, 8} {
		n, err := strconv.ParseInt(f[i], 10, 64)
		if err != nil {
			return 0, errors.Wrap(err, "bench: /proc/stat")
		}
		busy += n
	}
	return time.Duration(busy) * clockTick, nil
}

func selfCPU() (time.Duration, error) {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0, errors.Wrap(err, "bench: getrusage")
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}

// loadAverage is the first three fields of /proc/loadavg, or "unknown".
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	f := strings.Fields(string(b))
	if err != nil || len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}
