package meta

import (
	"github.com/pkg/errors"
)

// Relation is how a diff relates to a snapshot (system.md §2.3).
type Relation int

// Relations, named as the archive's wdiff-transfer replies.
const (
	// Applicable: the diff can be applied to the snapshot.
	Applicable Relation = iota
	// TooOld: the diff ends at or before the snapshot's gidB.
	TooOld
	// TooNew: the diff starts after the snapshot's gidB.
	TooNew
	// NotApplicable: a compared diff that does not start exactly at the
	// snapshot's gidB.
	NotApplicable
)

// String returns too-old-diff, too-new-diff, applicable-diff or
// not-applicable-diff.
func (r Relation) String() string {
	switch r {
	case Applicable:
		return "applicable-diff"
	case TooOld:
		return "too-old-diff"
	case TooNew:
		return "too-new-diff"
	case NotApplicable:
		return "not-applicable-diff"
	}
	return "bad-relation"
}

// RelationOf classifies d against s. A compared diff applies only where it
// starts exactly; any other diff applies when s.GidB lies in
// [d.SnapB.GidB, d.SnapE.GidB).
func RelationOf(s Snap, d Diff) Relation {
	if d.CompDiff {
		if d.SnapB.GidB == s.GidB {
			return Applicable
		}
		return NotApplicable
	}
	if d.SnapB.GidB > s.GidB {
		return TooNew
	}
	if d.SnapE.GidB <= s.GidB {
		return TooOld
	}
	return Applicable
}

// CanApply reports whether d is applicable to s.
func (s Snap) CanApply(d Diff) bool { return RelationOf(s, d) == Applicable }

// applyOne is apply without the relation check. A clean diff brings gidB to
// d.SnapE.GidB and keeps s's dirty end if it is further; this is how a dirty
// image becomes clean once log diffs pass its gidE. A dirty diff carries its
// own end snapshot.
func applyOne(s Snap, d Diff) Snap {
	if d.IsClean() {
		return Snap{d.SnapE.GidB, max(d.SnapE.GidB, s.GidE)}
	}
	return d.SnapE
}

// Apply returns the snapshot reached by applying d to s.
func (s Snap) Apply(d Diff) (Snap, error) {
	if r := RelationOf(s, d); r != Applicable {
		return s, errors.Wrapf(ErrNotApplicable, "%s to %s: %s", d, s, r)
	}
	return applyOne(s, d), nil
}

// CanApplyAll reports whether ds applies to s left to right.
func (s Snap) CanApplyAll(ds []Diff) bool {
	_, err := s.ApplyAll(ds)
	return err == nil
}

// ApplyAll applies ds left to right; every step must be applicable.
func (s Snap) ApplyAll(ds []Diff) (Snap, error) {
	for i, d := range ds {
		n, err := s.Apply(d)
		if err != nil {
			return s, errors.Wrapf(err, "diff #%d", i)
		}
		s = n
	}
	return s, nil
}

// CanMerge reports whether d1 can be merged onto d0: d1 is mergeable, neither
// is a compared diff, and d0.B.gidB <= d1.B.gidB <= d0.E.gidB < d1.E.gidB.
func CanMerge(d0, d1 Diff) bool {
	if !d1.Mergeable || d0.CompDiff || d1.CompDiff {
		return false
	}
	return d0.SnapB.GidB <= d1.SnapB.GidB &&
		d1.SnapB.GidB <= d0.SnapE.GidB &&
		d0.SnapE.GidB < d1.SnapE.GidB
}

// mergeOne is Merge without the check. The result keeps d0's begin and
// mergeability and takes d1's timestamp; its end is computed like apply.
func mergeOne(d0, d1 Diff) Diff {
	return Diff{
		SnapB:     d0.SnapB,
		SnapE:     applyOne(d0.SnapE, d1),
		Mergeable: d0.Mergeable,
		Timestamp: d1.Timestamp,
		DataSize:  0,
	}
}

// Merge returns the metadata of d0 followed by d1 merged into one diff. The
// data size of the result is unknown (0) until its file is written.
func Merge(d0, d1 Diff) (Diff, error) {
	if !CanMerge(d0, d1) {
		return Diff{}, errors.Wrapf(ErrNotMergeable, "%s and %s", d0, d1)
	}
	return mergeOne(d0, d1), nil
}

// CanMergeAll reports whether ds (at least one diff) merges left to right.
func CanMergeAll(ds []Diff) bool {
	_, err := MergeAll(ds)
	return err == nil
}

// MergeAll merges ds left to right into one diff.
func MergeAll(ds []Diff) (Diff, error) {
	if len(ds) == 0 {
		return Diff{}, ErrEmptyList
	}
	m := ds[0]
	for i, d := range ds[1:] {
		if !CanMerge(m, d) {
			return Diff{}, errors.Wrapf(ErrNotMergeable, "%s (merged so far) and diff #%d %s", m, i+1, d)
		}
		m = mergeOne(m, d)
	}
	return m, nil
}

// Contains reports whether outer covers d's whole gid range, so d becomes
// redundant once outer exists.
func Contains(outer, d Diff) bool {
	return outer.SnapB.GidB <= d.SnapB.GidB && d.SnapE.GidB <= outer.SnapE.GidB
}

// progressBefore orders candidates for the max-progress pick: larger
// SnapE.GidB wins, then larger SnapB.GidB.
func progressBefore(a, b Diff) bool {
	if a.SnapE.GidB != b.SnapE.GidB {
		return a.SnapE.GidB < b.SnapE.GidB
	}
	return a.SnapB.GidB < b.SnapB.GidB
}

// MaxProgress returns the diff with the largest SnapE.GidB, ties broken by
// the larger SnapB.GidB and then by the earlier position in ds.
func MaxProgress(ds []Diff) (Diff, bool) {
	if len(ds) == 0 {
		return Diff{}, false
	}
	best := ds[0]
	for _, d := range ds[1:] {
		if progressBefore(best, d) {
			best = d
		}
	}
	return best, true
}

// CanApply reports whether d applies to the base: it must apply to SnapB and,
// while applying, reach at least SnapE.GidB.
func (st State) CanApply(d Diff) bool {
	if !st.SnapB.CanApply(d) {
		return false
	}
	return !st.IsApplying || st.SnapE.GidB <= d.SnapE.GidB
}

// reach applies ds to SnapB and checks that an applying state is completed.
func (st State) reach(ds []Diff) (Snap, error) {
	s, err := st.SnapB.ApplyAll(ds)
	if err != nil {
		return s, err
	}
	if st.IsApplying && s.GidB < st.SnapE.GidB {
		return s, errors.Wrapf(ErrNotApplicable, "list reaches %s, short of applying target %s", s, st.SnapE)
	}
	return s, nil
}

// CanApplyAll reports whether ds applies to SnapB and, while applying, the
// reached gidB is at least SnapE.GidB.
func (st State) CanApplyAll(ds []Diff) bool {
	_, err := st.reach(ds)
	return err == nil
}

// BeginApplying returns <SnapB --> apply(SnapB, ds)> stamped with the last
// diff's timestamp: the state persisted before the data of ds is written.
// An empty list leaves the state unchanged.
func (st State) BeginApplying(ds []Diff) (State, error) {
	s, err := st.reach(ds)
	if err != nil {
		return st, err
	}
	if len(ds) == 0 {
		return st, nil
	}
	return NewApplyingState(st.SnapB, s, ds[len(ds)-1].Timestamp), nil
}

// EndApplying returns <apply(SnapB, ds)> stamped with the last diff's
// timestamp: the state persisted once the data of ds is durable. An empty
// list leaves the state unchanged.
func (st State) EndApplying(ds []Diff) (State, error) {
	s, err := st.reach(ds)
	if err != nil {
		return st, err
	}
	if len(ds) == 0 {
		return st, nil
	}
	return NewState(s, ds[len(ds)-1].Timestamp), nil
}

// Apply is EndApplying: the state after ds has been applied.
func (st State) Apply(ds ...Diff) (State, error) { return st.EndApplying(ds) }
