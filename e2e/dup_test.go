package e2e

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/controller"
)

// TestDuplicatedLayout is issue 5's acceptance 1, walb-tools' "all
// duplicated" layout with every server a separate process on 127.0.0.1:
// storages s0 and s1 hold replicas of the volume (the test writes the
// same data to both devices), proxies p0 and p1 in that priority, the
// primary archive a0 and the secondary a1.
//
//  1. full backup from s0 (s1 Standby), write bursts and snapshots
//     (system.md §10 n1, n2);
//  2. the target moves to s1: go_standby s0, then hash_backup s1 while a
//     writer runs (n12, n3);
//  3. p0 is SIGKILLed: the logs go through p1; p0 comes back (e1);
//  4. replicate a0 -> a1 once (n7);
//  5. synchronizing mode: the snapshots reach a1 as well; after
//     stop_synchronizing, a1 stops advancing (n10).
//
// Every explicit snapshot restores bit-exact on a0, and on a1 every one
// a1 received.
func TestDuplicatedLayout(t *testing.T) {
	requireTools(t, allBins...)
	t.Parallel()
	seed := testSeed(t)
	rng := rand.New(rand.NewPCG(seed, 5))
	dc := newDupCluster(t, dupOptions{storages: 2, proxies: 2, archives: 2})
	s0, s1 := dc.s[0].Server, dc.s[1].Server
	p0, p1 := dc.p[0], dc.p[1]
	a0, a1 := dc.a[0].Server, dc.a[1].Server
	start := time.Now()
	phase := func(format string, args ...any) {
		t.Helper()
		t.Logf("[%5.1fs] %s", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
	}

	burstsAndSnapshots := func(sx controller.Server, n int) []snapshot {
		t.Helper()
		var snaps []snapshot
		for i := 0; i < n; i++ {
			require.NoError(t, dc.writeBurst(dc.ctx(), rng, 5+rng.IntN(20)))
			snaps = append(snaps, dc.snapshot(sx))
		}
		return snaps
	}

	// 1. Full backup from s0; s1 is a Standby replica.
	dc.initStorages()
	full := dc.fullBackup(s0)
	dc.requireState(s1, "Standby")
	phase("full backup from s0: first restorable gid %d", full.gid)
	snaps := append([]snapshot{full}, burstsAndSnapshots(s0, 3)...)
	dc.waitRestorable(a0, snaps[len(snaps)-1].gid)

	// 2. Switch the target to s1 (walb-tools go_standby + hash_backup),
	// with walbc's group commands.
	dc.mustWalbcGroup("go-standby", s0.Name, volume)
	dc.requireState(s0, "Standby")
	// Written while no storage is the target: only the hash backup can
	// bring these to the archive.
	require.NoError(t, dc.writeBurst(dc.ctx(), rng, 20))
	before := dc.restorable(a0, false)
	w := dc.startWriter(seed)
	out, err := dc.walbcGroup("hash-backup", s1.Name, volume, "-bulk", "64k")
	require.NoError(t, w.finish())
	if err != nil {
		t.Fatalf("hash_backup s1 (after go_standby s0): %v", err)
	}
	hashGid := gidOut(t, out)
	phase("hash backup from s1: restorable gid %d; %d write bursts during it", hashGid, w.bursts.Load())
	require.Greater(t, hashGid, before[len(before)-1], "the hash backup's snapshot is newer than every earlier one")
	dc.requireState(s1, "Target")
	dc.requireState(s0, "Standby")
	for _, s := range snaps {
		require.Contains(t, dc.restorable(a0, false), s.gid, "the snapshots from s0 stay restorable after the switch")
	}
	snaps = append(snaps, burstsAndSnapshots(s1, 3)...)
	dc.waitRestorable(a0, snaps[len(snaps)-1].gid)

	// 3. p0 dies: s1's logs go to p1, and again to p0 once it is back
	// (the storage prefers the first proxy; kick rechecks it at once).
	p0.p.kill9()
	phase("p0 killed (SIGKILL)")
	viaP1 := burstsAndSnapshots(s1, 3)
	dc.waitRestorable(a0, viaP1[len(viaP1)-1].gid)
	require.False(t, p0.p.running())
	dc.waitProxySent(p1, viaP1[len(viaP1)-1].gid, "p1 carried the logs while p0 was down")
	snaps = append(snaps, viaP1...)
	p0.p.start(t)
	dc.waitProxyAvailable(s1, p0)
	viaP0 := burstsAndSnapshots(s1, 2)
	dc.waitRestorable(a0, viaP0[len(viaP0)-1].gid)
	dc.waitProxySent(p0, viaP0[len(viaP0)-1].gid, "p0 carries the logs again once it is back")
	snaps = append(snaps, viaP0...)
	require.Equal(t, "Started", dc.state(p1.Server))
	require.Equal(t, "Started", dc.state(p0.Server))

	// 4. Replicate a0 -> a1 once, up to the newest snapshot.
	phase("p0 back: its logs go through p0 again")
	last := snaps[len(snaps)-1]
	dc.replicateOnce(a0, a1, last.gid)
	a1Gids := dc.restorable(a1, false)
	for _, s := range snaps {
		require.Contains(t, a1Gids, s.gid, "a1 after replicate: every snapshot up to gid %d", last.gid)
	}
	onA1 := slices.Clone(snaps)

	// 5. Synchronizing mode: every new snapshot reaches a1 too.
	phase("replicated a0 -> a1 up to gid %d", last.gid)
	dc.synchronize(a0, a1)
	synced := burstsAndSnapshots(s1, 3)
	for _, s := range synced {
		dc.waitRestorable(a0, s.gid)
		dc.waitRestorable(a1, s.gid)
	}
	snaps = append(snaps, synced...)
	onA1 = append(onA1, synced...)
	dc.stopSynchronizing(a1)
	a1Latest, err := dc.ctl.GetLatestSnap(dc.ctx(), a1, volume)
	require.NoError(t, err)
	after := burstsAndSnapshots(s1, 2)
	dc.waitRestorable(a0, after[len(after)-1].gid)
	snaps = append(snaps, after...)
	// Wait long enough for a transfer to a1 to have happened, were one
	// still configured: a1 must not move.
	require.NoError(t, dc.ctl.VerifyNotRestorable(dc.ctx(), a1, volume, after[len(after)-1].gid, 3*time.Second))
	a1Now, err := dc.ctl.GetLatestSnap(dc.ctx(), a1, volume)
	require.NoError(t, err)
	require.Equal(t, a1Latest, a1Now, "a1 stops advancing after stop_synchronizing")

	// Every explicit snapshot restores bit-exact on both archives.
	phase("synchronizing mode ended; a1 stays at %v", a1Now)
	for _, s := range snaps {
		dc.verifyRestore(a0, s)
	}
	for _, s := range onA1 {
		dc.verifyRestore(a1, s)
	}
	phase("%d snapshots verified on a0, %d on a1", len(snaps), len(onA1))
}

// replicateOnce replicates the volume from archive src to dst up to gid
// with walbc replicate-once (walb-tools replicate_once: dst is
// initialized if Clear, the gid waited for), and checks that dst is
// Archived and has gid restorable.
func (dc *dupCluster) replicateOnce(src, dst controller.Server, gid uint64) {
	dc.t.Helper()
	out := dc.mustWalbcGroup("replicate-once", src.Name, volume, dst.Name, "-gid", fmt.Sprint(gid))
	if got := gidOut(dc.t, out); got != gid {
		dc.t.Fatalf("replicate-once %s -> %s -gid %d printed gid %d", src.Name, dst.Name, gid, got)
	}
	dc.requireState(dst, "Archived")
	dc.waitRestorable(dst, gid)
}

// synchronize makes archive ax a synchronizing replica (walbc synchronize,
// system.md §5.7: proxies stopped, ax's archive info added on every proxy,
// replicate-once from the primary, proxies restarted, storages kicked).
func (dc *dupCluster) synchronize(primary, ax controller.Server) {
	dc.t.Helper()
	out := dc.mustWalbcGroup("synchronize", primary.Name, volume, ax.Name)
	dc.t.Logf("synchronize %s -> %s: gid %s", primary.Name, ax.Name, out)
	if got := dc.mustWalbcGroup("is-synchronizing", ax.Name, volume); got != "1" {
		dc.t.Fatalf("is-synchronizing %s after synchronize printed %q, want 1", ax.Name, got)
	}
	ok, err := dc.ctl.IsSynchronizing(dc.ctx(), ax, volume)
	if err != nil || !ok {
		dc.t.Fatalf("controller IsSynchronizing %s after synchronize: %v %v", ax.Name, ok, err)
	}
}

// stopSynchronizing ends ax's synchronizing mode (walbc
// stop-synchronizing).
func (dc *dupCluster) stopSynchronizing(ax controller.Server) {
	dc.t.Helper()
	dc.mustWalbcGroup("stop-synchronizing", ax.Name, volume)
	if got := dc.mustWalbcGroup("is-synchronizing", ax.Name, volume); got != "0" {
		dc.t.Fatalf("is-synchronizing %s after stop-synchronizing printed %q, want 0", ax.Name, got)
	}
}
