package kernel

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/pkg/errors"
)

// InvalidLsid is the driver's INVALID_LSID (u64 max). walb-tools treats it as
// "no value" wherever an lsid is read.
const InvalidLsid = ^uint64(0)

// MaxLsid is the largest valid lsid (MAX_LSID).
const MaxLsid = InvalidLsid - 1

// maxLsidsLine bounds one line of lsids text. The driver's lines are about
// 35 bytes; a sysfs attribute is at most a page.
const maxLsidsLine = 4096

// LsidSet holds the indicators of the sysfs attribute walb/lsids (formats.md
// §5.2). Order on a healthy device:
// oldest <= prev_written <= written <= latest, and permanent, flush and
// completed are <= latest.
type LsidSet struct {
	Latest      uint64
	Submitted   uint64 // only older drivers print it; see HasSubmitted
	Flush       uint64
	Completed   uint64
	Permanent   uint64
	Written     uint64
	PrevWritten uint64
	Oldest      uint64
	// HasSubmitted reports whether the text had a "submitted" line.
	HasSubmitted bool
}

// lsidField maps a name in the text to its field. Submitted is optional.
type lsidField struct {
	name     string
	optional bool
	ptr      func(*LsidSet) *uint64
}

// lsidFields is in the order the driver prints (submitted came second in the
// drivers that had it).
var lsidFields = [...]lsidField{
	{"latest", false, func(s *LsidSet) *uint64 { return &s.Latest }},
	{"submitted", true, func(s *LsidSet) *uint64 { return &s.Submitted }},
	{"flush", false, func(s *LsidSet) *uint64 { return &s.Flush }},
	{"completed", false, func(s *LsidSet) *uint64 { return &s.Completed }},
	{"permanent", false, func(s *LsidSet) *uint64 { return &s.Permanent }},
	{"written", false, func(s *LsidSet) *uint64 { return &s.Written }},
	{"prev_written", false, func(s *LsidSet) *uint64 { return &s.PrevWritten }},
	{"oldest", false, func(s *LsidSet) *uint64 { return &s.Oldest }},
}

// ParseLsids reads the text of /sys/block/walb!NAME/walb/lsids:
// one "name value" line per indicator, fields separated by spaces or tabs
// (the driver pads names with spaces), values in decimal.
//
// Like walb-tools it skips empty lines, accepts CRLF, ignores names it does
// not know (so newer drivers keep working) and requires every indicator but
// "submitted". It is stricter where walb-tools is silently lenient: a
// repeated name, a line without exactly two fields, a value that is not a
// decimal u64 and the value InvalidLsid are errors.
func ParseLsids(r io.Reader) (LsidSet, error) {
	var s LsidSet
	var seen [len(lsidFields)]bool
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 256), maxLsidsLine)
	lineNo := 0
	for sc.Scan() {
		lineNo++
		fields := strings.FieldsFunc(sc.Text(), func(r rune) bool { return r == ' ' || r == '\t' || r == '\r' })
		if len(fields) == 0 {
			continue
		}
		if len(fields) != 2 {
			return LsidSet{}, errors.Wrapf(ErrLsidsSyntax, "line %d: want \"name value\", got %d fields", lineNo, len(fields))
		}
		idx := -1
		for i := range lsidFields {
			if lsidFields[i].name == fields[0] {
				idx = i
				break
			}
		}
		if idx < 0 {
			continue
		}
		if seen[idx] {
			return LsidSet{}, errors.Wrapf(ErrLsidsSyntax, "line %d: %s given twice", lineNo, fields[0])
		}
		v, err := strconv.ParseUint(fields[1], 10, 64)
		if err != nil {
			return LsidSet{}, errors.Wrapf(ErrLsidsSyntax, "line %d: %s: value %q is not a decimal u64", lineNo, fields[0], fields[1])
		}
		if v == InvalidLsid {
			return LsidSet{}, errors.Wrapf(ErrInvalidLsid, "line %d: %s is INVALID_LSID", lineNo, fields[0])
		}
		seen[idx] = true
		*lsidFields[idx].ptr(&s) = v
	}
	if err := sc.Err(); err != nil {
		if errors.Is(err, bufio.ErrTooLong) {
			return LsidSet{}, errors.Wrapf(ErrLsidsSyntax, "line %d longer than %d bytes", lineNo+1, maxLsidsLine)
		}
		return LsidSet{}, errors.Wrap(err, "kernel: read lsids")
	}
	var missing []string
	for i, f := range lsidFields {
		if !seen[i] && !f.optional {
			missing = append(missing, f.name)
		}
	}
	if len(missing) > 0 {
		return LsidSet{}, errors.Wrapf(ErrLsidsMissing, "%s", strings.Join(missing, ", "))
	}
	s.HasSubmitted = seen[1]
	return s, nil
}

// Check tests the orderings that hold on every driver version:
// oldest <= prev_written <= written <= latest, and permanent, flush and
// completed <= latest. (With the driver's default algorithm "completed" is
// printed as "written", so the finer order of formats.md §5.2 cannot be
// relied on.)
func (s LsidSet) Check() error {
	type le struct {
		a, b   string
		va, vb uint64
	}
	for _, c := range []le{
		{"oldest", "prev_written", s.Oldest, s.PrevWritten},
		{"prev_written", "written", s.PrevWritten, s.Written},
		{"written", "latest", s.Written, s.Latest},
		{"permanent", "latest", s.Permanent, s.Latest},
		{"flush", "latest", s.Flush, s.Latest},
		{"completed", "latest", s.Completed, s.Latest},
	} {
		if c.va > c.vb {
			return errors.Wrapf(ErrLsidsOrder, "%s %d > %s %d", c.a, c.va, c.b, c.vb)
		}
	}
	return nil
}

// String formats s like the driver's attribute, so the result parses back
// with ParseLsids. "submitted" is printed only if HasSubmitted.
func (s LsidSet) String() string {
	var b strings.Builder
	for i, f := range lsidFields {
		if i == 1 && !s.HasSubmitted {
			continue
		}
		fmt.Fprintf(&b, "%-12s %d\n", f.name, *f.ptr(&s))
	}
	return b.String()
}
