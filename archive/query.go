package archive

import (
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/server"
)

// The queries behind `get TARGET` and `status` (system.md §5.10). They
// read a consistent snapshot of one volume and change nothing.

// Diffs returns the diffs with g0 <= B.gidB < g1 (`get diff VOL [G0 [G1]]`;
// pass 0 and math.MaxUint64 for all).
func (e *Engine) Diffs(vol string, g0, g1 uint64) ([]meta.Diff, error) {
	v, err := e.volume(vol)
	if err != nil {
		return nil, err
	}
	return v.diffs.Range(g0, g1), nil
}

// DiffStats returns the number and total size of the diffs with g0 <=
// B.gidB < g1 (`get num-diff`, `get total-diff-size`).
func (e *Engine) DiffStats(vol string, g0, g1 uint64) (n int, bytes uint64, err error) {
	v, err := e.volume(vol)
	if err != nil {
		return 0, 0, err
	}
	n, bytes = v.diffs.Stats(g0, g1)
	return n, bytes, nil
}

// ApplicableDiffs returns the chain from the base, cut where the reached
// gid would pass maxGid (`get applicable-diff VOL [MAXGID]`).
func (e *Engine) ApplicableDiffs(vol string, maxGid uint64) ([]meta.Diff, error) {
	v, err := e.volume(vol)
	if err != nil {
		return nil, err
	}
	return v.diffs.ChainToGid(v.getBase().SnapB, maxGid), nil
}

// ExistsDiff reports whether a diff |b0,b1|-->|e0,e1| is stored
// (`get exists-diff`).
func (e *Engine) ExistsDiff(vol string, d meta.Diff) (bool, error) {
	v, err := e.volume(vol)
	if err != nil {
		return false, err
	}
	return v.diffs.Exists(d), nil
}

// Restorable returns the restorable list (`get restorable VOL [all]`):
// empty unless the volume is active.
func (e *Engine) Restorable(vol string, all bool) ([]meta.RestorePoint, error) {
	v, err := e.volume(vol)
	if err != nil {
		if server.ValidateVolumeName(vol) == nil {
			return nil, nil
		}
		return nil, err
	}
	if !slices.Contains(ActiveStates, e.vols.State(vol)) {
		return nil, nil
	}
	return v.diffs.RestorePoints(v.getBase(), all), nil
}

// MetaState returns the base with the chain applied, cut at gid
// (math.MaxUint64: the whole chain); with applying, in the applying form
// <base-->reached> (`get meta-state VOL 0|1 [GID]`).
func (e *Engine) MetaState(vol string, applying bool, gid uint64) (meta.State, error) {
	v, err := e.volume(vol)
	if err != nil {
		return meta.State{}, err
	}
	base := v.getBase()
	var chain []meta.Diff
	if gid == math.MaxUint64 {
		chain = v.diffs.Chain(base.SnapB, nil)
	} else {
		chain = v.diffs.ChainToGid(base.SnapB, gid)
	}
	if applying {
		return base.BeginApplying(chain)
	}
	return base.EndApplying(chain)
}

// MetaSnap is MetaState's snapshot (`get meta-snap VOL [GID]`).
func (e *Engine) MetaSnap(vol string, gid uint64) (meta.Snap, error) {
	st, err := e.MetaState(vol, false, gid)
	return st.SnapB, err
}

// LatestSnapshot is the newest snapshot an archive volume reaches.
type LatestSnapshot struct {
	Vol       string
	Gid       uint64
	Timestamp time.Time
}

// String returns the `get latest-snap` line.
func (l LatestSnapshot) String() string {
	return fmt.Sprintf("name:%s\tkind:archive\tgid:%d\ttimestamp:%s", l.Vol, l.Gid, meta.FormatPrettyTime(l.Timestamp))
}

// Latest returns the snapshot the whole chain reaches from the base, for
// an active or Stopped volume (`get latest-snap`); ok is false otherwise.
func (e *Engine) Latest(vol string) (LatestSnapshot, bool) {
	v, err := e.volume(vol)
	if err != nil || !slices.Contains(ActiveOrStoppedStates, e.vols.State(vol)) {
		return LatestSnapshot{}, false
	}
	st, err := v.diffs.LatestState(v.getBase())
	if err != nil {
		return LatestSnapshot{}, false
	}
	return LatestSnapshot{Vol: vol, Gid: st.SnapB.GidB, Timestamp: st.Timestamp}, true
}

// activeVolume returns v if vol is active (uuid, archive-uuid and base
// are only answered then, as in walb-tools).
func (e *Engine) activeVolume(vol string) (*volume, error) {
	v, err := e.volume(vol)
	if err != nil {
		return nil, err
	}
	if st := e.vols.State(vol); !slices.Contains(ActiveStates, st) {
		return nil, errorf(ErrWrongState, "volume %s is %s", vol, st)
	}
	return v, nil
}

// UUID returns the source device's uuid (`get uuid`; active only).
func (e *Engine) UUID(vol string) (meta.UUID, error) {
	v, err := e.activeVolume(vol)
	if err != nil {
		return meta.UUID{}, err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.uuid, nil
}

// ArchiveUUID returns the lineage identity made by the last full backup
// (`get archive-uuid`; active only).
func (e *Engine) ArchiveUUID(vol string) (meta.UUID, error) {
	v, err := e.activeVolume(vol)
	if err != nil {
		return meta.UUID{}, err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.archiveUUID, nil
}

// Base returns the base state (`get base`; active only).
func (e *Engine) Base(vol string) (meta.State, error) {
	v, err := e.activeVolume(vol)
	if err != nil {
		return meta.State{}, err
	}
	return v.getBase(), nil
}

// BaseAll returns `get base-all`: one "name:V\tmetastate:S" line per
// volume with a directory.
func (e *Engine) BaseAll() []string {
	var out []string
	for _, name := range e.VolumeNames() {
		if v, err := e.volume(name); err == nil {
			out = append(out, fmt.Sprintf("name:%s\tmetastate:%s", name, v.getBase().StringTs()))
		}
	}
	return out
}

// ExistsBaseImage reports whether vol has a base image.
func (e *Engine) ExistsBaseImage(vol string) (bool, error) {
	v, err := e.volume(vol)
	if err != nil {
		return false, err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.sizeLB > 0, nil
}

// VolSize returns the base image's size in blocks (`get vol-size`).
func (e *Engine) VolSize(vol string) (uint64, error) {
	v, err := e.volume(vol)
	if err != nil {
		return 0, err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.sizeLB == 0 {
		return 0, errorf(ErrNoBaseImage, "vol-size %s", vol)
	}
	return v.sizeLB, nil
}

// Progress returns the blocks done by a running full sync (0 when idle).
func (e *Engine) Progress(vol string) (uint64, error) {
	v, err := e.volume(vol)
	if err != nil {
		return 0, err
	}
	return v.progressLB.Load(), nil
}

// NumAction returns the running instances of action on vol
// (`get num-action VOL ACTION`).
func (e *Engine) NumAction(vol, action string) (int, error) {
	if !slices.Contains(AllActions, action) {
		return 0, errorf(ErrBadArgs, "no such action %q", action)
	}
	if _, err := e.volume(vol); err != nil {
		return 0, err
	}
	return e.vols.NumAction(vol, action), nil
}

// AllActionsLines returns `get all-actions`: per active volume,
// "VOL Merge n ts Apply n ts ..." with the last start time or ---.
func (e *Engine) AllActionsLines() []string {
	var out []string
	for _, vol := range e.VolumeNames() {
		if !slices.Contains(ActiveStates, e.vols.State(vol)) {
			continue
		}
		acts := e.vols.Actions(vol)
		var b strings.Builder
		b.WriteString(vol)
		for _, a := range AllActions {
			st := acts[a]
			fmt.Fprintf(&b, " %s %d %s", a, st.Running, meta.FormatPrettyTime(st.LastStart.UTC().Truncate(time.Second)))
		}
		out = append(out, b.String())
	}
	return out
}

// VolumeStatus is `status VOL`.
type VolumeStatus struct {
	Vol                   string
	State                 string
	StopState             server.StopState
	Actions               map[string]server.ActionStat
	LastSyncTime          time.Time
	LastWdiffReceivedTime time.Time
	ProgressLB            uint64
	SizeLB                uint64
	UUID, ArchiveUUID     meta.UUID
	Base                  meta.State
	Latest                meta.State
	NumRestored           int
	NumRestorable         int
	NumRestorableAll      int
	NumDiff               int
	WdiffTotalSize        uint64
}

// Status returns the volume's status.
func (e *Engine) Status(vol string) (VolumeStatus, error) {
	v, err := e.volume(vol)
	if err != nil {
		return VolumeStatus{}, err
	}
	s := VolumeStatus{
		Vol:        vol,
		State:      e.vols.State(vol),
		StopState:  e.vols.StopState(vol),
		Actions:    e.vols.Actions(vol),
		ProgressLB: v.progressLB.Load(),
	}
	v.mu.Lock()
	s.LastSyncTime, s.LastWdiffReceivedTime = v.lastSync, v.lastWdiffRecv
	s.SizeLB = v.sizeLB
	s.UUID, s.ArchiveUUID = v.uuid, v.archiveUUID
	s.Base = v.base
	s.NumRestored = len(v.restored)
	v.mu.Unlock()
	s.Latest, _ = v.diffs.LatestState(s.Base)
	if slices.Contains(ActiveStates, s.State) {
		s.NumRestorable = len(v.diffs.RestorePoints(s.Base, false))
		s.NumRestorableAll = len(v.diffs.RestorePoints(s.Base, true))
	}
	s.NumDiff, s.WdiffTotalSize = v.diffs.Stats(0, math.MaxUint64)
	return s, nil
}

// Lines formats the status as walb-tools' `status VOL` does, one
// "key value" per line.
func (s VolumeStatus) Lines() []string {
	out := []string{
		"hostType archive",
		"volId " + s.Vol,
		"state " + s.State,
	}
	var acts []string
	for _, a := range AllActions {
		acts = append(acts, fmt.Sprintf("%s %d", a, s.Actions[a].Running))
	}
	out = append(out,
		"action "+strings.Join(acts, " "),
		"stopState "+s.StopState.String(),
		"lastSyncTime "+meta.FormatPrettyTime(s.LastSyncTime.UTC().Truncate(time.Second)),
		"lastWdiffReceivedTime "+meta.FormatPrettyTime(s.LastWdiffReceivedTime.UTC().Truncate(time.Second)),
		fmt.Sprintf("progressLb %d", s.ProgressLB),
		fmt.Sprintf("sizeLb %d", s.SizeLB),
		"uuid "+s.UUID.String(),
		"archiveUuid "+s.ArchiveUUID.String(),
		"base "+s.Base.StringTs(),
		"latest "+s.Latest.StringTs(),
		fmt.Sprintf("numRestored %d", s.NumRestored),
		fmt.Sprintf("numRestorable %d", s.NumRestorable),
		fmt.Sprintf("numRestorableAll %d", s.NumRestorableAll),
		fmt.Sprintf("numDiff %d", s.NumDiff),
		fmt.Sprintf("wdiffTotalSize %d", s.WdiffTotalSize),
	)
	return out
}
