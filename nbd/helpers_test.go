package nbd

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// testLogger discards logs unless the test runs verbosely with failures to
// diagnose; slog's text handler on t.Output keeps them per test.
func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

// testExport is an export added by startServer.
type testExport struct {
	name     string
	backend  Backend
	readOnly bool
	desc     string
}

// startServer serves the exports on a 127.0.0.1 port-0 listener and shuts
// the server down at the end of the test.
func startServer(t testing.TB, opts Options, exports ...testExport) (*Server, string) {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	srv := NewServer(opts)
	for _, e := range exports {
		require.NoError(t, srv.AddExport(e.name, e.backend, e.readOnly, e.desc))
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	served := make(chan error, 1)
	go func() { served <- srv.Serve(context.Background(), l) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		require.NoError(t, srv.Shutdown(ctx))
		require.ErrorIs(t, <-served, ErrServerClosed)
	})
	return srv, l.Addr().String()
}

// dialClient connects a Client to addr and closes it at the end of the test.
func dialClient(t testing.TB, addr string, opts ClientOptions) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, "tcp", addr, opts)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func randomBytes(seed uint64, n int) []byte {
	var key [32]byte
	binary.LittleEndian.PutUint64(key[:], seed)
	b := make([]byte, n)
	_, _ = rand.NewChaCha8(key).Read(b)
	return b
}

// rawClient speaks the protocol byte by byte, to test exactly what the
// server sends and how it reacts to malformed input.
type rawClient struct {
	t  testing.TB
	c  net.Conn
	br *bufio.Reader
}

func dialRaw(t testing.TB, addr string) *rawClient {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	// A generous deadline turns a server that stops answering into a test
	// failure instead of a hung test.
	require.NoError(t, c.SetDeadline(time.Now().Add(20*time.Second)))
	return &rawClient{t: t, c: c, br: bufio.NewReader(c)}
}

func newReader(c net.Conn) *bufio.Reader { return bufio.NewReader(c) }

func (r *rawClient) write(b []byte) {
	r.t.Helper()
	_, err := r.c.Write(b)
	require.NoError(r.t, err)
}

func (r *rawClient) read(n int) []byte {
	r.t.Helper()
	b := make([]byte, n)
	_, err := io.ReadFull(r.br, b)
	require.NoError(r.t, err)
	return b
}

// greeting reads the server's greeting and returns its handshake flags.
func (r *rawClient) greeting() uint16 {
	r.t.Helper()
	b := r.read(18)
	require.Equal(r.t, magicNBD, binary.BigEndian.Uint64(b[0:8]))
	require.Equal(r.t, magicOpts, binary.BigEndian.Uint64(b[8:16]))
	return binary.BigEndian.Uint16(b[16:18])
}

func (r *rawClient) clientFlags(f uint32) {
	r.t.Helper()
	r.write(binary.BigEndian.AppendUint32(nil, f))
}

// start performs greeting and client flags (fixed newstyle, no zeroes).
func (r *rawClient) start() {
	r.t.Helper()
	r.greeting()
	r.clientFlags(clientFlagFixedNewstyle | clientFlagNoZeroes)
}

func (r *rawClient) option(opt uint32, data []byte) {
	r.t.Helper()
	b := binary.BigEndian.AppendUint64(nil, magicOpts)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	r.write(append(b, data...))
}

type optReply struct {
	opt, typ uint32
	data     []byte
}

func (r *rawClient) optReply() optReply {
	r.t.Helper()
	h := r.read(optionReplyHeaderSize)
	require.Equal(r.t, magicOptReply, binary.BigEndian.Uint64(h[0:8]))
	rep := optReply{
		opt: binary.BigEndian.Uint32(h[8:12]),
		typ: binary.BigEndian.Uint32(h[12:16]),
	}
	rep.data = r.read(int(binary.BigEndian.Uint32(h[16:20])))
	return rep
}

// expectOptErr reads one reply and checks it is error typ for opt.
func (r *rawClient) expectOptErr(opt, typ uint32) optReply {
	r.t.Helper()
	rep := r.optReply()
	require.Equal(r.t, opt, rep.opt)
	require.Equalf(r.t, typ, rep.typ, "reply %#x, message %q", rep.typ, rep.data)
	return rep
}

// infoGoData encodes NBD_OPT_INFO/GO data.
func infoGoData(name string, infos ...uint16) []byte {
	b := binary.BigEndian.AppendUint32(nil, uint32(len(name)))
	b = append(b, name...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(infos)))
	for _, i := range infos {
		b = binary.BigEndian.AppendUint16(b, i)
	}
	return b
}

// infoReplies reads NBD_REP_INFO replies up to the final reply and returns
// them by type together with the final reply type.
func (r *rawClient) infoReplies(opt uint32) (map[uint16][]byte, optReply) {
	r.t.Helper()
	infos := make(map[uint16][]byte)
	for {
		rep := r.optReply()
		require.Equal(r.t, opt, rep.opt)
		if rep.typ != repInfo {
			return infos, rep
		}
		require.GreaterOrEqual(r.t, len(rep.data), 2)
		typ := binary.BigEndian.Uint16(rep.data)
		_, dup := infos[typ]
		require.Falsef(r.t, dup, "information type %d sent twice", typ)
		infos[typ] = rep.data[2:]
	}
}

// goExport enters transmission with NBD_OPT_GO and returns size and flags.
func (r *rawClient) goExport(name string) (uint64, TransmissionFlags) {
	r.t.Helper()
	r.option(optGo, infoGoData(name))
	infos, final := r.infoReplies(optGo)
	require.Equalf(r.t, repAck, final.typ, "GO %q: %#x %q", name, final.typ, final.data)
	ex := infos[infoExport]
	require.Len(r.t, ex, 10)
	return binary.BigEndian.Uint64(ex[0:8]), TransmissionFlags(binary.BigEndian.Uint16(ex[8:10]))
}

func (r *rawClient) request(flags, typ uint16, handle, off uint64, length uint32, payload []byte) {
	r.t.Helper()
	b := make([]byte, requestHeaderSize, requestHeaderSize+len(payload))
	encodeRequest(b, request{flags: flags, typ: typ, handle: handle, offset: off, length: length})
	r.write(append(b, payload...))
}

// reply reads a simple reply header and returns its error and handle.
func (r *rawClient) reply() (Errno, uint64) {
	r.t.Helper()
	b := r.read(simpleReplyHeaderSize)
	require.Equal(r.t, magicSimpleReply, binary.BigEndian.Uint32(b[0:4]))
	return Errno(binary.BigEndian.Uint32(b[4:8])), binary.BigEndian.Uint64(b[8:16])
}

// expectReply reads a reply and checks its handle and error.
func (r *rawClient) expectReply(handle uint64, want Errno) {
	r.t.Helper()
	errno, h := r.reply()
	require.Equal(r.t, handle, h)
	require.Equalf(r.t, want, errno, "got %v", errno)
}

// expectClosed checks that the server closed the connection: the next read
// ends without data.
func (r *rawClient) expectClosed() {
	r.t.Helper()
	var b [1]byte
	n, err := r.br.Read(b[:])
	require.Zero(r.t, n, "server sent more data")
	require.Error(r.t, err)
	var ne net.Error
	require.False(r.t, errors.As(err, &ne) && ne.Timeout(), "server did not close the connection: %v", err)
}

// gateBackend blocks ReadAt until released, counting concurrent calls.
type gateBackend struct {
	*MemoryBackend
	release chan struct{}
	entered chan struct{}

	mu          sync.Mutex
	cur, maxCur int
}

func newGateBackend(size int64) *gateBackend {
	return &gateBackend{
		MemoryBackend: NewMemoryBackend(size),
		release:       make(chan struct{}),
		entered:       make(chan struct{}, 1024),
	}
}

func (g *gateBackend) ReadAt(p []byte, off int64) (int, error) {
	g.mu.Lock()
	g.cur++
	g.maxCur = max(g.maxCur, g.cur)
	g.mu.Unlock()
	g.entered <- struct{}{}
	<-g.release
	g.mu.Lock()
	g.cur--
	g.mu.Unlock()
	return g.MemoryBackend.ReadAt(p, off)
}

func (g *gateBackend) maxConcurrent() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.maxCur
}
