package wire

import (
	"context"
	"io"

	"github.com/pkg/errors"
)

// DefaultChunkSize is the chunk size of a StreamWriter used as an
// io.Writer (1 MiB): large enough that per-chunk costs vanish next to the
// copy, small enough to keep both ends' buffers modest.
const DefaultChunkSize = 1 << 20

// StreamWriter sends a bulk stream: a sequence of Chunk frames closed by an
// End frame, or cut by an error reply (Abort). Each chunk is one frame, so
// each is checksummed; nothing is queued inside the writer beyond one chunk
// buffer for Write, so a slow receiver slows the sender down (TCP flow
// control) and memory stays bounded.
//
// Send transmits the caller's slice as one chunk without copying it. Write
// and ReadFrom cut arbitrary data into chunks of the writer's chunk size.
type StreamWriter struct {
	c     *Conn
	ctx   context.Context
	size  int
	buf   []byte
	n     int
	err   error
	ended bool
}

// NewStreamWriter starts a stream on c. chunkSize is the chunk size used by
// Write and ReadFrom; zero means DefaultChunkSize, and it is capped at the
// peer's MaxFrame. ctx bounds every send of the stream.
func (c *Conn) NewStreamWriter(ctx context.Context, chunkSize int) *StreamWriter {
	if chunkSize <= 0 {
		chunkSize = DefaultChunkSize
	}
	return &StreamWriter{c: c, ctx: ctx, size: min(chunkSize, c.peerMax)}
}

// ChunkSize returns the size of the chunks Write and ReadFrom produce.
func (w *StreamWriter) ChunkSize() int { return w.size }

func (w *StreamWriter) check() error {
	if w.err != nil {
		return w.err
	}
	if w.ended {
		return errors.Wrap(ErrStreamDone, "stream writer")
	}
	return nil
}

// Send sends p as one chunk (after any data buffered by Write). p may be
// empty; it must not exceed the peer's MaxFrame.
func (w *StreamWriter) Send(p []byte) error {
	if err := w.check(); err != nil {
		return err
	}
	if err := w.flush(); err != nil {
		return err
	}
	if err := w.c.send(w.ctx, FrameChunk, p); err != nil {
		if !errors.Is(err, ErrFrameTooLarge) {
			w.err = err
		}
		return err
	}
	return nil
}

// flush sends the data buffered by Write as one chunk.
func (w *StreamWriter) flush() error {
	if w.n == 0 {
		return nil
	}
	err := w.c.send(w.ctx, FrameChunk, w.buf[:w.n])
	w.n = 0
	if err != nil {
		w.err = err
	}
	return err
}

// Write cuts p into chunks of the chunk size. Whole chunks are sent straight
// from p; a tail is kept until more data, a Send, or Close.
func (w *StreamWriter) Write(p []byte) (int, error) {
	if err := w.check(); err != nil {
		return 0, err
	}
	done := 0
	for len(p) > 0 {
		if w.n == 0 && len(p) >= w.size {
			if err := w.c.send(w.ctx, FrameChunk, p[:w.size]); err != nil {
				w.err = err
				return done, err
			}
			p = p[w.size:]
			done += w.size
			continue
		}
		if w.buf == nil {
			w.buf = make([]byte, w.size)
		}
		k := copy(w.buf[w.n:], p)
		w.n += k
		p = p[k:]
		done += k
		if w.n == w.size {
			if err := w.flush(); err != nil {
				return done, err
			}
		}
	}
	return done, nil
}

// ReadFrom sends everything r yields, in chunks of the chunk size, until
// io.EOF. It does not end the stream.
func (w *StreamWriter) ReadFrom(r io.Reader) (int64, error) {
	if err := w.check(); err != nil {
		return 0, err
	}
	if w.buf == nil {
		w.buf = make([]byte, w.size)
	}
	var total int64
	for {
		k, err := io.ReadFull(r, w.buf[w.n:])
		w.n += k
		total += int64(k)
		if w.n == w.size {
			if ferr := w.flush(); ferr != nil {
				return total, ferr
			}
		}
		switch err {
		case nil:
		case io.EOF, io.ErrUnexpectedEOF:
			return total, nil
		default:
			return total, err
		}
	}
}

// Close sends the buffered tail and the End frame. The stream is over; the
// connection goes on with the exchange's next frames.
func (w *StreamWriter) Close() error {
	if err := w.check(); err != nil {
		return err
	}
	if err := w.flush(); err != nil {
		return err
	}
	w.ended = true
	if err := w.c.send(w.ctx, FrameEnd, nil); err != nil {
		w.err = err
		return err
	}
	return nil
}

// Abort ends the stream with an error reply carrying cause (walb-tools'
// stream Error control): the receiver's Next returns it as a *RemoteError.
// Buffered data is dropped.
func (w *StreamWriter) Abort(cause error) error {
	if w.ended {
		return errors.Wrap(ErrStreamDone, "stream writer")
	}
	w.ended = true
	w.n = 0
	return w.c.SendError(w.ctx, cause)
}

// StreamReader receives a bulk stream sent by a StreamWriter. Dummy frames
// in the stream are skipped (each one restarts the I/O timeout).
type StreamReader struct {
	c     *Conn
	ctx   context.Context
	cur   []byte
	err   error
	total int64
}

// NewStreamReader starts receiving a stream on c; ctx bounds every receive.
func (c *Conn) NewStreamReader(ctx context.Context) *StreamReader {
	return &StreamReader{c: c, ctx: ctx}
}

// Next returns the next chunk. The slice is only valid until the next call
// of any receive method on the Conn. At the End frame Next returns io.EOF;
// if the sender aborted, the *RemoteError it sent.
func (r *StreamReader) Next() ([]byte, error) {
	if r.err != nil {
		return nil, r.err
	}
	t, p, err := r.c.recvFrame(r.ctx, FrameChunk)
	if err != nil {
		r.err = err
		return nil, err
	}
	switch t {
	case FrameChunk:
		r.total += int64(len(p))
		return p, nil
	case FrameEnd:
		r.err = io.EOF
		return nil, io.EOF
	}
	r.err = r.c.unexpected(t, p, FrameChunk)
	return nil, r.err
}

// Total returns the number of chunk bytes received so far.
func (r *StreamReader) Total() int64 { return r.total }

// Read reads chunk bytes as a continuous byte stream.
func (r *StreamReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for len(r.cur) == 0 {
		c, err := r.Next()
		if err != nil {
			return 0, err
		}
		r.cur = c
	}
	n := copy(p, r.cur)
	r.cur = r.cur[n:]
	return n, nil
}

// WriteTo writes the rest of the stream to w, chunk by chunk, and returns
// nil at the End frame.
func (r *StreamReader) WriteTo(w io.Writer) (int64, error) {
	var total int64
	if len(r.cur) > 0 {
		n, err := w.Write(r.cur)
		total += int64(n)
		r.cur = r.cur[n:]
		if err != nil {
			return total, err
		}
	}
	for {
		c, err := r.Next()
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
		n, err := w.Write(c)
		total += int64(n)
		if err != nil {
			return total, err
		}
	}
}
