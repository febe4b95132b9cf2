package meta

import (
	"bytes"
	"encoding/hex"
	"io"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/pkg/errors"
	"github.com/stretchr/testify/require"
)

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(strings.ReplaceAll(s, " ", ""))
	require.NoError(t, err)
	return b
}

// encodeKind and decodeKind run the typed Encoder/Decoder methods for a kind.
func encodeKind(e *Encoder, k intKind, x uint64) error {
	switch k {
	case kindU32:
		return e.U32(uint32(x))
	case kindI32:
		return e.I32(int32(x))
	case kindU64:
		return e.U64(x)
	default:
		return e.I64(int64(x))
	}
}

func decodeKind(d *Decoder, k intKind) (uint64, error) {
	switch k {
	case kindU32:
		v, err := d.U32()
		return uint64(v), err
	case kindI32:
		v, err := d.I32()
		return uint64(int64(v)), err
	case kindU64:
		return d.U64()
	default:
		v, err := d.I64()
		return uint64(v), err
	}
}

var kindNames = map[intKind]string{kindU32: "u32", kindI32: "i32", kindU64: "u64", kindI64: "i64"}

// formats.md §9 examples, plus cases derived from its rules (marked).
func TestVarintExamples(t *testing.T) {
	neg := func(v int64) uint64 { return uint64(v) }
	tests := []struct {
		kind intKind
		x    uint64 // normalized for kind
		hex  string
	}{
		// Spec examples.
		{kindU64, 0, "00"},
		{kindU64, 127, "7F"},
		{kindU64, 128, "80 80"},
		{kindU64, 256, "81 00 01"},
		{kindU64, 65536, "82 00 00 01 00"},
		{kindU64, 1 << 32, "83 00 00 00 00 01 00 00 00"},
		{kindU64, math.MaxUint64, "FF"},
		{kindU64, math.MaxUint64 - 127, "84 80"},
		{kindI32, neg(-200), "85 38 FF"},
		// The same values in the other kinds they fit.
		{kindU32, 0, "00"}, {kindI32, 0, "00"}, {kindI64, 0, "00"},
		{kindU32, 127, "7F"}, {kindI64, 128, "80 80"}, {kindI32, 256, "81 00 01"},
		{kindU32, 65536, "82 00 00 01 00"}, {kindI64, 1 << 32, "83 00 00 00 00 01 00 00 00"},
		{kindI64, neg(-200), "85 38 FF"},
		// Derived: header-valued bytes need the 84 escape.
		{kindI64, neg(-128), "84 80"},
		{kindI64, neg(-121), "84 87"},
		{kindI64, neg(-120), "88"},
		{kindI64, neg(-1), "FF"},
		{kindU64, 0x84, "80 84"},
		{kindU64, 255, "80 FF"},
		{kindI64, neg(-129), "85 7F FF"},
		{kindU64, 0xFFFF, "81 FF FF"},
		{kindU64, 0x10000, "82 00 00 01 00"},
		{kindU64, 0xFFFFFFFF, "82 FF FF FF FF"},
		// Derived: the declared type decides (C++ converts back to T).
		{kindU32, 0xFFFFFFFF, "FF"},
		{kindU32, 0xFFFFFF80, "84 80"},
		{kindU32, 4294967096, "85 38 FF"},
		{kindI32, neg(math.MinInt32), "82 00 00 00 80"},
		{kindI32, math.MaxInt32, "82 FF FF FF 7F"},
		{kindI64, neg(math.MinInt32), "86 00 00 00 80"},
		{kindU64, neg(math.MinInt32), "86 00 00 00 80"},
		{kindI64, neg(math.MinInt64), "83 00 00 00 00 00 00 00 80"},
		{kindI64, math.MaxInt64, "83 FF FF FF FF FF FF FF 7F"},
		{kindU64, 1 << 63, "83 00 00 00 00 00 00 00 80"},
	}
	for _, tc := range tests {
		name := kindNames[tc.kind] + "/" + tc.hex
		t.Run(name, func(t *testing.T) {
			want := unhex(t, tc.hex)
			var b bytes.Buffer
			require.NoError(t, encodeKind(NewEncoder(&b), tc.kind, tc.x))
			require.Equal(t, want, b.Bytes())
			d := NewDecoder(bytes.NewReader(want))
			got, err := decodeKind(d, tc.kind)
			require.NoError(t, err)
			require.Equal(t, tc.x, got)
			require.EqualValues(t, len(want), d.Offset())
		})
	}
}

func TestVarintRejects(t *testing.T) {
	tests := []struct {
		name string
		kind intKind
		hex  string
		want error
	}{
		{"empty", kindU64, "", ErrTruncated},
		{"u8 payload missing", kindU64, "80", ErrTruncated},
		{"u16 payload short", kindU64, "81 00", ErrTruncated},
		{"u32 payload short", kindU32, "82 00 00 00", ErrTruncated},
		{"u64 payload short", kindU64, "83 00 00 00 00 00 00 00", ErrTruncated},
		{"small in u8 form", kindU64, "80 05", ErrOverlong},
		{"small in i8 form", kindU64, "84 05", ErrOverlong},
		{"u8 value in u16 form", kindU64, "81 FF 00", ErrOverlong},
		{"u16 value in u32 form", kindU64, "82 00 01 00 00", ErrOverlong},
		{"u32 value in u64 form", kindU64, "83 01 00 00 00 00 00 00 00", ErrOverlong},
		{"i16 value in i32 form", kindI64, "86 38 FF FF FF", ErrOverlong},
		{"i64 form never canonical", kindI64, "87 00 00 00 00 00 00 00 80", ErrOverlong},
		{"u64 form for u32", kindU32, "83 00 00 00 00 01 00 00 00", ErrIntRange},
		{"i64 form for i32", kindI32, "87 00 00 00 00 00 00 00 80", ErrIntRange},
		{"u32 max written as u64", kindU32, "82 FF FF FF FF", ErrOverlong},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			d := NewDecoder(bytes.NewReader(unhex(t, tc.hex)))
			_, err := decodeKind(d, tc.kind)
			require.ErrorIs(t, err, tc.want)
			_, err2 := d.U8()
			require.Equal(t, err, err2, "errors are sticky")
		})
	}
}

func TestTruncatedMatchesReaderError(t *testing.T) {
	_, err := NewDecoder(bytes.NewReader(nil)).U64()
	require.ErrorIs(t, err, ErrTruncated)
	require.ErrorIs(t, err, io.EOF)
	_, err = NewDecoder(bytes.NewReader([]byte{0x81, 0})).U64()
	require.ErrorIs(t, err, ErrTruncated)
	require.ErrorIs(t, err, io.ErrUnexpectedEOF)
	require.Contains(t, err.Error(), "offset 1")
}

// randKindValue returns a normalized value of k, biased to size boundaries.
func randKindValue(r *rand.Rand, k intKind) uint64 {
	var v uint64
	switch r.IntN(4) {
	case 0:
		v = r.Uint64()
	case 1:
		v = uint64(r.Int64N(512) - 256)
	default:
		sh := r.IntN(64)
		v = uint64(1)<<sh + uint64(r.IntN(3)) - 1
		if r.IntN(2) == 0 {
			v = -v
		}
	}
	return normalize(v, k)
}

func TestVarintRoundTripRandom(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 11))
	for _, k := range []intKind{kindU32, kindI32, kindU64, kindI64} {
		for range 20000 {
			x := randKindValue(r, k)
			enc := appendVarint(nil, x, k)
			// The length is that of the narrowest form that keeps x.
			switch {
			case survives(x, k, 8, true):
				require.LessOrEqual(t, len(enc), 2)
			case survives(x, k, 8, false):
				require.Len(t, enc, 2)
			case survives(x, k, 16, false) || survives(x, k, 16, true):
				require.Len(t, enc, 3)
			case survives(x, k, 32, false) || survives(x, k, 32, true):
				require.Len(t, enc, 5)
			default:
				require.Len(t, enc, 9)
				require.Equal(t, 64, k.bits)
			}
			d := NewDecoder(bytes.NewReader(enc))
			got, err := decodeKind(d, k)
			require.NoError(t, err, "% x", enc)
			require.Equal(t, x, got)
		}
	}
}

func TestFixedAndStrings(t *testing.T) {
	var b bytes.Buffer
	e := NewEncoder(&b)
	u := UUID{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}
	require.NoError(t, e.Bool(true))
	require.NoError(t, e.Bool(false))
	require.NoError(t, e.U8(0xAB))
	require.NoError(t, e.U16(0x0312))
	require.NoError(t, e.String("abc"))
	require.NoError(t, e.Bytes(nil))
	require.NoError(t, e.Strings([]string{"get", "diff", ""}))
	require.NoError(t, e.UUID(u))
	require.NoError(t, e.Raw([]byte{9, 9}))
	want := unhex(t, "01 00 AB 12 03 03 616263 00 03 03676574 0464696666 00"+
		"0102030405060708090a0b0c0d0e0f10 0909")
	require.Equal(t, want, b.Bytes())
	require.EqualValues(t, len(want), e.Len())

	for name, r := range map[string]io.Reader{
		"plain":    bytes.NewReader(want),
		"one-byte": iotest.OneByteReader(bytes.NewReader(want)),
		"half":     iotest.HalfReader(bytes.NewReader(want)),
		"data-err": iotest.DataErrReader(bytes.NewReader(want)),
	} {
		t.Run(name, func(t *testing.T) {
			d := NewDecoder(r)
			v1, _ := d.Bool()
			v2, _ := d.Bool()
			v3, _ := d.U8()
			v4, _ := d.U16()
			s, _ := d.String(3)
			bs, _ := d.Bytes(0)
			sv, _ := d.Strings(3, 4)
			gu, _ := d.UUID()
			raw := make([]byte, 2)
			require.NoError(t, d.Raw(raw))
			require.NoError(t, d.Err())
			require.Equal(t, true, v1)
			require.Equal(t, false, v2)
			require.Equal(t, uint8(0xAB), v3)
			require.Equal(t, uint16(0x0312), v4)
			require.Equal(t, "abc", s)
			require.Empty(t, bs)
			require.Equal(t, []string{"get", "diff", ""}, sv)
			require.Equal(t, [16]byte(u), gu)
			require.Equal(t, []byte{9, 9}, raw)
			require.EqualValues(t, len(want), d.Offset())
		})
	}
}

func TestDecoderLimitsAndErrors(t *testing.T) {
	_, err := NewDecoder(bytes.NewReader(unhex(t, "02"))).Bool()
	require.ErrorIs(t, err, ErrBadBool)

	_, err = NewDecoder(bytes.NewReader(unhex(t, "04 61626364"))).String(3)
	require.ErrorIs(t, err, ErrTooLong)

	// A hostile length is refused before anything is allocated for it.
	_, err = NewDecoder(bytes.NewReader(unhex(t, "83 00 00 00 00 00 00 00 01"))).Bytes(1 << 20)
	require.ErrorIs(t, err, ErrTooLong)

	// A length within the limit but past the data is a truncation.
	_, err = NewDecoder(bytes.NewReader(unhex(t, "82 00 00 10 00 61"))).Bytes(1 << 21)
	require.ErrorIs(t, err, ErrTruncated)

	_, err = NewDecoder(bytes.NewReader(unhex(t, "05"))).Strings(4, 10)
	require.ErrorIs(t, err, ErrTooLong)

	// Reader errors other than EOF pass through, wrapped, and stick.
	d := NewDecoder(iotest.TimeoutReader(bytes.NewReader(unhex(t, "05 06"))))
	v, err := d.U64()
	require.NoError(t, err)
	require.Equal(t, uint64(5), v)
	_, err = d.U64()
	require.ErrorIs(t, err, iotest.ErrTimeout)
	require.NotErrorIs(t, err, ErrTruncated)
	_, err2 := d.U16()
	require.Equal(t, err, err2)

	_, err = NewDecoder(iotest.ErrReader(errors.New("boom"))).U8()
	require.EqualError(t, errors.Cause(err), "boom")
}

type failWriter struct{ n int }

func (w *failWriter) Write(p []byte) (int, error) {
	if w.n <= 0 {
		return 0, errors.New("disk full")
	}
	w.n--
	return len(p), nil
}

func TestEncoderStickyError(t *testing.T) {
	e := NewEncoder(&failWriter{n: 1})
	require.NoError(t, e.U64(1))
	err := e.U64(2)
	require.Error(t, err)
	require.Equal(t, err, e.String("x"))
	require.Equal(t, err, e.Err())
	require.Equal(t, err, e.Value(CleanSnap(1)))
}

func TestUnmarshalTrailing(t *testing.T) {
	b, err := Marshal(CleanSnap(10))
	require.NoError(t, err)
	var s Snap
	require.ErrorIs(t, Unmarshal(append(b, 0), &s), ErrTrailingData)
	require.NoError(t, Unmarshal(b, &s))
	require.Equal(t, CleanSnap(10), s)
}

func TestUUIDText(t *testing.T) {
	u := UUID{0xeb, 0xc6, 0x86, 0x79, 0x8d, 0x6f, 0x41, 0x4c, 0x41, 0x03, 0xa9, 0x38, 0xfb, 0xd3, 0xb6, 0x74}
	require.Equal(t, "ebc686798d6f414c4103a938fbd3b674", u.String())
	p, err := ParseUUID("EBC686798D6F414C4103A938FBD3B674")
	require.NoError(t, err)
	require.Equal(t, u, p)
	for _, bad := range []string{"", "ebc686", "zzc686798d6f414c4103a938fbd3b674", "ebc686798d6f414c4103a938fbd3b67400"} {
		_, err := ParseUUID(bad)
		require.ErrorIs(t, err, ErrBadText, bad)
	}
	n1, err := NewUUID()
	require.NoError(t, err)
	n2, err := NewUUID()
	require.NoError(t, err)
	require.NotEqual(t, n1, n2)
	require.False(t, n1.IsZero())
	require.True(t, UUID{}.IsZero())
	b, err := Marshal(u)
	require.NoError(t, err)
	require.Equal(t, u[:], b)
	var back UUID
	require.NoError(t, Unmarshal(b, &back))
	require.Equal(t, u, back)
}

func BenchmarkVarintEncode(b *testing.B) {
	e := NewEncoder(io.Discard)
	vals := []uint64{0, 127, 300, 70000, 1 << 40, math.MaxUint64}
	b.SetBytes(int64(len(vals)))
	for b.Loop() {
		for _, v := range vals {
			e.U64(v)
		}
	}
}

func BenchmarkVarintDecode(b *testing.B) {
	var buf []byte
	for _, v := range []uint64{0, 127, 300, 70000, 1 << 40, math.MaxUint64} {
		buf = appendVarint(buf, v, kindU64)
	}
	r := bytes.NewReader(buf)
	b.SetBytes(int64(len(buf)))
	for b.Loop() {
		r.Reset(buf)
		d := NewDecoder(r)
		for range 6 {
			if _, err := d.U64(); err != nil {
				b.Fatal(err)
			}
		}
	}
}
