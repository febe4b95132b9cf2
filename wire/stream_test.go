package wire

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"testing"
	"testing/iotest"

	"github.com/pkg/errors"
	"github.com/stretchr/testify/require"
)

func randomBytes(n int, seed uint64) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func TestStreamWriteSizes(t *testing.T) {
	data := randomBytes(3<<20+12345, 1)
	sizes := []int{1, 7, 4096, 64 << 10, 1 << 20, 3<<20 + 1}
	for _, chunk := range []int{0, 4096, 100 << 10} {
		for _, piece := range sizes {
			ctx := testCtx(t)
			c, s := pair(t, nil, nil, "stream")
			data := data
			if piece < 4096 {
				data = data[:300<<10+3] // tiny writes are slow under -race
			}
			errc := make(chan error, 1)
			go func() {
				w := c.NewStreamWriter(ctx, chunk)
				for off := 0; off < len(data); off += piece {
					if _, err := w.Write(data[off:min(off+piece, len(data))]); err != nil {
						errc <- err
						return
					}
				}
				if err := w.Close(); err != nil {
					errc <- err
					return
				}
				errc <- c.SendString(ctx, "after")
			}()
			r := s.NewStreamReader(ctx)
			var got bytes.Buffer
			n, err := r.WriteTo(&got)
			require.NoError(t, err)
			require.Equal(t, int64(len(data)), n)
			require.Equal(t, int64(len(data)), r.Total())
			require.Equal(t, sha256.Sum256(data), sha256.Sum256(got.Bytes()), "chunk %d piece %d", chunk, piece)
			// The exchange goes on after the stream.
			str, err := s.RecvString(ctx)
			require.NoError(t, err)
			require.Equal(t, "after", str)
			require.NoError(t, <-errc)
			// A finished reader keeps saying EOF.
			_, err = r.Next()
			require.Equal(t, io.EOF, err)
		}
	}
}

func TestStreamChunksKeepBoundaries(t *testing.T) {
	ctx := testCtx(t)
	c, s := pair(t, nil, nil, "stream")
	chunks := [][]byte{[]byte("a"), {}, randomBytes(200<<10, 2), []byte("tail")}
	go func() {
		w := c.NewStreamWriter(ctx, 0)
		_, _ = w.Write([]byte("buffered")) // flushed as its own chunk by Send
		for _, ch := range chunks {
			_ = w.Send(ch)
			_ = c.SendDummy(ctx)
		}
		_ = w.Close()
	}()
	r := s.NewStreamReader(ctx)
	want := append([][]byte{[]byte("buffered")}, chunks...)
	for i, w := range want {
		got, err := r.Next()
		require.NoError(t, err, "chunk %d", i)
		require.True(t, bytes.Equal(w, got), "chunk %d", i)
	}
	_, err := r.Next()
	require.Equal(t, io.EOF, err)
}

func TestStreamReadFromAndRead(t *testing.T) {
	ctx := testCtx(t)
	data := randomBytes(3<<20+17, 3)
	c, s := pair(t, nil, nil, "stream")
	go func() {
		w := c.NewStreamWriter(ctx, 256<<10)
		// A one-byte reader makes ReadFrom assemble full chunks anyway.
		if _, err := w.ReadFrom(iotest.HalfReader(bytes.NewReader(data))); err != nil {
			return
		}
		_ = w.Close()
	}()
	r := s.NewStreamReader(ctx)
	got, err := io.ReadAll(iotest.OneByteReader(r))
	require.NoError(t, err)
	require.True(t, bytes.Equal(data, got))
}

func TestStreamReaderTestReader(t *testing.T) {
	ctx := testCtx(t)
	data := randomBytes(300<<10, 4)
	c, s := pair(t, nil, nil, "stream")
	go func() {
		w := c.NewStreamWriter(ctx, 4096)
		_, _ = w.Write(data)
		_ = w.Close()
	}()
	require.NoError(t, iotest.TestReader(s.NewStreamReader(ctx), data))
}

func TestStreamAbort(t *testing.T) {
	ctx := testCtx(t)
	c, s := pair(t, nil, nil, "stream")
	after := make(chan [2]error, 1)
	go func() {
		w := c.NewStreamWriter(ctx, 0)
		_ = w.Send([]byte("x"))
		_, _ = w.Write([]byte("dropped"))
		_ = w.Abort(errors.Wrap(ErrStopping, "force stop"))
		after <- [2]error{w.Close(), w.Send(nil)}
	}()
	r := s.NewStreamReader(ctx)
	got, err := r.Next()
	require.NoError(t, err)
	require.Equal(t, []byte("x"), got)
	_, err = r.Next()
	require.ErrorIs(t, err, ErrStopping)
	require.Contains(t, err.Error(), "force stop")
	_, err = r.Next()
	require.ErrorIs(t, err, ErrStopping)
	errs := <-after
	require.ErrorIs(t, errs[0], ErrStreamDone)
	require.ErrorIs(t, errs[1], ErrStreamDone)
}

func TestStreamUnexpectedFrame(t *testing.T) {
	ctx := testCtx(t)
	c, s := pair(t, nil, nil, "stream")
	require.NoError(t, c.SendU64(ctx, 1))
	_, err := s.NewStreamReader(ctx).Next()
	require.ErrorIs(t, err, ErrUnexpectedFrame)
}

func TestStreamCanceled(t *testing.T) {
	c, s := pair(t, nil, nil, "stream")
	ctx, cancel := context.WithCancel(testCtx(t))
	w := c.NewStreamWriter(ctx, 0)
	require.NoError(t, w.Send([]byte("one")))
	cancel()
	require.ErrorIs(t, w.Send([]byte("two")), context.Canceled)
	r := s.NewStreamReader(testCtx(t))
	got, err := r.Next()
	require.NoError(t, err)
	require.Equal(t, []byte("one"), got)
}

func TestStreamSenderBlocksOnSlowReader(t *testing.T) {
	// Flow control: the sender cannot get more than the socket buffers
	// ahead of a receiver that does not read.
	ctx := testCtx(t)
	c, s := pair(t, nil, nil, "stream")
	sent := make(chan int, 1)
	stop := make(chan struct{})
	go func() {
		w := c.NewStreamWriter(ctx, 0)
		chunk := make([]byte, 1<<20)
		n := 0
		for {
			select {
			case <-stop:
				sent <- n
				return
			default:
			}
			if err := w.Send(chunk); err != nil {
				sent <- n
				return
			}
			n++
		}
	}()
	// Receive a few chunks, then stop reading and close: the sender must
	// fail, having sent a bounded amount.
	r := s.NewStreamReader(ctx)
	for range 3 {
		_, err := r.Next()
		require.NoError(t, err)
	}
	require.NoError(t, s.Close())
	n := <-sent
	close(stop)
	require.Less(t, n, 1000, "sender ran unbounded ahead")
}
