// Command orchestrator is a small custom orchestrator built on the SDK's
// controller, in the spirit of walb-tools' walb-worker: against a backup
// group of running storage, proxy and archive servers, it takes periodic
// snapshots of every volume, applies the diffs of snapshots older than a
// keep period to the archive's base image, and merges diffs when a volume
// has too many. Every decision is taken from what the servers report, so
// it can be stopped and restarted at any time.
//
// Usage:
//
//	orchestrator -storage s0=HOST:PORT -proxy p0=HOST:PORT -archive a0=HOST:PORT \
//	    [-vol VOL]... [-interval 10s] [-snapshot 1m] [-snapshot-timeout 1m] \
//	    [-keep 24h]
//	    [-max-diffs 50] [-max-merge-size 1g] [-max-merge-files 10] \
//	    [-duration 0] [-once] [-tls-ca CA.pem] [-id orchestrator] [-poll 300ms] [-v]
//
// -storage, -proxy and -archive repeat, one per server, as NAME=HOST:PORT;
// proxies in priority order, the first archive is the primary. Without
// -vol it looks after every volume the primary archive holds. See
// README.md.
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
	"strings"
	"syscall"
	"time"

	"github.com/walb-go/walb/controller"
	"github.com/walb-go/walb/meta"
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
}

// stats counts what a run did.
type stats struct {
	Rounds, Snapshots, Applies, Merges, Failures int
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
	o := &orchestrator{ctl: ctl, layout: layout, p: p, log: log, vols: vols, lastSnap: map[string]time.Time{}}
	log.Info("orchestrating", "storages", storages, "proxies", proxies, "archives", archives,
		"snapshot", p.snapshotEvery, "keep", p.keep, "maxDiffs", p.maxDiffs)
	t := time.NewTicker(p.interval)
	defer t.Stop()
	for {
		o.round(ctx)
		if *once {
			break
		}
		select {
		case <-ctx.Done():
			log.Info("stopping", "rounds", o.st.Rounds, "snapshots", o.st.Snapshots, "applies", o.st.Applies,
				"merges", o.st.Merges, "failures", o.st.Failures)
			return o.st, nil
		case <-t.C:
		}
	}
	return o.st, nil
}

type orchestrator struct {
	ctl      *controller.Controller
	layout   controller.Layout
	p        policy
	log      *slog.Logger
	vols     []string             // fixed by -vol, else asked each round
	lastSnap map[string]time.Time // when this process last snapshotted a volume
	st       stats
}

// round looks after every volume once. A failure on one volume is logged
// and the others still get their turn: the next round tries again.
func (o *orchestrator) round(ctx context.Context) {
	o.st.Rounds++
	a0 := o.layout.Archives[0]
	vols := o.vols
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
		o.snapshot(ctx, vol)
		o.apply(ctx, vol)
		o.merge(ctx, vol)
	}
}

func (o *orchestrator) fail(ctx context.Context, what, vol string, err error) {
	if ctx.Err() != nil {
		return // stopping: the interrupted command is not a failure
	}
	o.st.Failures++
	o.log.Warn(what+" failed", "vol", vol, "err", err.Error())
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
		o.st.Snapshots++
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
	o.st.Applies++
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
	o.st.Merges++
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
