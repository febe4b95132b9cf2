package controller

import (
	"context"
	"testing"
	"time"

	"github.com/pkg/errors"
	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/wdiff"
	"github.com/walb-go/walb/wire"
)

// replGroup is a group with vol backed up to a0 and two more snapshots
// (gids 1, 2, 3 restorable on a0); a1 and a2 are Clear.
func replGroup(t *testing.T) (*fakeGroup, *Controller) {
	t.Helper()
	g, c := newTest(t, 1, 2, 3)
	backedUp(t, g, c)
	for i := 0; i < 2; i++ {
		_, err := c.Snapshot(testCtx(t), g.s(0), vol, []Server{g.a(0)})
		require.NoError(t, err)
	}
	g.forget()
	return g, c
}

func (g *fakeGroup) setArchive(name string, fn func(v *faVol)) {
	g.mu.Lock()
	defer g.mu.Unlock()
	fn(g.archives[name].vols[vol])
}

func TestReplicateOnce(t *testing.T) {
	g, c := replGroup(t)
	ctx := testCtx(t)
	a0, a1 := g.a(0), g.a(1)

	// To a Clear archive: init-vol, then a full replication up to the
	// newest restorable snapshot.
	gid, err := c.ReplicateOnce(ctx, a0, vol, a1, nil)
	require.NoError(t, err)
	require.EqualValues(t, 3, gid)
	require.Equal(t, []string{"init-vol vol0"}, g.srv("a1").actions())
	require.Equal(t, []string{"replicate vol0 gid 3 " + a1.Addr + " 0 0"}, g.srv("a0").actions())
	src, err := c.GetRestorableGids(ctx, a0, vol, true)
	require.NoError(t, err)
	dst, err := c.GetRestorableGids(ctx, a1, vol, true)
	require.NoError(t, err)
	require.Equal(t, src, dst)
	us, err := c.GetArchiveUUID(ctx, a0, vol)
	require.NoError(t, err)
	ud, err := c.GetArchiveUUID(ctx, a1, vol)
	require.NoError(t, err)
	require.Equal(t, us, ud)
	// The replica's image hashes as the source's.
	h0, err := c.BlockHash(ctx, a0, vol, 3, 0, 0)
	require.NoError(t, err)
	h1, err := c.BlockHash(ctx, a1, vol, 3, 0, 0)
	require.NoError(t, err)
	require.Len(t, h0, 1)
	require.Equal(t, h0, h1)
	g.forget()

	// Again, to an older gid with every option: the options travel in
	// walb-tools' order, and a replica already past the gid is done.
	opt := &ReplicateOptions{Gid: 2, DontMerge: true, Sync: &SyncOpt{
		Compression:  wdiff.Compression{Codec: wdiff.CodecZstd, Level: 3, Workers: 2},
		MaxMergeSize: 512 << 20, BulkSize: 256 << 10}}
	gid, err = c.ReplicateOnce(ctx, a0, vol, a1, opt)
	require.NoError(t, err)
	require.EqualValues(t, 2, gid)
	require.Equal(t, []string{"replicate vol0 gid 2 " + a1.Addr + " 0 1 zstd:3:2 512M 256K"}, g.srv("a0").actions())
	require.Empty(t, g.srv("a1").actions())
	// Zero sizes stand for the defaults.
	opt = &ReplicateOptions{Sync: &SyncOpt{Compression: DefaultSyncOpt().Compression}}
	_, err = c.ReplicateOnce(ctx, a0, vol, a1, opt)
	require.NoError(t, err)
	require.Equal(t, []string{"replicate vol0 gid 3 " + a1.Addr + " 0 0 snappy:0:1 1G 64K"}, g.srv("a0").actions())

	// A new snapshot on a0 (not synchronizing to a1) reaches a1 by a
	// diff replication.
	gid, err = c.Snapshot(ctx, g.s(0), vol, []Server{a0})
	require.NoError(t, err)
	g.forget()
	got, err := c.ReplicateOnce(ctx, a0, vol, a1, nil)
	require.NoError(t, err)
	require.Equal(t, gid, got)
	require.NoError(t, c.WaitForRestorable(ctx, a1, vol, gid))
}

func TestReplicateOnceRefusals(t *testing.T) {
	g, c := replGroup(t)
	ctx := testCtx(t)
	a0, a1, a2 := g.a(0), g.a(1), g.a(2)
	_, err := c.ReplicateOnce(ctx, a0, vol, a1, nil)
	require.NoError(t, err)
	g.forget()

	// Each refusal sends nothing that changes a server.
	for _, tc := range []struct {
		name      string
		src, dst  Server
		vol       string
		opt       *ReplicateOptions
		setup     func()
		undo      func()
		want      error
		wantInMsg string
	}{
		{name: "self", src: a0, dst: a0, want: ErrBadArgs},
		{name: "same address", src: a0, dst: Server{Name: "other", Addr: a0.Addr, Kind: KindArchive}, want: ErrBadArgs},
		{name: "storage", src: g.s(0), dst: a1, want: ErrWrongKind},
		{name: "proxy", src: a0, dst: g.p(0), want: ErrWrongKind},
		{name: "bad vol", src: a0, dst: a1, vol: "a b", want: ErrBadArgs},
		{name: "bad address", src: a0, dst: Server{Name: "u", Addr: "nohost", Kind: KindArchive}, want: ErrBadArgs},
		{name: "empty socket", src: a0, dst: Server{Name: "u", Addr: "unix:", Kind: KindArchive}, want: ErrBadArgs},
		{name: "bad sync", src: a0, dst: a1, opt: &ReplicateOptions{Sync: &SyncOpt{Compression: wdiff.Compression{Codec: wdiff.CodecSnappy, Workers: 1}, Delay: time.Millisecond}}, want: ErrBadArgs},
		{name: "gid too new", src: a0, dst: a1, opt: &ReplicateOptions{Gid: 4}, want: ErrBadGid, wantInMsg: "newest clean snapshot 3"},
		{name: "gid too new to a clear archive", src: a0, dst: a2, opt: &ReplicateOptions{Gid: 99}, want: ErrBadGid},
		{name: "source stopped", src: a0, dst: a1,
			setup: func() { g.setArchive("a0", func(v *faVol) { v.state = StateStopped }) },
			undo:  func() { g.setArchive("a0", func(v *faVol) { v.state = StateArchived }) },
			want:  ErrBadState, wantInMsg: "source must be active"},
		{name: "destination stopped", src: a0, dst: a1,
			setup: func() { g.setArchive("a1", func(v *faVol) { v.state = StateStopped }) },
			undo:  func() { g.setArchive("a1", func(v *faVol) { v.state = StateArchived }) },
			want:  ErrBadState, wantInMsg: "destination must be"},
		{name: "other lineage", src: a0, dst: a1,
			setup: func() { g.setArchive("a1", func(v *faVol) { v.archiveUUID = "ffffffffffffffffffffffffffffffff" }) },
			want:  ErrUUIDMismatch, wantInMsg: "replicate with resync"},
		{name: "destination larger", src: a0, dst: a1,
			setup: func() { g.setArchive("a1", func(v *faVol) { v.archiveUUID = ""; v.sizeLB = 4 << 11 }) },
			undo:  func() { g.setArchive("a1", func(v *faVol) { v.sizeLB = 1 << 11 }) },
			opt:   &ReplicateOptions{Resync: true},
			want:  ErrBadState, wantInMsg: "larger on the destination"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.setup != nil {
				tc.setup()
			}
			if tc.undo != nil {
				defer tc.undo()
			}
			v := tc.vol
			if v == "" {
				v = vol
			}
			_, err := c.ReplicateOnceNB(ctx, tc.src, v, tc.dst, tc.opt)
			require.ErrorIs(t, err, tc.want)
			if tc.wantInMsg != "" {
				require.Contains(t, err.Error(), tc.wantInMsg)
			}
			for _, f := range g.order {
				require.Empty(t, f.actions(), f.name)
			}
		})
	}

	// The other lineage is accepted with Resync.
	gid, err := c.ReplicateOnce(ctx, a0, vol, a1, &ReplicateOptions{Resync: true})
	require.NoError(t, err)
	require.EqualValues(t, 3, gid)
	require.Equal(t, []string{"replicate vol0 gid 3 " + a1.Addr + " 1 0"}, g.srv("a0").actions())

	// A failure after accept: the action ends, a1 stays behind.
	g.setArchive("a0", func(v *faVol) { v.failNext = ActionReplSyncAsClient })
	gid, err = c.ReplicateOnce(ctx, a0, vol, a2, nil)
	require.ErrorIs(t, err, ErrNotReached)
	require.EqualValues(t, 3, gid)
	require.Contains(t, err.Error(), "ended without reaching gid 3")
	require.Contains(t, err.Error(), "a2 is SyncReady with no restorable snapshot")
	require.NoError(t, c.VerifyState(ctx, a2, vol, StateSyncReady))

	// A refusal by the source after the checks is its error.
	g.srv("a0").setFail("replicate", errors.Wrap(wire.ErrActionRunning, "Apply"))
	_, err = c.ReplicateOnceNB(ctx, a0, vol, a2, nil)
	require.ErrorIs(t, err, wire.ErrActionRunning)
	g.srv("a0").setFail("replicate", nil)

	// The wait's own checks.
	require.ErrorIs(t, c.WaitForReplicated(ctx, a0, vol, a0, 3), ErrBadArgs)
	err = c.WaitForReplicated(ctx, a0, vol, a2, 3)
	require.ErrorIs(t, err, ErrNotReached)
	// A replication that does not end is bounded by the context, and the
	// error says what was seen last.
	g.setArchive("a0", func(v *faVol) { v.actions[ActionReplSyncAsClient]++ })
	wctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	err = c.WaitForReplicated(wctx, a0, vol, a2, 3)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Contains(t, err.Error(), "last seen: 1 running on a0")
	g.setArchive("a0", func(v *faVol) { v.actions[ActionReplSyncAsClient]-- })
}

func TestReplicateGrowsDestination(t *testing.T) {
	g, c := replGroup(t)
	ctx := testCtx(t)
	a0, a1 := g.a(0), g.a(1)
	_, err := c.ReplicateOnce(ctx, a0, vol, a1, nil)
	require.NoError(t, err)
	g.forget()
	for _, tc := range []struct {
		srcLB   uint64
		command string
	}{
		{4 << 11, "resize vol0 4m"},
		{4<<11 + 8, "resize vol0 4198400"}, // not a whole MiB: bytes
	} {
		g.setArchive("a0", func(v *faVol) { v.sizeLB = tc.srcLB })
		_, err := c.ReplicateOnce(ctx, a0, vol, a1, nil)
		require.NoError(t, err)
		require.Equal(t, []string{tc.command}, g.srv("a1").actions())
		n, err := c.GetVolSizeLB(ctx, a1, vol)
		require.NoError(t, err)
		require.Equal(t, tc.srcLB, n)
		g.forget()
	}
}

func TestSynchronize(t *testing.T) {
	g, c := replGroup(t)
	ctx := testCtx(t)
	a0, a1 := g.a(0), g.a(1)
	opt := DefaultSyncOpt()
	opt.Delay = 3 * time.Second

	// a1 is not synchronizing: it cannot be the source.
	_, err := c.Synchronize(ctx, a1, vol, a0, &opt)
	require.ErrorIs(t, err, ErrBadState)
	for _, f := range g.order {
		require.Empty(t, f.actions(), f.name)
	}

	gid, err := c.Synchronize(ctx, a0, vol, a1, &opt)
	require.NoError(t, err)
	require.EqualValues(t, 3, gid)
	for _, p := range []string{"p0", "p1"} {
		require.Equal(t, []string{"stop vol0 empty", "archive-info add vol0 a1 " + a1.Addr + " snappy:0:1 3", "start vol0"},
			g.srv(p).actions(), p)
	}
	require.Equal(t, []string{"replicate vol0 gid 3 " + a1.Addr + " 0 0 snappy:0:1 1G 64K"}, g.srv("a0").actions())
	require.Equal(t, []string{"init-vol vol0"}, g.srv("a1").actions())
	require.Equal(t, []string{"kick"}, g.srv("s0").actions())
	sync, err := c.IsSynchronizing(ctx, a1, vol)
	require.NoError(t, err)
	require.True(t, sync)
	// New snapshots reach both archives.
	gid, err = c.Snapshot(ctx, g.s(0), vol, []Server{a0, a1})
	require.NoError(t, err)
	require.EqualValues(t, 4, gid)

	// Synchronizing again updates the archive infos.
	g.forget()
	_, err = c.Synchronize(ctx, a0, vol, a1, nil)
	require.NoError(t, err)
	require.Equal(t, []string{"stop vol0 empty", "archive-info update vol0 a1 " + a1.Addr, "start vol0"}, g.srv("p0").actions())

	// stop_synchronizing (§5.7): stop force, delete, start on every
	// proxy; a1 no longer gets snapshots.
	g.forget()
	require.NoError(t, c.StopSynchronizing(ctx, a1, vol))
	for _, p := range []string{"p0", "p1"} {
		require.Equal(t, []string{"stop vol0 force", "archive-info delete vol0 a1", "start vol0"}, g.srv(p).actions(), p)
	}
	require.Equal(t, []string{"kick"}, g.srv("s0").actions())
	sync, err = c.IsSynchronizing(ctx, a1, vol)
	require.NoError(t, err)
	require.False(t, sync)
	gid, err = c.Snapshot(ctx, g.s(0), vol, []Server{a0})
	require.NoError(t, err)
	require.NoError(t, c.VerifyNotRestorable(ctx, a1, vol, gid, 50*time.Millisecond))
}

func TestSynchronizeUndo(t *testing.T) {
	g, c := replGroup(t)
	ctx := testCtx(t)
	a0, a2 := g.a(0), g.a(2)

	// The replication fails after accept: a2's archive infos go, the
	// proxies run again, the storages are kicked.
	g.setArchive("a0", func(v *faVol) { v.failNext = ActionReplSyncAsClient })
	_, err := c.Synchronize(ctx, a0, vol, a2, nil)
	require.ErrorIs(t, err, ErrNotReached)
	for _, p := range []string{"p0", "p1"} {
		require.Equal(t, []string{"stop vol0 empty", "archive-info add vol0 a2 " + a2.Addr,
			"archive-info delete vol0 a2", "start vol0"}, g.srv(p).actions(), p)
		require.NoError(t, c.VerifyState(ctx, g.p(0), vol, StateStarted))
	}
	require.Equal(t, []string{"kick"}, g.srv("s0").actions())
	sync, err := c.IsSynchronizing(ctx, a2, vol)
	require.NoError(t, err)
	require.False(t, sync)
	// Backups go on.
	_, err = c.Snapshot(ctx, g.s(0), vol, []Server{a0})
	require.NoError(t, err)

	// A proxy refusing the archive info: the first proxy's is undone.
	g.forget()
	g.srv("p1").setFail("archive-info add", errors.Wrap(wire.ErrFailed, "disk full"))
	_, err = c.Synchronize(ctx, a0, vol, a2, nil)
	require.ErrorIs(t, err, wire.ErrFailed)
	g.srv("p1").setFail("archive-info add", nil)
	require.Equal(t, []string{"stop vol0 empty", "archive-info add vol0 a2 " + a2.Addr, "archive-info delete vol0 a2", "start vol0"},
		g.srv("p0").actions())
	require.Equal(t, []string{"stop vol0 empty", "archive-info add vol0 a2 " + a2.Addr, "start vol0"}, g.srv("p1").actions(), "the add failed")
	require.Empty(t, g.srv("a0").actions())
}

func TestReplicateSynchronizing(t *testing.T) {
	g, c := replGroup(t)
	ctx := testCtx(t)
	a0, a1 := g.a(0), g.a(1)
	gid, err := c.Replicate(ctx, a0, vol, a1, false, nil)
	require.NoError(t, err)
	require.EqualValues(t, 3, gid)
	sync, err := c.IsSynchronizing(ctx, a1, vol)
	require.NoError(t, err)
	require.False(t, sync)
	g.forget()

	// With synchronizing: replicate once (the bulk of the data, proxies
	// running), then synchronize (proxies stopped for the rest only).
	_, err = c.Snapshot(ctx, g.s(0), vol, []Server{a0})
	require.NoError(t, err)
	g.forget()
	gid, err = c.Replicate(ctx, a0, vol, a1, true, &ReplicateOptions{DontMerge: true})
	require.NoError(t, err)
	require.EqualValues(t, 4, gid)
	require.Equal(t, []string{
		"replicate vol0 gid 4 " + a1.Addr + " 0 1",
		"replicate vol0 gid 4 " + a1.Addr + " 0 0",
	}, g.srv("a0").actions())
	sync, err = c.IsSynchronizing(ctx, a1, vol)
	require.NoError(t, err)
	require.True(t, sync)
}

func TestBlockHashArgs(t *testing.T) {
	g, c := replGroup(t)
	ctx := testCtx(t)
	for _, tc := range []struct {
		bulk, size uint64
		want       string
	}{
		{0, 0, "bhash vol0 3"},
		{64 << 10, 0, "bhash vol0 3 64K"},
		{64 << 10, 1 << 20, "bhash vol0 3 64K 1M"},
		{1000, 3 << 30, "bhash vol0 3 1000 3G"},
	} {
		lines, err := c.BlockHash(ctx, g.a(0), vol, 3, tc.bulk, tc.size)
		require.NoError(t, err)
		require.Len(t, lines, 1)
		require.Equal(t, []string{tc.want}, g.srv("a0").actions())
	}
	_, err := c.BlockHash(ctx, g.a(0), vol, 3, 0, 1<<20)
	require.ErrorIs(t, err, ErrBadArgs)
	_, err = c.BlockHash(ctx, g.s(0), vol, 3, 0, 0)
	require.ErrorIs(t, err, ErrWrongKind)
	_, err = c.BlockHash(ctx, g.a(0), vol, 99, 0, 0)
	require.ErrorIs(t, err, wire.ErrBadRequest)
}

func TestProgress(t *testing.T) {
	for _, tc := range []struct {
		p    Progress
		frac float64
		str  string
	}{
		{Progress{State: "FullSync", DoneLB: 512, SizeLB: 2048}, 0.25, "FullSync  25.0% (512 / 2048 LB)"},
		{Progress{State: "Archived", SizeLB: 2048}, 0, "Archived   0.0% (0 / 2048 LB)"},
		{Progress{State: "FullSync", DoneLB: 100}, 0, "FullSync 100 LB"},
		{Progress{State: "HashSync", DoneLB: 4096, SizeLB: 2048}, 1, "HashSync 100.0% (4096 / 2048 LB)"},
	} {
		require.Equal(t, tc.frac, tc.p.Fraction(), tc.str)
		require.Equal(t, tc.str, tc.p.String())
	}
	g, c := replGroup(t)
	ctx := testCtx(t)
	g.setArchive("a0", func(v *faVol) { v.state, v.progress = "HashSync", 1024 })
	p, err := c.GetProgress(ctx, g.a(0), vol)
	require.NoError(t, err)
	require.Equal(t, Progress{State: "HashSync", DoneLB: 1024, SizeLB: 2048}, p)
	_, err = c.GetProgress(ctx, g.p(0), vol)
	require.ErrorIs(t, err, ErrWrongKind)
	// A storage: its device's size from status VOL.
	g.mu.Lock()
	g.storages["s0"].vols[vol].state, g.storages["s0"].vols[vol].progress = "HashSync", 512
	g.mu.Unlock()
	p, err = c.GetProgress(ctx, g.s(0), vol)
	require.NoError(t, err)
	require.Equal(t, Progress{State: "HashSync", DoneLB: 512, SizeLB: 2048}, p)
	g.mu.Lock()
	g.storages["s0"].vols[vol].state = StateTarget
	g.mu.Unlock()
	// A volume without a size yet.
	g.srv("a0").setFail("get vol-size", errors.Wrap(wire.ErrNotFound, "no base"))
	p, err = c.GetProgress(ctx, g.a(0), vol)
	require.NoError(t, err)
	require.Equal(t, Progress{State: "HashSync", DoneLB: 1024}, p)
}

func TestFormatSize(t *testing.T) {
	for n, want := range map[uint64]string{0: "0", 1: "1", 1023: "1023", 1024: "1K", 1536: "1536", 1 << 20: "1M",
		3 << 30: "3G", 1 << 40: "1T", 5 << 50: "5120T", 4198400: "4100K"} {
		require.Equal(t, want, FormatSize(n), n)
	}
}

func TestCopyArchiveInfoRefusals(t *testing.T) {
	g, c := newTest(t, 1, 3, 1)
	ctx := testCtx(t)
	require.ErrorIs(t, c.CopyArchiveInfo(ctx, g.p(0), vol, g.p(0)), ErrBadArgs)
	require.ErrorIs(t, c.CopyArchiveInfo(ctx, g.p(0), vol, g.a(0)), ErrWrongKind)
	require.ErrorIs(t, c.CopyArchiveInfo(ctx, g.p(0), vol, g.p(1)), ErrBadState, "p0 has nothing to copy")
	require.NoError(t, c.AddArchiveToProxy(ctx, g.p(0), vol, g.a(0), nil, true))
	g.forget()
	require.NoError(t, c.CopyArchiveInfo(ctx, g.p(0), vol, g.p(1)))
	require.Equal(t, []string{"archive-info add vol0 a0 " + g.a(0).Addr + " snappy:0:1 0", "start vol0"}, g.srv("p1").actions())
	require.Empty(t, g.srv("p0").actions())
	require.Empty(t, g.srv("p2").actions())
}
