package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	"github.com/walb-go/walb/walb"
)

// devWorkload is a write pattern of the device suite.
type devWorkload struct {
	pattern string  // child argument: seq or rand
	name    string  // in labels
	target  float64 // the device must reach this share of the durable raw rate
}

var devWorkloads = []devWorkload{
	{pattern: "seq", name: "seq 1M", target: 0.45},
	{pattern: "rand", name: "rand 4K x32", target: 0.40},
}

// devBaseline holds the raw rates of one workload, in MB/s.
type devBaseline struct{ durable, cache float64 }

// sweepGain is the smallest gain over the defaults the summary credits to
// an option; single runs on a VM move by a few percent on their own. When
// the two runs with the defaults differ by more, that spread is the bar.
const sweepGain = 1.03

// devSuite is the state of one run of the device suite.
type devSuite struct {
	b          *bench
	ddev, ldev string
	stats      string
	seed       uint64 // of the next run; distinct per run so that checks mean something
	base       map[string]devBaseline
	rates      map[string]map[string]float64 // workload -> options -> MB/s
	again      map[string]float64            // workload -> MB/s of the defaults measured after the sweep
}

// device measures walb.Device writes against raw writes to the same data
// device file (see the package documentation).
func (b *bench) device(ctx context.Context) error {
	c := b.cfg
	s := &devSuite{b: b, ddev: b.path("device.ddev"), ldev: b.path("device.ldev"), stats: b.path("device.stats"),
		seed: 1, base: map[string]devBaseline{}, rates: map[string]map[string]float64{}, again: map[string]float64{}}
	fmt.Fprintf(b.log, "zero-filling %s and %s\n", s.ddev, s.ldev)
	if err := zeroFile(s.ddev, c.device); err != nil {
		return err
	}
	if err := zeroFile(s.ldev, c.ldevSize); err != nil {
		return err
	}
	super, err := s.format()
	if err != nil {
		return err
	}
	s.header(super)

	for _, w := range devWorkloads {
		if err := s.baselines(ctx, w); err != nil {
			return err
		}
		if err := s.measureDevice(ctx, w, devOptions{}, false); err != nil {
			return err
		}
	}
	for _, o := range c.sweep {
		for _, w := range devWorkloads {
			if err := s.measureDevice(ctx, w, o, false); err != nil {
				return err
			}
		}
	}
	if len(c.sweep) > 0 {
		// The defaults once more, so that drift over the sweep shows.
		for _, w := range devWorkloads {
			if err := s.measureDevice(ctx, w, devOptions{}, true); err != nil {
				return err
			}
		}
	}
	best := map[string]devOptions{}
	for _, w := range devWorkloads {
		if o, ok := s.combined(w); ok {
			if err := s.measureDevice(ctx, w, o, false); err != nil {
				return err
			}
		}
		best[w.name] = s.summary(w)
	}
	s.targets(best)
	fmt.Fprintf(b.out, "device suite done; load average %s\n", loadAverage())
	for _, p := range []string{s.ddev, s.ldev} {
		if err := b.remove(p); err != nil {
			return err
		}
	}
	return nil
}

func (s *devSuite) format() (*walb.Super, error) {
	return walb.FormatLogDevice(s.ldev, s.ddev, walb.FormatOptions{Name: "bench", PBS: devPBS})
}

func (s *devSuite) header(super *walb.Super) {
	c := s.b.cfg
	out := s.b.out
	fmt.Fprintf(out, "device suite: walb.Device (pbs %d) over a %s data device file and a %s log device file (ring %s),\n",
		super.PBS, mib(c.device), mib(c.ldevSize), mib(int64(super.RingBufferSize)*int64(super.PBS)))
	fmt.Fprintln(out, "  both zero-filled in 4 KiB writes and synced first, so that every write overwrites allocated blocks as on a block")
	fmt.Fprintln(out, "  device, and both stay in the page cache in 4 KiB folios (see zeroFile)")
	fmt.Fprintf(out, "  every run writes %s: seq 1M = 1 MiB writes from offset 0, one at a time; rand 4K x32 = 4 KiB writes at\n", mib(c.devSize))
	fmt.Fprintf(out, "  uniformly random 4 KiB-aligned offsets over the %s, from %d goroutines (%d in flight)\n", mib(c.device), randDepth, randDepth)
	fmt.Fprintln(out, "  raw = pwrite to the data device file; durable = one fdatasync at the end; page cache = no sync (dirty pages left behind)")
	fmt.Fprintln(out, "  device = walb.Device.WriteAt on a freshly formatted log, then Flush, which makes every write durable in the log")
	fmt.Fprintln(out, "  (the data device is synced by checkpoints: Close takes one, timed apart and not counted)")
	fmt.Fprintln(out, "  time = first write to the end of the final fdatasync or Flush, by the child's clock (open and close excluded);")
	fmt.Fprintln(out, "  MB/s = 1e6 bytes/s of data written by the caller; IOPS = 4 KiB writes/s; ratios = device/raw of this run;")
	fmt.Fprintln(out, "  cpu = user+sys of the whole child; others = CPU time the rest of the machine used during the timed span;")
	fmt.Fprintf(out, "  seq data is read back and checked after every device run; load average at start %s\n", loadAverage())
	if len(c.sweep) > 0 {
		fmt.Fprintf(out, "  sweep: %d option sets, then the defaults again; an option counts when it beats the better default run\n", len(c.sweep))
		fmt.Fprintf(out, "  by %.0f%% or by the spread of the two default runs, whichever is larger\n", 100*(sweepGain-1))
	}
}

// args is the child command line of one run.
func (s *devSuite) rawArgs(w devWorkload, sync string) []string {
	return []string{"rawio", w.pattern, s.ddev, strconv.FormatInt(s.b.cfg.devSize, 10), strconv.FormatUint(s.nextSeed(), 10), sync, s.stats}
}

func (s *devSuite) nextSeed() uint64 {
	s.seed++
	return s.seed
}

func (s *devSuite) baselines(ctx context.Context, w devWorkload) error {
	var base devBaseline
	for _, mode := range []struct{ sync, name string }{{"sync", "durable"}, {"nosync", "page cache"}} {
		args := s.rawArgs(w, mode.sync)
		o := op{label: "raw " + w.name + " " + mode.name, args: args, bytes: s.b.cfg.devSize, inner: true}
		r, st, err := s.b.measureWithStats(ctx, o, s.stats)
		if err != nil {
			return err
		}
		if w.pattern == "seq" {
			seed, _ := strconv.ParseUint(args[4], 10, 64)
			if err := checkSeq(s.ddev, seed, s.b.cfg.devSize); err != nil {
				return err
			}
		}
		note := fmt.Sprintf("writes %.2f s + fdatasync %.2f s", st.dur("write_ns").Seconds(), st.dur("sync_ns").Seconds())
		if mode.sync == "nosync" {
			base.cache = r.best()
			note = "no sync"
		} else {
			base.durable = r.best()
		}
		s.emit(r, w, nil, st, note)
	}
	s.base[w.name] = base
	return nil
}

// measureDevice measures w through a device opened with o; again marks
// the repeat of the defaults after the sweep.
func (s *devSuite) measureDevice(ctx context.Context, w devWorkload, o devOptions, again bool) error {
	label := "device " + w.name
	switch {
	case again:
		label += " default again"
	case o != (devOptions{}):
		label += " " + o.String()
	}
	seed := s.nextSeed()
	args := []string{"devio", w.pattern, s.ldev, s.ddev, strconv.FormatInt(s.b.cfg.devSize, 10), strconv.FormatUint(seed, 10), o.String(), s.stats}
	prepare := func() error {
		_, err := s.format()
		return err
	}
	r, st, err := s.b.measureWithStats(ctx, op{label: label, args: args, bytes: s.b.cfg.devSize, inner: true, prepare: prepare}, s.stats)
	if err != nil {
		return err
	}
	if w.pattern == "seq" {
		// After Close every write is on the data device.
		if err := checkSeq(s.ddev, seed, s.b.cfg.devSize); err != nil {
			return err
		}
	}
	if s.rates[w.name] == nil {
		s.rates[w.name] = map[string]float64{}
	}
	if again {
		s.again[w.name] = r.best()
	} else {
		s.rates[w.name][o.String()] = r.best()
	}
	base := s.base[w.name]
	// Writes still pending at Flush reach the data device during Close, so
	// a larger pending buffer can move work out of the timed span; the
	// rate with Close shows it.
	withClose := rate(r.bytes, r.duration(r.bestSample())+st.dur("close_ns"))
	s.emit(r, w, &base, st, fmt.Sprintf("writes %.2f s + Flush %.2f s; Close %.2f s, %.1f MB/s with it; log %s",
		st.dur("write_ns").Seconds(), st.dur("sync_ns").Seconds(), st.dur("close_ns").Seconds(), withClose, mb(st["log_bytes"])))
	return nil
}

// defaults returns the best rate of w with the defaults and the gain an
// option must bring to count: sweepGain, or the spread of the two runs
// with the defaults when that is larger.
func (s *devSuite) defaults(w devWorkload) (rate, gain float64) {
	first := s.rates[w.name]["default"]
	again, ok := s.again[w.name]
	if !ok || again <= 0 {
		return first, sweepGain
	}
	return max(first, again), max(sweepGain, max(first, again)/min(first, again))
}

// emit prints one line of the suite; base is nil for the raw lines.
func (s *devSuite) emit(r result, w devWorkload, base *devBaseline, st childStats, note string) {
	b := s.b
	b.results[r.label] = r
	var l strings.Builder
	fmt.Fprintf(&l, "%-44s %8.1f MB/s", r.label, r.best())
	if b.cfg.count > 1 {
		fmt.Fprintf(&l, " (%8.1f)", r.median())
	}
	if w.pattern == "rand" {
		fmt.Fprintf(&l, " %7.0f IOPS", r.best()*1e6/randBlock)
	} else {
		l.WriteString(strings.Repeat(" ", len(" 0000000 IOPS")))
	}
	if base != nil {
		fmt.Fprintf(&l, "  %4.2fx durable %4.2fx page cache", r.best()/base.durable, r.best()/base.cache)
	} else {
		l.WriteString(strings.Repeat(" ", len("  0.00x durable 0.00x page cache")))
	}
	best := r.bestSample()
	fmt.Fprintf(&l, "  peak RSS %4d MiB  %6.2f s, cpu %6.2f s%s  (%s)", (r.peakRSS()+1<<20-1)>>20, r.duration(best).Seconds(), best.cpu.Seconds(),
		othersNote(st), note)
	fmt.Fprintln(b.out, l.String())
}

// combined merges the one-option variants that beat the defaults, each
// option at its best value. It reports false when fewer than two options
// helped, since the combination would then be a variant already measured.
func (s *devSuite) combined(w devWorkload) (devOptions, bool) {
	rates := s.rates[w.name]
	def, gain := s.defaults(w)
	bestByKey := map[string]devOptions{}
	for _, o := range s.b.cfg.sweep {
		vals := o.values()
		if len(vals) != 1 || rates[o.String()] < def*gain {
			continue
		}
		for k := range vals {
			if cur, ok := bestByKey[k]; !ok || rates[o.String()] > rates[cur.String()] {
				bestByKey[k] = o
			}
		}
	}
	if len(bestByKey) < 2 {
		return devOptions{}, false
	}
	var c devOptions
	for _, k := range devOptionKeys {
		if o, ok := bestByKey[k.key]; ok {
			c = c.with(o)
		}
	}
	_, done := rates[c.String()]
	return c, !done
}

// summary prints the default and the best options found for w, and which
// option made the difference; it returns the best options.
func (s *devSuite) summary(w devWorkload) devOptions {
	rates := s.rates[w.name]
	def, gain := s.defaults(w)
	best, bestRate := devOptions{}, def
	single, singleRate := devOptions{}, 0.0
	for _, o := range append(append([]devOptions(nil), s.b.cfg.sweep...), s.combinedRun(w)...) {
		r := rates[o.String()]
		if r > bestRate {
			best, bestRate = o, r
		}
		if len(o.values()) == 1 && r > singleRate {
			single, singleRate = o, r
		}
	}
	unit := func(r float64) string {
		if w.pattern == "rand" {
			return fmt.Sprintf("%.1f MB/s = %.0f IOPS", r, r*1e6/randBlock)
		}
		return fmt.Sprintf("%.1f MB/s", r)
	}
	line := fmt.Sprintf("device sweep %s: default %s", w.name, unit(def))
	if again, ok := s.again[w.name]; ok {
		line += fmt.Sprintf(" (best of %s and %s after the sweep)", unit(rates["default"]), unit(again))
	}
	switch {
	case len(s.b.cfg.sweep) == 0:
		line += " (no sweep)"
	case bestRate < def*gain:
		line += fmt.Sprintf("; no option gained %.0f%% or more (best %s %s)", 100*(gain-1), best, unit(bestRate))
		best = devOptions{}
	default:
		line += fmt.Sprintf("; best %s %s (%.2fx default)", best, unit(bestRate), bestRate/def)
		if singleRate >= def*gain {
			line += fmt.Sprintf("; the option that made the difference: %s (%s alone: %.2fx default)", single.fields(), single, singleRate/def)
		}
	}
	fmt.Fprintln(s.b.out, line)
	return best
}

// combinedRun lists the combined variant of w if one was measured.
func (s *devSuite) combinedRun(w devWorkload) []devOptions {
	var runs []devOptions
	for k := range s.rates[w.name] {
		o, err := parseDevOptions(k)
		if err == nil && len(o.values()) > 1 {
			runs = append(runs, o)
		}
	}
	return runs
}

// targets prints the targets: device rates as a share of the
// durable raw rates, with the defaults and with the best options.
func (s *devSuite) targets(best map[string]devOptions) {
	lead := "device targets: "
	for _, w := range devWorkloads {
		base := s.base[w.name].durable
		verdict := func(rate float64) string {
			v := "ok"
			if rate < w.target*base {
				v = "MISS"
			}
			return fmt.Sprintf("%.2fx %s", rate/base, v)
		}
		what := "MB/s"
		if w.pattern == "rand" {
			what = "IOPS"
		}
		line := fmt.Sprintf("%s%s >= %.0f%% of raw durable %s: default %s", lead, w.name, 100*w.target, what, verdict(s.rates[w.name]["default"]))
		if o := best[w.name]; o != (devOptions{}) {
			line += fmt.Sprintf(", best (%s) %s", o, verdict(s.rates[w.name][o.String()]))
		}
		line += fmt.Sprintf("; vs raw page cache: %.2fx", s.rates[w.name]["default"]/s.base[w.name].cache)
		fmt.Fprintln(s.b.out, line)
		lead = strings.Repeat(" ", len(lead))
	}
}

// othersNote shows the CPU time other processes used during a run.
func othersNote(st childStats) string {
	if _, ok := st["others_cpu_ns"]; !ok {
		return ""
	}
	return fmt.Sprintf(", others %5.2f s", st.dur("others_cpu_ns").Seconds())
}
