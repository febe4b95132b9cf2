package proxy

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pkg/errors"
	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/wire"
)

// taskState returns the queue state of a send task ("" when it has none).
func taskState(p *Proxy, vol, archive string) string {
	for _, ti := range p.tasks.Tasks() {
		if ti.Key == taskKey(vol, archive) {
			return ti.State
		}
	}
	return ""
}

// settled reports that no send of (vol, archive) runs or is queued to run
// now (a delayed retry may be armed).
func settled(p *Proxy, vol, archive string) bool {
	s := taskState(p, vol, archive)
	return (s == "" || s == "delayed") && p.vols.NumAction(vol, actionName(archive)) == 0
}

func sendError(t testing.TB, p *Proxy, vol, archive string) bool {
	b, err := p.IsWdiffSendError(vol, archive)
	require.NoError(t, err)
	return b
}

func queued(t testing.TB, p *Proxy, vol, archive string) int {
	ds, err := p.Diffs(vol, archive)
	require.NoError(t, err)
	return len(ds)
}

// §4.5: the reaction to every archive reply.
func TestSendReplyTable(t *testing.T) {
	type outcome int
	const (
		deleted outcome = iota // files deleted, nothing accepted, no retry
		sent                   // accepted (maybe after retries)
		sendErr                // SEND_ERROR: flag set, files kept, no retry
	)
	cases := []struct {
		name  string
		first error         // the first reply; later ones accept
		rto   time.Duration // -rto
		want  outcome
	}{
		{"accept", nil, 0, sent},
		{"too-old-diff", remote(wire.ErrTooOldDiff), 0, deleted},
		{"different-uuid", remote(wire.ErrDifferentUUID), 0, deleted},
		{"smaller-lv-size", remote(wire.ErrSmallerLvSize), 0, sendErr},
		{"archive-not-found", remote(wire.ErrArchiveNotFound), 0, sendErr},
		{"too-new-diff", remote(wire.ErrTooNewDiff), 0, sent},
		{"too-new-diff past rto", remote(wire.ErrTooNewDiff), time.Nanosecond, sent},
		{"syncing", remote(wire.ErrSyncing), 0, sent},
		{"syncing past rto", remote(wire.ErrSyncing), time.Nanosecond, sent},
		{"stopped", remote(wire.ErrVolStopped), 0, sent},
		{"stopped past rto", remote(wire.ErrVolStopped), time.Nanosecond, sendErr},
		{"wdiff-recv", remote(wire.ErrWdiffRecv), 0, sent},
		{"wdiff-recv past rto", remote(wire.ErrWdiffRecv), time.Nanosecond, sendErr},
		{"other error", remote(wire.ErrFailed), 0, sent},
		{"other error past rto", remote("no-such-code"), time.Nanosecond, sendErr},
		{"connection error", errors.New("connection refused"), 0, sent},
		{"connection error past rto", errors.New("connection refused"), time.Nanosecond, sent},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			arch := newFakeArchive()
			var calls atomic.Int32
			arch.setReply(func(WdiffRequest) error {
				if calls.Add(1) == 1 {
					return tc.first
				}
				return nil
			})
			cfg := testConfig(t, arch)
			cfg.RetryTimeout = tc.rto
			p := openTest(t, cfg)
			p.exceptionRetry = 5 * time.Millisecond
			startedVolume(t, p, "v0", "a0")
			g := newWlogGen(512)
			_, err := receive(context.Background(), p, "v0", g.header(), bytes.NewReader(g.packs(t, rand.New(rand.NewPCG(1, 2)), 4)), testDiff(1, true))
			require.NoError(t, err)
			switch tc.want {
			case sent:
				waitFor(t, "the diff to be accepted", func() bool { return len(arch.received()) == 1 })
				waitFor(t, "the queue to empty", func() bool { return queued(t, p, "v0", "a0") == 0 })
				require.Equal(t, g.img, applyAll(t, [][]byte{arch.received()[0].data}))
				require.False(t, sendError(t, p, "v0", "a0"))
			case deleted:
				waitFor(t, "the queue to empty", func() bool { return queued(t, p, "v0", "a0") == 0 })
				waitFor(t, "the task to settle", func() bool { return settled(p, "v0", "a0") })
				require.Empty(t, arch.received())
				require.Empty(t, wdiffNames(t, volPath(p, "v0", "sendto", "a0")))
				require.False(t, sendError(t, p, "v0", "a0"))
			case sendErr:
				waitFor(t, "the send error", func() bool { return sendError(t, p, "v0", "a0") })
				waitFor(t, "the task to settle", func() bool { return settled(p, "v0", "a0") })
				require.Equal(t, "", taskState(p, "v0", "a0"), "no retry is scheduled")
				require.EqualValues(t, 1, calls.Load())
				require.Equal(t, 1, queued(t, p, "v0", "a0"))
				// kick clears the flag and sends again.
				require.NoError(t, p.Kick(context.Background(), "v0", "a0"))
				require.False(t, sendError(t, p, "v0", "a0"))
				waitFor(t, "the diff to be accepted", func() bool { return len(arch.received()) == 1 })
			}
			// What the archive got.
			for _, s := range arch.received() {
				require.Equal(t, "v0", s.req.Vol)
				require.Equal(t, "archive-a0:1", s.req.Addr)
				require.Equal(t, g.uuid, s.req.UUID)
				require.EqualValues(t, testVolSizeLb, s.req.SizeLb)
				require.True(t, s.req.Diff.Equal(testDiff(1, true)))
			}
		})
	}
}

// A new wlog clears the send-error flag and sends again (§4.5).
func TestNewWlogClearsSendError(t *testing.T) {
	arch := newFakeArchive()
	var refuse atomic.Bool
	refuse.Store(true)
	arch.setReply(func(WdiffRequest) error {
		if refuse.Load() {
			return remote(wire.ErrSmallerLvSize)
		}
		return nil
	})
	p := openTest(t, testConfig(t, arch))
	startedVolume(t, p, "v0", "a0")
	g := newWlogGen(512)
	r := rand.New(rand.NewPCG(3, 4))
	_, err := receive(context.Background(), p, "v0", g.header(), bytes.NewReader(g.packs(t, r, 2)), testDiff(1, true))
	require.NoError(t, err)
	waitFor(t, "the send error", func() bool { return sendError(t, p, "v0", "a0") })
	refuse.Store(false)
	_, err = receive(context.Background(), p, "v0", g.header(), bytes.NewReader(g.packs(t, r, 2)), testDiff(2, true))
	require.NoError(t, err)
	waitFor(t, "both diffs to be accepted", func() bool { return arch.latestOf("archive-a0:1", "v0") == meta.CleanSnap(2) })
	require.False(t, sendError(t, p, "v0", "a0"))
	require.Len(t, arch.received(), 1, "merged into one transfer")
	require.Equal(t, g.img, applyAll(t, [][]byte{arch.received()[0].data}))
}

// The backoff doubles from -delay to -maxdelay; a kick cuts it short.
func TestSendBackoff(t *testing.T) {
	arch := newFakeArchive()
	arch.setReply(func(WdiffRequest) error { return remote(wire.ErrTooNewDiff) })
	cfg := testConfig(t, arch)
	cfg.Delay, cfg.MaxDelay = time.Millisecond, 4*time.Millisecond
	p := openTest(t, cfg)
	startedVolume(t, p, "v0", "a0")
	_, err := receive(context.Background(), p, "v0", newWlogGen(512).header(), bytes.NewReader(nil), testDiff(1, true))
	require.NoError(t, err)
	waitFor(t, "several retries", func() bool { return arch.numCalls() >= 5 })
	v := p.volume("v0")
	v.mu.Lock()
	backoff := v.archives["a0"].backoff
	v.mu.Unlock()
	require.Equal(t, 4*time.Millisecond, backoff, "capped at -maxdelay")

	// With a long backoff, a kick sends at once.
	p2 := openTest(t, func() Config { c := testConfig(t, arch); c.Delay, c.MaxDelay = time.Hour, time.Hour; return c }())
	startedVolume(t, p2, "v1", "a0")
	_, err = receive(context.Background(), p2, "v1", newWlogGen(512).header(), bytes.NewReader(nil), testDiff(1, true))
	require.NoError(t, err)
	waitFor(t, "the first try", func() bool { return taskState(p2, "v1", "a0") == "delayed" })
	n := arch.numCalls()
	arch.setReply(nil)
	require.NoError(t, p2.Kick(context.Background(), "", ""))
	waitFor(t, "the kicked send", func() bool { return queued(t, p2, "v1", "a0") == 0 })
	require.Greater(t, arch.numCalls(), n)
}

// §2.10: one transfer takes the mergeable list from the oldest diff, within
// -wn files and -wd bytes, cut at a non-mergeable diff and where the UUID
// changes; the merged diffs reach the same image.
func TestSendMergeLimits(t *testing.T) {
	type spec struct {
		mergeable bool
		newUUID   bool
	}
	all := func(n int) []spec {
		s := make([]spec, n)
		for i := range s {
			s[i].mergeable = true
		}
		return s
	}
	explicit4 := all(7)
	explicit4[3].mergeable = false
	uuid4 := all(6)
	uuid4[3].newUUID = true
	cases := []struct {
		name  string
		diffs []spec
		wn    int
		wd    uint64
		want  [][2]uint64 // the gid ranges of the transfers
	}{
		{"all in one", all(5), 0, 0, [][2]uint64{{0, 5}}},
		{"-wn 3", all(7), 3, 0, [][2]uint64{{0, 3}, {3, 6}, {6, 7}}},
		{"-wd tiny sends one each", all(3), 0, 1, [][2]uint64{{0, 1}, {1, 2}, {2, 3}}},
		{"explicit snapshot", explicit4, 0, 0, [][2]uint64{{0, 3}, {3, 7}}},
		{"uuid change", uuid4, 0, 0, [][2]uint64{{0, 3}, {3, 6}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			arch := newFakeArchive()
			var open atomic.Bool
			arch.setReply(func(req WdiffRequest) error {
				if !open.Load() {
					return remote(wire.ErrSyncing)
				}
				return nil
			})
			cfg := testConfig(t, arch)
			cfg.Delay, cfg.MaxDelay = time.Hour, time.Hour
			cfg.MaxWdiffSendFiles = tc.wn
			cfg.MaxWdiffSendSize = tc.wd
			p := openTest(t, cfg)
			startedVolume(t, p, "v0", "a0")
			g := newWlogGen(512)
			r := rand.New(rand.NewPCG(11, 12))
			for i, s := range tc.diffs {
				if s.newUUID {
					g.uuid[0] ^= 0xff
				}
				_, err := receive(context.Background(), p, "v0", g.header(), bytes.NewReader(g.packs(t, r, 3)), testDiff(uint64(i+1), s.mergeable))
				require.NoError(t, err)
			}
			waitFor(t, "the gate to be tried", func() bool { return taskState(p, "v0", "a0") == "delayed" })
			open.Store(true)
			require.NoError(t, p.Kick(context.Background(), "v0", ""))
			waitFor(t, "every diff to be sent", func() bool { return queued(t, p, "v0", "a0") == 0 })
			got := arch.received()
			var ranges [][2]uint64
			var files [][]byte
			for _, s := range got {
				ranges = append(ranges, [2]uint64{s.req.Diff.SnapB.GidB, s.req.Diff.SnapE.GidB})
				files = append(files, s.data)
			}
			require.Equal(t, tc.want, ranges)
			require.Equal(t, g.img, applyAll(t, files))
			// Merged diffs keep the first diff's mergeability.
			require.Equal(t, tc.diffs[0].mergeable, got[0].req.Diff.Mergeable)
		})
	}
}

// A queued file removed behind the proxy's back is dropped from the queue;
// an unreadable one stops the sends with a send error.
func TestSendDamagedQueue(t *testing.T) {
	ctx := context.Background()
	arch := newFakeArchive()
	var open atomic.Bool
	arch.setReply(func(WdiffRequest) error {
		if !open.Load() {
			return remote(wire.ErrSyncing)
		}
		return nil
	})
	cfg := testConfig(t, arch)
	cfg.Delay, cfg.MaxDelay = time.Hour, time.Hour
	p := openTest(t, cfg)
	startedVolume(t, p, "v0", "a0")
	g := newWlogGen(512)
	r := rand.New(rand.NewPCG(21, 22))
	for k := uint64(1); k <= 3; k++ {
		_, err := receive(ctx, p, "v0", g.header(), bytes.NewReader(g.packs(t, r, 3)), testDiff(k, true))
		require.NoError(t, err)
	}
	waitFor(t, "the gate to be tried", func() bool { return taskState(p, "v0", "a0") == "delayed" })
	n1, _ := meta.FileName(testDiff(1, true))
	require.NoError(t, os.Remove(volPath(p, "v0", "sendto", "a0", n1)))
	n3, _ := meta.FileName(testDiff(3, true))
	b, err := os.ReadFile(volPath(p, "v0", "sendto", "a0", n3))
	require.NoError(t, err)
	b[40] ^= 0xff // inside the first image
	require.NoError(t, os.WriteFile(volPath(p, "v0", "sendto", "a0", n3), b, 0o644))

	open.Store(true)
	require.NoError(t, p.Kick(ctx, "v0", ""))
	waitFor(t, "the send error", func() bool { return sendError(t, p, "v0", "a0") })
	waitFor(t, "the task to settle", func() bool { return settled(p, "v0", "a0") })
	ds, err := p.Diffs("v0", "a0")
	require.NoError(t, err)
	require.Len(t, ds, 2, "the vanished diff left the queue, the damaged one stays")
	require.Empty(t, arch.received(), "nothing damaged reached the archive")
}
