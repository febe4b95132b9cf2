package meta

import (
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// formats.md §8 examples.
func TestFileNameExamples(t *testing.T) {
	at := time.Date(2017, 7, 14, 2, 40, 0, 0, time.UTC)
	tests := []struct {
		name string
		d    Diff
	}{
		{"20170714024000-M--10-20.wdiff", Diff{SnapB: sn(10), SnapE: sn(20), Mergeable: true, Timestamp: at}},
		{"20170714024000--C-10-12-20-25.wdiff", Diff{SnapB: sn(10, 12), SnapE: sn(20, 25), CompDiff: true, Timestamp: at}},
		{"20170714024000-MC-0-1.wdiff", Diff{SnapB: sn(0), SnapE: sn(1), Mergeable: true, CompDiff: true, Timestamp: at}},
		{"20170714024000----5-5-6-9.wdiff", Diff{SnapB: sn(5), SnapE: sn(6, 9), Timestamp: at}},
		{"19700101000000----0-1.wdiff", Diff{SnapB: sn(0), SnapE: sn(1)}},
		{"99991231235959----18446744073709551613-18446744073709551614-18446744073709551614-18446744073709551615.wdiff",
			Diff{SnapB: sn(math.MaxUint64-2, math.MaxUint64-1), SnapE: sn(math.MaxUint64-1, math.MaxUint64), Timestamp: MaxTimestamp}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := FileName(tc.d)
			require.NoError(t, err)
			require.Equal(t, tc.name, got)
			require.LessOrEqual(t, len(got), MaxFileNameLen)
			d, err := ParseFileName(tc.name)
			require.NoError(t, err)
			require.Equal(t, tc.d, d)
		})
	}
	// The name is in UTC whatever the zone of the timestamp.
	got, err := FileName(Diff{SnapB: sn(1), SnapE: sn(2), Timestamp: at.In(time.FixedZone("JST", 9*3600))})
	require.NoError(t, err)
	require.Equal(t, "20170714024000----1-2.wdiff", got)
}

func TestParseFileNameRejects(t *testing.T) {
	bad := []string{
		"",
		".wdiff",
		"20170714024000-M--10-20",                        // no extension
		"20170714024000-M--10-20.wdif",                   // wrong extension
		"20170714024000-M--10-20.wdiff.tmp",              // temp-like suffix
		"2017071402400-M--10-20.wdiff",                   // 13-digit time
		"20170714024000-M--10.wdiff",                     // one gid
		"20170714024000-M--10-20-30.wdiff",               // three gids
		"20170714024000-M--1-2-3-4-5.wdiff",              // five gids
		"20170714024000_M--10-20.wdiff",                  // separator
		"20170714024000-m--10-20.wdiff",                  // lowercase flag
		"20170714024000-1--10-20.wdiff",                  // old 0/1 flag
		"20170714024000-MX-10-20.wdiff",                  // bad C flag
		"20170714024000-M-_10-20.wdiff",                  // separator after flags
		"20170714024000-M--010-20.wdiff",                 // leading zero
		"20170714024000-M--10-020.wdiff",                 // leading zero
		"20170714024000-M--a-20.wdiff",                   // hex
		"20170714024000-M--+1-20.wdiff",                  // sign
		"20170714024000-M---1-20.wdiff",                  // negative / empty gid
		"20170714024000-M--10--20.wdiff",                 // empty gid
		"20170714024000-M--10-20-.wdiff",                 // trailing dash
		"20170714024000-M--20-10.wdiff",                  // no progress
		"20170714024000-M--10-10.wdiff",                  // no progress
		"20170714024000-M--10-10-20-20.wdiff",            // clean diff in dirty form
		"20170714024000-M--10-12-20-11.wdiff",            // snapE gidB > gidE
		"20170714024000-M--10-30-20-25.wdiff",            // snapB.gidE > snapE.gidE
		"20170714024000-M--10-9-20-25.wdiff",             // snapB gidB > gidE
		"20171314024000-M--10-20.wdiff",                  // month 13
		"20170230024000-M--10-20.wdiff",                  // Feb 30
		"20170714024060-M--10-20.wdiff",                  // second 60
		"19691231235959-M--10-20.wdiff",                  // before the epoch
		"2017071402400a-M--10-20.wdiff",                  // non-digit time
		"20170714024000-M--18446744073709551616-1.wdiff", // gid overflow
		"20170714024000-M--10-20.wdiff" + strings.Repeat("x", 200),
		strings.Repeat("1", 300) + ".wdiff",
	}
	for _, name := range bad {
		_, err := ParseFileName(name)
		require.ErrorIs(t, err, ErrBadName, "%q", name)
	}
	_, err := FileName(df(sn(3), sn(2)))
	require.ErrorIs(t, err, ErrInvalid)
}

func TestFileNameRoundTripRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(21, 22))
	for range 5000 {
		b := uint64(r.IntN(10))
		if r.IntN(4) == 0 {
			b = r.Uint64() >> uint(r.IntN(64))
		}
		s := sn(b)
		if r.IntN(2) == 0 && b < math.MaxUint64-100 {
			s.GidE += uint64(r.IntN(10))
		}
		if s.GidE > math.MaxUint64-40 {
			continue
		}
		d := randDiff(r, s, r.IntN(2) == 0)
		d.CompDiff = r.IntN(2) == 0
		d.Timestamp = ts(r.Int64N(MaxTimestamp.Unix() + 1))
		d.DataSize = 0
		name, err := FileName(d)
		require.NoError(t, err)
		back, err := ParseFileName(name)
		require.NoError(t, err, name)
		if d.Timestamp.Unix() == 0 {
			d.Timestamp = time.Time{}
		}
		require.Equal(t, d, back)
	}
}

func BenchmarkParseFileName(b *testing.B) {
	name := "20170714024000--C-10-12-20-25.wdiff"
	b.SetBytes(int64(len(name)))
	for b.Loop() {
		if _, err := ParseFileName(name); err != nil {
			b.Fatal(err)
		}
	}
}
