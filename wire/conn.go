package wire

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/meta"
)

// Defaults for Options.
const (
	// DefaultIOTimeout bounds each frame sent or received (walb-tools -to).
	DefaultIOTimeout = 10 * time.Second
	// DefaultBufferSize is the size of each connection's read and write
	// buffers.
	DefaultBufferSize = 256 << 10
	// maxLinger bounds how long Finish waits for the peer to close.
	maxLinger = 5 * time.Second
	// directMin is the payload size from which a frame is written with one
	// writev straight from the caller's buffer instead of being copied into
	// the write buffer.
	directMin = 32 << 10
)

// Options configure a connection. The zero value (or a nil *Options) gives
// plain TCP, DefaultIOTimeout, DefaultMaxFrame and the Go runtime's TCP
// keepalive defaults.
type Options struct {
	// IOTimeout bounds every frame sent or received: no frame (Dummy
	// frames included) for this long fails the operation with ErrTimeout.
	// A context deadline that comes sooner wins. Zero means
	// DefaultIOTimeout.
	IOTimeout time.Duration
	// MaxFrame is the largest payload this side accepts, announced to the
	// peer in the handshake. Zero means DefaultMaxFrame; otherwise it must
	// be within [MinMaxFrame, MaxMaxFrame].
	MaxFrame int
	// BufferSize is the size of the read and write buffers. Zero means
	// DefaultBufferSize.
	BufferSize int
	// TLS, if not nil, runs TLS over the connection: it is the client
	// config for Dial (ServerName defaults to the host of the address) and
	// the server config for Listen.
	TLS *tls.Config
	// KeepAlive sets TCP keepalive probes (walb-tools -ka, -kaidle,
	// -kaintvl, -kacnt). Nil keeps the Go runtime's default; a config with
	// Enable false disables keepalive.
	KeepAlive *net.KeepAliveConfig
}

// withDefaults validates o and fills in its zero fields.
func (o *Options) withDefaults() (Options, error) {
	var r Options
	if o != nil {
		r = *o
	}
	if r.IOTimeout < 0 {
		return r, errors.Errorf("wire: negative IOTimeout %v", r.IOTimeout)
	}
	if r.IOTimeout == 0 {
		r.IOTimeout = DefaultIOTimeout
	}
	if r.MaxFrame == 0 {
		r.MaxFrame = DefaultMaxFrame
	}
	if r.MaxFrame < MinMaxFrame || r.MaxFrame > MaxMaxFrame {
		return r, errors.Errorf("wire: MaxFrame %d outside [%d, %d]", r.MaxFrame, MinMaxFrame, MaxMaxFrame)
	}
	if r.BufferSize < 0 {
		return r, errors.Errorf("wire: negative BufferSize %d", r.BufferSize)
	}
	if r.BufferSize == 0 {
		r.BufferSize = DefaultBufferSize
	}
	r.BufferSize = max(r.BufferSize, 4<<10)
	return r, nil
}

// keepAlive returns the values for net.Dialer / net.ListenConfig.
func (o *Options) keepAlive() (time.Duration, net.KeepAliveConfig) {
	switch {
	case o.KeepAlive == nil:
		return 0, net.KeepAliveConfig{}
	case !o.KeepAlive.Enable:
		return -1, net.KeepAliveConfig{}
	}
	return 0, *o.KeepAlive
}

// Reply is the kind of a successful reply.
type Reply byte

// Successful reply kinds; an error reply is returned as a *RemoteError.
const (
	// ReplyOK: the command is done (a value may follow).
	ReplyOK Reply = 0
	// ReplyAccept: the command was accepted and goes on in the background.
	ReplyAccept Reply = 1
)

// String returns "ok" or "accept".
func (r Reply) String() string {
	switch r {
	case ReplyOK:
		return "ok"
	case ReplyAccept:
		return "accept"
	}
	return "error"
}

// Conn is one connection after a successful handshake: it carries the
// exchange of one command. One goroutine may receive while others send:
// sends are serialized (each frame is written whole and flushed before the
// send returns), receives must not be called concurrently.
//
// A failed send or receive breaks the connection for that direction: every
// later call in it returns the same error (a context canceled before an
// operation starts is reported without breaking anything). An error reply
// from the peer is returned as a *RemoteError by whatever receive was
// waiting, and is sticky too.
type Conn struct {
	nc     net.Conn
	opts   Options
	fr     *FrameReader
	bw     *bufio.Writer
	direct bool // nc takes writev (plain TCP or unix socket)

	command string
	args    []string
	peerID  string
	version uint16
	peerMax int

	rw   deadlineWatch
	rerr error

	wmu     sync.Mutex
	ww      deadlineWatch
	werr    error
	errSent bool
	hdr     [HeaderSize]byte
	tail    [TrailerSize]byte
	iov     [3][]byte
	bufs    net.Buffers
	scratch []byte

	closeOnce sync.Once
	closed    atomic.Bool
	closeErr  error
}

func newConn(nc net.Conn, o Options) *Conn {
	c := &Conn{
		nc:      nc,
		opts:    o,
		bw:      bufio.NewWriterSize(nc, o.BufferSize),
		peerMax: MinMaxFrame,
	}
	c.fr = NewFrameReader(bufio.NewReaderSize(nc, o.BufferSize), o.MaxFrame)
	switch nc.(type) {
	case *net.TCPConn, *net.UnixConn:
		c.direct = true
	}
	c.rw.set = nc.SetReadDeadline
	c.ww.set = nc.SetWriteDeadline
	return c
}

// Command returns the command or sub-protocol name of the exchange.
func (c *Conn) Command() string { return c.command }

// Args returns the command's arguments (sent by the client in its Hello).
func (c *Conn) Args() []string { return c.args }

// PeerID returns the id the peer announced (walbc's -id, a server's -id).
func (c *Conn) PeerID() string { return c.peerID }

// Version returns the protocol version of the session.
func (c *Conn) Version() uint16 { return c.version }

// PeerMaxFrame returns the largest payload the peer accepts.
func (c *Conn) PeerMaxFrame() int { return c.peerMax }

// RemoteAddr returns the peer's network address.
func (c *Conn) RemoteAddr() net.Addr { return c.nc.RemoteAddr() }

// Peer returns "id@address" for logs.
func (c *Conn) Peer() string { return c.peerID + "@" + c.nc.RemoteAddr().String() }

// IOTimeout returns the per-frame timeout in force.
func (c *Conn) IOTimeout() time.Duration { return c.opts.IOTimeout }

// Close closes the connection at once. Everything sent before is already
// written to the socket. Close interrupts blocked sends and receives.
func (c *Conn) Close() error {
	c.closeOnce.Do(func() {
		c.closed.Store(true)
		c.closeErr = c.nc.Close()
		c.rw.release()
		c.ww.release()
	})
	return c.closeErr
}

// Finish ends the exchange politely: it half-closes the sending direction,
// waits for the peer to close its side (at most min(IOTimeout, 5s), and not
// after ctx is done), and closes. Closing before the peer has read
// everything can make the kernel reset the connection and drop the last
// frames, so servers end every exchange with Finish (walb-tools' writeFin).
func (c *Conn) Finish(ctx context.Context) error {
	if c.closed.Load() {
		return c.Close()
	}
	c.wmu.Lock()
	switch nc := c.nc.(type) {
	case *tls.Conn:
		_ = nc.CloseWrite()
	case interface{ CloseWrite() error }:
		_ = nc.CloseWrite()
	}
	c.wmu.Unlock()
	// The peer should send nothing more; whatever it does send is dropped,
	// within a bound so that a flooding peer cannot hold us.
	if c.rw.arm(ctx, min(c.opts.IOTimeout, maxLinger)) == nil {
		_, _ = io.CopyN(io.Discard, c.fr.r, int64(c.opts.MaxFrame)+FrameOverhead)
	}
	return c.Close()
}

// deadlineWatch applies per-operation deadlines to one direction of a
// connection and makes a context's cancellation interrupt a blocked
// operation (by moving the deadline to the past). The callback registered
// with the context is kept while successive operations use the same
// context, so steady streaming costs no allocation.
type deadlineWatch struct {
	mu   sync.Mutex
	set  func(time.Time) error
	done <-chan struct{}
	stop func() bool
	gen  uint64
}

// aLongTimeAgo is a deadline that has always passed.
var aLongTimeAgo = time.Unix(1, 0)

// arm sets the deadline of the next operation: now + timeout, or the
// context's deadline if sooner. It fails, changing nothing, if ctx is done.
func (w *deadlineWatch) arm(ctx context.Context, timeout time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	dl := time.Now().Add(timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(dl) {
		dl = d
	}
	done := ctx.Done()
	w.mu.Lock()
	defer w.mu.Unlock()
	if done != w.done {
		w.releaseLocked()
		if done != nil {
			gen := w.gen
			w.done = done
			w.stop = context.AfterFunc(ctx, func() {
				w.mu.Lock()
				defer w.mu.Unlock()
				if w.gen == gen {
					_ = w.set(aLongTimeAgo)
				}
			})
		}
	}
	return w.set(dl)
}

func (w *deadlineWatch) releaseLocked() {
	if w.stop != nil {
		w.stop()
		w.stop = nil
	}
	w.done = nil
	w.gen++
}

func (w *deadlineWatch) release() {
	w.mu.Lock()
	w.releaseLocked()
	w.mu.Unlock()
}

// opErr turns the error of an operation that ran under ctx into the error
// the caller sees: the context's error if it caused the failure, a timeout
// error for an expired I/O deadline, ErrConnClosed after Close.
func (c *Conn) opErr(ctx context.Context, err error, what string) error {
	if cerr := ctx.Err(); cerr != nil {
		return errors.Wrapf(cerr, "wire: %s", what)
	}
	if errors.Is(err, os.ErrDeadlineExceeded) {
		if d, ok := ctx.Deadline(); ok && !time.Now().Before(d) {
			return errors.Wrapf(context.DeadlineExceeded, "wire: %s", what)
		}
		return &timeoutError{op: what}
	}
	if c.closed.Load() {
		return errors.Wrapf(ErrConnClosed, "%s", what)
	}
	return errors.WithMessagef(err, "wire: %s", what)
}

// recvFrame returns the next frame that is not a Dummy. want only names the
// expected frame in error messages.
func (c *Conn) recvFrame(ctx context.Context, want FrameType) (FrameType, []byte, error) {
	if c.rerr != nil {
		return 0, nil, c.rerr
	}
	if c.closed.Load() {
		return 0, nil, errors.Wrapf(ErrConnClosed, "receive %s", want)
	}
	for {
		if err := c.rw.arm(ctx, c.opts.IOTimeout); err != nil {
			return 0, nil, c.opErr(ctx, err, "receive "+want.String())
		}
		t, p, err := c.fr.Next()
		if err != nil {
			if err == io.EOF {
				err = errors.Wrapf(ErrPeerClosed, "waiting for %s", want)
				if c.closed.Load() {
					err = errors.Wrapf(ErrConnClosed, "receive %s", want)
				}
			} else {
				err = c.opErr(ctx, err, "receive "+want.String())
			}
			c.rerr = err
			return 0, nil, err
		}
		if t != FrameDummy {
			return t, p, nil
		}
	}
}

// unexpected builds the error for frame t arriving instead of want: the
// peer's error if t is an error reply. It is sticky.
func (c *Conn) unexpected(t FrameType, p []byte, want FrameType) error {
	var err error
	if t == FrameReply {
		d := payloadDecoder{p: p, ctx: "reply frame"}
		kind, re := decodeReply(&d)
		switch {
		case d.end() != nil:
			err = d.err
		case re != nil:
			err = re
		default:
			err = errors.Wrapf(ErrUnexpectedFrame, "got reply %q, want %s frame", Reply(kind), want)
		}
	} else {
		err = errors.Wrapf(ErrUnexpectedFrame, "got %s frame, want %s frame", t, want)
	}
	c.rerr = err
	return err
}

// recv returns the payload of the next frame, which must be of type want.
func (c *Conn) recv(ctx context.Context, want FrameType) ([]byte, error) {
	t, p, err := c.recvFrame(ctx, want)
	if err != nil {
		return nil, err
	}
	if t != want {
		return nil, c.unexpected(t, p, want)
	}
	return p, nil
}

// badPayload records a payload that does not decode as its type requires.
func (c *Conn) badPayload(err error) error {
	c.rerr = err
	return err
}

// send writes one frame and flushes it.
func (c *Conn) send(ctx context.Context, t FrameType, payload []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.sendLocked(ctx, t, payload)
}

func (c *Conn) sendLocked(ctx context.Context, t FrameType, payload []byte) error {
	if c.werr != nil {
		return c.werr
	}
	if c.closed.Load() {
		return errors.Wrapf(ErrConnClosed, "send %s", t)
	}
	if len(payload) > c.peerMax {
		return errors.Wrapf(ErrFrameTooLarge, "%s frame of %d bytes over the peer's limit %d", t, len(payload), c.peerMax)
	}
	if err := c.ww.arm(ctx, c.opts.IOTimeout); err != nil {
		return c.opErr(ctx, err, "send "+t.String())
	}
	putHeader(c.hdr[:], t, len(payload))
	binary.LittleEndian.PutUint32(c.tail[:], frameCRC(c.hdr[:], payload))
	var err error
	if c.direct && len(payload) >= directMin {
		if c.bw.Buffered() > 0 {
			err = c.bw.Flush()
		}
		if err == nil {
			c.iov[0], c.iov[1], c.iov[2] = c.hdr[:], payload, c.tail[:]
			c.bufs = c.iov[:]
			_, err = c.bufs.WriteTo(c.nc)
			c.iov[1] = nil // do not pin the caller's buffer
		}
	} else {
		_, _ = c.bw.Write(c.hdr[:])
		_, _ = c.bw.Write(payload)
		_, _ = c.bw.Write(c.tail[:])
		err = c.bw.Flush()
	}
	if err != nil {
		c.werr = c.opErr(ctx, err, "send "+t.String())
		return c.werr
	}
	return nil
}

// maxKeptScratch bounds the scratch buffer a Conn keeps between sends.
const maxKeptScratch = 1 << 20

// sendScratch sends c.scratch as a frame of type t, then drops the
// scratch buffer if a large value made it grow.
func (c *Conn) sendScratch(ctx context.Context, t FrameType) error {
	err := c.sendLocked(ctx, t, c.scratch)
	if cap(c.scratch) > maxKeptScratch {
		c.scratch = nil
	}
	return err
}

// SendString sends a String frame.
func (c *Conn) SendString(ctx context.Context, s string) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if len(s) > c.peerMax {
		return errors.Wrapf(ErrFrameTooLarge, "string frame of %d bytes over the peer's limit %d", len(s), c.peerMax)
	}
	c.scratch = append(c.scratch[:0], s...)
	return c.sendScratch(ctx, FrameString)
}

// RecvString receives a String frame.
func (c *Conn) RecvString(ctx context.Context) (string, error) {
	p, err := c.recv(ctx, FrameString)
	return string(p), err
}

// SendStrings sends a Strings frame (a string vector).
func (c *Conn) SendStrings(ctx context.Context, v []string) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if n := stringsSize(v); n > c.peerMax {
		return errors.Wrapf(ErrFrameTooLarge, "strings frame of %d bytes over the peer's limit %d", n, c.peerMax)
	}
	c.scratch = appendStrings(c.scratch[:0], v)
	return c.sendScratch(ctx, FrameStrings)
}

// RecvStrings receives a Strings frame. An empty vector is returned as a
// non-nil empty slice.
func (c *Conn) RecvStrings(ctx context.Context) ([]string, error) {
	p, err := c.recv(ctx, FrameStrings)
	if err != nil {
		return nil, err
	}
	d := payloadDecoder{p: p, ctx: "strings frame"}
	v := d.strings("string")
	if err := d.end(); err != nil {
		return nil, c.badPayload(err)
	}
	return v, nil
}

// SendU64 sends a U64 frame.
func (c *Conn) SendU64(ctx context.Context, v uint64) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.scratch = binary.LittleEndian.AppendUint64(c.scratch[:0], v)
	return c.sendLocked(ctx, FrameU64, c.scratch)
}

// RecvU64 receives a U64 frame.
func (c *Conn) RecvU64(ctx context.Context) (uint64, error) {
	p, err := c.recv(ctx, FrameU64)
	if err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint64(p), nil
}

// SendBool sends a Bool frame.
func (c *Conn) SendBool(ctx context.Context, v bool) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	b := byte(0)
	if v {
		b = 1
	}
	c.scratch = append(c.scratch[:0], b)
	return c.sendLocked(ctx, FrameBool, c.scratch)
}

// RecvBool receives a Bool frame.
func (c *Conn) RecvBool(ctx context.Context) (bool, error) {
	p, err := c.recv(ctx, FrameBool)
	if err != nil {
		return false, err
	}
	switch p[0] {
	case 0:
		return false, nil
	case 1:
		return true, nil
	}
	return false, c.badPayload(errors.Wrapf(ErrBadFrame, "bool frame holds 0x%02x", p[0]))
}

// SendBytes sends a Bytes frame (a UUID, a hash, any opaque value). Bulk
// data goes in a stream (NewStreamWriter) instead.
func (c *Conn) SendBytes(ctx context.Context, b []byte) error {
	return c.send(ctx, FrameBytes, b)
}

// RecvBytes receives a Bytes frame into a new slice.
func (c *Conn) RecvBytes(ctx context.Context) ([]byte, error) {
	p, err := c.recv(ctx, FrameBytes)
	if err != nil {
		return nil, err
	}
	return append([]byte(nil), p...), nil
}

// scratchWriter appends to a Conn's scratch buffer.
type scratchWriter struct{ c *Conn }

func (w scratchWriter) Write(p []byte) (int, error) {
	w.c.scratch = append(w.c.scratch, p...)
	return len(p), nil
}

// SendValue sends a Value frame holding v's cybozu serialized form (the
// records of package meta: Snap, Diff, State, LsidGid, or any other
// meta.Encodable).
func (c *Conn) SendValue(ctx context.Context, v meta.Encodable) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.scratch = c.scratch[:0]
	if err := meta.NewEncoder(scratchWriter{c}).Value(v); err != nil {
		return errors.WithMessage(err, "wire: encode value")
	}
	return c.sendScratch(ctx, FrameValue)
}

// RecvValue receives a Value frame and decodes it into v; the payload must
// hold exactly one value.
func (c *Conn) RecvValue(ctx context.Context, v meta.Decodable) error {
	p, err := c.recv(ctx, FrameValue)
	if err != nil {
		return err
	}
	if err := meta.Unmarshal(p, v); err != nil {
		return c.badPayload(errors.WithMessage(err, "wire: value frame"))
	}
	return nil
}

// SendAck sends an Ack frame: "what you sent is committed" (walb-tools'
// ACK).
func (c *Conn) SendAck(ctx context.Context) error { return c.send(ctx, FrameAck, nil) }

// RecvAck receives an Ack frame.
func (c *Conn) RecvAck(ctx context.Context) error {
	_, err := c.recv(ctx, FrameAck)
	return err
}

// SendOK sends an ok reply.
func (c *Conn) SendOK(ctx context.Context) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.scratch = appendReply(c.scratch[:0], kindOK, "", "")
	return c.sendLocked(ctx, FrameReply, c.scratch)
}

// SendAccept sends an accept reply: the command goes on in the background.
func (c *Conn) SendAccept(ctx context.Context) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.scratch = appendReply(c.scratch[:0], kindAccept, "", "")
	return c.sendLocked(ctx, FrameReply, c.scratch)
}

// SendError sends an error reply with CodeOf(err) and err's text (cut to 32
// KiB). An error reply ends the exchange, so only the first call on a Conn
// sends anything; later calls return nil.
func (c *Conn) SendError(ctx context.Context, err error) error {
	if err == nil {
		err = errors.New("unknown error")
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.errSent {
		return nil
	}
	c.errSent = true
	c.scratch = appendReply(c.scratch[:0], kindError, CodeOf(err), err.Error())
	return c.sendLocked(ctx, FrameReply, c.scratch)
}

// ErrorSent reports whether SendError has been called.
func (c *Conn) ErrorSent() bool {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.errSent
}

// RecvReply receives a reply. An error reply is returned as a *RemoteError
// (match it with errors.Is against a Code, or ErrRemote).
func (c *Conn) RecvReply(ctx context.Context) (Reply, error) {
	p, err := c.recv(ctx, FrameReply)
	if err != nil {
		return 0, err
	}
	d := payloadDecoder{p: p, ctx: "reply frame"}
	kind, re := decodeReply(&d)
	if err := d.end(); err != nil {
		return 0, c.badPayload(err)
	}
	if re != nil {
		c.rerr = re
		return 0, re
	}
	return Reply(kind), nil
}

// ExpectOK receives a reply that must be ok.
func (c *Conn) ExpectOK(ctx context.Context) error { return c.expect(ctx, ReplyOK) }

// ExpectAccept receives a reply that must be accept.
func (c *Conn) ExpectAccept(ctx context.Context) error { return c.expect(ctx, ReplyAccept) }

func (c *Conn) expect(ctx context.Context, want Reply) error {
	r, err := c.RecvReply(ctx)
	if err != nil {
		return err
	}
	if r != want {
		c.rerr = errors.Wrapf(ErrUnexpectedReply, "got %q, want %q", r, want)
		return c.rerr
	}
	return nil
}

// KeepAlive sends a Dummy frame every interval (IOTimeout/3 if interval is
// not positive) until stop is called or ctx is done, so that the peer's
// receive does not time out while this side is busy (hashing, applying,
// waiting for a third party). stop waits for the sender goroutine to exit.
func (c *Conn) KeepAlive(ctx context.Context, interval time.Duration) (stop func()) {
	if interval <= 0 {
		interval = c.opts.IOTimeout / 3
	}
	quit := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				if err := c.send(ctx, FrameDummy, nil); err != nil {
					return
				}
			case <-quit:
				return
			case <-ctx.Done():
				return
			}
		}
	}()
	return sync.OnceFunc(func() {
		close(quit)
		wg.Wait()
	})
}

// SendDummy sends one Dummy frame.
func (c *Conn) SendDummy(ctx context.Context) error { return c.send(ctx, FrameDummy, nil) }
