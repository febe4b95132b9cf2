package e2e

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/walb-go/walb/controller"
)

// killTrials is the number of trials of TestKillRestart: 30 by default,
// 300 with WALB_TEST_SOAK=1, or WALB_E2E_TRIALS.
func killTrials(t testing.TB) int {
	n := 30
	if os.Getenv("WALB_TEST_SOAK") != "" {
		n = 300
	}
	if s := os.Getenv("WALB_E2E_TRIALS"); s != "" {
		v, err := strconv.Atoi(s)
		if err != nil || v <= 0 {
			t.Fatalf("WALB_E2E_TRIALS=%q: want a positive count", s)
		}
		n = v
	}
	return n
}

// A kill phase is the operation a trial interrupts.
type killPhase string

const (
	phaseSnapshot killPhase = "write+snapshot" // wlog transfer and wdiff send
	phaseFullBkp  killPhase = "full-bkp"
	phaseApply    killPhase = "apply"
	phaseMerge    killPhase = "merge"
	phaseRestore  killPhase = "restore"
)

// killPhases weighs the phases: snapshots most (they carry the logs),
// full backups least (each one starts the history again).
var killPhases = []killPhase{
	phaseSnapshot, phaseSnapshot, phaseSnapshot, phaseSnapshot,
	phaseApply, phaseMerge, phaseMerge, phaseRestore, phaseFullBkp,
}

// TestKillRestart is acceptance 2 (system.md §7): in each trial one of
// the four processes (storage, proxy, archive, device daemon), chosen at
// random, is SIGKILLed at a random moment of an operation (a full backup
// under writes, writes and a snapshot whose logs flow storage -> proxy ->
// archive, an apply, a merge, a restore), restarted with the same flags,
// and the flow goes on, rerunning what the crash interrupted (a backup
// must be rerun; an apply is finished at restart; a merge or a restore is
// run again if it left nothing). Every snapshot taken is restored and
// compared bit for bit with the device image captured at it, and the
// archive's diff chain has no gap and passes through every snapshot.
func TestKillRestart(t *testing.T) {
	requireTools(t, allBins...)
	t.Parallel()
	seed := testSeed(t)
	k := &killTest{t: t, rng: rand.New(rand.NewPCG(seed, 2)), seed: seed}
	k.c = newCluster(t)
	c := k.c
	c.setup()
	c.mustWalbcWait(c.s0, "full-bkp", volume)
	k.kickAll()
	k.snapshot(nil)

	trials := killTrials(t)
	start := time.Now()
	for i := 0; i < trials; i++ {
		phase := killPhases[k.rng.IntN(len(killPhases))]
		victim := c.procs()[k.rng.IntN(4)]
		if (phase == phaseApply || phase == phaseMerge || phase == phaseRestore) && k.rng.IntN(2) == 0 {
			victim = c.a0p // the archive does these: hit it more often
		}
		t.Logf("trial %d/%d: %s, SIGKILL %s (%d snapshots to keep)", i+1, trials, phase, victim.name, len(k.snaps))
		switch phase {
		case phaseSnapshot:
			k.trialSnapshot(victim)
		case phaseFullBkp:
			k.trialFullBkp(victim)
		case phaseApply:
			k.trialApply(victim)
		case phaseMerge:
			k.trialMerge(victim)
		case phaseRestore:
			k.trialRestore(victim)
		}
		if t.Failed() {
			return
		}
		if ov := c.mustWalbc(c.s0, "get", "is-overflow", volume); ov != "0" {
			t.Fatalf("the device log overflowed (get is-overflow: %s): the writes outran the log release", ov)
		}
	}
	t.Logf("%d trials in %v; %d snapshots verified on the way", trials, time.Since(start).Round(time.Millisecond), k.verified)

	// The end: every snapshot still kept restores bit-exact, the chain is
	// whole and everything sent has arrived.
	k.snapshot(nil)
	for _, s := range k.snaps {
		k.verify(s)
	}
	c.checkChain(k.snaps)
	c.checkDrained(k.snaps[len(k.snaps)-1].gid)
	for _, p := range c.procs() {
		t.Logf("%s: started %d times, killed %d times", p.name, p.starts, p.kills)
	}
}

// killTest is the state of TestKillRestart: the snapshots that must still
// restore, oldest first (the first is the base after an apply).
type killTest struct {
	t        *testing.T
	c        *cluster
	rng      *rand.Rand
	seed     uint64
	snaps    []snapshot
	verified int
}

// kill is a SIGKILL scheduled in the background, followed by a restart
// with the same flags.
type kill struct {
	p    *proc
	done chan struct{}
	at   time.Time // when SIGKILL was sent; read after wait
	err  error     // of the restart
}

// killAfter kills p after d and restarts it.
func killAfter(p *proc, d time.Duration) *kill {
	k := &kill{p: p, done: make(chan struct{})}
	go func() {
		defer close(k.done)
		time.Sleep(d)
		k.at = time.Now()
		p.kill9()
		k.err = p.startErr()
	}()
	return k
}

// wait waits until the victim runs again.
func (kt *killTest) wait(k *kill) {
	kt.t.Helper()
	<-k.done
	if k.err != nil {
		kt.t.Fatalf("restart of %s after SIGKILL: %v", k.p.name, k.err)
	}
	kt.kickAll()
}

// interrupted tells whether err, seen at errAt, can be blamed on the kill
// (it happened after it); it waits for the kill to have happened. Any
// other error fails the test.
func (kt *killTest) interrupted(k *kill, what string, err error, errAt time.Time) bool {
	kt.t.Helper()
	if err == nil {
		return false
	}
	<-k.done // k.at is set
	if errAt.Before(k.at) {
		kt.t.Fatalf("%s failed before %s was killed: %v", what, k.p.name, err)
	}
	kt.t.Logf("  %s interrupted by the kill of %s: %v", what, k.p.name, firstLine(err))
	return true
}

// kickAll makes the storage and the proxy retry at once (the storage
// checks its proxies again, the proxy sends its queues), as an operator
// does after bringing a server back.
func (kt *killTest) kickAll() {
	for _, s := range []controller.Server{kt.c.s0, kt.c.p0} {
		if _, err := kt.c.walbc(s, "kick"); err != nil {
			kt.t.Logf("  kick %s: %v", s.Name, firstLine(err))
		}
	}
}

// delay picks the moment of a kill.
func (kt *killTest) delay(maxMs int) time.Duration {
	return time.Duration(kt.rng.IntN(maxMs)) * time.Millisecond
}

// retry runs fn until it succeeds, at most 3 times, kicking the servers
// between tries: a server just restarted may refuse for a moment (its
// peers' connections broke). Every failure is logged.
func (kt *killTest) retry(what string, fn func() error) {
	kt.t.Helper()
	var err error
	for i := 0; i < 3; i++ {
		if err = fn(); err == nil {
			return
		}
		kt.t.Logf("  %s: %v (try %d)", what, firstLine(err), i+1)
		kt.kickAll()
		time.Sleep(300 * time.Millisecond)
	}
	kt.t.Fatalf("%s: %v", what, err)
}

// snapshot takes a snapshot (retrying a storage that is being restarted
// when k is not nil), captures the device image and waits until the
// archive can restore the snapshot.
func (kt *killTest) snapshot(k *kill) {
	kt.t.Helper()
	c := kt.c
	var gid uint64
	out, err := c.walbc(c.s0, "snapshot", volume)
	if k != nil && kt.interrupted(k, "snapshot", err, time.Now()) {
		kt.wait(k)
		k = nil
		kt.retry("snapshot after restart", func() error {
			out, err = c.walbc(c.s0, "snapshot", volume)
			return err
		})
	} else if err != nil {
		kt.t.Fatal(err)
	}
	gid = gidOut(kt.t, out)
	var sha string
	kt.retry("device image", func() error {
		sha, err = c.deviceSHA(c.ctx())
		return err
	})
	if k != nil {
		kt.wait(k)
	}
	kt.waitRestorable(gid)
	kt.snaps = append(kt.snaps, snapshot{gid: gid, sha: sha, at: time.Now()})
}

// waitRestorable waits for gid on the archive, kicking the storage and
// the proxy every second so that no backoff delays the test.
func (kt *killTest) waitRestorable(gid uint64) {
	kt.t.Helper()
	c := kt.c
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := c.ctl.WaitForRestorable(ctx, c.a0, volume, gid)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			kt.t.Fatalf("gid %d not restorable after a minute: %v", gid, err)
		}
		kt.kickAll()
	}
}

// verify restores s and compares it with the device image at s.
func (kt *killTest) verify(s snapshot) {
	kt.t.Helper()
	c := kt.c
	var img controller.RestoredImage
	kt.retry(fmt.Sprintf("restore gid %d", s.gid), func() error {
		var err error
		img, err = c.ctl.Restore(c.ctx(), c.a0, volume, s.gid)
		return err
	})
	kt.checkImage(s, img.Path)
}

// checkImage hashes a restored image, compares it, and deletes it.
func (kt *killTest) checkImage(s snapshot, path string) {
	kt.t.Helper()
	c := kt.c
	sha, err := fileSHA(path, c.devSize)
	if err != nil {
		kt.t.Fatal(err)
	}
	if sha != s.sha {
		kt.t.Fatalf("gid %d: restored image %s has sha256 %s, the device had %s (seed %d)", s.gid, path, sha, s.sha, kt.seed)
	}
	if err := c.ctl.DelRestored(c.ctx(), c.a0, volume, s.gid); err != nil {
		kt.t.Fatal(err)
	}
	kt.verified++
}

// trialSnapshot: write a burst through NBD, take a snapshot and wait for
// it at the archive, with the victim killed somewhere in between (during
// the burst, the snapshot command, the wlog transfer, the wdiff send...).
func (kt *killTest) trialSnapshot(victim *proc) {
	kt.t.Helper()
	c := kt.c
	k := killAfter(victim, kt.delay(800))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	err := c.writeBurst(ctx, kt.rng, 5+kt.rng.IntN(25))
	cancel()
	if err != nil {
		// Only the device daemon's death may cut a burst; what it wrote
		// before is in the image read after the snapshot.
		if victim != c.dev {
			kt.t.Fatalf("write burst failed while %s was killed: %v", victim.name, err)
		}
		kt.interrupted(k, "write burst", err, time.Now())
		kt.wait(k)
		k = nil
	}
	kt.snapshot(k)
}

// trialFullBkp: verify and drop the history, then rerun the whole backup
// (reset the storage and the archive, full-bkp while writing) with the
// victim killed during it; a backup the crash interrupted is run again.
func (kt *killTest) trialFullBkp(victim *proc) {
	kt.t.Helper()
	c := kt.c
	for _, s := range kt.snaps {
		kt.verify(s)
	}
	kt.snaps = nil
	kt.resetForBackup()
	c.mustWalbc(c.s0, "set-full-scan-bps", "32m")
	w := c.startWriter(kt.rng.Uint64())
	k := killAfter(victim, kt.delay(800))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	_, err := c.walbcCtx(ctx, c.s0, true, "full-bkp", volume, "64k")
	errAt := time.Now()
	cancel()
	werr := w.finish()
	kt.wait(k)
	if werr != nil && victim != c.dev {
		kt.t.Fatalf("writer failed while %s was killed: %v", victim.name, werr)
	}
	if kt.interrupted(k, "full-bkp", err, errAt) {
		kt.retry("full-bkp again", func() error {
			kt.resetForBackup()
			_, err := c.walbcCtx(c.ctx(), c.s0, true, "full-bkp", volume, "64k")
			return err
		})
	}
	kt.retry("storage Target after the backup", func() error { return c.ctl.VerifyState(c.ctx(), c.s0, volume, "Target") })
	kt.retry("archive active after the backup", func() error {
		st, err := c.ctl.GetState(c.ctx(), c.a0, volume)
		if err == nil && !controller.IsArchiveActive(st) {
			err = fmt.Errorf("archive volume is %s after the backup", st)
		}
		return err
	})
	c.mustWalbc(c.s0, "set-full-scan-bps", "0")
	kt.snapshot(nil)
}

// resetForBackup brings the storage and the archive back to SyncReady
// (stop and reset-vol, as an operator does before a new full backup) and
// makes the archive synchronizing again on the proxy.
func (kt *killTest) resetForBackup() {
	kt.t.Helper()
	c := kt.c
	for _, s := range []controller.Server{c.a0, c.s0} {
		deadline := time.Now().Add(30 * time.Second)
	poll:
		for {
			st, err := c.walbc(s, "get", "state", volume)
			if err != nil {
				kt.t.Fatal(err)
			}
			switch st = trimOut(st); st {
			case "SyncReady":
				break poll
			case "Target", "Archived", "WdiffRecv":
				// An archive receiving a diff is Archived underneath:
				// stop waits for the transfer.
				c.mustWalbcWait(s, "stop", volume)
				c.mustWalbc(s, "reset-vol", volume)
				break poll
			case "Stopped":
				c.mustWalbc(s, "reset-vol", volume)
				break poll
			}
			if time.Now().After(deadline) {
				kt.t.Fatalf("%s: volume in state %s before a backup", s.Name, st)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if err := c.ctl.PrepareBackup(c.ctx(), c.s0, volume, nil); err != nil {
		kt.t.Fatal(err)
	}
}

// trialApply: apply up to a random kept snapshot, killing the victim
// during the apply. An archive killed while applying finishes the apply
// at restart; an apply that never started is run again. The base must
// end exactly at the snapshot, which still restores bit-exact.
func (kt *killTest) trialApply(victim *proc) {
	kt.t.Helper()
	c := kt.c
	if len(kt.snaps) < 2 {
		kt.trialSnapshot(victim)
		return
	}
	i := kt.rng.IntN(len(kt.snaps) - 1)
	target := kt.snaps[i+1]
	// The snapshots the apply drops are checked while they still exist.
	for _, s := range kt.snaps[:i+1] {
		kt.verify(s)
	}
	k := killAfter(victim, kt.delay(150))
	_, err := c.walbc(c.a0, "apply", volume, fmt.Sprint(target.gid))
	errAt := time.Now()
	kt.wait(k)
	kt.interrupted(k, "apply", err, errAt)
	kt.settleApply(target.gid)
	if b := c.base(); b.SnapB.GidB < target.gid {
		kt.t.Logf("  base %s after the kill: applying again", b)
		kt.retry("apply again", func() error {
			_, err := c.walbcCtx(c.ctx(), c.a0, true, "apply", volume, fmt.Sprint(target.gid))
			return err
		})
		kt.settleApply(target.gid)
	}
	b := c.base()
	if b.IsApplying || b.SnapB.GidB != target.gid || b.SnapB.GidE != target.gid {
		kt.t.Fatalf("base %s after apply to %d", b, target.gid)
	}
	kt.snaps = kt.snaps[i+1:]
	kt.verify(target)
}

// settleApply waits until no apply runs and the base is not applying (an
// archive restarted in the middle finishes the apply by itself).
func (kt *killTest) settleApply(gid uint64) {
	kt.t.Helper()
	c := kt.c
	deadline := time.Now().Add(time.Minute)
	for {
		n, err := c.ctl.GetNumAction(c.ctx(), c.a0, volume, "Apply")
		if err == nil && n == 0 {
			b, err := c.ctl.GetBase(c.ctx(), c.a0, volume)
			if err == nil && !b.IsApplying {
				return
			}
		}
		if time.Now().After(deadline) {
			kt.t.Fatalf("apply to %d still running or the base still applying after a minute (err %v)", gid, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// trialMerge: make the snapshots strictly between two kept ones implicit
// and merge the diffs between them, killing the victim during the merge;
// a merge that left no merged diff is run again. The inner snapshots are
// checked before they go.
func (kt *killTest) trialMerge(victim *proc) {
	kt.t.Helper()
	c := kt.c
	if len(kt.snaps) < 3 {
		kt.trialSnapshot(victim)
		return
	}
	i := kt.rng.IntN(len(kt.snaps) - 2)
	j := i + 2 + kt.rng.IntN(len(kt.snaps)-i-2)
	from, to := kt.snaps[i], kt.snaps[j]
	for _, s := range kt.snaps[i+1 : j] {
		kt.verify(s)
	}
	// Every explicit snapshot in between goes implicit, including those
	// the test does not know: a snapshot whose reply was lost when the
	// storage was killed exists all the same.
	args := []string{"disable-snapshot", volume}
	for _, g := range c.restorable(false) {
		if g > from.gid && g < to.gid {
			args = append(args, fmt.Sprint(g))
		}
	}
	c.mustWalbc(c.a0, args...)
	k := killAfter(victim, kt.delay(150))
	_, err := c.walbc(c.a0, "merge", volume, fmt.Sprint(from.gid), "gid", fmt.Sprint(to.gid))
	errAt := time.Now()
	kt.wait(k)
	kt.interrupted(k, "merge", err, errAt)
	kt.retry("merge done", func() error { return c.ctl.WaitForNoAction(c.ctx(), c.a0, volume, "Merge") })
	if n := len(c.diffs(from.gid, to.gid)); n != 1 {
		kt.t.Logf("  %d diffs between gid %d and %d after the kill: merging again", n, from.gid, to.gid)
		kt.retry("merge again", func() error {
			_, err := c.walbcCtx(c.ctx(), c.a0, true, "merge", volume, fmt.Sprint(from.gid), "gid", fmt.Sprint(to.gid))
			return err
		})
	}
	ds := c.diffs(from.gid, to.gid)
	if len(ds) != 1 || ds[0].SnapB.GidB != from.gid || ds[0].SnapE.GidB != to.gid {
		kt.t.Fatalf("after the merge of %d..%d the diffs between them are %v", from.gid, to.gid, ds)
	}
	kt.snaps = slices.Delete(kt.snaps, i+1, j)
}

// trialRestore: restore a random kept snapshot, killing the victim during
// the restore; a restore that left no image is run again.
func (kt *killTest) trialRestore(victim *proc) {
	kt.t.Helper()
	c := kt.c
	s := kt.snaps[kt.rng.IntN(len(kt.snaps))]
	k := killAfter(victim, kt.delay(150))
	_, err := c.walbc(c.a0, "restore", volume, fmt.Sprint(s.gid))
	errAt := time.Now()
	kt.wait(k)
	kt.interrupted(k, "restore", err, errAt)
	kt.retry("restore done", func() error { return c.ctl.WaitForNoAction(c.ctx(), c.a0, volume, "Restore") })
	restored, err := c.ctl.GetRestored(c.ctx(), c.a0, volume)
	if err != nil {
		kt.t.Fatal(err)
	}
	if !slices.Contains(restored, s.gid) {
		kt.t.Logf("  gid %d not restored after the kill (restored %v): restoring again", s.gid, restored)
		kt.verify(s)
		return
	}
	path, err := c.ctl.GetRestoredPath(c.ctx(), c.a0, volume, s.gid)
	if err != nil {
		kt.t.Fatal(err)
	}
	kt.checkImage(s, path)
}

// TestFullBackupAfterDeviceDaemonRestart: the storage reads the device for
// a full backup through the device daemon's NBD export, over a connection
// it keeps between backups. After the daemon restarts (here SIGKILL and
// start, as in TestKillRestart; a graceful restart is the same), the next
// full backup must work the first time: the old connection is dead and
// must be replaced, not used.
func TestFullBackupAfterDeviceDaemonRestart(t *testing.T) {
	requireTools(t, allBins...)
	t.Parallel()
	c := newCluster(t)
	c.setup()
	c.mustWalbcWait(c.s0, "full-bkp", volume)
	c.dev.restart(t)
	kt := &killTest{t: t, c: c}
	kt.resetForBackup()
	if _, err := c.walbcCtx(c.ctx(), c.s0, true, "full-bkp", volume); err != nil {
		t.Fatalf("BUG (storage/devhost.go devhostDevice.ReadAt): the first full-bkp after a walb-dev restart fails: %v", err)
	}
	kt.snapshot(nil)
	kt.verify(kt.snaps[0])
}
