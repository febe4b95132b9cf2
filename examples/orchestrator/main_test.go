package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/controller"
	"github.com/walb-go/walb/group"
	"github.com/walb-go/walb/meta"
)

func diff(b, e uint64, mergeable bool, size uint64) meta.Diff {
	d := meta.CleanDiff(b, e)
	d.Mergeable, d.DataSize = mergeable, size
	return d
}

func TestMergeRange(t *testing.T) {
	for _, tc := range []struct {
		name  string
		ds    []meta.Diff
		size  uint64
		files int
		b, e  uint64
		n     int
		ok    bool
	}{
		{"empty", nil, 100, 10, 0, 0, 0, false},
		{"one", []meta.Diff{diff(0, 1, true, 1)}, 100, 10, 0, 0, 0, false},
		{"explicit boundaries only", []meta.Diff{diff(0, 1, false, 1), diff(1, 2, false, 1), diff(2, 3, false, 1)}, 100, 10, 0, 0, 0, false},
		{"first may be explicit", []meta.Diff{diff(0, 1, false, 5), diff(1, 2, true, 5)}, 100, 10, 0, 2, 2, true},
		{"smallest average wins", []meta.Diff{
			diff(0, 1, false, 50), diff(1, 2, true, 50), // average 50
			diff(2, 3, false, 3), diff(3, 4, true, 1), diff(4, 5, true, 2), // average 2
		}, 1000, 10, 2, 5, 3, true},
		{"file limit", []meta.Diff{diff(0, 1, false, 1), diff(1, 2, true, 1), diff(2, 3, true, 1), diff(3, 4, true, 1)}, 100, 2, 0, 2, 2, true},
		{"size limit", []meta.Diff{diff(0, 1, false, 60), diff(1, 2, true, 60), diff(2, 3, false, 10), diff(3, 4, true, 10)}, 100, 10, 2, 4, 2, true},
		{"compared diff", []meta.Diff{diff(0, 1, false, 1), func() meta.Diff { d := diff(1, 2, true, 1); d.CompDiff = true; return d }()}, 100, 10, 0, 0, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, e, n, ok := mergeRange(tc.ds, tc.size, tc.files)
			require.Equal(t, tc.ok, ok)
			if ok {
				require.Equal(t, []any{tc.b, tc.e, tc.n}, []any{b, e, n})
			}
		})
	}
}

func TestApplyTarget(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	rs := []controller.RestorableGid{{Gid: 1, Timestamp: t0}, {Gid: 5, Timestamp: t0.Add(time.Minute)}, {Gid: 9, Timestamp: t0.Add(2 * time.Minute)}}
	for _, tc := range []struct {
		limit time.Time
		gid   uint64
		ok    bool
	}{
		{t0.Add(time.Hour), 9, true},
		{t0.Add(90 * time.Second), 5, true},
		{t0.Add(30 * time.Second), 0, false}, // only the base is old enough
	} {
		gid, ok := applyTarget(rs, tc.limit)
		require.Equal(t, tc.ok, ok, tc.limit)
		require.Equal(t, tc.gid, gid)
	}
	_, ok := applyTarget(nil, t0)
	require.False(t, ok)
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]uint64{"1": 1, "4k": 4 << 10, "1g": 1 << 30, "2T": 2 << 40} {
		got, err := parseSize(in)
		require.NoError(t, err, in)
		require.Equal(t, want, got, in)
	}
	for _, in := range []string{"", "k", "0", "-1", "1x", "1.5g", "99999999999999999999t"} {
		_, err := parseSize(in)
		require.Error(t, err, in)
	}
}

func TestBadFlags(t *testing.T) {
	ctx := context.Background()
	for _, args := range [][]string{
		{"-storage", "s0"},
		{"-interval", "0"},
		{"-max-merge-size", "nope"},
		{"extra"},
	} {
		_, err := run(ctx, args, io.Discard)
		require.Error(t, err, "%q", args)
	}
}

// TestBadReplFlags checks that a wrong replication flag is refused with a
// message naming it, before any server is contacted (nothing listens at
// the addresses).
func TestBadReplFlags(t *testing.T) {
	ctx := context.Background()
	layout := []string{"-storage", "s0=127.0.0.1:1", "-proxy", "p0=127.0.0.1:1",
		"-archive", "a0=127.0.0.1:1", "-archive", "a1=127.0.0.1:2", "-archive", "a2=127.0.0.1:3"}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"-repl", "a9"}, "-repl a9: no such archive (the -archive list is a0, a1, a2)"},
		{[]string{"-repl", "a0"}, "-repl a0: that is the primary archive"},
		{[]string{"-repl", "a1", "-repl", "a1:5m"}, "-repl a1: given twice"},
		{[]string{"-repl", "a1:0s"}, "the interval must be a positive duration"},
		{[]string{"-repl", "a1:soon"}, "the interval must be a positive duration"},
		{[]string{"-repl", ":1s"}, "want NAME[:INTERVAL]"},
		{[]string{"-repl", "a1", "-repl-interval", "0"}, "-repl-interval must be > 0"},
		{[]string{"-repl", "a1", "-max-repl", "0"}, "-max-repl >= 1"},
		{[]string{"-repl", "a1", "-repl-cmpr", "rar"}, "-repl-cmpr"},
		{[]string{"-repl", "a1", "-repl-cmpr", "zstd:99"}, "level 99"},
		{[]string{"-repl", "a1", "-repl-bulk", "0"}, "-repl-bulk"},
		{[]string{"-repl", "a1", "-repl-max-merge", "1q"}, "-repl-max-merge"},
	} {
		_, err := run(ctx, append(slices.Clone(layout), tc.args...), io.Discard)
		require.ErrorContains(t, err, tc.want, "%q", tc.args)
	}
}

func TestReplOptions(t *testing.T) {
	opt, err := replOptions(map[string]bool{}, "zstd:3", "2m", "128k")
	require.NoError(t, err)
	require.Nil(t, opt, "no flag given: the source archive's defaults")

	opt, err = replOptions(map[string]bool{"repl-bulk": true}, "zstd:3", "2m", "128k")
	require.NoError(t, err)
	require.Equal(t, []string{"snappy:0:1", "1G", "128K"}, opt.Sync.ReplicateArgs())

	opt, err = replOptions(map[string]bool{"repl-cmpr": true, "repl-max-merge": true, "repl-bulk": true}, "zstd:3", "2m", "128k")
	require.NoError(t, err)
	require.Equal(t, []string{"zstd:3:1", "2M", "128K"}, opt.Sync.ReplicateArgs())
	require.Zero(t, opt.Gid, "replicate up to the newest snapshot")
}

func TestResolveRepl(t *testing.T) {
	as := []controller.Server{{Name: "a0", Addr: "h:1"}, {Name: "a1", Addr: "h:2"}, {Name: "a2", Addr: "h:3"}}
	var l replList
	require.NoError(t, l.Set("a2:90s"))
	require.NoError(t, l.Set("a1"))
	require.Equal(t, "a2:1m30s,a1", l.String())
	ts, err := resolveRepl(l, as, time.Hour)
	require.NoError(t, err)
	require.Equal(t, []replTarget{{ax: as[2], every: 90 * time.Second}, {ax: as[1], every: time.Hour}}, ts)
}

// syncBuffer is a bytes.Buffer safe for the logger and the test at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// TestAgainstGroup runs the orchestrator for a few seconds against an
// embedded group whose device is written all along: it snapshots, applies
// and merges, and the backup stays exact.
func TestAgainstGroup(t *testing.T) {
	ctx, g := startGroup(t, group.Config{})
	const size = 8 << 20
	v, err := g.AddVolume(ctx, "vol0", group.VolumeOptions{Size: size})
	require.NoError(t, err)
	_, err = v.FullBackup(ctx)
	require.NoError(t, err)
	base0, err := g.Controller().GetBase(ctx, g.Primary(), "vol0")
	require.NoError(t, err)

	// A steady writer, so that the storage cuts many small diffs.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var werr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		rng := rand.New(rand.NewPCG(1, 1))
		buf := make([]byte, 16<<10)
		for {
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
			for i := range buf {
				buf[i] = byte(rng.Uint32())
			}
			if _, werr = v.Device().WriteAt(buf, rng.Int64N(size/int64(len(buf)))*int64(len(buf))); werr != nil {
				return
			}
		}
	}()

	var args []string
	for _, s := range g.Layout().All() {
		args = append(args, "-"+s.Kind.String(), s.Name+"="+s.Addr)
	}
	// One round per run, until every task ran at least once: how long that
	// takes depends on the machine, so the test waits for the outcome, not
	// for a time.
	args = append(args, "-once", "-keep", "2s", "-max-diffs", "3", "-poll", "20ms")
	var out syncBuffer
	var total stats
	for total.Snapshots < 3 || total.Applies < 1 || total.Merges < 1 {
		require.NoError(t, ctx.Err(), "%+v\n%s", total, out.String())
		st, err := run(ctx, args, &out)
		require.NoError(t, err, out.String())
		require.Equal(t, 1, st.Rounds)
		require.Zero(t, st.Failures, out.String())
		total.Snapshots += st.Snapshots
		total.Applies += st.Applies
		total.Merges += st.Merges
		time.Sleep(100 * time.Millisecond) // let diffs accumulate and age
	}
	close(stop)
	wg.Wait()
	require.NoError(t, werr)
	t.Logf("%+v\n%s", total, out.String())

	base, err := g.Controller().GetBase(ctx, g.Primary(), "vol0")
	require.NoError(t, err)
	require.Greater(t, base.SnapB.GidB, base0.SnapB.GidB, "applies moved the base")
	gid, err := v.Snapshot(ctx)
	require.NoError(t, err)
	img, err := v.Restore(ctx, gid)
	require.NoError(t, err)
	require.Equal(t, sum(t, v.Device(), size), sum(t, openFile(t, img.Path), size))
	require.NoError(t, g.Close(ctx))
}

func openFile(t *testing.T, path string) *os.File {
	f, err := os.Open(path)
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })
	return f
}

func sum(t *testing.T, r io.ReaderAt, size int64) [32]byte {
	h := sha256.New()
	_, err := io.Copy(h, io.NewSectionReader(r, 0, size))
	require.NoError(t, err)
	return [32]byte(h.Sum(nil))
}

// writeRandom fills n random 4 KiB blocks of the device.
func writeRandom(t *testing.T, v *group.Volume, rng *rand.Rand, n int) {
	buf := make([]byte, 4<<10)
	for range n {
		for i := range buf {
			buf[i] = byte(rng.Uint32())
		}
		_, err := v.Device().WriteAt(buf, rng.Int64N(v.Size()/int64(len(buf)))*int64(len(buf)))
		require.NoError(t, err)
	}
}

// TestReplication runs the orchestrator against a group of two archives:
// its first run copies the volume to a1 (full replication), a run after
// new snapshots sends only the diffs, and a run with nothing new does
// nothing. After each replication a1 restores the primary's newest
// snapshot bit for bit.
func TestReplication(t *testing.T) {
	ctx, g := startGroup(t, group.Config{Archives: 2})
	const size = 4 << 20
	v, err := g.AddVolume(ctx, "vol0", group.VolumeOptions{Size: size})
	require.NoError(t, err)
	rng := rand.New(rand.NewPCG(2, 2))
	writeRandom(t, v, rng, 64)
	_, err = v.FullBackup(ctx)
	require.NoError(t, err)
	writeRandom(t, v, rng, 32)
	_, err = v.Snapshot(ctx)
	require.NoError(t, err)
	writeRandom(t, v, rng, 32)
	gid1, err := v.Snapshot(ctx)
	require.NoError(t, err)
	want1 := sum(t, v.Device(), size) // no write after the snapshot

	ctl, a1 := g.Controller(), g.Layout().Archives[1]
	var args []string
	for _, s := range g.Layout().All() {
		args = append(args, "-"+s.Kind.String(), s.Name+"="+s.Addr)
	}
	// Only replications: no snapshot, apply or merge of its own.
	args = append(args, "-once", "-snapshot", "0", "-keep", "0", "-max-diffs", "0", "-poll", "20ms",
		"-repl", "a1:1s", "-repl-cmpr", "zstd:1", "-v")
	var out syncBuffer
	runOnce := func(replications int) {
		t.Helper()
		st, err := run(ctx, args, &out)
		require.NoError(t, err, out.String())
		require.Zero(t, st.Failures, out.String())
		require.Equal(t, replications, st.Replications, out.String())
	}
	restoreOn := func(gid uint64) [32]byte {
		t.Helper()
		img, err := ctl.Restore(ctx, a1, "vol0", gid)
		require.NoError(t, err)
		defer func() { require.NoError(t, ctl.DelRestored(ctx, a1, "vol0", gid)) }()
		return sum(t, openFile(t, img.Path), size)
	}

	runOnce(1)
	gids, err := ctl.GetRestorableGids(ctx, a1, "vol0", false)
	require.NoError(t, err)
	require.Equal(t, gid1, gids[len(gids)-1], "a1 has the primary's newest snapshot")
	require.Equal(t, want1, restoreOn(gid1))
	base1, err := ctl.GetBase(ctx, a1, "vol0")
	require.NoError(t, err)

	writeRandom(t, v, rng, 32)
	_, err = v.Snapshot(ctx)
	require.NoError(t, err)
	writeRandom(t, v, rng, 32)
	gid2, err := v.Snapshot(ctx)
	require.NoError(t, err)
	want2 := sum(t, v.Device(), size)
	require.NotEqual(t, want1, want2)

	runOnce(1)
	gids, err = ctl.GetRestorableGids(ctx, a1, "vol0", false)
	require.NoError(t, err)
	require.Equal(t, gid2, gids[len(gids)-1], "a1 has the primary's newest snapshot")
	require.Contains(t, gids, gid1, "a diff replication keeps the older snapshots")
	base2, err := ctl.GetBase(ctx, a1, "vol0")
	require.NoError(t, err)
	require.Equal(t, base1, base2, "a diff replication leaves the replica's base alone")
	require.Equal(t, want2, restoreOn(gid2))
	require.Equal(t, want1, restoreOn(gid1))

	runOnce(0) // a1 is up to date
	require.Contains(t, out.String(), "replica up to date")
	t.Log(out.String())
	require.NoError(t, g.Close(ctx))
}

// TestReplicationSlots checks the bound on running replications: with
// -max-repl 1 one round replicates one of two due volumes and leaves the
// other for later; with -max-repl 2 both go at once.
func TestReplicationSlots(t *testing.T) {
	ctx, g := startGroup(t, group.Config{Archives: 2})
	rng := rand.New(rand.NewPCG(3, 3))
	var vols []*group.Volume
	for _, name := range []string{"vol0", "vol1"} {
		v, err := g.AddVolume(ctx, name, group.VolumeOptions{Size: 2 << 20})
		require.NoError(t, err)
		_, err = v.FullBackup(ctx)
		require.NoError(t, err)
		vols = append(vols, v)
	}
	snapAll := func() {
		for _, v := range vols {
			writeRandom(t, v, rng, 8)
			_, err := v.Snapshot(ctx)
			require.NoError(t, err)
		}
	}
	snapAll()
	var args []string
	for _, s := range g.Layout().All() {
		args = append(args, "-"+s.Kind.String(), s.Name+"="+s.Addr)
	}
	args = append(args, "-once", "-snapshot", "0", "-keep", "0", "-max-diffs", "0", "-poll", "20ms", "-repl", "a1")
	var out syncBuffer
	replicated := func(extra ...string) int {
		t.Helper()
		st, err := run(ctx, append(slices.Clone(args), extra...), &out)
		require.NoError(t, err, out.String())
		require.Zero(t, st.Failures, out.String())
		return st.Replications
	}
	require.Equal(t, 1, replicated("-max-repl", "1"), out.String())
	require.Equal(t, 1, replicated("-max-repl", "1"), "the other volume: %s", out.String())
	require.Equal(t, 0, replicated("-max-repl", "1"), out.String())
	snapAll()
	require.Equal(t, 2, replicated("-max-repl", "2"), out.String())

	for _, v := range vols {
		want, err := g.Controller().GetLatestClean(ctx, g.Primary(), v.Name())
		require.NoError(t, err)
		got, err := g.Controller().GetLatestClean(ctx, g.Layout().Archives[1], v.Name())
		require.NoError(t, err)
		require.Equal(t, want, got, v.Name())
	}
	require.NoError(t, g.Close(ctx))
}

// TestFinishInterruptedApply checks walb-worker's first rule
// (system.md §8.3): a base the archive left applying <|B|-->|E|>, with no
// apply running, is applied up to E by the next round, whatever the
// policy (here one that would apply nothing). The base file is rewritten
// as an archive killed mid-apply leaves it; the volume is stopped on the
// archive first, because at start the archive finishes the applies of
// its active volumes by itself (ResumeApplies) but not of stopped ones,
// which are left to the next apply once started.
func TestFinishInterruptedApply(t *testing.T) {
	dir := t.TempDir()
	ctx, g := startGroup(t, group.Config{Dir: dir})
	const size = 4 << 20
	v, err := g.AddVolume(ctx, "vol0", group.VolumeOptions{Size: size})
	require.NoError(t, err)
	rng := rand.New(rand.NewPCG(4, 4))
	writeRandom(t, v, rng, 64)
	_, err = v.FullBackup(ctx)
	require.NoError(t, err)
	var gids []uint64
	var sums [][32]byte // the device at each of gids
	for range 3 {
		writeRandom(t, v, rng, 32)
		gid, err := v.Snapshot(ctx)
		require.NoError(t, err)
		gids = append(gids, gid)
		sums = append(sums, sum(t, v.Device(), size)) // no write after the snapshot
	}
	ctl, a0 := g.Controller(), g.Primary()
	base0, err := ctl.GetBase(ctx, a0, "vol0")
	require.NoError(t, err)
	require.False(t, base0.IsApplying)
	mid := gids[1]
	// What an apply up to mid persists before writing the base image, and
	// once it has.
	applying, err := ctl.GetMetaState(ctx, a0, "vol0", true, mid)
	require.NoError(t, err)
	require.True(t, applying.IsApplying)
	require.Equal(t, base0.SnapB, applying.SnapB)
	require.Equal(t, mid, applying.SnapE.GidB)
	end, err := ctl.GetMetaState(ctx, a0, "vol0", false, mid)
	require.NoError(t, err)
	require.False(t, end.IsApplying)
	require.Equal(t, mid, end.SnapB.GidB)
	require.NoError(t, ctl.Stop(ctx, a0, "vol0", controller.StopGraceful))
	require.NoError(t, g.Close(ctx))

	// The base image is still at B: applying the chain again from there
	// is what completes an interrupted in-place apply.
	require.NoError(t, meta.Save(filepath.Join(dir, a0.Name, "vol0", "base"), applying))
	g, err = group.Start(ctx, group.Config{Dir: dir})
	require.NoError(t, err)
	defer g.Close(ctx)
	ctl = g.Controller()
	v, err = g.Volume("vol0")
	require.NoError(t, err)
	// A stopped volume answers no get base.
	require.NoError(t, ctl.Start(ctx, a0, "vol0"))
	got, err := ctl.GetBase(ctx, a0, "vol0")
	require.NoError(t, err)
	require.Equal(t, applying, got, "the base is loaded applying; start leaves the apply to finish")
	n, err := ctl.GetNumAction(ctx, a0, "vol0", controller.ActionApply)
	require.NoError(t, err)
	require.Zero(t, n)

	var args []string
	for _, s := range g.Layout().All() {
		args = append(args, "-"+s.Kind.String(), s.Name+"="+s.Addr)
	}
	// Nothing else to do: no snapshot, every snapshot younger than -keep,
	// no merge.
	args = append(args, "-once", "-snapshot", "0", "-keep", "24h", "-max-diffs", "0", "-poll", "20ms")
	var out syncBuffer
	st, err := run(ctx, args, &out)
	require.NoError(t, err, out.String())
	require.Zero(t, st.Failures, out.String())
	require.Equal(t, 1, st.Applies, out.String())
	require.Contains(t, out.String(), "finishing an interrupted apply")
	got, err = ctl.GetBase(ctx, a0, "vol0")
	require.NoError(t, err)
	require.Equal(t, end, got)
	rs, err := v.Restorable(ctx)
	require.NoError(t, err)
	require.Equal(t, gids[1:], rs, "the base is the oldest restorable snapshot")

	st, err = run(ctx, args, &out)
	require.NoError(t, err, out.String())
	require.Zero(t, st.Failures, out.String())
	require.Zero(t, st.Applies, "a steady base is left alone: %s", out.String())

	newest := gids[len(gids)-1]
	require.Equal(t, sums[len(sums)-1], sum(t, v.Device(), size))
	for i, gid := range gids[1:] {
		img, err := v.Restore(ctx, gid)
		require.NoError(t, err)
		require.Equal(t, sums[i+1], sum(t, openFile(t, img.Path), size), "gid %d", gid)
		if gid == newest {
			require.Equal(t, sum(t, v.Device(), size), sum(t, openFile(t, img.Path), size))
		}
	}
	require.NoError(t, g.Close(ctx))
}

// startGroup starts an embedded backup group for a test (skipped with
// -short) and returns it with a context that ends after two minutes; the
// group is closed when the test ends.
func startGroup(t *testing.T, cfg group.Config) (context.Context, *group.Group) {
	t.Helper()
	if testing.Short() {
		t.Skip("starts a backup group")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	g, err := group.Start(ctx, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { g.Close(context.Background()) })
	return ctx, g
}
