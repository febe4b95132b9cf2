package wlog

import (
	"bytes"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/pkg/errors"
	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/checksum"
	"github.com/walb-go/walb/internal/fixtures"
)

func fixtureWlogs(t *testing.T) []string {
	var files []string
	for _, dir := range []string{"wlog", "merge", "ldev"} {
		m, err := filepath.Glob(fixtures.Path(t, dir, "*.wlog"))
		require.NoError(t, err)
		files = append(files, m...)
	}
	require.NotEmpty(t, files)
	return files
}

// Golden: our wlog-show text equals the C++ wlog-show output for every fixture.
func TestShowGolden(t *testing.T) {
	for _, path := range fixtureWlogs(t) {
		t.Run(filepath.Base(path), func(t *testing.T) {
			want, err := os.ReadFile(path + ".show.txt")
			require.NoError(t, err)
			f, err := os.Open(path)
			require.NoError(t, err)
			defer f.Close()
			var got bytes.Buffer
			_, err = Show(&got, f, ShowOptions{Records: true, Stats: true})
			require.NoError(t, err)
			require.Equal(t, string(want), got.String())
		})
	}
}

// copyWlog reads src with r and rewrites it pack by pack.
func copyWlog(t *testing.T, src io.Reader) []byte {
	rd, err := NewReader(src)
	require.NoError(t, err)
	var out bytes.Buffer
	w, err := NewWriter(&out, rd.Header())
	require.NoError(t, err)
	var buf []byte
	for {
		p, err := rd.NextPack()
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
		buf, err = rd.ReadPackData(buf)
		require.NoError(t, err)
		require.NoError(t, w.WritePack(p, buf))
	}
	require.NoError(t, w.Close())
	return out.Bytes()
}

// Our writer reproduces the C++ files byte for byte.
func TestRewriteIsByteIdentical(t *testing.T) {
	for _, path := range fixtureWlogs(t) {
		t.Run(filepath.Base(path), func(t *testing.T) {
			want, err := os.ReadFile(path)
			require.NoError(t, err)
			require.Equal(t, want, copyWlog(t, bytes.NewReader(want)))
		})
	}
}

func readAll(r io.Reader) (n int, err error) {
	rd, err := NewReader(r)
	if err != nil {
		return 0, err
	}
	for {
		_, err := rd.NextPack()
		if err == io.EOF {
			return n, nil
		}
		if err != nil {
			return n, err
		}
		for {
			_, _, err := rd.NextRecord()
			if err == io.EOF {
				break
			}
			if err != nil {
				return n, err
			}
			n++
		}
	}
}

func TestShortReaders(t *testing.T) {
	data, err := os.ReadFile(fixtures.Path(t, "wlog", "p512_tiny.wlog"))
	require.NoError(t, err)
	want, err := readAll(bytes.NewReader(data))
	require.NoError(t, err)
	for name, r := range map[string]io.Reader{
		"one-byte": iotest.OneByteReader(bytes.NewReader(data)),
		"half":     iotest.HalfReader(bytes.NewReader(data)),
		"data-err": iotest.DataErrReader(bytes.NewReader(data)),
	} {
		t.Run(name, func(t *testing.T) {
			got, err := readAll(r)
			require.NoError(t, err)
			require.Equal(t, want, got)
		})
	}
	_, err = readAll(iotest.TimeoutReader(bytes.NewReader(data)))
	require.ErrorIs(t, err, iotest.ErrTimeout)
}

// coverage marks the bytes of a wlog file that a checksum or a structural
// check protects: the file header, pack headers and the io_size*512 bytes of
// every normal record. Padding data and the tail of a record's last block
// are unspecified by the format, so damage there must go unnoticed and
// harmless.
func coverage(t *testing.T, data []byte) []bool {
	cov := make([]bool, len(data))
	for i := 0; i < FileHeaderSize; i++ {
		cov[i] = true
	}
	rd, err := NewReader(bytes.NewReader(data))
	require.NoError(t, err)
	pbs := int(rd.Header().PBS)
	off := FileHeaderSize
	for {
		p, err := rd.NextPack()
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
		for i := 0; i < pbs; i++ {
			cov[off+i] = true
		}
		for _, rec := range p.Records {
			if rec.IsNormal() {
				s := off + int(rec.LsidLocal)*pbs
				for i := 0; i < int(rec.IOSize)*LogicalBlockSize; i++ {
					cov[s+i] = true
				}
			}
		}
		off += pbs * (1 + int(p.TotalIOSize))
	}
	return cov
}

func TestEveryCorruptByteDetected(t *testing.T) {
	data, err := os.ReadFile(fixtures.Path(t, "wlog", "p512_tiny.wlog"))
	require.NoError(t, err)
	endOff := len(data) - 512
	require.True(t, IsEndBlock(data[endOff:]))
	cov := coverage(t, data)
	want, err := readAll(bytes.NewReader(data))
	require.NoError(t, err)
	bad := make([]byte, len(data))
	for i := 0; i < endOff; i++ {
		copy(bad, data)
		bad[i] ^= 0x5a
		n, err := readAll(bytes.NewReader(bad))
		if cov[i] {
			require.Error(t, err, "byte %d", i)
			require.True(t, errors.Is(err, ErrChecksum) || errors.Is(err, ErrCorrupt), "byte %d: %v", i, err)
		} else {
			require.NoError(t, err, "byte %d", i)
			require.Equal(t, want, n)
		}
	}
}

func TestTruncationDetected(t *testing.T) {
	data, err := os.ReadFile(fixtures.Path(t, "wlog", "p512_tiny.wlog"))
	require.NoError(t, err)
	// Pack boundaries: EOF there is a clean (shorter) end of the log.
	boundaries := map[int]bool{}
	rd, err := NewReader(bytes.NewReader(data))
	require.NoError(t, err)
	off := FileHeaderSize
	boundaries[off] = true
	for {
		p, err := rd.NextPack()
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
		off += 512 * (1 + int(p.TotalIOSize))
		boundaries[off] = true
	}
	for n := 0; n < len(data)-512; n++ {
		_, err := readAll(bytes.NewReader(data[:n]))
		if boundaries[n] {
			require.NoError(t, err, "cut at %d", n)
		} else {
			require.ErrorIs(t, err, ErrTruncated, "cut at %d", n)
			require.Contains(t, err.Error(), "truncated")
		}
	}
}

func TestErrorNamesLsidAndOffset(t *testing.T) {
	data, err := os.ReadFile(fixtures.Path(t, "wlog", "p512_tiny.wlog"))
	require.NoError(t, err)
	bad := append([]byte(nil), data...)
	// The second pack starts at lsid 54; flip a byte of its header.
	off := FileHeaderSize + 54*512 + 30
	bad[off] ^= 1
	_, err = readAll(bytes.NewReader(bad))
	require.ErrorIs(t, err, ErrChecksum)
	require.Contains(t, err.Error(), "lsid 54")
	require.Contains(t, err.Error(), "offset 31744")
	// Sticky: the reader keeps returning the error.
	rd, err := NewReader(bytes.NewReader(bad))
	require.NoError(t, err)
	for {
		if _, err = rd.NextPack(); err != nil {
			break
		}
	}
	_, err2 := rd.NextPack()
	require.Equal(t, err, err2)
}

// Property: packs built with AddNormal/AddDiscard round-trip through the
// writer and reader with the data intact, for every block size.
func TestBuildWriteReadProperty(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 9))
	for _, pbs := range []uint32{512, 1024, 2048, 4096, 8192, 65536} {
		var file bytes.Buffer
		hdr := FileHeader{Salt: r.Uint32(), PBS: pbs, BeginLsid: 100, EndLsid: InvalidLsid}
		w, err := NewWriter(&file, hdr)
		require.NoError(t, err)
		type wio struct {
			off  uint64
			data []byte
			disc uint32
		}
		var ios []wio
		lsid := hdr.BeginLsid
		for p := 0; p < 20; p++ {
			h := NewPackHeader(pbs, lsid)
			var data []byte
			for k := 0; k < 1+r.IntN(8); k++ {
				if r.IntN(5) == 0 {
					d := uint32(1 + r.IntN(1<<20))
					if h.AddDiscard(uint64(r.IntN(1<<30)), d) == nil {
						ios = append(ios, wio{disc: d})
					}
					continue
				}
				lb := uint32(1 + r.IntN(64))
				buf := make([]byte, lb*LogicalBlockSize)
				for i := range buf {
					buf[i] = byte(r.Uint32())
				}
				off := uint64(r.IntN(1 << 30))
				if h.AddNormal(off, lb, checksum.Sum(buf, hdr.Salt), 0) != nil {
					break
				}
				padded := make([]byte, PBsFor(pbs, uint64(lb))*uint64(pbs))
				copy(padded, buf)
				data = append(data, padded...)
				ios = append(ios, wio{off: off, data: buf})
			}
			if len(h.Records) == 0 {
				continue
			}
			require.NoError(t, w.WritePack(h, data))
			lsid = h.NextLsid()
		}
		require.NoError(t, w.Close())
		rd, err := NewReader(bytes.NewReader(file.Bytes()))
		require.NoError(t, err)
		i := 0
		for {
			_, err := rd.NextPack()
			if err == io.EOF {
				break
			}
			require.NoError(t, err)
			for {
				rec, data, err := rd.NextRecord()
				if err == io.EOF {
					break
				}
				require.NoError(t, err)
				if rec.IsDiscard() {
					require.Equal(t, ios[i].disc, rec.IOSize)
				} else {
					require.Equal(t, ios[i].off, rec.Offset)
					require.Equal(t, ios[i].data, data)
				}
				i++
			}
		}
		require.Equal(t, len(ios), i, "pbs %d", pbs)
		require.Equal(t, lsid, rd.EndLsid())
	}
}

func TestPaddingAtRingEnd(t *testing.T) {
	h := NewPackHeader(512, 10)
	// 3 PBs left before the ring end; a 4-PB IO gets a 3-PB padding first.
	require.NoError(t, h.AddNormal(0, 4, 0, 3))
	require.Len(t, h.Records, 2)
	require.True(t, h.Records[0].IsPadding())
	require.EqualValues(t, 3, h.Records[0].IOSize)
	require.EqualValues(t, 4, h.Records[1].LsidLocal)
	require.EqualValues(t, 7, h.TotalIOSize)
	require.EqualValues(t, 1, h.NPadding)
	b := h.Marshal(5)
	back, err := ParsePackHeader(b, 5)
	require.NoError(t, err)
	require.Equal(t, h.Records, back.Records)
	// A second padding in the same pack is refused.
	require.ErrorIs(t, h.AddNormal(0, 4, 0, 2), ErrFull)
}

func TestFileHeaderRejects(t *testing.T) {
	good := FileHeader{Salt: 1, PBS: 4096, BeginLsid: 0, EndLsid: 10}
	b := good.Marshal()
	back, err := ParseFileHeader(b)
	require.NoError(t, err)
	require.Equal(t, good, back)
	for _, tc := range []struct {
		name string
		h    FileHeader
	}{
		{"pbs", FileHeader{PBS: 1000, EndLsid: 1}},
		{"range", FileHeader{PBS: 512, BeginLsid: 5, EndLsid: 5}},
	} {
		_, err := NewWriter(io.Discard, tc.h)
		require.ErrorIs(t, err, ErrInvalid, tc.name)
	}
	_, err = NewReader(strings.NewReader("short"))
	require.ErrorIs(t, err, ErrTruncated)
}

func FuzzReader(f *testing.F) {
	for _, name := range []string{"p512_tiny.wlog"} {
		data, err := os.ReadFile(filepath.Join("..", "..", "shared", "fixtures", "cpp", "wlog", name))
		if err == nil {
			f.Add(data)
		}
	}
	h := FileHeader{Salt: 3, PBS: 512, EndLsid: InvalidLsid}
	f.Add(h.Marshal())
	f.Fuzz(func(t *testing.T, data []byte) {
		rd, err := NewReader(bytes.NewReader(data))
		if err != nil {
			return
		}
		for i := 0; i < 1000; i++ {
			p, err := rd.NextPack()
			if err != nil {
				return
			}
			if len(p.Records) == 0 || len(p.Records) > MaxRecords(p.PBS) {
				t.Fatalf("bad pack accepted: %d records", len(p.Records))
			}
			for {
				rec, d, err := rd.NextRecord()
				if err != nil {
					break
				}
				if rec.IsNormal() && checksum.Sum(d, rd.Header().Salt) != rec.Checksum {
					t.Fatal("data with a bad checksum returned")
				}
			}
		}
	})
}

func BenchmarkReader(b *testing.B) {
	var file bytes.Buffer
	hdr := FileHeader{Salt: 1, PBS: 4096, EndLsid: InvalidLsid}
	w, _ := NewWriter(&file, hdr)
	buf := make([]byte, 4096)
	for p := 0; p < 256; p++ {
		h := NewPackHeader(4096, w.NextLsid())
		var data []byte
		for k := 0; k < 64; k++ {
			buf[0] = byte(k)
			_ = h.AddNormal(uint64(k*8), 8, checksum.Sum(buf, 1), 0)
			data = append(data, buf...)
		}
		_ = w.WritePack(h, data)
	}
	_ = w.Close()
	b.SetBytes(int64(file.Len()))
	for b.Loop() {
		if _, err := readAll(bytes.NewReader(file.Bytes())); err != nil {
			b.Fatal(err)
		}
	}
}
