// Command orchestrator is a small custom orchestrator built on the SDK's
// controller, in the spirit of walb-tools' walb-worker: against a backup
// group of running storage, proxy and archive servers, it takes periodic
// snapshots of every volume, applies the diffs of snapshots older than a
// keep period to the archive's base image, merges diffs when a volume has
// too many, and replicates the volumes from the primary archive to
// secondary ones. Every decision is taken from what the servers report
// (besides the times of its own last snapshots and replications), so it
// can be stopped and restarted at any time.
//
// Usage:
//
//	orchestrator -storage s0=HOST:PORT -proxy p0=HOST:PORT -archive a0=HOST:PORT \
//	    [-vol VOL]... [-interval 10s] [-snapshot 1m] [-snapshot-timeout 1m] \
//	    [-keep 24h]
//	    [-max-diffs 50] [-max-merge-size 1g] [-max-merge-files 10] \
//	    [-repl NAME[:INTERVAL]]... [-repl-interval 1h] [-max-repl 1] \
//	    [-repl-cmpr snappy:0:1] [-repl-max-merge 1g] [-repl-bulk 64k] \
//	    [-duration 0] [-once] [-tls-ca CA.pem] [-id orchestrator] [-poll 300ms] [-v]
//
// -storage, -proxy and -archive repeat, one per server, as NAME=HOST:PORT;
// proxies in priority order, the first archive is the primary. Without
// -vol it looks after every volume the primary archive holds. -repl names
// a secondary archive of the -archive list to replicate every volume to.
// See README.md.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/walb-go/walb/controller"
	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/wdiff"
	"github.com/walb-go/walb/wire"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if _, err := run(ctx, os.Args[1:], os.Stdout); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "orchestrator:", err)
		stop()
		os.Exit(1)
	}
}

// policy is what the orchestrator keeps up.
type policy struct {
	interval      time.Duration // between rounds
	snapshotEvery time.Duration // 0: no snapshots
	snapTimeout   time.Duration // bound of the wait until restorable
	keep          time.Duration // 0: no applies
	maxDiffs      int           // 0: no merges
	maxMergeSize  uint64
	maxMergeFiles int
	repl          []replTarget // secondary archives to replicate to
	maxRepl       int          // replications running at once
	replOpt       *controller.ReplicateOptions
}

// replTarget is a secondary archive the volumes are replicated to, at
// most once per interval each.
type replTarget struct {
	ax    controller.Server
	every time.Duration
}

// stats counts what a run did.
type stats struct {
	Rounds, Snapshots, Applies, Merges, Replications, Failures int
}

// serverList is a repeatable NAME=HOST:PORT flag.
type serverList struct {
	kind    controller.Kind
	servers []controller.Server
}

func (l *serverList) String() string {
	var s []string
	for _, x := range l.servers {
		s = append(s, x.Name+"="+x.Addr)
	}
	return strings.Join(s, ",")
}

func (l *serverList) Set(v string) error {
	name, addr, ok := strings.Cut(v, "=")
	if !ok || name == "" || addr == "" {
		return fmt.Errorf("want NAME=HOST:PORT, got %q", v)
	}
	l.servers = append(l.servers, controller.Server{Name: name, Addr: addr, Kind: l.kind})
	return nil
}

// replSpec is one -repl value before it is checked against the layout;
// a zero every stands for -repl-interval.
type replSpec struct {
	name  string
	every time.Duration
}

// replList is the repeatable NAME[:INTERVAL] -repl flag.
type replList []replSpec

func (l *replList) String() string {
	var s []string
	for _, r := range *l {
		if r.every == 0 {
			s = append(s, r.name)
		} else {
			s = append(s, r.name+":"+r.every.String())
		}
	}
	return strings.Join(s, ",")
}

func (l *replList) Set(v string) error {
	name, iv, hasIv := strings.Cut(v, ":")
	if name == "" {
		return fmt.Errorf("want NAME[:INTERVAL], got %q", v)
	}
	r := replSpec{name: name}
	if hasIv {
		d, err := time.ParseDuration(iv)
		if err != nil || d <= 0 {
			return fmt.Errorf("%q: the interval must be a positive duration such as 30m", v)
		}
		r.every = d
	}
	*l = append(*l, r)
	return nil
}

// resolveRepl finds each -repl archive in the layout's archives. The
// primary is refused: it is where every replication starts from.
func resolveRepl(specs replList, archives []controller.Server, def time.Duration) ([]replTarget, error) {
	var out []replTarget
	names := make([]string, len(archives))
	for i, a := range archives {
		names[i] = a.Name
	}
	for _, r := range specs {
		i := slices.Index(names, r.name)
		switch {
		case i < 0:
			return nil, fmt.Errorf("-repl %s: no such archive (the -archive list is %s)", r.name, strings.Join(names, ", "))
		case i == 0:
			return nil, fmt.Errorf("-repl %s: that is the primary archive, the source of replications; name a secondary one", r.name)
		case slices.ContainsFunc(out, func(t replTarget) bool { return t.ax.Name == r.name }):
			return nil, fmt.Errorf("-repl %s: given twice", r.name)
		}
		t := replTarget{ax: archives[i], every: r.every}
		if t.every == 0 {
			t.every = def
		}
		out = append(out, t)
	}
	return out, nil
}

// replOptions maps the -repl-cmpr, -repl-max-merge and -repl-bulk flags
// to the replications' options: nil when none was given, which leaves the
// source archive's defaults; otherwise the unset ones take
// controller.DefaultSyncOpt's values.
func replOptions(set map[string]bool, cmpr, maxMerge, bulk string) (*controller.ReplicateOptions, error) {
	if !set["repl-cmpr"] && !set["repl-max-merge"] && !set["repl-bulk"] {
		return nil, nil
	}
	so := controller.DefaultSyncOpt()
	var err error
	if set["repl-cmpr"] {
		if so.Compression, err = wdiff.ParseCompression(cmpr); err != nil {
			return nil, fmt.Errorf("-repl-cmpr: %w", err)
		}
	}
	if set["repl-max-merge"] {
		if so.MaxMergeSize, err = parseSize(maxMerge); err != nil {
			return nil, fmt.Errorf("-repl-max-merge: %w", err)
		}
	}
	if set["repl-bulk"] {
		if so.BulkSize, err = parseSize(bulk); err != nil {
			return nil, fmt.Errorf("-repl-bulk: %w", err)
		}
	}
	if err := so.Validate(); err != nil {
		return nil, err
	}
	return &controller.ReplicateOptions{Sync: &so}, nil
}

type strList []string

func (l *strList) String() string     { return strings.Join(*l, ",") }
func (l *strList) Set(v string) error { *l = append(*l, v); return nil }

// run parses args and orchestrates until ctx ends, -duration passes or,
// with -once, after one round. It returns what it did.
func run(ctx context.Context, args []string, out io.Writer) (stats, error) {
	fs := flag.NewFlagSet("orchestrator", flag.ContinueOnError)
	fs.SetOutput(out)
	storages := &serverList{kind: controller.KindStorage}
	proxies := &serverList{kind: controller.KindProxy}
	archives := &serverList{kind: controller.KindArchive}
	var vols strList
	fs.Var(storages, "storage", "a storage, NAME=HOST:PORT (repeat)")
	fs.Var(proxies, "proxy", "a proxy, NAME=HOST:PORT, in priority order (repeat)")
	fs.Var(archives, "archive", "an archive, NAME=HOST:PORT, the primary first (repeat)")
	fs.Var(&vols, "vol", "a volume to look after (repeat; default: every volume of the primary archive)")
	var p policy
	fs.DurationVar(&p.interval, "interval", 10*time.Second, "time between rounds")
	fs.DurationVar(&p.snapshotEvery, "snapshot", time.Minute, "take a snapshot of each volume this often (0: never)")
	fs.DurationVar(&p.snapTimeout, "snapshot-timeout", time.Minute, "how long a snapshot may take to become restorable")
	fs.DurationVar(&p.keep, "keep", 24*time.Hour, "apply snapshots older than this to the base (0: never apply)")
	fs.IntVar(&p.maxDiffs, "max-diffs", 50, "merge when a volume has more diffs than this (0: never merge)")
	mergeSize := fs.String("max-merge-size", "1g", "largest total size of diffs merged at once (k/m/g suffixes)")
	fs.IntVar(&p.maxMergeFiles, "max-merge-files", 10, "most diffs merged at once")
	var repl replList
	fs.Var(&repl, "repl", "replicate every volume to this secondary archive, NAME[:INTERVAL], at most once per INTERVAL (repeat)")
	replEvery := fs.Duration("repl-interval", time.Hour, "the interval of the -repl archives given without one")
	fs.IntVar(&p.maxRepl, "max-repl", 1, "most replications running at once")
	replCmpr := fs.String("repl-cmpr", "snappy:0:1", "compression of the replicated diffs, TYPE:LEVEL:NCPU (unset with the two below: the source archive's defaults)")
	replMaxMerge := fs.String("repl-max-merge", "1g", "largest size of the diffs a replication merges into one transfer")
	replBulk := fs.String("repl-bulk", "64k", "bulk size of a replication")
	duration := fs.Duration("duration", 0, "stop after this long (0: run until SIGINT or SIGTERM)")
	once := fs.Bool("once", false, "run one round and exit")
	caFile := fs.String("tls-ca", "", "talk TLS to the servers, trusting the CA certificates in this PEM file")
	id := fs.String("id", "orchestrator", "client id shown in the servers' logs")
	poll := fs.Duration("poll", controller.DefaultPollInterval, "how often the controller polls the servers in its waits")
	verbose := fs.Bool("v", false, "log every controller command")
	if err := fs.Parse(args); err != nil {
		return stats{}, err
	}
	if fs.NArg() != 0 {
		return stats{}, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	size, err := parseSize(*mergeSize)
	if err != nil {
		return stats{}, fmt.Errorf("-max-merge-size: %w", err)
	}
	p.maxMergeSize = size
	if *poll <= 0 || p.interval <= 0 || p.snapTimeout <= 0 || p.snapshotEvery < 0 || p.keep < 0 || p.maxDiffs < 0 || p.maxMergeFiles < 2 {
		return stats{}, errors.New("-interval, -poll and -snapshot-timeout must be > 0, -max-merge-files >= 2, the others >= 0")
	}
	if *replEvery <= 0 || p.maxRepl < 1 {
		return stats{}, errors.New("-repl-interval must be > 0 and -max-repl >= 1")
	}
	if p.repl, err = resolveRepl(repl, archives.servers, *replEvery); err != nil {
		return stats{}, err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if p.replOpt, err = replOptions(set, *replCmpr, *replMaxMerge, *replBulk); err != nil {
		return stats{}, err
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(out, &slog.HandlerOptions{Level: level}))

	opts := &controller.Options{ClientID: *id, Logger: log, PollInterval: *poll}
	if *caFile != "" {
		pem, err := os.ReadFile(*caFile)
		if err != nil {
			return stats{}, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return stats{}, fmt.Errorf("-tls-ca %s: no certificate", *caFile)
		}
		opts.Wire = &wire.Options{TLS: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}
	}
	layout := controller.Layout{Storages: storages.servers, Proxies: proxies.servers, Archives: archives.servers}
	ctl, err := controller.New(layout, opts)
	if err != nil {
		return stats{}, err
	}
	if err := ctl.CheckKinds(ctx); err != nil {
		return stats{}, err
	}
	if *duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *duration)
		defer cancel()
	}
	o := &orchestrator{ctl: ctl, layout: layout, p: p, log: log, vols: vols, lastSnap: map[string]time.Time{},
		replBusy: map[string]bool{}, lastRepl: map[replKey]time.Time{}}
	log.Info("orchestrating", "storages", storages, "proxies", proxies, "archives", archives,
		"snapshot", p.snapshotEvery, "keep", p.keep, "maxDiffs", p.maxDiffs, "repl", &repl, "maxRepl", p.maxRepl)
	t := time.NewTicker(p.interval)
	defer t.Stop()
loop:
	for {
		o.round(ctx)
		if *once {
			break
		}
		select {
		case <-ctx.Done():
			break loop
		case <-t.C:
		}
	}
	// With -once the replications the round started run to their end;
	// when stopping, ctx has ended and they return at once, leaving the
	// archives to finish the transfers.
	if n := o.running(); n > 0 {
		log.Info("waiting for replications", "n", n)
	}
	o.replWG.Wait()
	log.Info("stopping", "rounds", o.st.Rounds, "snapshots", o.st.Snapshots, "applies", o.st.Applies,
		"merges", o.st.Merges, "replications", o.st.Replications, "failures", o.st.Failures)
	return o.st, nil
}

type orchestrator struct {
	ctl      *controller.Controller
	layout   controller.Layout
	p        policy
	log      *slog.Logger
	vols     []string             // fixed by -vol, else asked each round
	lastSnap map[string]time.Time // when this process last snapshotted a volume

	// mu guards what the replication goroutines share with the loop.
	mu       sync.Mutex
	st       stats
	replBusy map[string]bool       // volumes with a running replication
	lastRepl map[replKey]time.Time // when this process last tried a replication
	replWG   sync.WaitGroup
}

// replKey names a volume's replica on a secondary archive.
type replKey struct{ vol, archive string }

// round looks after every volume once. A failure on one volume is logged
// and the others still get their turn: the next round tries again.
func (o *orchestrator) round(ctx context.Context) {
	o.count(func(s *stats) { s.Rounds++ })
	a0 := o.layout.Archives[0]
	vols := o.vols
	var due []replJob
	if len(vols) == 0 {
		var err error
		if vols, err = o.ctl.GetVolList(ctx, a0); err != nil {
			o.fail(ctx, "list volumes", "", err)
			return
		}
	}
	for _, vol := range vols {
		if ctx.Err() != nil {
			return
		}
		st, err := o.ctl.GetState(ctx, a0, vol)
		if err != nil {
			o.fail(ctx, "archive state", vol, err)
			continue
		}
		if !controller.IsArchiveActive(st) {
			o.log.Debug("not archived yet", "vol", vol, "state", st)
			continue
		}
		// Snapshots go to the storage and do not wait for the archive's
		// actions, so they go on while the volume replicates.
		o.snapshot(ctx, vol)
		if o.replicating(vol) {
			// One archive task per volume at a time, as walb-worker.
			o.log.Debug("replicating; apply and merge wait", "vol", vol)
			continue
		}
		if !o.finishApply(ctx, vol) {
			continue
		}
		o.apply(ctx, vol)
		o.merge(ctx, vol)
		due = append(due, o.replDue(ctx, vol)...)
	}
	o.startRepls(ctx, due)
}

// count updates the stats under mu.
func (o *orchestrator) count(f func(*stats)) {
	o.mu.Lock()
	f(&o.st)
	o.mu.Unlock()
}

func (o *orchestrator) fail(ctx context.Context, what, vol string, err error, args ...any) {
	if ctx.Err() != nil {
		return // stopping: the interrupted command is not a failure
	}
	o.count(func(s *stats) { s.Failures++ })
	o.log.Warn(what+" failed", append([]any{"vol", vol, "err", err.Error()}, args...)...)
}

// finishApply finishes an apply that was interrupted (the base is still
// applying and no apply runs), walb-worker's first rule, and reports
// whether the base is steady: only then do the other archive tasks run.
// The archive finishes such applies when it starts, but not those of
// volumes that were busy then.
func (o *orchestrator) finishApply(ctx context.Context, vol string) bool {
	a0 := o.layout.Archives[0]
	base, err := o.ctl.GetBase(ctx, a0, vol)
	if err != nil {
		o.fail(ctx, "base", vol, err)
		return false
	}
	if !base.IsApplying {
		return true
	}
	n, err := o.ctl.GetNumAction(ctx, a0, vol, controller.ActionApply)
	if err != nil {
		o.fail(ctx, "action count", vol, err)
		return false
	}
	if n > 0 {
		o.log.Debug("an apply runs", "vol", vol, "base", base.String())
		return false
	}
	gid := base.SnapE.GidB
	o.log.Info("finishing an interrupted apply", "vol", vol, "gid", gid, "base", base.String())
	t := time.Now()
	if err := o.ctl.Apply(ctx, a0, vol, gid); err != nil {
		o.fail(ctx, "apply", vol, err)
		return false
	}
	o.count(func(s *stats) { s.Applies++ })
	o.log.Info("applied", "vol", vol, "gid", gid, "dur", time.Since(t).Round(time.Millisecond))
	return true
}

// snapshot takes a snapshot on the storage where vol is Target, if the
// last one is older than the snapshot period.
func (o *orchestrator) snapshot(ctx context.Context, vol string) {
	if o.p.snapshotEvery == 0 || time.Since(o.lastSnap[vol]) < o.p.snapshotEvery {
		return
	}
	for _, s := range o.layout.Storages {
		st, err := o.ctl.GetState(ctx, s, vol)
		if err != nil {
			o.fail(ctx, "storage state", vol, err)
			return
		}
		if st != controller.StateTarget {
			continue
		}
		// The wait until the primary can restore it is bounded, so that
		// a stuck archive does not stop the other volumes' tasks.
		sctx, cancel := context.WithTimeout(ctx, o.p.snapTimeout)
		defer cancel()
		t := time.Now()
		gid, err := o.ctl.Snapshot(sctx, s, vol, o.layout.Archives[:1])
		if err != nil {
			o.fail(ctx, "snapshot", vol, err)
			return
		}
		o.lastSnap[vol] = t
		o.count(func(s *stats) { s.Snapshots++ })
		o.log.Info("snapshot", "vol", vol, "gid", gid, "storage", s.Name, "dur", time.Since(t).Round(time.Millisecond))
		return
	}
	o.log.Debug("no target storage", "vol", vol)
}

// apply folds into the base the newest snapshot older than the keep
// period, so that only the snapshots of that period remain restorable.
// The oldest restorable snapshot is the base itself and is never chosen.
func (o *orchestrator) apply(ctx context.Context, vol string) {
	if o.p.keep == 0 {
		return
	}
	a0 := o.layout.Archives[0]
	rs, err := o.ctl.GetRestorable(ctx, a0, vol, true)
	if err != nil {
		o.fail(ctx, "restorable list", vol, err)
		return
	}
	gid, ok := applyTarget(rs, time.Now().Add(-o.p.keep))
	if !ok {
		return
	}
	t := time.Now()
	if err := o.ctl.Apply(ctx, a0, vol, gid); err != nil {
		o.fail(ctx, "apply", vol, err)
		return
	}
	o.count(func(s *stats) { s.Applies++ })
	o.log.Info("applied", "vol", vol, "gid", gid, "dur", time.Since(t).Round(time.Millisecond))
}

// applyTarget returns the newest of rs[1:] taken at or before limit.
func applyTarget(rs []controller.RestorableGid, limit time.Time) (uint64, bool) {
	var gid uint64
	ok := false
	for _, r := range rs[min(1, len(rs)):] {
		if r.Timestamp.After(limit) {
			break
		}
		gid, ok = r.Gid, true
	}
	return gid, ok
}

// merge merges one run of diffs when vol has more than maxDiffs.
func (o *orchestrator) merge(ctx context.Context, vol string) {
	if o.p.maxDiffs == 0 {
		return
	}
	a0 := o.layout.Archives[0]
	n, err := o.ctl.GetNumDiff(ctx, a0, vol, 0, controller.LatestGid)
	if err != nil {
		o.fail(ctx, "diff count", vol, err)
		return
	}
	if n <= uint64(o.p.maxDiffs) {
		return
	}
	ds, err := o.ctl.GetApplicableDiffList(ctx, a0, vol, controller.LatestGid)
	if err != nil {
		o.fail(ctx, "diff list", vol, err)
		return
	}
	gidB, gidE, k, ok := mergeRange(ds, o.p.maxMergeSize, o.p.maxMergeFiles)
	if !ok {
		o.log.Debug("nothing mergeable", "vol", vol, "diffs", n)
		return
	}
	t := time.Now()
	if err := o.ctl.Merge(ctx, a0, vol, gidB, gidE); err != nil {
		o.fail(ctx, "merge", vol, err)
		return
	}
	o.count(func(s *stats) { s.Merges++ })
	o.log.Info("merged", "vol", vol, "gidB", gidB, "gidE", gidE, "diffs", k, "dur", time.Since(t).Round(time.Millisecond))
}

// mergeRange picks the diffs to merge, as walb-worker does: the chain is
// cut into runs of consecutive diffs whose first is not a compared diff
// and whose others are also mergeable (they start at an implicit snapshot,
// so no explicit snapshot is lost), each of 2 to maxFiles diffs and at
// most maxSize bytes in all; of these runs, the one of smallest average
// diff size, which reduces the count for the least work. It returns the
// run's gid bounds and length.
func mergeRange(ds []meta.Diff, maxSize uint64, maxFiles int) (gidB, gidE uint64, n int, ok bool) {
	bestAvg := uint64(0)
	for i := 0; i < len(ds); {
		if ds[i].CompDiff || ds[i].DataSize > maxSize {
			i++
			continue
		}
		total := ds[i].DataSize
		j := i + 1
		for ; j < len(ds) && j-i < maxFiles; j++ {
			d := ds[j]
			if !d.Mergeable || d.CompDiff || total+d.DataSize > maxSize {
				break
			}
			total += d.DataSize
		}
		k := j - i
		if k < 2 {
			i++
			continue
		}
		if avg := total / uint64(k); !ok || avg < bestAvg {
			gidB, gidE, n, ok, bestAvg = ds[i].SnapB.GidB, ds[j-1].SnapE.GidB, k, true, avg
		}
		// Runs do not overlap: the next starts where this one was cut.
		i = j
	}
	return gidB, gidE, n, ok
}

// parseSize parses a size with an optional k, m, g or t suffix (powers of
// 1024), as walb-tools' size options.
func parseSize(s string) (uint64, error) {
	mult := uint64(1)
	if n := len(s); n > 0 {
		switch s[n-1] {
		case 'k', 'K':
			mult = 1 << 10
		case 'm', 'M':
			mult = 1 << 20
		case 'g', 'G':
			mult = 1 << 30
		case 't', 'T':
			mult = 1 << 40
		}
		if mult != 1 {
			s = s[:n-1]
		}
	}
	var v uint64
	if _, err := fmt.Sscanf(s, "%d", &v); err != nil || fmt.Sprint(v) != s || v == 0 {
		return 0, fmt.Errorf("bad size %q", s)
	}
	if v > ^uint64(0)/mult {
		return 0, fmt.Errorf("size %q overflows", s)
	}
	return v * mult, nil
}

// replJob is a replication found due.
type replJob struct {
	vol  string
	to   replTarget
	last time.Time // the previous try; zero if none since the start
	why  []any     // what made it due, for the log
}

func (o *orchestrator) replicating(vol string) bool {
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.replBusy[vol]
}

func (o *orchestrator) running() int {
	o.mu.Lock()
	defer o.mu.Unlock()
	return len(o.replBusy)
}

// replDue returns the replications of vol that are due: to each -repl
// archive whose newest restorable snapshot is older than the primary's
// (or that does not hold the volume yet) and that this process has not
// tried within the archive's interval. Explicit snapshots are compared
// on both sides, since a replication goes up to the source's newest
// explicit one.
func (o *orchestrator) replDue(ctx context.Context, vol string) []replJob {
	if len(o.p.repl) == 0 {
		return nil
	}
	a0 := o.layout.Archives[0]
	now := time.Now()
	var jobs []replJob
	var srcGid uint64 // the primary's newest explicit snapshot, read once needed
	haveSrc := false
	for _, t := range o.p.repl {
		o.mu.Lock()
		last := o.lastRepl[replKey{vol, t.ax.Name}]
		o.mu.Unlock()
		if !last.IsZero() && now.Sub(last) < t.every {
			continue
		}
		if !haveSrc {
			gids, err := o.ctl.GetRestorableGids(ctx, a0, vol, false)
			if err != nil {
				o.fail(ctx, "restorable list", vol, err)
				return nil
			}
			if len(gids) == 0 {
				o.log.Debug("nothing to replicate: no explicit snapshot", "vol", vol)
				return nil
			}
			srcGid, haveSrc = gids[len(gids)-1], true
		}
		st, err := o.ctl.GetState(ctx, t.ax, vol)
		if err != nil {
			o.fail(ctx, "replica state", vol, err, "peer", t.ax.Name)
			continue
		}
		why := []any{"gid", srcGid, "replicaState", st}
		switch {
		case st == controller.StateClear || st == controller.StateSyncReady:
		case controller.IsArchiveActive(st):
			gids, err := o.ctl.GetRestorableGids(ctx, t.ax, vol, false)
			if err != nil {
				o.fail(ctx, "replica restorable list", vol, err, "peer", t.ax.Name)
				continue
			}
			if len(gids) > 0 && gids[len(gids)-1] >= srcGid {
				o.log.Debug("replica up to date", "vol", vol, "peer", t.ax.Name, "gid", gids[len(gids)-1])
				continue
			}
			if len(gids) > 0 {
				why = append(why, "replicaGid", gids[len(gids)-1])
			}
		default:
			o.log.Debug("replica busy or stopped", "vol", vol, "peer", t.ax.Name, "state", st)
			continue
		}
		o.log.Debug("replication due", append([]any{"vol", vol, "peer", t.ax.Name}, why...)...)
		jobs = append(jobs, replJob{vol: vol, to: t, last: last, why: why})
	}
	if len(jobs) > 0 {
		// A replication another client (or an earlier run of this one)
		// started is still running on the primary: the archive would
		// refuse a second one.
		n, err := o.ctl.GetNumAction(ctx, a0, vol, controller.ActionReplSyncAsClient)
		if err != nil {
			o.fail(ctx, "action count", vol, err)
			return nil
		}
		if n > 0 {
			o.log.Info("a replication started elsewhere runs; waiting", "vol", vol)
			return nil
		}
	}
	return jobs
}

// startRepls starts the due replications, least recently tried first, in
// goroutines of their own: at most maxRepl at once and one per volume.
// The others stay due for the next round.
func (o *orchestrator) startRepls(ctx context.Context, jobs []replJob) {
	if ctx.Err() != nil {
		return
	}
	slices.SortStableFunc(jobs, func(a, b replJob) int { return a.last.Compare(b.last) })
	o.mu.Lock()
	defer o.mu.Unlock()
	for i, j := range jobs {
		if len(o.replBusy) >= o.p.maxRepl {
			o.log.Debug("replication slots full", "running", len(o.replBusy), "waiting", len(jobs)-i)
			return
		}
		if o.replBusy[j.vol] {
			continue
		}
		o.replBusy[j.vol] = true
		o.lastRepl[replKey{j.vol, j.to.ax.Name}] = time.Now()
		o.replWG.Add(1)
		go o.replicate(ctx, j)
	}
}

// replicate runs one replication to its end. A failure is logged and
// counted; the replication is tried again once the archive's interval
// has passed.
func (o *orchestrator) replicate(ctx context.Context, j replJob) {
	defer o.replWG.Done()
	defer func() {
		o.mu.Lock()
		delete(o.replBusy, j.vol)
		o.mu.Unlock()
	}()
	a0 := o.layout.Archives[0]
	o.log.Info("replicating", append([]any{"vol", j.vol, "peer", j.to.ax.Name, "running", o.running()}, j.why...)...)
	t := time.Now()
	gid, err := o.ctl.ReplicateOnce(ctx, a0, j.vol, j.to.ax, o.p.replOpt)
	if err != nil {
		o.fail(ctx, "replication", j.vol, err, "peer", j.to.ax.Name, "retryIn", j.to.every)
		return
	}
	o.count(func(s *stats) { s.Replications++ })
	o.log.Info("replicated", "vol", j.vol, "peer", j.to.ax.Name, "gid", gid, "dur", time.Since(t).Round(time.Millisecond))
}
