package nbd

import (
	"bufio"
	"context"
	"crypto/tls"
	"encoding/binary"
	"io"
	"net"
	"sync"
	"time"

	"github.com/pkg/errors"
)

// maxOptionReplyLength bounds what the client buffers for one option reply.
const maxOptionReplyLength = 1 << 20

// ExportInfo describes an export as a server reports it.
type ExportInfo struct {
	Name        string
	Description string
	Size        int64
	Flags       TransmissionFlags
	// Block size constraints; the protocol defaults (1, 4096, 32 MiB as
	// the practical maximum) when the server does not send them.
	MinBlockSize       uint32
	PreferredBlockSize uint32
	MaxBlockSize       uint32
}

// ClientOptions configure the client side of the handshake.
type ClientOptions struct {
	// Export is the name of the export to use; "" asks for the server's
	// default export.
	Export string
	// TLS, when set, upgrades the connection with NBD_OPT_STARTTLS before
	// any other option, and fails if the server refuses.
	TLS *tls.Config
	// ExportName makes the client enter transmission with the old
	// NBD_OPT_EXPORT_NAME instead of NBD_OPT_GO (for old servers, and to
	// test servers). The client falls back to it by itself when the server
	// does not support NBD_OPT_GO.
	ExportName bool
}

// Client is an NBD client connected to one export. Its methods may be called
// from several goroutines at once: requests are pipelined on the connection
// and matched to replies by handle. It implements Backend and the optional
// backend interfaces, so an export of one server can be re-exported by
// another. Requests longer than the server's maximum block size are split.
//
// Only simple replies are negotiated. Methods block until the server answers
// or the connection fails; Close (from any goroutine) fails the pending
// requests with ErrClientClosed.
type Client struct {
	conn net.Conn
	br   *bufio.Reader
	info ExportInfo

	wmu sync.Mutex // serializes requests on the connection

	mu      sync.Mutex
	pending map[uint64]*call
	handle  uint64
	err     error // sticky: set when the connection is closed or broken
	done    chan struct{}
}

// call is one request waiting for its reply.
type call struct {
	buf  []byte // destination of READ data
	done chan Errno
}

// Dial connects to an NBD server ("tcp" or "unix" network) and negotiates
// the export named in opts.
func Dial(ctx context.Context, network, addr string, opts ClientOptions) (*Client, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, network, addr)
	if err != nil {
		return nil, errors.Wrap(err, "nbd: dial")
	}
	return NewClient(ctx, conn, opts)
}

// NewClient negotiates the export named in opts on conn and returns a
// client in transmission. It takes ownership of conn: Close closes it, and
// so does a failed negotiation. ctx bounds the handshake only.
func NewClient(ctx context.Context, conn net.Conn, opts ClientOptions) (c *Client, err error) {
	defer func() {
		if err != nil {
			_ = conn.Close()
		}
	}()
	h, err := startHandshake(ctx, conn, opts.TLS)
	if err != nil {
		return nil, err
	}
	defer h.finish()
	var info ExportInfo
	if opts.ExportName || !h.fixed {
		info, err = h.exportName(opts.Export)
	} else {
		info, err = h.infoGo(optGo, opts.Export)
		if errors.Is(err, ErrUnsupported) {
			info, err = h.exportName(opts.Export)
		}
	}
	if err != nil {
		return nil, handshakeErr(ctx, err)
	}
	if err := h.finish(); err != nil {
		return nil, err
	}
	c = &Client{
		conn:    h.conn,
		br:      h.br,
		info:    info,
		pending: make(map[uint64]*call),
		done:    make(chan struct{}),
	}
	go c.readLoop()
	return c, nil
}

// ListExports asks the server for its exports (NBD_OPT_LIST) and ends the
// session with NBD_OPT_ABORT. Only Name and Description are filled in. The
// connection is closed on return.
func ListExports(ctx context.Context, conn net.Conn, tlsConfig *tls.Config) ([]ExportInfo, error) {
	defer conn.Close()
	h, err := startHandshake(ctx, conn, tlsConfig)
	if err != nil {
		return nil, err
	}
	defer h.finish()
	if !h.fixed {
		return nil, errors.Wrap(ErrUnsupported, "server does not support fixed newstyle negotiation")
	}
	if err := h.sendOption(optList, nil); err != nil {
		return nil, err
	}
	var list []ExportInfo
	for {
		typ, data, err := h.readOptionReply(optList)
		if err != nil {
			return nil, handshakeErr(ctx, err)
		}
		switch typ {
		case repAck:
			h.abort()
			return list, nil
		case repServer:
			if len(data) < 4 || uint64(binary.BigEndian.Uint32(data)) > uint64(len(data)-4) {
				return nil, errors.Wrap(ErrProtocol, "malformed NBD_REP_SERVER")
			}
			n := binary.BigEndian.Uint32(data)
			list = append(list, ExportInfo{Name: string(data[4 : 4+n]), Description: string(data[4+n:])})
		default:
			return nil, optionError(optList, typ, data)
		}
	}
}

// QueryExport asks the server about one export (NBD_OPT_INFO, requesting
// name, description and block sizes) without using it, and ends the session
// with NBD_OPT_ABORT. The connection is closed on return.
func QueryExport(ctx context.Context, conn net.Conn, opts ClientOptions) (ExportInfo, error) {
	defer conn.Close()
	h, err := startHandshake(ctx, conn, opts.TLS)
	if err != nil {
		return ExportInfo{}, err
	}
	defer h.finish()
	if !h.fixed {
		return ExportInfo{}, errors.Wrap(ErrUnsupported, "server does not support fixed newstyle negotiation")
	}
	info, err := h.infoGo(optInfo, opts.Export)
	if err != nil {
		return ExportInfo{}, handshakeErr(ctx, err)
	}
	h.abort()
	return info, nil
}

// clientHandshake is the client side of option haggling.
type clientHandshake struct {
	conn     net.Conn
	raw      net.Conn
	br       *bufio.Reader
	fixed    bool
	noZeroes bool
	stop     func() bool
}

// startHandshake reads the greeting, sends the client flags and, when
// tlsConfig is set, upgrades to TLS. ctx's deadline and cancellation apply
// until finish.
func startHandshake(ctx context.Context, conn net.Conn, tlsConfig *tls.Config) (*clientHandshake, error) {
	h := &clientHandshake{conn: conn, raw: conn, br: bufio.NewReader(conn)}
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	// Cancellation interrupts blocked reads through an expired deadline.
	h.stop = context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	if err := h.start(ctx, tlsConfig); err != nil {
		_ = h.finish()
		return nil, handshakeErr(ctx, err)
	}
	return h, nil
}

// handshakeErr reports ctx's error when ctx ended the handshake, since the
// I/O error it caused (a timeout, a closed pipe) says less.
func handshakeErr(ctx context.Context, err error) error {
	var ne net.Error
	if _, ok := ctx.Deadline(); ok && errors.As(err, &ne) && ne.Timeout() {
		// The connection's deadline is ctx's, and may fire a moment
		// before ctx itself reports it.
		<-ctx.Done()
	}
	if ctx.Err() != nil {
		return errors.Wrapf(ctx.Err(), "nbd: handshake (%v)", err)
	}
	return err
}

func (h *clientHandshake) start(ctx context.Context, tlsConfig *tls.Config) error {
	var greet [18]byte
	if _, err := io.ReadFull(h.br, greet[:]); err != nil {
		return errors.Wrap(err, "nbd: read greeting")
	}
	if m := binary.BigEndian.Uint64(greet[0:8]); m != magicNBD {
		return errors.Wrapf(ErrBadMagic, "greeting magic %#016x", m)
	}
	if m := binary.BigEndian.Uint64(greet[8:16]); m != magicOpts {
		// 0x00420281861253 would be the oldstyle handshake, long obsolete.
		return errors.Wrapf(ErrBadMagic, "greeting magic %#016x is not newstyle", m)
	}
	sflags := binary.BigEndian.Uint16(greet[16:18])
	var cflags uint32
	if sflags&handshakeFlagFixedNewstyle != 0 {
		h.fixed = true
		cflags |= clientFlagFixedNewstyle
	}
	if sflags&handshakeFlagNoZeroes != 0 {
		h.noZeroes = true
		cflags |= clientFlagNoZeroes
	}
	var b [4]byte
	binary.BigEndian.PutUint32(b[:], cflags)
	if _, err := h.conn.Write(b[:]); err != nil {
		return errors.Wrap(err, "nbd: send client flags")
	}
	if tlsConfig == nil {
		return nil
	}
	if !h.fixed {
		return errors.Wrap(ErrTLSRequired, "server does not support fixed newstyle negotiation, so no TLS")
	}
	if err := h.sendOption(optStartTLS, nil); err != nil {
		return err
	}
	typ, data, err := h.readOptionReply(optStartTLS)
	if err != nil {
		return err
	}
	if typ != repAck {
		return errors.Wrap(optionError(optStartTLS, typ, data), "nbd: TLS requested")
	}
	tc := tls.Client(h.raw, tlsConfig)
	if err := tc.HandshakeContext(ctx); err != nil {
		return errors.Wrap(err, "nbd: TLS handshake")
	}
	h.conn = tc
	h.br = bufio.NewReader(tc)
	return nil
}

// finish lifts the handshake's deadline; it reports an error if ctx had
// already expired it.
func (h *clientHandshake) finish() error {
	if h.stop != nil && !h.stop() {
		h.stop = nil
		return errors.New("nbd: handshake cancelled")
	}
	h.stop = nil
	return h.raw.SetDeadline(time.Time{})
}

// abort sends NBD_OPT_ABORT; the server's ACK (which old servers omit) is
// not waited for, as the protocol allows.
func (h *clientHandshake) abort() {
	_ = h.sendOption(optAbort, nil)
}

func (h *clientHandshake) sendOption(opt uint32, data []byte) error {
	b := make([]byte, optionHeaderSize+len(data))
	binary.BigEndian.PutUint64(b[0:8], magicOpts)
	binary.BigEndian.PutUint32(b[8:12], opt)
	binary.BigEndian.PutUint32(b[12:16], uint32(len(data)))
	copy(b[16:], data)
	if _, err := h.conn.Write(b); err != nil {
		return errors.Wrapf(err, "nbd: send option %s", optionName(opt))
	}
	return nil
}

func (h *clientHandshake) readOptionReply(opt uint32) (uint32, []byte, error) {
	var hdr [optionReplyHeaderSize]byte
	if _, err := io.ReadFull(h.br, hdr[:]); err != nil {
		return 0, nil, errors.Wrapf(err, "nbd: read reply to option %s", optionName(opt))
	}
	if m := binary.BigEndian.Uint64(hdr[0:8]); m != magicOptReply {
		return 0, nil, errors.Wrapf(ErrBadMagic, "option reply magic %#016x", m)
	}
	if got := binary.BigEndian.Uint32(hdr[8:12]); got != opt {
		return 0, nil, errors.Wrapf(ErrProtocol, "reply for option %s while waiting for %s", optionName(got), optionName(opt))
	}
	typ := binary.BigEndian.Uint32(hdr[12:16])
	length := binary.BigEndian.Uint32(hdr[16:20])
	if length > maxOptionReplyLength {
		return 0, nil, errors.Wrapf(ErrOptionTooLarge, "reply to %s of %d bytes", optionName(opt), length)
	}
	data := make([]byte, length)
	if _, err := io.ReadFull(h.br, data); err != nil {
		return 0, nil, errors.Wrapf(err, "nbd: read reply to option %s", optionName(opt))
	}
	return typ, data, nil
}

// optionError turns an option error reply into an error wrapping the
// matching sentinel and carrying the server's message.
func optionError(opt, typ uint32, data []byte) error {
	msg := string(data)
	if len(msg) > maxStringLength {
		msg = msg[:maxStringLength]
	}
	var sentinel error
	switch typ {
	case repErrUnsup:
		sentinel = ErrUnsupported
	case repErrUnknown:
		sentinel = ErrUnknownExport
	case repErrTLSReqd:
		sentinel = ErrTLSRequired
	case repErrShutdown:
		sentinel = ErrShutdown
	case repErrTooBig:
		sentinel = ErrOptionTooLarge
	default:
		if typ&repErrBit == 0 {
			return errors.Wrapf(ErrProtocol, "unexpected reply type %#x to option %s", typ, optionName(opt))
		}
		sentinel = ErrOptionRejected
	}
	return errors.Wrapf(sentinel, "option %s: reply %#x: %q", optionName(opt), typ, msg)
}

// exportName enters transmission with NBD_OPT_EXPORT_NAME.
func (h *clientHandshake) exportName(name string) (ExportInfo, error) {
	if err := h.sendOption(optExportName, []byte(name)); err != nil {
		return ExportInfo{}, err
	}
	n := 10
	if !h.noZeroes {
		n += exportNameReplyZeroPadBytes
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(h.br, b); err != nil {
		// The server closes the connection for an unknown export.
		return ExportInfo{}, errors.Wrapf(err, "nbd: EXPORT_NAME %q refused or failed", name)
	}
	info := defaultExportInfo(name)
	info.Size = int64(binary.BigEndian.Uint64(b[0:8]))
	info.Flags = TransmissionFlags(binary.BigEndian.Uint16(b[8:10]))
	return info, nil
}

func defaultExportInfo(name string) ExportInfo {
	return ExportInfo{Name: name, MinBlockSize: 1, PreferredBlockSize: defaultPreferredBlockSize, MaxBlockSize: dosPayloadThreshold}
}

// infoGo sends NBD_OPT_INFO or NBD_OPT_GO asking for the name, description
// and block sizes, and collects the answers.
func (h *clientHandshake) infoGo(opt uint32, name string) (ExportInfo, error) {
	if !validString(name) {
		return ExportInfo{}, errors.Wrapf(ErrInvalidName, "%d bytes", len(name))
	}
	data := make([]byte, 4+len(name)+2+6)
	binary.BigEndian.PutUint32(data[0:4], uint32(len(name)))
	copy(data[4:], name)
	rest := data[4+len(name):]
	binary.BigEndian.PutUint16(rest[0:2], 3)
	binary.BigEndian.PutUint16(rest[2:4], infoName)
	binary.BigEndian.PutUint16(rest[4:6], infoDescription)
	binary.BigEndian.PutUint16(rest[6:8], infoBlockSize)
	if err := h.sendOption(opt, data); err != nil {
		return ExportInfo{}, err
	}
	info := defaultExportInfo(name)
	gotExport := false
	for {
		typ, d, err := h.readOptionReply(opt)
		if err != nil {
			return ExportInfo{}, err
		}
		if typ == repAck {
			if !gotExport {
				return ExportInfo{}, errors.Wrapf(ErrProtocol, "%s succeeded without NBD_INFO_EXPORT", optionName(opt))
			}
			return info, nil
		}
		if typ != repInfo {
			return ExportInfo{}, optionError(opt, typ, d)
		}
		if len(d) < 2 {
			return ExportInfo{}, errors.Wrap(ErrProtocol, "NBD_REP_INFO without type")
		}
		switch binary.BigEndian.Uint16(d) {
		case infoExport:
			if len(d) != 12 {
				return ExportInfo{}, errors.Wrapf(ErrProtocol, "NBD_INFO_EXPORT of %d bytes", len(d))
			}
			info.Size = int64(binary.BigEndian.Uint64(d[2:10]))
			info.Flags = TransmissionFlags(binary.BigEndian.Uint16(d[10:12]))
			gotExport = true
		case infoName:
			info.Name = string(d[2:])
		case infoDescription:
			info.Description = string(d[2:])
		case infoBlockSize:
			if len(d) != 14 {
				return ExportInfo{}, errors.Wrapf(ErrProtocol, "NBD_INFO_BLOCK_SIZE of %d bytes", len(d))
			}
			info.MinBlockSize = binary.BigEndian.Uint32(d[2:6])
			info.PreferredBlockSize = binary.BigEndian.Uint32(d[6:10])
			info.MaxBlockSize = binary.BigEndian.Uint32(d[10:14])
			if info.MinBlockSize == 0 || info.MaxBlockSize < info.MinBlockSize {
				return ExportInfo{}, errors.Wrapf(ErrProtocol, "block sizes min %d max %d", info.MinBlockSize, info.MaxBlockSize)
			}
		}
		// Unknown information types are ignored, as the protocol requires.
	}
}

// Info returns what the server said about the export during the handshake.
func (c *Client) Info() ExportInfo { return c.info }

// Size is the export size in bytes.
func (c *Client) Size() int64 { return c.info.Size }

// Flags are the export's transmission flags.
func (c *Client) Flags() TransmissionFlags { return c.info.Flags }

// maxChunk is the largest length the client sends in one READ, WRITE or
// WRITE_ZEROES, aligned down to the minimum block size.
func (c *Client) maxChunk() int64 {
	m := int64(c.info.MaxBlockSize)
	if m > dosPayloadThreshold {
		m = dosPayloadThreshold
	}
	if mb := int64(c.info.MinBlockSize); mb > 1 {
		m -= m % mb
	}
	return max(m, 1)
}

// ReadAt reads len(p) bytes at off. Like io.ReaderAt, a read reaching past
// the end of the export reads up to the end and returns io.EOF.
func (c *Client) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.Wrapf(ErrOutOfRange, "read at %d", off)
	}
	want := int64(len(p))
	var eof error
	if off >= c.info.Size {
		want = 0
		eof = io.EOF
	} else if want > c.info.Size-off {
		want = c.info.Size - off
		eof = io.EOF
	}
	chunk := c.maxChunk()
	for done := int64(0); done < want; {
		n := min(chunk, want-done)
		if err := c.do(cmdRead, 0, off+done, uint32(n), p[done:done+n], nil); err != nil {
			return int(done), err
		}
		done += n
	}
	return int(want), eof
}

// WriteAt writes p at off.
func (c *Client) WriteAt(p []byte, off int64) (int, error) {
	return c.write(p, off, 0)
}

// WriteAtFUA writes p at off and returns once the server has made it
// durable (NBD_CMD_FLAG_FUA).
func (c *Client) WriteAtFUA(p []byte, off int64) (int, error) {
	if c.info.Flags&FlagSendFUA == 0 {
		return 0, errors.Wrap(ErrUnsupported, "server did not advertise NBD_FLAG_SEND_FUA")
	}
	return c.write(p, off, cmdFlagFUA)
}

func (c *Client) write(p []byte, off int64, flags uint16) (int, error) {
	if off < 0 {
		return 0, errors.Wrapf(ErrOutOfRange, "write at %d", off)
	}
	chunk := c.maxChunk()
	done := int64(0)
	for done < int64(len(p)) {
		n := min(chunk, int64(len(p))-done)
		if err := c.do(cmdWrite, flags, off+done, uint32(n), nil, p[done:done+n]); err != nil {
			return int(done), err
		}
		done += n
	}
	return int(done), nil
}

// Flush asks the server to persist every completed write (NBD_CMD_FLUSH).
func (c *Client) Flush() error {
	if c.info.Flags&FlagSendFlush == 0 {
		return errors.Wrap(ErrUnsupported, "server did not advertise NBD_FLAG_SEND_FLUSH")
	}
	return c.do(cmdFlush, 0, 0, 0, nil, nil)
}

// Trim tells the server the range is no longer needed (NBD_CMD_TRIM).
func (c *Client) Trim(off, length int64) error {
	if c.info.Flags&FlagSendTrim == 0 {
		return errors.Wrap(ErrUnsupported, "server did not advertise NBD_FLAG_SEND_TRIM")
	}
	return c.ranged(cmdTrim, 0, off, length, 1<<30)
}

// WriteZeroes zeroes the range (NBD_CMD_WRITE_ZEROES); unless mayTrim, the
// server must keep it allocated (NBD_CMD_FLAG_NO_HOLE).
func (c *Client) WriteZeroes(off, length int64, mayTrim bool) error {
	if c.info.Flags&FlagSendWriteZeroes == 0 {
		return errors.Wrap(ErrUnsupported, "server did not advertise NBD_FLAG_SEND_WRITE_ZEROES")
	}
	var flags uint16
	if !mayTrim {
		flags = cmdFlagNoHole
	}
	return c.ranged(cmdWriteZeroes, flags, off, length, c.maxChunk())
}

// ranged sends a payload-less command over a range in chunks of at most
// chunk bytes, aligned to the minimum block size.
func (c *Client) ranged(typ, flags uint16, off, length, chunk int64) error {
	if off < 0 || length < 0 {
		return errors.Wrapf(ErrOutOfRange, "%s of %d bytes at %d", commandName(typ), length, off)
	}
	if mb := int64(c.info.MinBlockSize); mb > 1 {
		chunk -= chunk % mb
	}
	for length > 0 {
		n := min(chunk, length)
		if err := c.do(typ, flags, off, uint32(n), nil, nil); err != nil {
			return err
		}
		off += n
		length -= n
	}
	return nil
}

// Close ends the session with NBD_CMD_DISC and closes the connection.
// Requests still pending fail with ErrClientClosed.
func (c *Client) Close() error {
	c.mu.Lock()
	broken := c.err != nil
	if !broken {
		c.err = ErrClientClosed
	}
	c.mu.Unlock()
	if !broken {
		var b [requestHeaderSize]byte
		encodeRequest(b[:], request{typ: cmdDisc})
		c.wmu.Lock()
		_ = c.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
		_, _ = c.conn.Write(b[:])
		c.wmu.Unlock()
	}
	err := c.conn.Close()
	<-c.done
	if broken || errors.Is(err, net.ErrClosed) {
		// The reader may have closed the connection first, on the
		// server's close after NBD_CMD_DISC.
		return nil
	}
	return errors.Wrap(err, "nbd: close")
}

// do sends one request and waits for its reply. rbuf receives READ data;
// wbuf is WRITE's payload.
func (c *Client) do(typ, flags uint16, off int64, length uint32, rbuf, wbuf []byte) error {
	cl := &call{buf: rbuf, done: make(chan Errno, 1)}
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return err
	}
	c.handle++
	h := c.handle
	c.pending[h] = cl
	c.mu.Unlock()

	var hdr [requestHeaderSize]byte
	encodeRequest(hdr[:], request{flags: flags, typ: typ, handle: h, offset: uint64(off), length: length})
	bufs := net.Buffers{hdr[:]}
	if len(wbuf) > 0 {
		bufs = append(bufs, wbuf)
	}
	c.wmu.Lock()
	_, err := bufs.WriteTo(c.conn)
	c.wmu.Unlock()
	if err != nil {
		c.fail(errors.Wrap(err, "nbd: send request"))
	}
	errno, ok := <-cl.done
	if !ok {
		c.mu.Lock()
		err := c.err
		c.mu.Unlock()
		return err
	}
	if errno != 0 {
		if errno == ESHUTDOWN {
			return errors.Wrapf(ErrShutdown, "%s at %d", commandName(typ), off)
		}
		return errors.Wrapf(errno, "%s of %d bytes at %d", commandName(typ), length, off)
	}
	return nil
}

// fail marks the client broken and fails every pending request.
func (c *Client) fail(err error) {
	c.mu.Lock()
	if c.err == nil {
		c.err = errors.Wrap(ErrClientClosed, err.Error())
	}
	pending := c.pending
	c.pending = make(map[uint64]*call)
	c.mu.Unlock()
	for _, cl := range pending {
		close(cl.done)
	}
	_ = c.conn.Close()
}

// readLoop receives replies and completes their calls.
func (c *Client) readLoop() {
	defer close(c.done)
	var hdr [simpleReplyHeaderSize]byte
	for {
		if _, err := io.ReadFull(c.br, hdr[:]); err != nil {
			c.fail(errors.Wrap(err, "nbd: read reply"))
			return
		}
		if m := binary.BigEndian.Uint32(hdr[0:4]); m != magicSimpleReply {
			c.fail(errors.Wrapf(ErrBadMagic, "reply magic %#08x", m))
			return
		}
		errno := Errno(binary.BigEndian.Uint32(hdr[4:8]))
		h := binary.BigEndian.Uint64(hdr[8:16])
		c.mu.Lock()
		cl, ok := c.pending[h]
		delete(c.pending, h)
		c.mu.Unlock()
		if !ok {
			c.fail(errors.Wrapf(ErrProtocol, "reply for unknown handle %#x", h))
			return
		}
		if errno == 0 && len(cl.buf) > 0 {
			if _, err := io.ReadFull(c.br, cl.buf); err != nil {
				c.fail(errors.Wrap(err, "nbd: read reply data"))
				close(cl.done) // after fail, so the caller sees its error
				return
			}
		}
		cl.done <- errno
	}
}
