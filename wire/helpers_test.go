package wire

import (
	"bufio"
	"context"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// testCtx returns a context bounded so that a broken test fails instead of
// hanging.
func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// serverResult is what a test listener's handshake produced.
type serverResult struct {
	c   *Conn
	err error
}

// testListener listens on 127.0.0.1:0 and handshakes every connection,
// sending the results on the returned channel.
func testListener(t *testing.T, opts *Options, check func(string, []string) error) (*Listener, <-chan serverResult) {
	t.Helper()
	l, err := Listen(context.Background(), "127.0.0.1:0", "srv", opts)
	require.NoError(t, err)
	ch := make(chan serverResult, 16)
	go func() {
		for {
			nc, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				c, err := l.Handshake(context.Background(), nc, check)
				ch <- serverResult{c, err}
			}()
		}
	}()
	t.Cleanup(func() { _ = l.Close() })
	return l, ch
}

// pair returns the two ends of one handshaken exchange.
func pair(t *testing.T, sopts, copts *Options, cmd string, args ...string) (client, server *Conn) {
	t.Helper()
	l, ch := testListener(t, sopts, nil)
	c, err := Dial(testCtx(t), l.Addr().String(), "cli", cmd, copts, args...)
	require.NoError(t, err)
	r := <-ch
	require.NoError(t, r.err)
	t.Cleanup(func() {
		_ = c.Close()
		_ = r.c.Close()
	})
	return c, r.c
}

// rawClient is a hand-driven client for feeding a server bad bytes.
type rawClient struct {
	t  *testing.T
	nc net.Conn
	br *bufio.Reader
}

func dialRaw(t *testing.T, addr string) *rawClient {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { _ = nc.Close() })
	require.NoError(t, nc.SetDeadline(time.Now().Add(20*time.Second)))
	return &rawClient{t: t, nc: nc, br: bufio.NewReader(nc)}
}

func (r *rawClient) write(b []byte) {
	r.t.Helper()
	_, err := r.nc.Write(b)
	require.NoError(r.t, err)
}

// helloPayload builds a Hello payload.
func helloPayload(maxFrame uint32, id, cmd string, args ...string) []byte {
	p := binary.LittleEndian.AppendUint32(nil, maxFrame)
	p = appendString16(p, id)
	p = appendString16(p, cmd)
	return appendStrings(p, args)
}

// hello sends a preamble of version v and a Hello frame for cmd.
func (r *rawClient) hello(v uint16, cmd string, args ...string) {
	b := appendPreamble(nil, v)
	b = AppendFrame(b, FrameHello, helloPayload(DefaultMaxFrame, "raw", cmd, args...))
	r.write(b)
}

// welcome reads the server's preamble and Welcome frame.
func (r *rawClient) welcome() (uint16, welcomeMsg) {
	r.t.Helper()
	var pre [PreambleSize]byte
	_, err := io.ReadFull(r.br, pre[:])
	require.NoError(r.t, err)
	require.Equal(r.t, magic[:], pre[:6])
	fr := NewFrameReader(r.br, DefaultMaxFrame)
	typ, p, err := fr.Next()
	require.NoError(r.t, err)
	require.Equal(r.t, FrameWelcome, typ)
	w, err := decodeWelcome(p)
	require.NoError(r.t, err)
	return binary.LittleEndian.Uint16(pre[6:]), w
}

// frames returns a reader of the server's frames after the handshake.
func (r *rawClient) frames() *FrameReader { return NewFrameReader(r.br, DefaultMaxFrame) }

func errContextCanceled() error { return context.Canceled }
