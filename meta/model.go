package meta

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"

	"github.com/pkg/errors"
)

// Record preambles (u16, first field of every serialized record).
const (
	PreambleSnap    uint16 = 0x0311
	PreambleDiff    uint16 = 0x0312
	PreambleState   uint16 = 0x0313
	PreambleLsidGid uint16 = 0x0314
)

// InvalidGid and InvalidLsid are walb-tools' "-1": the gids of the default
// snapshot and the lsid/gid of a fresh storage `done` record.
const (
	InvalidGid  uint64 = math.MaxUint64
	InvalidLsid uint64 = math.MaxUint64
)

// Snap is a snapshot (MetaSnap): an image whose blocks each come from some
// moment in [GidB, GidE]. It is clean when GidB == GidE.
type Snap struct {
	GidB, GidE uint64
}

// CleanSnap returns the clean snapshot |gid|.
func CleanSnap(gid uint64) Snap { return Snap{gid, gid} }

// DefaultSnap returns walb-tools' default snapshot (-1, -1), the value an
// archive base holds before its first full backup.
func DefaultSnap() Snap { return Snap{InvalidGid, InvalidGid} }

// IsClean reports whether GidB == GidE.
func (s Snap) IsClean() bool { return s.GidB == s.GidE }

// IsDirty reports whether GidB != GidE.
func (s Snap) IsDirty() bool { return s.GidB != s.GidE }

// Validate checks GidB <= GidE.
func (s Snap) Validate() error {
	if s.GidB > s.GidE {
		return errors.Wrapf(ErrInvalid, "snapshot %s: gidB > gidE", s)
	}
	return nil
}

// String returns |g| for a clean snapshot and |b,e| for a dirty one.
func (s Snap) String() string {
	if s.IsClean() {
		return "|" + strconv.FormatUint(s.GidB, 10) + "|"
	}
	return "|" + strconv.FormatUint(s.GidB, 10) + "," + strconv.FormatUint(s.GidE, 10) + "|"
}

// parseSnapAt parses |g| or |b,e| at the start of s and returns the rest.
func parseSnapAt(s string) (Snap, string, error) {
	bad := func() (Snap, string, error) {
		return Snap{}, "", errors.Wrapf(ErrBadText, "snapshot at %q", s)
	}
	if !strings.HasPrefix(s, "|") {
		return bad()
	}
	end := strings.IndexByte(s[1:], '|')
	if end < 0 {
		return bad()
	}
	body, rest := s[1:1+end], s[2+end:]
	var snap Snap
	var err error
	if b, e, ok := strings.Cut(body, ","); ok {
		if snap.GidB, err = parseGid(b); err == nil {
			snap.GidE, err = parseGid(e)
		}
	} else {
		snap.GidB, err = parseGid(body)
		snap.GidE = snap.GidB
	}
	if err != nil {
		return bad()
	}
	if err := snap.Validate(); err != nil {
		return Snap{}, "", err
	}
	return snap, rest, nil
}

// parseGid accepts plain decimal digits only (no sign, no spaces).
func parseGid(s string) (uint64, error) {
	if s == "" || strings.TrimLeft(s, "0123456789") != "" {
		return 0, errors.Wrapf(ErrBadText, "gid %q", s)
	}
	v, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, errors.Wrapf(ErrBadText, "gid %q: %v", s, err)
	}
	return v, nil
}

// ParseSnap parses the text form |g| or |b,e|.
func ParseSnap(s string) (Snap, error) {
	snap, rest, err := parseSnapAt(s)
	if err != nil {
		return Snap{}, err
	}
	if rest != "" {
		return Snap{}, errors.Wrapf(ErrBadText, "snapshot %q: trailing %q", s, rest)
	}
	return snap, nil
}

// EncodeTo writes the preamble, gidB and gidE. Invalid values are refused
// (as by every EncodeTo here), so a peer never receives what it must reject.
func (s Snap) EncodeTo(e *Encoder) error {
	if err := s.Validate(); err != nil {
		return err
	}
	e.U16(PreambleSnap)
	e.U64(s.GidB)
	return e.U64(s.GidE)
}

// DecodeFrom reads a snapshot and validates it.
func (s *Snap) DecodeFrom(d *Decoder) error {
	if err := expectPreamble(d, PreambleSnap, "snapshot"); err != nil {
		return err
	}
	b, _ := d.U64()
	e, err := d.U64()
	if err != nil {
		return err
	}
	v := Snap{b, e}
	if err := v.Validate(); err != nil {
		return d.fail(err)
	}
	*s = v
	return nil
}

func expectPreamble(d *Decoder, want uint16, what string) error {
	start := d.Offset()
	p, err := d.U16()
	if err != nil {
		return err
	}
	if p != want {
		return d.fail(errors.Wrapf(ErrPreamble, "%s: 0x%04x, want 0x%04x at offset %d", what, p, want, start))
	}
	return nil
}

// Diff is the metadata of one wdiff (MetaDiff): it turns snapshot SnapB into
// SnapE. Mergeable means SnapB is implicit, so the diff may be merged into
// its predecessor; CompDiff marks a compared diff made by hash-repl, which is
// never merged. Timestamp is the time of SnapE. DataSize is the file size; it
// is informative and not part of equality.
type Diff struct {
	SnapB, SnapE Snap
	Mergeable    bool
	CompDiff     bool
	Timestamp    time.Time
	DataSize     uint64
}

// CleanDiff returns the clean diff |b|-->|e| (neither mergeable nor
// compared, no timestamp); a convenience for tests and tools.
func CleanDiff(b, e uint64) Diff { return Diff{SnapB: CleanSnap(b), SnapE: CleanSnap(e)} }

// IsClean reports whether both snapshots are clean.
func (d Diff) IsClean() bool { return d.SnapB.IsClean() && d.SnapE.IsClean() }

// IsDirty reports whether either snapshot is dirty.
func (d Diff) IsDirty() bool { return !d.IsClean() }

// Equal reports whether d and o have the same SnapB and SnapE; flags,
// timestamp and size do not take part, as in walb-tools.
func (d Diff) Equal(o Diff) bool { return d.SnapB == o.SnapB && d.SnapE == o.SnapE }

// Validate checks both snapshots, the progress constraint
// (SnapB.GidB < SnapE.GidB and SnapB.GidE <= SnapE.GidE) and the timestamp.
func (d Diff) Validate() error {
	if err := d.SnapB.Validate(); err != nil {
		return errors.Wrapf(err, "diff %s", d)
	}
	if err := d.SnapE.Validate(); err != nil {
		return errors.Wrapf(err, "diff %s", d)
	}
	if d.SnapB.GidB >= d.SnapE.GidB {
		return errors.Wrapf(ErrInvalid, "diff %s: snapB.gidB >= snapE.gidB", d)
	}
	if d.SnapB.GidE > d.SnapE.GidE {
		return errors.Wrapf(ErrInvalid, "diff %s: snapB.gidE > snapE.gidE", d)
	}
	if err := checkTime(d.Timestamp); err != nil {
		return errors.Wrapf(err, "diff %s", d)
	}
	return nil
}

// String returns |B|-->|E|.
func (d Diff) String() string { return d.SnapB.String() + "-->" + d.SnapE.String() }

// Flags returns the two flag characters of names and listings: M or -, C or -.
func (d Diff) Flags() string {
	f := []byte("--")
	if d.Mergeable {
		f[0] = 'M'
	}
	if d.CompDiff {
		f[1] = 'C'
	}
	return string(f)
}

// Listing returns the line `get diff` prints: "|B|-->|E| MC pretty-ts size".
func (d Diff) Listing() string {
	return fmt.Sprintf("%s %s %s %d", d, d.Flags(), FormatPrettyTime(d.Timestamp), d.DataSize)
}

// EncodeTo writes preamble, isMergeable, isCompDiff, timestamp, snapB, snapE
// and dataSize.
func (d Diff) EncodeTo(e *Encoder) error {
	if err := d.Validate(); err != nil {
		return err
	}
	e.U16(PreambleDiff)
	e.Bool(d.Mergeable)
	e.Bool(d.CompDiff)
	e.U64(unixOf(d.Timestamp))
	e.Value(d.SnapB)
	e.Value(d.SnapE)
	return e.U64(d.DataSize)
}

// DecodeFrom reads a diff and validates it.
func (d *Diff) DecodeFrom(dec *Decoder) error {
	if err := expectPreamble(dec, PreambleDiff, "diff"); err != nil {
		return err
	}
	var v Diff
	v.Mergeable, _ = dec.Bool()
	v.CompDiff, _ = dec.Bool()
	v.Timestamp, _ = decodeTime(dec)
	dec.Value(&v.SnapB)
	dec.Value(&v.SnapE)
	size, err := dec.U64()
	if err != nil {
		return err
	}
	v.DataSize = size
	if err := v.Validate(); err != nil {
		return dec.fail(err)
	}
	*d = v
	return nil
}

// State is the archive base (MetaState). When IsApplying is false the base
// image is SnapB; while applying, the image is somewhere between SnapB and
// SnapE and becomes usable again only when the diffs reaching SnapE have been
// (re)applied. Timestamp is the time of the base snapshot.
type State struct {
	SnapB, SnapE Snap
	IsApplying   bool
	Timestamp    time.Time
}

// NewState returns the steady state <s> with timestamp ts.
func NewState(s Snap, ts time.Time) State { return State{SnapB: s, SnapE: s, Timestamp: ts} }

// NewApplyingState returns the applying state <b-->e> with timestamp ts.
func NewApplyingState(b, e Snap, ts time.Time) State {
	return State{SnapB: b, SnapE: e, IsApplying: true, Timestamp: ts}
}

// DefaultState returns the base init-vol writes: default snapshots, not
// applying, no timestamp.
func DefaultState() State { return NewState(DefaultSnap(), time.Time{}) }

// Equal compares as walb-tools does: IsApplying and SnapB, plus SnapE while
// applying. The timestamp does not take part.
func (st State) Equal(o State) bool {
	if st.IsApplying != o.IsApplying || st.SnapB != o.SnapB {
		return false
	}
	return !st.IsApplying || st.SnapE == o.SnapE
}

// Validate checks both snapshots, the progress constraint while applying
// (SnapB.GidB < SnapE.GidB) and the timestamp.
func (st State) Validate() error {
	if err := st.SnapB.Validate(); err != nil {
		return errors.Wrapf(err, "state %s", st)
	}
	if err := st.SnapE.Validate(); err != nil {
		return errors.Wrapf(err, "state %s", st)
	}
	if st.IsApplying && st.SnapB.GidB >= st.SnapE.GidB {
		return errors.Wrapf(ErrInvalid, "state %s: snapB.gidB >= snapE.gidB", st)
	}
	return checkTime(st.Timestamp)
}

// String returns <|B|> or, while applying, <|B|-->|E|>.
func (st State) String() string {
	if st.IsApplying {
		return "<" + st.SnapB.String() + "-->" + st.SnapE.String() + ">"
	}
	return "<" + st.SnapB.String() + ">"
}

// StringTs returns String followed by -YYYYMMDDhhmmss.
func (st State) StringTs() string { return st.String() + "-" + FormatCompactTime(st.Timestamp) }

// ParseState parses <SNAP>, <SNAP-->SNAP>, optionally followed by
// -YYYYMMDDhhmmss. Without a timestamp the result's Timestamp is zero
// (walb-tools substitutes the current time; callers decide).
func ParseState(s string) (State, error) {
	bad := func(why string) (State, error) {
		return State{}, errors.Wrapf(ErrBadText, "state %q: %s", s, why)
	}
	if !strings.HasPrefix(s, "<") {
		return bad("missing <")
	}
	b, rest, err := parseSnapAt(s[1:])
	if err != nil {
		return State{}, err
	}
	st := NewState(b, time.Time{})
	if strings.HasPrefix(rest, "-->") {
		e, r, err := parseSnapAt(rest[3:])
		if err != nil {
			return State{}, err
		}
		st = NewApplyingState(b, e, time.Time{})
		rest = r
	}
	if !strings.HasPrefix(rest, ">") {
		return bad("missing >")
	}
	rest = rest[1:]
	if rest != "" {
		if rest[0] != '-' {
			return bad("junk after >")
		}
		ts, err := ParseCompactTime(rest[1:])
		if err != nil {
			return State{}, err
		}
		st.Timestamp = ts
	}
	if err := st.Validate(); err != nil {
		return State{}, err
	}
	return st, nil
}

// EncodeTo writes preamble, isApplying, timestamp, snapB and snapE.
func (st State) EncodeTo(e *Encoder) error {
	if err := st.Validate(); err != nil {
		return err
	}
	e.U16(PreambleState)
	e.Bool(st.IsApplying)
	e.U64(unixOf(st.Timestamp))
	e.Value(st.SnapB)
	return e.Value(st.SnapE)
}

// DecodeFrom reads a state and validates it.
func (st *State) DecodeFrom(d *Decoder) error {
	if err := expectPreamble(d, PreambleState, "state"); err != nil {
		return err
	}
	var v State
	v.IsApplying, _ = d.Bool()
	v.Timestamp, _ = decodeTime(d)
	d.Value(&v.SnapB)
	if err := d.Value(&v.SnapE); err != nil {
		return err
	}
	if err := v.Validate(); err != nil {
		return d.fail(err)
	}
	*st = v
	return nil
}

// LsidGid is a storage snapshot record (MetaLsidGid): the log position Lsid
// that generation Gid ends at. Mergeable marks an implicit snapshot.
type LsidGid struct {
	Lsid, Gid uint64
	Mergeable bool
	Timestamp time.Time
}

// DefaultLsidGid returns walb-tools' default record (lsid -1, gid -1), the
// initial storage `done` record.
func DefaultLsidGid() LsidGid { return LsidGid{Lsid: InvalidLsid, Gid: InvalidGid} }

// String returns walb-tools' form of the record.
func (r LsidGid) String() string {
	m := 0
	if r.Mergeable {
		m = 1
	}
	return fmt.Sprintf("LsidGid timestamp %s isMergeable %d lsid %d gid %d",
		FormatPrettyTime(r.Timestamp), m, r.Lsid, r.Gid)
}

// EncodeTo writes preamble, isMergeable, timestamp, lsid and gid.
func (r LsidGid) EncodeTo(e *Encoder) error {
	if err := checkTime(r.Timestamp); err != nil {
		return err
	}
	e.U16(PreambleLsidGid)
	e.Bool(r.Mergeable)
	e.U64(unixOf(r.Timestamp))
	e.U64(r.Lsid)
	return e.U64(r.Gid)
}

// DecodeFrom reads a record.
func (r *LsidGid) DecodeFrom(d *Decoder) error {
	if err := expectPreamble(d, PreambleLsidGid, "lsid-gid"); err != nil {
		return err
	}
	var v LsidGid
	v.Mergeable, _ = d.Bool()
	v.Timestamp, _ = decodeTime(d)
	v.Lsid, _ = d.U64()
	gid, err := d.U64()
	if err != nil {
		return err
	}
	v.Gid = gid
	*r = v
	return nil
}
