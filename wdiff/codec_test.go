package wdiff

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"math/rand/v2"
	"runtime"
	"strconv"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/pkg/errors"
	"github.com/stretchr/testify/require"
)

var allCodecs = []Codec{CodecNone, CodecGzip, CodecSnappy, CodecLZMA, CodecLZ4, CodecZstd}

func TestCodecNames(t *testing.T) {
	for i, name := range []string{"none", "gzip", "snappy", "lzma", "lz4", "zstd"} {
		c, err := ParseCodec(name)
		require.NoError(t, err)
		require.Equal(t, Codec(i), c)
		require.Equal(t, name, c.String())
	}
	_, err := ParseCodec("bzip2")
	require.True(t, errors.Is(err, ErrUnknownCodec))
	require.Equal(t, "unknown:6", Codec(6).String())
	require.False(t, Codec(6).Valid())
}

func TestParseCompression(t *testing.T) {
	tests := []struct {
		in   string
		want Compression
		err  error
	}{
		{"snappy", Compression{Codec: CodecSnappy, Workers: 1}, nil},
		{"snappy:0:1", Compression{Codec: CodecSnappy, Workers: 1}, nil},
		{"zstd:3:2", Compression{Codec: CodecZstd, Level: 3, Workers: 2}, nil},
		{"gzip:9", Compression{Codec: CodecGzip, Level: 9, Workers: 1}, nil},
		{"lzma:0:4", Compression{Codec: CodecLZMA, Workers: 4}, nil},
		{"zstd:22:1", Compression{Codec: CodecZstd, Level: 22, Workers: 1}, nil},
		{"gzip:10", Compression{}, ErrInvalid},
		{"zstd:23", Compression{}, ErrInvalid},
		{"lzma:-1", Compression{}, ErrInvalid},
		{"snappy:x", Compression{}, ErrInvalid},
		{"snappy:0:0", Compression{}, ErrInvalid},
		{"snappy:0:1:2", Compression{}, ErrInvalid},
		{"brotli:1:1", Compression{}, ErrUnknownCodec},
		{"", Compression{}, ErrUnknownCodec},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseCompression(tt.in)
			if tt.err != nil {
				require.True(t, errors.Is(err, tt.err), "got %v", err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
			again, err := ParseCompression(got.String())
			require.NoError(t, err)
			require.Equal(t, got, again)
		})
	}
}

// TestCodecRoundTrip compresses and decompresses data of several shapes
// with every codec and several levels.
func TestCodecRoundTrip(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	inputs := map[string][]byte{
		"zeros512":  make([]byte, 512),
		"half4k":    halfCompressible(rng, 4096),
		"half1m":    halfCompressible(rng, 1<<20),
		"random4k":  randomBytes(rng, 4096),
		"random512": randomBytes(rng, 512),
	}
	for _, c := range allCodecs {
		levels := []int{0}
		switch c {
		case CodecGzip, CodecLZMA:
			levels = []int{0, 1, 9}
		case CodecZstd:
			levels = []int{0, 1, 3, 19}
		}
		for _, level := range levels {
			for name, in := range inputs {
				t.Run(c.String()+"/"+strconv.Itoa(level)+"/"+name, func(t *testing.T) {
					if c == CodecLZMA && len(in) > 64<<10 {
						in = in[:64<<10] // the pure-Go xz encoder runs at a few MB/s
					}
					stored, used, err := Compress(nil, in, c, level)
					require.NoError(t, err)
					if used == CodecNone {
						require.Equal(t, &in[0], &stored[0], "fallback must return src itself")
					} else {
						require.Equal(t, c, used)
						require.Less(t, len(stored), len(in))
					}
					if c != CodecNone && name != "random4k" && name != "random512" {
						require.Equal(t, c, used, "compressible data must be compressed")
					}
					if name == "random4k" {
						require.Equal(t, CodecNone, used, "random data cannot shrink")
					}
					out, err := Decompress(nil, stored, used, len(in))
					require.NoError(t, err)
					require.True(t, bytes.Equal(in, out))
					// Wrong sizes are corrupt, never padded or cut.
					for _, size := range []int{len(in) - 512, len(in) + 512} {
						_, err = Decompress(nil, stored, used, size)
						require.True(t, errors.Is(err, ErrCorrupt), "size %d: %v", size, err)
					}
				})
			}
		}
	}
}

func randomBytes(rng *rand.Rand, n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

// TestCompressReusesDst checks that a large enough dst is used.
func TestCompressReusesDst(t *testing.T) {
	in := halfCompressible(rand.New(rand.NewPCG(3, 4)), 4096)
	for _, c := range allCodecs[1:] {
		dst := make([]byte, 0, 64<<10)
		out, used, err := Compress(dst, in, c, 0)
		require.NoError(t, err)
		require.Equal(t, c, used)
		require.Equal(t, &dst[:1][0], &out[0], "%s did not reuse dst", c)
		dec := make([]byte, 0, 8192)
		got, err := Decompress(dec, out, c, len(in))
		require.NoError(t, err)
		require.Equal(t, &dec[:1][0], &got[0], "%s did not reuse dst", c)
	}
}

// TestDecompressGarbage feeds corrupted and truncated streams to every
// codec: the result is an error wrapping ErrCorrupt, or (where the format
// has no integrity check) exactly size bytes.
func TestDecompressGarbage(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	in := halfCompressible(rng, 8192)
	for _, c := range allCodecs[1:] {
		stored, used, err := Compress(nil, in, c, 0)
		require.NoError(t, err)
		require.Equal(t, c, used)
		for cut := 0; cut < len(stored); cut += 1 + len(stored)/50 {
			_, err := Decompress(nil, stored[:cut], c, len(in))
			require.True(t, errors.Is(err, ErrCorrupt), "%s cut at %d: %v", c, cut, err)
		}
		_, err = Decompress(nil, append(bytes.Clone(stored), 0), c, len(in))
		if c != CodecLZ4 && c != CodecSnappy { // raw blocks have no end marker to check against
			require.True(t, errors.Is(err, ErrCorrupt), "%s with a trailing byte: %v", c, err)
		}
		for i := 0; i < len(stored); i += 1 + len(stored)/100 {
			bad := bytes.Clone(stored)
			bad[i] ^= 0x5a
			out, err := Decompress(nil, bad, c, len(in))
			if err != nil {
				require.True(t, errors.Is(err, ErrCorrupt), "%s flip at %d: %v", c, i, err)
				continue
			}
			require.Len(t, out, len(in))
		}
	}
	_, err := Decompress(nil, []byte{1}, Codec(6), 512)
	require.True(t, errors.Is(err, ErrUnknownCodec))
	_, err = Decompress(nil, make([]byte, 100), CodecNone, 512)
	require.True(t, errors.Is(err, ErrCorrupt))
}

// rewriteXzDict sets the dictionary property of the first block of an .xz
// stream and fixes the block header checksum.
func rewriteXzDict(t *testing.T, stream []byte, prop byte) []byte {
	t.Helper()
	out := bytes.Clone(stream)
	pos := xzHeaderLen
	hlen := (int(out[pos]) + 1) * 4
	hdr := out[pos : pos+hlen]
	require.Equal(t, byte(0), hdr[1], "test expects a block header without size fields")
	require.Equal(t, byte(lzma2FilterID), hdr[2])
	hdr[4] = prop
	binary.LittleEndian.PutUint32(hdr[hlen-4:], crc32.ChecksumIEEE(hdr[:hlen-4]))
	return out
}

// TestXzDictionaryLimit checks the 16 MiB memory limit of the reference
// decoder: 12 MiB dictionaries decode, 16 MiB and larger are refused
// before any allocation.
func TestXzDictionaryLimit(t *testing.T) {
	in := halfCompressible(rand.New(rand.NewPCG(7, 8)), 4096)
	stored, used, err := Compress(nil, in, CodecLZMA, 0)
	require.NoError(t, err)
	require.Equal(t, CodecLZMA, used)
	for _, tt := range []struct {
		prop byte
		ok   bool
	}{{lzma2DictProp(8 << 20), true}, {lzma2DictProp(12 << 20), true}, {lzma2DictProp(16 << 20), false}, {39, false}, {40, false}, {41, false}} {
		got, err := Decompress(nil, rewriteXzDict(t, stored, tt.prop), CodecLZMA, len(in))
		if tt.ok {
			require.NoError(t, err, "prop %d", tt.prop)
			require.Equal(t, in, got)
		} else {
			require.True(t, errors.Is(err, ErrCorrupt), "prop %d: %v", tt.prop, err)
		}
	}
	require.EqualValues(t, 12<<20, lzma2DictSize(lzma2DictProp(12<<20)))
	require.EqualValues(t, 4096, lzma2DictSize(0))
}

// TestZstdForeignFrames decodes frames made with other options (no
// checksum, no content size) and rejects frames of the wrong size.
func TestZstdForeignFrames(t *testing.T) {
	in := halfCompressible(rand.New(rand.NewPCG(9, 10)), 64<<10)
	enc, err := zstd.NewWriter(nil, zstd.WithEncoderCRC(false), zstd.WithSingleSegment(false))
	require.NoError(t, err)
	var buf bytes.Buffer
	enc.Reset(&buf)
	_, err = enc.Write(in)
	require.NoError(t, err)
	require.NoError(t, enc.Close())
	got, err := Decompress(nil, buf.Bytes(), CodecZstd, len(in))
	require.NoError(t, err)
	require.Equal(t, in, got)
	_, err = Decompress(nil, buf.Bytes(), CodecZstd, len(in)-512)
	require.True(t, errors.Is(err, ErrCorrupt))
	// Two concatenated frames decode as one record, as ZSTD_decompress does.
	two := append(enc.EncodeAll(in[:4096], nil), enc.EncodeAll(in[4096:8192], nil)...)
	got, err = Decompress(nil, two, CodecZstd, 8192)
	require.NoError(t, err)
	require.Equal(t, in[:8192], got)
}

func TestSplitAligned(t *testing.T) {
	tests := []struct {
		addr   uint64
		blocks uint32
		max    uint32
		want   []uint32
	}{
		{0, 1, 0, []uint32{1}},
		{0, 8, 0, []uint32{8}},
		{1, 7, 0, []uint32{1, 2, 4}},
		{5, 6, 0, []uint32{1, 2, 2, 1}}, // p512_tiny: 5+6 -> 5/1 6/2 8/2 10/1
		{691, 11, 0, []uint32{1, 4, 4, 2}},
		{2105, 3130, 0, []uint32{1, 2, 4, 64, 128, 256, 512, 1024, 1024, 64, 32, 16, 2, 1}},
		{0, 4096, 2048, []uint32{2048, 2048}},
		{0, 4096, 3000, []uint32{2048, 2048}},
		{4096, 4096, 0, []uint32{4096}},
		{3, 1, 1, []uint32{1}},
		{1 << 40, 1 << 31, 0, []uint32{1 << 31}},
		{0, 0xffffffff, 0, nil}, // checked by sum below
	}
	for _, tt := range tests {
		var got []uint32
		var sum uint64
		a := tt.addr
		SplitAligned(tt.addr, tt.blocks, tt.max, func(addr uint64, blocks uint32) {
			require.Equal(t, a, addr)
			require.NotZero(t, blocks)
			require.Zero(t, blocks&(blocks-1), "not a power of two")
			require.Zero(t, addr%uint64(blocks), "not aligned")
			if tt.max > 0 {
				require.LessOrEqual(t, blocks, tt.max)
			}
			a += uint64(blocks)
			sum += uint64(blocks)
			got = append(got, blocks)
		})
		require.Equal(t, uint64(tt.blocks), sum)
		if tt.want != nil {
			require.Equal(t, tt.want, got, "%d+%d max %d", tt.addr, tt.blocks, tt.max)
		}
	}
}

// TestDecompressForgedSize checks that a few bytes cannot make Decompress
// allocate a large claimed size.
func TestDecompressForgedSize(t *testing.T) {
	small := halfCompressible(rand.New(rand.NewPCG(11, 12)), 4096)
	for _, c := range allCodecs {
		stored, used, err := Compress(nil, small, c, 0)
		require.NoError(t, err)
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		_, err = Decompress(nil, stored, used, 256<<20)
		runtime.ReadMemStats(&after)
		require.True(t, errors.Is(err, ErrCorrupt), "%s: %v", c, err)
		require.Less(t, after.TotalAlloc-before.TotalAlloc, uint64(16<<20), "%s allocated for a forged size", c)
	}
}
