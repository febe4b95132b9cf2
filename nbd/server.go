package nbd

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/pkg/errors"
)

// Defaults for Options fields left zero.
const (
	// DefaultMaxInFlight is the number of requests of one connection the
	// server runs at once.
	DefaultMaxInFlight = 16
	// DefaultMaxRequestSize is the largest READ or WRITE the server accepts
	// and advertises as its maximum block size: 32 MiB, the size the
	// protocol asks every server to tolerate.
	DefaultMaxRequestSize = 32 << 20
	// DefaultHandshakeTimeout bounds option haggling, so idle or slow
	// clients cannot hold a connection slot before choosing an export.
	DefaultHandshakeTimeout = 30 * time.Second
	// maxOptionLength is the largest option payload the server reads into
	// memory. GO and INFO need at most 4+4096+2+2*n bytes for a valid name;
	// larger payloads are skipped and answered with NBD_REP_ERR_TOO_BIG.
	maxOptionLength = 64 << 10
	// minMaxRequestSize keeps the advertised maximum block size at least as
	// large as the preferred block size, as the protocol requires.
	minMaxRequestSize = defaultPreferredBlockSize
)

// Options configure a Server. The zero value is usable.
type Options struct {
	// Logger receives connection and error logs (key "peer" names the
	// client, "export" the export). Nil means slog.Default().
	Logger *slog.Logger
	// MaxConns caps the number of connections Serve handles at once; further
	// clients wait in the listen backlog until a connection ends. 0 means
	// no limit. ServeConn is not counted.
	MaxConns int
	// TLS, when set, lets clients upgrade with NBD_OPT_STARTTLS. Go's
	// tls.Config defaults already refuse versions older than TLS 1.2.
	TLS *tls.Config
	// RequireTLS makes TLS mandatory (the protocol's FORCEDTLS mode): every
	// option but STARTTLS and ABORT is refused until TLS is up. It needs TLS.
	RequireTLS bool
	// DefaultExport is the export served to clients asking for the empty
	// name (e.g. qemu's nbd://host:port without a path).
	DefaultExport string
	// MaxInFlight bounds the requests of one connection run concurrently;
	// 0 means DefaultMaxInFlight.
	MaxInFlight int
	// MaxRequestSize bounds the length of READ and WRITE requests and is
	// advertised as the maximum block size; 0 means DefaultMaxRequestSize.
	// Values below 4096 are raised to 4096.
	MaxRequestSize int
	// HandshakeTimeout bounds the time from accept to entering transmission;
	// 0 means DefaultHandshakeTimeout, a negative value disables it.
	HandshakeTimeout time.Duration
}

// Server serves exports over the NBD protocol. Its methods are safe for
// concurrent use. A Server cannot be reused after Shutdown.
type Server struct {
	opts    Options
	log     *slog.Logger
	connSem chan struct{}
	done    chan struct{} // closed by Shutdown

	mu        sync.Mutex
	closing   bool
	exports   map[string]*export
	listeners map[net.Listener]struct{}
	conns     map[*serverConn]struct{}
}

// export is one named backend and the transmission flags it advertises.
type export struct {
	name        string
	description string
	backend     Backend
	readOnly    bool
	flags       TransmissionFlags
}

// NewServer returns a server with no exports.
func NewServer(opts Options) *Server {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.MaxInFlight <= 0 {
		opts.MaxInFlight = DefaultMaxInFlight
	}
	if opts.MaxRequestSize <= 0 {
		opts.MaxRequestSize = DefaultMaxRequestSize
	}
	opts.MaxRequestSize = max(opts.MaxRequestSize, minMaxRequestSize)
	if opts.MaxRequestSize > 1<<31 {
		opts.MaxRequestSize = 1 << 31
	}
	if opts.HandshakeTimeout == 0 {
		opts.HandshakeTimeout = DefaultHandshakeTimeout
	}
	s := &Server{
		opts:      opts,
		log:       opts.Logger,
		done:      make(chan struct{}),
		exports:   make(map[string]*export),
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[*serverConn]struct{}),
	}
	if opts.MaxConns > 0 {
		s.connSem = make(chan struct{}, opts.MaxConns)
	}
	return s
}

// AddExport makes b available under name. A read-only export advertises
// NBD_FLAG_READ_ONLY and answers every write with EPERM. The description is
// shown to clients by NBD_OPT_LIST and NBD_INFO_DESCRIPTION. The other
// transmission flags follow the optional interfaces b implements.
func (s *Server) AddExport(name string, b Backend, readOnly bool, description string) error {
	if !validString(name) {
		return errors.Wrapf(ErrInvalidName, "name of %d bytes", len(name))
	}
	if !validString(description) {
		return errors.Wrapf(ErrInvalidName, "description of export %q", name)
	}
	if b == nil {
		return errors.Errorf("nbd: export %q has a nil backend", name)
	}
	if size := b.Size(); size < 0 {
		return errors.Errorf("nbd: export %q has negative size %d", name, size)
	}
	e := &export{
		name:        name,
		description: description,
		backend:     b,
		readOnly:    readOnly,
		flags:       exportFlags(b, readOnly),
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.exports[name]; ok {
		return errors.Wrapf(ErrExportExists, "%q", name)
	}
	s.exports[name] = e
	return nil
}

// exportFlags derives the advertised transmission flags from the optional
// interfaces of b: a flag is set only when the server can honour it.
func exportFlags(b Backend, readOnly bool) TransmissionFlags {
	f := FlagHasFlags
	_, flusher := b.(Flusher)
	_, fua := b.(FUAWriter)
	_, trimmer := b.(Trimmer)
	if flusher {
		f |= FlagSendFlush
	}
	if readOnly {
		f |= FlagReadOnly
	} else {
		// Zeroes can always be written, by plain writes if need be.
		f |= FlagSendWriteZeroes
		if flusher || fua {
			f |= FlagSendFUA
		}
		if trimmer {
			f |= FlagSendTrim
		}
	}
	if m, ok := b.(MultiConner); ok && m.CanMultiConn() {
		f |= FlagCanMultiConn
	}
	return f
}

// RemoveExport stops offering the export, then gracefully ends the
// connections using it (their in-flight requests finish first) and waits for
// them, so that the backend is no longer in use when it returns nil. If ctx
// ends first the remaining connections are closed at once and ctx's error is
// returned.
func (s *Server) RemoveExport(ctx context.Context, name string) error {
	s.mu.Lock()
	e, ok := s.exports[name]
	if !ok {
		s.mu.Unlock()
		return errors.Wrapf(ErrUnknownExport, "%q", name)
	}
	delete(s.exports, name)
	var users []*serverConn
	for c := range s.conns {
		if c.usesExport(e) {
			users = append(users, c)
		}
	}
	s.mu.Unlock()
	return s.stopConns(ctx, users)
}

// Exports returns the names of the exports, sorted.
func (s *Server) Exports() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	names := make([]string, 0, len(s.exports))
	for n := range s.exports {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// lookup finds the export for a client's name; the empty name means the
// configured default export.
func (s *Server) lookup(name string) (*export, bool) {
	if name == "" {
		name = s.opts.DefaultExport
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.exports[name]
	return e, ok
}

// exportList snapshots the exports in name order, for NBD_OPT_LIST.
func (s *Server) exportList() []*export {
	s.mu.Lock()
	defer s.mu.Unlock()
	list := make([]*export, 0, len(s.exports))
	for _, e := range s.exports {
		list = append(list, e)
	}
	sort.Slice(list, func(i, j int) bool { return list[i].name < list[j].name })
	return list
}

func (s *Server) isClosing() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// Serve accepts connections on l and serves each in its own goroutine until
// Shutdown (it then returns ErrServerClosed) or until ctx ends (it returns
// ctx's error, and every connection it accepted is closed at once). It
// closes l before returning. l may be a TCP or a unix socket listener.
func (s *Server) Serve(ctx context.Context, l net.Listener) error {
	defer l.Close()
	if err := s.checkOptions(); err != nil {
		return err
	}
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return ErrServerClosed
	}
	s.listeners[l] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, l)
		s.mu.Unlock()
	}()
	stop := context.AfterFunc(ctx, func() { _ = l.Close() })
	defer stop()

	s.log.Info("nbd: serving", "addr", l.Addr().String())
	var backoff time.Duration
	for {
		if s.connSem != nil {
			select {
			case s.connSem <- struct{}{}:
			case <-s.done:
				return ErrServerClosed
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		nc, err := l.Accept()
		if err != nil {
			s.releaseConnSlot()
			switch {
			case ctx.Err() != nil:
				return ctx.Err()
			case s.isClosing():
				return ErrServerClosed
			case transientAcceptError(err):
				// Out of descriptors or an aborted handshake: wait and
				// retry, as net/http does, instead of giving up.
				backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
				s.log.Warn("nbd: accept failed; retrying", "err", err, "delay", backoff)
				select {
				case <-time.After(backoff):
				case <-s.done:
					return ErrServerClosed
				case <-ctx.Done():
					return ctx.Err()
				}
				continue
			}
			return errors.Wrap(err, "nbd: accept")
		}
		backoff = 0
		go func() {
			defer s.releaseConnSlot()
			_ = s.ServeConn(ctx, nc)
		}()
	}
}

// checkOptions rejects configurations under which no client could connect.
func (s *Server) checkOptions() error {
	if s.opts.RequireTLS && s.opts.TLS == nil {
		return errors.Wrap(ErrTLSRequired, "Options.RequireTLS is set without Options.TLS")
	}
	return nil
}

func (s *Server) releaseConnSlot() {
	if s.connSem != nil {
		<-s.connSem
	}
}

func transientAcceptError(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	for _, e := range []syscall.Errno{syscall.EMFILE, syscall.ENFILE, syscall.ENOBUFS, syscall.ENOMEM, syscall.ECONNABORTED} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// ServeConn runs the handshake and transmission phases on one connection
// and closes it. It returns nil when the client ends the session cleanly
// (NBD_CMD_DISC, NBD_OPT_ABORT or a close between requests) or the server
// shuts it down gracefully, ErrServerClosed after Shutdown, ctx's error when
// ctx ends, and otherwise the protocol or I/O error that ended it.
func (s *Server) ServeConn(ctx context.Context, nc net.Conn) error {
	if err := s.checkOptions(); err != nil {
		_ = nc.Close()
		return err
	}
	c := newServerConn(s, nc)
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		_ = nc.Close()
		return ErrServerClosed
	}
	s.conns[c] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		close(c.done)
	}()

	err := c.serve(ctx)
	if ctx.Err() != nil {
		err = ctx.Err()
	}
	return err
}

// Shutdown stops the server gracefully: it closes the listeners, drops
// connections still negotiating, lets connections in transmission finish the
// requests they already read (no new request is read), and closes them. It
// returns when all connections are closed, or when ctx ends, in which case
// the remaining connections are closed at once and ctx's error is returned.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if !s.closing {
		s.closing = true
		close(s.done)
	}
	for l := range s.listeners {
		_ = l.Close()
	}
	conns := make([]*serverConn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	return s.stopConns(ctx, conns)
}

// stopConns asks each connection to stop gracefully and waits for them.
func (s *Server) stopConns(ctx context.Context, conns []*serverConn) error {
	for _, c := range conns {
		c.stop()
	}
	for _, c := range conns {
		select {
		case <-c.done:
		case <-ctx.Done():
			for _, c := range conns {
				c.kill()
			}
			return ctx.Err()
		}
	}
	return nil
}

// serverConn is one client connection, tracked so Shutdown and RemoveExport
// can reach it.
type serverConn struct {
	srv  *Server
	raw  net.Conn
	log  *slog.Logger
	done chan struct{}

	mu           sync.Mutex
	transmitting bool
	stopping     bool
	exp          *export
}

func newServerConn(s *Server, nc net.Conn) *serverConn {
	return &serverConn{
		srv:  s,
		raw:  nc,
		log:  s.log.With("peer", peerName(nc)),
		done: make(chan struct{}),
	}
}

// peerName names the remote end for logs; unix socket peers are unnamed.
func peerName(nc net.Conn) string {
	if a := nc.RemoteAddr(); a != nil {
		if s := a.String(); s != "" && s != "@" {
			return s
		}
		return a.Network()
	}
	return "unknown"
}

func (c *serverConn) usesExport(e *export) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.exp == e
}

// stop ends the connection gracefully. A connection still negotiating has
// nothing in flight and is closed at once; one in transmission stops reading
// requests (an expired read deadline wakes its reader), finishes those in
// flight and then closes.
func (c *serverConn) stop() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stopping = true
	if !c.transmitting {
		_ = c.raw.Close()
		return
	}
	_ = c.raw.SetReadDeadline(time.Unix(1, 0))
}

// kill closes the connection at once.
func (c *serverConn) kill() { _ = c.raw.Close() }

// enterTransmission records the chosen export and lifts the handshake
// deadline. It fails when the connection is being stopped, or when the
// export was removed after the client chose it: checking under the server's
// lock means RemoveExport either sees this connection using the export or
// this check sees the export gone, so a removed backend is never used.
func (c *serverConn) enterTransmission(e *export) error {
	c.srv.mu.Lock()
	defer c.srv.mu.Unlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.stopping {
		return ErrServerClosed
	}
	if c.srv.exports[e.name] != e {
		return errors.Wrapf(ErrUnknownExport, "%q was removed during the handshake", e.name)
	}
	c.transmitting = true
	c.exp = e
	_ = c.raw.SetDeadline(time.Time{})
	return nil
}

func (c *serverConn) isStopping() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stopping
}

// serve runs both protocol phases and closes the connection.
func (c *serverConn) serve(ctx context.Context) error {
	defer c.raw.Close()
	stop := context.AfterFunc(ctx, c.kill)
	defer stop()

	c.log.Debug("nbd: connection opened")
	if t := c.srv.opts.HandshakeTimeout; t > 0 {
		_ = c.raw.SetDeadline(time.Now().Add(t))
	}
	n := newNegotiation(c)
	// Closing the negotiated transport first sends TLS's close_notify, as
	// the protocol asks, before the deferred close of the socket.
	defer func() { _ = n.rw.Close() }()
	e, err := n.run(ctx)
	if err != nil {
		if ctx.Err() != nil {
			c.log.Debug("nbd: connection closed during handshake: context done", "err", err)
			return ctx.Err()
		}
		if c.isStopping() || c.srv.isClosing() {
			c.log.Debug("nbd: connection closed during handshake by shutdown", "err", err)
			return ErrServerClosed
		}
		c.log.Warn("nbd: handshake failed", "err", err)
		return err
	}
	if e == nil {
		c.log.Debug("nbd: client ended negotiation")
		return nil
	}
	if err := c.enterTransmission(e); err != nil {
		c.log.Info("nbd: connection closed before transmission", "export", e.name, "err", err)
		return err
	}
	sess := newSession(c, n, e)
	c.log.Info("nbd: client connected", "export", e.name, "size", sess.size, "flags", e.flags.String())
	err = sess.run()
	if err != nil && ctx.Err() != nil {
		c.log.Info("nbd: connection closed: context done", "export", e.name)
		return ctx.Err()
	}
	if err != nil {
		c.log.Warn("nbd: connection ended with error", "export", e.name, "err", err)
		return err
	}
	c.log.Info("nbd: client disconnected", "export", e.name)
	return nil
}
