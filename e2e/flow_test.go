package e2e

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/controller"
	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/nbd"
)

// TestBackupFlow is acceptance 1 (system.md §10 n1, n2, n5, n6) with every
// server a separate process: init, a full backup while a writer runs, ten
// snapshots between write bursts, each restored at the archive and
// compared by sha256 with the device image captured at the snapshot; then
// an apply and a merge, and the remaining snapshots restored and compared
// again.
func TestBackupFlow(t *testing.T) {
	requireTools(t, allBins...)
	t.Parallel()
	seed := testSeed(t)
	rng := rand.New(rand.NewPCG(seed, 1))
	c := newCluster(t)
	c.setup()

	// Full backup while qemu-io writes: the scan is throttled so that
	// the writer really runs during it.
	c.mustWalbc(c.s0, "set-full-scan-bps", "32m")
	w := c.startWriter(seed)
	waitBursts(t, w, 1)
	before := w.bursts.Load()
	c.mustWalbcWait(c.s0, "full-bkp", volume, "64k")
	during := w.bursts.Load() - before
	require.NoError(t, w.finish())
	c.mustWalbc(c.s0, "set-full-scan-bps", "0")
	t.Logf("full backup done; %d write bursts completed during it", during)
	require.Positive(t, during, "the writer must have written during the full backup")
	require.Equal(t, "Target", c.mustWalbc(c.s0, "get", "state", volume))
	// Archived, or receiving the logs written during the backup right now.
	require.Contains(t, []string{"Archived", "WdiffRecv"}, c.mustWalbc(c.a0, "get", "state", volume))

	// Ten snapshots between write bursts, each image captured.
	var snaps []snapshot
	for i := 0; i < 10; i++ {
		require.NoError(t, c.writeBurst(c.ctx(), rng, 5+rng.IntN(30)))
		snaps = append(snaps, c.takeSnapshot())
	}
	for i := 1; i < len(snaps); i++ {
		require.Greater(t, snaps[i].gid, snaps[i-1].gid, "gids must grow")
		require.NotEqual(t, snaps[i].sha, snaps[i-1].sha, "a write burst must change the image")
	}
	ctx := c.ctx()
	require.NoError(t, c.ctl.WaitForRestorable(ctx, c.a0, volume, snaps[len(snaps)-1].gid))
	restorable := c.restorable(false)
	for _, s := range snaps {
		require.Contains(t, restorable, s.gid, "every explicit snapshot is listed as restorable")
	}

	// Each snapshot restores bit-exact; the first one is also read
	// through the archive's NBD export of restored images.
	for i, s := range snaps {
		c.verifyRestore(s, i == 0)
	}
	c.checkChain(snaps)

	// n5: apply up to the fourth snapshot. It becomes the base, the older
	// ones are gone, and it still restores bit-exact.
	applied := snaps[3]
	c.mustWalbcWait(c.a0, "apply", volume, fmt.Sprint(applied.gid))
	base := c.base()
	require.False(t, base.IsApplying)
	require.Equal(t, meta.Snap{GidB: applied.gid, GidE: applied.gid}, base.SnapB, "base after apply")
	restorable = c.restorable(true)
	require.Equal(t, applied.gid, restorable[0], "the applied snapshot is the oldest restorable")
	for _, s := range snaps[:3] {
		require.NotContains(t, restorable, s.gid)
		_, err := c.walbc(c.a0, "restore", volume, fmt.Sprint(s.gid))
		require.Error(t, err, "restoring gid %d, older than the base, must fail", s.gid)
	}

	// n6: make the snapshots between the fifth and the eighth implicit,
	// and merge the diffs from the fifth to the eighth into one.
	from, to := snaps[4], snaps[7]
	c.mustWalbc(c.a0, "disable-snapshot", volume, fmt.Sprint(snaps[5].gid), fmt.Sprint(snaps[6].gid))
	require.NotContains(t, c.restorable(false), snaps[5].gid, "a disabled snapshot is not listed by default")
	nDiffs := len(c.diffs(from.gid, to.gid))
	require.GreaterOrEqual(t, nDiffs, 3, "diffs between gid %d and %d", from.gid, to.gid)
	c.mustWalbcWait(c.a0, "merge", volume, fmt.Sprint(from.gid), "gid", fmt.Sprint(to.gid))
	merged := c.diffs(from.gid, to.gid)
	require.Len(t, merged, 1, "one diff from gid %d to %d after the merge (there were %d)", from.gid, to.gid, nDiffs)
	require.Equal(t, from.gid, merged[0].SnapB.GidB)
	require.Equal(t, to.gid, merged[0].SnapE.GidB)
	restorable = c.restorable(true)
	require.NotContains(t, restorable, snaps[5].gid, "merged away")
	require.NotContains(t, restorable, snaps[6].gid, "merged away")

	// Everything still there restores bit-exact, through the new base and
	// the merged diff.
	kept := []snapshot{snaps[3], snaps[4], snaps[7], snaps[8], snaps[9]}
	for _, s := range kept {
		c.verifyRestore(s, false)
	}
	c.checkChain(kept)
	c.checkDrained(snaps[len(snaps)-1].gid)
}

// testSeed returns the seed of a test's random choices (WALB_E2E_SEED to
// replay one) and logs it.
func testSeed(t testing.TB) uint64 {
	seed := uint64(time.Now().UnixNano())
	if s := os.Getenv("WALB_E2E_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("WALB_E2E_SEED=%q: %v", s, err)
		}
		seed = v
	}
	t.Logf("seed %d (replay with WALB_E2E_SEED=%d)", seed, seed)
	return seed
}

// waitBursts waits until the writer has done n bursts.
func waitBursts(t testing.TB, w *writer, n int) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for w.bursts.Load() < int64(n) {
		if time.Now().After(deadline) {
			t.Fatalf("the writer did not complete %d bursts in a minute", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// takeSnapshot takes an explicit snapshot with walbc and captures the
// device image at it. Nothing writes meanwhile: the image read after the
// snapshot is the image at the snapshot.
func (c *cluster) takeSnapshot() snapshot {
	c.t.Helper()
	gid := gidOut(c.t, c.mustWalbc(c.s0, "snapshot", volume))
	sha, err := c.deviceSHA(c.ctx())
	if err != nil {
		c.t.Fatal(err)
	}
	return snapshot{gid: gid, sha: sha, at: time.Now()}
}

// restorable returns the archive's restorable gids (all: implicit ones
// too), via walbc get restorable.
func (c *cluster) restorable(all bool) []uint64 {
	c.t.Helper()
	args := []string{"get", "restorable", volume}
	if all {
		args = append(args, "all")
	}
	out := c.mustWalbc(c.a0, args...)
	var gids []uint64
	for _, l := range strings.Split(out, "\n") {
		if l == "" {
			continue
		}
		r, err := controller.ParseRestorable(l)
		if err != nil {
			c.t.Fatalf("get restorable printed %q: %v", out, err)
		}
		gids = append(gids, r.Gid)
	}
	return gids
}

// base returns the archive's base state.
func (c *cluster) base() meta.State {
	c.t.Helper()
	b, err := c.ctl.GetBase(c.ctx(), c.a0, volume)
	if err != nil {
		c.t.Fatal(err)
	}
	return b
}

// diffs returns the applicable diffs that lie within [gidB, gidE].
func (c *cluster) diffs(gidB, gidE uint64) []meta.Diff {
	c.t.Helper()
	ds, err := c.ctl.GetApplicableDiffList(c.ctx(), c.a0, volume, controller.LatestGid)
	if err != nil {
		c.t.Fatal(err)
	}
	var in []meta.Diff
	for _, d := range ds {
		if d.SnapB.GidB >= gidB && d.SnapE.GidB <= gidE {
			in = append(in, d)
		}
	}
	return in
}

// verifyRestore restores s with walbc -wait, hashes the image at the path
// the archive reports (and, with viaNBD, the archive's NBD export of it),
// compares it with the device image at the snapshot, and deletes it.
func (c *cluster) verifyRestore(s snapshot, viaNBD bool) {
	c.t.Helper()
	g := fmt.Sprint(s.gid)
	c.mustWalbcWait(c.a0, "restore", volume, g)
	path := c.mustWalbc(c.a0, "get", "restored-path", volume, g)
	sha, err := fileSHA(path, c.devSize)
	if err != nil {
		c.t.Fatal(err)
	}
	if sha != s.sha {
		c.t.Fatalf("gid %d: restored image %s has sha256 %s, the device had %s at the snapshot", s.gid, path, sha, s.sha)
	}
	if viaNBD {
		export := c.mustWalbc(c.a0, "get", "restored-export", volume, g)
		ctx := c.ctx()
		cl, err := nbd.Dial(ctx, "tcp", c.archNBD, nbd.ClientOptions{Export: export})
		if err != nil {
			c.t.Fatalf("gid %d: NBD export %q: %v", s.gid, export, err)
		}
		sha, err := shaOf(io.NewSectionReader(cl, 0, c.devSize))
		cl.Close()
		if err != nil {
			c.t.Fatal(err)
		}
		if sha != s.sha {
			c.t.Fatalf("gid %d: NBD export %q has sha256 %s, the device had %s", s.gid, export, sha, s.sha)
		}
	}
	c.mustWalbc(c.a0, "del-restored", volume, g)
}

// checkChain checks the archive's diff chain: the base is steady, the
// applicable diffs from it form an unbroken chain (each starts at or
// before the point the previous one reached: no gap, so no log was lost),
// the chain passes through every snapshot in snaps, and its end is the
// newest of them or later. Overlaps (a range resent after a lost ACK) are
// tolerated by the gid model; they are logged.
func (c *cluster) checkChain(snaps []snapshot) {
	c.t.Helper()
	base := c.base()
	if base.IsApplying {
		c.t.Fatalf("base %s is still applying", base)
	}
	ds, err := c.ctl.GetApplicableDiffList(c.ctx(), c.a0, volume, controller.LatestGid)
	if err != nil {
		c.t.Fatal(err)
	}
	reached := []uint64{base.SnapB.GidB}
	cur := base.SnapB
	overlaps := 0
	for _, d := range ds {
		if d.SnapB.GidB > cur.GidB {
			c.t.Fatalf("diff chain gap: at %s, next diff %s (chain %v)", cur, d, ds)
		}
		if d.SnapE.GidB <= cur.GidB {
			c.t.Fatalf("diff %s does not progress from %s (chain %v)", d, cur, ds)
		}
		if d.SnapB.GidB < cur.GidB {
			overlaps++
		}
		cur = meta.Snap{GidB: d.SnapE.GidB, GidE: max(d.SnapE.GidE, cur.GidE)}
		if d.SnapE.GidB != d.SnapE.GidE {
			cur = d.SnapE
		}
		reached = append(reached, cur.GidB)
	}
	restorable := c.restorable(true)
	for _, s := range snaps {
		if !slices.Contains(reached, s.gid) {
			c.t.Fatalf("the chain from base %s does not pass through snapshot gid %d (reaches %v)", base, s.gid, reached)
		}
		if !slices.Contains(restorable, s.gid) {
			c.t.Fatalf("snapshot gid %d is not in the restorable list %v", s.gid, restorable)
		}
	}
	if base.SnapB.GidB == base.SnapB.GidE && (len(restorable) == 0 || restorable[0] != base.SnapB.GidB) {
		c.t.Fatalf("the clean base %s is not the first restorable snapshot (%v)", base, restorable)
	}
	if overlaps > 0 {
		c.t.Logf("diff chain: %d diffs, %d overlapping their predecessor", len(ds), overlaps)
	}
}

// checkDrained checks that the group is idle after the last snapshot: the
// proxy's queue for the archive is empty, the archive's latest snapshot is
// at least it, and the storage has released the whole log (every wlog was
// acknowledged, and the device's checkpoints let it go).
func (c *cluster) checkDrained(last uint64) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		q := c.mustWalbc(c.p0, "get", "proxy-diff", volume, c.a0.Name)
		ls, err := c.ctl.GetLatestSnap(ctx, c.a0, volume)
		if err != nil {
			c.t.Fatal(err)
		}
		lu := c.mustWalbc(c.s0, "get", "log-usage", volume)
		u, err := controller.ParseLogUsage(lu)
		if err != nil {
			c.t.Fatalf("get log-usage printed %q: %v", lu, err)
		}
		if q == "" && len(ls) == 1 && ls[0].Gid >= last && u.UsagePB == 0 {
			return
		}
		select {
		case <-ctx.Done():
			c.t.Fatalf("not drained: proxy queue %q, archive latest %v (want >= %d), storage log usage %d PB (want 0)",
				q, ls, last, u.UsagePB)
		case <-time.After(50 * time.Millisecond):
		}
	}
}
