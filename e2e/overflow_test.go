package e2e

import (
	"context"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/controller"
)

// overflowLogMiB is the log device of TestOverflowRecovery: small, so
// that a few MiB of writes the storage cannot send overflow it.
const overflowLogMiB = 4

// TestOverflowRecovery is issue 5's acceptance 2 (system.md §10 e4, e10):
// with a small log and both proxies down, the writes overflow the log;
// the storage stops the volume (is-overflow 1), refuses snapshots with a
// clear error, and a hash backup (reset-vol, hash-bkp) recovers it. The
// snapshots from before the overflow and after the recovery restore
// bit-exact.
func TestOverflowRecovery(t *testing.T) {
	requireTools(t, allBins...)
	t.Parallel()
	seed := testSeed(t)
	rng := rand.New(rand.NewPCG(seed, 6))
	dc := newDupCluster(t, dupOptions{storages: 1, proxies: 2, archives: 1, logMiB: overflowLogMiB})
	s0, a0 := dc.s[0].Server, dc.a[0].Server

	dc.initStorages()
	snaps := []snapshot{dc.fullBackup(s0)}
	require.NoError(t, dc.writeBurst(dc.ctx(), rng, 5))
	snaps = append(snaps, dc.snapshot(s0))
	dc.waitRestorable(a0, snaps[1].gid)
	require.Equal(t, "0", dc.mustWalbc(s0, "get", "is-overflow", volume))

	// Both proxies down: the storage cannot send, so it cannot release the
	// log, and the writes overflow it.
	for _, p := range dc.p {
		p.p.kill9()
	}
	t.Logf("p0 and p1 killed; writing %d MiB into a %d MiB log", 3*overflowLogMiB, overflowLogMiB)
	dc.writeMiB(rng, 3*overflowLogMiB)
	dc.waitOverflow(s0)
	dc.waitState(s0, "Stopped")

	// snapshot is refused, clearly, and changes nothing.
	out, err := dc.walbc(s0, "snapshot", volume)
	require.Error(t, err, "snapshot of an overflowed volume must be refused (printed %q)", out)
	require.Contains(t, strings.ToLower(err.Error()), "overflow", "the refusal must say why")
	t.Logf("snapshot refused: %s", firstLine(err))
	require.Equal(t, "1", dc.mustWalbc(s0, "get", "is-overflow", volume))
	require.Equal(t, "1", dc.mustWalbcGroup("is-overflow", s0.Name, volume), "walbc is-overflow (the controller's IsOverflow)")
	dc.requireState(s0, "Stopped")
	_, err = dc.walbc(s0, "start", volume, "target")
	require.Error(t, err, "start target of an overflowed volume must be refused")

	// Recovery: the proxies come back, the storage is reset (new log, no
	// overflow) and a hash backup brings the archive the blocks the lost
	// logs changed.
	for _, p := range dc.p {
		p.p.start(t)
	}
	dc.kickAll()
	before := dc.restorable(a0, false)
	dc.mustWalbc(s0, "reset-vol", volume)
	dc.requireState(s0, "SyncReady")
	require.Equal(t, "0", dc.mustWalbc(s0, "get", "is-overflow", volume), "reset-vol clears the overflow")
	if _, err := dc.walbc(s0, "hash-bkp", volume, "64k"); err != nil {
		t.Fatalf("hash-bkp after the overflow: %v", err)
	}
	if err := dc.ctl.WaitForBackup(dc.ctx(), s0, volume); err != nil {
		t.Fatalf("hash-bkp after the overflow: %v", err)
	}
	dc.kickAll()
	// Nothing was written during the hash backup: its explicit snapshot
	// is the image now.
	hashSnap := snapshot{sha: dc.deviceSHA(), at: time.Now()}
	dc.waitRestorableAfter(a0, before[len(before)-1], &hashSnap.gid)
	t.Logf("hash backup: restorable gid %d", hashSnap.gid)
	snaps = append(snaps, hashSnap)
	// Bursts of at most 1.25 MiB, each drained before the next: the small
	// log must not overflow again.
	for i := 0; i < 3; i++ {
		require.NoError(t, dc.writeBurst(dc.ctx(), rng, 2+rng.IntN(4)))
		snaps = append(snaps, dc.snapshot(s0))
		dc.waitRestorable(a0, snaps[len(snaps)-1].gid)
	}
	require.Equal(t, "0", dc.mustWalbc(s0, "get", "is-overflow", volume))
	dc.requireState(s0, "Target")

	// Every restorable snapshot is one of the test's and restores
	// bit-exact, those from before the overflow included.
	checked := dc.checkRestorable(a0, snaps)
	for _, s := range snaps {
		require.Contains(t, checked, s.gid)
	}
}

// waitOverflow waits until storage sx reports the volume's log overflowed.
func (dc *dupCluster) waitOverflow(sx controller.Server) {
	dc.t.Helper()
	s := dc.storageHost(sx)
	deadline := time.Now().Add(30 * time.Second)
	for {
		ov := dc.mustWalbc(s.Server, "get", "is-overflow", volume)
		if ov == "1" {
			return
		}
		if time.Now().After(deadline) {
			usage, _ := dc.wdevc(s, "get-log-usage", volume)
			capa, _ := dc.wdevc(s, "get-log-capacity", volume)
			devOv, _ := dc.wdevc(s, "is-log-overflow", volume)
			dc.t.Fatalf("%s: get is-overflow is %q after 30 s (device: usage %s PB, capacity %s PB, is-log-overflow %s)",
				s.Name, ov, strings.TrimSpace(usage), strings.TrimSpace(capa), strings.TrimSpace(devOv))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// storageHost finds the storage host of sx.
func (dc *dupCluster) storageHost(sx controller.Server) *dupStorage {
	for _, s := range dc.s {
		if s.Name == sx.Name {
			return s
		}
	}
	dc.t.Fatalf("no storage %s", sx)
	return nil
}

// waitRestorableAfter waits (at most a minute, kicking) until ax lists a
// restorable gid newer than after, and stores the newest in gid.
func (dc *dupCluster) waitRestorableAfter(ax controller.Server, after uint64, gid *uint64) {
	dc.t.Helper()
	deadline := time.Now().Add(time.Minute)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		gids, err := dc.ctl.GetRestorableGids(ctx, ax, volume, false)
		cancel()
		if err == nil && len(gids) > 0 && gids[len(gids)-1] > after {
			*gid = gids[len(gids)-1]
			return
		}
		if time.Now().After(deadline) {
			dc.t.Fatalf("%s: no restorable gid after %d within a minute (restorable %v, %v)", ax.Name, after, gids, err)
		}
		dc.kickAll()
		time.Sleep(100 * time.Millisecond)
	}
}
