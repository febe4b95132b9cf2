package wire

import (
	"context"
	"io"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pkg/errors"
	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/meta"
)

func TestTypedRoundTrip(t *testing.T) {
	ctx := testCtx(t)
	c, s := pair(t, nil, nil, "echo", "a", "", "b c")
	require.Equal(t, "echo", s.Command())
	require.Equal(t, []string{"a", "", "b c"}, s.Args())
	require.Equal(t, "cli", s.PeerID())
	require.Equal(t, "srv", c.PeerID())
	require.Equal(t, Version, c.Version())
	require.Equal(t, Version, s.Version())
	require.Equal(t, DefaultMaxFrame, c.PeerMaxFrame())
	require.True(t, strings.HasPrefix(s.Peer(), "cli@127.0.0.1:"))

	diff := meta.Diff{
		SnapB: meta.CleanSnap(10), SnapE: meta.CleanSnap(20),
		Mergeable: true, Timestamp: time.Unix(1500000000, 0).UTC(),
	}
	errc := make(chan error, 1)
	go func() {
		errc <- func() error {
			if err := c.SendString(ctx, "hello"); err != nil {
				return err
			}
			if err := c.SendString(ctx, ""); err != nil {
				return err
			}
			if err := c.SendStrings(ctx, []string{"x", "", "yz"}); err != nil {
				return err
			}
			if err := c.SendStrings(ctx, nil); err != nil {
				return err
			}
			if err := c.SendU64(ctx, 1<<64-1); err != nil {
				return err
			}
			if err := c.SendBool(ctx, true); err != nil {
				return err
			}
			if err := c.SendBool(ctx, false); err != nil {
				return err
			}
			if err := c.SendBytes(ctx, []byte{1, 2, 3}); err != nil {
				return err
			}
			if err := c.SendValue(ctx, &diff); err != nil {
				return err
			}
			if err := c.SendDummy(ctx); err != nil {
				return err
			}
			return c.SendAck(ctx)
		}()
	}()
	str, err := s.RecvString(ctx)
	require.NoError(t, err)
	require.Equal(t, "hello", str)
	str, err = s.RecvString(ctx)
	require.NoError(t, err)
	require.Equal(t, "", str)
	v, err := s.RecvStrings(ctx)
	require.NoError(t, err)
	require.Equal(t, []string{"x", "", "yz"}, v)
	v, err = s.RecvStrings(ctx)
	require.NoError(t, err)
	require.Equal(t, []string{}, v)
	u, err := s.RecvU64(ctx)
	require.NoError(t, err)
	require.Equal(t, uint64(1<<64-1), u)
	b, err := s.RecvBool(ctx)
	require.NoError(t, err)
	require.True(t, b)
	b, err = s.RecvBool(ctx)
	require.NoError(t, err)
	require.False(t, b)
	raw, err := s.RecvBytes(ctx)
	require.NoError(t, err)
	require.Equal(t, []byte{1, 2, 3}, raw)
	var got meta.Diff
	require.NoError(t, s.RecvValue(ctx, &got))
	require.True(t, diff.Equal(got))
	require.Equal(t, diff.Timestamp, got.Timestamp)
	require.True(t, got.Mergeable)
	require.NoError(t, s.RecvAck(ctx)) // the Dummy before it is skipped
	require.NoError(t, <-errc)
}

func TestReplies(t *testing.T) {
	ctx := testCtx(t)
	c, s := pair(t, nil, nil, "cmd")
	require.NoError(t, s.SendOK(ctx))
	require.NoError(t, s.SendAccept(ctx))
	require.NoError(t, s.SendAccept(ctx))
	r, err := c.RecvReply(ctx)
	require.NoError(t, err)
	require.Equal(t, ReplyOK, r)
	require.NoError(t, c.ExpectAccept(ctx))
	err = c.ExpectOK(ctx)
	require.ErrorIs(t, err, ErrUnexpectedReply)
	// The mismatch is sticky.
	_, err = c.RecvString(ctx)
	require.ErrorIs(t, err, ErrUnexpectedReply)
}

func TestErrorReplyWhereValueExpected(t *testing.T) {
	ctx := testCtx(t)
	c, s := pair(t, nil, nil, "cmd")
	require.NoError(t, s.SendError(ctx, errors.Wrapf(ErrWrongState, "vol %s is %s", "v0", "Clear")))
	// Only the first error reply is sent.
	require.NoError(t, s.SendError(ctx, errors.New("second")))
	require.True(t, s.ErrorSent())
	require.NoError(t, s.SendString(ctx, "after"))

	_, err := c.RecvU64(ctx)
	var re *RemoteError
	require.ErrorAs(t, err, &re)
	require.Equal(t, ErrWrongState, re.Code)
	require.Equal(t, "vol v0 is Clear: wire: wrong-state", re.Msg)
	require.ErrorIs(t, err, ErrWrongState)
	require.ErrorIs(t, err, ErrRemote)
	// Sticky: the exchange is over.
	_, err = c.RecvString(ctx)
	require.ErrorIs(t, err, ErrWrongState)
}

func TestUnexpectedFrame(t *testing.T) {
	ctx := testCtx(t)
	c, s := pair(t, nil, nil, "cmd")
	require.NoError(t, s.SendU64(ctx, 7))
	_, err := c.RecvString(ctx)
	require.ErrorIs(t, err, ErrUnexpectedFrame)
	require.Contains(t, err.Error(), "got u64 frame, want string frame")
	require.Equal(t, ErrProtocol, CodeOf(err))
}

func TestBadValuePayload(t *testing.T) {
	ctx := testCtx(t)
	c, s := pair(t, nil, nil, "cmd")
	require.NoError(t, s.SendValue(ctx, &meta.Snap{GidB: 1, GidE: 2}))
	var d meta.Diff
	err := c.RecvValue(ctx, &d)
	require.ErrorIs(t, err, meta.ErrPreamble)
}

func TestSendOverPeerLimit(t *testing.T) {
	ctx := testCtx(t)
	c, s := pair(t, &Options{MaxFrame: MinMaxFrame}, nil, "cmd")
	require.Equal(t, MinMaxFrame, c.PeerMaxFrame())
	err := c.SendBytes(ctx, make([]byte, MinMaxFrame+1))
	require.ErrorIs(t, err, ErrFrameTooLarge)
	err = c.SendStrings(ctx, []string{string(make([]byte, MinMaxFrame))})
	require.ErrorIs(t, err, ErrFrameTooLarge)
	w := c.NewStreamWriter(ctx, 0)
	require.Equal(t, MinMaxFrame, w.ChunkSize())
	require.ErrorIs(t, w.Send(make([]byte, MinMaxFrame+1)), ErrFrameTooLarge)
	// Nothing was sent; the connection still works.
	require.NoError(t, c.SendBytes(ctx, make([]byte, MinMaxFrame)))
	b, err := s.RecvBytes(ctx)
	require.NoError(t, err)
	require.Len(t, b, MinMaxFrame)
}

func TestIOTimeout(t *testing.T) {
	ctx := testCtx(t)
	c, _ := pair(t, nil, &Options{IOTimeout: 100 * time.Millisecond}, "cmd")
	_, err := c.RecvString(ctx)
	require.ErrorIs(t, err, ErrTimeout)
	require.ErrorIs(t, err, os.ErrDeadlineExceeded)
	require.Equal(t, ErrDeadline, CodeOf(err))
	// Sticky.
	_, err = c.RecvU64(ctx)
	require.ErrorIs(t, err, ErrTimeout)
}

func TestContextDeadline(t *testing.T) {
	c, _ := pair(t, nil, nil, "cmd")
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := c.RecvString(ctx)
	require.ErrorIs(t, err, context.DeadlineExceeded)
}

func TestContextCancelInterruptsReceive(t *testing.T) {
	c, _ := pair(t, nil, nil, "cmd")
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		time.Sleep(20 * time.Millisecond)
		cancel()
	}()
	_, err := c.RecvString(ctx)
	require.ErrorIs(t, err, context.Canceled)
	require.Equal(t, ErrCanceled, CodeOf(err))
}

func TestCanceledBeforeStartBreaksNothing(t *testing.T) {
	ctx := testCtx(t)
	c, s := pair(t, nil, nil, "cmd")
	done, cancel := context.WithCancel(ctx)
	cancel()
	require.ErrorIs(t, c.SendString(done, "x"), context.Canceled)
	_, err := s.RecvString(done)
	require.ErrorIs(t, err, context.Canceled)
	require.NoError(t, c.SendString(ctx, "y"))
	str, err := s.RecvString(ctx)
	require.NoError(t, err)
	require.Equal(t, "y", str)
}

func TestStaleContextDoesNotBreakLaterOperations(t *testing.T) {
	ctx := testCtx(t)
	c, s := pair(t, nil, nil, "cmd")
	first, cancel := context.WithCancel(ctx)
	require.NoError(t, s.SendString(first, "a"))
	str, err := c.RecvString(first)
	require.NoError(t, err)
	require.Equal(t, "a", str)
	cancel() // fires the watcher registered for first
	go func() { time.Sleep(30 * time.Millisecond); _ = s.SendString(ctx, "b") }()
	str, err = c.RecvString(ctx)
	require.NoError(t, err)
	require.Equal(t, "b", str)
}

func TestKeepAlive(t *testing.T) {
	ctx := testCtx(t)
	c, s := pair(t, nil, &Options{IOTimeout: 500 * time.Millisecond}, "cmd")
	go func() {
		stop := s.KeepAlive(ctx, 50*time.Millisecond)
		time.Sleep(1500 * time.Millisecond) // busy for 3 client timeouts
		stop()
		_ = s.SendString(ctx, "done")
	}()
	str, err := c.RecvString(ctx)
	require.NoError(t, err)
	require.Equal(t, "done", str)
}

func TestPeerClosed(t *testing.T) {
	ctx := testCtx(t)
	c, s := pair(t, nil, nil, "cmd")
	require.NoError(t, s.SendString(ctx, "last"))
	require.NoError(t, s.Close())
	str, err := c.RecvString(ctx)
	require.NoError(t, err)
	require.Equal(t, "last", str)
	_, err = c.RecvString(ctx)
	require.ErrorIs(t, err, ErrPeerClosed)
}

func TestUseAfterClose(t *testing.T) {
	ctx := testCtx(t)
	c, _ := pair(t, nil, nil, "cmd")
	require.NoError(t, c.Close())
	require.NoError(t, c.Close())
	require.ErrorIs(t, c.SendString(ctx, "x"), ErrConnClosed)
	_, err := c.RecvString(ctx)
	require.ErrorIs(t, err, ErrConnClosed)
}

func TestCloseInterruptsReceive(t *testing.T) {
	ctx := testCtx(t)
	c, _ := pair(t, nil, nil, "cmd")
	go func() { time.Sleep(20 * time.Millisecond); _ = c.Close() }()
	_, err := c.RecvString(ctx)
	require.ErrorIs(t, err, ErrConnClosed)
}

func TestFinishDeliversEverything(t *testing.T) {
	ctx := testCtx(t)
	c, s := pair(t, nil, nil, "cmd")
	payload := make([]byte, 4<<20)
	finished := make(chan error, 1)
	go func() {
		if err := s.SendBytes(ctx, payload); err != nil {
			finished <- err
			return
		}
		finished <- s.Finish(ctx)
	}()
	b, err := c.RecvBytes(ctx)
	require.NoError(t, err)
	require.Len(t, b, len(payload))
	_, err = c.RecvString(ctx)
	require.ErrorIs(t, err, ErrPeerClosed)
	require.NoError(t, c.Close())
	require.NoError(t, <-finished)
}

func TestConcurrentSendAndReceive(t *testing.T) {
	ctx := testCtx(t)
	c, s := pair(t, nil, nil, "cmd")
	const n = 200
	var wg sync.WaitGroup
	// Two goroutines send on c concurrently (one of them keepalive-like);
	// the server sees whole frames only.
	wg.Add(2)
	go func() {
		defer wg.Done()
		for i := range n {
			if err := c.SendU64(ctx, uint64(i)); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	go func() {
		defer wg.Done()
		for range n {
			if err := c.SendDummy(ctx); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	for i := range n {
		u, err := s.RecvU64(ctx)
		require.NoError(t, err)
		require.Equal(t, uint64(i), u)
	}
	wg.Wait()
}

func TestOptionsValidation(t *testing.T) {
	for _, o := range []*Options{
		{MaxFrame: MinMaxFrame - 1},
		{MaxFrame: MaxMaxFrame + 1},
		{IOTimeout: -1},
		{BufferSize: -1},
	} {
		_, err := Dial(testCtx(t), "127.0.0.1:1", "c", "x", o)
		require.Error(t, err)
		_, err = Listen(testCtx(t), "127.0.0.1:0", "s", o)
		require.Error(t, err)
	}
	_, err := Dial(testCtx(t), "127.0.0.1:1", "c", "", nil)
	require.Error(t, err)
	_, err = Dial(testCtx(t), "127.0.0.1:1", "c", strings.Repeat("x", MaxCommandLen+1), nil)
	require.Error(t, err)
	_, err = Dial(testCtx(t), "127.0.0.1:1", "c", "x", nil, strings.Repeat("y", MinMaxFrame))
	require.ErrorIs(t, err, ErrFrameTooLarge)
}

func TestDialRefused(t *testing.T) {
	l, err := Listen(context.Background(), "127.0.0.1:0", "s", nil)
	require.NoError(t, err)
	addr := l.Addr().String()
	require.NoError(t, l.Close())
	_, err = Dial(testCtx(t), addr, "c", "x", nil)
	require.Error(t, err)
	require.Contains(t, err.Error(), "wire: dial")
}

func TestReadAfterPeerError(t *testing.T) {
	// A server that fails mid-stream: the client sees the error text, not a
	// bare EOF.
	ctx := testCtx(t)
	c, s := pair(t, nil, nil, "cmd")
	go func() {
		w := s.NewStreamWriter(ctx, 0)
		_ = w.Send([]byte("part"))
		_ = w.Abort(errors.Wrap(ErrVolStopped, "volume stopped meanwhile"))
		_ = s.Finish(ctx)
	}()
	r := c.NewStreamReader(ctx)
	_, err := io.ReadAll(r)
	require.ErrorIs(t, err, ErrVolStopped)
	require.Contains(t, err.Error(), "volume stopped meanwhile")
}
