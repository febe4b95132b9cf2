package meta

import (
	"time"

	"github.com/pkg/errors"
)

// Timestamps are UNIX seconds in the serialized forms. Zero means "unset" in
// walb-tools (it prints as ---), so the zero time.Time and the epoch both
// encode as 0, and 0 decodes to the zero time.Time.

// MaxTimestamp is the last second a 14-digit compact time can show
// (9999-12-31T23:59:59Z). Later timestamps are invalid metadata.
var MaxTimestamp = time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC)

const (
	compactLayout = "20060102150405"
	prettyLayout  = "2006-01-02T15:04:05"
)

// unixOf returns the serialized value of t (0 for the zero time).
func unixOf(t time.Time) uint64 {
	if t.IsZero() {
		return 0
	}
	return uint64(t.Unix())
}

// timeOf maps a serialized value back to a time (0 to the zero time).
func timeOf(u uint64) time.Time {
	if u == 0 {
		return time.Time{}
	}
	return time.Unix(int64(u), 0).UTC()
}

// checkTime reports whether t is representable: zero, or within
// [epoch, MaxTimestamp].
func checkTime(t time.Time) error {
	if t.IsZero() {
		return nil
	}
	if t.Unix() < 0 || t.After(MaxTimestamp) {
		return errors.Wrapf(ErrInvalid, "timestamp %s out of range", t.UTC().Format(time.RFC3339))
	}
	return nil
}

// decodeTime reads a u64 timestamp and rejects values no valid time has.
func decodeTime(d *Decoder) (time.Time, error) {
	start := d.Offset()
	u, err := d.U64()
	if err != nil {
		return time.Time{}, err
	}
	if u > uint64(MaxTimestamp.Unix()) {
		return time.Time{}, d.fail(errors.Wrapf(ErrInvalid, "timestamp %d out of range at offset %d", u, start))
	}
	return timeOf(u), nil
}

// FormatCompactTime returns t as YYYYMMDDhhmmss in UTC, the form used in
// wdiff names and state strings. The zero time prints as the epoch.
func FormatCompactTime(t time.Time) string {
	if t.IsZero() {
		t = time.Unix(0, 0)
	}
	return t.UTC().Format(compactLayout)
}

// ParseCompactTime parses exactly 14 digits YYYYMMDDhhmmss as UTC. The epoch
// parses to the zero time, matching the serialized forms.
func ParseCompactTime(s string) (time.Time, error) {
	if len(s) != 14 {
		return time.Time{}, errors.Wrapf(ErrBadText, "time %q: want 14 digits", s)
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return time.Time{}, errors.Wrapf(ErrBadText, "time %q: non-digit", s)
		}
	}
	t, err := time.ParseInLocation(compactLayout, s, time.UTC)
	if err != nil {
		return time.Time{}, errors.Wrapf(ErrBadText, "time %q: %v", s, err)
	}
	if t.Format(compactLayout) != s || t.Unix() < 0 {
		return time.Time{}, errors.Wrapf(ErrBadText, "time %q: out of range", s)
	}
	return timeOf(uint64(t.Unix())), nil
}

// FormatPrettyTime returns t as YYYY-MM-DDThh:mm:ss in UTC, or "---" for
// the zero time (and the epoch), as walb-tools prints timestamps.
func FormatPrettyTime(t time.Time) string {
	if unixOf(t) == 0 {
		return "---"
	}
	return t.UTC().Format(prettyLayout)
}
