package meta

import (
	"bytes"
	"testing"
	"testing/iotest"
	"time"

	"github.com/stretchr/testify/require"
)

func ts(sec int64) time.Time { return time.Unix(sec, 0).UTC() }

// sn builds |b| or |b,e| from one or two gids.
func sn(g ...uint64) Snap {
	if len(g) == 1 {
		return CleanSnap(g[0])
	}
	return Snap{g[0], g[1]}
}

// df builds a diff from two snapshots.
func df(b, e Snap) Diff { return Diff{SnapB: b, SnapE: e} }

func mdf(b, e Snap) Diff { return Diff{SnapB: b, SnapE: e, Mergeable: true} }

// formats.md §8 golden example.
func TestDiffGolden(t *testing.T) {
	d := Diff{SnapB: sn(10), SnapE: sn(20), Mergeable: true, Timestamp: ts(1500000000)}
	want := unhex(t, "12 03 01 00 82 00 2F 68 59 11 03 0A 0A 11 03 14 14 00")
	b, err := Marshal(d)
	require.NoError(t, err)
	require.Equal(t, want, b)

	for name, r := range map[string]func() *Decoder{
		"bytes":    func() *Decoder { return NewDecoder(bytes.NewReader(want)) },
		"one-byte": func() *Decoder { return NewDecoder(iotest.OneByteReader(bytes.NewReader(want))) },
		"half":     func() *Decoder { return NewDecoder(iotest.HalfReader(bytes.NewReader(want))) },
		"data-err": func() *Decoder { return NewDecoder(iotest.DataErrReader(bytes.NewReader(want))) },
	} {
		var got Diff
		require.NoError(t, r().Value(&got), name)
		require.Equal(t, d, got, name)
	}
	// Every strict prefix is a truncation.
	for n := range len(want) {
		var got Diff
		require.ErrorIs(t, Unmarshal(want[:n], &got), ErrTruncated, "prefix %d", n)
	}
}

func TestRecordForms(t *testing.T) {
	tests := []struct {
		name string
		v    Encodable
		hex  string
		back func() Decodable
	}{
		{"snap", sn(5, 300), "11 03 05 81 2C 01", func() Decodable { return new(Snap) }},
		{"default snap", DefaultSnap(), "11 03 FF FF", func() Decodable { return new(Snap) }},
		{"dirty comp diff", Diff{SnapB: sn(1, 2), SnapE: sn(3, 4), CompDiff: true, DataSize: 4096},
			"12 03 00 01 00 11 03 01 02 11 03 03 04 81 00 10", func() Decodable { return new(Diff) }},
		{"state", NewState(sn(7), ts(1500000000)), "13 03 00 82 00 2F 68 59 11 03 07 07 11 03 07 07",
			func() Decodable { return new(State) }},
		{"applying state", NewApplyingState(sn(0, 10), sn(25), time.Time{}),
			"13 03 01 00 11 03 00 0A 11 03 19 19", func() Decodable { return new(State) }},
		{"default state", DefaultState(), "13 03 00 00 11 03 FF FF 11 03 FF FF", func() Decodable { return new(State) }},
		{"lsidgid", LsidGid{Lsid: 1000, Gid: 3, Mergeable: true, Timestamp: ts(1)},
			"14 03 01 01 81 E8 03 03", func() Decodable { return new(LsidGid) }},
		{"default lsidgid", DefaultLsidGid(), "14 03 00 00 FF FF", func() Decodable { return new(LsidGid) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			b, err := Marshal(tc.v)
			require.NoError(t, err)
			require.Equal(t, unhex(t, tc.hex), b)
			back := tc.back()
			require.NoError(t, Unmarshal(b, back))
			b2, err := Marshal(back.(Encodable))
			require.NoError(t, err)
			require.Equal(t, b, b2)
		})
	}
}

func TestDecodeRejectsInvalid(t *testing.T) {
	tests := []struct {
		name string
		hex  string
		v    Decodable
		want error
	}{
		{"wrong preamble", "12 03 05 05", new(Snap), ErrPreamble},
		{"snap gidB > gidE", "11 03 05 04", new(Snap), ErrInvalid},
		{"diff no progress", "12 03 00 00 00 11 03 05 05 11 03 05 05 00", new(Diff), ErrInvalid},
		{"diff gidE goes back", "12 03 00 00 00 11 03 01 09 11 03 05 05 00", new(Diff), ErrInvalid},
		{"diff bad bool", "12 03 02 00 00 11 03 01 01 11 03 05 05 00", new(Diff), ErrBadBool},
		{"diff timestamp beyond 9999", "12 03 00 00 83 00 00 00 00 00 00 00 01 11 03 01 01 11 03 05 05 00", new(Diff), ErrInvalid},
		{"applying state without progress", "13 03 01 00 11 03 05 05 11 03 05 05", new(State), ErrInvalid},
		{"lsidgid with diff preamble", "12 03 00 00 00 00", new(LsidGid), ErrPreamble},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			require.ErrorIs(t, Unmarshal(unhex(t, tc.hex), tc.v), tc.want)
		})
	}
	// Encoding refuses the same values.
	_, err := Marshal(df(sn(5), sn(5)))
	require.ErrorIs(t, err, ErrInvalid)
	_, err = Marshal(Snap{5, 4})
	require.ErrorIs(t, err, ErrInvalid)
	_, err = Marshal(LsidGid{Timestamp: time.Date(1960, 1, 1, 0, 0, 0, 0, time.UTC)})
	require.ErrorIs(t, err, ErrInvalid)
}

func TestStringForms(t *testing.T) {
	require.Equal(t, "|10|", sn(10).String())
	require.Equal(t, "|10,12|", sn(10, 12).String())
	d := Diff{SnapB: sn(10), SnapE: sn(20), Mergeable: true, Timestamp: ts(1500000000), DataSize: 123}
	require.Equal(t, "|10|-->|20|", d.String())
	require.Equal(t, "|10|-->|20| M- 2017-07-14T02:40:00 123", d.Listing())
	c := Diff{SnapB: sn(10, 12), SnapE: sn(20, 25), CompDiff: true}
	require.Equal(t, "|10,12|-->|20,25| -C --- 0", c.Listing())
	require.Equal(t, "<|5|>", NewState(sn(5), time.Time{}).String())
	st := NewApplyingState(sn(0, 10), sn(25), ts(1500000000))
	require.Equal(t, "<|0,10|-->|25|>", st.String())
	require.Equal(t, "<|0,10|-->|25|>-20170714024000", st.StringTs())
	require.Equal(t, "LsidGid timestamp --- isMergeable 0 lsid 18446744073709551615 gid 18446744073709551615",
		DefaultLsidGid().String())
	require.Equal(t, "LsidGid timestamp 2017-07-14T02:40:00 isMergeable 1 lsid 5 gid 6",
		LsidGid{Lsid: 5, Gid: 6, Mergeable: true, Timestamp: ts(1500000000)}.String())
	require.Equal(t, "too-old-diff", TooOld.String())
	require.Equal(t, "too-new-diff", TooNew.String())
	require.Equal(t, "applicable-diff", Applicable.String())
	require.Equal(t, "not-applicable-diff", NotApplicable.String())
}

func TestParseSnapState(t *testing.T) {
	for _, s := range []Snap{sn(0), sn(100), sn(5, 10), DefaultSnap()} {
		p, err := ParseSnap(s.String())
		require.NoError(t, err)
		require.Equal(t, s, p)
	}
	for _, st := range []State{
		NewState(sn(100), ts(1500000000)),
		NewState(sn(100, 200), ts(1500000000)),
		NewApplyingState(sn(100), sn(300), ts(1500000000)),
		NewApplyingState(sn(100), sn(300, 400), ts(1500000000)),
		NewApplyingState(sn(100, 200), sn(300), ts(1500000000)),
		NewApplyingState(sn(100, 200), sn(300, 400), ts(1500000000)),
	} {
		p, err := ParseState(st.StringTs())
		require.NoError(t, err)
		require.True(t, st.Equal(p), "%s vs %s", st, p)
		require.Equal(t, st.Timestamp, p.Timestamp)
		p, err = ParseState(st.String())
		require.NoError(t, err)
		require.True(t, st.Equal(p))
		require.True(t, p.Timestamp.IsZero())
	}
	for _, bad := range []string{"", "|", "||", "|a|", "|1,|", "|5,4|", "|1|x", "|-1|", "| 1|", "|1,2,3|",
		"|99999999999999999999|"} {
		_, err := ParseSnap(bad)
		require.Error(t, err, bad)
	}
	for _, bad := range []string{"<|1|", "|1|>", "<|1|->|2|>", "<|5|-->|5|>", "<|1|>-2017", "<|1|>x20170714024000",
		"<|1|>-20171314024000", "<|1|-->|2|>-"} {
		_, err := ParseState(bad)
		require.Error(t, err, bad)
	}
}

func TestValidate(t *testing.T) {
	require.NoError(t, sn(3).Validate())
	require.NoError(t, DefaultSnap().Validate())
	require.ErrorIs(t, sn(4, 3).Validate(), ErrInvalid)
	valid := []Diff{df(sn(0), sn(1)), df(sn(0, 5), sn(1, 5)), df(sn(0, 5), sn(10)), df(sn(3), sn(4, 9))}
	for _, d := range valid {
		require.NoError(t, d.Validate(), d.String())
	}
	invalid := []Diff{
		df(sn(1), sn(1)),       // no progress
		df(sn(2), sn(1)),       // backwards
		df(sn(0, 9), sn(5)),    // gidE goes back
		df(sn(0, 9), sn(5, 8)), // gidE goes back
		df(Snap{3, 2}, sn(5)),  // bad snapshot
		df(sn(1), Snap{6, 5}),  // bad snapshot
		{SnapB: sn(1), SnapE: sn(2), Timestamp: MaxTimestamp.Add(time.Second)},
	}
	for _, d := range invalid {
		require.ErrorIs(t, d.Validate(), ErrInvalid, d.String())
	}
	require.NoError(t, NewApplyingState(sn(0), sn(1), time.Time{}).Validate())
	require.ErrorIs(t, NewApplyingState(sn(1), sn(1), time.Time{}).Validate(), ErrInvalid)
	require.ErrorIs(t, NewApplyingState(sn(2), sn(1), time.Time{}).Validate(), ErrInvalid)
	require.True(t, sn(4).IsClean())
	require.True(t, sn(4, 5).IsDirty())
	require.True(t, df(sn(1), sn(2)).IsClean())
	require.True(t, df(sn(1), sn(2, 3)).IsDirty())
	require.True(t, df(sn(1, 2), sn(3)).IsDirty())
}

func TestEquality(t *testing.T) {
	a := Diff{SnapB: sn(1), SnapE: sn(2), Mergeable: true, Timestamp: ts(5), DataSize: 7}
	require.True(t, a.Equal(CleanDiff(1, 2)), "flags, time and size are not part of equality")
	require.False(t, a.Equal(CleanDiff(1, 3)))
	s1 := NewState(sn(3), ts(1))
	s2 := NewState(sn(3), ts(2))
	s2.SnapE = sn(9) // ignored while not applying
	require.True(t, s1.Equal(s2))
	require.False(t, NewApplyingState(sn(3), sn(5), time.Time{}).Equal(NewApplyingState(sn(3), sn(6), time.Time{})))
	require.False(t, s1.Equal(NewApplyingState(sn(3), sn(5), time.Time{})))
}

func TestTimeForms(t *testing.T) {
	require.Equal(t, "19700101000000", FormatCompactTime(time.Time{}))
	require.Equal(t, "20170714024000", FormatCompactTime(ts(1500000000)))
	require.Equal(t, "---", FormatPrettyTime(time.Time{}))
	require.Equal(t, "---", FormatPrettyTime(ts(0)))
	require.Equal(t, "2017-07-14T02:40:00", FormatPrettyTime(ts(1500000000).In(time.FixedZone("x", 3600))))
	p, err := ParseCompactTime("20170714024000")
	require.NoError(t, err)
	require.Equal(t, ts(1500000000), p)
	p, err = ParseCompactTime("19700101000000")
	require.NoError(t, err)
	require.True(t, p.IsZero())
	p, err = ParseCompactTime("99991231235959")
	require.NoError(t, err)
	require.Equal(t, MaxTimestamp, p)
	for _, bad := range []string{"2017071402400", "201707140240000", "2017071402400a", "20170230000000",
		"20171301000000", "20170714246000", "19691231235959", "+0170714024000", "2017 714024000"} {
		_, err := ParseCompactTime(bad)
		require.ErrorIs(t, err, ErrBadText, bad)
	}
}

func BenchmarkDiffMarshal(b *testing.B) {
	d := Diff{SnapB: sn(1000, 2000), SnapE: sn(300000), Mergeable: true, Timestamp: ts(1500000000), DataSize: 1 << 30}
	enc, _ := Marshal(d)
	b.SetBytes(int64(len(enc)))
	for b.Loop() {
		if _, err := Marshal(d); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDiffUnmarshal(b *testing.B) {
	d := Diff{SnapB: sn(1000, 2000), SnapE: sn(300000), Mergeable: true, Timestamp: ts(1500000000), DataSize: 1 << 30}
	enc, _ := Marshal(d)
	b.SetBytes(int64(len(enc)))
	var got Diff
	for b.Loop() {
		if err := Unmarshal(enc, &got); err != nil {
			b.Fatal(err)
		}
	}
}
