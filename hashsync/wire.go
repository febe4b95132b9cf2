package hashsync

import (
	"context"
	"io"
	"sync"
	"time"

	"github.com/pkg/errors"
	"github.com/walb-go/walb/wire"
)

// The adapters below carry each stream of a session as one wire bulk
// stream (Chunk frames closed by End), one per direction of the
// connection, while Conn.KeepAlive sends Dummy frames so that neither side
// times out while the other is busy reading or throttled (walb-tools sends
// a Dummy per bulk for the same reason).

// wireStreamFrame is the largest message piece put in one Chunk frame; the
// stream writer caps it at the peer's MaxFrame.
const wireStreamFrame = MaxChunkSize + 64

// ctxDeadline gives a wire bulk stream the deadline methods of a net.Conn,
// which the session code uses to interrupt blocked calls: a deadline
// cancels the stream's context when it passes (which breaks that direction
// of the connection, as it should once a session is being abandoned).
type ctxDeadline struct {
	mu     sync.Mutex
	cancel context.CancelFunc
	timer  *time.Timer
}

func (d *ctxDeadline) set(t time.Time) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.timer != nil {
		d.timer.Stop()
		d.timer = nil
	}
	if !t.IsZero() {
		d.timer = time.AfterFunc(time.Until(t), d.cancel)
	}
	return nil
}

func (d *ctxDeadline) stop() { _ = d.set(time.Time{}) }

// wireWriter sends each Write as Chunk frames of at most the stream's
// chunk size, without copying.
type wireWriter struct {
	sw *wire.StreamWriter
	dl *ctxDeadline
}

func (w wireWriter) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		k := min(len(p), w.sw.ChunkSize())
		if err := w.sw.Send(p[:k]); err != nil {
			return n, err
		}
		p, n = p[k:], n+k
	}
	return n, nil
}

func (w wireWriter) SetWriteDeadline(t time.Time) error { return w.dl.set(t) }

type wireReader struct {
	sr *wire.StreamReader
	dl *ctxDeadline
}

func (r wireReader) Read(p []byte) (int, error)        { return r.sr.Read(p) }
func (r wireReader) SetReadDeadline(t time.Time) error { return r.dl.set(t) }

// wireStreams opens the two bulk streams of a session on c, each under its
// own context derived from ctx.
func wireStreams(ctx context.Context, c *wire.Conn) (wireReader, wireWriter, func()) {
	rctx, rcancel := context.WithCancel(ctx)
	wctx, wcancel := context.WithCancel(ctx)
	r := wireReader{sr: c.NewStreamReader(rctx), dl: &ctxDeadline{cancel: rcancel}}
	w := wireWriter{sw: c.NewStreamWriter(wctx, wireStreamFrame), dl: &ctxDeadline{cancel: wcancel}}
	return r, w, func() {
		r.dl.stop()
		w.dl.stop()
		rcancel()
		wcancel()
	}
}

// drainEnd checks that the peer's bulk stream ends right after the
// session's end message, leaving the connection at the next frame of the
// exchange.
func drainEnd(sr *wire.StreamReader, what string) error {
	p, err := sr.Next()
	switch {
	case err == io.EOF:
		return nil
	case err != nil:
		return err
	}
	return errors.Wrapf(ErrProtocol, "%d bytes after the end of the %s stream", len(p), what)
}

// WireHashSide runs the hash side (RunHashSide) over a wire connection:
// the hash stream is sent as a bulk stream while the data stream is
// received as another. On success both bulk streams are complete and the
// exchange may go on (for example with the MetaSnap and ACK of
// dirty-hash-sync). On failure the connection is left in the middle of the
// exchange: send an error reply if it still works, then close it.
func WireHashSide(ctx context.Context, c *wire.Conn, old io.ReaderAt, s Session, sink Sink, opt HashOptions) (Stats, error) {
	stop := c.KeepAlive(ctx, 0)
	defer stop()
	r, w, done := wireStreams(ctx, c)
	defer done()
	st, err := runHashSide(ctx, r, w, old, s, sink, opt, w.sw.Close)
	if err != nil {
		return st, err
	}
	return st, drainEnd(r.sr, "data")
}

// WireDataSide runs the data side (SendDiff) over a wire connection: the
// hash stream is received as a bulk stream and the data stream is sent as
// another.
func WireDataSide(ctx context.Context, c *wire.Conn, cur io.ReaderAt, opt DataOptions) (Stats, error) {
	stop := c.KeepAlive(ctx, 0)
	defer stop()
	r, w, done := wireStreams(ctx, c)
	defer done()
	st, err := SendDiff(ctx, r, w, cur, opt)
	if err != nil {
		return st, err
	}
	if err := w.sw.Close(); err != nil {
		return st, err
	}
	return st, drainEnd(r.sr, "hash")
}
