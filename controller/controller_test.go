package controller

import (
	"context"
	"testing"
	"time"

	"github.com/pkg/errors"
	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/wire"
)

const vol = "vol0"

// newTest starts a fake group and a controller of it.
func newTest(t *testing.T, ns, np, na int) (*fakeGroup, *Controller) {
	t.Helper()
	g, err := newFakeGroup(ns, np, na)
	require.NoError(t, err)
	t.Cleanup(g.close)
	c, err := New(g.layout, &Options{Logger: quietLogger, PollInterval: 5 * time.Millisecond, ShortTimeout: 10 * time.Second})
	require.NoError(t, err)
	return g, c
}

func (g *fakeGroup) srv(name string) *fakeServer { return g.servers[name] }

func (g *fakeGroup) s(i int) Server { return g.layout.Storages[i] }
func (g *fakeGroup) p(i int) Server { return g.layout.Proxies[i] }
func (g *fakeGroup) a(i int) Server { return g.layout.Archives[i] }

// forget clears every server's command log.
func (g *fakeGroup) forget() {
	for _, f := range g.order {
		f.commands()
	}
}

func TestLayout(t *testing.T) {
	s := Server{Name: "s0", Addr: "h:1", Kind: KindStorage}
	p := Server{Name: "p0", Addr: "h:2", Kind: KindProxy}
	a := Server{Name: "a0", Addr: "h:3", Kind: KindArchive}
	a1 := Server{Name: "a1", Addr: "h:4", Kind: KindArchive}
	good := Layout{Storages: []Server{s}, Proxies: []Server{p}, Archives: []Server{a, a1}}
	require.NoError(t, good.Validate())
	require.Equal(t, []Server{s, p, a, a1}, good.All())
	pr, err := good.Primary()
	require.NoError(t, err)
	require.Equal(t, a, pr)
	f, ok := good.Find("a1")
	require.True(t, ok)
	require.Equal(t, a1, f)
	_, ok = good.Find("x")
	require.False(t, ok)
	args, err := good.StorageArgs()
	require.NoError(t, err)
	require.Equal(t, []string{"-archive", "h:3", "-proxy", "h:2"}, args)
	require.NoError(t, Layout{}.Validate())
	_, err = Layout{}.Primary()
	require.ErrorIs(t, err, ErrBadLayout)

	for name, l := range map[string]Layout{
		"kind":      {Storages: []Server{p}},
		"zero kind": {Archives: []Server{{Name: "a", Addr: "h:1"}}},
		"dup":       {Storages: []Server{s}, Proxies: []Server{{Name: "s0", Addr: "h:9", Kind: KindProxy}}},
		"no name":   {Storages: []Server{{Addr: "h:1", Kind: KindStorage}}},
		"space":     {Storages: []Server{{Name: "s 0", Addr: "h:1", Kind: KindStorage}}},
		"no addr":   {Storages: []Server{{Name: "s", Kind: KindStorage}}},
	} {
		require.ErrorIs(t, l.Validate(), ErrBadLayout, name)
		_, err := New(l, nil)
		require.ErrorIs(t, err, ErrBadLayout, name)
	}
	for _, k := range []Kind{KindStorage, KindProxy, KindArchive} {
		got, err := ParseKind(k.String())
		require.NoError(t, err)
		require.Equal(t, k, got)
	}
	_, err = ParseKind("disk")
	require.ErrorIs(t, err, ErrWrongKind)
	require.Equal(t, "kind(0)", Kind(0).String())
}

func TestKindsAndQueries(t *testing.T) {
	g, c := newTest(t, 1, 1, 1)
	ctx := testCtx(t)
	require.NoError(t, c.CheckKinds(ctx))
	require.Len(t, c.AliveServers(ctx), 3)
	ht, err := c.HostType(ctx, g.p(0))
	require.NoError(t, err)
	require.Equal(t, "proxy", ht)

	// A layout whose addresses are swapped is caught.
	bad := g.layout
	bad.Storages = []Server{{Name: "s0", Addr: g.a(0).Addr, Kind: KindStorage}}
	bc, err := New(bad, &Options{Logger: quietLogger})
	require.NoError(t, err)
	require.ErrorIs(t, bc.CheckKinds(ctx), ErrWrongKind)

	// Wrong kinds are refused before anything is sent.
	_, err = c.Restore(ctx, g.s(0), vol, 1)
	require.ErrorIs(t, err, ErrWrongKind)
	_, err = c.SnapshotNB(ctx, g.a(0), vol)
	require.ErrorIs(t, err, ErrWrongKind)
	_, err = c.IsWdiffSendError(ctx, g.p(0), vol, g.s(0))
	require.ErrorIs(t, err, ErrWrongKind)
	require.ErrorIs(t, c.InitVol(ctx, g.p(0), vol, ""), ErrWrongKind)
	// Bad volume names too.
	_, err = c.GetState(ctx, g.s(0), "a/b")
	require.ErrorIs(t, err, ErrBadArgs)
	require.Empty(t, g.srv("s0").commands())

	st, err := c.GetState(ctx, g.s(0), vol)
	require.NoError(t, err)
	require.Equal(t, StateClear, st)
	all := c.GetStateAll(ctx, vol)
	require.Len(t, all, 3)
	for _, ss := range all {
		require.NoError(t, ss.Err)
		require.Equal(t, StateClear, ss.State)
	}
	lines, err := c.Status(ctx, g.s(0), "")
	require.NoError(t, err)
	require.Contains(t, lines, "fake\ts0")
	lines, err = c.Status(ctx, g.s(0), vol)
	require.NoError(t, err)
	require.Equal(t, []string{"volume\tvol0", "sizeLb 2048"}, lines)
	require.ErrorIs(t, c.VerifyState(ctx, g.a(0), vol, StateArchived), ErrBadState)

	require.NoError(t, c.InitStorage(ctx, g.s(0), vol, "/dev/wdev0"))
	vols, err := c.GetVolList(ctx, g.s(0))
	require.NoError(t, err)
	require.Equal(t, []string{vol}, vols)
	u, err := c.GetUUID(ctx, g.s(0), vol)
	require.NoError(t, err)
	require.Equal(t, "00112233445566778899aabbccddeeff", u.String())
	lu, err := c.GetLogUsage(ctx, g.s(0), vol)
	require.NoError(t, err)
	require.Equal(t, []LogUsage{{Vol: vol, UsagePB: 10, CapacityPB: 2048, PBS: 4096}}, lu)
	ov, err := c.IsOverflow(ctx, g.s(0), vol)
	require.NoError(t, err)
	require.False(t, ov)
	// An error reply keeps its wire code.
	_, err = c.IsOverflow(ctx, g.s(0), "other")
	require.ErrorIs(t, err, wire.ErrWrongState)
}

func TestInitStorageAndClear(t *testing.T) {
	g, c := newTest(t, 1, 1, 1)
	ctx := testCtx(t)
	s0 := g.srv("s0")
	require.ErrorIs(t, c.InitVol(ctx, g.s(0), vol, ""), ErrBadArgs)
	require.ErrorIs(t, c.InitVol(ctx, g.a(0), vol, "/dev/x"), ErrBadArgs)
	require.NoError(t, c.InitStorage(ctx, g.s(0), vol, "/dev/wdev0"))
	require.Equal(t, []string{"init-vol vol0 /dev/wdev0", "start vol0 standby"}, s0.actions())
	require.NoError(t, c.VerifyState(ctx, g.s(0), vol, StateStandby))
	// Twice: the server's refusal, with its code.
	err := c.InitStorage(ctx, g.s(0), vol, "/dev/wdev0")
	require.ErrorIs(t, err, wire.ErrWrongState)
	s0.commands()

	// Clear from Standby: stop (to SyncReady), then clear-vol.
	require.NoError(t, c.ClearVol(ctx, g.s(0), vol))
	require.Equal(t, []string{"stop vol0 force", "clear-vol vol0"}, s0.actions())
	require.NoError(t, c.VerifyState(ctx, g.s(0), vol, StateClear))
	require.NoError(t, c.ClearVol(ctx, g.s(0), vol)) // already Clear
	require.Empty(t, s0.actions())

	// Archive: Archived -> stop force -> clear.
	require.NoError(t, c.InitVol(ctx, g.a(0), vol, ""))
	g.mu.Lock()
	g.archives["a0"].vols[vol].state = StateArchived
	g.mu.Unlock()
	require.NoError(t, c.ClearVol(ctx, g.a(0), vol))
	require.Equal(t, []string{"init-vol vol0", "stop vol0 force", "clear-vol vol0"}, g.srv("a0").actions())

	// Proxy: Started -> stop force -> clear.
	require.NoError(t, c.AddArchiveToProxy(ctx, g.p(0), vol, g.a(0), nil, true))
	require.NoError(t, c.VerifyState(ctx, g.p(0), vol, StateStarted))
	g.forget()
	require.NoError(t, c.ClearVol(ctx, g.p(0), vol))
	require.Equal(t, []string{"stop vol0 force", "clear-vol vol0"}, g.srv("p0").actions())

	// A storage in a transient state cannot be cleared.
	require.NoError(t, c.InitVol(ctx, g.s(0), vol, "/dev/wdev0"))
	g.mu.Lock()
	g.storages["s0"].vols[vol].state = "FullSync"
	g.mu.Unlock()
	require.ErrorIs(t, c.ClearVol(ctx, g.s(0), vol), ErrBadState)
}

// backedUp runs init and a full backup of vol from s0 and returns its gid.
func backedUp(t *testing.T, g *fakeGroup, c *Controller) uint64 {
	t.Helper()
	ctx := testCtx(t)
	require.NoError(t, c.InitStorage(ctx, g.s(0), vol, "/dev/wdev0"))
	gid, err := c.FullBackup(ctx, g.s(0), vol, &BackupOptions{BulkSize: 64 << 10})
	require.NoError(t, err)
	return gid
}

func TestFullBackup(t *testing.T) {
	g, c := newTest(t, 2, 2, 2)
	ctx := testCtx(t)
	require.NoError(t, c.InitStorage(ctx, g.s(1), vol, "/dev/wdev1"))
	g.forget()
	gid := backedUp(t, g, c)
	require.EqualValues(t, 1, gid)

	// The wire exchange of walb-tools' full_backup.
	require.Equal(t, []string{
		"init-vol vol0 /dev/wdev0", "start vol0 standby", // InitStorage
		"stop vol0 graceful",  // Standby -> SyncReady
		"kick",                // after a0 started synchronizing
		"full-bkp vol0 65536", // the backup
	}, g.srv("s0").actions())
	require.Equal(t, []string{"kick"}, g.srv("s1").actions(), "every storage is kicked after synchronizing changes")
	for _, p := range []string{"p0", "p1"} {
		require.Equal(t, []string{"archive-info add vol0 a0 " + g.a(0).Addr, "start vol0", "kick"}, g.srv(p).actions(), p)
	}
	require.Equal(t, []string{"init-vol vol0"}, g.srv("a0").actions())
	require.Empty(t, g.srv("a1").actions())
	require.NoError(t, c.VerifyState(ctx, g.s(0), vol, StateTarget))
	sync, err := c.IsSynchronizing(ctx, g.a(0), vol)
	require.NoError(t, err)
	require.True(t, sync)
	sync, err = c.IsSynchronizing(ctx, g.a(1), vol)
	require.NoError(t, err)
	require.False(t, sync)

	// A second backup while Target is refused before anything is sent.
	g.forget()
	_, err = c.FullBackup(ctx, g.s(0), vol, nil)
	require.ErrorIs(t, err, ErrBadState)
	require.Empty(t, g.srv("s0").actions())
	// So is one from s1 while s0 is Target.
	_, err = c.FullBackup(ctx, g.s(1), vol, nil)
	require.ErrorIs(t, err, ErrBadState)
}

func TestFullBackupRefusedByArchive(t *testing.T) {
	g, c := newTest(t, 1, 1, 1)
	ctx := testCtx(t)
	require.NoError(t, c.InitStorage(ctx, g.s(0), vol, "/dev/wdev0"))
	require.NoError(t, c.InitVol(ctx, g.a(0), vol, ""))
	g.mu.Lock()
	g.archives["a0"].vols[vol].state = StateArchived // m1: not SyncReady
	g.mu.Unlock()
	_, err := c.FullBackup(ctx, g.s(0), vol, nil)
	require.ErrorIs(t, err, wire.ErrWrongState)
	require.NoError(t, c.VerifyState(ctx, g.s(0), vol, StateSyncReady))
}

func TestFullBackupFailsAfterAccept(t *testing.T) {
	g, c := newTest(t, 1, 1, 1)
	ctx := testCtx(t)
	require.NoError(t, c.InitStorage(ctx, g.s(0), vol, "/dev/wdev0"))
	// The storage accepts, then the copy fails and it rolls back.
	g.srv("s0").handleOverride("full-bkp", func(c *wire.Conn, ctx context.Context, a []string) error {
		st := g.storages["s0"]
		st.vols[vol].state = "FullSync"
		g.later(func() { st.vols[vol].state = StateSyncReady })
		return c.SendAccept(ctx)
	})
	_, err := c.FullBackup(ctx, g.s(0), vol, nil)
	require.ErrorIs(t, err, ErrBadState)
	require.Contains(t, err.Error(), "backup failed")
	require.Contains(t, err.Error(), "reached SyncReady")
}

func TestSnapshotRestoreApplyMerge(t *testing.T) {
	g, c := newTest(t, 1, 1, 2)
	ctx := testCtx(t)
	gid0 := backedUp(t, g, c)

	// Snapshot waits until a0 can restore it.
	gids := []uint64{gid0}
	for i := 0; i < 4; i++ {
		gid, err := c.Snapshot(ctx, g.s(0), vol, []Server{g.a(0)})
		require.NoError(t, err)
		gids = append(gids, gid)
	}
	require.Equal(t, []uint64{1, 2, 3, 4, 5}, gids)
	rs, err := c.GetRestorable(ctx, g.a(0), vol, false)
	require.NoError(t, err)
	require.Len(t, rs, 5)
	for i, r := range rs {
		require.Equal(t, gids[i], r.Gid)
		require.False(t, r.Timestamp.IsZero())
	}
	// a1 is not active: snapshot refuses to wait for it.
	_, err = c.Snapshot(ctx, g.s(0), vol, []Server{g.a(1)})
	require.ErrorIs(t, err, ErrBadState)

	// Restore.
	g.forget()
	img, err := c.Restore(ctx, g.a(0), vol, 3)
	require.NoError(t, err)
	require.Equal(t, RestoredImage{Vol: vol, Gid: 3, Path: "/var/walb/a0/restored/3.img"}, img)
	require.Equal(t, []string{"restore vol0 3"}, g.srv("a0").actions())
	g.mu.Lock()
	g.archives["a0"].export = true
	g.mu.Unlock()
	img, err = c.RestoredImage(ctx, g.a(0), vol, 3)
	require.NoError(t, err)
	require.Equal(t, "vol/3", img.Export)
	// An archive without restored-path (walb-tools') gets the LV path.
	g.srv("a0").setFail("get restored-path", errors.Wrap(wire.ErrBadRequest, "unknown get target"))
	img, err = c.RestoredImage(ctx, g.a(0), vol, 3)
	require.NoError(t, err)
	require.Equal(t, "/dev/vg0/wr_vol0_3", img.Path)
	g.srv("a0").setFail("get restored-path", nil)
	_, err = c.Restore(ctx, g.a(0), vol, 3)
	require.ErrorIs(t, err, ErrBadGid)
	_, err = c.Restore(ctx, g.a(0), vol, 99)
	require.ErrorIs(t, err, wire.ErrBadRequest)
	// A restore that ends without its image.
	g.mu.Lock()
	g.archives["a0"].vols[vol].failNext = ActionRestore
	g.mu.Unlock()
	_, err = c.Restore(ctx, g.a(0), vol, 4)
	require.ErrorIs(t, err, ErrNotReached)
	restored, err := c.GetRestored(ctx, g.a(0), vol)
	require.NoError(t, err)
	require.Equal(t, []uint64{3}, restored)
	require.NoError(t, c.DelRestored(ctx, g.a(0), vol, 3))
	restored, err = c.GetRestored(ctx, g.a(0), vol)
	require.NoError(t, err)
	require.Empty(t, restored)

	// Merge 2..4 across a disabled snapshot 3.
	_, err = c.Snapshot(ctx, g.s(0), vol, []Server{g.a(0)})
	require.NoError(t, err)
	require.ErrorIs(t, c.Merge(ctx, g.a(0), vol, 2, 4), wire.ErrBadRequest, "explicit snapshot 3 in between")
	require.NoError(t, c.DisableSnapshot(ctx, g.a(0), vol, 3))
	all, err := c.GetRestorableGids(ctx, g.a(0), vol, true)
	require.NoError(t, err)
	expl, err := c.GetRestorableGids(ctx, g.a(0), vol, false)
	require.NoError(t, err)
	require.Equal(t, []uint64{1, 2, 3, 4, 5, 6}, all)
	require.Equal(t, []uint64{1, 2, 4, 5, 6}, expl)
	require.ErrorIs(t, c.Merge(ctx, g.a(0), vol, 2, 7), ErrBadGid)
	require.ErrorIs(t, c.Merge(ctx, g.a(0), vol, 4, 4), ErrBadArgs)
	g.forget()
	require.NoError(t, c.Merge(ctx, g.a(0), vol, 2, 4))
	require.Equal(t, []string{"merge vol0 2 gid 4"}, g.srv("a0").actions())
	ok, err := c.ExistsDiff(ctx, g.a(0), vol, meta.CleanSnap(2), meta.CleanSnap(4))
	require.NoError(t, err)
	require.True(t, ok)
	n, err := c.GetNumDiff(ctx, g.a(0), vol, 0, LatestGid)
	require.NoError(t, err)
	require.EqualValues(t, 5, n)
	require.NoError(t, c.EnableSnapshot(ctx, g.a(0), vol, 4))
	require.ErrorIs(t, c.EnableSnapshot(ctx, g.a(0), vol), ErrBadArgs)

	// Apply up to 4: the base moves and 4 is the oldest restorable.
	require.ErrorIs(t, c.Apply(ctx, g.a(0), vol, 3), ErrBadGid, "3 was merged away")
	require.NoError(t, c.Apply(ctx, g.a(0), vol, 4))
	base, err := c.GetBase(ctx, g.a(0), vol)
	require.NoError(t, err)
	require.Equal(t, meta.CleanSnap(4), base.SnapB)
	require.False(t, base.IsApplying)
	expl, err = c.GetRestorableGids(ctx, g.a(0), vol, false)
	require.NoError(t, err)
	require.Equal(t, []uint64{4, 5, 6}, expl)
	ds, err := c.GetApplicableDiffList(ctx, g.a(0), vol, LatestGid)
	require.NoError(t, err)
	require.Len(t, ds, 2)
	require.Equal(t, meta.CleanSnap(4), ds[0].SnapB)
	// An apply that ends short of its goal.
	g.mu.Lock()
	g.archives["a0"].vols[vol].failNext = ActionApply
	g.mu.Unlock()
	require.ErrorIs(t, c.Apply(ctx, g.a(0), vol, 5), ErrNotReached)
	latest, err := c.GetLatestClean(ctx, g.a(0), vol)
	require.NoError(t, err)
	require.EqualValues(t, 6, latest)
	snap, err := c.GetMetaSnap(ctx, g.a(0), vol, LatestGid)
	require.NoError(t, err)
	require.Equal(t, meta.CleanSnap(6), snap)
	acts, err := c.GetAllActions(ctx, g.a(0))
	require.NoError(t, err)
	require.Len(t, acts, 1)
	require.Equal(t, 0, acts[0].Actions[ActionApply].Running)

	gone, err := c.GcDiff(ctx, g.a(0), vol)
	require.NoError(t, err)
	require.EqualValues(t, 0, gone)
}

func TestStopStartGoStandby(t *testing.T) {
	g, c := newTest(t, 1, 1, 1)
	ctx := testCtx(t)
	backedUp(t, g, c)
	g.forget()
	for _, s := range []Server{g.p(0), g.a(0), g.s(0)} {
		require.NoError(t, c.Stop(ctx, s, vol, StopGraceful), s.Name)
		require.NoError(t, c.VerifyState(ctx, s, vol, StateStopped), s.Name)
		require.NoError(t, c.Start(ctx, s, vol), s.Name)
	}
	require.Equal(t, []string{"stop vol0 graceful", "start vol0 target"}, g.srv("s0").actions())
	require.Equal(t, []string{"stop vol0 graceful", "start vol0"}, g.srv("a0").actions())
	_, err := c.StopNB(ctx, g.s(0), vol, StopEmpty)
	require.ErrorIs(t, err, ErrBadArgs)
	_, err = c.StopNB(ctx, g.s(0), vol, "nicely")
	require.ErrorIs(t, err, ErrBadArgs)
	require.ErrorIs(t, c.WaitForStopped(ctx, g.s(0), vol, ""), ErrBadArgs)
	// Starting what runs already is the server's refusal.
	require.ErrorIs(t, c.Start(ctx, g.a(0), vol), wire.ErrWrongState)

	// Target -> Standby: stop force, stop synchronizing, reset, standby.
	g.forget()
	require.NoError(t, c.GoStandby(ctx, g.s(0), vol))
	require.Equal(t, []string{"stop vol0 force", "kick", "reset-vol vol0", "start vol0 standby"}, g.srv("s0").actions())
	require.Equal(t, []string{"stop vol0 force", "archive-info delete vol0 a0"}, g.srv("p0").actions())
	require.NoError(t, c.GoStandby(ctx, g.s(0), vol)) // no-op
	require.Empty(t, g.srv("s0").actions())
}

func TestArchiveInfo(t *testing.T) {
	g, c := newTest(t, 1, 2, 2)
	ctx := testCtx(t)
	opt := DefaultSyncOpt()
	opt.Delay = 5 * time.Second
	require.NoError(t, c.AddArchiveToProxy(ctx, g.p(0), vol, g.a(1), &opt, false))
	require.NoError(t, c.VerifyState(ctx, g.p(0), vol, StateStopped))
	info, err := c.GetArchiveInfo(ctx, g.p(0), vol, g.a(1))
	require.NoError(t, err)
	require.Equal(t, g.a(1).Addr, info.Addr)
	require.Equal(t, 5*time.Second, info.Delay)
	_, err = c.IsSynchronizing(ctx, g.a(1), vol)
	require.ErrorIs(t, err, ErrMixedSync)

	opt.Delay = 0
	opt.Compression.Workers = 2
	require.NoError(t, c.UpdateArchiveInfo(ctx, g.p(0), vol, g.a(1), opt))
	info, err = c.GetArchiveInfo(ctx, g.p(0), vol, g.a(1))
	require.NoError(t, err)
	require.Equal(t, "snappy:0:2", info.Compression.String())
	require.ErrorIs(t, c.UpdateArchiveInfo(ctx, g.p(0), vol, g.a(0), opt), ErrBadState)
	bad := opt
	bad.Delay = time.Millisecond
	require.ErrorIs(t, c.AddArchiveToProxy(ctx, g.p(0), vol, g.a(0), &bad, false), ErrBadArgs)

	// Replace p0 by p1: copy the archive infos, which starts p1.
	require.NoError(t, c.CopyArchiveInfo(ctx, g.p(0), vol, g.p(1)))
	require.NoError(t, c.VerifyState(ctx, g.p(1), vol, StateStarted))
	info, err = c.GetArchiveInfo(ctx, g.p(1), vol, g.a(1))
	require.NoError(t, err)
	require.Equal(t, "snappy:0:2", info.Compression.String())
	sync, err := c.IsSynchronizing(ctx, g.a(1), vol)
	require.NoError(t, err)
	require.True(t, sync)
	names, err := c.GetArchiveInfoList(ctx, g.p(1), vol)
	require.NoError(t, err)
	require.Equal(t, []string{"a1"}, names)

	g.forget()
	require.NoError(t, c.StopSynchronizing(ctx, g.a(1), vol))
	require.Equal(t, []string{"archive-info delete vol0 a1"}, g.srv("p0").actions())
	require.Equal(t, []string{"stop vol0 force", "archive-info delete vol0 a1"}, g.srv("p1").actions())
	require.Equal(t, []string{"kick"}, g.srv("s0").actions())
	require.NoError(t, c.VerifyState(ctx, g.p(1), vol, StateClear))
	sync, err = c.IsSynchronizing(ctx, g.a(1), vol)
	require.NoError(t, err)
	require.False(t, sync)

	// A proxy that forwards to an archive outside the layout.
	require.NoError(t, c.Client(g.p(0)).Call(ctx, "archive-info", "add", vol, "zz", "h:1"))
	require.ErrorIs(t, c.CopyArchiveInfo(ctx, g.p(0), vol, g.p(1)), ErrBadLayout)

	// get is-wdiff-send-error
	require.NoError(t, c.AddArchiveToProxy(ctx, g.p(0), vol, g.a(0), nil, true))
	se, err := c.IsWdiffSendError(ctx, g.p(0), vol, g.a(0))
	require.NoError(t, err)
	require.False(t, se)
	ls, err := c.GetLatestSnap(ctx, g.p(0), vol)
	require.NoError(t, err)
	require.Equal(t, []LatestSnap{{Vol: vol, Kind: KindProxy, Archive: "a0"}}, ls)
}

func TestResize(t *testing.T) {
	g, c := newTest(t, 1, 1, 2)
	ctx := testCtx(t)
	backedUp(t, g, c)
	g.forget()
	require.NoError(t, c.Resize(ctx, vol, 4, true))
	require.Equal(t, []string{"resize vol0 4m zeroclear"}, g.srv("a0").actions())
	require.Empty(t, g.srv("a1").actions(), "Clear on a1")
	require.Equal(t, []string{"resize vol0 4m"}, g.srv("s0").actions())
	n, err := c.GetVolSizeLB(ctx, g.a(0), vol)
	require.NoError(t, err)
	require.EqualValues(t, 4<<11, n)
	require.NoError(t, c.ResizeArchive(ctx, g.a(0), vol, 4, false)) // same size: nothing
	require.Empty(t, g.srv("a0").actions())
	require.ErrorIs(t, c.ResizeArchive(ctx, g.a(0), vol, 2, false), ErrBadArgs)
	require.ErrorIs(t, c.ResizeArchive(ctx, g.a(0), vol, 0, false), ErrBadArgs)
	// The archive answers ok but the size does not change.
	g.srv("a0").handleOverride("resize", func(c *wire.Conn, ctx context.Context, a []string) error { return c.SendOK(ctx) })
	require.ErrorIs(t, c.ResizeArchive(ctx, g.a(0), vol, 8, false), ErrNotReached)
}

func TestWaitsAndTimeouts(t *testing.T) {
	g, c := newTest(t, 1, 1, 1)
	ctx := testCtx(t)
	backedUp(t, g, c)

	// A gid that never comes: the context ends the wait.
	wctx, cancel := context.WithTimeout(ctx, 60*time.Millisecond)
	defer cancel()
	err := c.WaitForRestorable(wctx, g.a(0), vol, 42)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Contains(t, err.Error(), "gid 42 of vol0 to be restorable")
	require.Contains(t, err.Error(), "last seen: [1]")

	require.NoError(t, c.VerifyNotRestorable(ctx, g.a(0), vol, 42, 30*time.Millisecond))
	require.ErrorIs(t, c.VerifyNotRestorable(ctx, g.a(0), vol, 1, time.Second), ErrBadGid)

	// A query failure ends a wait at once, with the server's error.
	g.srv("a0").setFail("get restorable", errors.Wrap(wire.ErrNotFound, "gone"))
	err = c.WaitForRestorable(ctx, g.a(0), vol, 42)
	require.ErrorIs(t, err, wire.ErrNotFound)
	g.srv("a0").setFail("get restorable", nil)

	// A state change that never ends hits ShortTimeout.
	sc, err := New(g.layout, &Options{Logger: quietLogger, PollInterval: 5 * time.Millisecond, ShortTimeout: 50 * time.Millisecond})
	require.NoError(t, err)
	g.srv("a0").handleOverride("stop", func(c *wire.Conn, ctx context.Context, a []string) error {
		g.archives["a0"].vols[vol].state = "Stop" // and stays there
		return c.SendAccept(ctx)
	})
	err = sc.Stop(ctx, g.a(0), vol, StopForce)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.Contains(t, err.Error(), "last seen: Stop")

	// A snapshot that the archives never get (their proxy is stopped).
	g.mu.Lock()
	g.proxies["p0"].vols[vol].state = StateStopped
	g.archives["a0"].vols[vol].state = StateArchived
	g.mu.Unlock()
	sctx, cancel2 := context.WithTimeout(ctx, 80*time.Millisecond)
	defer cancel2()
	gid, err := c.Snapshot(sctx, g.s(0), vol, []Server{g.a(0)})
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.EqualValues(t, 2, gid, "the gid is returned with the error")
}

func TestShutdown(t *testing.T) {
	g, c := newTest(t, 1, 1, 1)
	ctx := testCtx(t)
	require.ErrorIs(t, c.Shutdown(ctx, g.s(0), "now"), ErrBadArgs)
	require.NoError(t, c.Shutdown(ctx, g.s(0), ShutdownGraceful))
	// s0 is going away; the others shut down too, s0's failure is
	// reported with the rest.
	require.Eventually(t, func() bool { _, err := c.HostType(ctx, g.s(0)); return err != nil }, 5*time.Second, 5*time.Millisecond)
	err := c.ShutdownAll(ctx, ShutdownForce)
	require.Error(t, err)
	require.Contains(t, err.Error(), g.s(0).Addr)
	require.Eventually(t, func() bool { return len(c.AliveServers(ctx)) == 0 }, 5*time.Second, 5*time.Millisecond)
}

func TestSetFullScanBpsAndKick(t *testing.T) {
	g, c := newTest(t, 1, 1, 1)
	ctx := testCtx(t)
	require.NoError(t, c.SetFullScanBps(ctx, g.s(0), 100<<20))
	require.NoError(t, c.Kick(ctx, g.p(0), vol, "a0"))
	require.ErrorIs(t, c.KickAll(ctx, []Server{g.a(0)}), ErrWrongKind)
	require.Equal(t, []string{"set-full-scan-bps 104857600"}, g.srv("s0").actions())
	require.Equal(t, []string{"kick vol0 a0"}, g.srv("p0").actions())
	require.ErrorIs(t, c.SetFullScanBps(ctx, g.p(0), 1), ErrWrongKind)
}

func TestHashBackup(t *testing.T) {
	g, c := newTest(t, 1, 2, 1)
	ctx := testCtx(t)
	gid0 := backedUp(t, g, c)
	_, err := c.Snapshot(ctx, g.s(0), vol, []Server{g.a(0)})
	require.NoError(t, err)
	// e4: the storage stopped (say, after an overflow); a hash backup
	// brings it back as the target.
	require.NoError(t, c.Stop(ctx, g.s(0), vol, StopForce))
	g.forget()
	gid, err := c.HashBackup(ctx, g.s(0), vol, &BackupOptions{Sync: &SyncOpt{Compression: DefaultSyncOpt().Compression, Delay: 2 * time.Second}})
	require.NoError(t, err)
	require.Greater(t, gid, gid0+1)
	require.Equal(t, []string{"reset-vol vol0", "kick", "kick", "hash-bkp vol0"}, g.srv("s0").actions())
	// a0 was synchronizing: it is removed and added again with the options.
	require.Equal(t, []string{"stop vol0 force", "archive-info delete vol0 a0",
		"archive-info add vol0 a0 " + g.a(0).Addr + " snappy:0:1 2", "start vol0", "kick"}, g.srv("p0").actions())
	require.NoError(t, c.VerifyState(ctx, g.s(0), vol, StateTarget))
	restorable, err := c.GetRestorableGids(ctx, g.a(0), vol, false)
	require.NoError(t, err)
	require.Equal(t, gid, restorable[len(restorable)-1])

	// A hash backup to an archive that lost the volume is refused (m2).
	require.NoError(t, c.Stop(ctx, g.s(0), vol, StopForce))
	require.NoError(t, c.Stop(ctx, g.a(0), vol, StopForce))
	require.NoError(t, c.Reset(ctx, g.a(0), vol))
	_, err = c.HashBackup(ctx, g.s(0), vol, nil)
	require.ErrorIs(t, err, wire.ErrWrongState)
	gid, err = c.FullBackup(ctx, g.s(0), vol, nil)
	require.NoError(t, err)
	require.EqualValues(t, 1, gid)
}

func TestDelCold(t *testing.T) {
	g, c := newTest(t, 1, 1, 1)
	ctx := testCtx(t)
	backedUp(t, g, c)
	g.forget()
	g.mu.Lock()
	g.archives["a0"].vols[vol].cold[1] = true
	g.mu.Unlock()
	cold, err := c.GetCold(ctx, g.a(0), vol)
	require.NoError(t, err)
	require.Equal(t, []uint64{1}, cold)
	require.NoError(t, c.DelCold(ctx, g.a(0), vol, 1))
	cold, err = c.GetCold(ctx, g.a(0), vol)
	require.NoError(t, err)
	require.Empty(t, cold)
	require.Equal(t, []string{"del-cold vol0 1"}, g.srv("a0").actions())

	defer func(d time.Duration) { delRetryDelay = d }(delRetryDelay)
	delRetryDelay = time.Millisecond
	// A deletion that fails while the image stays is retried, then fails.
	g.mu.Lock()
	g.archives["a0"].vols[vol].cold[1] = true
	g.mu.Unlock()
	g.srv("a0").setFail("del-cold", errors.Wrap(wire.ErrActionRunning, "busy"))
	require.ErrorIs(t, c.DelCold(ctx, g.a(0), vol, 1), wire.ErrActionRunning)
	require.Equal(t, []string{"del-cold vol0 1", "del-cold vol0 1", "del-cold vol0 1"}, g.srv("a0").actions())
	// One that failed but removed the image anyway (walb-tools: the next
	// try finds it gone) succeeds.
	g.srv("a0").setFail("del-cold", nil)
	g.srv("a0").handleOverride("del-cold", func(c *wire.Conn, ctx context.Context, a []string) error {
		delete(g.archives["a0"].vols[vol].cold, 1)
		return errors.Wrap(wire.ErrFailed, "flush failed after removal")
	})
	require.NoError(t, c.DelCold(ctx, g.a(0), vol, 1))
	require.Equal(t, []string{"del-cold vol0 1"}, g.srv("a0").actions())
}
