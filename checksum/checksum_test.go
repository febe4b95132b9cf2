package checksum

import (
	"encoding/binary"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"
)

// Worked examples from formats.md section 4.
func TestSumExamples(t *testing.T) {
	seq := make([]byte, 16)
	for i := range seq {
		seq[i] = byte(i)
	}
	zeroed := append([]byte(nil), seq...)
	copy(zeroed[:4], []byte{0, 0, 0, 0})
	tests := []struct {
		name string
		in   []byte
		salt uint32
		want uint32
	}{
		{"seq16", seq, 0, 0xDBDFE3E8},
		{"seq16-salt", seq, 0x12345678, 0xC9AB8D70},
		{"zeroed-field", zeroed, 0x12345678, 0xCCAD8E70},
		{"partial-word", []byte{1, 2, 3, 4, 5}, 0, 0xFBFCFDFA},
		{"empty", nil, 0, 0},
		{"empty-salt", nil, 7, 0xFFFFFFF9},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, Sum(tc.in, tc.salt))
		})
	}
}

func TestStoreMakesValid(t *testing.T) {
	b := make([]byte, 16)
	for i := range b {
		b[i] = byte(i)
	}
	Store(b, 0, 0x12345678)
	require.Equal(t, []byte{0x70, 0x8E, 0xAD, 0xCC}, b[:4])
	require.True(t, Valid(b, 0x12345678))
	b[9] ^= 1
	require.False(t, Valid(b, 0x12345678))
}

// naive is the word-at-a-time definition, used as the property-test oracle.
func naive(b []byte, salt uint32) uint32 {
	s := salt
	for len(b) >= 4 {
		s += binary.LittleEndian.Uint32(b)
		b = b[4:]
	}
	if len(b) > 0 {
		var w [4]byte
		copy(w[:], b)
		s += binary.LittleEndian.Uint32(w[:])
	}
	return -s
}

func TestSumMatchesNaive(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := 0; i < 2000; i++ {
		b := make([]byte, r.IntN(300))
		for j := range b {
			b[j] = byte(r.Uint32())
		}
		salt := r.Uint32()
		require.Equal(t, naive(b, salt), Sum(b, salt), "len %d", len(b))
		// Incremental use split on a word boundary gives the same result.
		cut := (r.IntN(len(b)+1) / 4) * 4
		require.Equal(t, Sum(b, salt), Finish(Add(Add(salt, b[:cut]), b[cut:])))
	}
}

func BenchmarkSum(b *testing.B) {
	buf := make([]byte, 1<<20)
	b.SetBytes(int64(len(buf)))
	for b.Loop() {
		Sum(buf, 1)
	}
}
