package meta

import (
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func cd(b, e uint64, mergeable bool, t int64) Diff {
	return Diff{SnapB: sn(b), SnapE: sn(e), Mergeable: mergeable, Timestamp: ts(t)}
}

func mustSet(t testing.TB, ds ...Diff) *DiffSet {
	t.Helper()
	s, err := NewDiffSet(ds...)
	require.NoError(t, err)
	return s
}

func gids(ps []RestorePoint) []uint64 {
	var v []uint64
	for _, p := range ps {
		v = append(v, p.Gid())
	}
	return v
}

func rangesOf(ds []Diff) []string {
	var v []string
	for _, d := range ds {
		v = append(v, d.String())
	}
	return v
}

// walb-tools metaDiffManager1:
//
//	    |0|
//	(1) |0|-->|1|        M
//	(2)       |1|-->|2|  M
//	(3)             |2|-->|3|  M
//	(4)                   |3|-->|4|      (explicit |3|)
//	(5)                         |4|-->|5|  M
func TestDiffSetManager1(t *testing.T) {
	v := []Diff{cd(0, 1, true, 1000), cd(1, 2, true, 1001), cd(2, 3, true, 1002), cd(3, 4, false, 1003), cd(4, 5, true, 1004)}
	s := mustSet(t, v...)
	st := NewState(sn(0), time.Time{})
	require.Equal(t, sn(5), s.LatestSnap(st))
	oc, err := s.OldestCleanState(st)
	require.NoError(t, err)
	require.Equal(t, sn(0), oc.SnapB)
	require.Len(t, s.ChainToGid(sn(0), 4), 4)
	require.Len(t, s.ChainToTime(sn(0), ts(1003)), 4)
	require.Len(t, s.ApplyList(st, 2), 2)
	require.Len(t, s.ApplyList(st, 4), 4)
	for _, g := range []uint64{2, 4} {
		l, ok := s.RestoreList(st, g)
		require.True(t, ok)
		require.Len(t, l, int(g))
		l, ok = s.SyncList(st, sn(g))
		require.True(t, ok)
		require.Len(t, l, int(g))
	}
	l, ok := s.RestoreList(st, 0)
	require.True(t, ok, "the base itself is restorable")
	require.Empty(t, l)
	_, ok = s.RestoreList(st, 6)
	require.False(t, ok)

	all := s.RestorePoints(st, true)
	require.Equal(t, []uint64{0, 1, 2, 3, 4, 5}, gids(all))
	def := s.RestorePoints(st, false)
	require.Equal(t, []uint64{0, 3, 5}, gids(def))
	require.Equal(t, []bool{false, true, true}, []bool{def[0].Explicit, def[1].Explicit, def[2].Explicit})
	require.Equal(t, ts(1002), def[1].State.Timestamp, "each state carries the stamp of its diff")
	require.Equal(t, []uint64{0, 1, 2, 3, 4, 5}, s.CleanSnapshots(st))

	v1 := s.MergeableList(0, nil)
	require.Equal(t, []string{"|0|-->|1|", "|1|-->|2|", "|2|-->|3|"}, rangesOf(v1))
	v2 := s.MergeableList(3, nil)
	require.Equal(t, []string{"|3|-->|4|", "|4|-->|5|"}, rangesOf(v2))
	m1, err := MergeAll(v1)
	require.NoError(t, err)
	m2, err := MergeAll(v2)
	require.NoError(t, err)
	require.NoError(t, s.Add(m1))
	require.NoError(t, s.Add(m2))
	require.Equal(t, sn(5), s.LatestSnap(st))
	gone := s.Gc(sn(0))
	require.Len(t, gone, 5)
	require.Equal(t, sn(5), s.LatestSnap(st))
	require.Equal(t, []string{m1.String(), m2.String()}, rangesOf(s.All()))
	// Merging kept the explicit |3|; implicit snapshots are gone.
	require.Equal(t, []uint64{0, 3, 5}, gids(s.RestorePoints(st, true)))
}

// walb-tools metaDiffManager2: a dirty base.
//
//	s0  |0,       10|
//	d0  |0|-->|5|
//	d1        |5, 10|->|15,    20|
//	d2                 |15|-->|20|
//	d3                        |20|-->|25|
func TestDiffSetManager2(t *testing.T) {
	v := []Diff{cd(0, 5, false, 1000), {SnapB: sn(5, 10), SnapE: sn(15, 20), Timestamp: ts(1001)},
		cd(15, 20, false, 1002), cd(20, 25, false, 1003)}
	s := mustSet(t, v...)
	st := NewState(sn(0, 10), time.Time{})
	oc, err := s.OldestCleanState(st)
	require.NoError(t, err)
	require.Equal(t, sn(20), oc.SnapB)
	require.Len(t, s.Chain(st.SnapB, nil), 4)
	require.Empty(t, s.MinimumList(st))

	applyLens := map[uint64]int{5: 1, 15: 2, 20: 3, 25: 4}
	for g, n := range applyLens {
		require.Len(t, s.ApplyList(st, g), n, "apply to %d", g)
	}
	restore := map[uint64]int{5: -1, 15: -1, 20: 3, 25: 4}
	for g, n := range restore {
		l, ok := s.RestoreList(st, g)
		require.Equal(t, n >= 0, ok, "restore %d", g)
		if ok {
			require.Len(t, l, n)
		}
	}
	syncs := []struct {
		target Snap
		n      int
	}{{sn(5), -1}, {sn(5, 10), 1}, {sn(15, 20), 2}, {sn(20), 3}, {sn(25), 4}}
	for _, c := range syncs {
		l, ok := s.SyncList(st, c.target)
		require.Equal(t, c.n >= 0, ok, "sync %s", c.target)
		if ok {
			require.Len(t, l, c.n)
		}
	}
	require.Equal(t, []uint64{20, 25}, gids(s.RestorePoints(st, true)))
	require.Equal(t, []uint64{20, 25}, gids(s.RestorePoints(st, false)))

	// The base left applying to |25| must reapply all four diffs.
	st1 := NewApplyingState(sn(0, 10), sn(25), time.Time{})
	require.Len(t, s.MinimumList(st1), 4)
	for _, g := range []uint64{5, 20, 25} {
		require.Len(t, s.ApplyList(st1, g), 4)
	}
	for g, ok := range map[uint64]bool{5: false, 20: false, 25: true} {
		l, got := s.RestoreList(st1, g)
		require.Equal(t, ok, got, "restore %d", g)
		if ok {
			require.Len(t, l, 4)
		}
	}
	_, ok := s.SyncList(st1, sn(20))
	require.False(t, ok)
	require.Equal(t, []uint64{25}, gids(s.RestorePoints(st1, true)))
	latest, err := s.LatestState(st1)
	require.NoError(t, err)
	require.True(t, latest.Equal(NewState(sn(25), time.Time{})))
}

// walb-tools metaDiffManager3.
func TestDiffSetManager3(t *testing.T) {
	s := mustSet(t, cd(0, 5, false, 1000), Diff{SnapB: sn(5, 10), SnapE: sn(15, 20), Timestamp: ts(1001)},
		cd(15, 20, false, 1002))
	st := NewState(sn(0, 10), time.Time{})
	oc, err := s.OldestCleanState(st)
	require.NoError(t, err)
	require.Equal(t, sn(20), oc.SnapB)
	for g, n := range map[uint64]int{5: 1, 10: 1, 15: 2, 20: 3} {
		require.Len(t, s.ApplyList(st, g), n)
	}
	for g, ok := range map[uint64]bool{5: false, 10: false, 15: false, 20: true} {
		require.Equal(t, ok, s.IsRestorable(st, g), "%d", g)
	}
	require.Equal(t, []uint64{20}, gids(s.RestorePoints(st, true)))
	require.Equal(t, []uint64{20}, gids(s.RestorePoints(st, false)))

	// Without the diff that makes it clean there is no clean snapshot.
	s2 := mustSet(t, cd(0, 5, false, 1000))
	_, err = s2.OldestCleanState(st)
	require.ErrorIs(t, err, ErrNoCleanSnapshot)
	require.Empty(t, s2.RestorePoints(st, true))
}

func TestDiffSetGcRange(t *testing.T) {
	v := []Diff{cd(0, 1, true, 1000), cd(0, 2, true, 1000), cd(1, 2, true, 1000), cd(1, 3, true, 1000),
		cd(2, 3, true, 1002), cd(2, 4, true, 1003)}
	s := mustSet(t, v...)
	gone := s.GcRange(1, 3)
	require.Equal(t, []string{"|1|-->|2|", "|2|-->|3|"}, rangesOf(gone))
	require.Len(t, s.All(), 4)
	require.True(t, s.Exists(cd(1, 3, false, 0)), "the diff spanning exactly [1,3] stays")
}

func TestDiffSetMergeAndGc(t *testing.T) {
	v := []Diff{cd(0, 1, true, 1000), cd(1, 2, true, 1001), cd(2, 3, true, 1002), cd(3, 4, true, 1003), cd(4, 5, true, 1004)}
	s := mustSet(t, v...)
	m1, _ := MergeAll(v[0:3])
	m2, _ := MergeAll(v[1:5])
	require.NoError(t, s.Add(m1))
	require.NoError(t, s.Add(m2))
	require.Equal(t, []string{"|0|-->|3|", "|1|-->|5|"}, rangesOf(s.Chain(sn(0), nil)))
	s.Gc(sn(0))
	require.Equal(t, []string{"|0|-->|3|", "|1|-->|5|"}, rangesOf(s.Chain(sn(0), nil)))
	m3, _ := MergeAll(v[3:5])
	require.NoError(t, s.Add(m3))
	s.Gc(sn(0))
	require.Equal(t, []string{"|0|-->|3|", "|3|-->|5|"}, rangesOf(s.Chain(sn(0), nil)))
	require.Len(t, s.All(), 2)

	// walb-tools metaDiffManagerMerge2: with holes, the merged diffs win.
	s2 := mustSet(t, cd(0, 1, true, 1000), cd(2, 3, true, 1002), cd(4, 5, true, 1004), cd(0, 3, true, 1002), cd(2, 5, true, 1004))
	s2.Gc(sn(0))
	require.Equal(t, []string{"|0|-->|3|", "|2|-->|5|"}, rangesOf(s2.Chain(sn(0), nil)))
	require.Len(t, s2.All(), 2)
}

// walb-tools wdiff_files "consolidate".
func TestDiffSetConsolidate(t *testing.T) {
	s := mustSet(t, cd(0, 1, false, 1), cd(1, 2, true, 2), cd(2, 3, false, 3), cd(3, 4, true, 4), cd(4, 5, true, 5))
	v := s.MergeableList(0, nil)
	require.Equal(t, []string{"|0|-->|1|", "|1|-->|2|"}, rangesOf(v))
	m, _ := MergeAll(v)
	require.Equal(t, "|0|-->|2|", m.String())
	require.NoError(t, s.Add(m))
	v = s.MergeableList(2, nil)
	require.Equal(t, []string{"|2|-->|3|", "|3|-->|4|", "|4|-->|5|"}, rangesOf(v))
	m, _ = MergeAll(v)
	require.NoError(t, s.Add(m))
	require.Len(t, s.All(), 7)
	s.Gc(sn(0))
	require.Equal(t, []string{"|0|-->|2|", "|2|-->|5|"}, rangesOf(s.All()))
	// MergeableList starts at the smallest key >= gid.
	require.Equal(t, []string{"|2|-->|5|"}, rangesOf(s.MergeableList(1, nil)))
	require.Empty(t, s.MergeableList(3, nil))
}

func TestDiffSetLimits(t *testing.T) {
	v := []Diff{cd(0, 1, false, 1), cd(1, 2, true, 2), cd(2, 3, true, 3), cd(3, 4, true, 4), cd(4, 5, false, 5), cd(5, 6, true, 6)}
	for i := range v {
		v[i].DataSize = 100
	}
	s := mustSet(t, v...)

	require.Len(t, TruncateDiffs(v[:4], 0, 0), 1, "the first diff is always taken")
	require.Len(t, TruncateDiffs(v[:4], 199, 0), 1)
	require.Len(t, TruncateDiffs(v[:4], 200, 0), 2)
	require.Len(t, TruncateDiffs(v[:4], 1000, 3), 3)
	require.Len(t, TruncateDiffs(v[:4], 1000, 0), 4)
	require.Empty(t, TruncateDiffs(nil, 1000, 1))
	huge := []Diff{{DataSize: ^uint64(0)}, {DataSize: 5}}
	require.Len(t, TruncateDiffs(huge, ^uint64(0)-1, 0), 1, "sizes saturate")

	require.Equal(t, []string{"|0|-->|1|", "|1|-->|2|", "|2|-->|3|", "|3|-->|4|"}, rangesOf(s.ProxySendList(1<<30, 1000)))
	require.Len(t, s.ProxySendList(250, 1000), 2)
	require.Len(t, s.ProxySendList(1<<30, 3), 3)

	l, err := s.MergeListBySize(1, 300)
	require.NoError(t, err)
	require.Equal(t, []string{"|1|-->|2|", "|2|-->|3|", "|3|-->|4|"}, rangesOf(l))
	_, err = s.MergeListBySize(1, 150)
	require.ErrorIs(t, err, ErrTooFewDiffs)
	l, err = s.MergeListByGid(0, 3)
	require.NoError(t, err)
	require.Equal(t, []string{"|0|-->|1|", "|1|-->|2|", "|2|-->|3|"}, rangesOf(l))
	_, err = s.MergeListByGid(4, 6)
	require.NoError(t, err)
	_, err = s.MergeListByGid(4, 5)
	require.ErrorIs(t, err, ErrTooFewDiffs)

	require.Equal(t, []string{"|1|-->|2|", "|2|-->|3|", "|3|-->|4|"}, rangesOf(s.ReplSendList(sn(1), 1<<30, 1000)))
	require.Equal(t, []string{"|4|-->|5|", "|5|-->|6|"}, rangesOf(s.ApplicableMergeable(sn(4))))
	require.Len(t, s.ReplSendList(sn(1), 1<<30, 2), 2)
	require.Empty(t, s.ReplSendList(sn(6), 1<<30, 2))

	// A compared diff is never merged with anything.
	c := cd(6, 7, true, 7)
	c.CompDiff = true
	require.NoError(t, s.Add(c))
	require.Len(t, s.MergeableList(4, nil), 2)
	require.Len(t, s.MergeableList(6, nil), 1)
}

func TestDiffSetBasics(t *testing.T) {
	s := mustSet(t)
	_, _, ok := s.MinMaxGid()
	require.False(t, ok)
	_, ok = s.Latest()
	require.False(t, ok)
	require.Empty(t, s.Chain(sn(0), nil))
	require.Empty(t, s.MergeableList(0, nil))

	a := cd(3, 5, true, 3)
	a.DataSize = 10
	require.NoError(t, s.Add(a))
	require.ErrorIs(t, s.Add(cd(3, 5, false, 9)), ErrDuplicate)
	require.ErrorIs(t, s.Add(cd(5, 5, false, 9)), ErrInvalid)
	b := Diff{SnapB: sn(1), SnapE: sn(4, 6), DataSize: 7}
	require.NoError(t, s.Add(b))
	require.NoError(t, s.Add(cd(5, 9, false, 1)))
	require.NoError(t, s.Add(cd(5, 7, false, 1)))
	require.Equal(t, 4, s.Len())
	mn, mx, ok := s.MinMaxGid()
	require.True(t, ok)
	require.Equal(t, uint64(1), mn)
	require.Equal(t, uint64(9), mx)
	l, ok := s.Latest()
	require.True(t, ok)
	require.Equal(t, "|5|-->|9|", l.String())
	require.Equal(t, []string{"|3|-->|5|", "|5|-->|7|"}, rangesOf(s.Range(2, 6))[:2])
	n, bytes := s.Stats(0, 4)
	require.Equal(t, 2, n)
	require.Equal(t, uint64(17), bytes)
	got, ok := s.Get(cd(3, 5, false, 0))
	require.True(t, ok)
	require.Equal(t, a, got)
	require.False(t, s.Exists(cd(3, 6, false, 0)))

	ch, err := s.SetMergeable(3, false)
	require.NoError(t, err)
	require.Equal(t, []DiffChange{{Old: a, New: func() Diff { x := a; x.Mergeable = false; return x }()}}, ch)
	ch, err = s.SetMergeable(3, false)
	require.NoError(t, err)
	require.Empty(t, ch, "already explicit")
	_, err = s.SetMergeable(4, true)
	require.ErrorIs(t, err, ErrNoSnapshot)
	ch, err = s.SetMergeable(5, true)
	require.NoError(t, err)
	require.Len(t, ch, 2)

	require.True(t, s.Remove(b))
	require.False(t, s.Remove(b))
	require.Equal(t, 2, s.RemoveAll([]Diff{cd(5, 9, false, 0), cd(5, 7, false, 0), cd(8, 9, false, 0)}))
	require.Equal(t, 1, s.Len())

	require.ErrorIs(t, s.Reset([]Diff{cd(1, 2, false, 0), cd(1, 2, true, 0)}), ErrDuplicate)
	require.Equal(t, 1, s.Len(), "a failed reset changes nothing")
	_, err = NewDiffSet(cd(2, 1, false, 0))
	require.ErrorIs(t, err, ErrInvalid)
}

func TestDiffSetEraseBeforeGid(t *testing.T) {
	s := mustSet(t, cd(0, 2, false, 0), cd(1, 3, false, 0), cd(2, 4, false, 0), cd(0, 5, false, 0), cd(4, 6, false, 0))
	gone := s.EraseBeforeGid(4)
	require.Equal(t, []string{"|0|-->|2|", "|1|-->|3|", "|2|-->|4|"}, rangesOf(gone))
	require.Equal(t, []string{"|0|-->|5|", "|4|-->|6|"}, rangesOf(s.All()))
}

func TestDiffSetCompDiffChain(t *testing.T) {
	// hash-repl builds srvLatest --> clientOldestClean as a compared diff; it
	// applies only at its exact start.
	c := Diff{SnapB: sn(5, 8), SnapE: sn(20), CompDiff: true, Mergeable: true}
	s := mustSet(t, c, cd(20, 21, true, 0), cd(3, 6, false, 0))
	require.Equal(t, []string{"|5,8|-->|20|", "|20|-->|21|"}, rangesOf(s.Chain(sn(5, 8), nil)))
	require.Empty(t, s.Chain(sn(6), nil))
	require.Equal(t, []string{"|3|-->|6|"}, rangesOf(s.Chain(sn(4), nil)))
}

// bruteChain is the oracle for DiffSet.chain: scan every diff each step.
func bruteChain(all []Diff, s Snap) []Diff {
	var v []Diff
	for {
		var cand []Diff
		for _, d := range all {
			if s.CanApply(d) {
				cand = append(cand, d)
			}
		}
		d, ok := MaxProgress(cand)
		if !ok {
			return v
		}
		v = append(v, d)
		s = applyOne(s, d)
	}
}

func randSetDiff(r *rand.Rand, maxGid int) Diff {
	b := uint64(r.IntN(maxGid))
	e := b + 1 + uint64(r.IntN(1+r.IntN(maxGid/4+1)))
	d := Diff{SnapB: sn(b), SnapE: sn(e), Mergeable: r.IntN(3) != 0, CompDiff: r.IntN(20) == 0,
		Timestamp: ts(int64(e)), DataSize: uint64(r.IntN(100))}
	if r.IntN(4) == 0 {
		d.SnapB.GidE += uint64(r.IntN(3))
		d.SnapE.GidE = max(d.SnapE.GidE, d.SnapB.GidE) + uint64(r.IntN(3))
	}
	return d
}

func TestDiffSetIndexMatchesBruteForce(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 6))
	rounds := 300
	if raceEnabled {
		rounds = 40
	}
	for round := range rounds {
		n := 1 + r.IntN(60)
		var all []Diff
		s := mustSet(t)
		for len(all) < n {
			d := randSetDiff(r, 50)
			if s.Add(d) == nil {
				all = append(all, d)
			}
		}
		sort.Slice(all, func(i, j int) bool { return diffLess(all[i], all[j]) })
		require.Equal(t, all, s.All())
		for g := uint64(0); g < 80; g++ {
			var want []int
			for i, d := range all {
				if d.SnapB.GidB <= g && g < d.SnapE.GidB {
					want = append(want, i)
				}
			}
			var got []int
			s.spanning(g, func(i int) { got = append(got, i) })
			require.Equal(t, want, got, "round %d gid %d", round, g)
			start := sn(g, g+uint64(r.IntN(3)))
			require.Equal(t, bruteChain(all, start), s.Chain(start, nil))
		}
		// Removing keeps the index right.
		cut := uint64(r.IntN(40))
		gone := s.EraseBeforeGid(cut)
		var kept, wantGone []Diff
		for _, d := range all {
			if d.SnapE.GidB <= cut {
				wantGone = append(wantGone, d)
			} else {
				kept = append(kept, d)
			}
		}
		require.Equal(t, wantGone, gone)
		require.Equal(t, bruteChain(kept, sn(10)), s.Chain(sn(10), nil))
	}
}

// walb-tools metaDiffManager4/Merge3: random chains, random merges, gc and
// erase keep the latest snapshot and the explicit snapshots.
func TestDiffSetRandomMergeGc(t *testing.T) {
	r := rand.New(rand.NewPCG(9, 10))
	for range 30 {
		snap := sn(0)
		st := NewState(snap, time.Time{})
		v := randChain(r, snap, 40, false)
		s := mustSet(t)
		cur := snap
		for _, d := range v {
			require.Equal(t, cur, s.LatestSnap(st))
			require.NoError(t, s.Add(d))
			cur = applyOne(cur, d)
		}
		require.Equal(t, v, s.Chain(snap, nil))
		latest := s.LatestSnap(st)
		explicit := gids(s.RestorePoints(st, false))
		allN := len(s.RestorePoints(st, true))
		for range 20 {
			mv := s.MergeableList(uint64(r.IntN(int(latest.GidE)+1)), nil)
			if len(mv) > 1 {
				m, err := MergeAll(mv)
				require.NoError(t, err)
				if s.Add(m) == nil {
					s.Gc(snap)
				}
			}
			require.Equal(t, latest, s.LatestSnap(st))
		}
		require.Equal(t, explicit, gids(s.RestorePoints(st, false)))
		require.LessOrEqual(t, len(s.RestorePoints(st, true)), allN)
		clean := s.CleanSnapshots(st)
		if len(clean) > 0 {
			oc, err := s.OldestCleanState(st)
			require.NoError(t, err)
			require.Equal(t, clean[0], oc.SnapB.GidB)
		}
		// Apply up to some point: erase what the new base makes useless.
		chain := s.Chain(snap, nil)
		k := r.IntN(len(chain))
		base, err := st.Apply(chain[:k+1]...)
		require.NoError(t, err)
		s.EraseBeforeGid(base.SnapB.GidB)
		require.Equal(t, latest, s.LatestSnap(base))
	}
}

func TestDiffSetConcurrent(t *testing.T) {
	s := mustSet(t)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				g := uint64(w*1000 + i)
				s.Add(cd(g, g+1, true, 0))
				s.Chain(sn(uint64(w*1000)), nil)
				s.MergeableList(uint64(w*1000), nil)
				s.RestorePoints(NewState(sn(uint64(w*1000)), time.Time{}), false)
			}
		}()
	}
	wg.Wait()
	require.Equal(t, 800, s.Len())
	require.Len(t, s.Chain(sn(2000), nil), 200)
}

func TestLoadDir(t *testing.T) {
	dir := t.TempDir()
	files := map[string]int{
		"20170714024000-M--10-20.wdiff":       100,
		"20170714024100--C-10-12-20-25.wdiff": 7,
		"20170714024200----20-21.wdiff":       0,
		"tmpAbC123":                           5, // a temporary: ignored
		"base":                                3, // metadata: ignored
		"20170714024000-M--010-20.wdiff":      1, // leading zero
		"20170714024000-X--10-20.wdiff":       1, // bad flag
		"20170714024300-M--10-20.wdiff":       1, // same range as the first
		"garbage.wdiff":                       1,
	}
	for name, size := range files {
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), make([]byte, size), 0o644))
	}
	require.NoError(t, os.Mkdir(filepath.Join(dir, "20170714024400----30-31.wdiff"), 0o755))
	s, bad, err := LoadDir(dir)
	require.NoError(t, err)
	require.Equal(t, []string{"|10|-->|20|", "|10,12|-->|20,25|", "|20|-->|21|"}, rangesOf(s.All()))
	all := s.All()
	require.Equal(t, uint64(100), all[0].DataSize)
	require.Equal(t, uint64(7), all[1].DataSize)
	require.True(t, all[0].Mergeable)
	require.True(t, all[1].CompDiff)
	var badNames []string
	for _, b := range bad {
		badNames = append(badNames, b.Name)
		require.Error(t, b.Err)
	}
	require.ElementsMatch(t, []string{"20170714024000-M--010-20.wdiff", "20170714024000-X--10-20.wdiff",
		"20170714024300-M--10-20.wdiff", "garbage.wdiff", "20170714024400----30-31.wdiff"}, badNames)
	for _, b := range bad {
		if b.Name == "20170714024300-M--10-20.wdiff" {
			require.ErrorIs(t, b.Err, ErrDuplicate)
		}
	}
	p, err := DiffPath(dir, all[0])
	require.NoError(t, err)
	require.Equal(t, filepath.Join(dir, "20170714024000-M--10-20.wdiff"), p)

	_, _, err = LoadDir(filepath.Join(dir, "missing"))
	require.Error(t, err)
}

func TestPickCold(t *testing.T) {
	base := NewState(sn(10), time.Time{})
	colds := []uint64{5, 12, 30, 20, 10}
	for target, want := range map[uint64]int64{9: -1, 10: -1, 11: -1, 12: 12, 19: 12, 20: 20, 29: 20, 100: 30} {
		g, ok := PickCold(colds, base, target)
		require.Equal(t, want >= 0, ok, "target %d", target)
		if ok {
			require.Equal(t, uint64(want), g, "target %d", target)
		}
	}
	_, ok := PickCold(nil, base, 100)
	require.False(t, ok)
}

func BenchmarkDiffSetChain(b *testing.B) {
	const n = 10000
	v := make([]Diff, 0, 2*n)
	for g := uint64(0); g < n; g++ {
		v = append(v, cd(g, g+1, g%10 != 0, int64(g)))
	}
	for g := uint64(0); g+10 < n; g += 10 {
		m, _ := MergeAll(v[g : g+10])
		v = append(v, m)
	}
	s := mustSet(b, v...)
	b.SetBytes(int64(len(v)))
	for b.Loop() {
		if len(s.Chain(sn(0), nil)) == 0 {
			b.Fatal("empty chain")
		}
	}
}

func BenchmarkDiffSetAdd(b *testing.B) {
	s := mustSet(b)
	b.SetBytes(1)
	g := uint64(0)
	for b.Loop() {
		if err := s.Add(cd(g, g+1, true, 0)); err != nil {
			b.Fatal(err)
		}
		g++
	}
}
