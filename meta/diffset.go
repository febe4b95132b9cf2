package meta

import (
	"fmt"
	"math"
	"math/bits"
	"sort"
	"sync"
	"time"

	"github.com/pkg/errors"
)

// DiffSet is the index of the diffs of one directory (walb-tools'
// MetaDiffManager): an archive volume, a proxy's received/ or one of its
// sendto/<archive>/ queues. Diffs are ordered by SnapB.GidB (keys may repeat)
// and an interval index answers "which diffs span gid g" in O(log n + k), so
// building a chain of n diffs costs O(n log n).
//
// Every query takes the set's lock once, so each answer is a consistent
// snapshot even while other goroutines add and remove diffs. Add and Remove
// cost O(n). A DiffSet must not be copied after first use.
type DiffSet struct {
	mu    sync.RWMutex
	diffs []Diff   // sorted by diffLess; no two Equal
	tree  []uint64 // max SnapE.GidB per node; root at 1, leaves at size+i
	size  int      // number of leaves, a power of two
}

// diffLess is the set's order: snapB, then snapE, gid by gid.
func diffLess(a, b Diff) bool {
	switch {
	case a.SnapB.GidB != b.SnapB.GidB:
		return a.SnapB.GidB < b.SnapB.GidB
	case a.SnapB.GidE != b.SnapB.GidE:
		return a.SnapB.GidE < b.SnapB.GidE
	case a.SnapE.GidB != b.SnapE.GidB:
		return a.SnapE.GidB < b.SnapE.GidB
	}
	return a.SnapE.GidE < b.SnapE.GidE
}

// NewDiffSet returns a set holding ds (see Reset).
func NewDiffSet(ds ...Diff) (*DiffSet, error) {
	s := &DiffSet{}
	if err := s.Reset(ds); err != nil {
		return nil, err
	}
	return s, nil
}

// Reset replaces the content with ds. Every diff must be valid and no two
// Equal; on error the set is left unchanged.
func (s *DiffSet) Reset(ds []Diff) error {
	v := make([]Diff, len(ds))
	copy(v, ds)
	for _, d := range v {
		if err := d.Validate(); err != nil {
			return err
		}
	}
	sort.Slice(v, func(i, j int) bool { return diffLess(v[i], v[j]) })
	for i := 1; i < len(v); i++ {
		if v[i].Equal(v[i-1]) {
			return errors.Wrapf(ErrDuplicate, "%s", v[i])
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.diffs = v
	s.rebuild()
	return nil
}

// rebuild recomputes the interval index after any change to s.diffs.
func (s *DiffSet) rebuild() {
	n := len(s.diffs)
	size := 1
	if n > 1 {
		size = 1 << bits.Len(uint(n-1))
	}
	if cap(s.tree) >= 2*size {
		s.tree = s.tree[:2*size]
		clear(s.tree)
	} else {
		s.tree = make([]uint64, 2*size)
	}
	s.size = size
	for i, d := range s.diffs {
		s.tree[size+i] = d.SnapE.GidB
	}
	for i := size - 1; i >= 1; i-- {
		s.tree[i] = max(s.tree[2*i], s.tree[2*i+1])
	}
}

// spanning calls visit, in set order, with the index of every diff d such
// that d.SnapB.GidB <= g < d.SnapE.GidB. Subtrees whose largest SnapE.GidB is
// <= g are skipped, which keeps the walk to O(log n) per reported diff.
func (s *DiffSet) spanning(g uint64, visit func(i int)) {
	p := sort.Search(len(s.diffs), func(i int) bool { return s.diffs[i].SnapB.GidB > g })
	if p > 0 {
		s.walk(1, 0, s.size, p, g, visit)
	}
}

func (s *DiffSet) walk(node, lo, hi, p int, g uint64, visit func(int)) {
	if lo >= p || s.tree[node] <= g {
		return
	}
	if hi-lo == 1 {
		visit(lo)
		return
	}
	mid := (lo + hi) / 2
	s.walk(2*node, lo, mid, p, g, visit)
	s.walk(2*node+1, mid, hi, p, g, visit)
}

// lowerBound returns the first index with SnapB.GidB >= g.
func (s *DiffSet) lowerBound(g uint64) int {
	return sort.Search(len(s.diffs), func(i int) bool { return s.diffs[i].SnapB.GidB >= g })
}

// find returns the index of the diff Equal to d, or -1.
func (s *DiffSet) find(d Diff) int {
	for i := s.lowerBound(d.SnapB.GidB); i < len(s.diffs) && s.diffs[i].SnapB.GidB == d.SnapB.GidB; i++ {
		if s.diffs[i].Equal(d) {
			return i
		}
	}
	return -1
}

// Add inserts a valid diff. A diff Equal to one already present is refused
// with ErrDuplicate.
func (s *DiffSet) Add(d Diff) error {
	if err := d.Validate(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.find(d) >= 0 {
		return errors.Wrapf(ErrDuplicate, "%s", d)
	}
	i := sort.Search(len(s.diffs), func(i int) bool { return diffLess(d, s.diffs[i]) })
	s.diffs = append(s.diffs, Diff{})
	copy(s.diffs[i+1:], s.diffs[i:])
	s.diffs[i] = d
	s.rebuild()
	return nil
}

// Remove deletes the diff Equal to d and reports whether there was one.
func (s *DiffSet) Remove(d Diff) bool { return s.RemoveAll([]Diff{d}) == 1 }

// RemoveAll deletes the diffs Equal to those of ds and returns how many were
// found.
func (s *DiffSet) RemoveAll(ds []Diff) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, d := range ds {
		if i := s.find(d); i >= 0 {
			s.diffs = append(s.diffs[:i], s.diffs[i+1:]...)
			n++
		}
	}
	if n > 0 {
		s.rebuild()
	}
	return n
}

// removeIf deletes the diffs matching pred and returns them in set order.
// The caller holds the write lock.
func (s *DiffSet) removeIf(pred func(i int, d Diff) bool) []Diff {
	var gone []Diff
	kept := s.diffs[:0]
	for i, d := range s.diffs {
		if pred(i, d) {
			gone = append(gone, d)
		} else {
			kept = append(kept, d)
		}
	}
	if len(gone) > 0 {
		clear(s.diffs[len(kept):])
		s.diffs = kept
		s.rebuild()
	}
	return gone
}

// Len returns the number of diffs.
func (s *DiffSet) Len() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.diffs)
}

// All returns every diff in set order (by snapB, then snapE).
func (s *DiffSet) All() []Diff {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return append([]Diff(nil), s.diffs...)
}

// Range returns the diffs with g0 <= SnapB.GidB < g1 in set order
// (`get diff VOL G0 G1`).
func (s *DiffSet) Range(g0, g1 uint64) []Diff {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var v []Diff
	for i := s.lowerBound(g0); i < len(s.diffs) && s.diffs[i].SnapB.GidB < g1; i++ {
		v = append(v, s.diffs[i])
	}
	return v
}

// Stats returns the number and total DataSize of the diffs with
// g0 <= SnapB.GidB < g1 (`num-diff`, `total-diff-size`).
func (s *DiffSet) Stats(g0, g1 uint64) (n int, bytes uint64) {
	for _, d := range s.Range(g0, g1) {
		n++
		bytes = addSat(bytes, d.DataSize)
	}
	return n, bytes
}

// Get returns the stored diff Equal to d (with its flags, timestamp and size).
func (s *DiffSet) Get(d Diff) (Diff, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if i := s.find(d); i >= 0 {
		return s.diffs[i], true
	}
	return Diff{}, false
}

// Exists reports whether a diff Equal to d is present (`exists-diff`).
func (s *DiffSet) Exists(d Diff) bool {
	_, ok := s.Get(d)
	return ok
}

// MinMaxGid returns the smallest SnapB.GidB and the largest SnapE.GidB;
// ok is false for an empty set.
func (s *DiffSet) MinMaxGid() (minGid, maxGid uint64, ok bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if len(s.diffs) == 0 {
		return 0, 0, false
	}
	return s.diffs[0].SnapB.GidB, s.tree[1], true
}

// Latest returns the diff with the largest SnapB.GidB (the max-progress one
// among those): the newest diff of a proxy queue (`latest-snap`).
func (s *DiffSet) Latest() (Diff, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	n := len(s.diffs)
	if n == 0 {
		return Diff{}, false
	}
	i := s.lowerBound(s.diffs[n-1].SnapB.GidB)
	return MaxProgress(s.diffs[i:])
}

// DiffChange is one diff whose flags changed: rename the file of Old to the
// name of New.
type DiffChange struct {
	Old, New Diff
}

// SetMergeable sets Mergeable on every diff that starts at gid (SnapB.GidB ==
// gid). disable-snapshot sets it (the snapshot becomes implicit), enable-snapshot
// clears it (explicit). It returns the diffs that changed; ErrNoSnapshot if no
// diff starts at gid.
func (s *DiffSet) SetMergeable(gid uint64, mergeable bool) ([]DiffChange, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := s.lowerBound(gid)
	if i == len(s.diffs) || s.diffs[i].SnapB.GidB != gid {
		return nil, errors.Wrapf(ErrNoSnapshot, "gid %d", gid)
	}
	var ch []DiffChange
	for ; i < len(s.diffs) && s.diffs[i].SnapB.GidB == gid; i++ {
		if s.diffs[i].Mergeable != mergeable {
			old := s.diffs[i]
			s.diffs[i].Mergeable = mergeable
			ch = append(ch, DiffChange{Old: old, New: s.diffs[i]})
		}
	}
	return ch, nil
}

// nextApplicable returns the max-progress diff applicable to snap.
func (s *DiffSet) nextApplicable(snap Snap) (Diff, bool) {
	var best Diff
	found := false
	s.spanning(snap.GidB, func(i int) {
		d := s.diffs[i]
		if snap.CanApply(d) && (!found || progressBefore(best, d)) {
			best, found = d, true
		}
	})
	return best, found
}

// chain builds the applicable chain from snap: repeatedly the max-progress
// applicable diff. keep, if not nil, sees each diff with the snapshot it
// reaches; the chain ends before the first diff it refuses.
func (s *DiffSet) chain(snap Snap, keep func(d Diff, reached Snap) bool) []Diff {
	var v []Diff
	for {
		d, ok := s.nextApplicable(snap)
		if !ok {
			return v
		}
		next := applyOne(snap, d)
		if keep != nil && !keep(d, next) {
			return v
		}
		v = append(v, d)
		snap = next
	}
}

// Chain returns the applicable chain from snap, cut before the first diff
// keep refuses (keep may be nil).
func (s *DiffSet) Chain(snap Snap, keep func(d Diff, reached Snap) bool) []Diff {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.chain(snap, keep)
}

// ChainToGid returns the chain from snap cut where the reached gidB would
// exceed maxGid (`applicable-diff VOL MAXGID`).
func (s *DiffSet) ChainToGid(snap Snap, maxGid uint64) []Diff {
	return s.Chain(snap, func(_ Diff, r Snap) bool { return r.GidB <= maxGid })
}

// ChainToTime returns the chain from snap cut at the first diff stamped
// after maxTs.
func (s *DiffSet) ChainToTime(snap Snap, maxTs time.Time) []Diff {
	lim := unixOf(maxTs)
	return s.Chain(snap, func(d Diff, _ Snap) bool { return unixOf(d.Timestamp) <= lim })
}

// ApplicableMergeable returns the longest prefix of the chain from snap that
// merges into one diff: what diff-repl sends.
func (s *DiffSet) ApplicableMergeable(snap Snap) []Diff {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return mergeablePrefix(s.chain(snap, nil))
}

func mergeablePrefix(v []Diff) []Diff {
	if len(v) == 0 {
		return nil
	}
	m := v[0]
	for i := 1; i < len(v); i++ {
		if !CanMerge(m, v[i]) {
			return v[:i]
		}
		m = mergeOne(m, v[i])
	}
	return v
}

// minimumList is the part of the chain from st.SnapB an applying state needs
// before it is usable: up to and including the diff that reaches
// st.SnapE.GidB. When a diff boundary lies exactly there (always, unless a
// later merge spans it) this is walb-tools' "cut where the reached gid would
// exceed snapE.gidB"; otherwise the spanning diff completes the state where
// walb-tools would be stuck.
func (s *DiffSet) minimumList(st State) []Diff {
	if !st.IsApplying {
		return nil
	}
	reached := false
	return s.chain(st.SnapB, func(_ Diff, r Snap) bool {
		if reached {
			return false
		}
		reached = r.GidB >= st.SnapE.GidB
		return true
	})
}

// MinimumList returns the diffs an applying base must (re)apply together
// before it is usable again; nil when st is not applying. If the diffs that
// complete st are missing, the whole (short) chain is returned and
// st.CanApplyAll reports false for it.
func (s *DiffSet) MinimumList(st State) []Diff {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.minimumList(st)
}

// LatestSnap returns the snapshot the whole chain from the base reaches.
func (s *DiffSet) LatestSnap(st State) Snap {
	s.mu.RLock()
	defer s.mu.RUnlock()
	snap := st.SnapB
	for _, d := range s.chain(st.SnapB, nil) {
		snap = applyOne(snap, d)
	}
	return snap
}

// LatestState returns the base with the whole chain applied. It fails with
// ErrNotApplicable if st is applying and the chain cannot complete it.
func (s *DiffSet) LatestState(st State) (State, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return st.EndApplying(s.chain(st.SnapB, nil))
}

// ApplyList returns the diffs `apply VOL gid` applies: the chain from the
// base cut where the reached gid would exceed gid, but never shorter than the
// minimum list. Empty means there is nothing to apply. (walb-tools ignores the
// minimum list when the cut chain is empty; applying it then is harmless and
// finishes an interrupted apply.)
func (s *DiffSet) ApplyList(st State, gid uint64) []Diff {
	s.mu.RLock()
	defer s.mu.RUnlock()
	a := s.chain(st.SnapB, func(_ Diff, r Snap) bool { return r.GidB <= gid })
	if m := s.minimumList(st); len(m) > len(a) {
		return m
	}
	return a
}

// SyncList returns the diffs that take the base exactly to target: the chain
// cut at target.GidB, never shorter than the minimum list. ok is false when
// no such list exists (it is then a "timing problem" for replication). An
// empty list with ok means the base already is target.
func (s *DiffSet) SyncList(st State, target Snap) ([]Diff, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	a := s.chain(st.SnapB, func(_ Diff, r Snap) bool { return r.GidB <= target.GidB })
	if len(s.minimumList(st)) > len(a) {
		return nil, false
	}
	reached, err := st.reach(a)
	if err != nil || reached != target {
		return nil, false
	}
	return a, true
}

// RestoreList returns the diffs that materialize the clean snapshot |gid|
// from the base; ok is false if gid is not restorable. An empty list with ok
// means the base itself is |gid|.
func (s *DiffSet) RestoreList(st State, gid uint64) ([]Diff, bool) {
	return s.SyncList(st, CleanSnap(gid))
}

// IsRestorable reports whether |gid| can be materialized from the base.
func (s *DiffSet) IsRestorable(st State, gid uint64) bool {
	_, ok := s.RestoreList(st, gid)
	return ok
}

// RestorePoint is one entry of the restorable list: a clean, non-applying
// state and whether its snapshot is explicit.
type RestorePoint struct {
	State    State
	Explicit bool
}

// Gid returns the clean snapshot's gid.
func (p RestorePoint) Gid() uint64 { return p.State.SnapB.GidB }

// String returns the line `get restorable` prints: "GID pretty-ts 0|1".
func (p RestorePoint) String() string {
	e := 0
	if p.Explicit {
		e = 1
	}
	return fmt.Sprintf("%d %s %d", p.Gid(), FormatPrettyTime(p.State.Timestamp), e)
}

// RestorePoints returns the restorable list (`get restorable VOL [all]`):
// the base completed by its minimum list if clean (listed with Explicit false,
// as walb-tools does), then each clean snapshot along the rest of the chain
// that is explicit (the chain's end, or followed by a non-mergeable diff), or
// every clean one when all is set. A base whose minimum list is missing has
// no restorable snapshot.
func (s *DiffSet) RestorePoints(st State, all bool) []RestorePoint {
	s.mu.RLock()
	defer s.mu.RUnlock()
	a := s.chain(st.SnapB, nil)
	m := len(s.minimumList(st))
	cur, err := st.EndApplying(a[:m])
	if err != nil {
		return nil
	}
	var out []RestorePoint
	if cur.SnapB.IsClean() {
		out = append(out, RestorePoint{State: cur})
	}
	for i := m; i < len(a); i++ {
		cur = NewState(applyOne(cur.SnapB, a[i]), a[i].Timestamp)
		explicit := i+1 == len(a) || !a[i+1].Mergeable
		if cur.SnapB.IsClean() && (all || explicit) {
			out = append(out, RestorePoint{State: cur, Explicit: explicit})
		}
	}
	return out
}

// CleanSnapshots returns the gids of every clean snapshot reachable from the
// base, in order.
func (s *DiffSet) CleanSnapshots(st State) []uint64 {
	var v []uint64
	for _, p := range s.RestorePoints(st, true) {
		v = append(v, p.Gid())
	}
	return v
}

// OldestCleanState returns the first clean state reachable from the base
// (after its minimum list). ErrNoCleanSnapshot if there is none.
func (s *DiffSet) OldestCleanState(st State) (State, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	cur, err := st.EndApplying(s.minimumList(st))
	if err != nil {
		return State{}, errors.Wrapf(ErrNoCleanSnapshot, "base %s cannot be completed: %v", st, err)
	}
	for !cur.SnapB.IsClean() {
		d, ok := s.nextApplicable(cur.SnapB)
		if !ok {
			return State{}, errors.Wrapf(ErrNoCleanSnapshot, "from %s", st)
		}
		cur = NewState(applyOne(cur.SnapB, d), d.Timestamp)
	}
	return cur, nil
}

// MergeableList returns the mergeable list from gid: the max-progress diff
// among those with the smallest SnapB.GidB >= gid, then repeatedly the
// max-progress diff that can merge onto the running merge. keep, if not nil,
// ends the list before the first candidate it refuses.
func (s *DiffSet) MergeableList(gid uint64, keep func(d Diff) bool) []Diff {
	s.mu.RLock()
	defer s.mu.RUnlock()
	i := s.lowerBound(gid)
	if i == len(s.diffs) {
		return nil
	}
	j := s.lowerBound(s.diffs[i].SnapB.GidB + 1)
	if s.diffs[i].SnapB.GidB == math.MaxUint64 {
		j = len(s.diffs)
	}
	first, _ := MaxProgress(s.diffs[i:j])
	v := []Diff{first}
	m := first
	for {
		var best Diff
		found := false
		s.spanning(m.SnapE.GidB, func(i int) {
			d := s.diffs[i]
			if CanMerge(m, d) && (!found || progressBefore(best, d)) {
				best, found = d, true
			}
		})
		if !found || (keep != nil && !keep(best)) {
			return v
		}
		v = append(v, best)
		m = mergeOne(m, best)
	}
}

// Gc removes every diff that is not on the chain from snap (normally the
// base's SnapB) and returns them: sources left by an interrupted merge,
// diffs made redundant by a replicated merged diff, dead branches.
func (s *DiffSet) Gc(snap Snap) []Diff {
	s.mu.Lock()
	defer s.mu.Unlock()
	keep := make(map[[4]uint64]bool)
	for _, d := range s.chain(snap, nil) {
		keep[rangeKey(d)] = true
	}
	return s.removeIf(func(_ int, d Diff) bool { return !keep[rangeKey(d)] })
}

func rangeKey(d Diff) [4]uint64 {
	return [4]uint64{d.SnapB.GidB, d.SnapB.GidE, d.SnapE.GidB, d.SnapE.GidE}
}

// GcRange removes the diffs lying inside [gidB, gidE] except the one that
// spans exactly [gidB, gidE], and returns them. It is the cheap gc after a
// diff-repl delivered that spanning diff.
func (s *DiffSet) GcRange(gidB, gidE uint64) []Diff {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.removeIf(func(_ int, d Diff) bool {
		return gidB <= d.SnapB.GidB && d.SnapE.GidB <= gidE &&
			!(d.SnapB.GidB == gidB && d.SnapE.GidB == gidE)
	})
}

// EraseBeforeGid removes the diffs with SnapE.GidB <= gid and returns them:
// after an apply reached gid they can no longer be applied.
func (s *DiffSet) EraseBeforeGid(gid uint64) []Diff {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.removeIf(func(_ int, d Diff) bool { return d.SnapE.GidB <= gid })
}

// PickCold chooses the cold snapshot (thin mode, system.md §2.9) to start
// from for target: the newest gid in colds with base.SnapB.GidB < gid <=
// target. Restore starts from it instead of the base, and an apply to target
// first turns it into the base (cold-to-base; only when the base is not
// applying). ok is false when no cold snapshot qualifies.
func PickCold(colds []uint64, base State, target uint64) (gid uint64, ok bool) {
	for _, c := range colds {
		if c > base.SnapB.GidB && c <= target && (!ok || c > gid) {
			gid, ok = c, true
		}
	}
	return gid, ok
}

// addSat adds without wrapping around.
func addSat(a, b uint64) uint64 {
	if s := a + b; s >= a {
		return s
	}
	return math.MaxUint64
}

// TruncateDiffs applies the merge limits of system.md §2.10 to a mergeable
// list: the first diff is always kept; later ones while the running total of
// DataSize stays <= maxBytes; then at most maxFiles diffs (0 = no limit).
// It returns a prefix of ds.
func TruncateDiffs(ds []Diff, maxBytes uint64, maxFiles int) []Diff {
	if len(ds) == 0 {
		return nil
	}
	total := ds[0].DataSize
	n := 1
	for ; n < len(ds); n++ {
		t := addSat(total, ds[n].DataSize)
		if t > maxBytes {
			break
		}
		total = t
	}
	if maxFiles > 0 && n > maxFiles {
		n = maxFiles
	}
	return ds[:n]
}

// ProxySendList returns what a proxy sends to an archive in one transfer:
// the mergeable list from the oldest diff, truncated to maxBytes (-wd) and
// maxFiles (-wn). The proxy must further cut it where the wdiff header UUID
// changes, which only the files know.
func (s *DiffSet) ProxySendList(maxBytes uint64, maxFiles int) []Diff {
	return TruncateDiffs(s.MergeableList(0, nil), maxBytes, maxFiles)
}

// MergeListBySize returns the diffs `merge VOL gidB size MB` merges: the
// mergeable list from gidB with a total input of at most maxBytes (the first
// diff always counts). ErrTooFewDiffs if fewer than two qualify.
func (s *DiffSet) MergeListBySize(gidB, maxBytes uint64) ([]Diff, error) {
	return atLeastTwo(TruncateDiffs(s.MergeableList(gidB, nil), maxBytes, 0), gidB)
}

// MergeListByGid returns the diffs `merge VOL gidB gid gidE` merges: the
// mergeable list from gidB, stopping at any diff whose SnapB.GidB >= gidE.
// ErrTooFewDiffs if fewer than two qualify.
func (s *DiffSet) MergeListByGid(gidB, gidE uint64) ([]Diff, error) {
	v := s.MergeableList(gidB, nil)
	for i, d := range v {
		if d.SnapB.GidB >= gidE {
			v = v[:i]
			break
		}
	}
	return atLeastTwo(v, gidB)
}

func atLeastTwo(v []Diff, gid uint64) ([]Diff, error) {
	if len(v) < 2 {
		return nil, errors.Wrapf(ErrTooFewDiffs, "from gid %d: %d diff(s)", gid, len(v))
	}
	return v, nil
}

// ReplSendList returns what diff-repl sends to a server at snapshot from:
// the applicable, mergeable prefix of the chain from it, truncated to
// maxBytes (maxWdiffMergeSize) and maxFiles (the archive's -wn).
func (s *DiffSet) ReplSendList(from Snap, maxBytes uint64, maxFiles int) []Diff {
	return TruncateDiffs(s.ApplicableMergeable(from), maxBytes, maxFiles)
}
