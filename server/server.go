package server

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime/debug"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/wire"
)

// Handler runs one command on its connection. args are the command's
// arguments from the client's Hello. A handler replies (SendOK, SendAccept,
// values...) and returns nil, or returns an error, which the framework sends
// to the client as an error reply (if the handler has not sent one) with
// wire.CodeOf(err). ctx is canceled by a force shutdown; it carries a
// logger (LoggerFrom) with the command and peer.
type Handler func(ctx context.Context, c *wire.Conn, args []string) error

// GetHandler answers "get TARGET args...": it returns the value sent after
// the ok reply, one of string, []string, uint64, int, int64, bool or a
// meta.Encodable.
type GetHandler func(ctx context.Context, args []string) (any, error)

// Service is the concrete server (storage, proxy, archive) run by a Server.
type Service interface {
	// Recover rebuilds the service's state from its base directory. Run
	// calls it after binding the address and before accepting any
	// connection or starting background tasks; an error aborts Run.
	Recover(ctx context.Context) error
}

// StatusReporter is implemented by services that add lines to "status".
// With no arguments the lines follow the framework's own; with arguments
// (a volume) they are the whole answer.
type StatusReporter interface {
	Status(ctx context.Context, args []string) ([]string, error)
}

// Kicker is implemented by services with something to do on "kick" (make
// proxies due for a heartbeat, clear send-error flags). The framework then
// runs the delayed background tasks at once.
type Kicker interface {
	Kick(ctx context.Context, args []string) error
}

// TaskRunner is implemented by services that have background tasks; the
// Server's TaskQueue runs them with RunTask on MaxBackground workers.
type TaskRunner interface {
	RunTask(ctx context.Context, key string) error
}

// Config configures a Server. Zero fields take the walb-tools defaults.
type Config struct {
	// ID names the server in handshakes and logs (-id; default: host name).
	ID string
	// Addr is the address to listen on, "host:port" or "unix:/path" (-p).
	Addr string
	// HostType answers "get host-type": "storage", "proxy" or "archive".
	HostType string
	// Version answers the "version" command.
	Version string
	// MaxConns bounds concurrent connections (-maxconn, default 10); past
	// it the accept loop waits for a connection to end.
	MaxConns int
	// MaxForeground bounds foreground tasks (-fg, default 2).
	MaxForeground int
	// MaxBackground is the number of background task workers (-bg,
	// default 1).
	MaxBackground int
	// RetryMin and RetryMax are the background retry backoff (-delay,
	// default 1 s; -maxdelay, default 300 s).
	RetryMin, RetryMax time.Duration
	// Wire sets timeouts, TLS, keepalive and frame limits.
	Wire *wire.Options
	// Logger receives the server's logs (default slog.Default()).
	Logger *slog.Logger
}

// ShutdownMode says how a server stops.
type ShutdownMode int

const (
	// Graceful stops accepting connections and background tasks, and waits
	// for running handlers and tasks to finish.
	Graceful ShutdownMode = iota
	// Force also cancels the contexts of running handlers and tasks.
	Force
)

// String returns "graceful" or "force".
func (m ShutdownMode) String() string {
	if m == Force {
		return "force"
	}
	return "graceful"
}

// Server is the framework shared by the storage, proxy and archive servers:
// it listens, bounds connections, runs the handshake, dispatches each
// connection to the handler of its command, answers the common commands,
// runs background tasks, bounds foreground tasks, and shuts down gracefully
// or by force. See the package documentation for how to build on it.
type Server struct {
	cfg Config
	log *slog.Logger

	handlers map[string]Handler
	gets     map[string]GetHandler
	ln       *wire.Listener
	svc      Service
	tasks    *TaskQueue
	started  atomic.Bool
	start    time.Time

	baseCtx     context.Context // canceled by a force shutdown
	cancelBase  context.CancelFunc
	loopCtx     context.Context // canceled when any shutdown starts
	cancelLoops context.CancelFunc
	down        chan struct{} // closed when shutdown starts
	downOnce    sync.Once
	forceOnce   sync.Once
	handlersWG  sync.WaitGroup
	loopsWG     sync.WaitGroup
	sem         chan struct{}
	nconns      atomic.Int64

	fg *Slots

	stats handlerStats
}

// New returns a Server with the common commands registered.
func New(cfg Config) (*Server, error) {
	if cfg.ID == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, errors.Wrap(err, "server: default id from host name")
		}
		cfg.ID = h
	}
	if cfg.MaxConns < 0 || cfg.MaxForeground < 0 || cfg.MaxBackground < 0 {
		return nil, errors.Errorf("server: negative limit in %+v", cfg)
	}
	if cfg.MaxConns == 0 {
		cfg.MaxConns = 10
	}
	if cfg.MaxForeground == 0 {
		cfg.MaxForeground = 2
	}
	if cfg.MaxBackground == 0 {
		cfg.MaxBackground = 1
	}
	if cfg.Version == "" {
		cfg.Version = defaultVersion()
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Wire == nil {
		cfg.Wire = &wire.Options{}
	}
	if cfg.Wire.IOTimeout == 0 {
		o := *cfg.Wire
		o.IOTimeout = wire.DefaultIOTimeout
		cfg.Wire = &o
	}
	s := &Server{
		fg:       NewSlots(cfg.MaxForeground),
		cfg:      cfg,
		log:      cfg.Logger.With("server", cfg.ID),
		handlers: map[string]Handler{},
		gets:     map[string]GetHandler{},
		down:     make(chan struct{}),
		sem:      make(chan struct{}, cfg.MaxConns),
	}
	s.baseCtx, s.cancelBase = context.WithCancel(context.Background())
	s.loopCtx, s.cancelLoops = context.WithCancel(s.baseCtx)
	s.tasks = NewTaskQueue(s.runTask, TaskOptions{
		Workers: cfg.MaxBackground, RetryMin: cfg.RetryMin, RetryMax: cfg.RetryMax, Logger: s.log,
	})
	s.registerCommon()
	return s, nil
}

// defaultVersion describes the build.
func defaultVersion() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		return "walb-go " + bi.Main.Version + " (" + bi.GoVersion + ")"
	}
	return "walb-go"
}

// Config returns the configuration in force (defaults filled in).
func (s *Server) Config() Config { return s.cfg }

// Logger returns the server's logger.
func (s *Server) Logger() *slog.Logger { return s.log }

// Handle registers the handler of command. It panics if the command is
// already registered (the common commands included) or if the server runs.
func (s *Server) Handle(command string, h Handler) {
	if s.started.Load() {
		panic("server: Handle after Run")
	}
	if _, ok := s.handlers[command]; ok {
		panic("server: duplicate handler for " + command)
	}
	if command == "" || len(command) > wire.MaxCommandLen || h == nil {
		panic("server: bad handler registration for " + command)
	}
	s.handlers[command] = h
}

// HandleGet registers the handler of "get target". It panics on duplicates
// (host-type, pid and handler-stat are built in) or if the server runs.
func (s *Server) HandleGet(target string, h GetHandler) {
	if s.started.Load() {
		panic("server: HandleGet after Run")
	}
	if _, ok := s.gets[target]; ok {
		panic("server: duplicate get target " + target)
	}
	if target == "" || h == nil {
		panic("server: bad get registration for " + target)
	}
	s.gets[target] = h
}

// Listen binds the configured address; Run calls it if needed. Calling it
// first lets a caller learn the address (Addr) of ":0".
func (s *Server) Listen() error {
	if s.ln != nil {
		return nil
	}
	ln, err := wire.Listen(context.Background(), s.cfg.Addr, s.cfg.ID, s.cfg.Wire)
	if err != nil {
		return errors.WithMessage(err, "server")
	}
	s.ln = ln
	return nil
}

// Addr returns the listening address (nil before Listen).
func (s *Server) Addr() net.Addr {
	if s.ln == nil {
		return nil
	}
	return s.ln.Addr()
}

// Tasks returns the background task queue. Tasks pushed before Run (in
// Recover) run once Run has started the workers.
func (s *Server) Tasks() *TaskQueue { return s.tasks }

func (s *Server) runTask(ctx context.Context, key string) error {
	tr, ok := s.svc.(TaskRunner)
	if !ok {
		return errors.Errorf("server: task %s pushed but the service runs no tasks", key)
	}
	return tr.RunTask(withLogger(ctx, s.log.With("task", key)), key)
}

// Run listens (if Listen was not called), calls svc.Recover, then serves
// until a shutdown: the "shutdown" command, Shutdown, or ctx being done
// (which forces it, as SIGTERM does in walb-tools). It returns after every
// handler, background task and Go loop has ended, and then closes svc if it
// is an io.Closer.
func (s *Server) Run(ctx context.Context, svc Service) error {
	if !s.started.CompareAndSwap(false, true) {
		return errors.New("server: Run called twice")
	}
	s.svc = svc
	s.start = time.Now()
	if err := s.Listen(); err != nil {
		return err
	}
	s.log.Info("recovering", "addr", s.ln.Addr().String())
	if err := svc.Recover(withLogger(ctx, s.log)); err != nil {
		_ = s.ln.Close()
		return errors.WithMessage(err, "server: recover")
	}
	if _, ok := svc.(TaskRunner); ok {
		s.tasks.Start(withLogger(s.baseCtx, s.log))
	}
	stop := context.AfterFunc(ctx, func() { s.Shutdown(Force) })
	defer stop()
	s.log.Info("serving", "addr", s.ln.Addr().String(), "maxConns", s.cfg.MaxConns,
		"maxForeground", s.cfg.MaxForeground, "maxBackground", s.cfg.MaxBackground)
	s.acceptLoop()

	s.tasks.Stop()
	s.handlersWG.Wait()
	s.loopsWG.Wait()
	s.cancelBase()
	var err error
	if c, ok := svc.(io.Closer); ok {
		err = errors.WithMessage(c.Close(), "server: close service")
	}
	s.log.Info("stopped")
	return err
}

// acceptLoop accepts connections until shutdown, never holding more than
// MaxConns at once.
func (s *Server) acceptLoop() {
	delay := 5 * time.Millisecond
	for {
		select {
		case s.sem <- struct{}{}:
		case <-s.down:
			return
		}
		nc, err := s.ln.Accept()
		if err != nil {
			<-s.sem
			select {
			case <-s.down:
				return
			default:
			}
			// Out of file descriptors and the like: wait and retry.
			s.log.Error("accept failed", "err", err, "retry", delay)
			select {
			case <-time.After(delay):
			case <-s.down:
				return
			}
			delay = min(2*delay, time.Second)
			continue
		}
		delay = 5 * time.Millisecond
		s.handlersWG.Add(1)
		go s.serveConn(nc)
	}
}

// Shutdown starts a shutdown and returns at once; Run returns when it is
// complete. A graceful shutdown may be escalated by a later Force.
func (s *Server) Shutdown(mode ShutdownMode) {
	s.downOnce.Do(func() {
		s.log.Info("shutting down", "mode", mode.String())
		close(s.down)
		if s.ln != nil {
			_ = s.ln.Close()
		}
		s.cancelLoops()
	})
	if mode == Force {
		s.forceOnce.Do(func() {
			s.log.Info("canceling running handlers and tasks")
			s.cancelBase()
		})
	}
}

// ShuttingDown reports whether a shutdown has started.
func (s *Server) ShuttingDown() bool {
	select {
	case <-s.down:
		return true
	default:
		return false
	}
}

// Go runs fn as a service loop (a log monitor, a heartbeat): its context is
// canceled as soon as any shutdown starts, and Run waits for it to return.
func (s *Server) Go(name string, fn func(ctx context.Context)) {
	s.loopsWG.Add(1)
	go func() {
		defer s.loopsWG.Done()
		defer func() {
			if r := recover(); r != nil {
				s.log.Error("service loop panicked", "loop", name, "panic", r, "stack", string(debug.Stack()))
			}
		}()
		fn(withLogger(s.loopCtx, s.log.With("loop", name)))
	}()
}

// Foreground takes one of the MaxForeground foreground slots (a transfer or
// a long action, walb-tools -fg). It fails at once with ErrTooManyTasks
// when all are taken; release (idempotent) gives the slot back.
func (s *Server) Foreground() (release func(), err error) { return s.fg.Take() }

// check is the handshake's command check.
func (s *Server) check(cmd string, _ []string) error {
	if s.ShuttingDown() {
		return errors.Wrapf(ErrShuttingDown, "refusing %s", cmd)
	}
	if _, ok := s.handlers[cmd]; !ok {
		return errors.Wrapf(ErrUnknownCommand, "%q", cmd)
	}
	return nil
}

// serveConn runs the handshake and the handler of one connection.
func (s *Server) serveConn(nc net.Conn) {
	defer s.handlersWG.Done()
	defer func() { <-s.sem }()
	s.nconns.Add(1)
	defer s.nconns.Add(-1)

	c, err := s.ln.Handshake(s.baseCtx, nc, s.check)
	if err != nil {
		level := slog.LevelWarn
		if errors.Is(err, wire.ErrUnknownCommand) || errors.Is(err, wire.ErrShuttingDown) {
			level = slog.LevelInfo
		}
		s.log.Log(s.baseCtx, level, "handshake failed", "peer", nc.RemoteAddr().String(), "err", err)
		return
	}
	cmd := c.Command()
	log := s.log.With("cmd", cmd, "peer", c.Peer())
	ctx := withLogger(s.baseCtx, log)
	log.Debug("command started", "args", c.Args())
	begin := time.Now()
	err = s.call(ctx, s.handlers[cmd], c)
	dur := time.Since(begin)
	if err != nil {
		level := slog.LevelWarn
		if ctx.Err() != nil {
			level = slog.LevelInfo
		}
		log.Log(ctx, level, "command failed", "args", c.Args(), "err", err, "dur", dur)
		// The client deserves the reason even after a force shutdown.
		sctx, cancel := context.WithTimeout(context.Background(), c.IOTimeout())
		_ = c.SendError(sctx, err)
		cancel()
	} else {
		log.Debug("command done", "dur", dur)
	}
	s.stats.add(cmd, c.PeerID(), dur)
	_ = c.Finish(s.baseCtx)
}

// call runs h, turning a panic into an error.
func (s *Server) call(ctx context.Context, h Handler, c *wire.Conn) (err error) {
	defer func() {
		if r := recover(); r != nil {
			LoggerFrom(ctx).Error("handler panicked", "panic", r, "stack", string(debug.Stack()))
			err = errors.Wrapf(ErrPanic, "%v", r)
		}
	}()
	return h(ctx, c, c.Args())
}

// loggerKey is the context key of the request logger.
type loggerKey struct{}

func withLogger(ctx context.Context, l *slog.Logger) context.Context {
	return context.WithValue(ctx, loggerKey{}, l)
}

// LoggerFrom returns the logger a Server put in a handler's, task's or
// loop's context (with the command, peer, task or loop as attributes), or
// slog.Default().
func LoggerFrom(ctx context.Context) *slog.Logger {
	if l, ok := ctx.Value(loggerKey{}).(*slog.Logger); ok {
		return l
	}
	return slog.Default()
}

// handlerStats counts commands per (command, client) for "handler-stat".
type handlerStats struct {
	mu sync.Mutex
	m  map[[2]string]*statEntry
}

type statEntry struct {
	n     int64
	total time.Duration
}

func (h *handlerStats) add(cmd, client string, d time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.m == nil {
		h.m = map[[2]string]*statEntry{}
	}
	e := h.m[[2]string{cmd, client}]
	if e == nil {
		e = &statEntry{}
		h.m[[2]string{cmd, client}] = e
	}
	e.n++
	e.total += d
}

// report returns one line per (command, client) with the count and the
// average latency since the last report, and resets the counters
// (walb-tools handler-stat).
func (h *handlerStats) report() []string {
	h.mu.Lock()
	m := h.m
	h.m = nil
	h.mu.Unlock()
	lines := make([]string, 0, len(m))
	for k, e := range m {
		avg := e.total / time.Duration(e.n)
		lines = append(lines, fmt.Sprintf("command:%s\tclient:%s\tcount:%d\tavg_ms:%.3f",
			k[0], k[1], e.n, float64(avg.Microseconds())/1000))
	}
	slices.Sort(lines)
	return lines
}
