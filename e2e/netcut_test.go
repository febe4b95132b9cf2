package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/controller"
)

// Link-cut tests (issue 5's acceptance 3, system.md §10 e13-e16): one host
// of the group runs in its own network namespace, and the veth link to it
// is cut in the middle of an operation and restored. The servers run with
// -to 3, so that a connection hung by the cut fails within seconds; the
// link is rate limited during the operation (tc tbf), so that the cut
// falls in its middle.
const (
	cutTimeout = 3        // servers' -to, seconds
	cutRate    = "24mbit" // link rate while a full replication or hash backup is to be cut
	cutRateLow = "4mbit"  // link rate while a diff or hash replication (less data) is to be cut
	cutScanBps = "4m"     // storage scan rate while a hash backup is to be cut
	cutDevMiB  = 32       // device size: seconds of transfer at cutRate
	cutWait    = 30 * time.Second
)

// TestReplicationLinkCut cuts the link between the primary archive a0 and
// the secondary a1 (a1 in a network namespace) in the middle of each kind
// of replication, restores it, and retries:
//
//   - full replication (e14): a1 goes back to SyncReady, with nothing
//     restorable; the retry completes;
//   - diff replication (e16): a1 stays Archived at an older gid; the retry
//     reaches the target gid;
//   - hash replication, after a0 applied past a1's latest (e15): a1 stays
//     Archived; the retry reaches the target gid.
//
// After every cut and every retry each snapshot a1 lists as restorable
// restores to exactly the image the device had at it.
func TestReplicationLinkCut(t *testing.T) {
	requireTools(t, allBins...)
	ns := newNetns(t)
	t.Parallel()
	seed := testSeed(t)
	rng := rand.New(rand.NewPCG(seed, 7))
	dc := newDupCluster(t, dupOptions{storages: 1, proxies: 1, archives: 2, devMiB: cutDevMiB,
		ns: map[string]*netns{"a1": ns}, timeout: cutTimeout})
	s0, a0, a1 := dc.s[0].Server, dc.a[0].Server, dc.a[1].Server

	dc.initStorages()
	snaps := []snapshot{dc.fullBackup(s0)}
	more := func(n, mib int) {
		t.Helper()
		for i := 0; i < n; i++ {
			dc.writeMiB(rng, mib)
			snaps = append(snaps, dc.snapshot(s0))
		}
		dc.waitRestorable(a0, snaps[len(snaps)-1].gid)
	}
	more(2, 1)
	dc.mustWalbc(a1, "init-vol", volume)

	// e14: full replication cut.
	target := snaps[len(snaps)-1].gid
	// Late enough that a1 synced part of the copy (every -fi 1m): the
	// retry can resume from there.
	dc.cutReplication(ns, a0, a1, target, cutRate, 1500*time.Millisecond)
	dc.waitState(a1, "SyncReady")
	require.Empty(t, dc.restorable(a1, false), "a1 after a cut full replication")
	dc.retryReplication(a0, a1, target)
	dc.checkReplica(a1, snaps, target)
	starts := fullReplStarts(dc.a[0])
	t.Logf("the full replication's copies started at LB %v", starts)
	require.Len(t, starts, 2, "two full replications: the cut one and the retry")
	require.Positive(t, starts[1], "the retry resumes the cut full replication (e14)")

	// e16: diff replication cut.
	more(3, 4)
	target = snaps[len(snaps)-1].gid
	before := dc.latestGid(a1)
	dc.cutReplication(ns, a0, a1, target, cutRateLow, 200*time.Millisecond)
	dc.waitState(a1, "Archived")
	mid := dc.latestGid(a1)
	require.GreaterOrEqual(t, mid, before, "a1 never goes back")
	t.Logf("a1 at gid %d after the cut diff replication (was %d, target %d)", mid, before, target)
	dc.checkRestorable(a1, snaps)
	dc.retryReplication(a0, a1, target)
	dc.checkReplica(a1, snaps, target)

	// e15: hash replication cut: a0's base moves past a1's latest, so
	// only a hash comparison can bring a1 there.
	more(3, 4)
	applied := snaps[len(snaps)-2]
	dc.mustWalbcWait(a0, "apply", volume, fmt.Sprint(applied.gid))
	target = snaps[len(snaps)-1].gid
	before = dc.latestGid(a1)
	require.Greater(t, dc.baseGid(a0), before, "a0's base is past a1's latest: a hash replication is the only way")
	dc.cutReplication(ns, a0, a1, target, cutRateLow, 200*time.Millisecond)
	dc.waitState(a1, "Archived")
	require.Equal(t, before, dc.latestGid(a1), "a cut hash replication leaves a1 where it was")
	dc.checkRestorable(a1, snaps)
	dc.retryReplication(a0, a1, target)
	dc.checkReplica(a1, snaps, target)
	// a0 still restores what it kept.
	kept := slices.DeleteFunc(slices.Clone(snaps), func(s snapshot) bool { return s.gid < applied.gid })
	dc.checkRestorable(a0, kept)
}

// cutReplication starts replicate VOL gid G from src to dst (in ns) with
// the link limited to rate, cuts the link while the replication runs, waits
// until src gave it up, and restores the link at full rate.
func (dc *dupCluster) cutReplication(ns *netns, src, dst controller.Server, gid uint64, rate string, after time.Duration) {
	dc.t.Helper()
	ns.shape(rate)
	dc.mustWalbc(src, "replicate", volume, "gid", fmt.Sprint(gid), dst.Addr)
	dc.cutWhileRunning(ns, after, func() (bool, string) {
		n, err := dc.ctl.GetNumAction(dc.ctx(), src, volume, controller.ActionReplSyncAsClient)
		return err == nil && n > 0, fmt.Sprintf("%s: %d ReplSyncAsClient running (%v)", src.Name, n, err)
	})
	ctx, cancel := context.WithTimeout(context.Background(), cutWait)
	defer cancel()
	if err := dc.ctl.WaitForNoAction(ctx, src, volume, controller.ActionReplSyncAsClient); err != nil {
		dc.t.Fatalf("%s: the replication did not end within %v of the cut: %v", src.Name, cutWait, err)
	}
	dc.requireState(src, "Archived")
	ns.unshape()
	ns.restore()
}

// cutWhileRunning cuts ns's link a moment (after, plus up to 300 ms) after
// running reports the operation started, checking that it still runs
// just before the cut: the cut must fall in its middle.
func (dc *dupCluster) cutWhileRunning(ns *netns, after time.Duration, running func() (bool, string)) {
	dc.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ok, seen := running()
		if ok {
			break
		}
		if time.Now().After(deadline) {
			dc.t.Fatalf("the operation to cut never ran: %s", seen)
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(after + time.Duration(rand.IntN(300))*time.Millisecond)
	if ok, seen := running(); !ok {
		dc.t.Fatalf("the operation ended before the cut (%s): the rate limit did not slow it enough", seen)
	}
	ns.cut()
}

// retryReplication replicates again after a cut, as an operator does
// (walbc replicate-once, which waits until dst reached gid). The
// destination may still be giving up the cut connection for a few
// seconds (its -to), so a refusal is retried.
func (dc *dupCluster) retryReplication(src, dst controller.Server, gid uint64) {
	dc.t.Helper()
	deadline := time.Now().Add(cutWait)
	for {
		_, err := dc.walbcGroup("replicate-once", src.Name, volume, dst.Name, "-gid", fmt.Sprint(gid))
		if err == nil && dc.latestGid(dst) >= gid {
			return
		}
		if time.Now().After(deadline) {
			dc.t.Fatalf("replicate %s -> %s up to gid %d after the cut: %v (%s latest gid %d)", src.Name, dst.Name, gid, err, dst.Name, dc.latestGid(dst))
		}
		dc.t.Logf("  replicate again: %v", firstLineStr(fmt.Sprint(err)))
		time.Sleep(500 * time.Millisecond)
	}
}

// checkReplica checks that archive ax is Archived, lists every snapshot
// up to gid that its source still had, and restores every snapshot it
// lists bit-exact.
func (dc *dupCluster) checkReplica(ax controller.Server, snaps []snapshot, gid uint64) {
	dc.t.Helper()
	dc.requireState(ax, "Archived")
	got := dc.checkRestorable(ax, snaps)
	require.Contains(dc.t, got, gid, "%s reached gid %d", ax.Name, gid)
}

// latestGid returns ax's latest snapshot gid (0 when it has none).
func (dc *dupCluster) latestGid(ax controller.Server) uint64 {
	dc.t.Helper()
	ls, err := dc.ctl.GetLatestSnap(dc.ctx(), ax, volume)
	if err != nil {
		dc.t.Fatal(err)
	}
	if len(ls) == 0 {
		return 0
	}
	return ls[0].Gid
}

// TestHashBackupLinkCut cuts the link between the storage and the primary
// archive a0 (a0 in a network namespace) in the middle of a hash backup
// while writes go on (e13): the storage goes back to SyncReady, a0 to
// Archived with its restorable list unchanged, and nothing the cut
// attempt sent (its dirty diff, the logs written during it, queued at the
// proxy) ever becomes restorable. The retry completes and the snapshots
// after it restore bit-exact.
func TestHashBackupLinkCut(t *testing.T) {
	requireTools(t, allBins...)
	ns := newNetns(t)
	t.Parallel()
	seed := testSeed(t)
	rng := rand.New(rand.NewPCG(seed, 8))
	dc := newDupCluster(t, dupOptions{storages: 1, proxies: 1, archives: 1, devMiB: cutDevMiB,
		ns: map[string]*netns{"a0": ns}, timeout: cutTimeout})
	s0, a0 := dc.s[0].Server, dc.a[0].Server

	dc.initStorages()
	snaps := []snapshot{dc.fullBackup(s0)}
	for i := 0; i < 2; i++ {
		dc.writeMiB(rng, 1)
		snaps = append(snaps, dc.snapshot(s0))
	}
	dc.waitRestorable(a0, snaps[len(snaps)-1].gid)

	// The storage loses its target state (stop, reset: a new log) and the
	// device changes meanwhile: only a hash backup can catch up.
	dc.mustWalbcWait(s0, "stop", volume)
	dc.requireState(s0, "Stopped")
	dc.mustWalbc(s0, "reset-vol", volume)
	dc.requireState(s0, "SyncReady")
	dc.writeMiB(rng, 8)
	if !dc.waitQueueEmpty(dc.p[0], a0, cutWait) {
		t.Fatalf("p0 did not deliver everything s0 sent before its stop")
	}
	listed := dc.restorable(a0, true)

	// e13: the cut.
	ns.shape(cutRate)
	dc.mustWalbc(s0, "set-full-scan-bps", cutScanBps)
	if _, err := dc.walbc(s0, "hash-bkp", volume, "64k"); err != nil {
		t.Fatalf("hash-bkp: %v", err)
	}
	w := dc.startWriter(seed)
	dc.cutWhileRunning(ns, 200*time.Millisecond, func() (bool, string) {
		st, err := dc.walbc(s0, "get", "state", volume)
		return err == nil && st == "HashSync", fmt.Sprintf("s0 %s %v", st, err)
	})
	dc.waitStateWithin(s0, "SyncReady", cutWait)
	require.NoError(t, w.finish())
	t.Logf("the cut hash backup rolled back; %d write bursts during it", w.bursts.Load())
	ns.unshape()
	ns.restore()
	dc.mustWalbc(s0, "set-full-scan-bps", "0")
	dc.waitStateWithin(a0, "Archived", cutWait)
	// What p0 queued for a0 during the cut attempt (the logs written
	// meanwhile, from the attempt's new log) reaches a0 now, or stays
	// queued: either way none of it may become restorable.
	dc.waitQueueEmpty(dc.p[0], a0, 5*time.Second)
	require.Equal(t, listed, dc.restorable(a0, true), "a0's restorable list after the cut hash backup")
	dc.checkRestorable(a0, snaps)

	// The retry, as an operator runs it (walb-tools hash_backup: the
	// primary stops and starts synchronizing, which drops what the proxy
	// queued for it during the cut attempt, then hash-bkp), with nothing
	// writing: its snapshot is the image now.
	out, err := dc.walbcGroup("hash-backup", s0.Name, volume, "-bulk", "64k")
	if err != nil {
		t.Fatalf("hash backup again after the cut: %v", err)
	}
	gid := gidOut(t, out)
	hashSnap := snapshot{gid: gid, sha: dc.deviceSHA(), at: time.Now()}
	require.Greater(t, gid, listed[len(listed)-1])
	snaps = append(snaps, hashSnap)
	for i := 0; i < 3; i++ {
		require.NoError(t, dc.writeBurst(dc.ctx(), rng, 5+rng.IntN(20)))
		snaps = append(snaps, dc.snapshot(s0))
	}
	dc.waitRestorable(a0, snaps[len(snaps)-1].gid)
	got := dc.checkRestorable(a0, snaps)
	for _, s := range snaps {
		require.Contains(t, got, s.gid)
	}
}

// waitStateWithin waits until vol on s is in state want, at most d.
func (dc *dupCluster) waitStateWithin(s controller.Server, want string, d time.Duration) {
	dc.t.Helper()
	deadline := time.Now().Add(d)
	for {
		st, err := dc.walbc(s, "get", "state", volume)
		if err == nil && st == want {
			return
		}
		if time.Now().After(deadline) {
			dc.t.Fatalf("%s: volume %s is %q (%v) %v after the cut, want %s", s.Name, volume, st, err, d, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// baseGid returns the gid of ax's base image.
func (dc *dupCluster) baseGid(ax controller.Server) uint64 {
	dc.t.Helper()
	b, err := dc.ctl.GetBase(dc.ctx(), ax, volume)
	if err != nil {
		dc.t.Fatal(err)
	}
	return b.SnapB.GidB
}

// fullReplStarts returns where each full replication archive ax sent
// started (its log's msg="full-repl sending" ... startLb=N lines): above 0
// when a copy resumed an interrupted one.
func fullReplStarts(ax *dupServer) []uint64 {
	b, err := os.ReadFile(ax.p.logPath)
	if err != nil {
		return nil
	}
	var starts []uint64
	for _, l := range strings.Split(string(b), "\n") {
		if !strings.Contains(l, `msg="full-repl sending"`) {
			continue
		}
		for _, f := range strings.Fields(l) {
			if v, ok := strings.CutPrefix(f, "startLb="); ok {
				if n, err := strconv.ParseUint(v, 10, 64); err == nil {
					starts = append(starts, n)
				}
			}
		}
	}
	return starts
}
