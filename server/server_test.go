package server

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pkg/errors"
	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/wire"
)

// testService is a small concrete server: a volume table, a "block"
// command that waits for release, and background tasks.
type testService struct {
	srv       *Server
	vols      *Volumes
	recovered atomic.Bool
	recoverFn func(ctx context.Context) error
	closed    atomic.Bool
	kicked    atomic.Int32
	taskRuns  chan string
	release   chan struct{}
	entered   chan string
}

var testTable = MustStateMachine("Clear",
	Transition{"Clear", "InitVol", "Ready"},
	Transition{"Ready", "Busy", "Ready"},
	Transition{"Ready", "ClearVol", "Clear"},
)

func (ts *testService) Recover(ctx context.Context) error {
	if ts.srv.Addr() == nil {
		return errors.New("recover before listen")
	}
	ts.recovered.Store(true)
	if ts.recoverFn != nil {
		return ts.recoverFn(ctx)
	}
	return nil
}

func (ts *testService) Close() error {
	ts.closed.Store(true)
	return nil
}

func (ts *testService) Kick(ctx context.Context, args []string) error {
	ts.kicked.Add(1)
	return nil
}

func (ts *testService) Status(ctx context.Context, args []string) ([]string, error) {
	if len(args) > 0 {
		if err := ValidateVolumeName(args[0]); err != nil {
			return nil, err
		}
		return []string{"vol:" + args[0] + "\tstate:" + ts.vols.State(args[0])}, nil
	}
	var lines []string
	for _, v := range ts.vols.Names() {
		lines = append(lines, "vol:"+v)
	}
	return lines, nil
}

func (ts *testService) RunTask(ctx context.Context, key string) error {
	ts.taskRuns <- key
	return nil
}

// register adds the test commands.
func (ts *testService) register() {
	s := ts.srv
	s.Handle("init-vol", func(ctx context.Context, c *wire.Conn, args []string) error {
		if len(args) != 1 {
			return errors.Wrap(ErrBadArgs, "init-vol VOL")
		}
		tx, err := ts.vols.Begin(ctx, args[0], "InitVol", Guard{States: []string{"Clear"}})
		if err != nil {
			return err
		}
		defer tx.Rollback()
		if err := tx.Commit("Ready"); err != nil {
			return err
		}
		return c.SendOK(ctx)
	})
	// set-busy VOL: receives a confirmation string, then goes through Busy.
	s.Handle("confirm", func(ctx context.Context, c *wire.Conn, args []string) error {
		tx, err := ts.vols.Begin(ctx, args[0], "Busy", Guard{States: []string{"Ready"}})
		if err != nil {
			return err
		}
		defer tx.Rollback()
		word, err := c.RecvString(ctx)
		if err != nil {
			return err
		}
		if word != "yes" {
			return errors.Wrapf(ErrBadArgs, "confirmation %q", word)
		}
		if err := ts.vols.Set("marker-"+args[0], "Ready"); err != nil {
			return err
		}
		if err := tx.Commit("Ready"); err != nil {
			return err
		}
		return c.SendOK(ctx)
	})
	s.Handle("block", func(ctx context.Context, c *wire.Conn, args []string) error {
		ts.entered <- strings.Join(args, " ")
		select {
		case <-ts.release:
		case <-ctx.Done():
			return errors.Wrap(ctx.Err(), "block")
		}
		return c.SendOK(ctx)
	})
	s.Handle("fg", func(ctx context.Context, c *wire.Conn, args []string) error {
		release, err := s.Foreground()
		if err != nil {
			return err
		}
		defer release()
		if err := c.SendAccept(ctx); err != nil {
			return err
		}
		ts.entered <- "fg"
		select {
		case <-ts.release:
		case <-ctx.Done():
		}
		return nil
	})
	s.Handle("panic", func(ctx context.Context, c *wire.Conn, args []string) error {
		panic("handler bug")
	})
	s.Handle("push", func(ctx context.Context, c *wire.Conn, args []string) error {
		for _, a := range args {
			s.Tasks().PushAfter(a, time.Hour)
		}
		return c.SendOK(ctx)
	})
	s.HandleGet("state", func(ctx context.Context, args []string) (any, error) {
		if len(args) != 1 {
			return nil, errors.Wrap(ErrBadArgs, "get state VOL")
		}
		if err := ValidateVolumeName(args[0]); err != nil {
			return nil, err
		}
		return ts.vols.State(args[0]), nil
	})
	s.HandleGet("snap", func(ctx context.Context, args []string) (any, error) {
		return meta.CleanSnap(7), nil
	})
	s.HandleGet("count", func(ctx context.Context, args []string) (any, error) { return len(ts.vols.Names()), nil })
	s.HandleGet("bad-value", func(ctx context.Context, args []string) (any, error) { return 3.5, nil })
	s.HandleGet("ready", func(ctx context.Context, args []string) (any, error) { return ts.recovered.Load(), nil })
}

type running struct {
	srv  *Server
	svc  *testService
	addr string
	done chan error
}

func startServer(t *testing.T, cfg Config, tweak func(*testService)) *running {
	t.Helper()
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	if cfg.ID == "" {
		cfg.ID = "test-server"
	}
	cfg.HostType = "test"
	cfg.Version = "test 1.0"
	cfg.Logger = quiet
	srv, err := New(cfg)
	require.NoError(t, err)
	ts := &testService{
		srv: srv, vols: NewVolumes(testTable, quiet),
		taskRuns: make(chan string, 100), release: make(chan struct{}), entered: make(chan string, 100),
	}
	if tweak != nil {
		tweak(ts)
	}
	ts.register()
	require.NoError(t, srv.Listen())
	r := &running{srv: srv, svc: ts, addr: srv.Addr().String(), done: make(chan error, 1)}
	if strings.HasPrefix(cfg.Addr, "unix:") {
		r.addr = cfg.Addr
	}
	go func() { r.done <- srv.Run(context.Background(), ts) }()
	t.Cleanup(func() {
		srv.Shutdown(Force)
		select {
		case <-r.done:
		case <-time.After(30 * time.Second):
			t.Error("server did not stop")
		}
	})
	return r
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// call runs a command that answers ok (and maybe a value read by read).
func call(t *testing.T, addr string, opts *wire.Options, cmd string, args ...string) (*wire.Conn, error) {
	t.Helper()
	ctx := testCtx(t)
	c, err := wire.Dial(ctx, addr, "tester", cmd, opts, args...)
	if err != nil {
		return nil, err
	}
	t.Cleanup(func() { _ = c.Close() })
	if err := c.ExpectOK(ctx); err != nil {
		_ = c.Close()
		return c, err
	}
	return c, nil
}

// do runs a command that answers ok and closes the connection.
func do(t *testing.T, addr string, opts *wire.Options, cmd string, args ...string) error {
	t.Helper()
	c, err := call(t, addr, opts, cmd, args...)
	if c != nil {
		_ = c.Close()
	}
	return err
}

func getString(t *testing.T, addr, target string, args ...string) (string, error) {
	c, err := call(t, addr, nil, CmdGet, append([]string{target}, args...)...)
	if err != nil {
		return "", err
	}
	defer c.Close()
	return c.RecvString(testCtx(t))
}

func waitEntered(t *testing.T, ts *testService) string {
	t.Helper()
	select {
	case s := <-ts.entered:
		return s
	case <-time.After(10 * time.Second):
		t.Fatal("handler did not start")
		return ""
	}
}

func TestCommonCommands(t *testing.T) {
	r := startServer(t, Config{}, nil)
	ctx := testCtx(t)

	// version
	c, err := call(t, r.addr, nil, CmdVersion)
	require.NoError(t, err)
	require.True(t, r.svc.recovered.Load())
	v, err := c.RecvString(ctx)
	require.NoError(t, err)
	require.NoError(t, c.Close())
	require.Equal(t, "test 1.0", v)
	require.Equal(t, "test-server", c.PeerID())

	// get built-ins and service targets
	ht, err := getString(t, r.addr, GetHostType)
	require.NoError(t, err)
	require.Equal(t, "test", ht)
	c, err = call(t, r.addr, nil, CmdGet, GetPid)
	require.NoError(t, err)
	pid, err := c.RecvU64(ctx)
	require.NoError(t, err)
	require.NoError(t, c.Close())
	require.Equal(t, uint64(os.Getpid()), pid)
	c, err = call(t, r.addr, nil, CmdGet, "snap")
	require.NoError(t, err)
	var snap meta.Snap
	require.NoError(t, c.RecvValue(ctx, &snap))
	require.NoError(t, c.Close())
	require.Equal(t, meta.CleanSnap(7), snap)
	c, err = call(t, r.addr, nil, CmdGet, "ready")
	require.NoError(t, err)
	ok, err := c.RecvBool(ctx)
	require.NoError(t, err)
	require.NoError(t, c.Close())
	require.True(t, ok)

	err = do(t, r.addr, nil, CmdGet)
	require.ErrorIs(t, err, wire.ErrBadRequest)
	err = do(t, r.addr, nil, CmdGet, "bad-value")
	require.ErrorIs(t, err, wire.ErrFailed)
	require.ErrorContains(t, err, "cannot send a float64")
	err = do(t, r.addr, nil, CmdGet, "no-such-target")
	require.ErrorIs(t, err, wire.ErrBadRequest)
	require.ErrorContains(t, err, `unknown get target "no-such-target"`)
	_, err = getString(t, r.addr, "state", "../etc")
	require.ErrorIs(t, err, wire.ErrBadRequest)

	// init-vol, then status with and without a volume
	err = do(t, r.addr, nil, "init-vol", "v0")
	require.NoError(t, err)
	err = do(t, r.addr, nil, "init-vol", "v0")
	require.ErrorIs(t, err, wire.ErrWrongState)
	st, err := getString(t, r.addr, "state", "v0")
	require.NoError(t, err)
	require.Equal(t, "Ready", st)
	c, err = call(t, r.addr, nil, CmdGet, "count")
	require.NoError(t, err)
	n, err := c.RecvU64(ctx)
	require.NoError(t, err)
	require.NoError(t, c.Close())
	require.Equal(t, uint64(1), n)

	c, err = call(t, r.addr, nil, CmdStatus)
	require.NoError(t, err)
	lines, err := c.RecvStrings(ctx)
	require.NoError(t, err)
	require.NoError(t, c.Close())
	require.True(t, strings.HasPrefix(lines[0], "server\tid:test-server\thostType:test\tversion:test 1.0\taddr:"+r.addr), lines[0])
	require.Regexp(t, `^limits\tmaxConns:10\tconns:\d+\tmaxForeground:2\tforeground:0\tmaxBackground:1\ttimeout:10s$`, lines[1])
	require.Equal(t, "tasks\tcount:0", lines[2])
	require.Equal(t, "vol:v0", lines[len(lines)-1])
	c, err = call(t, r.addr, nil, CmdStatus, "v0")
	require.NoError(t, err)
	lines, err = c.RecvStrings(ctx)
	require.NoError(t, err)
	require.NoError(t, c.Close())
	require.Equal(t, []string{"vol:v0\tstate:Ready"}, lines)

	// sleep
	for _, a := range [][]string{{"0.01"}, {}} {
		c, err := call(t, r.addr, nil, CmdSleep, a...)
		require.NoError(t, err)
		require.NoError(t, c.Close())
	}
	err = do(t, r.addr, nil, CmdSleep, "-1")
	require.ErrorIs(t, err, wire.ErrBadRequest)
	err = do(t, r.addr, nil, CmdSleep, "soon")
	require.ErrorIs(t, err, wire.ErrBadRequest)

	// Statistics are recorded when a handler ends, after its reply: wait
	// until every connection has ended.
	require.Eventually(t, func() bool { return r.srv.nconns.Load() == 0 }, 10*time.Second, time.Millisecond)
	// handler-stat reports and resets.
	c, err = call(t, r.addr, nil, CmdHandlerStat)
	require.NoError(t, err)
	lines, err = c.RecvStrings(ctx)
	require.NoError(t, err)
	require.NoError(t, c.Close())
	require.Contains(t, strings.Join(lines, "\n"), "command:sleep\tclient:tester\tcount:4\tavg_ms:")
	require.Contains(t, strings.Join(lines, "\n"), "command:init-vol\tclient:tester\tcount:2\tavg_ms:")
	c, err = call(t, r.addr, nil, CmdGet, GetHandlerStat)
	require.NoError(t, err)
	lines, err = c.RecvStrings(ctx)
	require.NoError(t, err)
	require.NoError(t, c.Close())
	require.Len(t, lines, 1)
	require.True(t, strings.HasPrefix(lines[0], "command:handler-stat\tclient:tester\tcount:1\t"), lines[0])

	// Unknown command: refused in the handshake.
	_, err = wire.Dial(ctx, r.addr, "tester", "no-such-command", nil)
	require.ErrorIs(t, err, wire.ErrUnknownCommand)
}

func TestHandlerErrorsAndPanics(t *testing.T) {
	r := startServer(t, Config{}, nil)
	err := do(t, r.addr, nil, "panic")
	require.ErrorIs(t, err, wire.ErrFailed)
	require.ErrorContains(t, err, "handler bug")
	// The server goes on.
	err = do(t, r.addr, nil, CmdSleep)
	require.NoError(t, err)
	err = do(t, r.addr, nil, "init-vol")
	require.ErrorIs(t, err, wire.ErrBadRequest)
	require.ErrorContains(t, err, "init-vol VOL")
}

func TestTransientStateRolledBackOnBadInput(t *testing.T) {
	r := startServer(t, Config{}, nil)
	ctx := testCtx(t)
	err := do(t, r.addr, nil, "init-vol", "v")
	require.NoError(t, err)

	// A well-formed but refused confirmation: rolled back.
	c, err := wire.Dial(ctx, r.addr, "tester", "confirm", nil, "v")
	require.NoError(t, err)
	require.NoError(t, c.SendString(ctx, "no"))
	err = c.ExpectOK(ctx)
	require.ErrorIs(t, err, wire.ErrBadRequest)
	require.NoError(t, c.Close())
	require.Equal(t, "Ready", r.svc.vols.State("v"))

	// Garbage frames from a raw connection: a clear error, nothing changed.
	for name, garbage := range map[string][]byte{
		"bad crc":    func() []byte { b := wire.AppendFrame(nil, wire.FrameString, []byte("yes")); b[5] ^= 1; return b }(),
		"oversized":  {byte(wire.FrameString), 0xff, 0xff, 0xff, 0x7f},
		"junk":       []byte("\x00\x01\x02garbage"),
		"wrong type": wire.AppendFrame(nil, wire.FrameU64, make([]byte, 8)),
	} {
		t.Run(name, func(t *testing.T) {
			nc, err := net.Dial("tcp", r.addr)
			require.NoError(t, err)
			defer nc.Close()
			hello := []byte("WALBGO\x01\x00")
			p := []byte{0, 0, 1, 0, 3, 0, 'r', 'a', 'w', 7, 0, 'c', 'o', 'n', 'f', 'i', 'r', 'm', 1, 0, 0, 0, 1, 0, 0, 0, 'v'}
			hello = wire.AppendFrame(hello, wire.FrameHello, p)
			_, err = nc.Write(append(hello, garbage...))
			require.NoError(t, err)
			require.NoError(t, nc.SetReadDeadline(time.Now().Add(10*time.Second)))
			pre := make([]byte, wire.PreambleSize)
			_, err = io.ReadFull(nc, pre)
			require.NoError(t, err)
			fr := wire.NewFrameReader(nc, wire.DefaultMaxFrame)
			typ, _, err := fr.Next()
			require.NoError(t, err)
			require.Equal(t, wire.FrameWelcome, typ)
			typ, payload, err := fr.Next()
			require.NoError(t, err)
			require.Equal(t, wire.FrameReply, typ)
			require.Equal(t, byte(2), payload[0], "error reply")
			require.Contains(t, string(payload), "protocol")
			_, _, err = fr.Next()
			require.ErrorIs(t, err, io.EOF)
			require.Equal(t, "Ready", r.svc.vols.State("v"))
			require.Equal(t, "Clear", r.svc.vols.State("marker-v"))
		})
	}

	// And the real thing works.
	c, err = wire.Dial(ctx, r.addr, "tester", "confirm", nil, "v")
	require.NoError(t, err)
	require.NoError(t, c.SendString(ctx, "yes"))
	require.NoError(t, c.ExpectOK(ctx))
	require.NoError(t, c.Close())
	require.Equal(t, "Ready", r.svc.vols.State("marker-v"))
}

func TestMaxConns(t *testing.T) {
	r := startServer(t, Config{MaxConns: 2}, nil)
	ctx := testCtx(t)
	var clients []*wire.Conn
	for i := range 2 {
		c, err := wire.Dial(ctx, r.addr, "tester", "block", nil, "n", string(rune('0'+i)))
		require.NoError(t, err)
		clients = append(clients, c)
		waitEntered(t, r.svc)
	}
	// The third connection is accepted by the kernel but not served: its
	// handshake cannot complete while both slots are taken.
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	_, err := wire.Dial(short, r.addr, "tester", "version", nil)
	require.ErrorIs(t, err, context.DeadlineExceeded)

	// A queued connection is served once a slot frees.
	type res struct {
		v   string
		err error
	}
	queued := make(chan res, 1)
	go func() {
		c, err := wire.Dial(ctx, r.addr, "tester", "version", nil)
		if err != nil {
			queued <- res{err: err}
			return
		}
		defer c.Close()
		if err := c.ExpectOK(ctx); err != nil {
			queued <- res{err: err}
			return
		}
		v, err := c.RecvString(ctx)
		queued <- res{v, err}
	}()
	select {
	case q := <-queued:
		t.Fatalf("served past MaxConns: %+v", q)
	case <-time.After(100 * time.Millisecond):
	}
	r.svc.release <- struct{}{}
	require.NoError(t, clients[0].ExpectOK(ctx))
	require.NoError(t, clients[0].Close())
	q := <-queued
	require.NoError(t, q.err)
	require.Equal(t, "test 1.0", q.v)
	r.svc.release <- struct{}{}
	require.NoError(t, clients[1].ExpectOK(ctx))
	require.NoError(t, clients[1].Close())
}

func TestForegroundLimit(t *testing.T) {
	r := startServer(t, Config{MaxForeground: 1}, nil)
	ctx := testCtx(t)
	c1, err := wire.Dial(ctx, r.addr, "tester", "fg", nil)
	require.NoError(t, err)
	require.NoError(t, c1.ExpectAccept(ctx))
	waitEntered(t, r.svc)
	c2, err := wire.Dial(ctx, r.addr, "tester", "fg", nil)
	require.NoError(t, err)
	err = c2.ExpectAccept(ctx)
	require.ErrorIs(t, err, wire.ErrTooManyTasks)
	require.ErrorContains(t, err, "exceeds max foreground tasks")
	r.svc.release <- struct{}{}
	_, err = c1.RecvString(ctx) // the handler ends: the server closes
	require.ErrorIs(t, err, wire.ErrPeerClosed)
	c3, err := wire.Dial(ctx, r.addr, "tester", "fg", nil)
	require.NoError(t, err)
	require.NoError(t, c3.ExpectAccept(ctx))
	waitEntered(t, r.svc)
	r.svc.release <- struct{}{}
	for _, c := range []*wire.Conn{c1, c2, c3} {
		require.NoError(t, c.Close())
	}
}

func TestGracefulShutdownWaitsForHandlers(t *testing.T) {
	loopDone := make(chan struct{})
	r := startServer(t, Config{}, nil)
	r.srv.Go("monitor", func(ctx context.Context) {
		<-ctx.Done()
		close(loopDone)
	})
	ctx := testCtx(t)
	blocked, err := wire.Dial(ctx, r.addr, "tester", "block", nil)
	require.NoError(t, err)
	waitEntered(t, r.svc)

	c, err := wire.Dial(ctx, r.addr, "tester", CmdShutdown, nil, "graceful")
	require.NoError(t, err)
	require.NoError(t, c.ExpectAccept(ctx))
	require.NoError(t, c.Close())
	<-loopDone // service loops stop at once

	// No new connections...
	require.Eventually(t, func() bool {
		c, err := wire.Dial(ctx, r.addr, "tester", "version", &wire.Options{IOTimeout: time.Second})
		if err == nil {
			_ = c.Close()
		}
		return err != nil
	}, 10*time.Second, 10*time.Millisecond)
	// ...but the running handler finishes its work.
	select {
	case err := <-r.done:
		t.Fatalf("Run returned %v while a handler runs", err)
	case <-time.After(100 * time.Millisecond):
	}
	require.True(t, r.srv.ShuttingDown())
	r.svc.release <- struct{}{}
	require.NoError(t, blocked.ExpectOK(ctx))
	require.NoError(t, blocked.Close())
	require.NoError(t, <-r.done)
	r.done <- nil // for the cleanup
	require.True(t, r.svc.closed.Load())
}

func TestForceShutdownCancelsHandlers(t *testing.T) {
	r := startServer(t, Config{}, nil)
	ctx := testCtx(t)
	blocked, err := wire.Dial(ctx, r.addr, "tester", "block", nil)
	require.NoError(t, err)
	waitEntered(t, r.svc)
	c, err := wire.Dial(ctx, r.addr, "tester", CmdShutdown, nil, "force")
	require.NoError(t, err)
	require.NoError(t, c.ExpectAccept(ctx))
	// The blocked handler is canceled and its client told why.
	err = blocked.ExpectOK(ctx)
	require.ErrorIs(t, err, wire.ErrCanceled)
	require.NoError(t, blocked.Close())
	require.NoError(t, c.Close())
	require.NoError(t, <-r.done)
	r.done <- nil
	require.True(t, r.svc.closed.Load())

	err = do(t, r.addr, nil, CmdShutdown, "bogus")
	require.Error(t, err)
}

func TestRunContextForcesShutdown(t *testing.T) {
	srv, err := New(Config{Addr: "127.0.0.1:0", Logger: quiet})
	require.NoError(t, err)
	ts := &testService{srv: srv, vols: NewVolumes(testTable, quiet), taskRuns: make(chan string, 10),
		release: make(chan struct{}), entered: make(chan string, 10)}
	ts.register()
	require.NoError(t, srv.Listen())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx, ts) }()
	c, err := wire.Dial(testCtx(t), srv.Addr().String(), "tester", "block", nil)
	require.NoError(t, err)
	defer c.Close()
	waitEntered(t, ts)
	cancel()
	require.ErrorIs(t, c.ExpectOK(testCtx(t)), wire.ErrCanceled)
	require.NoError(t, c.Close())
	require.NoError(t, <-done)
	require.Error(t, srv.Run(context.Background(), ts), "Run twice")
}

func TestRecoverFailureAbortsRun(t *testing.T) {
	srv, err := New(Config{Addr: "127.0.0.1:0", Logger: quiet})
	require.NoError(t, err)
	ts := &testService{srv: srv, recoverFn: func(context.Context) error { return errors.New("base dir unreadable") }}
	require.NoError(t, srv.Listen())
	addr := srv.Addr().String()
	err = srv.Run(context.Background(), ts)
	require.ErrorContains(t, err, "server: recover: base dir unreadable")
	_, err = wire.Dial(testCtx(t), addr, "tester", "version", nil)
	require.Error(t, err)
}

func TestRecoverPushesTasksThatRunAfterStart(t *testing.T) {
	r := startServer(t, Config{RetryMin: time.Hour}, func(ts *testService) {
		ts.recoverFn = func(ctx context.Context) error {
			ts.srv.Tasks().Push("resumed-vol")
			// Not running yet: workers start after Recover.
			if ts.srv.Tasks().Tasks()[0].State != "queued" {
				return errors.New("task ran before Recover returned")
			}
			return nil
		}
	})
	select {
	case k := <-r.svc.taskRuns:
		require.Equal(t, "resumed-vol", k)
	case <-time.After(10 * time.Second):
		t.Fatal("resumed task did not run")
	}

	// kick runs delayed tasks now and calls the service's Kick.
	err := do(t, r.addr, nil, "push", "a", "b")
	require.NoError(t, err)
	c, err := call(t, r.addr, nil, CmdStatus)
	require.NoError(t, err)
	lines, err := c.RecvStrings(testCtx(t))
	require.NoError(t, err)
	require.Contains(t, lines, "tasks\tcount:2")
	err = do(t, r.addr, nil, CmdKick)
	require.NoError(t, err)
	got := map[string]bool{}
	for range 2 {
		got[<-r.svc.taskRuns] = true
	}
	require.Equal(t, map[string]bool{"a": true, "b": true}, got)
	require.Equal(t, int32(1), r.svc.kicked.Load())
}

func TestHandshakeGarbageDoesNotHurt(t *testing.T) {
	r := startServer(t, Config{MaxConns: 1, Wire: &wire.Options{IOTimeout: 500 * time.Millisecond}}, nil)
	for _, junk := range []string{"GET / HTTP/1.0\r\n\r\n", "\x00\x00\x00\x00\x00\x00\x00\x00", "WALBGO\x01\x00\x01\xff\xff\xff\xff"} {
		nc, err := net.Dial("tcp", r.addr)
		require.NoError(t, err)
		_, err = nc.Write([]byte(junk))
		require.NoError(t, err)
		_ = nc.Close()
	}
	// A client that connects and says nothing holds the only slot until the
	// handshake times out; then the server serves again.
	silent, err := net.Dial("tcp", r.addr)
	require.NoError(t, err)
	defer silent.Close()
	c, err := call(t, r.addr, nil, CmdVersion)
	require.NoError(t, err)
	v, err := c.RecvString(testCtx(t))
	require.NoError(t, err)
	require.Equal(t, "test 1.0", v)
}

func TestUnixSocketServer(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s.sock")
	r := startServer(t, Config{Addr: "unix:" + path}, nil)
	ht, err := getString(t, r.addr, GetHostType)
	require.NoError(t, err)
	require.Equal(t, "test", ht)
}

func TestTLSServer(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		KeyUsage: x509.KeyUsageDigitalSignature, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	require.NoError(t, err)
	cert, err := x509.ParseCertificate(der)
	require.NoError(t, err)
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	r := startServer(t, Config{Wire: &wire.Options{TLS: &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}}}}, nil)
	c, err := call(t, r.addr, &wire.Options{TLS: &tls.Config{RootCAs: pool}}, CmdVersion)
	require.NoError(t, err)
	v, err := c.RecvString(testCtx(t))
	require.NoError(t, err)
	require.Equal(t, "test 1.0", v)
	err = do(t, r.addr, &wire.Options{IOTimeout: time.Second}, CmdVersion)
	require.Error(t, err)
}

func TestRegistrationRules(t *testing.T) {
	srv, err := New(Config{Logger: quiet})
	require.NoError(t, err)
	require.NotEmpty(t, srv.Config().ID, "defaults to the host name")
	require.Equal(t, 10, srv.Config().MaxConns)
	require.Equal(t, 2, srv.Config().MaxForeground)
	require.Equal(t, 1, srv.Config().MaxBackground)
	require.Panics(t, func() { srv.Handle(CmdStatus, func(context.Context, *wire.Conn, []string) error { return nil }) })
	require.Panics(t, func() { srv.HandleGet(GetPid, func(context.Context, []string) (any, error) { return nil, nil }) })
	require.Panics(t, func() { srv.Handle("x", nil) })
	_, err = New(Config{MaxConns: -1})
	require.Error(t, err)

	release, err := srv.Foreground()
	require.NoError(t, err)
	release2, err := srv.Foreground()
	require.NoError(t, err)
	_, err = srv.Foreground()
	require.ErrorIs(t, err, ErrTooManyTasks)
	release()
	release() // idempotent
	release3, err := srv.Foreground()
	require.NoError(t, err)
	release2()
	release3()
}

func TestSendValueRefusesOtherTypes(t *testing.T) {
	require.Error(t, SendValue(context.Background(), nil, struct{}{}))
	require.Error(t, SendValue(context.Background(), nil, -1))
	require.Error(t, SendValue(context.Background(), nil, int64(-1)))
}
