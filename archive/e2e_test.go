package archive

import (
	"fmt"
	"math"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/meta"
)

// restorableGids lists the gids of the restorable list.
func restorableGids(t *testing.T, e *Engine, vol string, all bool) []uint64 {
	t.Helper()
	pts, err := e.Restorable(vol, all)
	require.NoError(t, err)
	var out []uint64
	for _, p := range pts {
		out = append(out, p.Gid())
	}
	return out
}

func gidRange(a, b uint64) []uint64 {
	var out []uint64
	for g := a; g <= b; g++ {
		out = append(out, g)
	}
	return out
}

// TestEndToEnd runs the life of a volume (system.md §5): init, a dirty
// full backup, wdiffs made from generated wlogs, a restore of every gid
// compared with a model image, a merge, applies, a restart, and restores
// again; with each apply mode and with -maxopen limits.
func TestEndToEnd(t *testing.T) {
	cases := []struct {
		apply   ApplyMode
		maxOpen int
		discard DiscardMode
	}{
		{ApplyInPlace, 0, DiscardZero},
		{ApplyClone, 0, DiscardZero},
		{ApplyInPlace, 2, DiscardPassdown},
		{ApplyClone, 3, DiscardZero},
		// With discards ignored, a discarded range keeps old data, which
		// the model cannot follow through merges: no discards then.
		{ApplyAuto, 0, DiscardIgnore},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprintf("%s/maxopen%d/discard-%s", tc.apply, tc.maxOpen, tc.discard), func(t *testing.T) {
			t.Parallel()
			tweak := func(c *Config) { c.Apply = tc.apply; c.MaxOpen = tc.maxOpen; c.Discard = tc.discard }
			env := newEnv(t, tweak)
			ctx := testCtx(t)
			const vol = "vol-0"
			const n = 12
			m := newModel(uint64(tc.maxOpen)+7, 4096)
			m.discard = tc.discard != DiscardIgnore

			require.NoError(t, env.e.InitVol(ctx, vol))
			st, _ := env.e.State(vol)
			require.Equal(t, StateSyncReady, st)
			// The storage copied the device while it was written between
			// gids 0 and 1: the base is the dirty snapshot |0,1|.
			env.fullSync(ctx, vol, m, meta.Snap{GidB: 0, GidE: 1})
			st, _ = env.e.State(vol)
			require.Equal(t, StateArchived, st)
			require.Empty(t, restorableGids(t, env.e, vol, true), "a dirty base is not restorable")

			for g := uint64(0); g < n; g++ {
				data := m.nextWdiff(t, 40)
				// Diffs starting at multiples of 3 are explicit snapshots.
				require.NoError(t, env.sendDiff(ctx, vol, m, cleanDiff(g, g+1, g%3 != 0), data))
				m.record(g + 1)
			}
			require.Equal(t, gidRange(1, n), restorableGids(t, env.e, vol, true))
			require.Equal(t, []uint64{3, 6, 9, n}, restorableGids(t, env.e, vol, false))
			for g := uint64(1); g <= n; g++ {
				require.Equal(t, m.sha[g], env.restoredSHA(ctx, vol, g), "gid %d", g)
			}

			// Merge 3..6 (3->4 explicit start, 4->5 and 5->6 mergeable).
			require.NoError(t, env.e.Merge(ctx, vol, MergeRange{GidB: 3, GidE: 7}))
			ds, err := env.e.Diffs(vol, 3, 4)
			require.NoError(t, err)
			require.Len(t, ds, 1)
			require.Equal(t, "|3|-->|6|", ds[0].String())
			require.False(t, ds[0].Mergeable, "the merged diff keeps its first diff's flag")
			require.Equal(t, append(gidRange(1, 3), gidRange(6, n)...), restorableGids(t, env.e, vol, true))
			for _, g := range []uint64{3, 6, 7} {
				require.Equal(t, m.sha[g], env.restoredSHA(ctx, vol, g), "gid %d", g)
			}
			require.ErrorIs(t, env.e.Restore(ctx, vol, 4), ErrNotRestorable)

			// Apply to 8: the base becomes |8| and older diffs go.
			require.NoError(t, env.e.Apply(ctx, vol, 8))
			base, err := env.e.Base(vol)
			require.NoError(t, err)
			require.Equal(t, "<|8|>", base.String())
			require.Equal(t, diffTs(8), base.Timestamp)
			require.Equal(t, m.sha[8], env.baseSHA(vol))
			nd, _, err := env.e.DiffStats(vol, 0, math.MaxUint64)
			require.NoError(t, err)
			require.Equal(t, n-8, nd)
			require.Equal(t, gidRange(8, n), restorableGids(t, env.e, vol, true))
			require.ErrorIs(t, env.e.Apply(ctx, vol, 8), ErrNothingToApply)

			// Restart, then everything restorable still restores exactly.
			env = env.reopen(tweak)
			for g := uint64(8); g <= n; g++ {
				require.Equal(t, m.sha[g], env.restoredSHA(ctx, vol, g), "gid %d after restart", g)
			}
			// Apply everything.
			require.NoError(t, env.e.Apply(ctx, vol, n))
			require.Equal(t, m.sha[n], env.baseSHA(vol))
			require.Equal(t, m.sha[n], env.restoredSHA(ctx, vol, n))

			// More diffs after the apply, then a merge by size.
			for g := uint64(n); g < n+4; g++ {
				require.NoError(t, env.sendDiff(ctx, vol, m, cleanDiff(g, g+1, true), m.nextWdiff(t, 20)))
				m.record(g + 1)
			}
			require.NoError(t, env.e.Merge(ctx, vol, MergeRange{GidB: n, MaxBytes: 1 << 30}))
			ds, err = env.e.Diffs(vol, 0, math.MaxUint64)
			require.NoError(t, err)
			require.Len(t, ds, 1)
			require.Equal(t, m.sha[n+4], env.restoredSHA(ctx, vol, n+4))
		})
	}
}

// TestWdiffReplies checks the wdiff-transfer replies (system.md §5.9,
// scenario e17: the same diff twice is accept, then too-old-diff).
func TestWdiffReplies(t *testing.T) {
	env := newEnv(t, nil)
	ctx := testCtx(t)
	const vol = "v"
	m := newModel(3, 1024)
	d01 := m.nextWdiff(t, 10)

	// No volume: the state is Clear, which is not Archived.
	require.ErrorIs(t, env.sendDiff(ctx, vol, m, cleanDiff(0, 1, false), d01), ErrWrongState)
	require.NoError(t, env.e.InitVol(ctx, vol))
	require.ErrorIs(t, env.sendDiff(ctx, vol, m, cleanDiff(0, 1, false), d01), ErrWrongState)
	env.fullSync(ctx, vol, newModel(3, 1024), meta.CleanSnap(0))

	require.NoError(t, env.sendDiff(ctx, vol, m, cleanDiff(0, 1, false), d01))
	require.ErrorIs(t, env.sendDiff(ctx, vol, m, cleanDiff(0, 1, false), d01), ErrTooOldDiff)
	require.ErrorIs(t, env.sendDiff(ctx, vol, m, cleanDiff(2, 3, false), d01), ErrTooNewDiff)

	other := *m
	other.uuid[0] ^= 1
	require.ErrorIs(t, env.sendDiff(ctx, vol, &other, cleanDiff(1, 2, false), d01), ErrDifferentUUID)
	// Another archive may send diffs of another uuid (replication).
	err := env.e.ReceiveWdiff(ctx, vol, WdiffHeader{Sender: SenderArchive, UUID: other.uuid, SizeLB: 1024, Diff: cleanDiff(1, 2, false)}, bytesReader(d01))
	require.NoError(t, err)

	big := *m
	big.sizeLB = 2048
	require.ErrorIs(t, env.sendDiff(ctx, vol, &big, cleanDiff(2, 3, false), d01), ErrSmallerLvSize)
	cd := cleanDiff(1, 3, false)
	cd.CompDiff = true
	require.ErrorIs(t, env.sendDiff(ctx, vol, m, cd, d01), ErrNotApplicableDiff)

	// Stopped.
	require.NoError(t, env.e.Stop(ctx, vol, StopGraceful))
	require.ErrorIs(t, env.sendDiff(ctx, vol, m, cleanDiff(2, 3, false), d01), ErrVolStopped)
	require.NoError(t, env.e.Start(ctx, vol))

	// Auto-resize grows the base instead of refusing.
	env = env.reopen(func(c *Config) { c.AutoResize = true })
	require.NoError(t, env.sendDiff(ctx, vol, &big, cleanDiff(2, 3, false), d01))
	size, err := env.e.VolSize(vol)
	require.NoError(t, err)
	require.EqualValues(t, 2048, size)
}
