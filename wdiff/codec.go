package wdiff

import (
	"bytes"
	"io"
	"runtime"
	"strconv"
	"strings"
	"sync"

	"github.com/klauspost/compress/s2"
	"github.com/klauspost/compress/zlib"
	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
	"github.com/pkg/errors"
)

// Codec is the compression code stored in every wdiff record.
type Codec uint8

// Compression codes, as walb-tools numbers them.
const (
	// CodecNone stores raw bytes.
	CodecNone Codec = 0
	// CodecGzip is named "gzip" by walb-tools but is a zlib (RFC 1950)
	// stream, as produced by zlib's compress2.
	CodecGzip Codec = 1
	// CodecSnappy is a raw snappy block (no framing).
	CodecSnappy Codec = 2
	// CodecLZMA is a single .xz stream (LZMA2 filter, CRC64 check).
	CodecLZMA Codec = 3
	// CodecLZ4 is a raw LZ4 block (no frame, no size prefix).
	CodecLZ4 Codec = 4
	// CodecZstd is a zstd frame.
	CodecZstd Codec = 5
)

// numCodecs is WALB_DIFF_CMPR_MAX: codes at or above it are invalid.
const numCodecs = 6

var codecNames = [numCodecs]string{"none", "gzip", "snappy", "lzma", "lz4", "zstd"}

// String returns the walb-tools name of the codec ("none", "gzip", "snappy",
// "lzma", "lz4", "zstd"), or "unknown:N" for an invalid code, as wdiff-show
// would print it.
func (c Codec) String() string {
	if c.Valid() {
		return codecNames[c]
	}
	return "unknown:" + strconv.Itoa(int(c))
}

// Valid reports whether c is one of the six codes walb-tools defines.
func (c Codec) Valid() bool { return c < numCodecs }

// ParseCodec maps a walb-tools codec name to its code.
func ParseCodec(s string) (Codec, error) {
	for i, n := range codecNames {
		if s == n {
			return Codec(i), nil
		}
	}
	return 0, errors.Wrapf(ErrUnknownCodec, "%q", s)
}

// Compression selects how writers compress record data.
type Compression struct {
	// Codec is the compression applied to each record.
	Codec Codec
	// Level is the codec's level; 0 means the library default walb-tools
	// uses (zlib 6, xz preset 6, zstd 1). snappy, lz4 and none ignore it.
	Level int
	// Workers is the number of goroutines compressing in parallel; values
	// below 1 mean 1.
	Workers int
}

// DefaultCompression is what walb-tools uses when no -cmpr option is given.
var DefaultCompression = Compression{Codec: CodecSnappy, Level: 0, Workers: 1}

// maxLevel is the highest level each codec accepts (0 = level ignored).
var maxLevel = [numCodecs]int{0, 9, 0, 9, 0, 22}

// Validate checks the codec and its level.
func (c Compression) Validate() error {
	if !c.Codec.Valid() {
		return errors.Wrapf(ErrUnknownCodec, "code %d", c.Codec)
	}
	if c.Level < 0 || (maxLevel[c.Codec] > 0 && c.Level > maxLevel[c.Codec]) {
		return errors.Wrapf(ErrInvalid, "level %d out of range for %s", c.Level, c.Codec)
	}
	if c.Workers < 0 {
		return errors.Wrapf(ErrInvalid, "negative worker count %d", c.Workers)
	}
	return nil
}

// String formats c in the -cmpr syntax TYPE:LEVEL:CPUS.
func (c Compression) String() string {
	return c.Codec.String() + ":" + strconv.Itoa(c.Level) + ":" + strconv.Itoa(c.workers())
}

func (c Compression) workers() int {
	if c.Workers < 1 {
		return 1
	}
	return c.Workers
}

// ParseCompression parses walb-tools' -cmpr syntax "TYPE[:LEVEL[:CPUS]]",
// for example "snappy", "zstd:3" or "gzip:9:4". LEVEL defaults to 0 (the
// library default) and CPUS to 1.
func ParseCompression(s string) (Compression, error) {
	parts := strings.Split(s, ":")
	if len(parts) > 3 {
		return Compression{}, errors.Wrapf(ErrInvalid, "compression %q: want TYPE:LEVEL:CPUS", s)
	}
	codec, err := ParseCodec(parts[0])
	if err != nil {
		return Compression{}, err
	}
	c := Compression{Codec: codec, Workers: 1}
	if len(parts) > 1 {
		if c.Level, err = strconv.Atoi(parts[1]); err != nil {
			return Compression{}, errors.Wrapf(ErrInvalid, "compression %q: bad level", s)
		}
	}
	if len(parts) > 2 {
		if c.Workers, err = strconv.Atoi(parts[2]); err != nil || c.Workers < 1 {
			return Compression{}, errors.Wrapf(ErrInvalid, "compression %q: bad cpu count", s)
		}
	}
	if err := c.Validate(); err != nil {
		return Compression{}, errors.WithMessagef(err, "compression %q", s)
	}
	return c, nil
}

// Compress compresses src with codec at level and returns the form a writer
// stores: the compressed bytes (held in dst's array when its capacity
// suffices) and codec when they are strictly smaller than src, otherwise src
// itself and CodecNone, as walb-tools does.
func Compress(dst, src []byte, codec Codec, level int) ([]byte, Codec, error) {
	out, ok, err := appendCompressed(dst[:0], src, codec, level)
	if err != nil {
		return nil, CodecNone, err
	}
	if !ok {
		return src, CodecNone, nil
	}
	return out, codec, nil
}

// appendCompressed appends the compressed form of src to dst. ok is false,
// and dst is returned unchanged, when the result would not be strictly
// smaller than src.
func appendCompressed(dst, src []byte, codec Codec, level int) (out []byte, ok bool, err error) {
	if err := (Compression{Codec: codec, Level: level}).Validate(); err != nil {
		return dst, false, err
	}
	if len(src) == 0 {
		return dst, false, nil
	}
	base := len(dst)
	switch codec {
	case CodecNone:
		return dst, false, nil
	case CodecSnappy:
		need := s2.MaxEncodedLen(len(src))
		if need < 0 {
			return dst, false, nil
		}
		dst = grow(dst, need)
		enc := s2.EncodeSnappy(dst[base:base+need], src)
		if len(enc) >= len(src) {
			return dst[:base], false, nil
		}
		return dst[:base+len(enc)], true, nil
	case CodecLZ4:
		// Offering only len(src)-1 bytes makes the compressor give up as
		// soon as the result could not be kept.
		room := len(src) - 1
		if room < 1 {
			return dst, false, nil
		}
		dst = grow(dst, room)
		c := lz4Compressors.Get().(*lz4.Compressor)
		n, err := c.CompressBlock(src, dst[base:base+room])
		lz4Compressors.Put(c)
		if err != nil || n <= 0 || n >= len(src) {
			return dst[:base], false, nil
		}
		return dst[:base+n], true, nil
	case CodecGzip:
		dst, err = zlibCompress(dst, src, level)
	case CodecLZMA:
		dst, err = xzCompress(dst, src, level)
	case CodecZstd:
		var enc *zstd.Encoder
		if enc, err = zstdEncoder(level); err == nil {
			dst = enc.EncodeAll(src, dst)
		}
	}
	if err != nil {
		return dst[:base], false, errors.Wrapf(ErrInvalid, "%s compression: %v", codec, err)
	}
	if len(dst)-base >= len(src) {
		return dst[:base], false, nil
	}
	return dst, true, nil
}

// Decompress decodes src, stored with codec, into exactly size bytes held in
// dst's array when its capacity suffices. Anything but exactly size bytes of
// output is ErrCorrupt. Before allocating, size is checked against what src
// can possibly expand to (snappy's length prefix, the lzma chunk headers, or
// the codec's maximum ratio), and lzma dictionaries over the reference
// decoder's 16 MiB limit are refused, so memory use follows the input.
// Decompress never panics on any input.
func Decompress(dst, src []byte, codec Codec, size int) ([]byte, error) {
	if size < 0 {
		return nil, errors.Wrapf(ErrInvalid, "negative size %d", size)
	}
	if !codec.Valid() {
		return nil, errors.Wrapf(ErrUnknownCodec, "code %d", codec)
	}
	// Refuse sizes the stored bytes cannot possibly expand to before
	// allocating, so a few forged bytes cannot claim hundreds of MiB.
	if limit := maxExpansion[codec]*uint64(len(src)) + expansionSlack[codec]; codec != CodecSnappy && uint64(size) > limit {
		return nil, errors.Wrapf(ErrCorrupt, "%s data (%d bytes) cannot decode to %d bytes", codec, len(src), size)
	}
	if codec == CodecSnappy {
		if n, err := s2.DecodedLen(src); err != nil || n != size {
			return nil, errors.Wrapf(ErrCorrupt, "%s data (%d bytes): length prefix %d (%v), want %d", codec, len(src), n, err, size)
		}
	}
	if codec == CodecLZMA {
		// The container walk checks the claimed size before allocating.
		return xzDecompress(dst, src, size)
	}
	if cap(dst) < size {
		dst = make([]byte, size)
	}
	out := dst[:size]
	var err error
	switch codec {
	case CodecNone:
		if len(src) != size {
			err = errors.Errorf("stored %d bytes, want %d", len(src), size)
		} else {
			copy(out, src)
		}
	case CodecSnappy:
		var got []byte
		if got, err = s2.Decode(out, src); err == nil && len(got) != size {
			err = errors.Errorf("decoded %d bytes, want %d", len(got), size)
		}
	case CodecLZ4:
		var n int
		if size == 0 {
			// The block decoder cannot take an empty destination; the only
			// block that decodes to nothing is a lone zero token.
			if len(src) != 1 || src[0] != 0 {
				err = errors.New("block does not decode to 0 bytes")
			}
		} else if n, err = lz4.UncompressBlock(src, out); err == nil && n != size {
			err = errors.Errorf("decoded %d bytes, want %d", n, size)
		}
	case CodecGzip:
		err = zlibDecompress(out, src)
	case CodecZstd:
		var got []byte
		if got, err = zstdDecoder().DecodeAll(src, out[:0:size]); err == nil && len(got) != size {
			err = errors.Errorf("decoded %d bytes, want %d", len(got), size)
		} else if err == nil && len(got) > 0 && &got[0] != &out[0] {
			// The cap limit keeps the decoder inside out; check anyway so
			// a library change cannot hand back foreign memory silently.
			copy(out, got)
		}
	}
	if err != nil {
		return nil, errors.Wrapf(ErrCorrupt, "%s data (%d bytes): %v", codec, len(src), err)
	}
	return out, nil
}

// maxExpansion is each codec's highest possible output/input ratio:
// deflate 1032:1; an LZ4 length byte adds at most 255 bytes; a 4-byte zstd
// RLE block yields at most 128 KiB; a 6-byte LZMA2 chunk header at most
// 2 MiB; snappy is checked against its length prefix instead.
var maxExpansion = [numCodecs]uint64{1, 1032, 0, 349526, 256, 32768}

var expansionSlack = [numCodecs]uint64{0, 0, 0, 0, 64, 128 << 10}

// grow makes room for n more bytes after len(b).
func grow(b []byte, n int) []byte {
	if cap(b)-len(b) >= n {
		return b
	}
	nb := make([]byte, len(b), len(b)+n+len(b)/4)
	copy(nb, b)
	return nb
}

// appendWriter is an io.Writer that appends to a byte slice.
type appendWriter struct{ b []byte }

func (a *appendWriter) Write(p []byte) (int, error) {
	a.b = append(a.b, p...)
	return len(p), nil
}

var lz4Compressors = sync.Pool{New: func() any { return new(lz4.Compressor) }}

// zlib writers keep large internal state; one pool per level reuses it.
var zlibWriters [10]sync.Pool

type zlibWriter struct {
	zw  *zlib.Writer
	out appendWriter
}

func zlibCompress(dst, src []byte, level int) ([]byte, error) {
	if level == 0 {
		level = 6
	}
	zw, _ := zlibWriters[level].Get().(*zlibWriter)
	if zw == nil {
		w, err := zlib.NewWriterLevel(nil, level)
		if err != nil {
			return dst, err
		}
		zw = &zlibWriter{zw: w}
	}
	zw.out.b = dst
	zw.zw.Reset(&zw.out)
	_, err := zw.zw.Write(src)
	if err == nil {
		err = zw.zw.Close()
	}
	dst = zw.out.b
	zw.out.b = nil
	zlibWriters[level].Put(zw)
	return dst, err
}

type zlibReader struct {
	src bytes.Reader
	zr  io.ReadCloser
}

var zlibReaders sync.Pool

func zlibDecompress(out, src []byte) error {
	z, _ := zlibReaders.Get().(*zlibReader)
	if z == nil {
		z = new(zlibReader)
	}
	z.src.Reset(src)
	var err error
	if z.zr == nil {
		z.zr, err = zlib.NewReader(&z.src)
	} else {
		err = z.zr.(zlib.Resetter).Reset(&z.src, nil)
	}
	if err == nil {
		err = readExactlyToEnd(z.zr, out)
		if err == nil && z.src.Len() != 0 {
			err = errors.Errorf("%d bytes after the end of the stream", z.src.Len())
		}
	}
	z.src.Reset(nil)
	if z.zr != nil {
		zlibReaders.Put(z)
	}
	return err
}

// readExactlyToEnd fills out from r and then requires r to be at its end,
// which is where stream decoders verify their trailing checksums.
func readExactlyToEnd(r io.Reader, out []byte) error {
	if _, err := io.ReadFull(r, out); err != nil {
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return errors.New("stream shorter than the record size")
		}
		return err
	}
	var one [1]byte
	for range 4 {
		n, err := r.Read(one[:])
		if n > 0 {
			return errors.New("stream longer than the record size")
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
	return errors.New("stream does not end after the record size")
}

var (
	zstdMu   sync.Mutex
	zstdEncs [23]*zstd.Encoder
	zstdDec  = sync.OnceValue(func() *zstd.Decoder {
		d, err := zstd.NewReader(nil,
			zstd.WithDecoderConcurrency(0),
			zstd.WithDecodeAllCapLimit(true),
			zstd.WithDecoderMaxWindow(maxZstdWindow))
		if err != nil {
			panic(err) // constant options; cannot fail
		}
		return d
	})
)

// maxZstdWindow bounds the history a hostile frame can make the decoder
// allocate; ZSTD_compress never needs more than 128 MiB (window log 27).
const maxZstdWindow = 1 << 27

func zstdDecoder() *zstd.Decoder { return zstdDec() }

// zstdEncoder returns the shared encoder for a level; EncodeAll is safe for
// concurrent use and keeps its own pool of per-call state.
func zstdEncoder(level int) (*zstd.Encoder, error) {
	if level == 0 {
		level = 1
	}
	zstdMu.Lock()
	defer zstdMu.Unlock()
	if e := zstdEncs[level]; e != nil {
		return e, nil
	}
	e, err := zstd.NewWriter(nil,
		zstd.WithEncoderLevel(zstd.EncoderLevelFromZstd(level)),
		zstd.WithEncoderConcurrency(runtime.GOMAXPROCS(0)))
	if err != nil {
		return nil, err
	}
	zstdEncs[level] = e
	return e, nil
}
