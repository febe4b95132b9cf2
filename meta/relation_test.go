package meta

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// system.md §2.3 and walb-tools' meta tests.
func TestRelationAndApply(t *testing.T) {
	comp := func(d Diff) Diff { d.CompDiff = true; return d }
	tests := []struct {
		name string
		s    Snap
		d    Diff
		rel  Relation
		want Snap // when applicable
	}{
		{"clean on clean", sn(0), df(sn(0), sn(1)), Applicable, sn(1)},
		{"clean diff overlapping the snapshot", sn(1), df(sn(0), sn(2)), Applicable, sn(2)},
		{"starts after", sn(0), df(sn(1), sn(2)), TooNew, Snap{}},
		{"ends before", sn(2), df(sn(0), sn(1)), TooOld, Snap{}},
		{"ends exactly at", sn(5), df(sn(4), sn(5)), TooOld, Snap{}},
		{"starts just after", sn(5), df(sn(6), sn(7)), TooNew, Snap{}},
		{"spans", sn(5), df(sn(3), sn(7)), Applicable, sn(7)},
		// A dirty image becomes clean once log diffs pass its gidE.
		{"dirty reaches gidE", sn(0, 2), df(sn(0), sn(2)), Applicable, sn(2)},
		{"dirty passes gidE", sn(0, 2), df(sn(0), sn(4)), Applicable, sn(4)},
		{"dirty short of gidE", sn(0, 2), df(sn(0), sn(1)), Applicable, sn(1, 2)},
		{"dirty 0,10 by 0-5", sn(0, 10), df(sn(0), sn(5)), Applicable, sn(5, 10)},
		{"dirty 5,10 by 5-12", sn(5, 10), df(sn(5), sn(12)), Applicable, sn(12)},
		// A dirty diff carries its own end.
		{"dirty diff to dirty", sn(0, 5), df(sn(0, 5), sn(15, 16)), Applicable, sn(15, 16)},
		{"dirty diff to clean", sn(0, 5), df(sn(0, 5), sn(10)), Applicable, sn(10)},
		{"dirty diff from inside", sn(5, 10), df(sn(0, 5), sn(15)), Applicable, sn(15)},
		{"dirty diff keeps its gidE", sn(5, 10), df(sn(0, 5), sn(7, 10)), Applicable, sn(7, 10)},
		// Compared diffs apply only where they start.
		{"comp at its start", sn(5), comp(df(sn(5), sn(8))), Applicable, sn(8)},
		{"comp inside", sn(6), comp(df(sn(5), sn(8))), NotApplicable, Snap{}},
		{"comp before", sn(4), comp(df(sn(5), sn(8))), NotApplicable, Snap{}},
		{"comp dirty start", sn(5, 9), comp(df(sn(5, 9), sn(12, 13))), Applicable, sn(12, 13)},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.rel, RelationOf(tc.s, tc.d))
			require.Equal(t, tc.rel == Applicable, tc.s.CanApply(tc.d))
			got, err := tc.s.Apply(tc.d)
			if tc.rel != Applicable {
				require.ErrorIs(t, err, ErrNotApplicable)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
			require.NoError(t, got.Validate())

			// The same through a state: begin, end and apply agree, and all
			// carry the diff's timestamp (walb-tools testApply).
			d := tc.d
			d.Timestamp = ts(1234)
			st := NewState(tc.s, ts(1))
			require.True(t, st.CanApply(d))
			sa, err := st.BeginApplying([]Diff{d})
			require.NoError(t, err)
			require.True(t, sa.IsApplying)
			require.True(t, sa.CanApply(d))
			sb, err := st.Apply(d)
			require.NoError(t, err)
			sc, err := sa.EndApplying([]Diff{d})
			require.NoError(t, err)
			require.False(t, sb.IsApplying)
			require.False(t, sc.IsApplying)
			require.Equal(t, d.Timestamp, sa.Timestamp)
			require.Equal(t, d.Timestamp, sb.Timestamp)
			require.Equal(t, d.Timestamp, sc.Timestamp)
			require.True(t, sb.Equal(sc))
			require.True(t, sb.Equal(NewState(tc.want, time.Time{})))
		})
	}
}

// system.md §2.4 and walb-tools' merge tests.
func TestMerge(t *testing.T) {
	tests := []struct {
		name   string
		d0, d1 Diff
		want   *Diff
	}{
		{"adjacent", mdf(sn(0), sn(1)), mdf(sn(1), sn(2)), &Diff{SnapB: sn(0), SnapE: sn(2), Mergeable: true}},
		{"overlapping", mdf(sn(0), sn(2)), mdf(sn(1), sn(3)), &Diff{SnapB: sn(0), SnapE: sn(3), Mergeable: true}},
		{"gap", mdf(sn(0), sn(2)), mdf(sn(3), sn(5)), nil},
		{"inside", mdf(sn(0), sn(5)), mdf(sn(1), sn(3)), nil},
		{"covering", mdf(sn(1), sn(3)), mdf(sn(0), sn(5)), nil},
		{"same end", mdf(sn(0), sn(2)), mdf(sn(1), sn(2)), nil},
		{"clean then dirty", mdf(sn(0), sn(1)), mdf(sn(1), sn(2, 3)), &Diff{SnapB: sn(0), SnapE: sn(2, 3), Mergeable: true}},
		{"clean then dirty inside", mdf(sn(0), sn(5)), mdf(sn(1, 2), sn(7, 8)), &Diff{SnapB: sn(0), SnapE: sn(7, 8), Mergeable: true}},
		{"dirty then clean short", mdf(sn(0, 1), sn(5, 10)), mdf(sn(2), sn(7)), &Diff{SnapB: sn(0, 1), SnapE: sn(7, 10), Mergeable: true}},
		{"dirty then clean past", mdf(sn(0, 1), sn(5, 10)), mdf(sn(2), sn(12)), &Diff{SnapB: sn(0, 1), SnapE: sn(12), Mergeable: true}},
		{"dirty end then clean", df(sn(0), sn(1, 2)), mdf(sn(1), sn(2)), &Diff{SnapB: sn(0), SnapE: sn(2)}},
		{"d1 not mergeable", mdf(sn(0), sn(1)), df(sn(1), sn(2)), nil},
		{"d0 not mergeable is fine", df(sn(0), sn(1)), mdf(sn(1), sn(2)), &Diff{SnapB: sn(0), SnapE: sn(2)}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := Merge(tc.d0, tc.d1)
			require.Equal(t, tc.want != nil, CanMerge(tc.d0, tc.d1))
			if tc.want == nil {
				require.ErrorIs(t, err, ErrNotMergeable)
				return
			}
			require.NoError(t, err)
			require.Equal(t, *tc.want, got)
			require.NoError(t, got.Validate())
		})
	}
	// Compared diffs never merge, on either side.
	for _, c := range [][2]bool{{true, false}, {false, true}, {true, true}} {
		d0, d1 := mdf(sn(0), sn(1)), mdf(sn(1), sn(2))
		d0.CompDiff, d1.CompDiff = c[0], c[1]
		require.False(t, CanMerge(d0, d1))
	}
	// The result keeps d0's flag and begin, takes d1's timestamp.
	d0 := Diff{SnapB: sn(0), SnapE: sn(1), Mergeable: false, Timestamp: ts(10), DataSize: 5}
	d1 := Diff{SnapB: sn(1), SnapE: sn(2), Mergeable: true, Timestamp: ts(20), DataSize: 6}
	m, err := Merge(d0, d1)
	require.NoError(t, err)
	require.False(t, m.Mergeable)
	require.Equal(t, ts(20), m.Timestamp)
	require.Zero(t, m.DataSize)

	_, err = MergeAll(nil)
	require.ErrorIs(t, err, ErrEmptyList)
	one, err := MergeAll([]Diff{d0})
	require.NoError(t, err)
	require.Equal(t, d0, one)
	_, err = MergeAll([]Diff{d0, d1, mdf(sn(5), sn(6))})
	require.ErrorIs(t, err, ErrNotMergeable)
	require.True(t, Contains(m, d0))
	require.True(t, Contains(m, d1))
	require.False(t, Contains(d0, m))
}

func TestStateApplying(t *testing.T) {
	// walb-tools metaDiffManager2: <|0,10|> and four diffs to |25|.
	v := []Diff{
		{SnapB: sn(0), SnapE: sn(5), Timestamp: ts(1000)},
		{SnapB: sn(5, 10), SnapE: sn(15, 20), Timestamp: ts(1001)},
		{SnapB: sn(15), SnapE: sn(20), Timestamp: ts(1002)},
		{SnapB: sn(20), SnapE: sn(25), Timestamp: ts(1003)},
	}
	st := NewState(sn(0, 10), time.Time{})
	st1a, err := st.BeginApplying(v)
	require.NoError(t, err)
	st1b, err := st1a.BeginApplying(v)
	require.NoError(t, err)
	st1c := NewApplyingState(sn(0, 10), sn(25), time.Time{})
	require.True(t, st1a.Equal(st1b))
	require.True(t, st1a.Equal(st1c))
	require.Equal(t, ts(1003), st1a.Timestamp)
	st2a, err := st.EndApplying(v)
	require.NoError(t, err)
	st2b, err := st1a.EndApplying(v)
	require.NoError(t, err)
	require.True(t, st2a.Equal(st2b))
	require.True(t, st2a.Equal(NewState(sn(25), time.Time{})))

	// While applying, lists must reach snapE.gidB.
	require.False(t, st1c.CanApplyAll(v[:3]))
	require.True(t, st1c.CanApplyAll(v))
	_, err = st1c.EndApplying(v[:2])
	require.ErrorIs(t, err, ErrNotApplicable)
	_, err = st1c.EndApplying(nil)
	require.ErrorIs(t, err, ErrNotApplicable)
	same, err := st.EndApplying(nil)
	require.NoError(t, err)
	require.Equal(t, st, same)
	require.False(t, st1c.CanApply(v[0]), "a single diff short of snapE")
	require.True(t, st1c.CanApply(Diff{SnapB: sn(0), SnapE: sn(30)}))
	_, err = st.Apply(v[1])
	require.ErrorIs(t, err, ErrNotApplicable)
}

// randDiff returns a random diff applicable to s (walb-tools' randDiff):
// dirty diffs start at s itself, clean ones at s.GidB; the end is past s.GidE.
func randDiff(r *rand.Rand, s Snap, mergeable bool) Diff {
	d := Diff{Mergeable: mergeable, Timestamp: ts(int64(1000 + r.IntN(1000)))}
	eb := s.GidE + 1 + uint64(r.IntN(10))
	if r.IntN(3) == 0 {
		d.SnapB, d.SnapE = s, Snap{eb, eb + 1 + uint64(r.IntN(20))}
	} else {
		d.SnapB, d.SnapE = CleanSnap(s.GidB), CleanSnap(eb)
	}
	d.DataSize = uint64(r.IntN(1000))
	return d
}

func randChain(r *rand.Rand, s Snap, n int, allMergeable bool) []Diff {
	v := make([]Diff, 0, n)
	for range n {
		d := randDiff(r, s, allMergeable || r.IntN(2) == 0)
		v = append(v, d)
		s = applyOne(s, d)
	}
	return v
}

// Property: on random chains, merging any run and applying it gives the same
// snapshot as applying its diffs one by one, and the rest still applies
// (walb-tools applyMerged / diffList).
func TestPropertyMergeThenApply(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for _, start := range []Snap{sn(0), sn(0, 1), sn(0, 5), sn(0, 100)} {
		for range 60 {
			v := randChain(r, start, 10, true)
			require.True(t, start.CanApplyAll(v))
			end, err := start.ApplyAll(v)
			require.NoError(t, err)
			for i := range v {
				si, err := start.ApplyAll(v[:i])
				require.NoError(t, err)
				for j := i + 1; j <= len(v); j++ {
					m, err := MergeAll(v[i:j])
					require.NoError(t, err, "merge %d..%d", i, j)
					require.NoError(t, m.Validate())
					a, err := si.Apply(m)
					require.NoError(t, err)
					b, err := si.ApplyAll(v[i:j])
					require.NoError(t, err)
					require.Equal(t, b, a)
					rest, err := a.ApplyAll(v[j:])
					require.NoError(t, err)
					require.Equal(t, end, rest)
					for _, d := range v[i:j] {
						require.True(t, Contains(m, d))
					}
				}
			}
			// In such a chain only neighbours merge.
			for i := range v {
				for j := range v {
					require.Equal(t, j == i+1, CanMerge(v[i], v[j]), "%d %d", i, j)
				}
			}
		}
	}
}

// Property (walb-tools diffList): a base left applying by any prefix of a
// chain can still be completed after any run of later diffs was merged.
func TestPropertyApplyingStaysCompletable(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	s0 := sn(0, 5)
	v := randChain(r, s0, 10, true)
	for range 500 {
		x1 := r.IntN(len(v) - 2)
		x2 := x1 + 1 + r.IntN(len(v)-x1-1)
		sx, err := s0.ApplyAll(v[:x1])
		require.NoError(t, err)
		st, err := NewState(sx, time.Time{}).BeginApplying(v[x1:x2])
		require.NoError(t, err)
		set, err := NewDiffSet(v...)
		require.NoError(t, err)
		w := append([]Diff(nil), v...)
		for len(w) >= 2 {
			b := r.IntN(len(w) - 1)
			e := b + 2 + r.IntN(len(w)-b-1)
			m, err := MergeAll(w[b:e])
			require.NoError(t, err)
			w = append(append(append([]Diff(nil), w[:b]...), m), w[e:]...)
			require.NoError(t, set.Add(m))
			min := set.MinimumList(st)
			require.True(t, st.CanApplyAll(min), "state %s minimum %v", st, min)
		}
	}
}

func TestMaxProgress(t *testing.T) {
	_, ok := MaxProgress(nil)
	require.False(t, ok)
	v := []Diff{df(sn(0), sn(5)), df(sn(1), sn(5)), df(sn(0), sn(4)), df(sn(1), sn(5, 6))}
	got, ok := MaxProgress(v)
	require.True(t, ok)
	require.Equal(t, v[1], got, "largest E.gidB, then largest B.gidB, then first")
}
