package wdiff

import (
	"bytes"
	"encoding/binary"
	"io"
	"math/rand/v2"
	"strconv"
	"testing"

	"github.com/pkg/errors"
	"github.com/stretchr/testify/require"
	"github.com/walb-go/walb/checksum"
)

// blockMap flattens records into per-block content: nil for a missing
// block, a one-byte marker slice for all-zero ('Z') or discard ('D'), else
// the block's data.
func blockMap(ios []IO) map[uint64][]byte {
	m := map[uint64][]byte{}
	for _, x := range ios {
		for i := uint64(0); i < uint64(x.Blocks); i++ {
			switch {
			case x.IsNormal():
				m[x.Addr+i] = x.Data[i*LogicalBlockSize : (i+1)*LogicalBlockSize]
			case x.IsAllZero():
				m[x.Addr+i] = []byte{'Z'}
			default:
				m[x.Addr+i] = []byte{'D'}
			}
		}
	}
	return m
}

// indexedCase is an indexed file written from IOs whose images are all
// written first; the index then exposes sub-ranges of some images, as
// overlap removal does.
func writeIndexedCase(t *testing.T, rng *rand.Rand, c Compression, maxIO uint32) ([]byte, []IO) {
	t.Helper()
	maxBlocks := 128
	if c.Codec == CodecLZMA {
		maxBlocks = 24 // the pure-Go xz encoder runs at a few MB/s
	}
	ios := randomIOs(rng, 80, maxBlocks)
	var buf bytes.Buffer
	w, err := NewIndexedWriter(&buf, FileHeader{UUID: testUUID}, c)
	require.NoError(t, err)
	w.MaxIOBlocks = maxIO
	imgs := make([]Image, len(ios))
	nonNormalOff := make([]uint64, len(ios))
	for i, x := range ios {
		if x.IsNormal() {
			imgs[i], err = w.WriteImage(x.Data)
			require.NoError(t, err)
			require.EqualValues(t, x.Blocks, imgs[i].OrigBlocks)
		} else {
			nonNormalOff[i] = w.Offset()
		}
	}
	_, err = w.WriteImage(nil)
	require.True(t, errors.Is(err, ErrInvalid))
	var want []IO
	for i, x := range ios {
		if !x.IsNormal() {
			require.NoError(t, w.WriteIndex(x.Record, Image{Offset: nonNormalOff[i]}, 0))
			want = append(want, x)
			continue
		}
		// Expose either the whole image or the two ends of it with a hole,
		// as walb-tools' overlap removal leaves them.
		if x.Blocks < 3 || rng.IntN(3) != 0 {
			require.NoError(t, w.WriteIndex(x.Record, imgs[i], 0))
			want = append(want, x)
			continue
		}
		cut := uint32(1 + rng.IntN(int(x.Blocks)-2))
		head := IO{Record: Record{Addr: x.Addr, Blocks: cut}, Data: x.Data[:cut*LogicalBlockSize]}
		tail := IO{Record: Record{Addr: x.Addr + uint64(cut) + 1, Blocks: x.Blocks - cut - 1}, Data: x.Data[(cut+1)*LogicalBlockSize:]}
		require.NoError(t, w.WriteIndex(head.Record, imgs[i], 0))
		require.NoError(t, w.WriteIndex(tail.Record, imgs[i], cut+1))
		want = append(want, head, tail)
	}
	require.NoError(t, w.Close())
	return buf.Bytes(), want
}

// TestIndexedRoundTrip writes and reads indexed files with every codec and
// several piece caps (spec 7.2).
func TestIndexedRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(21, 22))
	for _, c := range allCodecs {
		for _, maxIO := range []uint32{0, DefaultMaxIOBlocks, 100, 1} {
			if c == CodecLZMA && maxIO != DefaultMaxIOBlocks {
				continue // slow codec
			}
			t.Run(c.String()+"/max="+strconv.Itoa(int(maxIO)), func(t *testing.T) {
				b, want := writeIndexedCase(t, rng, Compression{Codec: c}, maxIO)
				r, err := NewIndexedReader(bytes.NewReader(b), int64(len(b)))
				require.NoError(t, err)
				require.Equal(t, FileHeader{Type: TypeIndexed, UUID: testUUID}, r.Header())
				got := readAllIOs(t, r)
				require.Len(t, got, r.NIndex())
				limit := uint32(1 << 31)
				if maxIO > 0 {
					limit = uint32(1) << (bitsLen32(maxIO) - 1)
				}
				for _, x := range got {
					require.Zero(t, x.Blocks&(x.Blocks-1), "piece not a power of two")
					require.Zero(t, x.Addr%uint64(x.Blocks), "piece not aligned")
					require.LessOrEqual(t, x.Blocks, limit)
				}
				require.Equal(t, blockMap(want), blockMap(got))
				_, err = r.Next()
				require.Equal(t, io.EOF, err)
				// Through Open's detection as well.
				got2, err := readAllFromBytes(b)
				require.NoError(t, err)
				requireSameIOs(t, got, got2)
			})
		}
	}
}

func bitsLen32(v uint32) int {
	n := 0
	for v != 0 {
		v >>= 1
		n++
	}
	return n
}

// TestIndexedWriterRules covers phase and argument checks.
func TestIndexedWriterRules(t *testing.T) {
	var buf bytes.Buffer
	w, err := NewIndexedWriter(&buf, FileHeader{}, Compression{Codec: CodecNone})
	require.NoError(t, err)
	img, err := w.WriteImage(make([]byte, 4096))
	require.NoError(t, err)
	require.Equal(t, Image{Offset: 32, Size: 4096, Codec: CodecNone, Checksum: checksum.Sum(make([]byte, 4096), 0), OrigBlocks: 8}, img)
	_, err = w.WriteImage(make([]byte, 100))
	require.True(t, errors.Is(err, ErrInvalid))
	require.True(t, errors.Is(w.WriteIndex(Record{Addr: 0, Blocks: 4}, img, 5), ErrInvalid), "beyond the image")
	require.True(t, errors.Is(w.WriteIndex(Record{Addr: 0, Blocks: 4}, Image{Offset: 1 << 20, Size: 10, OrigBlocks: 8}, 0), ErrInvalid))
	require.NoError(t, w.WriteIndex(Record{Addr: 8, Blocks: 8}, img, 0))
	require.True(t, errors.Is(w.WriteIndex(Record{Addr: 15, Blocks: 1, Flags: FlagDiscard}, img, 0), ErrUnsorted))
	_, err = w.WriteImage(make([]byte, 512))
	require.True(t, errors.Is(err, ErrClosed), "images after the index")
	require.NoError(t, w.WriteIndex(Record{Addr: 16, Blocks: 4096, Flags: FlagDiscard}, Image{}, 0))
	require.NoError(t, w.Close())
	require.True(t, errors.Is(w.WriteIndex(Record{Addr: 1 << 30, Blocks: 1, Flags: FlagAllZero}, Image{}, 0), ErrClosed))
	r, err := NewIndexedReader(bytes.NewReader(buf.Bytes()), int64(buf.Len()))
	require.NoError(t, err)
	// 8+8, then 16+4096 split at the default cap of 2048: 16,32,64,...,1024 then 2048 and the rest.
	var sizes []uint32
	for {
		ir, err := r.NextRaw()
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
		sizes = append(sizes, ir.Blocks)
		if !ir.IsNormal() {
			require.Equal(t, ir.Addr-16, uint64(ir.IOOffset), "io_offset follows the piece")
		}
	}
	require.Equal(t, []uint32{8, 16, 32, 64, 128, 256, 512, 1024, 2048, 16}, sizes)
	require.EqualValues(t, 2, r.Super().NData)
	require.EqualValues(t, 32+4096, r.Super().IndexOffset)
}

// TestIndexedEmpty checks a file without records: header, super only.
func TestIndexedEmpty(t *testing.T) {
	var buf bytes.Buffer
	w, err := NewIndexedWriter(&buf, FileHeader{}, DefaultCompression)
	require.NoError(t, err)
	require.NoError(t, w.Close())
	require.Equal(t, FileHeaderSize+IndexSuperSize, buf.Len())
	got, err := readAllFromBytes(buf.Bytes())
	require.NoError(t, err)
	require.Empty(t, got)
}

// craftIndexed builds an indexed file from raw image bytes and index
// records (record checksums computed unless keepCsum).
func craftIndexed(data []byte, recs []IndexRecord, keepCsum bool) []byte {
	b := make([]byte, FileHeaderSize, 4096)
	FileHeader{Type: TypeIndexed}.encode(b)
	b = append(b, data...)
	for len(b)%8 != 0 {
		b = append(b, 0)
	}
	idx := uint64(len(b))
	for _, r := range recs {
		var rb [IndexRecordSize]byte
		csum := r.RecChecksum
		r.encode(rb[:])
		if keepCsum {
			binary.LittleEndian.PutUint32(rb[44:], csum)
		}
		b = append(b, rb[:]...)
	}
	var sb [IndexSuperSize]byte
	IndexSuper{IndexOffset: idx, NRecords: uint32(len(recs)), NData: 1}.encode(sb[:])
	return append(b, sb[:]...)
}

// TestIndexedReaderValidation feeds files that are well formed but for one
// rule each.
func TestIndexedReaderValidation(t *testing.T) {
	img := make([]byte, 1024)
	img[600] = 9
	cs := checksum.Sum(img, 0)
	norm := func(addr uint64, blocks, ioOff uint32) IndexRecord {
		return IndexRecord{Record: Record{Addr: addr, Blocks: blocks}, DataOffset: 32, DataSize: 1024, OrigBlocks: 2, IOOffset: ioOff, IOChecksum: cs}
	}
	tests := []struct {
		name string
		recs []IndexRecord
		err  error
	}{
		{"ok", []IndexRecord{norm(0, 1, 0), norm(1, 1, 1)}, nil},
		{"io_offset", []IndexRecord{norm(0, 2, 1)}, ErrCorrupt},
		{"unsorted", []IndexRecord{norm(4, 1, 0), norm(1, 1, 1)}, ErrUnsorted},
		{"overlap", []IndexRecord{norm(0, 2, 0), norm(1, 1, 1)}, ErrUnsorted},
		{"image bounds", []IndexRecord{{Record: Record{Addr: 0, Blocks: 1}, DataOffset: 40, DataSize: 1024, OrigBlocks: 2, IOChecksum: cs}}, ErrCorrupt},
		{"image checksum", []IndexRecord{{Record: Record{Addr: 0, Blocks: 1}, DataOffset: 32, DataSize: 1024, OrigBlocks: 2, IOChecksum: cs + 1}}, ErrChecksum},
		{"codec", []IndexRecord{{Record: Record{Addr: 0, Blocks: 1}, Codec: 7, DataOffset: 32, DataSize: 100, OrigBlocks: 2, IOChecksum: cs}}, ErrUnknownCodec},
		{"zero blocks", []IndexRecord{norm(0, 0, 0)}, ErrCorrupt},
		{"flags", []IndexRecord{{Record: Record{Addr: 0, Blocks: 1, Flags: FlagAllZero | FlagDiscard}}}, ErrCorrupt},
		{"discard with image", []IndexRecord{{Record: Record{Addr: 0, Blocks: 1, Flags: FlagDiscard}, DataSize: 5}}, ErrCorrupt},
		{"decompress", []IndexRecord{{Record: Record{Addr: 0, Blocks: 1}, Codec: CodecSnappy, DataOffset: 32, DataSize: 1024, OrigBlocks: 4, IOChecksum: cs}}, ErrCorrupt},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := readAllFromBytes(craftIndexed(img, tt.recs, false))
			if tt.err == nil {
				require.NoError(t, err)
				return
			}
			require.True(t, errors.Is(err, tt.err), "got %v", err)
			require.Contains(t, err.Error(), "offset")
		})
	}
	t.Run("record checksum", func(t *testing.T) {
		r := norm(0, 1, 0)
		r.RecChecksum = 12345
		_, err := readAllFromBytes(craftIndexed(img, []IndexRecord{r}, true))
		require.True(t, errors.Is(err, ErrChecksum), "%v", err)
	})
	t.Run("super", func(t *testing.T) {
		good := craftIndexed(img, []IndexRecord{norm(0, 1, 0)}, false)
		super := len(good) - IndexSuperSize
		for _, tt := range []struct {
			name  string
			patch func(s []byte)
			err   error
		}{
			{"unaligned", func(s []byte) { binary.LittleEndian.PutUint64(s, 33) }, ErrCorrupt},
			{"beyond", func(s []byte) { binary.LittleEndian.PutUint64(s, uint64(len(good))) }, ErrCorrupt},
			{"count", func(s []byte) { binary.LittleEndian.PutUint32(s[8:], 2) }, ErrCorrupt},
		} {
			b := bytes.Clone(good)
			tt.patch(b[super:])
			checksum.Store(b[super:], 20, 0)
			_, err := readAllFromBytes(b)
			require.True(t, errors.Is(err, tt.err), "%s: %v", tt.name, err)
		}
		b := bytes.Clone(good)
		b[super+3] ^= 1
		_, err := readAllFromBytes(b)
		require.True(t, errors.Is(err, ErrChecksum), "%v", err)
		require.True(t, errors.Is(err, ErrTruncated), "a broken super also reads as truncation: %v", err)
	})
	t.Run("type", func(t *testing.T) {
		b := writeSorted(t, FileHeader{}, DefaultCompression, nil)
		_, err := NewIndexedReader(bytes.NewReader(b), int64(len(b)))
		require.True(t, errors.Is(err, ErrType))
	})
}

// TestIndexedNextStored checks stored access and that shared images are
// read once per run of records.
func TestIndexedNextStored(t *testing.T) {
	rng := rand.New(rand.NewPCG(23, 24))
	b, _ := writeIndexedCase(t, rng, Compression{Codec: CodecZstd}, 8)
	r, err := NewIndexedReader(bytes.NewReader(b), int64(len(b)))
	require.NoError(t, err)
	for {
		ir, st, err := r.NextStored()
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
		if !ir.IsNormal() {
			require.Nil(t, st.Data)
			continue
		}
		require.Equal(t, ir.Codec, st.Codec)
		require.Equal(t, checksum.Sum(st.Data, 0), st.Checksum)
		out, err := Decompress(nil, st.Data, st.Codec, int(ir.OrigBlocks)*LogicalBlockSize)
		require.NoError(t, err)
		require.Len(t, out, int(ir.OrigBlocks)*LogicalBlockSize)
	}
	cr := &countingReaderAt{r: bytes.NewReader(b)}
	r, err = NewIndexedReader(cr, int64(len(b)))
	require.NoError(t, err)
	n := len(readAllIOs(t, r))
	require.Greater(t, n, 150, "the cap of 8 blocks splits records")
	require.Less(t, cr.n, n, "consecutive pieces of an image must share one read")
}

type countingReaderAt struct {
	r io.ReaderAt
	n int
}

func (c *countingReaderAt) ReadAt(p []byte, off int64) (int, error) {
	c.n++
	return c.r.ReadAt(p, off)
}
