package wdiff

import (
	"bytes"
	"io"
	"os"
	"testing"

	"github.com/pkg/errors"
	"github.com/stretchr/testify/require"
	"github.com/walb-go/walb/internal/fixtures"
)

// robustFixtures are small files of both layouts and several codecs.
var robustFixtures = []string{"p512_tiny.wdiff", "p512_tiny.indexed.wdiff", "p512_tiny.cmpr-lzma.wdiff", "p512_tiny.cmpr-zstd.wdiff"}

// storedRec is a record with its stored data, which determines the
// decoded data, so comparing these compares content without paying for
// decompression thousands of times.
type storedRec struct {
	rec      Record
	codec    Codec
	data     []byte
	ioOffset uint32
}

// readAllStored reads every record of a file image in stored form.
func readAllStored(b []byte) ([]storedRec, error) {
	r, err := NewReader(bytes.NewReader(b), int64(len(b)))
	if err != nil {
		return nil, err
	}
	var out []storedRec
	for {
		var sr storedRec
		var st Stored
		switch r := r.(type) {
		case *SortedReader:
			sr.rec, st, err = r.NextStored()
		case *IndexedReader:
			var ir IndexRecord
			ir, st, err = r.NextStored()
			sr.rec, sr.ioOffset = ir.Record, ir.IOOffset
		}
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		sr.codec, sr.data = st.Codec, bytes.Clone(st.Data)
		out = append(out, sr)
	}
}

// TestEveryByteCorruption changes each byte of small fixtures in turn.
// Every structure of both layouts is checksummed, so each change must be
// reported; a read that succeeds must at least return the original
// content. (Decoders facing checksum-valid garbage are FuzzDecompress's
// job.)
func TestEveryByteCorruption(t *testing.T) {
	for _, name := range robustFixtures {
		t.Run(name, func(t *testing.T) {
			orig, err := os.ReadFile(fixtures.Path(t, "wdiff", name))
			require.NoError(t, err)
			want, err := readAllStored(orig)
			require.NoError(t, err)
			b := make([]byte, len(orig))
			undetected := 0
			for i := range orig {
				copy(b, orig)
				b[i] ^= 0xa5
				got, err := readAllStored(b)
				if err == nil {
					undetected++
					require.Equal(t, want, got)
					continue
				}
				require.True(t, errors.Is(err, ErrChecksum) || errors.Is(err, ErrCorrupt) ||
					errors.Is(err, ErrVersion) || errors.Is(err, ErrType) || errors.Is(err, ErrTruncated),
					"byte %d: unexpected error %v", i, err)
			}
			require.Zero(t, undetected, "changes that went unnoticed")
		})
	}
}

// packStarts returns the offsets where a sorted file's pack headers start.
func packStarts(t *testing.T, b []byte) map[int]bool {
	starts := map[int]bool{FileHeaderSize: true}
	off := FileHeaderSize
	for _, p := range packLayout(t, b) {
		off += PackHeaderSize + p[1]
		starts[off] = true
	}
	return starts
}

// TestEveryTruncation cuts small fixtures at every length. The only clean
// ends are where a sorted file's pack header would start (spec 7.1);
// anything else is ErrTruncated.
func TestEveryTruncation(t *testing.T) {
	for _, name := range robustFixtures {
		t.Run(name, func(t *testing.T) {
			orig, err := os.ReadFile(fixtures.Path(t, "wdiff", name))
			require.NoError(t, err)
			want, err := readAllStored(orig)
			require.NoError(t, err)
			sorted := Type(orig[6]) == TypeSorted
			var legal map[int]bool
			if sorted {
				legal = packStarts(t, orig)
			}
			clean := 0
			for n := range len(orig) {
				got, err := readAllStored(orig[:n])
				if err == nil {
					require.True(t, legal[n], "clean end at %d", n)
					require.LessOrEqual(t, len(got), len(want))
					if len(got) > 0 {
						require.Equal(t, want[:len(got)], got)
					}
					clean++
					continue
				}
				require.True(t, errors.Is(err, ErrTruncated), "cut at %d: %v", n, err)
			}
			if sorted {
				require.Equal(t, len(legal), clean, "every pack boundary is a clean end")
			}
		})
	}
}
