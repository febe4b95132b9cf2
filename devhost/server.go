package devhost

import (
	"bufio"
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/pkg/errors"
	"golang.org/x/sys/unix"
)

// Limits of the control server.
const (
	// maxControlConns bounds the connections served at once; more wait
	// in the listen backlog.
	maxControlConns = 64
	// idleTimeout closes a connection that sends no request for that long.
	idleTimeout = 5 * time.Minute
	// streamWriteTimeout bounds each write of a cat-log stream, so a client
	// that stops reading cannot hold a device (and delete-wdev) forever.
	streamWriteTimeout = time.Minute
)

// ControlServer answers control requests on a unix socket with a
// Controller, normally a Host. Only root and the daemon's own user may
// connect: the socket file has mode 0600, and the peer's credentials are
// checked on every connection.
type ControlServer struct {
	ctl Controller
	log *slog.Logger

	mu     sync.Mutex
	ls     map[net.Listener]bool
	conns  map[net.Conn]bool
	closed bool
	wg     sync.WaitGroup
	ctx    context.Context
	cancel context.CancelFunc
}

// NewControlServer returns a server answering with ctl; logger nil means
// slog.Default().
func NewControlServer(ctl Controller, logger *slog.Logger) *ControlServer {
	if logger == nil {
		logger = slog.Default()
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &ControlServer{ctl: ctl, log: logger, ls: map[net.Listener]bool{}, conns: map[net.Conn]bool{},
		ctx: ctx, cancel: cancel}
}

// ListenControl creates the control socket at path with mode 0600. The
// socket is made under a temporary name and renamed into place once its
// mode is set, so it is never reachable with wider permissions. A stale
// socket left by a crashed daemon is replaced; a live one (a daemon answers
// on it) is an ErrBusy error.
func ListenControl(path string) (*net.UnixListener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode()&os.ModeSocket == 0 {
			return nil, errors.Wrapf(ErrBusy, "%s exists and is not a socket", path)
		}
		c, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			c.Close()
			return nil, errors.Wrapf(ErrBusy, "a daemon is listening on %s", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, errors.Wrap(err, "devhost: remove stale socket")
		}
	}
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".new")
	_ = os.Remove(tmp)
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, errors.Wrap(err, "devhost: listen on the control socket")
	}
	// The listener would unlink its original name on Close, which is gone
	// after the rename; the daemon removes the final name itself.
	l.SetUnlinkOnClose(false)
	if err := os.Chmod(tmp, 0o600); err != nil {
		l.Close()
		os.Remove(tmp)
		return nil, errors.Wrap(err, "devhost: chmod the control socket")
	}
	if err := os.Rename(tmp, path); err != nil {
		l.Close()
		os.Remove(tmp)
		return nil, errors.Wrap(err, "devhost: place the control socket")
	}
	return l, nil
}

// Serve accepts connections on l until Shutdown or until ctx ends. It
// closes l before returning.
func (s *ControlServer) Serve(ctx context.Context, l net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		l.Close()
		return ErrShutdown
	}
	s.ls[l] = true
	s.mu.Unlock()
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	defer func() {
		s.mu.Lock()
		delete(s.ls, l)
		s.mu.Unlock()
		l.Close()
	}()
	sem := make(chan struct{}, maxControlConns)
	for {
		select {
		case sem <- struct{}{}:
		case <-s.ctx.Done():
			return ErrShutdown
		}
		c, err := l.Accept()
		if err != nil {
			<-sem
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return ErrShutdown
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return errors.Wrap(err, "devhost: accept")
		}
		if !s.track(c) {
			<-sem
			c.Close()
			return ErrShutdown
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			defer func() { <-sem }()
			defer s.untrack(c)
			s.serveConn(c)
		}()
	}
}

func (s *ControlServer) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[c] = true
	return true
}

func (s *ControlServer) untrack(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	c.Close()
}

// Shutdown stops accepting, cancels the requests in progress and closes
// every connection, then waits for their handlers.
func (s *ControlServer) Shutdown() {
	s.mu.Lock()
	s.closed = true
	for l := range s.ls {
		l.Close()
	}
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	s.cancel()
	s.wg.Wait()
}

// peerAllowed checks the credentials of a unix socket peer: root or the
// daemon's own user.
func peerAllowed(c net.Conn) error {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return nil // not a unix socket (tests over net.Pipe): nothing to check
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return err
	}
	if cerr != nil {
		return cerr
	}
	if cred.Uid != 0 && int(cred.Uid) != os.Geteuid() {
		return errors.Errorf("uid %d may not use this daemon", cred.Uid)
	}
	return nil
}

func (s *ControlServer) serveConn(c net.Conn) {
	log := s.log
	if err := peerAllowed(c); err != nil {
		log.Warn("devhost: control connection refused", "err", err.Error())
		// Answer the first request rather than hang up at once, so that the
		// client reads the reason instead of a broken pipe.
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		_, _ = readLine(bufio.NewReaderSize(c, 4096), MaxRequestSize)
		_ = writeJSONLine(c, errorResponse(errors.Wrap(ErrDenied, err.Error())))
		return
	}
	ctx, cancel := context.WithCancel(s.ctx)
	defer cancel()
	br := bufio.NewReaderSize(c, 4096)
	for {
		_ = c.SetReadDeadline(time.Now().Add(idleTimeout))
		line, err := readLine(br, MaxRequestSize)
		if err != nil {
			if errors.Is(err, ErrTooLarge) {
				_ = c.SetWriteDeadline(time.Now().Add(streamWriteTimeout))
				_ = writeJSONLine(c, errorResponse(err))
			}
			return
		}
		_ = c.SetReadDeadline(time.Time{})
		if !s.handle(ctx, c, line) {
			return
		}
	}
}

func errorResponse(err error) Response {
	return Response{V: ProtocolVersion, Code: codeOf(err), Error: err.Error()}
}

// handle runs one request and writes its answer. It reports whether the
// connection may carry another request.
func (s *ControlServer) handle(ctx context.Context, c net.Conn, line []byte) bool {
	var req Request
	if err := decodeStrict(line, &req); err != nil {
		return s.reply(c, errorResponse(errors.Wrapf(ErrBadRequest, "malformed request: %v", err)))
	}
	spec, err := req.check()
	if err != nil {
		return s.reply(c, errorResponse(err))
	}
	start := time.Now()
	var resp Response
	if spec.ans == ansStream {
		return s.catLog(ctx, c, &req)
	}
	resp, err = s.dispatch(ctx, &req, spec)
	if err != nil {
		resp = errorResponse(err)
		s.log.Info("devhost: request failed", "op", req.Op, "vol", req.Name, "err", err.Error())
	} else {
		resp.V, resp.OK = ProtocolVersion, true
		s.log.Debug("devhost: request done", "op", req.Op, "vol", req.Name, "took", time.Since(start))
	}
	return s.reply(c, resp)
}

func (s *ControlServer) reply(c net.Conn, resp Response) bool {
	_ = c.SetWriteDeadline(time.Now().Add(streamWriteTimeout))
	if err := writeJSONLine(c, resp); err != nil {
		return false
	}
	return true
}

func u64p(v uint64) *uint64 { return &v }
func boolp(v bool) *bool    { return &v }

// dispatch runs every operation but cat-log.
func (s *ControlServer) dispatch(ctx context.Context, req *Request, spec opSpec) (Response, error) {
	ctl, name := s.ctl, req.Name
	var resp Response
	value := func(v uint64, err error) (Response, error) { resp.Value = u64p(v); return resp, err }
	flag := func(v bool, err error) (Response, error) { resp.Bool = boolp(v); return resp, err }
	switch req.Op {
	case "create-wdev":
		var opts CreateOptions
		if req.Options != nil {
			opts = *req.Options
		}
		opts.Name = name
		di, err := ctl.CreateWdev(ctx, req.LogDevice, req.DataDevice, opts)
		resp.Device = &di
		return resp, err
	case "delete-wdev":
		return resp, ctl.DeleteWdev(ctx, name, req.Force)
	case "list":
		devs, err := ctl.List(ctx)
		resp.Devices = devs
		return resp, err
	case "get-oldest-lsid":
		return value(ctl.OldestLsid(ctx, name))
	case "get-written-lsid":
		return value(ctl.WrittenLsid(ctx, name))
	case "get-permanent-lsid":
		return value(ctl.PermanentLsid(ctx, name))
	case "get-completed-lsid":
		return value(ctl.CompletedLsid(ctx, name))
	case "get-lsids":
		l, err := ctl.Lsids(ctx, name)
		resp.Lsids = toWire(l)
		return resp, err
	case "info":
		st, err := ctl.Info(ctx, name)
		resp.Info = &st
		return resp, err
	case "set-oldest-lsid":
		return resp, ctl.SetOldestLsid(ctx, name, *req.Lsid)
	case "freeze":
		var timeout time.Duration
		if req.TimeoutMs != nil {
			if *req.TimeoutMs > uint64(maxDurationMs) {
				return resp, errors.Wrapf(ErrInvalid, "freeze timeout %d ms", *req.TimeoutMs)
			}
			timeout = time.Duration(*req.TimeoutMs) * time.Millisecond
		}
		return resp, ctl.Freeze(ctx, name, timeout)
	case "melt":
		return resp, ctl.Melt(ctx, name)
	case "is-frozen":
		return flag(ctl.IsFrozen(ctx, name))
	case "reset-wal":
		return resp, ctl.ResetWAL(ctx, name)
	case "resize":
		var size uint64
		if req.SizeLB != nil {
			size = *req.SizeLB
		}
		return resp, ctl.Resize(ctx, name, size)
	case "is-log-overflow":
		return flag(ctl.IsLogOverflow(ctx, name))
	case "get-log-usage":
		return value(ctl.LogUsage(ctx, name))
	case "get-log-capacity":
		return value(ctl.LogCapacity(ctx, name))
	case "is-flush-capable":
		return flag(ctl.IsFlushCapable(ctx, name))
	case "force-checkpoint":
		return resp, ctl.TakeCheckpoint(ctx, name)
	case "get-checkpoint-interval":
		iv, err := ctl.CheckpointInterval(ctx, name)
		return value(uint64(iv/time.Millisecond), err)
	case "set-checkpoint-interval":
		if *req.IntervalMs > uint64(maxDurationMs) {
			return resp, errors.Wrapf(ErrInvalid, "checkpoint interval %d ms", *req.IntervalMs)
		}
		return resp, ctl.SetCheckpointInterval(ctx, name, time.Duration(*req.IntervalMs)*time.Millisecond)
	}
	// The table and this switch list the same operations.
	return resp, errors.Wrapf(ErrBadRequest, "operation %q has no handler", req.Op)
}

// maxDurationMs is the largest millisecond count a time.Duration holds.
const maxDurationMs = int64(^uint64(0)>>1) / int64(time.Millisecond)

// catLog answers cat-log: a header response, data frames, the trailer.
func (s *ControlServer) catLog(ctx context.Context, c net.Conn, req *Request) bool {
	begin, end := AutoLsid, AutoLsid
	if req.Begin != nil {
		begin = *req.Begin
	}
	if req.End != nil {
		end = *req.End
	}
	// The header goes out before the first byte of the log, but only once
	// the request is known to be acceptable: a stream that fails at once
	// is answered with a plain error instead.
	dw := &deadlineWriter{c: c}
	fw := newFrameWriter(dw)
	hw := &headerOnFirstWrite{w: fw, c: dw}
	got, err := s.ctl.CatLog(ctx, req.Name, begin, end, hw)
	if !hw.sent {
		if err != nil {
			s.log.Info("devhost: request failed", "op", req.Op, "vol", req.Name, "err", err.Error())
			return s.reply(c, errorResponse(err))
		}
		// An empty result still has a stream (of no bytes).
		if err := hw.sendHeader(); err != nil {
			return false
		}
	}
	if cerr := fw.Close(); cerr != nil {
		return false // the connection is broken; nothing more can be said
	}
	if err != nil {
		s.log.Info("devhost: cat-log failed", "vol", req.Name, "err", err.Error())
		return s.reply(c, errorResponse(err))
	}
	return s.reply(c, Response{V: ProtocolVersion, OK: true, Value: u64p(got)})
}

// deadlineWriter writes to the connection with a deadline per write.
type deadlineWriter struct{ c net.Conn }

func (d *deadlineWriter) Write(p []byte) (int, error) {
	_ = d.c.SetWriteDeadline(time.Now().Add(streamWriteTimeout))
	return d.c.Write(p)
}

// headerOnFirstWrite sends the stream header before the first data.
type headerOnFirstWrite struct {
	w    *frameWriter
	c    *deadlineWriter
	sent bool
}

func (h *headerOnFirstWrite) sendHeader() error {
	h.sent = true
	return writeJSONLine(h.c, Response{V: ProtocolVersion, OK: true, Stream: true})
}

func (h *headerOnFirstWrite) Write(p []byte) (int, error) {
	if !h.sent {
		if err := h.sendHeader(); err != nil {
			return 0, err
		}
	}
	return h.w.Write(p)
}
