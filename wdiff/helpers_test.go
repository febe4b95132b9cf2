package wdiff

import (
	"bytes"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"
)

// readAllIOs reads every record of r, copying the data.
func readAllIOs(t testing.TB, r Reader) []IO {
	t.Helper()
	var out []IO
	for {
		x, err := r.Next()
		if err == io.EOF {
			return out
		}
		require.NoError(t, err)
		if x.Data != nil {
			x.Data = bytes.Clone(x.Data)
		}
		out = append(out, x)
	}
}

// readAllFromBytes opens b with NewReader and reads everything.
func readAllFromBytes(b []byte) ([]IO, error) {
	r, err := NewReader(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		return nil, err
	}
	var out []IO
	for {
		x, err := r.Next()
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		if x.Data != nil {
			x.Data = bytes.Clone(x.Data)
		}
		out = append(out, x)
	}
}

// halfCompressible returns n bytes of which about half compress away:
// blocks of random bytes alternate with runs of a repeated byte.
func halfCompressible(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := 0; i < n; i += 64 {
		end := min(i+64, n)
		if rng.IntN(2) == 0 {
			for j := i; j < end; j++ {
				b[j] = byte(rng.Uint32())
			}
		} else {
			v := byte(rng.Uint32())
			for j := i; j < end; j++ {
				b[j] = v
			}
		}
	}
	return b
}

// randomIOs makes n ascending, non-overlapping records of mixed kinds.
func randomIOs(rng *rand.Rand, n int, maxBlocks int) []IO {
	var out []IO
	addr := uint64(rng.IntN(100))
	for range n {
		addr += uint64(rng.IntN(20))
		blocks := uint32(1 + rng.IntN(maxBlocks))
		x := IO{Record: Record{Addr: addr, Blocks: blocks}}
		switch rng.IntN(10) {
		case 0:
			x.Flags = FlagAllZero
		case 1:
			x.Flags = FlagDiscard
		default:
			x.Data = halfCompressible(rng, int(blocks)*LogicalBlockSize)
		}
		out = append(out, x)
		addr += uint64(blocks)
	}
	return out
}

// writeSorted writes ios into a sorted file image.
func writeSorted(t testing.TB, h FileHeader, c Compression, ios []IO) []byte {
	t.Helper()
	var buf bytes.Buffer
	w, err := NewSortedWriter(&buf, h, c)
	require.NoError(t, err)
	for _, x := range ios {
		require.NoError(t, w.Write(x))
	}
	require.NoError(t, w.Close())
	return buf.Bytes()
}
