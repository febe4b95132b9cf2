package nbd

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

func TestListExportsAndQueryExport(t *testing.T) {
	_, addr := startServer(t, Options{MaxRequestSize: 1 << 20}, defaultExports()...)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	conn, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	list, err := ListExports(ctx, conn, nil)
	require.NoError(t, err)
	require.Equal(t, []ExportInfo{
		{Name: "", Description: "the unnamed export"},
		{Name: "disk", Description: "scratch disk"},
		{Name: "ro"},
	}, list)

	conn, err = net.Dial("tcp", addr)
	require.NoError(t, err)
	info, err := QueryExport(ctx, conn, ClientOptions{Export: "disk"})
	require.NoError(t, err)
	require.Equal(t, ExportInfo{
		Name: "disk", Description: "scratch disk", Size: 1 << 20,
		Flags:        FlagHasFlags | FlagSendFlush | FlagSendFUA | FlagSendTrim | FlagSendWriteZeroes | FlagCanMultiConn,
		MinBlockSize: 1, PreferredBlockSize: 4096, MaxBlockSize: 1 << 20,
	}, info)

	conn, err = net.Dial("tcp", addr)
	require.NoError(t, err)
	_, err = QueryExport(ctx, conn, ClientOptions{Export: "nope"})
	require.ErrorIs(t, err, ErrUnknownExport)
	require.Contains(t, err.Error(), `export \"nope\" is not available`)

	_, err = Dial(ctx, "tcp", addr, ClientOptions{Export: "nope"})
	require.ErrorIs(t, err, ErrUnknownExport)
}

func TestClientExportNameOption(t *testing.T) {
	_, addr := startServer(t, Options{}, defaultExports()...)
	c := dialClient(t, addr, ClientOptions{Export: "ro", ExportName: true})
	require.Equal(t, int64(64<<10), c.Size())
	require.Equal(t, FlagHasFlags|FlagReadOnly|FlagSendFlush|FlagCanMultiConn, c.Flags())
	_, err := c.WriteAt([]byte("x"), 0)
	require.ErrorIs(t, err, EPERM)
	_, err = c.WriteAtFUA([]byte("x"), 0)
	require.ErrorIs(t, err, ErrUnsupported)
	require.ErrorIs(t, c.Trim(0, 512), ErrUnsupported)
	require.ErrorIs(t, c.WriteZeroes(0, 512, true), ErrUnsupported)
	require.NoError(t, c.Flush())
	require.NoError(t, c.Close())
	_, err = c.ReadAt(make([]byte, 1), 0)
	require.ErrorIs(t, err, ErrClientClosed)
	require.NoError(t, c.Close(), "Close is idempotent")
}

func TestClientHandshakeCancelled(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer l.Close()
	go func() {
		// A server that accepts and says nothing.
		c, err := l.Accept()
		if err == nil {
			defer c.Close()
			_, _ = io.Copy(io.Discard, c)
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err = Dial(ctx, "tcp", l.Addr().String(), ClientOptions{})
	require.ErrorIs(t, err, context.DeadlineExceeded)
}

// fakeServer runs script against the server end of a pipe.
func fakeServer(t *testing.T, script func(br *bufio.Reader, w io.Writer)) net.Conn {
	t.Helper()
	client, server := net.Pipe()
	go func() {
		defer server.Close()
		script(bufio.NewReader(server), server)
	}()
	t.Cleanup(func() { _ = client.Close() })
	return client
}

func fakeGreeting(w io.Writer, flags uint16) {
	b := binary.BigEndian.AppendUint64(nil, magicNBD)
	b = binary.BigEndian.AppendUint64(b, magicOpts)
	_, _ = w.Write(binary.BigEndian.AppendUint16(b, flags))
}

func fakeReadOption(br *bufio.Reader) (uint32, []byte) {
	var h [16]byte
	if _, err := io.ReadFull(br, h[:]); err != nil {
		return 0, nil
	}
	data := make([]byte, binary.BigEndian.Uint32(h[12:16]))
	_, _ = io.ReadFull(br, data)
	return binary.BigEndian.Uint32(h[8:12]), data
}

func fakeOptReply(w io.Writer, opt, typ uint32, data []byte) {
	b := make([]byte, optionReplyHeaderSize)
	encodeOptionReplyHeader(b, opt, typ, uint32(len(data)))
	_, _ = w.Write(append(b, data...))
}

func TestClientFallsBackToExportName(t *testing.T) {
	conn := fakeServer(t, func(br *bufio.Reader, w io.Writer) {
		fakeGreeting(w, handshakeFlagFixedNewstyle)
		_, _ = io.ReadFull(br, make([]byte, 4))
		opt, _ := fakeReadOption(br)
		fakeOptReply(w, opt, repErrUnsup, nil) // an old server without GO
		opt, data := fakeReadOption(br)
		if opt != optExportName || string(data) != "old" {
			return
		}
		b := binary.BigEndian.AppendUint64(nil, 12345)
		b = binary.BigEndian.AppendUint16(b, uint16(FlagHasFlags|FlagReadOnly))
		_, _ = w.Write(append(b, make([]byte, 124)...)) // no NO_ZEROES offered
		_, _ = io.Copy(io.Discard, br)
	})
	c, err := NewClient(context.Background(), conn, ClientOptions{Export: "old"})
	require.NoError(t, err)
	require.Equal(t, int64(12345), c.Size())
	require.Equal(t, FlagHasFlags|FlagReadOnly, c.Flags())
	require.NoError(t, c.Close())
}

func TestClientRejectsBadServers(t *testing.T) {
	for _, tc := range []struct {
		name   string
		script func(br *bufio.Reader, w io.Writer)
		want   error
	}{
		{"oldstyle greeting", func(br *bufio.Reader, w io.Writer) {
			b := binary.BigEndian.AppendUint64(nil, magicNBD)
			_, _ = w.Write(binary.BigEndian.AppendUint64(b, 0x00420281861253))
			_, _ = w.Write(make([]byte, 2))
		}, ErrBadMagic},
		{"not nbd", func(br *bufio.Reader, w io.Writer) {
			_, _ = w.Write([]byte("SSH-2.0-OpenSSH_9.2p1 Debian\r\n"))
		}, ErrBadMagic},
		{"GO without INFO_EXPORT", func(br *bufio.Reader, w io.Writer) {
			fakeGreeting(w, handshakeFlagFixedNewstyle)
			_, _ = io.ReadFull(br, make([]byte, 4))
			opt, _ := fakeReadOption(br)
			fakeOptReply(w, opt, repAck, nil)
		}, ErrProtocol},
		{"reply to another option", func(br *bufio.Reader, w io.Writer) {
			fakeGreeting(w, handshakeFlagFixedNewstyle)
			_, _ = io.ReadFull(br, make([]byte, 4))
			fakeReadOption(br)
			fakeOptReply(w, optList, repAck, nil)
		}, ErrProtocol},
		{"huge option reply", func(br *bufio.Reader, w io.Writer) {
			fakeGreeting(w, handshakeFlagFixedNewstyle)
			_, _ = io.ReadFull(br, make([]byte, 4))
			opt, _ := fakeReadOption(br)
			b := make([]byte, optionReplyHeaderSize)
			encodeOptionReplyHeader(b, opt, repInfo, 1<<30)
			_, _ = w.Write(b)
		}, ErrOptionTooLarge},
		{"shutting down", func(br *bufio.Reader, w io.Writer) {
			fakeGreeting(w, handshakeFlagFixedNewstyle)
			_, _ = io.ReadFull(br, make([]byte, 4))
			opt, _ := fakeReadOption(br)
			fakeOptReply(w, opt, repErrShutdown, []byte("bye"))
		}, ErrShutdown},
		{"policy", func(br *bufio.Reader, w io.Writer) {
			fakeGreeting(w, handshakeFlagFixedNewstyle)
			_, _ = io.ReadFull(br, make([]byte, 4))
			opt, _ := fakeReadOption(br)
			fakeOptReply(w, opt, repErrPolicy, nil)
		}, ErrOptionRejected},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, err := NewClient(ctx, fakeServer(t, tc.script), ClientOptions{})
			require.ErrorIs(t, err, tc.want)
		})
	}
}

// goFakeServer negotiates GO for a 1 MiB export, then hands the
// transmission phase to fn.
func goFakeServer(t *testing.T, fn func(br *bufio.Reader, w io.Writer)) *Client {
	conn := fakeServer(t, func(br *bufio.Reader, w io.Writer) {
		fakeGreeting(w, handshakeFlagFixedNewstyle|handshakeFlagNoZeroes)
		_, _ = io.ReadFull(br, make([]byte, 4))
		opt, _ := fakeReadOption(br)
		info := binary.BigEndian.AppendUint16(nil, infoExport)
		info = binary.BigEndian.AppendUint64(info, 1<<20)
		info = binary.BigEndian.AppendUint16(info, uint16(FlagHasFlags))
		fakeOptReply(w, opt, repInfo, info)
		fakeOptReply(w, opt, repAck, nil)
		fn(br, w)
	})
	c, err := NewClient(context.Background(), conn, ClientOptions{})
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestClientRejectsBadReplies(t *testing.T) {
	for _, tc := range []struct {
		name  string
		reply func(handle uint64) []byte
	}{
		{"unknown handle", func(h uint64) []byte {
			b := make([]byte, simpleReplyHeaderSize)
			encodeSimpleReply(b, 0, h+1000)
			return b
		}},
		{"structured reply never negotiated", func(h uint64) []byte {
			b := binary.BigEndian.AppendUint32(nil, magicStructuredReply)
			return append(b, make([]byte, 16)...)
		}},
		{"truncated read data", func(h uint64) []byte {
			b := make([]byte, simpleReplyHeaderSize)
			encodeSimpleReply(b, 0, h)
			return append(b, 1, 2, 3)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := goFakeServer(t, func(br *bufio.Reader, w io.Writer) {
				var h [requestHeaderSize]byte
				if _, err := io.ReadFull(br, h[:]); err != nil {
					return
				}
				r, _ := decodeRequest(h[:])
				_, _ = w.Write(tc.reply(r.handle))
			})
			_, err := c.ReadAt(make([]byte, 512), 0)
			require.ErrorIs(t, err, ErrClientClosed)
		})
	}
}

func TestClientMapsErrno(t *testing.T) {
	c := goFakeServer(t, func(br *bufio.Reader, w io.Writer) {
		for _, e := range []Errno{ESHUTDOWN, 9999} {
			var h [requestHeaderSize]byte
			if _, err := io.ReadFull(br, h[:]); err != nil {
				return
			}
			r, _ := decodeRequest(h[:])
			b := make([]byte, simpleReplyHeaderSize)
			encodeSimpleReply(b, e, r.handle)
			_, _ = w.Write(b)
		}
	})
	_, err := c.ReadAt(make([]byte, 512), 0)
	require.ErrorIs(t, err, ErrShutdown)
	_, err = c.ReadAt(make([]byte, 512), 0)
	require.ErrorIs(t, err, Errno(9999))
}
