package archive

import (
	"context"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/wdiff"
	"github.com/walb-go/walb/wire"
)

// replRemotes holds, per table volume, the archive the replicate row of
// the precondition tables replicates to.
var replRemotes sync.Map // *tableVol -> *tcpArchive

// runReplCommand runs replicate or the repl-sync server side on the table
// volume (see tableVol.run), prepared and cancelled: replicate connects to
// a real target archive (whose volume is SyncReady, so it accepts a full
// replication) and closes the connection before anything is sent.
func (tv *tableVol) runReplCommand(ctx context.Context, cmd Command) error {
	e := tv.env.e
	switch cmd {
	case CmdReplServer:
		aUUID := meta.UUID{1, 2, 3}
		_, err := e.prepareReplServer(tvol, aUUID, true)
		return err
	case CmdReplicate:
		r, err := e.PrepareReplicate(ctx, tvol, ReplicateOptions{Addr: tv.replRemote(ctx).addr, ClientOptions: ClientOptions{ClientID: "table"}})
		if err == nil {
			r.Cancel()
		}
		return err
	}
	panic("not a replication command: " + cmd)
}

func (tv *tableVol) replRemote(ctx context.Context) *tcpArchive {
	if ta, ok := replRemotes.Load(tv); ok {
		return ta.(*tcpArchive)
	}
	t := tv.env.t.(*testing.T)
	ta := startArchive(t, t.TempDir(), nil)
	ta.ok(ctx, "init-vol", tvol)
	replRemotes.Store(tv, ta)
	t.Cleanup(func() { replRemotes.Delete(tv) })
	return ta
}

// shouldDoReplSet is the source of TestShouldDoRepl: base |0|, then
// 0->1 (1 MiB), 1->2 (2 MiB, mergeable), 2->3 (1 MiB, mergeable), 3->5
// (3 MiB).
func shouldDoReplSet(t *testing.T) *meta.DiffSet {
	mk := func(b, e uint64, m bool, mib uint64) meta.Diff {
		d := cleanDiff(b, e, m)
		d.DataSize = mib << 20
		return d
	}
	ds, err := meta.NewDiffSet(mk(0, 1, false, 1), mk(1, 2, true, 2), mk(2, 3, true, 1), mk(3, 5, false, 3))
	require.NoError(t, err)
	return ds
}

// TestShouldDoRepl checks the decision of each replication step (system.md
// §5.6) on a fixed diff set.
func TestShouldDoRepl(t *testing.T) {
	ds := shouldDoReplSet(t)
	base0 := meta.NewState(meta.CleanSnap(0), diffTs(0))
	base3 := meta.NewState(meta.CleanSnap(3), diffTs(3))
	cases := []struct {
		name string
		srv  meta.Snap
		base meta.State
		mode ReplMode
		n    uint64
		want ReplAction
		err  error
	}{
		{"up to date", meta.CleanSnap(5), base0, ReplBySize, 0, ReplDont, nil},
		{"target ahead", meta.CleanSnap(9), base0, ReplByGid, 100, ReplDont, nil},
		{"size 0 sends everything", meta.CleanSnap(0), base0, ReplBySize, 0, ReplDiff, nil},
		{"size: 7 MiB missing > 6", meta.CleanSnap(0), base0, ReplBySize, 6, ReplDiff, nil},
		{"size: 7 MiB missing <= 7", meta.CleanSnap(0), base0, ReplBySize, 7, ReplDont, nil},
		{"size: 4 MiB missing from 2", meta.CleanSnap(2), base0, ReplBySize, 3, ReplDiff, nil},
		{"size: 4 MiB missing <= 4", meta.CleanSnap(2), base0, ReplBySize, 4, ReplDont, nil},
		{"gid: target below n", meta.CleanSnap(1), base0, ReplByGid, 2, ReplDiff, nil},
		{"gid: target at n", meta.CleanSnap(2), base0, ReplByGid, 2, ReplDont, nil},
		{"gid: n passed", meta.CleanSnap(3), base0, ReplByGid, 1, ReplDont, nil},
		{"gid: inside a diff", meta.CleanSnap(4), base0, ReplByGid, 5, ReplDiff, nil},
		{"diffs applied away: hash", meta.CleanSnap(1), base3, ReplBySize, 0, ReplHash, nil},
		{"hash whatever the mode", meta.CleanSnap(2), base3, ReplByGid, 0, ReplHash, nil},
		{"at the base: diff", meta.CleanSnap(3), base3, ReplBySize, 0, ReplDiff, nil},
		{"dirty target off the chain", meta.Snap{GidB: 1, GidE: 7}, base0, ReplBySize, 0, ReplDont, ErrReplTiming},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ShouldDoRepl(tc.srv, tc.base, ds, tc.mode, tc.n)
			if tc.err != nil {
				require.ErrorIs(t, err, tc.err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
	_, err := ShouldDoRepl(meta.CleanSnap(0), base0, ds, ReplMode(9), 0)
	require.ErrorIs(t, err, ErrBadArgs)
}

// TestParseReplicateArgs checks the command's syntax and defaults.
func TestParseReplicateArgs(t *testing.T) {
	vol, opt, err := ParseReplicateArgs([]string{"v0", "gid", "12", "a1:5000"})
	require.NoError(t, err)
	require.Equal(t, "v0", vol)
	require.Equal(t, ReplByGid, opt.Mode)
	require.EqualValues(t, 12, opt.N)
	require.Equal(t, "a1:5000", opt.Addr)
	require.False(t, opt.DoResync)
	require.False(t, opt.DontMerge)
	require.Equal(t, wdiff.DefaultCompression, *opt.Compression)
	require.EqualValues(t, DefaultReplMaxMerge, opt.MaxMergeBytes)
	require.EqualValues(t, DefaultReplBulk/lbSize, opt.BulkLB)

	_, opt, err = ParseReplicateArgs([]string{"v0", "size", "0", "[::1]:5000", "1", "1", "zstd:3:2", "64m", "1M"})
	require.NoError(t, err)
	require.Equal(t, ReplBySize, opt.Mode)
	require.True(t, opt.DoResync)
	require.True(t, opt.DontMerge)
	require.Equal(t, wdiff.Compression{Codec: wdiff.CodecZstd, Level: 3, Workers: 2}, *opt.Compression)
	require.EqualValues(t, 64<<20, opt.MaxMergeBytes)
	require.EqualValues(t, 2048, opt.BulkLB)

	bad := [][]string{
		{"v0", "gid", "1"},
		{"v0", "gid", "1", "a:1", "0", "0", "snappy", "1G", "256K", "x"},
		{"../v", "gid", "1", "a:1"},
		{"v0", "time", "1", "a:1"},
		{"v0", "gid", "-1", "a:1"},
		{"v0", "size", "1099511627777", "a:1"},
		{"v0", "gid", "1", "a"},
		{"v0", "gid", "1", ":5000"},
		{"v0", "gid", "1", "a:0"},
		{"v0", "gid", "1", "a:70000"},
		{"v0", "gid", "1", "a:1", "2"},
		{"v0", "gid", "1", "a:1", "0", "yes"},
		{"v0", "gid", "1", "a:1", "0", "0", "lzo"},
		{"v0", "gid", "1", "a:1", "0", "0", "snappy", "0"},
		{"v0", "gid", "1", "a:1", "0", "0", "snappy", "1G", "100"},
		{"v0", "gid", "1", "a:1", "0", "0", "snappy", "1G", "8M"},
		{"v0", "gid", "1", "a:1", "0", "0", "snappy", "1G", "0"},
	}
	for _, args := range bad {
		_, _, err := ParseReplicateArgs(args)
		require.ErrorIs(t, err, wire.ErrBadRequest, "%q", args)
	}
}

// FuzzParseReplicateArgs: any argument list parses into valid options or
// is refused with ErrBadArgs.
func FuzzParseReplicateArgs(f *testing.F) {
	f.Add("v0", "gid", "12", "a1:5000", "", "", "", "", "")
	f.Add("v0", "size", "0", "127.0.0.1:1", "1", "0", "snappy:0:1", "1G", "256K")
	f.Add("v0", "size", "5", "unix:/run/a", "0", "1", "zstd:19", "64m", "4m")
	f.Fuzz(func(t *testing.T, a0, a1, a2, a3, a4, a5, a6, a7, a8 string) {
		args := []string{a0, a1, a2, a3}
		for _, a := range []string{a4, a5, a6, a7, a8} {
			if a == "" {
				break
			}
			args = append(args, a)
		}
		vol, opt, err := ParseReplicateArgs(args)
		if err != nil {
			require.ErrorIs(t, err, wire.ErrBadRequest)
			return
		}
		require.Equal(t, a0, vol)
		require.NoError(t, opt.Compression.Validate())
		require.True(t, opt.BulkLB >= 1 && opt.BulkLB <= MaxBulkLB)
		require.NotZero(t, opt.MaxMergeBytes)
		_, err = opt.withDefaults()
		require.NoError(t, err)
	})
}

// FuzzFullReplState: any bytes decode into a valid state that encodes back
// to the same bytes, or are refused.
func FuzzFullReplState(f *testing.F) {
	good := FullReplState{State: meta.NewState(meta.CleanSnap(7), diffTs(7)), ProgressLB: 4096, Timestamp: time.Unix(1700000100, 0).UTC()}
	b, err := meta.Marshal(good)
	require.NoError(f, err)
	f.Add(b)
	b, err = meta.Marshal(FullReplState{State: meta.NewApplyingState(meta.CleanSnap(2), meta.Snap{GidB: 5, GidE: 9}, diffTs(5))})
	require.NoError(f, err)
	f.Add(b)
	f.Fuzz(func(t *testing.T, b []byte) {
		var st FullReplState
		if err := meta.Unmarshal(b, &st); err != nil {
			return
		}
		require.NoError(t, st.State.Validate())
		again, err := meta.Marshal(st)
		require.NoError(t, err)
		var st2 FullReplState
		require.NoError(t, meta.Unmarshal(again, &st2))
		require.Equal(t, st, st2)
	})
}

// TestFullReplStateFile round-trips the file and checks that a torn one is
// refused.
func TestFullReplStateFile(t *testing.T) {
	env := newEnv(t, nil)
	ctx := testCtx(t)
	require.NoError(t, env.e.InitVol(ctx, "v"))
	_, ok, err := env.e.FullReplState("v")
	require.NoError(t, err)
	require.False(t, ok)
	v, err := env.e.volume("v")
	require.NoError(t, err)
	st := FullReplState{State: meta.NewState(meta.CleanSnap(3), diffTs(3)), ProgressLB: 77, Timestamp: time.Unix(1700000000, 0).UTC()}
	require.NoError(t, meta.Save(v.path(fullReplStateFileName), st))
	got, ok, err := env.e.FullReplState("v")
	require.NoError(t, err)
	require.True(t, ok)
	require.Equal(t, st, got)
	require.Equal(t, "<|3|> 77 2023-11-14T22:13:20", got.String())
	b := readAllFile(t, v.path(fullReplStateFileName))
	require.NoError(t, os.WriteFile(v.path(fullReplStateFileName), b[:len(b)-3], 0o644))
	_, _, err = env.e.FullReplState("v")
	require.ErrorIs(t, err, meta.ErrCorrupt)
}

// replPair is a source archive a0 and a target a1 over TCP, with the model
// of one volume on a0.
type replPair struct {
	t        *testing.T
	a0, a1   *tcpArchive
	m        *model
	tweak1   func(*Config)
	nextDiff uint64 // the gid a0's latest snapshot is at
}

const replVol = "rv"

func newReplPair(t *testing.T, tweak1 func(*Config)) *replPair {
	p := &replPair{t: t, tweak1: tweak1, m: newModel(99, 8192)}
	p.a0 = startArchive(t, t.TempDir(), nil)
	p.a1 = startArchive(t, t.TempDir(), tweak1)
	ctx := testCtx(t)
	p.a0.ok(ctx, "init-vol", replVol)
	p.a1.ok(ctx, "init-vol", replVol)
	p.env(p.a0).fullSync(ctx, replVol, p.m, meta.CleanSnap(0))
	p.m.record(0)
	return p
}

// env wraps a server's engine for the engine-level test helpers.
func (p *replPair) env(ta *tcpArchive) *testEnv {
	return &testEnv{t: p.t, root: ta.root, e: ta.s.Engine()}
}

// addDiffs sends n diffs of k IOs each to a0, each explicit when
// explicit(gid) says so (the others are mergeable).
func (p *replPair) addDiffs(n, k int, explicit func(g uint64) bool) {
	ctx := testCtx(p.t)
	for range n {
		g := p.nextDiff
		require.NoError(p.t, p.env(p.a0).sendDiff(ctx, replVol, p.m, cleanDiff(g, g+1, !explicit(g)), p.m.nextWdiff(p.t, k)))
		p.m.record(g + 1)
		p.nextDiff++
	}
}

// replicate runs a replication of a0's volume to addr (a1's by default).
func (p *replPair) replicate(addr string, opt ReplicateOptions) ([]ReplEvent, error) {
	if addr == "" {
		addr = p.a1.addr
	}
	opt.Addr = addr
	opt.ClientID = "a0"
	var evs []ReplEvent
	opt.Observe = func(ev ReplEvent) { evs = append(evs, ev) }
	err := p.a0.s.Engine().Replicate(testCtx(p.t), replVol, opt)
	return evs, err
}

func restorableLines(t *testing.T, e *Engine, all bool) []string {
	pts, err := e.Restorable(replVol, all)
	require.NoError(t, err)
	var out []string
	for _, pt := range pts {
		out = append(out, pt.String())
	}
	return out
}

// checkEqual compares the two archives: the restorable lists (gids,
// timestamps, explicit flags), the image of every restorable gid on both
// with the model, and the uuids.
func (p *replPair) checkEqual() {
	t := p.t
	ctx := testCtx(t)
	e0, e1 := p.a0.s.Engine(), p.a1.s.Engine()
	st, _ := e1.State(replVol)
	require.Equal(t, StateArchived, st)
	require.Equal(t, restorableLines(t, e0, false), restorableLines(t, e1, false))
	for _, g := range restorableGids(t, e1, replVol, false) {
		want, ok := p.m.sha[g]
		require.True(t, ok, "gid %d not in the model", g)
		require.Equal(t, want, p.env(p.a1).restoredSHA(ctx, replVol, g), "a1 gid %d", g)
		require.Equal(t, want, p.env(p.a0).restoredSHA(ctx, replVol, g), "a0 gid %d", g)
	}
	for _, get := range []func(*Engine, string) (meta.UUID, error){(*Engine).UUID, (*Engine).ArchiveUUID} {
		u0, err := get(e0, replVol)
		require.NoError(t, err)
		u1, err := get(e1, replVol)
		require.NoError(t, err)
		require.Equal(t, u0, u1)
	}
	_, ok, err := e1.FullReplState(replVol)
	require.NoError(t, err)
	require.False(t, ok, "full_repl_state is removed once a full replication is done")
}

func steps(evs []ReplEvent) []ReplStep {
	var out []ReplStep
	for _, ev := range evs {
		out = append(out, ev.Step)
	}
	return out
}

// latestGid is vol's latest gid on e.
func latestGid(t *testing.T, e *Engine) uint64 {
	l, ok := e.Latest(replVol)
	require.True(t, ok)
	return l.Gid
}

// TestReplicateFullThenDiff covers scenarios n7 (a full replication, then
// equal restorable lists and images) and n8 (diff replication after new
// diffs), with the explicit snapshots of the source kept explicit on the
// target.
func TestReplicateFullThenDiff(t *testing.T) {
	p := newReplPair(t, nil)
	// Explicit snapshots at 0, 3 and 5; the rest implicit.
	explicit := func(g uint64) bool { return g == 0 || g == 3 || g == 5 }
	p.addDiffs(6, 20, explicit)
	require.Equal(t, []uint64{0, 3, 5, 6}, restorableGids(t, p.a0.s.Engine(), replVol, false))

	evs, err := p.replicate("", ReplicateOptions{Mode: ReplBySize})
	require.NoError(t, err)
	// FULL, then the explicit runs merged: 0->3, 3->5, 5->6.
	require.Equal(t, []ReplStep{ReplStepFull, ReplStepDiff, ReplStepDiff, ReplStepDiff, ReplStepDone}, steps(evs))
	require.Zero(t, evs[0].StartLB)
	require.Equal(t, "|0|-->|3|", evs[1].Diff.String())
	require.Equal(t, 3, evs[1].NumDiffs)
	require.False(t, evs[1].Diff.Mergeable)
	require.Equal(t, "|3|-->|5|", evs[2].Diff.String())
	require.Equal(t, "|5|-->|6|", evs[3].Diff.String())
	require.EqualValues(t, 6, evs[4].Remote.SnapB.GidB)
	p.checkEqual()

	// n8: new diffs, a diff replication through the wire command.
	p.addDiffs(4, 20, func(g uint64) bool { return g == 8 })
	ctx := testCtx(t)
	p.a0.accept(ctx, "replicate", replVol, "size", "0", p.a1.addr)
	waitFor(t, "the replication to end", func() bool {
		n, err := p.a0.s.Engine().NumAction(replVol, ActionReplSyncAsClient)
		return err == nil && n == 0
	})
	require.EqualValues(t, 10, latestGid(t, p.a1.s.Engine()))
	p.checkEqual()

	// Nothing left: the target answers at once, nothing changes.
	before := p.env(p.a1).dirSnapshot()
	evs, err = p.replicate("", ReplicateOptions{Mode: ReplBySize})
	require.NoError(t, err)
	require.Equal(t, []ReplStep{ReplStepDone}, steps(evs))
	require.Equal(t, before, p.env(p.a1).dirSnapshot())
}

// TestReplicateModes checks gid and size mode over the network, and the
// dontMerge and MAXMERGE limits.
func TestReplicateModes(t *testing.T) {
	p := newReplPair(t, nil)
	explicit := func(g uint64) bool { return g%4 == 0 }
	p.addDiffs(8, 10, explicit) // explicit at 0, 4; chain 0..8
	e1 := p.a1.s.Engine()

	// gid mode: up to 2 stops after the merged run 0->4.
	evs, err := p.replicate("", ReplicateOptions{Mode: ReplByGid, N: 2})
	require.NoError(t, err)
	require.Equal(t, []ReplStep{ReplStepFull, ReplStepDiff, ReplStepDone}, steps(evs))
	require.EqualValues(t, 4, latestGid(t, e1))

	// size mode: the 4 missing diffs are far below 100 MiB.
	before := p.env(p.a1).dirSnapshot()
	evs, err = p.replicate("", ReplicateOptions{Mode: ReplBySize, N: 100})
	require.NoError(t, err)
	require.Equal(t, []ReplStep{ReplStepDone}, steps(evs))
	require.Equal(t, before, p.env(p.a1).dirSnapshot())

	// dontMerge: one stored diff per step, sent as stored.
	evs, err = p.replicate("", ReplicateOptions{Mode: ReplByGid, N: 6, DontMerge: true})
	require.NoError(t, err)
	require.Equal(t, []ReplStep{ReplStepDiff, ReplStepDiff, ReplStepDone}, steps(evs))
	for _, ev := range evs[:2] {
		require.Equal(t, 1, ev.NumDiffs)
	}
	require.EqualValues(t, 6, latestGid(t, e1))
	for g := uint64(5); g <= 6; g++ {
		d0, err := p.a0.s.Engine().Diffs(replVol, g-1, g)
		require.NoError(t, err)
		d1, err := e1.Diffs(replVol, g-1, g)
		require.NoError(t, err)
		require.Len(t, d1, 1)
		require.Equal(t, d0[0].DataSize, d1[0].DataSize, "a dontMerge diff keeps its bytes")
	}

	// MAXMERGE of 1 byte: the first diff of each run only.
	evs, err = p.replicate("", ReplicateOptions{Mode: ReplBySize, MaxMergeBytes: 1})
	require.NoError(t, err)
	require.Equal(t, []ReplStep{ReplStepDiff, ReplStepDiff, ReplStepDone}, steps(evs))
	p.checkEqual()
	// 0->4 went merged; every snapshot after it one by one.
	require.Equal(t, append([]uint64{0}, gidRange(4, 8)...), restorableGids(t, e1, replVol, true))
}

// TestReplicateHash covers scenario n9: a0 applies past a1's latest
// snapshot, so the next replication compares images (HASH) before it
// sends the diffs after a0's base.
func TestReplicateHash(t *testing.T) {
	p := newReplPair(t, nil)
	p.addDiffs(3, 20, func(g uint64) bool { return g == 0 })
	_, err := p.replicate("", ReplicateOptions{Mode: ReplBySize})
	require.NoError(t, err)
	p.addDiffs(4, 30, func(g uint64) bool { return g == 5 })
	ctx := testCtx(t)
	require.NoError(t, p.a0.s.Engine().Apply(ctx, replVol, 5))
	evs, err := p.replicate("", ReplicateOptions{Mode: ReplBySize})
	require.NoError(t, err)
	require.Equal(t, []ReplStep{ReplStepHash, ReplStepDiff, ReplStepDone}, steps(evs))
	require.Equal(t, "|3|-->|5|", evs[0].Diff.String())
	require.True(t, evs[0].Diff.CompDiff)
	require.True(t, evs[0].Diff.Mergeable)
	e0, e1 := p.a0.s.Engine(), p.a1.s.Engine()
	require.EqualValues(t, 7, latestGid(t, e1))
	// a1 keeps its older history; every snapshot a0 lists is on a1 with
	// the same image.
	g1 := restorableGids(t, e1, replVol, true)
	for _, g := range restorableGids(t, e0, replVol, false) {
		require.Contains(t, g1, g)
		require.Equal(t, p.m.sha[g], p.env(p.a1).restoredSHA(ctx, replVol, g), "gid %d", g)
	}
	require.Equal(t, p.m.sha[3], p.env(p.a1).restoredSHA(ctx, replVol, 3))
}

// TestReplicateResync covers scenario n14: a0 is rebuilt by a full backup
// (a new lineage); a plain replication is refused and changes nothing, a
// replication with doResync makes a1 a copy of a0 again.
func TestReplicateResync(t *testing.T) {
	p := newReplPair(t, nil)
	p.addDiffs(3, 20, func(g uint64) bool { return g == 0 })
	_, err := p.replicate("", ReplicateOptions{Mode: ReplBySize})
	require.NoError(t, err)
	ctx := testCtx(t)
	e0, e1 := p.a0.s.Engine(), p.a1.s.Engine()
	require.NoError(t, e1.Restore(ctx, replVol, 3))

	// Rebuild a0: a new device content, a full backup at gid 10.
	require.NoError(t, e0.Stop(ctx, replVol, StopGraceful))
	require.NoError(t, e0.ResetVol(ctx, replVol))
	p.m = newModel(5, 8192)
	p.env(p.a0).fullSync(ctx, replVol, p.m, meta.CleanSnap(10))
	p.m.record(10)
	p.nextDiff = 10
	p.addDiffs(2, 20, func(g uint64) bool { return true })

	before := p.env(p.a1).dirSnapshot()
	_, err = p.replicate("", ReplicateOptions{Mode: ReplBySize})
	require.ErrorIs(t, err, ErrResyncRequired)
	require.Contains(t, err.Error(), "resync is required but not allowed")
	require.Equal(t, before, p.env(p.a1).dirSnapshot())
	// The same refusal through the command: the error reply keeps the code.
	_, _, err = p.a0.cmd(ctx, "replicate", replVol, "size", "0", p.a1.addr)
	require.ErrorIs(t, err, CodeResyncRequired)
	require.Equal(t, before, p.env(p.a1).dirSnapshot())

	evs, err := p.replicate("", ReplicateOptions{Mode: ReplBySize, DoResync: true})
	require.NoError(t, err)
	require.Equal(t, []ReplStep{ReplStepResync, ReplStepDiff, ReplStepDiff, ReplStepDone}, steps(evs))
	gids, err := e1.Restored(replVol)
	require.NoError(t, err)
	require.Empty(t, gids, "a resync drops the restored images of the old lineage")
	p.checkEqual()
	require.Equal(t, []uint64{10, 11, 12}, restorableGids(t, e1, replVol, true))
}

// TestReplicateResyncSyncReady: a resync cut midway leaves the target
// SyncReady (persisted) with its base image; the retry with doResync
// resyncs again; a target reset (no image) takes a full copy even when a
// resync is allowed.
func TestReplicateResyncSyncReady(t *testing.T) {
	p := newReplPair(t, nil)
	p.addDiffs(2, 20, func(g uint64) bool { return true })
	_, err := p.replicate("", ReplicateOptions{Mode: ReplBySize})
	require.NoError(t, err)
	ctx := testCtx(t)
	e0, e1 := p.a0.s.Engine(), p.a1.s.Engine()

	require.NoError(t, e0.Stop(ctx, replVol, StopGraceful))
	require.NoError(t, e0.ResetVol(ctx, replVol))
	p.m = newModel(6, 8192)
	p.env(p.a0).fullSync(ctx, replVol, p.m, meta.CleanSnap(4))
	p.m.record(4)
	cp := startCutProxy(t, p.a1.addr, 512<<10)
	_, err = p.replicate(cp.addr(), ReplicateOptions{Mode: ReplBySize, DoResync: true})
	require.Error(t, err)
	p.waitSteady(StateSyncReady)
	has, err := e1.ExistsBaseImage(replVol)
	require.NoError(t, err)
	require.True(t, has)
	evs, err := p.replicate("", ReplicateOptions{Mode: ReplBySize, DoResync: true})
	require.NoError(t, err)
	require.Equal(t, []ReplStep{ReplStepResync, ReplStepDone}, steps(evs))
	p.checkEqual()

	require.NoError(t, e1.Stop(ctx, replVol, StopGraceful))
	require.NoError(t, e1.ResetVol(ctx, replVol))
	evs, err = p.replicate("", ReplicateOptions{Mode: ReplBySize, DoResync: true})
	require.NoError(t, err)
	require.Equal(t, ReplStepFull, evs[0].Step)
	p.checkEqual()
}

// cutProxy forwards connections to a target and cuts the first one once
// cutAfter bytes have gone from the client to the target: a network
// failure in the middle of a session.
type cutProxy struct {
	ln       net.Listener
	target   string
	cutAfter int64
	cut      atomic.Bool
}

func startCutProxy(t *testing.T, target string, cutAfter int64) *cutProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &cutProxy{ln: ln, target: target, cutAfter: cutAfter}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.serve(c)
		}
	}()
	return p
}

func (p *cutProxy) addr() string { return p.ln.Addr().String() }

func (p *cutProxy) serve(c net.Conn) {
	s, err := net.Dial("tcp", p.target)
	if err != nil {
		_ = c.Close()
		return
	}
	armed := p.cut.CompareAndSwap(false, true)
	done := make(chan struct{}, 2)
	go func() {
		_, _ = io.Copy(c, s)
		_ = c.Close()
		done <- struct{}{}
	}()
	go func() {
		if armed {
			_, _ = io.CopyN(s, c, p.cutAfter)
			_ = c.Close()
			_ = s.Close()
		} else {
			_, _ = io.Copy(s, c)
			if tc, ok := s.(*net.TCPConn); ok {
				_ = tc.CloseWrite()
			}
		}
		done <- struct{}{}
	}()
	<-done
	<-done
	_ = s.Close()
}

// waitSteady waits until a1's volume is out of any transaction.
func (p *replPair) waitSteady(want string) {
	waitFor(p.t, "a1 to be "+want, func() bool {
		st, _ := p.a1.s.Engine().State(replVol)
		return st == want
	})
	st, err := loadState(filepath.Join(p.a1.root, "base", replVol))
	require.NoError(p.t, err)
	require.Equal(p.t, want, st, "persisted state")
}

// TestReplicateFullResume covers scenario e14: the network is cut in the
// middle of a full replication; a1 is SyncReady with the resume point,
// survives a restart, and the retry resumes where the copy stopped (not
// from 0) and ends with an exact copy.
func TestReplicateFullResume(t *testing.T) {
	tweak := func(c *Config) { c.FsyncInterval = 128 << 10 }
	p := newReplPair(t, tweak)
	p.addDiffs(2, 10, func(g uint64) bool { return true })
	cp := startCutProxy(t, p.a1.addr, 1<<20)
	_, err := p.replicate(cp.addr(), ReplicateOptions{Mode: ReplBySize, BulkLB: 128})
	require.Error(t, err)
	p.waitSteady(StateSyncReady)
	saved, ok, err := p.a1.s.Engine().FullReplState(replVol)
	require.NoError(t, err)
	require.True(t, ok)
	require.NotZero(t, saved.ProgressLB)
	require.Less(t, saved.ProgressLB, p.m.sizeLB)
	base0, err := p.a0.s.Engine().Base(replVol)
	require.NoError(t, err)
	require.True(t, saved.State.Equal(base0))

	// A restart of a1 in between: the resume point is on disk.
	p.a1.stop()
	p.a1 = startArchive(t, p.a1.root, tweak)
	evs, err := p.replicate("", ReplicateOptions{Mode: ReplBySize, BulkLB: 128})
	require.NoError(t, err)
	require.Equal(t, ReplStepFull, evs[0].Step)
	require.Equal(t, saved.ProgressLB, evs[0].StartLB, "the copy resumed")
	p.checkEqual()

	// Another lineage's copy never resumes: a0 rebuilt, a1 reset.
	ctx := testCtx(t)
	e1 := p.a1.s.Engine()
	require.NoError(t, e1.Stop(ctx, replVol, StopGraceful))
	require.NoError(t, e1.ResetVol(ctx, replVol))
	cp = startCutProxy(t, p.a1.addr, 1<<20)
	_, err = p.replicate(cp.addr(), ReplicateOptions{Mode: ReplBySize, BulkLB: 128})
	require.Error(t, err)
	p.waitSteady(StateSyncReady)
	e0 := p.a0.s.Engine()
	require.NoError(t, e0.Stop(ctx, replVol, StopGraceful))
	require.NoError(t, e0.ResetVol(ctx, replVol))
	p.m = newModel(7, 8192)
	p.env(p.a0).fullSync(ctx, replVol, p.m, meta.CleanSnap(0))
	p.m.record(0)
	evs, err = p.replicate("", ReplicateOptions{Mode: ReplBySize, BulkLB: 128})
	require.NoError(t, err)
	require.Zero(t, evs[0].StartLB, "a copy of another lineage starts from 0")
	p.checkEqual()
}

// TestReplicateCutHashAndDiff covers scenarios e15 and e16: a cut during
// a compared diff leaves a1 Archived with its restorable list unchanged; a
// cut during a diff leaves it at an older gid; both retries complete.
func TestReplicateCutHashAndDiff(t *testing.T) {
	p := newReplPair(t, nil)
	p.addDiffs(2, 20, func(g uint64) bool { return true })
	_, err := p.replicate("", ReplicateOptions{Mode: ReplBySize})
	require.NoError(t, err)
	ctx := testCtx(t)
	e1 := p.a1.s.Engine()

	// e15: a0 applies past a1 with a lot of change, then a cut inside the
	// compared diff's data.
	p.addDiffs(3, 100, func(g uint64) bool { return true })
	require.NoError(t, p.a0.s.Engine().Apply(ctx, replVol, 4))
	before := restorableLines(t, e1, true)
	cp := startCutProxy(t, p.a1.addr, 256<<10)
	_, err = p.replicate(cp.addr(), ReplicateOptions{Mode: ReplBySize})
	require.Error(t, err)
	p.waitSteady(StateArchived)
	require.Equal(t, before, restorableLines(t, e1, true))
	requireNoTemps(t, p.a1)
	evs, err := p.replicate("", ReplicateOptions{Mode: ReplBySize})
	require.NoError(t, err)
	require.Equal(t, []ReplStep{ReplStepHash, ReplStepDiff, ReplStepDone}, steps(evs))
	require.EqualValues(t, 5, latestGid(t, e1))

	// e16: big diffs, sent one per step, the second cut.
	p.addDiffs(2, 100, func(g uint64) bool { return true })
	d0, err := p.a0.s.Engine().Diffs(replVol, 5, 6)
	require.NoError(t, err)
	cp = startCutProxy(t, p.a1.addr, int64(d0[0].DataSize)+(64<<10))
	_, err = p.replicate(cp.addr(), ReplicateOptions{Mode: ReplBySize})
	require.Error(t, err)
	p.waitSteady(StateArchived)
	require.EqualValues(t, 6, latestGid(t, e1), "the first diff arrived, the second did not")
	requireNoTemps(t, p.a1)
	_, err = p.replicate("", ReplicateOptions{Mode: ReplBySize})
	require.NoError(t, err)
	require.EqualValues(t, 7, latestGid(t, e1))
	for g := uint64(5); g <= 7; g++ {
		require.Equal(t, p.m.sha[g], p.env(p.a1).restoredSHA(ctx, replVol, g), "gid %d", g)
	}
}

// requireNoTemps checks that no temporary file is left in the volume
// directory once a failed step has ended.
func requireNoTemps(t *testing.T, ta *tcpArchive) {
	ents, err := os.ReadDir(filepath.Join(ta.root, "base", replVol))
	require.NoError(t, err)
	for _, e := range ents {
		require.False(t, meta.IsTempName(e.Name()), "temporary file %s left", e.Name())
	}
}

// replSession opens a raw repl-sync session with a1, for the checks a
// well-behaved source never triggers.
func (p *replPair) replSession(ctx context.Context) (*wire.Conn, meta.State) {
	u, err := p.a0.s.Engine().ArchiveUUID(replVol)
	require.NoError(p.t, err)
	c, err := wire.Dial(ctx, p.a1.addr, "raw", ProtoReplSync, nil, replVol, u.String(), "0")
	require.NoError(p.t, err)
	require.NoError(p.t, c.ExpectAccept(ctx))
	k, err := c.RecvU64(ctx)
	require.NoError(p.t, err)
	require.EqualValues(p.t, ReplFirstNone, k)
	var latest meta.State
	require.NoError(p.t, c.RecvValue(ctx, &latest))
	return c, latest
}

// TestReplServerRefusals sends a1 diffs it must refuse (scenario e17 for
// replication: a diff it already has is too-old-diff; one past its latest
// snapshot too-new-diff); nothing changes.
func TestReplServerRefusals(t *testing.T) {
	p := newReplPair(t, nil)
	p.addDiffs(3, 10, func(g uint64) bool { return true })
	_, err := p.replicate("", ReplicateOptions{Mode: ReplByGid, N: 2})
	require.NoError(t, err)
	ctx := testCtx(t)
	before := p.env(p.a1).dirSnapshot()
	u, err := p.a0.s.Engine().UUID(replVol)
	require.NoError(t, err)
	for _, tc := range []struct {
		d    meta.Diff
		code wire.Code
	}{
		{cleanDiff(1, 2, false), wire.ErrTooOldDiff},
		{cleanDiff(3, 4, false), wire.ErrTooNewDiff},
	} {
		c, latest := p.replSession(ctx)
		require.EqualValues(t, 2, latest.SnapB.GidB)
		require.NoError(t, c.SendU64(ctx, uint64(ReplDiff)))
		require.NoError(t, c.SendU64(ctx, p.m.sizeLB))
		require.NoError(t, c.SendBytes(ctx, u[:]))
		require.NoError(t, c.SendValue(ctx, tc.d))
		err := c.ExpectOK(ctx)
		require.ErrorIs(t, err, tc.code, "%s", tc.d)
		c.Close()
		p.waitSteady(StateArchived)
		require.Equal(t, before, p.env(p.a1).dirSnapshot())
	}
	// A bad action number, and a larger source volume.
	c, _ := p.replSession(ctx)
	require.NoError(t, c.SendU64(ctx, 7))
	_, err = c.RecvReply(ctx)
	require.ErrorIs(t, err, wire.ErrProtocol)
	c.Close()
	c, _ = p.replSession(ctx)
	require.NoError(t, c.SendU64(ctx, uint64(ReplDiff)))
	require.NoError(t, c.SendU64(ctx, p.m.sizeLB*2))
	require.NoError(t, c.SendBytes(ctx, u[:]))
	require.NoError(t, c.SendValue(ctx, cleanDiff(2, 3, false)))
	require.ErrorIs(t, c.ExpectOK(ctx), wire.ErrSmallerLvSize)
	c.Close()
	p.waitSteady(StateArchived)
	require.Equal(t, before, p.env(p.a1).dirSnapshot())

	// Refusals at the opening: an unknown volume, a source without an
	// archive uuid.
	c, err = wire.Dial(ctx, p.a1.addr, "raw", ProtoReplSync, nil, "nope", meta.UUID{1}.String(), "0")
	require.NoError(t, err)
	require.ErrorIs(t, c.ExpectAccept(ctx), wire.ErrWrongState)
	c.Close()
	c, err = wire.Dial(ctx, p.a1.addr, "raw", ProtoReplSync, nil, replVol, meta.UUID{}.String(), "1")
	require.NoError(t, err)
	require.ErrorIs(t, c.ExpectAccept(ctx), wire.ErrBadRequest)
	c.Close()
	require.Equal(t, before, p.env(p.a1).dirSnapshot())
}

// TestReplicateRefusals: the source's own checks refuse without touching
// either side.
func TestReplicateRefusals(t *testing.T) {
	p := newReplPair(t, nil)
	ctx := testCtx(t)
	e0 := p.a0.s.Engine()
	_, err := p.replicate("", ReplicateOptions{})
	require.NoError(t, err) // the healthy case, for contrast: a full copy
	before0, before1 := p.env(p.a0).dirSnapshot(), p.env(p.a1).dirSnapshot()

	// Bad arguments over the wire.
	_, _, err = p.a0.cmd(ctx, "replicate", replVol, "gid", "1")
	require.ErrorIs(t, err, wire.ErrBadRequest)
	_, _, err = p.a0.cmd(ctx, "replicate", replVol, "gid", "1", p.a1.addr, "0", "0", "lzo")
	require.ErrorIs(t, err, wire.ErrBadRequest)
	// An unknown volume, a volume with a Restore running.
	err = e0.Replicate(ctx, "nope", ReplicateOptions{Addr: p.a1.addr})
	require.ErrorIs(t, err, ErrWrongState)
	end, err := e0.Volumes().StartAction(replVol, ActionRestore, guard(CmdRestore))
	require.NoError(t, err)
	_, err = p.replicate("", ReplicateOptions{})
	require.ErrorIs(t, err, ErrActionRunning)
	end()
	// No target listening.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	dead := ln.Addr().String()
	require.NoError(t, ln.Close())
	_, err = p.replicate(dead, ReplicateOptions{})
	require.Error(t, err)
	require.Equal(t, before0, p.env(p.a0).dirSnapshot())
	require.Equal(t, before1, p.env(p.a1).dirSnapshot())
	n, err := e0.NumAction(replVol, ActionReplSyncAsClient)
	require.NoError(t, err)
	require.Zero(t, n)
}
