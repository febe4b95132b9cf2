package meta

import (
	"strconv"
	"strings"

	"github.com/pkg/errors"
)

// WdiffExt is the extension of wdiff files.
const WdiffExt = ".wdiff"

// MaxFileNameLen is the longest canonical wdiff name: a 14-digit time, "-MC",
// four "-" + 20-digit gids and the extension.
const MaxFileNameLen = 14 + 3 + 4*(1+20) + len(WdiffExt)

// FileName returns the canonical wdiff file name of d:
// YYYYMMDDhhmmss-MC-b-e.wdiff for a clean diff and
// YYYYMMDDhhmmss-MC-bb-be-eb-ee.wdiff for a dirty one, with the UTC time of
// d.Timestamp, M/C flags (or -) and decimal gids. d must be valid.
func FileName(d Diff) (string, error) {
	if err := d.Validate(); err != nil {
		return "", err
	}
	return fileName(d), nil
}

// fileName formats a diff already known to be valid.
func fileName(d Diff) string {
	var b strings.Builder
	b.Grow(MaxFileNameLen)
	b.WriteString(FormatCompactTime(d.Timestamp))
	b.WriteByte('-')
	b.WriteString(d.Flags())
	gids := []uint64{d.SnapB.GidB, d.SnapE.GidB}
	if d.IsDirty() {
		gids = []uint64{d.SnapB.GidB, d.SnapB.GidE, d.SnapE.GidB, d.SnapE.GidE}
	}
	for _, g := range gids {
		b.WriteByte('-')
		b.WriteString(strconv.FormatUint(g, 10))
	}
	b.WriteString(WdiffExt)
	return b.String()
}

// ParseFileName recovers a diff's metadata from its file name. Only the
// canonical form FileName produces is accepted: exact flags, no leading zeros,
// two gids for a clean diff and four for a dirty one, a real UTC time and a
// valid diff. DataSize is left 0 (it is the file's size).
func ParseFileName(name string) (Diff, error) {
	bad := func(why string) (Diff, error) {
		if len(name) > MaxFileNameLen+8 {
			name = name[:MaxFileNameLen+8] + "..."
		}
		return Diff{}, errors.Wrapf(ErrBadName, "%q: %s", name, why)
	}
	if len(name) > MaxFileNameLen {
		return bad("too long")
	}
	stem, ok := strings.CutSuffix(name, WdiffExt)
	if !ok {
		return bad("no " + WdiffExt + " suffix")
	}
	// 14 digits, '-', two flags, then at least "-0-1".
	if len(stem) < 14+1+2+4 {
		return bad("too short")
	}
	var d Diff
	ts, err := ParseCompactTime(stem[:14])
	if err != nil {
		return bad("bad timestamp")
	}
	d.Timestamp = ts
	if stem[14] != '-' {
		return bad("no '-' after the timestamp")
	}
	switch stem[15] {
	case 'M':
		d.Mergeable = true
	case '-':
	default:
		return bad("mergeable flag is not M or -")
	}
	switch stem[16] {
	case 'C':
		d.CompDiff = true
	case '-':
	default:
		return bad("compared flag is not C or -")
	}
	if stem[17] != '-' {
		return bad("no '-' after the flags")
	}
	fields := strings.Split(stem[18:], "-")
	gids := make([]uint64, len(fields))
	for i, f := range fields {
		if len(f) > 1 && f[0] == '0' {
			return bad("gid with a leading zero")
		}
		g, err := parseGid(f)
		if err != nil {
			return bad("bad gid " + strconv.Quote(f))
		}
		gids[i] = g
	}
	switch len(gids) {
	case 2:
		d.SnapB, d.SnapE = CleanSnap(gids[0]), CleanSnap(gids[1])
	case 4:
		d.SnapB, d.SnapE = Snap{gids[0], gids[1]}, Snap{gids[2], gids[3]}
		if d.IsClean() {
			return bad("four gids for a clean diff")
		}
	default:
		return bad("want 2 or 4 gids")
	}
	if err := d.Validate(); err != nil {
		return Diff{}, errors.Wrapf(ErrBadName, "%q: %v", name, err)
	}
	return d, nil
}
