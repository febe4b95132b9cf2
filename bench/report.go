package main

import (
	"fmt"
	"runtime"
	"strings"
)

// header prints the machine, the workloads and what every rate counts.
func (b *bench) header(free int64) {
	c := b.cfg
	fmt.Fprintf(b.out, "walb-go bench: %d CPUs (GOMAXPROCS %d), %s %s/%s; work dir %s (%s free)\n",
		runtime.NumCPU(), runtime.GOMAXPROCS(0), runtime.Version(), runtime.GOOS, runtime.GOARCH, b.dir, mib(free))
	// The workload and tool lines describe the wdiff suites alone.
	wdiff := c.suites["baselines"] || c.suites["convert"] || c.suites["merge"] || c.suites["apply"]
	if wdiff {
		for i, w := range workloads {
			fmt.Fprintf(b.out, "workload %-9s %s of %s over a %s device (pbs %d, salt/uuid fixed, seed %d)\n",
				w.name+":", mib(c.size), w.about, mib(c.device), benchPBS, i+1)
		}
		fmt.Fprintln(b.out, "  data: each 4 KiB block half random, half a repeated word; 1 IO in 64 all zeros; a discard after 1 IO in 256")
		fmt.Fprintln(b.out, "rates: MB/s = 1e6 bytes/s of counted bytes over the wall time of a child process running the one operation")
		fmt.Fprintln(b.out, "  counted: convert = the input wlog file; merge = io_blocks*512 of the 4 inputs' normal records;")
		fmt.Fprintln(b.out, "  apply = io_blocks*512 of the wdiff's normal records; baselines = bytes moved")
		cache := "warm (files just written)"
		if c.cold {
			cache = "dropped before every run (fadvise DONTNEED)"
		}
		fmt.Fprintf(b.out, "  tools: wlog-to-wdiff, wdiff-merge, wdiff-redo of internal/cli (outputs fsynced); -cmpr CODEC:0:%d;"+
			" inputs' page cache %s\n", c.workers, cache)
	}
	runs := "1 run per operation"
	if c.count > 1 {
		runs = fmt.Sprintf("best of %d runs, median in parentheses", c.count)
	}
	fmt.Fprintf(b.out, "  %s; peak RSS = the child's ru_maxrss (max over runs); time and cpu (user+sys) of the best run;\n", runs)
	settle := "no sync or pause between runs"
	if c.settle > 0 {
		settle = fmt.Sprintf("before every run: sync, then a %s pause to let writeback settle", c.settle)
	}
	if wdiff {
		settle = "ratios are to the raw file write baseline of this run; " + settle
	}
	fmt.Fprintf(b.out, "  %s\n", settle)
}

// emit prints one measured line and remembers it for the targets.
func (b *bench) emit(r result) {
	b.results[r.label] = r
	var s strings.Builder
	fmt.Fprintf(&s, "%-31s %8.1f MB/s", r.label, r.best())
	if b.cfg.count > 1 {
		fmt.Fprintf(&s, " (%8.1f)", r.median())
	}
	switch {
	case strings.HasPrefix(r.label, "baseline"):
		s.WriteString(strings.Repeat(" ", len("  (0.00x raw write)")))
	case b.rawWrite > 0:
		fmt.Fprintf(&s, "  (%4.2fx raw write)", r.best()/b.rawWrite)
	default:
		s.WriteString("  (no raw baseline)")
	}
	best := r.bestSample()
	fmt.Fprintf(&s, "  peak RSS %4d MiB  %6.2f s, cpu %6.2f s", (r.peakRSS()+1<<20-1)>>20, r.duration(best).Seconds(), best.cpu.Seconds())
	if r.note != "" {
		s.WriteString("  " + r.note)
	}
	fmt.Fprintln(b.out, s.String())
}

// target is a rate the Go tools must reach, with the C++ tools' figure.
type target struct {
	what     string
	labels   []string // the results it applies to
	min, cpp float64  // MB/s
}

func (b *bench) targets() {
	var conv, merge []string
	for _, w := range workloads {
		conv = append(conv, "convert "+w.name+" snappy")
		merge = append(merge, "merge "+w.name+" 4 wdiffs snappy")
	}
	ts := []target{
		{what: "convert snappy >= 340 MB/s (C++ 226)", labels: conv, min: 340, cpp: 226},
		{what: "merge 4 >= 1.5 GB/s snappy (C++ 1.06 GB/s)", labels: merge, min: 1500, cpp: 1060},
		{what: "apply random 4K >= 320 MB/s (C++ 311)", labels: []string{"apply random4k sorted"}, min: 320, cpp: 311},
	}
	first := true
	for _, t := range ts {
		var parts []string
		for _, l := range t.labels {
			r, ok := b.results[l]
			if !ok {
				continue
			}
			verdict := "ok"
			if r.best() < t.min {
				verdict = "MISS"
			}
			parts = append(parts, fmt.Sprintf("%s %.1f MB/s %s (%.2fx C++)", l, r.best(), verdict, r.best()/t.cpp))
		}
		if len(parts) == 0 {
			continue
		}
		lead := "         "
		if first {
			lead, first = "targets: ", false
		}
		fmt.Fprintf(b.out, "%s%s: %s\n", lead, t.what, strings.Join(parts, "; "))
	}
}

// mib formats a byte count in binary units, as sizes are given.
func mib(n int64) string {
	switch {
	case n >= 1<<30 && n%(1<<30) == 0:
		return fmt.Sprintf("%d GiB", n>>30)
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n%(1<<20) == 0:
		return fmt.Sprintf("%d MiB", n>>20)
	}
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}

// mb formats a byte count in decimal megabytes, the unit of the rates.
func mb(n int64) string { return fmt.Sprintf("%.1f MB", float64(n)/1e6) }
