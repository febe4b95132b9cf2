package kernel

import (
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/stretchr/testify/require"
)

// driverLsids is the attribute as walb-driver's sysfs.c prints it.
const driverLsids = "latest       1500\n" +
	"flush        1500\n" +
	"completed    1500\n" +
	"permanent    1480\n" +
	"written      1400\n" +
	"prev_written 1200\n" +
	"oldest       1000\n"

var driverLsidSet = LsidSet{Latest: 1500, Flush: 1500, Completed: 1500, Permanent: 1480,
	Written: 1400, PrevWritten: 1200, Oldest: 1000}

func TestParseLsids(t *testing.T) {
	tests := []struct {
		name string
		text string
		want LsidSet
		err  error
		msg  string
	}{
		{name: "driver", text: driverLsids, want: driverLsidSet},
		{name: "single spaces (older driver)", text: strings.ReplaceAll(strings.ReplaceAll(driverLsids, "   ", " "), "  ", " "), want: driverLsidSet},
		{name: "tabs, CRLF and blank lines", text: "\r\nlatest\t1500\r\n\n" + strings.ReplaceAll(driverLsids[18:], "\n", "\r\n") + "\n  \n", want: driverLsidSet},
		{name: "no final newline", text: strings.TrimSuffix(driverLsids, "\n"), want: driverLsidSet},
		{name: "any order", text: "oldest 1\nprev_written 2\nwritten 3\npermanent 4\ncompleted 5\nflush 6\nlatest 7\n",
			want: LsidSet{Oldest: 1, PrevWritten: 2, Written: 3, Permanent: 4, Completed: 5, Flush: 6, Latest: 7}},
		{name: "with submitted", text: "latest 10\nsubmitted 9\n" + driverLsids[18:],
			want: func() LsidSet { s := driverLsidSet; s.Latest, s.Submitted, s.HasSubmitted = 10, 9, true; return s }()},
		{name: "unknown names ignored", text: driverLsids + "future_lsid 42\n", want: driverLsidSet},
		{name: "max value", text: strings.Replace(driverLsids, "1500\n", "18446744073709551614\n", 1),
			want: func() LsidSet { s := driverLsidSet; s.Latest = MaxLsid; return s }()},

		{name: "empty", text: "", err: ErrLsidsMissing, msg: "latest, flush, completed, permanent, written, prev_written, oldest"},
		{name: "missing oldest", text: driverLsids[:strings.Index(driverLsids, "oldest")], err: ErrLsidsMissing, msg: "oldest"},
		{name: "three fields", text: "latest 1 2\n", err: ErrLsidsSyntax, msg: "line 1"},
		{name: "one field", text: driverLsids + "latest\n", err: ErrLsidsSyntax, msg: "line 8"},
		{name: "duplicate", text: driverLsids + "written 1\n", err: ErrLsidsSyntax, msg: "written given twice"},
		{name: "negative", text: strings.Replace(driverLsids, "1000", "-1", 1), err: ErrLsidsSyntax, msg: "oldest"},
		{name: "hex", text: strings.Replace(driverLsids, "1000", "0x10", 1), err: ErrLsidsSyntax},
		{name: "overflow", text: strings.Replace(driverLsids, "1000", "18446744073709551616", 1), err: ErrLsidsSyntax},
		{name: "invalid lsid", text: strings.Replace(driverLsids, "1000", "18446744073709551615", 1), err: ErrInvalidLsid, msg: "oldest"},
		{name: "line too long", text: "latest " + strings.Repeat("1", 5000) + "\n", err: ErrLsidsSyntax, msg: "longer than"},
		{name: "other whitespace is not a separator", text: strings.Replace(driverLsids, "oldest       1000", "oldest\v1000", 1), err: ErrLsidsSyntax},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseLsids(strings.NewReader(tc.text))
			if tc.err != nil {
				require.ErrorIs(t, err, tc.err)
				require.ErrorContains(t, err, tc.msg)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tc.want, got)
		})
	}
}

// Short and failing reads must not change the result.
func TestParseLsidsReaders(t *testing.T) {
	for name, r := range map[string]func() io.Reader{
		"one byte": func() io.Reader { return iotest.OneByteReader(strings.NewReader(driverLsids)) },
		"half":     func() io.Reader { return iotest.HalfReader(strings.NewReader(driverLsids)) },
		"data+EOF": func() io.Reader { return iotest.DataErrReader(strings.NewReader(driverLsids)) },
	} {
		t.Run(name, func(t *testing.T) {
			got, err := ParseLsids(r())
			require.NoError(t, err)
			require.Equal(t, driverLsidSet, got)
		})
	}
	boom := errors.New("boom")
	_, err := ParseLsids(iotest.ErrReader(boom))
	require.ErrorIs(t, err, boom)
	_, err = ParseLsids(iotest.TimeoutReader(strings.NewReader(driverLsids)))
	require.ErrorIs(t, err, iotest.ErrTimeout)
}

func TestLsidSetString(t *testing.T) {
	require.Equal(t, driverLsids, driverLsidSet.String(), "same text as the driver")
	s := driverLsidSet
	s.Submitted, s.HasSubmitted = 1490, true
	back, err := ParseLsids(strings.NewReader(s.String()))
	require.NoError(t, err)
	require.Equal(t, s, back)
}

func TestLsidSetCheck(t *testing.T) {
	require.NoError(t, driverLsidSet.Check())
	require.NoError(t, LsidSet{}.Check(), "after reset-wal")
	tests := []struct {
		name   string
		modify func(s *LsidSet)
		msg    string
	}{
		{"oldest > prev_written", func(s *LsidSet) { s.Oldest = 1201 }, "oldest 1201 > prev_written 1200"},
		{"prev_written > written", func(s *LsidSet) { s.PrevWritten = 1401 }, "prev_written 1401 > written 1400"},
		{"written > latest", func(s *LsidSet) { s.Written = 1501 }, "written 1501 > latest 1500"},
		{"permanent > latest", func(s *LsidSet) { s.Permanent = 1501 }, "permanent"},
		{"flush > latest", func(s *LsidSet) { s.Flush = 1501 }, "flush"},
		{"completed > latest", func(s *LsidSet) { s.Completed = 1501 }, "completed"},
	}
	for _, tc := range tests {
		s := driverLsidSet
		tc.modify(&s)
		err := s.Check()
		require.ErrorIs(t, err, ErrLsidsOrder, tc.name)
		require.ErrorContains(t, err, tc.msg, tc.name)
	}
}

func BenchmarkParseLsids(b *testing.B) {
	b.SetBytes(int64(len(driverLsids)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ParseLsids(strings.NewReader(driverLsids)); err != nil {
			b.Fatal(err)
		}
	}
}
