package proxy

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"math/rand/v2"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/server"
	"github.com/walb-go/walb/wdiff"
	"github.com/walb-go/walb/wire"
	"github.com/walb-go/walb/wlog"
)

// startServer runs a proxy server on 127.0.0.1:0 until the end of the test.
func startServer(t testing.TB, pcfg Config) (*Server, string) {
	t.Helper()
	s, err := NewServer(server.Config{ID: "p0", Addr: "127.0.0.1:0", Logger: pcfg.Logger}, pcfg)
	require.NoError(t, err)
	require.NoError(t, s.Listen())
	done := make(chan error, 1)
	go func() { done <- s.Run(context.Background()) }()
	t.Cleanup(func() {
		s.Shutdown(server.Force)
		require.NoError(t, <-done)
	})
	waitServing(t, s.Addr().String())
	return s, s.Addr().String()
}

// waitServing returns once the server answers, that is once its recovery
// is over: only then may a test use its Proxy directly.
func waitServing(t testing.TB, addr string) {
	t.Helper()
	ht, err := (&Client{ID: "test"}).HostType(context.Background(), addr)
	require.NoError(t, err)
	require.Equal(t, HostType, ht)
}

// call runs one command and returns its reply kind and, for ok, the value
// read by recv (nil: none).
func call(t testing.TB, addr string, recv func(c *wire.Conn) error, cmd string, args ...string) (wire.Reply, error) {
	t.Helper()
	ctx := context.Background()
	c, err := wire.Dial(ctx, addr, "test", cmd, nil, args...)
	if err != nil {
		return 0, err
	}
	defer c.Close()
	r, err := c.RecvReply(ctx)
	if err != nil {
		return 0, err
	}
	if r == wire.ReplyOK && recv != nil {
		return r, recv(c)
	}
	return r, nil
}

func callOK(t testing.TB, addr, cmd string, args ...string) {
	t.Helper()
	r, err := call(t, addr, nil, cmd, args...)
	require.NoError(t, err, "%s %q", cmd, args)
	require.Equal(t, wire.ReplyOK, r)
}

func getString(t testing.TB, addr string, args ...string) string {
	t.Helper()
	var s string
	_, err := call(t, addr, func(c *wire.Conn) (err error) { s, err = c.RecvString(context.Background()); return }, "get", args...)
	require.NoError(t, err, "get %q", args)
	return s
}

func getStrings(t testing.TB, addr, cmd string, args ...string) []string {
	t.Helper()
	var v []string
	_, err := call(t, addr, func(c *wire.Conn) (err error) { v, err = c.RecvStrings(context.Background()); return }, cmd, args...)
	require.NoError(t, err, "%s %q", cmd, args)
	return v
}

// Every proxy command over TCP, and a wlog transfer from the client side
// through to the archive (§4, §6.5).
func TestServerCommandsOverTCP(t *testing.T) {
	ctx := context.Background()
	arch := newFakeArchive()
	cfg := testConfig(t, arch)
	s, addr := startServer(t, cfg)

	callOK(t, addr, CmdArchiveInfo, "add", "v0", "a0", "archive-a0:1", "snappy:0:1", "0")
	callOK(t, addr, CmdArchiveInfo, "update", "v0", "a1", "archive-a1:2")
	require.Equal(t, []string{"a0", "a1"}, getStrings(t, addr, CmdArchiveInfo, "list", "v0"))
	var info string
	_, err := call(t, addr, func(c *wire.Conn) (err error) { info, err = c.RecvString(ctx); return }, CmdArchiveInfo, "get", "v0", "a1")
	require.NoError(t, err)
	require.Equal(t, "archive-a1:2 snappy:0:1 0", info)
	require.Equal(t, StateStopped, getString(t, addr, GetState, "v0"))
	require.Equal(t, HostType, getString(t, addr, server.GetHostType))
	callOK(t, addr, CmdResize, "v0", "2m")
	size, _ := s.Proxy().SizeLb("v0")
	require.EqualValues(t, 4096, size)
	callOK(t, addr, CmdStart, "v0")
	require.Equal(t, StateStarted, getString(t, addr, GetState, "v0"))
	require.Equal(t, []string{"v0"}, getStrings(t, addr, "get", GetVol))

	// Errors come back with their codes.
	_, err = call(t, addr, nil, CmdStart, "v0")
	require.ErrorIs(t, err, wire.ErrWrongState)
	_, err = call(t, addr, nil, CmdArchiveInfo, "add", "v0", "a0", "h:1")
	require.ErrorIs(t, err, wire.ErrWrongState)
	_, err = call(t, addr, nil, CmdStart, "bad/vol")
	require.ErrorIs(t, err, wire.ErrBadRequest)
	_, err = call(t, addr, nil, CmdArchiveInfo, "frobnicate", "v0")
	require.ErrorIs(t, err, wire.ErrBadRequest)
	_, err = call(t, addr, nil, CmdResize, "v0", "1000")
	require.ErrorIs(t, err, wire.ErrBadRequest)
	_, err = call(t, addr, nil, "get", GetIsWdiffSendError, "v0", "zz")
	require.ErrorIs(t, err, wire.ErrNotFound)
	_, err = call(t, addr, nil, CmdStop, "v0", "sideways")
	require.ErrorIs(t, err, wire.ErrBadRequest)

	// A wlog transfer through the client.
	g := newWlogGen(4096)
	packs := g.packs(t, rand.New(rand.NewPCG(5, 5)), 20)
	cl := &Client{ID: "s0"}
	require.NoError(t, cl.SendWlog(ctx, addr, "v0", g.header(), bytes.NewReader(packs), testDiff(1, true)))
	waitFor(t, "both archives", func() bool { return len(arch.received()) == 2 })
	for _, got := range arch.received() {
		require.Equal(t, g.img, applyAll(t, [][]byte{got.data}))
	}
	size, _ = s.Proxy().SizeLb("v0")
	require.EqualValues(t, testVolSizeLb, size, "grew to the announced size")
	var isErr bool
	_, err = call(t, addr, func(c *wire.Conn) (err error) { isErr, err = c.RecvBool(ctx); return }, "get", GetIsWdiffSendError, "v0", "a0")
	require.NoError(t, err)
	require.False(t, isErr)
	require.Len(t, getStrings(t, addr, "get", GetLatestSnap, "v0"), 2)
	require.Empty(t, getStrings(t, addr, "get", GetProxyDiff, "v0", "a0"))
	st := getStrings(t, addr, server.CmdStatus, "v0")
	require.Contains(t, st, "state Started")
	st = getStrings(t, addr, server.CmdStatus)
	require.NotEmpty(t, st)
	callOK(t, addr, server.CmdKick, "v0", "a0")
	callOK(t, addr, server.CmdKick)
	ht, err := cl.HostType(ctx, addr)
	require.NoError(t, err)
	require.Equal(t, HostType, ht)

	// stop answers accept and stops in the background.
	r, err := call(t, addr, nil, CmdStop, "v0", "empty")
	require.NoError(t, err)
	require.Equal(t, wire.ReplyAccept, r)
	waitFor(t, "the stop", func() bool { return s.Proxy().State("v0") == StateStopped })
	_, err = call(t, addr, nil, CmdWlogTransfer, wlogArgs("v0", g.header())...)
	require.ErrorIs(t, err, wire.ErrWrongState)
	callOK(t, addr, CmdClearVol, "v0")
	require.Equal(t, StateClear, getString(t, addr, GetState, "v0"))
}

// The storage's session API: packs one by one from a wlog reader, and an
// abort that leaves nothing behind.
func TestWlogSession(t *testing.T) {
	ctx := context.Background()
	arch := newFakeArchive()
	s, addr := startServer(t, testConfig(t, arch))
	startedVolume(t, s.Proxy(), "v0", "a0")
	g := newWlogGen(512)
	packs := g.packs(t, rand.New(rand.NewPCG(6, 6)), 12)
	fh := wlog.FileHeader{Salt: g.salt, PBS: 512, UUID: wlog.UUID(g.uuid), BeginLsid: 1000, EndLsid: wlog.InvalidLsid}
	rd, err := wlog.NewReader(bytes.NewReader(append(fh.Marshal(), packs...)))
	require.NoError(t, err)

	cl := &Client{ID: "s0"}
	sess, err := cl.OpenWlog(ctx, addr, "v0", g.header())
	require.NoError(t, err)
	var buf []byte
	for {
		h, err := rd.NextPack()
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
		hc := *h
		hc.Records = append([]wlog.Record(nil), h.Records...)
		buf, err = rd.ReadPackData(buf[:0])
		require.NoError(t, err)
		require.NoError(t, sess.SendPack(ctx, &hc, buf))
	}
	require.NoError(t, sess.Commit(ctx, testDiff(1, true)))
	waitFor(t, "the send", func() bool { return len(arch.received()) == 1 })
	require.Equal(t, g.img, applyAll(t, [][]byte{arch.received()[0].data}))

	// Abort halfway: the proxy drops the transfer.
	sess, err = cl.OpenWlog(ctx, addr, "v0", g.header())
	require.NoError(t, err)
	_, err = sess.Write(packs[:len(packs)/2])
	require.NoError(t, err)
	sess.Abort(nil)
	waitFor(t, "the abort", func() bool { return s.Proxy().State("v0") == StateStarted })
	require.Empty(t, dirNames(t, volPath(s.Proxy(), "v0", "received")))
	require.Equal(t, 1, len(arch.received()))

	// A sender that vanishes mid-stream is the same.
	sess, err = cl.OpenWlog(ctx, addr, "v0", g.header())
	require.NoError(t, err)
	_, err = sess.Write(packs[:1000])
	require.NoError(t, err)
	sess.close()
	waitFor(t, "the drop", func() bool { return s.Proxy().State("v0") == StateStarted })
	require.Empty(t, dirNames(t, volPath(s.Proxy(), "v0", "received")))

	// Bad logpacks: the proxy answers bad-request to the commit.
	sess, err = cl.OpenWlog(ctx, addr, "v0", g.header())
	require.NoError(t, err)
	bad := bytes.Clone(packs)
	bad[7] ^= 1
	_, err = sess.Write(bad)
	require.NoError(t, err)
	err = sess.Commit(ctx, testDiff(2, true))
	require.ErrorIs(t, err, wire.ErrBadRequest)
}

// Malformed chunks are refused as bad requests.
func TestWlogTransferBadChunks(t *testing.T) {
	ctx := context.Background()
	s, addr := startServer(t, testConfig(t, newFakeArchive()))
	startedVolume(t, s.Proxy(), "v0", "a0")
	g := newWlogGen(512)
	hdr := func(codec byte, n uint32, body []byte) []byte {
		b := []byte{codec, 0, 0, 0, 0}
		binary.LittleEndian.PutUint32(b[1:], n)
		return append(b, body...)
	}
	cases := map[string][]byte{
		"short":           {0, 1},
		"zero size":       hdr(0, 0, nil),
		"size mismatch":   hdr(0, 10, make([]byte, 9)),
		"too large":       hdr(2, MaxWlogChunk+1, []byte{1}),
		"unknown codec":   hdr(9, 4, make([]byte, 4)),
		"bad snappy":      hdr(2, 100, []byte{0xff, 0xff, 0xff}),
		"snappy too long": hdr(2, 4, func() []byte { b, _, _ := wdiff.Compress(nil, make([]byte, 64), wdiff.CodecSnappy, 0); return b }()),
	}
	for name, chunk := range cases {
		t.Run(name, func(t *testing.T) {
			c, err := wire.Dial(ctx, addr, "raw", CmdWlogTransfer, nil, wlogArgs("v0", g.header())...)
			require.NoError(t, err)
			defer c.Close()
			require.NoError(t, c.ExpectAccept(ctx))
			w := c.NewStreamWriter(ctx, 0)
			require.NoError(t, w.Send(chunk))
			_ = w.Close()
			_ = c.SendValue(ctx, testDiff(1, true))
			err = c.RecvAck(ctx)
			require.ErrorIs(t, err, wire.ErrBadRequest)
		})
	}
	for _, args := range [][]string{
		{"v0"},
		{"v0", "nothex", "512", "1", "1", "1"},
		{"v0", g.uuid.String(), "512", "4294967296", "1", "1"},
		{"v0", g.uuid.String(), "513", "1", "1", "1"},
	} {
		_, err := call(t, addr, nil, CmdWlogTransfer, args...)
		require.ErrorIs(t, err, wire.ErrBadRequest, "%q", args)
	}
	require.Equal(t, StateStarted, s.Proxy().State("v0"))
}

// A force shutdown aborts a transfer in flight; after a restart on the same
// directory the volume is Started again and takes transfers.
func TestServerShutdownAndRestart(t *testing.T) {
	ctx := context.Background()
	arch := newFakeArchive()
	cfg := testConfig(t, arch)
	s, err := NewServer(server.Config{ID: "p0", Addr: "127.0.0.1:0", Logger: cfg.Logger}, cfg)
	require.NoError(t, err)
	require.NoError(t, s.Listen())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	waitServing(t, s.Addr().String())
	startedVolume(t, s.Proxy(), "v0", "a0")
	g := newWlogGen(512)
	sess, err := (&Client{}).OpenWlog(ctx, s.Addr().String(), "v0", g.header())
	require.NoError(t, err)
	_, err = sess.Write(g.packs(t, rand.New(rand.NewPCG(1, 1)), 3))
	require.NoError(t, err)
	s.Shutdown(server.Force)
	require.NoError(t, <-done)
	require.Error(t, sess.Commit(ctx, testDiff(1, true)))

	s2, addr := startServer(t, cfg)
	require.Equal(t, StateStarted, s2.Proxy().State("v0"))
	require.Empty(t, dirNames(t, volPath(s2.Proxy(), "v0", "received")))
	require.NoError(t, SendWlog(ctx, addr, "v0", g.header(), bytes.NewReader(nil), testDiff(1, true)))
	waitFor(t, "the send", func() bool { return arch.latestOf("archive-a0:1", "v0") == meta.CleanSnap(1) })
}
