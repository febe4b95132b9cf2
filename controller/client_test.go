package controller

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pkg/errors"
	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/server"
	"github.com/walb-go/walb/wire"
)

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

type nopService struct{}

func (nopService) Recover(context.Context) error { return nil }

// startServer runs a framework server with whatever handlers setup
// registers and returns its address.
func startServer(t *testing.T, hostType string, setup func(s *server.Server)) string {
	t.Helper()
	srv, err := server.New(server.Config{ID: "t", Addr: "127.0.0.1:0", HostType: hostType, Version: "test 1", Logger: quietLogger})
	require.NoError(t, err)
	setup(srv)
	require.NoError(t, srv.Listen())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx, nopService{}) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return srv.Addr().String()
}

// valuesServer answers get with one value of each type.
func valuesServer(t *testing.T) string {
	return startServer(t, "archive", func(s *server.Server) {
		vals := map[string]any{
			"state":      "Archived",
			"vol":        []string{"a", "b"},
			"vol-size":   uint64(1 << 20),
			"is-x":       true,
			"x-string":   "hello",
			"x-strings":  []string{},
			"x-u64":      uint64(42),
			"x-bool":     false,
			"x-snap":     meta.Snap{GidB: 1, GidE: 3},
			"x-diff":     meta.Diff{SnapB: meta.CleanSnap(1), SnapE: meta.CleanSnap(2), Timestamp: t0, DataSize: 9},
			"x-state":    meta.NewState(meta.CleanSnap(5), t0),
			"x-lsidgid":  meta.LsidGid{Lsid: 8, Gid: 1},
			"exists-x":   true,
			"restorable": []string{"3 2024-05-01T12:30:45 1"},
		}
		for k, v := range vals {
			s.HandleGet(k, func(context.Context, []string) (any, error) { return v, nil })
		}
		s.Handle("echo", func(ctx context.Context, c *wire.Conn, args []string) error {
			if err := c.SendOK(ctx); err != nil {
				return err
			}
			return c.SendStrings(ctx, args)
		})
		s.Handle("okonly", func(ctx context.Context, c *wire.Conn, args []string) error { return c.SendOK(ctx) })
		s.Handle("long", func(ctx context.Context, c *wire.Conn, args []string) error { return c.SendAccept(ctx) })
		s.Handle("refuse", func(ctx context.Context, c *wire.Conn, args []string) error {
			return errors.Wrap(server.ErrWrongState, "volume v is Clear")
		})
	})
}

func TestClientValues(t *testing.T) {
	ctx := testCtx(t)
	cl := NewClient(valuesServer(t), &Options{Logger: quietLogger})
	for _, tc := range []struct {
		target string
		want   any
	}{
		// Known targets use the table.
		{"state", "Archived"},
		{"vol", []string{"a", "b"}},
		{"vol-size", uint64(1 << 20)},
		{"host-type", "archive"},
		// Unknown ones are probed.
		{"x-string", "hello"},
		{"x-strings", []string{}},
		{"x-u64", uint64(42)},
		{"x-bool", false},
		{"x-snap", meta.Snap{GidB: 1, GidE: 3}},
		{"x-diff", meta.Diff{SnapB: meta.CleanSnap(1), SnapE: meta.CleanSnap(2), Timestamp: t0, DataSize: 9}},
		{"x-state", meta.NewState(meta.CleanSnap(5), t0)},
		{"x-lsidgid", meta.LsidGid{Lsid: 8, Gid: 1}},
	} {
		got, err := cl.Get(ctx, tc.target)
		require.NoError(t, err, tc.target)
		require.Equal(t, tc.want, got, tc.target)
	}
	// Typed getters.
	s, err := cl.GetString(ctx, "x-string")
	require.NoError(t, err)
	require.Equal(t, "hello", s)
	n, err := cl.GetU64(ctx, "x-u64")
	require.NoError(t, err)
	require.EqualValues(t, 42, n)
	b, err := cl.GetBool(ctx, "exists-x")
	require.NoError(t, err)
	require.True(t, b)
	// A typed getter with the wrong type fails clearly and is not retried.
	_, err = cl.GetString(ctx, "x-u64")
	require.ErrorIs(t, err, wire.ErrUnexpectedFrame)
	require.Contains(t, err.Error(), "get x-u64")

	// Commands.
	v, err := cl.CallValue(ctx, StringsValue, "echo", "a", "b c")
	require.NoError(t, err)
	require.Equal(t, []string{"a", "b c"}, v)
	require.NoError(t, cl.Call(ctx, "okonly"))
	require.NoError(t, cl.Accept(ctx, "long"))
	require.ErrorIs(t, cl.Call(ctx, "long"), wire.ErrUnexpectedReply)
	require.ErrorIs(t, cl.Accept(ctx, "okonly"), wire.ErrUnexpectedReply)
	// An optional value may be missing.
	resp, err := cl.Do(ctx, Request{Command: "okonly", Value: U64Value, ValueOptional: true})
	require.NoError(t, err)
	require.Equal(t, Response{Reply: wire.ReplyOK}, resp)
	_, err = cl.Do(ctx, Request{Command: "okonly", Value: U64Value})
	require.ErrorIs(t, err, wire.ErrPeerClosed)

	ver, err := cl.CallValue(ctx, StringValue, "version")
	require.NoError(t, err)
	require.Equal(t, "test 1", ver)
	lines, err := cl.Status(ctx)
	require.NoError(t, err)
	require.NotEmpty(t, lines)
}

func TestClientErrors(t *testing.T) {
	ctx := testCtx(t)
	addr := valuesServer(t)
	cl := NewClient(addr, &Options{Logger: quietLogger})
	err := cl.Call(ctx, "refuse", "v")
	require.ErrorIs(t, err, wire.ErrWrongState)
	require.ErrorIs(t, err, wire.ErrRemote)
	var re *wire.RemoteError
	require.True(t, errors.As(err, &re))
	require.Equal(t, wire.ErrWrongState, re.Code)
	require.Contains(t, err.Error(), "volume v is Clear")
	require.Contains(t, err.Error(), addr+" refuse v")

	err = cl.Call(ctx, "no-such-command")
	require.ErrorIs(t, err, wire.ErrUnknownCommand)
	_, err = cl.Get(ctx, "no-such-target")
	require.ErrorIs(t, err, wire.ErrBadRequest)
}

// countingListener accepts connections and closes them at once, counting.
func countingListener(t *testing.T) (string, *atomic.Int32) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var n atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			c.Close()
		}
	}()
	t.Cleanup(func() { ln.Close() })
	return ln.Addr().String(), &n
}

func TestClientRetry(t *testing.T) {
	ctx := testCtx(t)
	addr, n := countingListener(t)
	for _, tc := range []struct {
		retries int
		want    int32
	}{{0, 1 + DefaultRetries}, {-1, 1}, {4, 5}} {
		n.Store(0)
		cl := NewClient(addr, &Options{Logger: quietLogger, Retries: tc.retries, RetryDelay: time.Millisecond})
		_, err := cl.Get(ctx, "state", "v")
		require.Error(t, err)
		require.Equal(t, tc.want, n.Load(), "retries %d", tc.retries)
		// Commands that change something are never retried.
		n.Store(0)
		require.Error(t, cl.Call(ctx, "snapshot", "v"))
		require.EqualValues(t, 1, n.Load())
	}

	// An error reply is an answer: no retry.
	var calls atomic.Int32
	addr = startServer(t, "archive", func(s *server.Server) {
		s.HandleGet("flaky", func(context.Context, []string) (any, error) {
			calls.Add(1)
			return nil, errors.Wrap(wire.ErrNotFound, "nothing")
		})
	})
	cl := NewClient(addr, &Options{Logger: quietLogger, RetryDelay: time.Millisecond})
	_, err := cl.GetString(ctx, "flaky")
	require.ErrorIs(t, err, wire.ErrNotFound)
	require.EqualValues(t, 1, calls.Load())

	// A canceled context stops the retries.
	addr, n = countingListener(t)
	cl = NewClient(addr, &Options{Logger: quietLogger, Retries: 100, RetryDelay: time.Hour})
	cctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	_, err = cl.Status(cctx)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.EqualValues(t, 1, n.Load())
}

func TestClientTimeout(t *testing.T) {
	ctx := testCtx(t)
	addr := startServer(t, "storage", func(s *server.Server) {})
	// The server's sleep outlasts the per-frame I/O timeout.
	cl := NewClient(addr, &Options{Logger: quietLogger, Wire: &wire.Options{IOTimeout: 50 * time.Millisecond}})
	err := cl.Call(ctx, "sleep", "1")
	require.ErrorIs(t, err, wire.ErrTimeout)
	// And a context deadline.
	cl = NewClient(addr, &Options{Logger: quietLogger})
	cctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	err = cl.Call(cctx, "sleep", "1")
	require.ErrorIs(t, err, context.DeadlineExceeded)
}

func TestTypeFromUnexpected(t *testing.T) {
	for _, tc := range []struct {
		f wire.FrameType
		t ValueType
	}{{wire.FrameString, StringValue}, {wire.FrameStrings, StringsValue}, {wire.FrameU64, U64Value}, {wire.FrameBool, BoolValue}, {wire.FrameValue, RecordValue}} {
		err := errors.Wrapf(wire.ErrUnexpectedFrame, "got %s frame, want string frame", tc.f)
		got, ok := typeFromUnexpected(errors.WithMessage(err, "ctx"))
		require.True(t, ok, tc.f)
		require.Equal(t, tc.t, got)
	}
	_, ok := typeFromUnexpected(errors.Wrap(wire.ErrUnexpectedFrame, "got chunk frame, want string frame"))
	require.False(t, ok)
	_, ok = typeFromUnexpected(errors.New("got u64 frame"))
	require.False(t, ok)
}

func TestGetTargetType(t *testing.T) {
	require.Equal(t, StringsValue, GetTargetType("restorable"))
	require.Equal(t, BoolValue, GetTargetType("is-overflow"))
	require.Equal(t, U64Value, GetTargetType("progress"))
	require.Equal(t, ValueAuto, GetTargetType("something-new"))
	for _, vt := range []ValueType{NoValue, StringValue, StringsValue, U64Value, BoolValue, RecordValue, ValueAuto} {
		require.NotEqual(t, "unknown", vt.String())
	}
}
