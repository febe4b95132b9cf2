package controller

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/wdiff"
)

var t0 = time.Date(2024, 5, 1, 12, 30, 45, 0, time.UTC)

func TestParsePrettyTime(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Time
		bad  bool
	}{
		{in: "2024-05-01T12:30:45", want: t0},
		{in: "---", want: time.Time{}},
		{in: "1970-01-01T00:00:00", bad: true},
		{in: "1960-01-01T00:00:00", bad: true},
		{in: "2024-05-01 12:30:45", bad: true},
		{in: "2024-5-1T12:30:45", bad: true},
		{in: "2024-05-01T12:30:45Z", bad: true},
		{in: "", bad: true},
	} {
		got, err := ParsePrettyTime(tc.in)
		if tc.bad {
			require.ErrorIs(t, err, ErrBadValue, tc.in)
			continue
		}
		require.NoError(t, err, tc.in)
		require.True(t, tc.want.Equal(got), "%s: %v", tc.in, got)
		// The servers print times with meta.FormatPrettyTime.
		require.Equal(t, tc.in, meta.FormatPrettyTime(got))
	}
}

func TestParseDiffLine(t *testing.T) {
	diffs := []meta.Diff{
		{SnapB: meta.CleanSnap(10), SnapE: meta.CleanSnap(20), Timestamp: t0, DataSize: 4096},
		{SnapB: meta.CleanSnap(0), SnapE: meta.Snap{GidB: 3, GidE: 5}, Mergeable: true, Timestamp: t0, DataSize: 1},
		{SnapB: meta.Snap{GidB: 3, GidE: 5}, SnapE: meta.CleanSnap(7), CompDiff: true, Mergeable: true, DataSize: 0},
		{SnapB: meta.CleanSnap(1 << 40), SnapE: meta.CleanSnap(1<<40 + 1), Timestamp: t0, DataSize: 1 << 50},
	}
	for _, d := range diffs {
		line := d.Listing()
		got, err := ParseDiffLine(line)
		require.NoError(t, err, line)
		require.True(t, got.Equal(d), line)
		require.Equal(t, d.Mergeable, got.Mergeable, line)
		require.Equal(t, d.CompDiff, got.CompDiff, line)
		require.True(t, d.Timestamp.Equal(got.Timestamp), line)
		require.Equal(t, d.DataSize, got.DataSize, line)
		require.Equal(t, line, got.Listing())
	}
	for _, bad := range []string{
		"",
		"|1|-->|2| -- 2024-05-01T12:30:45",
		"|1|-->|2| -- 2024-05-01T12:30:45 12 extra",
		"|1|->|2| -- 2024-05-01T12:30:45 12",
		"|2|-->|1| -- 2024-05-01T12:30:45 12", // no progress
		"|1|-->|2| X- 2024-05-01T12:30:45 12",
		"|1|-->|2| -X 2024-05-01T12:30:45 12",
		"|1|-->|2| - 2024-05-01T12:30:45 12",
		"|1|-->|2| -- yesterday 12",
		"|1|-->|2| -- 2024-05-01T12:30:45 -1",
		"|1,0|-->|2| -- 2024-05-01T12:30:45 1",
	} {
		_, err := ParseDiffLine(bad)
		require.ErrorIs(t, err, ErrBadValue, bad)
	}
}

func TestParseRestorable(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want RestorableGid
	}{
		{"12 2024-05-01T12:30:45 1", RestorableGid{12, t0, true}},
		{"12 2024-05-01T12:30:45 0", RestorableGid{12, t0, false}},
		{"0 --- 0", RestorableGid{0, time.Time{}, false}},
		{"18446744073709551615 2024-05-01T12:30:45", RestorableGid{LatestGid, t0, false}},
	} {
		got, err := ParseRestorable(tc.in)
		require.NoError(t, err, tc.in)
		require.Equal(t, tc.want.Gid, got.Gid)
		require.Equal(t, tc.want.Explicit, got.Explicit)
		require.True(t, tc.want.Timestamp.Equal(got.Timestamp))
	}
	// The archive prints meta.RestorePoint.String; the two must agree.
	p := meta.RestorePoint{State: meta.NewState(meta.CleanSnap(7), t0), Explicit: true}
	got, err := ParseRestorable(p.String())
	require.NoError(t, err)
	require.Equal(t, RestorableGid{7, t0, true}, got)
	for _, bad := range []string{"", "12", "x 2024-05-01T12:30:45 1", "12 2024-05-01T12:30:45 2", "12 now 1", "1 --- 1 1"} {
		_, err := ParseRestorable(bad)
		require.ErrorIs(t, err, ErrBadValue, bad)
	}
}

func TestParseGids(t *testing.T) {
	g, err := ParseGids([]string{"1", "20", "300"})
	require.NoError(t, err)
	require.Equal(t, []uint64{1, 20, 300}, g)
	g, err = ParseGids([]string{})
	require.NoError(t, err)
	require.Empty(t, g)
	_, err = ParseGids([]string{"1", "-2"})
	require.ErrorIs(t, err, ErrBadValue)
}

func TestParseFields(t *testing.T) {
	m, err := ParseFields("name:v0\tkind:proxy\tarchive:a0\tgid:\ttimestamp:")
	require.NoError(t, err)
	require.Equal(t, map[string]string{"name": "v0", "kind": "proxy", "archive": "a0", "gid": "", "timestamp": ""}, m)
	m, err = ParseFields("name:v0\tmetastate:<|3|>-20240501123045\taddr:host:5000")
	require.NoError(t, err)
	require.Equal(t, "host:5000", m["addr"])
	for _, bad := range []string{"", "name", "name:a\tname:b", ":x", "a:1\t"} {
		_, err := ParseFields(bad)
		require.ErrorIs(t, err, ErrBadValue, bad)
	}
}

func TestParseLatestSnap(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want LatestSnap
	}{
		{"name:v0\tkind:storage\tgid:12\tlsid:96\ttimestamp:2024-05-01T12:30:45",
			LatestSnap{Vol: "v0", Kind: KindStorage, Gid: 12, HasGid: true, Lsid: 96, HasLsid: true, Timestamp: t0}},
		{"name:v0\tkind:archive\tgid:12\ttimestamp:2024-05-01T12:30:45",
			LatestSnap{Vol: "v0", Kind: KindArchive, Gid: 12, HasGid: true, Timestamp: t0}},
		{"name:v0\tkind:proxy\tarchive:a1\tgid:4\ttimestamp:---",
			LatestSnap{Vol: "v0", Kind: KindProxy, Archive: "a1", Gid: 4, HasGid: true}},
		{"name:v0\tkind:proxy\tarchive:a1\tgid:\ttimestamp:",
			LatestSnap{Vol: "v0", Kind: KindProxy, Archive: "a1"}},
	} {
		got, err := ParseLatestSnap(tc.in)
		require.NoError(t, err, tc.in)
		require.Equal(t, tc.want, got, tc.in)
	}
	for _, bad := range []string{
		"kind:storage\tgid:1\ttimestamp:---",
		"name:v\tkind:disk\tgid:1\ttimestamp:---",
		"name:v\tkind:archive\tgid:\ttimestamp:---",
		"name:v\tkind:archive\ttimestamp:---",
		"name:v\tkind:archive\tgid:1",
		"name:v\tkind:proxy\tgid:1\ttimestamp:---",
		"name:v\tkind:storage\tgid:1\tlsid:x\ttimestamp:---",
		"name:v\tkind:storage\tgid:1\ttimestamp:noon",
	} {
		_, err := ParseLatestSnap(bad)
		require.ErrorIs(t, err, ErrBadValue, bad)
	}
}

func TestParseLogUsage(t *testing.T) {
	u, err := ParseLogUsage("name:v0\tusage_pb:10\tcapacity_pb:2048\tpbs:4096")
	require.NoError(t, err)
	require.Equal(t, LogUsage{Vol: "v0", UsagePB: 10, CapacityPB: 2048, PBS: 4096}, u)
	for _, bad := range []string{"usage_pb:1\tcapacity_pb:2\tpbs:512", "name:v\tcapacity_pb:2\tpbs:512", "name:v\tusage_pb:1\tcapacity_pb:2\tpbs:x"} {
		_, err := ParseLogUsage(bad)
		require.ErrorIs(t, err, ErrBadValue, bad)
	}
}

func TestParseAllActions(t *testing.T) {
	va, err := ParseAllActions("v0 Merge 1 2024-05-01T12:30:45 Apply 0 --- Restore 2 2024-05-01T12:30:45")
	require.NoError(t, err)
	require.Equal(t, "v0", va.Vol)
	require.Equal(t, ActionInfo{Running: 1, LastStart: t0}, va.Actions["Merge"])
	require.Equal(t, ActionInfo{}, va.Actions["Apply"])
	require.Equal(t, 2, va.Actions["Restore"].Running)
	va, err = ParseAllActions("v1")
	require.NoError(t, err)
	require.Empty(t, va.Actions)
	for _, bad := range []string{"", "v0 Merge 1", "v0 Merge x ---", "v0 Merge 1 --- Merge 0 ---", "v0 Merge 1 today"} {
		_, err := ParseAllActions(bad)
		require.ErrorIs(t, err, ErrBadValue, bad)
	}
}

func TestParseArchiveInfo(t *testing.T) {
	a, err := ParseArchiveInfo("a0.example:5002 zstd:3:2 30")
	require.NoError(t, err)
	require.Equal(t, ArchiveInfo{Addr: "a0.example:5002", Compression: wdiff.Compression{Codec: wdiff.CodecZstd, Level: 3, Workers: 2}, Delay: 30 * time.Second}, a)
	o := a.SyncOpt()
	require.Equal(t, []string{"zstd:3:2", "30"}, o.ArchiveInfoArgs())
	require.EqualValues(t, DefaultMaxMergeSize, o.MaxMergeSize)
	a, err = ParseArchiveInfo("[::1]:5002 snappy:0:1 0")
	require.NoError(t, err)
	require.Equal(t, "[::1]:5002", a.Addr)
	for _, bad := range []string{"", "h:1 snappy:0:1", "h snappy:0:1 0", "h:0 snappy:0:1 0", "h:1 rar:0:1 0", "h:1 snappy:0:1 -1", ":1 snappy:0:1 0"} {
		_, err := ParseArchiveInfo(bad)
		require.ErrorIs(t, err, ErrBadValue, bad)
	}
}

func TestSyncOpt(t *testing.T) {
	o := DefaultSyncOpt()
	require.NoError(t, o.Validate())
	require.Equal(t, []string{"snappy:0:1", "0"}, o.ArchiveInfoArgs())
	o.Delay = 1500 * time.Millisecond
	require.ErrorIs(t, o.Validate(), ErrBadArgs)
	o = DefaultSyncOpt()
	o.Compression.Level = 10
	require.ErrorIs(t, o.Validate(), ErrBadArgs)
}

func TestAnyRecord(t *testing.T) {
	for _, v := range []meta.Encodable{
		meta.Snap{GidB: 3, GidE: 5},
		meta.Diff{SnapB: meta.CleanSnap(1), SnapE: meta.CleanSnap(2), Mergeable: true, Timestamp: t0, DataSize: 77},
		meta.NewApplyingState(meta.CleanSnap(1), meta.CleanSnap(4), t0),
		meta.LsidGid{Lsid: 100, Gid: 7, Mergeable: true, Timestamp: t0},
	} {
		b, err := meta.Marshal(v)
		require.NoError(t, err)
		var r anyRecord
		require.NoError(t, meta.Unmarshal(b, &r), "%T", v)
		require.Equal(t, v, r.v)
		// Every truncation fails.
		for n := 0; n < len(b); n++ {
			require.Error(t, meta.Unmarshal(b[:n], &anyRecord{}), "%T cut at %d", v, n)
		}
	}
	var r anyRecord
	require.ErrorIs(t, meta.Unmarshal([]byte{0x99, 0x03}, &r), ErrBadValue)
	// An invalid snapshot (gidB > gidE) is refused as meta refuses it.
	require.Error(t, meta.Unmarshal([]byte{0x11, 0x03, 5, 3}, &r))
}

func FuzzParseDiffLine(f *testing.F) {
	f.Add("|1|-->|2| -- 2024-05-01T12:30:45 12")
	f.Add("|0|-->|3,5| MC --- 0")
	f.Fuzz(func(t *testing.T, s string) {
		d, err := ParseDiffLine(s)
		if err != nil {
			return
		}
		// What parses prints back the same way.
		require.Equal(t, s, d.Listing())
	})
}

func FuzzParseRestorable(f *testing.F) {
	f.Add("12 2024-05-01T12:30:45 1")
	f.Add("0 --- 0")
	f.Fuzz(func(t *testing.T, s string) {
		r, err := ParseRestorable(s)
		if err != nil {
			return
		}
		p := meta.RestorePoint{State: meta.NewState(meta.CleanSnap(r.Gid), r.Timestamp), Explicit: r.Explicit}
		r2, err := ParseRestorable(p.String())
		require.NoError(t, err)
		require.Equal(t, r, r2)
	})
}

func FuzzParseLatestSnap(f *testing.F) {
	f.Add("name:v0\tkind:storage\tgid:12\tlsid:96\ttimestamp:2024-05-01T12:30:45")
	f.Add("name:v0\tkind:proxy\tarchive:a1\tgid:\ttimestamp:")
	f.Fuzz(func(t *testing.T, s string) {
		ls, err := ParseLatestSnap(s)
		if err != nil {
			return
		}
		require.NotEmpty(t, ls.Vol)
		require.True(t, ls.HasGid || ls.Kind == KindProxy)
	})
}

func FuzzAnyRecord(f *testing.F) {
	for _, v := range []meta.Encodable{
		meta.Snap{GidB: 3, GidE: 5},
		meta.Diff{SnapB: meta.CleanSnap(1), SnapE: meta.CleanSnap(2), Timestamp: t0},
		meta.NewState(meta.CleanSnap(4), t0),
		meta.LsidGid{Lsid: 1, Gid: 2},
	} {
		b, err := meta.Marshal(v)
		require.NoError(f, err)
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var r anyRecord
		if err := meta.Unmarshal(b, &r); err != nil {
			return
		}
		// A decoded record encodes back to the same bytes.
		out, err := meta.Marshal(r.v.(meta.Encodable))
		require.NoError(t, err)
		require.Equal(t, b, out)
	})
}
