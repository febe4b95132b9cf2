package wire

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"io"
	"net"
	"os"
	"strings"
	"syscall"

	"github.com/pkg/errors"
)

// Limits on handshake fields.
const (
	// MaxIDLen bounds client and server ids.
	MaxIDLen = 1024
	// MaxCommandLen bounds command names.
	MaxCommandLen = 255
	// maxHelloSize bounds a Hello payload, so that it fits in any peer's
	// MaxFrame.
	maxHelloSize = MinMaxFrame
)

// ParseAddr splits an address into a network and an address for package
// net: "unix:/path/to/sock" is a unix socket, anything else ("host:port",
// "[::1]:port") is TCP.
func ParseAddr(addr string) (network, address string) {
	if p, ok := strings.CutPrefix(addr, "unix:"); ok {
		return "unix", p
	}
	return "tcp", addr
}

// appendPreamble appends the 8-byte preamble: magic and version.
func appendPreamble(dst []byte, v uint16) []byte {
	dst = append(dst, magic[:]...)
	return binary.LittleEndian.AppendUint16(dst, v)
}

// readPreamble reads the peer's preamble and returns its version.
func (c *Conn) readPreamble() (uint16, error) {
	var p [PreambleSize]byte
	n, err := io.ReadFull(c.fr.r, p[:])
	if err != nil {
		if err == io.EOF {
			return 0, errors.Wrap(ErrPeerClosed, "waiting for the preamble")
		}
		if err == io.ErrUnexpectedEOF {
			return 0, errors.Wrapf(ErrTruncated, "preamble (%d of %d bytes)", n, PreambleSize)
		}
		return 0, errors.WithMessage(err, "wire: read preamble")
	}
	if [6]byte(p[:6]) != magic {
		return 0, errors.Wrapf(ErrBadMagic, "preamble % x", p[:])
	}
	return binary.LittleEndian.Uint16(p[6:]), nil
}

// Dial connects to addr (see ParseAddr), runs TLS if opts.TLS is set, and
// opens an exchange of command with args. clientID names this side in the
// server's logs and statistics. If the server refuses (unknown command,
// version mismatch, shutting down), the error is a *RemoteError. ctx bounds
// the connection and handshake only; the returned Conn takes a context per
// operation.
func Dial(ctx context.Context, addr, clientID, command string, opts *Options, args ...string) (*Conn, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if len(clientID) > MaxIDLen {
		return nil, errors.Errorf("wire: client id of %d bytes over limit %d", len(clientID), MaxIDLen)
	}
	if command == "" || len(command) > MaxCommandLen {
		return nil, errors.Errorf("wire: command name of %d bytes outside [1, %d]", len(command), MaxCommandLen)
	}
	hello := binary.LittleEndian.AppendUint32(nil, uint32(o.MaxFrame))
	hello = appendString16(hello, clientID)
	hello = appendString16(hello, command)
	hello = appendStrings(hello, args)
	if len(hello) > maxHelloSize {
		return nil, errors.Wrapf(ErrFrameTooLarge, "arguments of %s take %d bytes, over the hello limit %d", command, len(hello), maxHelloSize)
	}

	network, address := ParseAddr(addr)
	ka, kac := o.keepAlive()
	d := net.Dialer{Timeout: o.IOTimeout, KeepAlive: ka, KeepAliveConfig: kac}
	nc, err := d.DialContext(ctx, network, address)
	if err != nil {
		return nil, errors.WithMessagef(err, "wire: dial %s", addr)
	}
	if o.TLS != nil {
		cfg := o.TLS.Clone()
		if cfg.ServerName == "" && network == "tcp" {
			if host, _, err := net.SplitHostPort(address); err == nil {
				cfg.ServerName = host
			}
		}
		tc := tls.Client(nc, cfg)
		hctx, cancel := context.WithTimeout(ctx, o.IOTimeout)
		err := tc.HandshakeContext(hctx)
		cancel()
		if err != nil {
			_ = nc.Close()
			return nil, errors.WithMessagef(err, "wire: tls handshake with %s", addr)
		}
		nc = tc
	}
	c := newConn(nc, o)
	c.command, c.args = command, args
	if err := c.clientHandshake(ctx, hello); err != nil {
		_ = c.Close()
		if _, ok := err.(*RemoteError); ok {
			return nil, err
		}
		return nil, errors.WithMessagef(err, "wire: handshake with %s for %s", addr, command)
	}
	return c, nil
}

func (c *Conn) clientHandshake(ctx context.Context, hello []byte) error {
	// The preamble and the Hello frame go out in one write.
	c.wmu.Lock()
	err := c.ww.arm(ctx, c.opts.IOTimeout)
	if err == nil {
		buf := appendPreamble(make([]byte, 0, PreambleSize+FrameOverhead+len(hello)), Version)
		buf = AppendFrame(buf, FrameHello, hello)
		_, _ = c.bw.Write(buf)
		if err = c.bw.Flush(); err != nil {
			err = c.opErr(ctx, err, "send hello")
		}
	}
	c.wmu.Unlock()
	if err != nil {
		return err
	}
	if err := c.rw.arm(ctx, c.opts.IOTimeout); err != nil {
		return err
	}
	v, err := c.readPreamble()
	if err != nil {
		return c.opErr(ctx, err, "receive preamble")
	}
	t, p, err := c.fr.Next()
	if err != nil {
		if err == io.EOF {
			return errors.Wrap(ErrPeerClosed, "waiting for welcome")
		}
		return c.opErr(ctx, err, "receive welcome")
	}
	if t != FrameWelcome {
		return errors.Wrapf(ErrUnexpectedFrame, "got %s frame, want welcome", t)
	}
	wm, err := decodeWelcome(p)
	if err != nil {
		return err
	}
	c.peerID = wm.serverID
	if wm.status != nil {
		return wm.status
	}
	ver, peerMax := wm.version, wm.maxFrame
	if ver != v {
		return errors.Wrapf(ErrBadFrame, "welcome version %d differs from preamble version %d", ver, v)
	}
	if ver < MinVersion || ver > Version {
		return errors.Wrapf(ErrVersionMismatch, "server chose version %d, this client speaks %d..%d", ver, MinVersion, Version)
	}
	if peerMax < MinMaxFrame {
		return errors.Wrapf(ErrBadFrame, "server max frame %d under the minimum %d", peerMax, MinMaxFrame)
	}
	c.version = ver
	c.peerMax = int(min(peerMax, MaxMaxFrame))
	return nil
}

// Listener accepts connections and runs the server side of the handshake.
// Accept and Handshake are separate so that a server can bound its
// connections before accepting and run the (possibly slow) handshake on the
// connection's own goroutine.
type Listener struct {
	ln   net.Listener
	id   string
	opts Options
}

// Listen listens on addr (see ParseAddr) as the server serverID. A unix
// socket file left by a crashed process is replaced if nothing answers on it.
func Listen(ctx context.Context, addr, serverID string, opts *Options) (*Listener, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	if len(serverID) > MaxIDLen {
		return nil, errors.Errorf("wire: server id of %d bytes over limit %d", len(serverID), MaxIDLen)
	}
	network, address := ParseAddr(addr)
	ka, kac := o.keepAlive()
	lc := net.ListenConfig{KeepAlive: ka, KeepAliveConfig: kac}
	ln, err := lc.Listen(ctx, network, address)
	if err != nil && network == "unix" && errors.Is(err, syscall.EADDRINUSE) && staleSocket(address) {
		if rerr := os.Remove(address); rerr == nil {
			ln, err = lc.Listen(ctx, network, address)
		}
	}
	if err != nil {
		return nil, errors.WithMessagef(err, "wire: listen on %s", addr)
	}
	return &Listener{ln: ln, id: serverID, opts: o}, nil
}

// staleSocket reports whether path is a unix socket nobody listens on.
func staleSocket(path string) bool {
	fi, err := os.Lstat(path)
	if err != nil || fi.Mode()&os.ModeSocket == 0 {
		return false
	}
	c, err := net.Dial("unix", path)
	if err == nil {
		_ = c.Close()
		return false
	}
	return errors.Is(err, syscall.ECONNREFUSED)
}

// NewListener wraps an existing listener.
func NewListener(ln net.Listener, serverID string, opts *Options) (*Listener, error) {
	o, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	return &Listener{ln: ln, id: serverID, opts: o}, nil
}

// Addr returns the listening address.
func (l *Listener) Addr() net.Addr { return l.ln.Addr() }

// ID returns the server id sent in handshakes.
func (l *Listener) ID() string { return l.id }

// Close stops listening. Connections already accepted are not affected.
func (l *Listener) Close() error { return l.ln.Close() }

// Accept waits for the next connection. It does not read from it.
func (l *Listener) Accept() (net.Conn, error) {
	nc, err := l.ln.Accept()
	if err != nil {
		return nil, errors.WithMessage(err, "wire: accept")
	}
	return nc, nil
}

// Handshake runs TLS (if configured) and the server side of the handshake
// on nc, bounded by ctx and the I/O timeout. check decides whether the
// command may run; its error is sent to the client (with CodeOf(err)) and
// returned. On any failure nc is closed and the error says why: ErrBadMagic,
// ErrVersionMismatch, a framing error, or check's error.
func (l *Listener) Handshake(ctx context.Context, nc net.Conn, check func(command string, args []string) error) (*Conn, error) {
	if l.opts.TLS != nil {
		tc := tls.Server(nc, l.opts.TLS)
		hctx, cancel := context.WithTimeout(ctx, l.opts.IOTimeout)
		err := tc.HandshakeContext(hctx)
		cancel()
		if err != nil {
			_ = nc.Close()
			return nil, errors.WithMessagef(err, "wire: tls handshake with %s", nc.RemoteAddr())
		}
		nc = tc
	}
	c := newConn(nc, l.opts)
	if err := c.serverHandshake(ctx, l.id, check); err != nil {
		_ = c.Close()
		return nil, errors.WithMessagef(err, "wire: handshake with %s", nc.RemoteAddr())
	}
	return c, nil
}

func (c *Conn) serverHandshake(ctx context.Context, serverID string, check func(string, []string) error) error {
	if err := c.rw.arm(ctx, c.opts.IOTimeout); err != nil {
		return err
	}
	v, err := c.readPreamble()
	if err != nil {
		err = c.opErr(ctx, err, "receive preamble")
		c.welcome(ctx, serverID, Version, err)
		return err
	}
	// A Hello is small: refuse a bigger frame before reading it.
	c.fr.max = maxHelloSize
	t, p, err := c.fr.Next()
	c.fr.max = c.opts.MaxFrame
	if err == nil && t != FrameHello {
		err = errors.Wrapf(ErrUnexpectedFrame, "got %s frame, want hello", t)
	}
	if err != nil {
		if err == io.EOF {
			return errors.Wrap(ErrPeerClosed, "waiting for hello")
		}
		err = c.opErr(ctx, err, "receive hello")
		c.welcome(ctx, serverID, Version, err)
		return err
	}
	h, err := decodeHello(p)
	if err != nil {
		c.welcome(ctx, serverID, Version, err)
		return err
	}
	c.peerID, c.command, c.args = h.clientID, h.command, h.args
	peerMax := h.maxFrame
	if peerMax < MinMaxFrame {
		err := errors.Wrapf(ErrBadFrame, "client max frame %d under the minimum %d", peerMax, MinMaxFrame)
		c.welcome(ctx, serverID, Version, err)
		return err
	}
	c.peerMax = int(min(peerMax, MaxMaxFrame))
	// The session speaks the client's version if this side knows it, else
	// the newest version this side knows, for a newer client to accept or
	// refuse.
	c.version = min(v, Version)
	if v < MinVersion {
		err := errors.Wrapf(ErrVersionMismatch, "client speaks version %d, server %d..%d", v, MinVersion, Version)
		c.welcome(ctx, serverID, Version, err)
		return err
	}
	if check != nil {
		if err := check(c.command, c.args); err != nil {
			c.welcome(ctx, serverID, c.version, err)
			return err
		}
	}
	return c.welcome(ctx, serverID, c.version, nil)
}

// welcome sends this side's preamble and the Welcome frame carrying status
// (nil for ok). After a failed handshake it is best effort.
func (c *Conn) welcome(ctx context.Context, serverID string, v uint16, status error) error {
	w := binary.LittleEndian.AppendUint16(nil, v)
	w = binary.LittleEndian.AppendUint32(w, uint32(c.opts.MaxFrame))
	w = appendString16(w, serverID)
	if status == nil {
		w = appendReply(w, kindOK, "", "")
	} else {
		w = appendReply(w, kindError, CodeOf(status), status.Error())
	}
	buf := AppendFrame(appendPreamble(nil, v), FrameWelcome, w)
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if err := c.ww.arm(ctx, c.opts.IOTimeout); err != nil {
		return err
	}
	_, _ = c.bw.Write(buf)
	if err := c.bw.Flush(); err != nil {
		c.werr = c.opErr(ctx, err, "send welcome")
		return c.werr
	}
	return nil
}

// helloMsg is the content of a Hello frame.
type helloMsg struct {
	maxFrame uint32
	clientID string
	command  string
	args     []string
}

// decodeHello decodes a Hello payload. Bytes after the arguments are fields
// of later versions and are ignored.
func decodeHello(p []byte) (helloMsg, error) {
	d := payloadDecoder{p: p, ctx: "hello frame"}
	var h helloMsg
	h.maxFrame = d.u32("max frame")
	h.clientID = d.string16("client id")
	h.command = d.string16("command")
	h.args = d.strings("argument")
	if d.err != nil {
		return helloMsg{}, d.err
	}
	if h.command == "" {
		return helloMsg{}, errors.Wrap(ErrBadFrame, "hello frame: empty command")
	}
	return h, nil
}

// welcomeMsg is the content of a Welcome frame.
type welcomeMsg struct {
	version  uint16
	maxFrame uint32
	serverID string
	status   *RemoteError // nil for ok
}

// decodeWelcome decodes a Welcome payload. Bytes after the status are
// fields of later versions and are ignored; an error status takes the rest
// of the payload as its message, so later versions append nothing after an
// error status.
func decodeWelcome(p []byte) (welcomeMsg, error) {
	d := payloadDecoder{p: p, ctx: "welcome frame"}
	var w welcomeMsg
	w.version = d.u16("version")
	w.maxFrame = d.u32("max frame")
	w.serverID = d.string16("server id")
	kind, re := decodeReply(&d)
	if d.err != nil {
		return welcomeMsg{}, d.err
	}
	if kind == kindAccept {
		return welcomeMsg{}, errors.Wrap(ErrBadFrame, "welcome frame: accept status")
	}
	w.status = re
	return w, nil
}
