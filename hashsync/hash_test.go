package hashsync

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/walb-go/walb/internal/fixtures"
	"github.com/walb-go/walb/wdiff"
)

// XXH3-128 with a seed, checked against the reference implementation
// (libxxhash through python-xxhash: xxh3_128_hexdigest(data, seed=...),
// stored in testdata/xxh3_128_seeded.txt) on the short, medium and long
// input paths.
func TestHashChunkKnownAnswers(t *testing.T) {
	data := make([]byte, 256<<10+123)
	for i := range data {
		data[i] = byte(i*7 + 3)
	}
	for _, tc := range []struct {
		n    int
		want string
	}{
		{0, "a4cb05dbbf09907aaaa287af24a9bb3a"},
		{1, "7b143cad9cd83c25741a549ec5c1ddf0"},
		{17, "28c09305c1703835b0a2a7d833fee3aa"},
	} {
		require.Equal(t, tc.want, HashChunk(0x0123456789abcdef, data[:tc.n]).String(), "length %d", tc.n)
	}
	want, err := os.ReadFile("testdata/xxh3_128_seeded.txt")
	require.NoError(t, err)
	for _, line := range strings.Split(strings.TrimSpace(string(want)), "\n") {
		var n int
		var h string
		_, err := fmt.Sscan(line, &n, &h)
		require.NoError(t, err)
		require.Equal(t, h, HashChunk(0x0123456789abcdef, data[:n]).String(), "length %d", n)
	}
	require.NotEqual(t, HashChunk(1, data[:4096]), HashChunk(2, data[:4096]))
}

// The SipHash-2-4 reference vectors (vectors.h of the SipHash authors: key
// 00..0f, message 00 01 02 ... of each length 0..63): the XOR of
// SipHash128's halves is the standard 64-bit tag, which pins the rounds,
// the padding and the key; the bhash fixtures pin the output layout.
var sipVectors = strings.Fields(`
310e0edd47db6f72 fd67dc93c539f874 5a4fa9d909806c0d 2d7efbd796666785 b7877127e09427cf 8da699cd64557618
cee3fe586e46c9cb 37d1018bf50002ab 6224939a79f5f593 b0e4a90bdf82009e f3b9dd94c5bb5d7a a7ad6b22462fb3f4
fbe50e86bc8f1e75 903d84c02756ea14 eef27a8e90ca23f7 e545be4961ca29a1 db9bc2577fcc2a3f 9447be2cf5e99a69
9cd38d96f0b3c14b bd6179a71dc96dbb 98eea21af25cd6be c7673b2eb0cbf2d0 883ea3e395675393 c8ce5ccd8c030ca8
94af49f6c650adb8 eab8858ade92e1bc f315bb5bb835d817 adcf6b0763612e2f a5c91da7acaa4dde 716595876650a2a6
28ef495c53a387ad 42c341d8fa92d832 ce7cf2722f512771 e37859f94623f3a7 381205bb1ab0e012 ae97a10fd434e015
b4a31508beff4d31 81396229f0907902 4d0cf49ee5d4dcca 5c73336a76d8bf9a d0a704536ba93e0e 925958fcd6420cad
a915c29bc8067318 952b79f3bc0aa6d4 f21df2e41d4535f9 87577519048f53a9 10a56cf5dfcd9adb eb75095ccd986cd0
51a9cb9ecba312e6 96afadfc2ce666c7 72fe52975a4364ee 5a1645b276d592a1 b274cb8ebf87870a 6f9bb4203de7b381
eaecb2a30b22a87f 9924a43cc1315724 bd838d3aafbf8db7 0b1a2a3265d51aea 135079a3231ce660 932b2846e4d70666
e1915f5cb1eca46c f325965ca16d629f 575ff28e60381be5 724506eb4c328a95`)

func TestSipHash128ReferenceVectors(t *testing.T) {
	require.Len(t, sipVectors, 64)
	var msg [64]byte
	for i := range msg {
		msg[i] = byte(i)
	}
	for n, v := range sipVectors {
		d := NewSipHash128()
		d.Write(msg[:n])
		s := d.Sum(nil)
		var tag [8]byte
		binary.LittleEndian.PutUint64(tag[:], binary.LittleEndian.Uint64(s[0:8])^binary.LittleEndian.Uint64(s[8:16]))
		require.Equal(t, v, hex.EncodeToString(tag[:]), "length %d", n)
	}
}

// Fragmented writes hash like one write; Sum does not change the state.
func TestSipHash128Streaming(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	data := make([]byte, 5000)
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	whole := NewSipHash128()
	whole.Write(data)
	want := whole.Sum128()
	require.Equal(t, want, whole.Sum128())
	for range 50 {
		d := NewSipHash128()
		for p := data; len(p) > 0; {
			k := min(len(p), rng.IntN(20))
			d.Write(p[:k])
			p = p[k:]
		}
		require.Equal(t, want, d.Sum128())
	}
	whole.Reset()
	require.Equal(t, NewSipHash128().Sum128(), whole.Sum128())
	require.Equal(t, SipHash128Size, whole.Size())
}

// BHash's options, against hashing the expected ranges directly.
func TestBHashOptions(t *testing.T) {
	img, err := os.ReadFile(fixtures.Path(t, "bhash", "small.img"))
	require.NoError(t, err)
	sum := func(b []byte) [16]byte {
		d := NewSipHash128()
		d.Write(b)
		return d.Sum128()
	}
	type line struct {
		addr uint64
		sum  [16]byte
	}
	run := func(r interface {
		ReadAt([]byte, int64) (int, error)
	}, opt BHashOptions) ([]line, error) {
		var out []line
		err := BHash(context.Background(), r, int64(len(img)), opt, func(a uint64, s [16]byte) error {
			out = append(out, line{a, s})
			return nil
		})
		return out, err
	}
	got, err := run(bytes.NewReader(img), BHashOptions{})
	require.NoError(t, err)
	require.Equal(t, []line{{0, sum(img)}}, got)
	got, err = run(bytes.NewReader(img), BHashOptions{IOSize: 4096, Offset: 8192, Size: 20480, Chunk: 8192})
	require.NoError(t, err)
	require.Equal(t, []line{{16, sum(img[8192:16384])}, {32, sum(img[16384:24576])}, {48, sum(img[24576:28672])}}, got)
	// A ReaderAt returning less than asked without an error breaks its
	// contract: that is reported, never hashed as if complete.
	_, err = run(readerAtFunc(func(p []byte, off int64) (int, error) {
		return iotest.HalfReader(bytes.NewReader(img[off:])).Read(p)
	}), BHashOptions{IOSize: 512, Chunk: 1536})
	require.ErrorIs(t, err, ErrShortImage)
	for _, bad := range []BHashOptions{{IOSize: 1000}, {IOSize: 4096, Chunk: 6144}, {IOSize: 4096, Offset: 512}, {Offset: 1 << 30}} {
		_, err := run(bytes.NewReader(img), bad)
		require.ErrorIs(t, err, ErrInvalid, "%+v", bad)
	}
	_, err = run(bytes.NewReader(img), BHashOptions{Size: 1 << 20})
	require.ErrorIs(t, err, ErrShortImage)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	require.ErrorIs(t, BHash(ctx, bytes.NewReader(img), int64(len(img)), BHashOptions{}, func(uint64, [16]byte) error { return nil }), context.Canceled)
}

type readerAtFunc func(p []byte, off int64) (int, error)

func (f readerAtFunc) ReadAt(p []byte, off int64) (int, error) { return f(p, off) }

// The limiter hands out consecutive slots of len/rate on one timeline and
// keeps no credit from idle time.
func TestLimiter(t *testing.T) {
	now := time.Unix(1000, 0)
	var slept []time.Duration
	l := newLimiter(1 << 20)
	l.now = func() time.Time { return now }
	l.sleep = func(_ context.Context, d time.Duration) error { slept = append(slept, d); return nil }
	for range 4 {
		require.NoError(t, l.wait(context.Background(), 256<<10))
	}
	require.Equal(t, []time.Duration{0, 250 * time.Millisecond, 500 * time.Millisecond, 750 * time.Millisecond}, slept)
	now = now.Add(10 * time.Second)
	slept = nil
	require.NoError(t, l.wait(context.Background(), 512<<10))
	require.NoError(t, l.wait(context.Background(), 512<<10))
	require.Equal(t, []time.Duration{0, 500 * time.Millisecond}, slept)
	require.Nil(t, newLimiter(0))
	require.NoError(t, (*limiter)(nil).wait(context.Background(), 1<<30))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	require.ErrorIs(t, sleepCtx(ctx, time.Hour), context.Canceled)
}

// An IndexedSink with more pending index records than it keeps in memory
// spills them to a file, removed at Close, and still writes a correct
// indexed wdiff.
func TestIndexedSinkSpill(t *testing.T) {
	defer func(n int) { indexMemEntries = n }(indexMemEntries)
	indexMemEntries = 5
	rng := rand.New(rand.NewPCG(31, 31))
	old, cur, changed := randImages(rng, 97*3072+1536, 3072)
	s, _, ds := recordStreams(t, old, cur, Session{ChunkSize: 3072, Start: 1024, End: int64(len(old))}, HashOptions{}, DefaultDataOptions())
	require.Greater(t, changed, 3*indexMemEntries)
	var buf bytes.Buffer
	iw, err := wdiff.NewIndexedWriter(&buf, wdiff.FileHeader{}, wdiff.DefaultCompression)
	require.NoError(t, err)
	sink := NewIndexedSink(iw)
	sink.Dir = t.TempDir()
	_, err = ReceiveDiff(context.Background(), bytes.NewReader(ds), s, sink, HashOptions{})
	require.NoError(t, err)
	spilled, err := os.ReadDir(sink.Dir)
	require.NoError(t, err)
	require.Len(t, spilled, 1)
	require.NoError(t, sink.Close())
	require.NoError(t, sink.Close())
	require.ErrorIs(t, sink.WriteStored(wdiff.Record{Addr: 1 << 30, Blocks: 1, Flags: wdiff.FlagAllZero}, wdiff.Stored{}), wdiff.ErrClosed)
	spilled, err = os.ReadDir(sink.Dir)
	require.NoError(t, err)
	require.Empty(t, spilled)
	want := bytes.Clone(old)
	copy(want[1024:], cur[1024:])
	require.Equal(t, want, applyDiff(t, old, buf.Bytes()))
	r, err := wdiff.NewReader(bytes.NewReader(buf.Bytes()), int64(buf.Len()))
	require.NoError(t, err)
	_, ok := r.(*wdiff.IndexedReader)
	require.True(t, ok)

	// Records out of order are refused, spilled or not.
	iw, err = wdiff.NewIndexedWriter(io.Discard, wdiff.FileHeader{}, wdiff.DefaultCompression)
	require.NoError(t, err)
	sink = NewIndexedSink(iw)
	sink.Dir = t.TempDir()
	for i := range 6 {
		require.NoError(t, sink.WriteStored(wdiff.Record{Addr: uint64(8 * i), Blocks: 8, Flags: wdiff.FlagAllZero}, wdiff.Stored{}))
	}
	require.ErrorIs(t, sink.WriteStored(wdiff.Record{Addr: 44, Blocks: 8, Flags: wdiff.FlagAllZero}, wdiff.Stored{}), wdiff.ErrUnsorted)
	require.ErrorIs(t, sink.Close(), wdiff.ErrUnsorted)
}
