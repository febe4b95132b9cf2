package hashsync

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"testing/iotest"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/walb-go/walb/wdiff"
	"github.com/walb-go/walb/wire"
)

// testCtx bounds a test so that a hang fails instead of blocking the run.
func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// memImage is an image in memory that may be read and written
// concurrently (the data side's device while writes go on).
type memImage struct {
	mu sync.RWMutex
	b  []byte
}

func (m *memImage) ReadAt(p []byte, off int64) (int, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if off >= int64(len(m.b)) {
		return 0, io.EOF
	}
	n := copy(p, m.b[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (m *memImage) WriteAt(p []byte, off int64) (int, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return copy(m.b[off:], p), nil
}

func (m *memImage) snapshot() []byte {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return bytes.Clone(m.b)
}

// sliceWriterAt applies writes to a byte slice.
type sliceWriterAt []byte

func (s sliceWriterAt) WriteAt(p []byte, off int64) (int, error) { return copy(s[off:], p), nil }

// applyDiff applies a wdiff file (either layout) to a copy of base.
func applyDiff(t testing.TB, base, diff []byte) []byte {
	t.Helper()
	r, err := wdiff.NewReader(bytes.NewReader(diff), int64(len(diff)))
	require.NoError(t, err)
	out := bytes.Clone(base)
	_, err = wdiff.Apply(context.Background(), r, sliceWriterAt(out), wdiff.ApplyOptions{Size: int64(len(out))})
	require.NoError(t, err)
	return out
}

// diffSink writes a sorted or indexed wdiff into a buffer.
type diffSink struct {
	buf     bytes.Buffer
	sorted  *wdiff.SortedWriter
	indexed *IndexedSink
}

func newDiffSink(t testing.TB, indexed bool) *diffSink {
	t.Helper()
	d := &diffSink{}
	var err error
	if indexed {
		var iw *wdiff.IndexedWriter
		iw, err = wdiff.NewIndexedWriter(&d.buf, wdiff.FileHeader{}, wdiff.DefaultCompression)
		d.indexed = NewIndexedSink(iw)
		d.indexed.Dir = t.TempDir()
	} else {
		d.sorted, err = wdiff.NewSortedWriter(&d.buf, wdiff.FileHeader{}, wdiff.DefaultCompression)
	}
	require.NoError(t, err)
	return d
}

func (d *diffSink) WriteStored(rec wdiff.Record, s wdiff.Stored) error {
	if d.indexed != nil {
		return d.indexed.WriteStored(rec, s)
	}
	return d.sorted.WriteStored(rec, s)
}

func (d *diffSink) close(t testing.TB) []byte {
	t.Helper()
	if d.indexed != nil {
		require.NoError(t, d.indexed.Close())
	} else {
		require.NoError(t, d.sorted.Close())
	}
	return d.buf.Bytes()
}

// transport connects the two halves: hash side (r, w) and data side (r, w).
type transport struct {
	name string
	open func(t testing.TB) (hr io.Reader, hw io.Writer, dr io.Reader, dw io.Writer)
}

func netPipeTransport(t testing.TB) (io.Reader, io.Writer, io.Reader, io.Writer) {
	a, b := net.Pipe()
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, a, b, b
}

func tcpTransport(t testing.TB) (io.Reader, io.Writer, io.Reader, io.Writer) {
	a, b := tcpPair(t)
	return a, a, b, b
}

func tcpPair(t testing.TB) (net.Conn, net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	ch := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			close(ch)
			return
		}
		ch <- c
	}()
	a, err := net.Dial("tcp", l.Addr().String())
	require.NoError(t, err)
	b, ok := <-ch
	require.True(t, ok)
	t.Cleanup(func() { a.Close(); b.Close() })
	return a, b
}

// shortTransport uses in-process pipes whose readers return one byte or
// half of what is asked, to exercise every partial-read path.
func shortTransport(t testing.TB) (io.Reader, io.Writer, io.Reader, io.Writer) {
	hashR, hashW := io.Pipe()
	dataR, dataW := io.Pipe()
	t.Cleanup(func() { hashR.Close(); dataR.Close() })
	return iotest.HalfReader(dataR), hashW, iotest.OneByteReader(hashR), dataW
}

var transports = []transport{
	{"netpipe", netPipeTransport},
	{"tcp", tcpTransport},
	{"short", shortTransport},
}

type syncResult struct {
	diff           []byte
	hashSt, dataSt Stats
}

// runSync runs both halves concurrently over tr and returns the wdiff the
// hash side produced.
func runSync(t testing.TB, tr transport, old io.ReaderAt, cur io.ReaderAt, s Session, hopt HashOptions, dopt DataOptions, indexed bool) syncResult {
	t.Helper()
	ctx := testCtx(t)
	hr, hw, dr, dw := tr.open(t)
	sink := newDiffSink(t, indexed)
	var res syncResult
	var derr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		res.dataSt, derr = SendDiff(ctx, dr, dw, cur, dopt)
	}()
	var herr error
	res.hashSt, herr = RunHashSide(ctx, hr, hw, old, s, sink, hopt)
	<-done
	require.NoError(t, herr, "hash side")
	require.NoError(t, derr, "data side")
	res.diff = sink.close(t)
	return res
}

// randImages returns an old image and a new one differing in random
// chunks (some rewritten with random data, some zeroed, some only one
// byte changed), the last partial chunk included when lucky.
func randImages(rng *rand.Rand, size, chunk int) (old, cur []byte, changed int) {
	old = make([]byte, size)
	for i := range old {
		old[i] = byte(rng.Uint32())
	}
	// Compressible regions, so that compression takes its path too.
	for i := 0; i < size; i += chunk * 3 {
		clear(old[i:min(size, i+chunk/2)])
	}
	cur = bytes.Clone(old)
	for off := 0; off < size; off += chunk {
		end := min(size, off+chunk)
		switch rng.IntN(8) {
		case 0:
			for i := off; i < end; i++ {
				cur[i] = byte(rng.Uint32())
			}
		case 1:
			clear(cur[off:end])
		case 2:
			cur[off+rng.IntN(end-off)] ^= 1 << rng.IntN(8)
		case 3:
			// Compressible new content.
			for i := off; i < end; i++ {
				cur[i] = byte(i / 100)
			}
		}
		if !bytes.Equal(old[off:end], cur[off:end]) {
			changed++
		}
	}
	return old, cur, changed
}

// wirePair returns the two ends of a wire exchange on loopback TCP.
func wirePair(t testing.TB, opts *wire.Options) (client, server *wire.Conn) {
	t.Helper()
	ctx := testCtx(t)
	l, err := wire.Listen(ctx, "127.0.0.1:0", "srv", opts)
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	ch := make(chan *wire.Conn, 1)
	errc := make(chan error, 1)
	go func() {
		nc, err := l.Accept()
		if err != nil {
			errc <- err
			return
		}
		c, err := l.Handshake(ctx, nc, nil)
		if err != nil {
			errc <- err
			return
		}
		ch <- c
	}()
	c, err := wire.Dial(ctx, l.Addr().String(), "cli", "hash-sync", opts)
	require.NoError(t, err)
	select {
	case s := <-ch:
		t.Cleanup(func() { c.Close(); s.Close() })
		return c, s
	case err := <-errc:
		t.Fatal(err)
	}
	return nil, nil
}
