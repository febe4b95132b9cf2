package wire

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"path/filepath"
	"testing"
	"time"

	"github.com/pkg/errors"
	"github.com/stretchr/testify/require"
)

func knownCommands(cmds ...string) func(string, []string) error {
	return func(cmd string, _ []string) error {
		for _, c := range cmds {
			if c == cmd {
				return nil
			}
		}
		return errors.Wrapf(ErrUnknownCommand, "unknown command %q", cmd)
	}
}

func TestUnknownCommand(t *testing.T) {
	l, ch := testListener(t, nil, knownCommands("status"))
	_, err := Dial(testCtx(t), l.Addr().String(), "cli", "bogus", nil)
	require.ErrorIs(t, err, ErrUnknownCommand)
	var re *RemoteError
	require.ErrorAs(t, err, &re)
	require.Contains(t, re.Msg, `unknown command "bogus"`)
	r := <-ch
	require.ErrorIs(t, r.err, ErrUnknownCommand)

	c, err := Dial(testCtx(t), l.Addr().String(), "cli", "status", nil)
	require.NoError(t, err)
	require.NoError(t, c.Close())
	r = <-ch
	require.NoError(t, r.err)
	require.NoError(t, r.c.Close())
}

func TestHandshakeGarbage(t *testing.T) {
	tests := []struct {
		name string
		in   func() []byte
		want error
	}{
		{"http request", func() []byte { return []byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n") }, ErrBadMagic},
		{"walb-tools style start", func() []byte { return []byte{3, 'c', 't', 'l', 0, 0, 0, 0, 0, 0} }, ErrBadMagic},
		{"oversized hello", func() []byte {
			b := appendPreamble(nil, Version)
			return binary.LittleEndian.AppendUint32(append(b, byte(FrameHello)), 1<<30)
		}, ErrFrameTooLarge},
		{"unknown frame type", func() []byte {
			return AppendFrame(appendPreamble(nil, Version), FrameType(0xee), nil)
		}, ErrBadFrame},
		{"string instead of hello", func() []byte {
			return AppendFrame(appendPreamble(nil, Version), FrameString, []byte("status"))
		}, ErrUnexpectedFrame},
		{"bad checksum", func() []byte {
			b := AppendFrame(appendPreamble(nil, Version), FrameHello, helloPayload(DefaultMaxFrame, "raw", "status"))
			b[len(b)-1] ^= 1
			return b
		}, ErrChecksum},
		{"truncated hello payload", func() []byte {
			return AppendFrame(appendPreamble(nil, Version), FrameHello, []byte{0, 0, 1, 0, 5})
		}, ErrBadFrame},
		{"tiny client max frame", func() []byte {
			return AppendFrame(appendPreamble(nil, Version), FrameHello, helloPayload(100, "raw", "status"))
		}, ErrBadFrame},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l, ch := testListener(t, &Options{IOTimeout: 2 * time.Second}, knownCommands("status"))
			rc := dialRaw(t, l.Addr().String())
			rc.write(tc.in())
			r := <-ch
			require.ErrorIs(t, r.err, tc.want)
			require.Nil(t, r.c)
			// The server explains itself before closing.
			_, w := rc.welcome()
			require.NotNil(t, w.status)
			require.Equal(t, ErrProtocol, w.status.Code)
			require.Contains(t, w.status.Msg, tc.want.Error())
			_, err := rc.br.ReadByte()
			require.Equal(t, io.EOF, err)
		})
	}
}

func TestHandshakeSilentClientTimesOut(t *testing.T) {
	l, ch := testListener(t, &Options{IOTimeout: 100 * time.Millisecond}, nil)
	rc := dialRaw(t, l.Addr().String())
	rc.write(magic[:3])
	r := <-ch
	require.ErrorIs(t, r.err, ErrTimeout)
}

func TestVersionNegotiation(t *testing.T) {
	l, ch := testListener(t, nil, knownCommands("status"))

	// Too old.
	rc := dialRaw(t, l.Addr().String())
	rc.hello(0, "status")
	v, w := rc.welcome()
	require.Equal(t, Version, v)
	require.ErrorIs(t, w.status, ErrVersionMismatch)
	r := <-ch
	require.ErrorIs(t, r.err, ErrVersionMismatch)

	// Newer: the server answers with its own version and lets the client
	// decide.
	rc = dialRaw(t, l.Addr().String())
	rc.hello(Version+6, "status")
	v, w = rc.welcome()
	require.Equal(t, Version, v)
	require.Equal(t, Version, w.version)
	require.Nil(t, w.status)
	require.Equal(t, "srv", w.serverID)
	r = <-ch
	require.NoError(t, r.err)
	require.Equal(t, Version, r.c.Version())
	require.NoError(t, r.c.Close())
}

// fakeServer answers every connection with the given bytes after reading the
// client's preamble and Hello.
func fakeServer(t *testing.T, answer []byte) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer nc.Close()
				pre := make([]byte, PreambleSize)
				if _, err := io.ReadFull(nc, pre); err != nil {
					return
				}
				if _, _, err := NewFrameReader(nc, DefaultMaxFrame).Next(); err != nil {
					return
				}
				_, _ = nc.Write(answer)
			}()
		}
	}()
	return ln.Addr().String()
}

func welcomePayload(v uint16, maxFrame uint32, id string) []byte {
	w := binary.LittleEndian.AppendUint16(nil, v)
	w = binary.LittleEndian.AppendUint32(w, maxFrame)
	return appendReply(appendString16(w, id), kindOK, "", "")
}

func TestClientRefusesBadServers(t *testing.T) {
	tests := []struct {
		name   string
		answer []byte
		want   error
	}{
		{"not a walb server", []byte("SSH-2.0-OpenSSH_9.0\r\n"), ErrBadMagic},
		{"newer version only", AppendFrame(appendPreamble(nil, Version+1), FrameWelcome, welcomePayload(Version+1, DefaultMaxFrame, "s")), ErrVersionMismatch},
		{"welcome version differs", AppendFrame(appendPreamble(nil, Version), FrameWelcome, welcomePayload(Version+1, DefaultMaxFrame, "s")), ErrBadFrame},
		{"tiny max frame", AppendFrame(appendPreamble(nil, Version), FrameWelcome, welcomePayload(Version, 10, "s")), ErrBadFrame},
		{"reply instead of welcome", AppendFrame(appendPreamble(nil, Version), FrameReply, []byte{0}), ErrUnexpectedFrame},
		{"closes", nil, ErrPeerClosed},
		{"truncated welcome", AppendFrame(appendPreamble(nil, Version), FrameWelcome, welcomePayload(Version, DefaultMaxFrame, "s"))[:15], ErrTruncated},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			addr := fakeServer(t, tc.answer)
			_, err := Dial(testCtx(t), addr, "cli", "status", &Options{IOTimeout: 2 * time.Second})
			require.ErrorIs(t, err, tc.want)
		})
	}
}

func TestPostHandshakeGarbage(t *testing.T) {
	tests := []struct {
		name  string
		bytes []byte
		want  error
	}{
		{"bad crc", func() []byte {
			b := AppendFrame(nil, FrameString, []byte("vol0"))
			b[6] ^= 0xff
			return b
		}(), ErrChecksum},
		{"oversized", binary.LittleEndian.AppendUint32([]byte{byte(FrameChunk)}, MinMaxFrame+1), ErrFrameTooLarge},
		{"unknown type", AppendFrame(nil, FrameType(0x99), []byte("x")), ErrBadFrame},
		{"random", []byte{0x20, 0xde, 0xad, 0xbe, 0xef, 1, 2, 3}, ErrFrameTooLarge},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testCtx(t)
			l, ch := testListener(t, &Options{MaxFrame: MinMaxFrame}, nil)
			rc := dialRaw(t, l.Addr().String())
			rc.hello(Version, "cmd")
			_, w := rc.welcome()
			require.Nil(t, w.status)
			r := <-ch
			require.NoError(t, r.err)
			s := r.c
			rc.write(tc.bytes)
			_, err := s.RecvString(ctx)
			require.ErrorIs(t, err, tc.want)
			// The server can still tell the client why, then closes.
			require.NoError(t, s.SendError(ctx, err))
			finished := make(chan error, 1)
			go func() { finished <- s.Finish(ctx) }()
			fr := rc.frames()
			typ, p, err := fr.Next()
			require.NoError(t, err)
			require.Equal(t, FrameReply, typ)
			d := payloadDecoder{p: p, ctx: "t"}
			_, re := decodeReply(&d)
			require.NotNil(t, re)
			require.Equal(t, ErrProtocol, re.Code)
			_, _, err = fr.Next()
			require.Equal(t, io.EOF, err)
			require.NoError(t, rc.nc.Close())
			require.NoError(t, <-finished)
		})
	}
}

func TestUnixSocket(t *testing.T) {
	ctx := testCtx(t)
	path := filepath.Join(t.TempDir(), "srv.sock")
	l, err := Listen(ctx, "unix:"+path, "srv", nil)
	require.NoError(t, err)
	defer l.Close()
	go func() {
		nc, err := l.Accept()
		if err != nil {
			return
		}
		c, err := l.Handshake(ctx, nc, nil)
		if err != nil {
			return
		}
		_ = c.SendOK(ctx)
		_ = c.SendString(ctx, c.Command()+":"+c.Args()[0])
		_ = c.Finish(ctx)
	}()
	c, err := Dial(ctx, "unix:"+path, "cli", "ping", nil, "x")
	require.NoError(t, err)
	defer c.Close()
	require.NoError(t, c.ExpectOK(ctx))
	s, err := c.RecvString(ctx)
	require.NoError(t, err)
	require.Equal(t, "ping:x", s)
}

func TestUnixStaleSocketReplaced(t *testing.T) {
	path := filepath.Join(t.TempDir(), "srv.sock")
	// A socket file nobody listens on, as a crash leaves it.
	ln, err := net.Listen("unix", path)
	require.NoError(t, err)
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	require.NoError(t, ln.Close())
	l, err := Listen(context.Background(), "unix:"+path, "srv", nil)
	require.NoError(t, err)
	// A live one is not stolen.
	_, err = Listen(context.Background(), "unix:"+path, "srv", nil)
	require.Error(t, err)
	require.NoError(t, l.Close())
}

func TestParseAddr(t *testing.T) {
	for _, tc := range []struct{ in, net, addr string }{
		{"127.0.0.1:5000", "tcp", "127.0.0.1:5000"},
		{"[::1]:5000", "tcp", "[::1]:5000"},
		{"host:1", "tcp", "host:1"},
		{"unix:/run/walb.sock", "unix", "/run/walb.sock"},
	} {
		n, a := ParseAddr(tc.in)
		require.Equal(t, tc.net, n)
		require.Equal(t, tc.addr, a)
	}
}

func TestKeepAliveOptionsAndNewListener(t *testing.T) {
	ctx := testCtx(t)
	for _, ka := range []*net.KeepAliveConfig{
		nil,
		{Enable: false},
		{Enable: true, Idle: 1800 * time.Second, Interval: 60 * time.Second, Count: 10},
	} {
		o := &Options{KeepAlive: ka}
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		require.NoError(t, err)
		l, err := NewListener(ln, "wrapped", o)
		require.NoError(t, err)
		require.Equal(t, "wrapped", l.ID())
		go func() {
			nc, err := l.Accept()
			if err != nil {
				return
			}
			if c, err := l.Handshake(ctx, nc, nil); err == nil {
				_ = c.SendOK(ctx)
				_ = c.Finish(ctx)
			}
		}()
		c, err := Dial(ctx, l.Addr().String(), "cli", "x", o)
		require.NoError(t, err)
		require.NoError(t, c.ExpectOK(ctx))
		require.Equal(t, l.Addr().String(), c.RemoteAddr().String())
		require.Equal(t, DefaultIOTimeout, c.IOTimeout())
		require.NoError(t, c.Close())
		require.NoError(t, l.Close())
	}
	_, err := NewListener(nil, "x", &Options{MaxFrame: 1})
	require.Error(t, err)
}
