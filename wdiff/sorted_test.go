package wdiff

import (
	"bytes"
	"encoding/binary"
	"io"
	"math/rand/v2"
	"strconv"
	"testing"
	"testing/iotest"

	"github.com/pkg/errors"
	"github.com/stretchr/testify/require"
	"github.com/walb-go/walb/checksum"
)

var testUUID = [16]byte{0xeb, 0xc6, 0x86, 0x79, 0x8d, 0x6f, 0x41, 0x4c, 0x41, 0x03, 0xa9, 0x38, 0xfb, 0xd3, 0xb6, 0x74}

// requireSameIOs compares records and data.
func requireSameIOs(t testing.TB, want, got []IO) {
	t.Helper()
	require.Len(t, got, len(want))
	for i := range want {
		require.Equal(t, want[i].Record, got[i].Record, "record %d", i)
		require.True(t, bytes.Equal(want[i].Data, got[i].Data), "data of record %d", i)
	}
}

// TestSortedRoundTrip writes random records with every codec, several
// levels and 1..4 workers, and reads them back (spec 7.1).
func TestSortedRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(11, 12))
	ios := randomIOs(rng, 200, 24)
	for _, c := range allCodecs {
		levels := []int{0}
		switch c {
		case CodecGzip:
			levels = []int{0, 1, 9}
		case CodecZstd:
			levels = []int{0, 3}
		}
		for _, level := range levels {
			for workers := 1; workers <= 4; workers++ {
				if c == CodecLZMA && workers%2 == 0 {
					continue // slow codec: 1 and 3 workers cover both modes
				}
				cmp := Compression{Codec: c, Level: level, Workers: workers}
				t.Run(cmp.String(), func(t *testing.T) {
					b := writeSorted(t, FileHeader{UUID: testUUID}, cmp, ios)
					r, err := NewSortedReader(bytes.NewReader(b))
					require.NoError(t, err)
					require.Equal(t, FileHeader{Type: TypeSorted, UUID: testUUID}, r.Header())
					requireSameIOs(t, ios, readAllIOs(t, r))
					_, err = r.Next()
					require.Equal(t, io.EOF, err, "EOF must be sticky")
					// The stored codec is the requested one unless it did not shrink the data.
					r, err = NewSortedReader(bytes.NewReader(b))
					require.NoError(t, err)
					compressed := 0
					for {
						sr, err := r.NextRaw()
						if err == io.EOF {
							break
						}
						require.NoError(t, err)
						if sr.IsNormal() && sr.Codec != CodecNone {
							require.Equal(t, c, sr.Codec)
							compressed++
						}
					}
					if c != CodecNone {
						require.NotZero(t, compressed)
					}
				})
			}
		}
	}
}

// packLayout returns, for each pack of a sorted file, its record count and
// total_size.
func packLayout(t *testing.T, b []byte) [][2]int {
	t.Helper()
	var out [][2]int
	off := FileHeaderSize
	for {
		require.LessOrEqual(t, off+PackHeaderSize, len(b))
		h := b[off : off+PackHeaderSize]
		require.True(t, checksum.Valid(h, 0))
		if h[6]&packEndFlag != 0 {
			require.Equal(t, len(b), off+PackHeaderSize, "data after the end pack")
			return out
		}
		n, total := int(binary.LittleEndian.Uint16(h[4:])), int(binary.LittleEndian.Uint32(h[8:]))
		out = append(out, [2]int{n, total})
		off += PackHeaderSize + total
	}
}

// TestSortedPackRules checks walb-tools' packing: 127 records per pack, at
// most 32 MiB of data unless one record is alone (spec 7.1).
func TestSortedPackRules(t *testing.T) {
	t.Run("records", func(t *testing.T) {
		var ios []IO
		for i := range 300 {
			ios = append(ios, IO{Record: Record{Addr: uint64(2 * i), Blocks: 1, Flags: FlagAllZero}})
		}
		b := writeSorted(t, FileHeader{}, DefaultCompression, ios)
		require.Equal(t, [][2]int{{127, 0}, {127, 0}, {46, 0}}, packLayout(t, b))
	})
	t.Run("size", func(t *testing.T) {
		rng := rand.New(rand.NewPCG(13, 14))
		data := randomBytes(rng, 1<<20)
		var ios []IO
		for i := range 33 {
			ios = append(ios, IO{Record: Record{Addr: uint64(i) * 2048, Blocks: 2048}, Data: data})
		}
		ios = append(ios, IO{Record: Record{Addr: 100000, Blocks: 1}, Data: data[:512]})
		for _, workers := range []int{1, 2} {
			b := writeSorted(t, FileHeader{}, Compression{Codec: CodecSnappy, Workers: workers}, ios)
			require.Equal(t, [][2]int{{32, 32 << 20}, {2, 1<<20 + 512}}, packLayout(t, b))
		}
	})
	t.Run("huge record alone", func(t *testing.T) {
		big := make([]byte, 33<<20)
		big[0] = 1
		ios := []IO{
			{Record: Record{Addr: 0, Blocks: 1}, Data: big[:512]},
			{Record: Record{Addr: 8, Blocks: 33 << 11}, Data: big},
			{Record: Record{Addr: 1 << 20, Blocks: 1}, Data: big[:512]},
		}
		b := writeSorted(t, FileHeader{}, Compression{Codec: CodecNone}, ios)
		require.Equal(t, [][2]int{{1, 512}, {1, 33 << 20}, {1, 512}}, packLayout(t, b))
		r, err := NewSortedReader(bytes.NewReader(b))
		require.NoError(t, err)
		requireSameIOs(t, ios, readAllIOs(t, r))
	})
}

// TestSortedWriterRejects checks argument validation: unsorted or
// overlapping records, wrong data sizes, bad flags, bad stored data.
func TestSortedWriterRejects(t *testing.T) {
	for _, workers := range []int{1, 2} {
		t.Run("workers="+strconv.Itoa(workers), func(t *testing.T) {
			var buf bytes.Buffer
			w, err := NewSortedWriter(&buf, FileHeader{}, Compression{Codec: CodecSnappy, Workers: workers})
			require.NoError(t, err)
			d := make([]byte, 1024)
			require.NoError(t, w.Write(IO{Record: Record{Addr: 10, Blocks: 2}, Data: d}))
			for _, tt := range []struct {
				in  IO
				err error
			}{
				{IO{Record: Record{Addr: 11, Blocks: 1}, Data: d[:512]}, ErrUnsorted},
				{IO{Record: Record{Addr: 5, Blocks: 1, Flags: FlagDiscard}}, ErrUnsorted},
				{IO{Record: Record{Addr: 20, Blocks: 2}, Data: d[:512]}, ErrInvalid},
				{IO{Record: Record{Addr: 20, Blocks: 0}, Data: nil}, ErrInvalid},
				{IO{Record: Record{Addr: 20, Blocks: 1, Flags: FlagAllZero | FlagDiscard}}, ErrInvalid},
				{IO{Record: Record{Addr: 20, Blocks: 1, Flags: 0x08}}, ErrInvalid},
				{IO{Record: Record{Addr: ^uint64(0), Blocks: 2, Flags: FlagDiscard}}, ErrInvalid},
			} {
				require.True(t, errors.Is(w.Write(tt.in), tt.err), "%+v", tt.in.Record)
			}
			good := Stored{Codec: CodecNone, Data: d[:512], Checksum: checksum.Sum(d[:512], 0)}
			bad := good
			bad.Checksum++
			require.True(t, errors.Is(w.WriteStored(Record{Addr: 30, Blocks: 1}, bad), ErrChecksum))
			require.True(t, errors.Is(w.WriteStored(Record{Addr: 30, Blocks: 2}, good), ErrInvalid))
			require.True(t, errors.Is(w.WriteStored(Record{Addr: 30, Blocks: 1}, Stored{Codec: 9, Data: d[:10]}), ErrUnknownCodec))
			// Rejected calls leave the writer usable.
			require.NoError(t, w.WriteStored(Record{Addr: 30, Blocks: 1}, good))
			require.NoError(t, w.Write(IO{Record: Record{Addr: 31, Blocks: 3, Flags: FlagAllZero}}))
			require.NoError(t, w.Close())
			require.NoError(t, w.Close())
			require.True(t, errors.Is(w.Write(IO{Record: Record{Addr: 40, Blocks: 1, Flags: FlagAllZero}}), ErrClosed))
			got, err := readAllFromBytes(buf.Bytes())
			require.NoError(t, err)
			require.Len(t, got, 3)
		})
	}
}

type failWriter struct{ after int }

func (f *failWriter) Write(p []byte) (int, error) {
	if f.after < len(p) {
		n := max(f.after, 0)
		f.after = 0
		return n, errors.New("disk full")
	}
	f.after -= len(p)
	return len(p), nil
}

// TestSortedWriterSticky checks that a write error sticks, in both modes,
// and that Close still stops the pipeline.
func TestSortedWriterSticky(t *testing.T) {
	rng := rand.New(rand.NewPCG(15, 16))
	ios := randomIOs(rng, 2000, 16)
	for _, workers := range []int{1, 3} {
		fw := &failWriter{after: 100 << 10}
		w, err := NewSortedWriter(fw, FileHeader{}, Compression{Codec: CodecZstd, Workers: workers})
		require.NoError(t, err)
		var first error
		for _, x := range ios {
			if err := w.Write(x); err != nil {
				first = err
				break
			}
		}
		cerr := w.Close()
		require.Error(t, cerr)
		if first != nil {
			require.Equal(t, first.Error(), cerr.Error())
		}
		require.Contains(t, cerr.Error(), "disk full")
		require.Equal(t, cerr, w.Close())
	}
}

// TestSortedReaderShortReads reads through iotest readers that return one
// byte, half the request, or data with the final error: results must be
// identical.
func TestSortedReaderShortReads(t *testing.T) {
	rng := rand.New(rand.NewPCG(17, 18))
	ios := randomIOs(rng, 200, 40)
	b := writeSorted(t, FileHeader{UUID: testUUID}, Compression{Codec: CodecLZ4}, ios)
	for name, mk := range map[string]func(io.Reader) io.Reader{
		"onebyte": iotest.OneByteReader,
		"half":    iotest.HalfReader,
		"dataerr": iotest.DataErrReader,
	} {
		t.Run(name, func(t *testing.T) {
			r, err := NewSortedReader(mk(bytes.NewReader(b)))
			require.NoError(t, err)
			requireSameIOs(t, ios, readAllIOs(t, r))
		})
	}
	t.Run("timeout", func(t *testing.T) {
		r, err := NewSortedReader(iotest.TimeoutReader(bytes.NewReader(b)))
		require.NoError(t, err)
		_, err = r.Next()
		require.ErrorIs(t, err, iotest.ErrTimeout)
		_, err2 := r.Next()
		require.Equal(t, err, err2, "errors are sticky")
	})
	t.Run("error mid-pack", func(t *testing.T) {
		boom := errors.New("boom")
		r, err := NewSortedReader(io.MultiReader(bytes.NewReader(b[:5000]), iotest.ErrReader(boom)))
		require.NoError(t, err)
		_, err = r.Next()
		require.ErrorIs(t, err, boom)
		require.False(t, errors.Is(err, ErrTruncated), "a read error is not truncation")
	})
}

// TestSortedEmptyAndEnd covers the two legal ends of a sorted file (spec
// 7.1): the end pack, and EOF exactly where a pack header would start.
func TestSortedEmptyAndEnd(t *testing.T) {
	b := writeSorted(t, FileHeader{}, DefaultCompression, nil)
	require.Len(t, b, FileHeaderSize+PackHeaderSize)
	got, err := readAllFromBytes(b)
	require.NoError(t, err)
	require.Empty(t, got)
	got, err = readAllFromBytes(b[:FileHeaderSize])
	require.NoError(t, err)
	require.Empty(t, got)
	// An end pack with records is corrupt.
	bad := bytes.Clone(b)
	binary.LittleEndian.PutUint16(bad[FileHeaderSize+4:], 1)
	checksum.Store(bad[FileHeaderSize:], 0, 0)
	_, err = readAllFromBytes(bad)
	require.True(t, errors.Is(err, ErrCorrupt), "%v", err)
	// An indexed header is refused by the sorted reader.
	h := make([]byte, FileHeaderSize)
	FileHeader{Type: TypeIndexed}.encode(h)
	_, err = NewSortedReader(bytes.NewReader(h))
	require.True(t, errors.Is(err, ErrType))
}

// craftPack builds a sorted file with one pack holding recs (data_offset
// and checksums as given) and data.
func craftPack(recs []SortedRecord, data []byte, total uint32) []byte {
	b := make([]byte, FileHeaderSize+PackHeaderSize)
	FileHeader{}.encode(b)
	h := b[FileHeaderSize:]
	binary.LittleEndian.PutUint16(h[4:], uint16(len(recs)))
	binary.LittleEndian.PutUint32(h[8:], total)
	for i := range recs {
		recs[i].encode(h[16+32*i:])
	}
	checksum.Store(h, 0, 0)
	b = append(b, data...)
	end := make([]byte, PackHeaderSize)
	end[6] = packEndFlag
	checksum.Store(end, 0, 0)
	return append(b, end...)
}

// TestSortedReaderValidation feeds packs that are checksummed correctly
// but break a rule; each must fail with the right sentinel.
func TestSortedReaderValidation(t *testing.T) {
	d := make([]byte, 1024)
	d[0] = 7
	cs := checksum.Sum(d[:512], 0)
	norm := func(addr uint64, off uint32) SortedRecord {
		return SortedRecord{Record: Record{Addr: addr, Blocks: 1}, DataOffset: off, DataSize: 512, Checksum: cs}
	}
	tests := []struct {
		name  string
		recs  []SortedRecord
		data  []byte
		total uint32
		err   error
	}{
		{"ok", []SortedRecord{norm(0, 0), norm(1, 512)}, append(bytes.Clone(d[:512]), d[:512]...), 1024, nil},
		{"overlap", []SortedRecord{norm(1, 0), norm(1, 512)}, append(bytes.Clone(d[:512]), d[:512]...), 1024, ErrUnsorted},
		{"descending", []SortedRecord{norm(5, 0), norm(1, 512)}, append(bytes.Clone(d[:512]), d[:512]...), 1024, ErrUnsorted},
		{"offset chain", []SortedRecord{norm(0, 0), norm(1, 0)}, append(bytes.Clone(d[:512]), d[:512]...), 1024, ErrCorrupt},
		{"total", []SortedRecord{norm(0, 0)}, bytes.Clone(d[:1024]), 1024, ErrCorrupt},
		{"data checksum", []SortedRecord{{Record: Record{Addr: 0, Blocks: 1}, DataSize: 512, Checksum: cs + 1}}, d[:512], 512, ErrChecksum},
		{"codec", []SortedRecord{{Record: Record{Addr: 0, Blocks: 1}, Codec: 6, DataSize: 100, Checksum: checksum.Sum(d[:100], 0)}}, d[:100], 100, ErrUnknownCodec},
		{"zero blocks", []SortedRecord{{Record: Record{Addr: 0}, DataSize: 512, Checksum: cs}}, d[:512], 512, ErrCorrupt},
		{"flags", []SortedRecord{{Record: Record{Addr: 0, Blocks: 1, Flags: FlagAllZero | FlagDiscard}}}, nil, 0, ErrCorrupt},
		{"none size", []SortedRecord{{Record: Record{Addr: 0, Blocks: 2}, DataSize: 512, Checksum: cs}}, d[:512], 512, ErrCorrupt},
		{"discard with data", []SortedRecord{{Record: Record{Addr: 0, Blocks: 1, Flags: FlagDiscard}, DataSize: 512}}, d[:512], 512, ErrCorrupt},
		{"too big", []SortedRecord{{Record: Record{Addr: 0, Blocks: MaxRecordBlocks + 1}, Codec: CodecSnappy, DataSize: 512, Checksum: cs}}, d[:512], 512, ErrCorrupt},
		{"truncated data", []SortedRecord{norm(0, 0)}, nil, 512, ErrTruncated},
		{"legacy exist bit", []SortedRecord{{Record: Record{Addr: 0, Blocks: 1, Flags: flagExist | FlagAllZero}}}, nil, 0, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := craftPack(tt.recs, tt.data, tt.total)
			if tt.name == "truncated data" {
				b = b[:FileHeaderSize+PackHeaderSize+100]
			}
			_, err := readAllFromBytes(b)
			if tt.err == nil {
				require.NoError(t, err)
				return
			}
			require.True(t, errors.Is(err, tt.err), "got %v", err)
			require.Contains(t, err.Error(), "offset", "errors name the byte offset")
		})
	}
	t.Run("pack size limit", func(t *testing.T) {
		b := craftPack([]SortedRecord{norm(0, 0), norm(1, 512)}, nil, MaxPackDataSize+1)
		_, err := readAllFromBytes(b)
		require.True(t, errors.Is(err, ErrCorrupt), "%v", err)
	})
	t.Run("too many records", func(t *testing.T) {
		b := craftPack(nil, nil, 0)
		binary.LittleEndian.PutUint16(b[FileHeaderSize+4:], MaxPackRecords+1)
		checksum.Store(b[FileHeaderSize:FileHeaderSize+PackHeaderSize], 0, 0)
		_, err := readAllFromBytes(b)
		require.True(t, errors.Is(err, ErrCorrupt), "%v", err)
	})
	t.Run("header", func(t *testing.T) {
		b := craftPack(nil, nil, 0)
		binary.LittleEndian.PutUint16(b[4:], 3)
		checksum.Store(b[:FileHeaderSize], 0, 0)
		_, err := readAllFromBytes(b)
		require.True(t, errors.Is(err, ErrVersion), "%v", err)
		b[9] ^= 1
		_, err = readAllFromBytes(b)
		require.True(t, errors.Is(err, ErrChecksum), "%v", err)
	})
}
