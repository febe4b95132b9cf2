package storage

import (
	"testing"
	"time"

	"github.com/pkg/errors"
	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/walb"
)

var t0 = time.Unix(1_700_000_000, 0)

func rec(lsid, gid uint64, mergeable bool) meta.LsidGid {
	return meta.LsidGid{Lsid: lsid, Gid: gid, Mergeable: mergeable, Timestamp: t0.Add(time.Duration(gid) * time.Second)}
}

// system.md §3.3 step 3.
func TestSnapshotGid(t *testing.T) {
	cases := []struct {
		name    string
		pre     meta.LsidGid
		lsid    uint64
		maxPB   uint64
		want    uint64
		wantErr error
	}{
		{"same lsid (explicit, empty diff)", rec(100, 5, false), 100, 1000, 6, nil},
		{"small gap", rec(100, 5, false), 600, 1000, 6, nil},
		{"gap just under max", rec(100, 5, false), 1099, 1000, 6, nil},
		{"gap of exactly max", rec(100, 5, false), 1100, 1000, 7, nil},
		{"gap of 3.5 max leaves 3 intermediate gids", rec(0, 0, false), 3500, 1000, 4, nil},
		{"after reset", rec(0, 0, false), 0, 1, 1, nil},
		{"lsid before pre", rec(100, 5, false), 99, 1000, 0, ErrLogMismatch},
		{"no log origin", meta.DefaultLsidGid(), 10, 1000, 0, ErrNoLogOrigin},
		{"max below one PB", rec(0, 0, false), 10, 0, 0, ErrSendSizeTooSmall},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := snapshotGid(c.pre, c.lsid, c.maxPB)
			if c.wantErr != nil {
				require.ErrorIs(t, err, c.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, c.want, got)
		})
	}
}

func TestConsumedCount(t *testing.T) {
	done := rec(500, 7, true)
	cases := []struct {
		name string
		q    []meta.LsidGid
		want int
	}{
		{"empty", nil, 0},
		{"all newer", []meta.LsidGid{rec(600, 8, true), rec(700, 9, false)}, 0},
		{"older lsid", []meta.LsidGid{rec(400, 6, true), rec(600, 8, true)}, 1},
		{"same lsid, same gid", []meta.LsidGid{rec(500, 7, true), rec(600, 8, true)}, 1},
		{"same lsid, newer gid (explicit snapshot with no new log)", []meta.LsidGid{rec(500, 8, false)}, 0},
		{"all consumed", []meta.LsidGid{rec(100, 2, true), rec(300, 4, false), rec(500, 7, true)}, 3},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			require.Equal(t, c.want, consumedCount(c.q, done))
		})
	}
}

// system.md §3.4 steps 2 and 3.
func TestSendNowAndImplicitSnapshot(t *testing.T) {
	l := walb.Lsids{Latest: 900, Permanent: 800}
	require.True(t, mustSendNow(rec(700, 3, false), l, 0), "durable log past done")
	require.False(t, mustSendNow(rec(800, 3, false), l, 0), "only non-durable log")
	require.True(t, mustSendNow(rec(800, 3, false), l, 1), "a queued snapshot")
	require.True(t, mustSendLater(rec(800, 3, false), l))
	require.False(t, mustSendLater(rec(900, 3, false), l))

	now := t0.Add(time.Hour)
	iv := 10 * time.Second
	old := meta.LsidGid{Lsid: 800, Gid: 4, Timestamp: now.Add(-iv)}
	fresh := meta.LsidGid{Lsid: 800, Gid: 4, Timestamp: now.Add(-iv + time.Second)}
	atLatest := meta.LsidGid{Lsid: 900, Gid: 4, Timestamp: now.Add(-time.Hour)}
	require.True(t, needImplicitSnapshot(nil, 900, now, iv), "empty queue")
	require.True(t, needImplicitSnapshot(&old, 900, now, iv), "old record below latest")
	require.False(t, needImplicitSnapshot(&fresh, 900, now, iv), "fresh record")
	require.False(t, needImplicitSnapshot(&atLatest, 900, now, iv), "record at latest")
}

// system.md §3.4 step 4.
func TestEndRecord(t *testing.T) {
	const maxPB = 1000
	cases := []struct {
		name      string
		q         []meta.LsidGid // oldest first
		done      meta.LsidGid
		permanent uint64
		recE      meta.LsidGid
		limit     uint64
		overCap   bool
		err       error
	}{
		{
			name: "single explicit within cap",
			q:    []meta.LsidGid{rec(500, 1, false)}, done: rec(0, 0, false), permanent: 500,
			recE: rec(500, 1, false), limit: 500,
		},
		{
			name: "walk over implicit records within cap",
			q:    []meta.LsidGid{rec(200, 1, true), rec(400, 2, true), rec(900, 3, true)}, done: rec(0, 0, false), permanent: 2000,
			recE: rec(900, 3, true), limit: 900,
		},
		{
			name: "walk stops at an explicit record and takes it",
			q:    []meta.LsidGid{rec(200, 1, true), rec(400, 2, false), rec(600, 3, true)}, done: rec(0, 0, false), permanent: 2000,
			recE: rec(400, 2, false), limit: 400,
		},
		{
			name: "walk never passes an explicit first record",
			q:    []meta.LsidGid{rec(200, 1, false), rec(400, 2, true)}, done: rec(0, 0, false), permanent: 2000,
			recE: rec(200, 1, false), limit: 200,
		},
		{
			name: "walk stops at the cap",
			q:    []meta.LsidGid{rec(200, 1, true), rec(800, 2, true), rec(1200, 3, true)}, done: rec(100, 0, false), permanent: 2000,
			recE: rec(800, 2, true), limit: 800,
		},
		{
			name: "walk stops at permanent",
			q:    []meta.LsidGid{rec(200, 1, true), rec(400, 2, true)}, done: rec(0, 0, false), permanent: 300,
			recE: rec(200, 1, true), limit: 200,
		},
		{
			name: "first record beyond the cap with room for intermediate gids: cut",
			q:    []meta.LsidGid{rec(3500, 4, false)}, done: rec(0, 0, false), permanent: 3500,
			recE: rec(3500, 4, false), limit: 1000,
		},
		{
			name: "cut from an intermediate done",
			q:    []meta.LsidGid{rec(3500, 4, false)}, done: rec(990, 1, true), permanent: 3500,
			recE: rec(3500, 4, false), limit: 1990,
		},
		{
			name: "first record is done.gid+1 beyond the cap: the whole range, with a warning",
			q:    []meta.LsidGid{rec(3500, 4, false)}, done: rec(1990, 3, true), permanent: 3500,
			recE: rec(3500, 4, false), limit: 3500, overCap: true,
		},
		{
			name: "first record beyond permanent: limit beyond permanent (the caller waits)",
			q:    []meta.LsidGid{rec(600, 1, true)}, done: rec(0, 0, false), permanent: 300,
			recE: rec(600, 1, true), limit: 600,
		},
		{
			name: "explicit snapshot with no new log: empty range",
			q:    []meta.LsidGid{rec(500, 8, false)}, done: rec(500, 7, true), permanent: 500,
			recE: rec(500, 8, false), limit: 500,
		},
		{name: "empty queue", q: nil, done: rec(0, 0, false), permanent: 10, err: ErrCorrupt},
		{name: "record before done", q: []meta.LsidGid{rec(100, 9, false)}, done: rec(200, 8, false), permanent: 500, err: ErrCorrupt},
		{name: "record gid not after done", q: []meta.LsidGid{rec(300, 8, false)}, done: rec(200, 8, false), permanent: 500, err: ErrCorrupt},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			recE, limit, overCap, err := endRecord(c.q, c.done, maxPB, c.permanent)
			if c.err != nil {
				require.ErrorIs(t, err, c.err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, c.recE, recE)
			require.Equal(t, c.limit, limit)
			require.Equal(t, c.overCap, overCap)
		})
	}
}

// system.md §3.4 step 6 and §3.5 step 4.
func TestTransferDiffAndNextDone(t *testing.T) {
	done := rec(1000, 10, false)
	recE := rec(5000, 14, true)

	full := transferDiff(done, recE, 5000)
	require.Equal(t, meta.CleanSnap(10), full.SnapB)
	require.Equal(t, meta.CleanSnap(14), full.SnapE)
	require.Equal(t, recE.Timestamp, full.Timestamp, "the diff carries recE's timestamp")
	require.False(t, full.Mergeable, "and done's mergeability")
	require.NoError(t, full.Validate())
	require.Equal(t, recE, nextDone(done, recE, 5000))

	cut := transferDiff(done, recE, 2000)
	require.Equal(t, meta.CleanSnap(11), cut.SnapE, "a cut range ends at done.gid+1")
	nd := nextDone(done, recE, 2000)
	require.Equal(t, meta.LsidGid{Lsid: 2000, Gid: 11, Mergeable: true, Timestamp: done.Timestamp}, nd,
		"the intermediate record is implicit and keeps done's timestamp")
	next := transferDiff(nd, recE, 5000)
	require.True(t, next.Mergeable, "the diff after an intermediate record is mergeable")
	require.Equal(t, meta.CleanSnap(11), next.SnapB)

	// A chain of cuts reaches recE's gid exactly, and every diff is valid.
	d := done
	for _, lsidE := range []uint64{2000, 3000, 4000, 5000} {
		diff := transferDiff(d, recE, lsidE)
		require.NoError(t, diff.Validate())
		d = nextDone(d, recE, lsidE)
	}
	require.Equal(t, recE, d)
}

func TestWaitDelay(t *testing.T) {
	const mb = 1 << 20
	cases := []struct {
		remaining, max uint64
		want           time.Duration
	}{
		{0, 128 * mb, time.Second},
		{12 * mb, 128 * mb, time.Second},
		{64 * mb, 128 * mb, 100 * time.Millisecond},
		{1 << 40, 128 * mb, 100 * time.Millisecond},
		{0, 0, 100 * time.Millisecond},
	}
	for _, c := range cases {
		require.Equal(t, c.want, waitDelay(c.remaining, c.max), "%d of %d", c.remaining, c.max)
	}
	// In between it shrinks monotonically.
	prev := time.Second
	for r := uint64(13 * mb); r < 64*mb; r += mb {
		d := waitDelay(r, 128*mb)
		require.LessOrEqual(t, d, prev)
		require.Greater(t, d, 100*time.Millisecond-1)
		prev = d
	}
}

func TestSentinelCodes(t *testing.T) {
	require.True(t, errors.Is(errors.Wrap(ErrOverflow, "x"), CodeOverflow))
	require.True(t, errors.Is(errors.Wrap(ErrNotFound, "x"), ErrNotFound))
}
