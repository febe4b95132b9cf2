package archive

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/nbd"
	"github.com/walb-go/walb/server"
	"github.com/walb-go/walb/wire"
)

// tcpArchive is an archive server on 127.0.0.1 with an NBD server for
// restored images.
type tcpArchive struct {
	t       *testing.T
	s       *Server
	addr    string
	nbdAddr string
	done    chan error
	root    string
}

func startArchive(t *testing.T, root string, tweak func(*Config)) *tcpArchive {
	t.Helper()
	env := openEnv(t, root, nil) // makes the directories and the store
	_ = env.e.Close()
	nb := newNBD()
	nl, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	nctx, ncancel := context.WithCancel(context.Background())
	go func() { _ = nb.Serve(nctx, nl) }()
	cfg := env.cfg
	cfg.NBD = nb
	if tweak != nil {
		tweak(&cfg)
	}
	s, err := NewServer(server.Config{ID: "a0", Addr: "127.0.0.1:0", Logger: quiet, MaxForeground: 4}, cfg)
	require.NoError(t, err)
	require.NoError(t, s.Listen())
	ta := &tcpArchive{t: t, s: s, addr: s.Addr().String(), nbdAddr: nl.Addr().String(), done: make(chan error, 1), root: root}
	go func() { ta.done <- s.Run(context.Background()) }()
	// Connections are served after Recover: once one is, the engine (and
	// its NBD exports) is up.
	require.Equal(t, HostType, ta.getString(testCtx(t), "host-type"))
	t.Cleanup(func() {
		ta.stop()
		_ = nb.Shutdown(context.Background())
		ncancel()
	})
	return ta
}

// stop shuts the server down gracefully and waits for Run.
func (ta *tcpArchive) stop() {
	if ta.done == nil {
		return
	}
	ta.s.Shutdown(server.Graceful)
	require.NoError(ta.t, <-ta.done)
	ta.done = nil
}

// cmd runs a command and returns the connection after its ok or accept.
func (ta *tcpArchive) cmd(ctx context.Context, command string, args ...string) (wire.Reply, *wire.Conn, error) {
	c, err := wire.Dial(ctx, ta.addr, "test", command, nil, args...)
	if err != nil {
		return 0, nil, err
	}
	r, err := c.RecvReply(ctx)
	if err != nil {
		c.Close()
		return 0, nil, err
	}
	return r, c, nil
}

// ok runs a command that must answer ok.
func (ta *tcpArchive) ok(ctx context.Context, command string, args ...string) {
	ta.t.Helper()
	r, c, err := ta.cmd(ctx, command, args...)
	require.NoError(ta.t, err, "%s %v", command, args)
	c.Close()
	require.Equal(ta.t, wire.ReplyOK, r, "%s %v", command, args)
}

// accept runs a long command that must answer accept.
func (ta *tcpArchive) accept(ctx context.Context, command string, args ...string) {
	ta.t.Helper()
	r, c, err := ta.cmd(ctx, command, args...)
	require.NoError(ta.t, err, "%s %v", command, args)
	c.Close()
	require.Equal(ta.t, wire.ReplyAccept, r, "%s %v", command, args)
}

// get runs "get TARGET ARGS" and returns the value frame decoded by recv.
func getValue[T any](ta *tcpArchive, ctx context.Context, recv func(*wire.Conn, context.Context) (T, error), args ...string) (T, error) {
	var zero T
	r, c, err := ta.cmd(ctx, "get", args...)
	if err != nil {
		return zero, err
	}
	defer c.Close()
	require.Equal(ta.t, wire.ReplyOK, r)
	return recv(c, ctx)
}

func (ta *tcpArchive) getString(ctx context.Context, args ...string) string {
	ta.t.Helper()
	v, err := getValue(ta, ctx, (*wire.Conn).RecvString, args...)
	require.NoError(ta.t, err, "get %v", args)
	return v
}

func (ta *tcpArchive) getStrings(ctx context.Context, args ...string) []string {
	ta.t.Helper()
	v, err := getValue(ta, ctx, (*wire.Conn).RecvStrings, args...)
	require.NoError(ta.t, err, "get %v", args)
	return v
}

func (ta *tcpArchive) getU64(ctx context.Context, args ...string) uint64 {
	ta.t.Helper()
	v, err := getValue(ta, ctx, (*wire.Conn).RecvU64, args...)
	require.NoError(ta.t, err, "get %v", args)
	return v
}

// waitFor polls cond until it holds.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		require.True(t, time.Now().Before(deadline), "timed out waiting for %s", what)
		time.Sleep(10 * time.Millisecond)
	}
}

// nbdSHA reads a whole NBD export and hashes it.
func nbdSHA(t *testing.T, addr, export string) string {
	ctx := testCtx(t)
	c, err := nbd.Dial(ctx, "tcp", addr, nbd.ClientOptions{Export: export})
	require.NoError(t, err)
	defer c.Close()
	h := sha256.New()
	buf := make([]byte, 256<<10)
	for off := int64(0); off < c.Size(); off += int64(len(buf)) {
		n := min(int64(len(buf)), c.Size()-off)
		_, err := c.ReadAt(buf[:n], off)
		require.NoError(t, err)
		h.Write(buf[:n])
	}
	_, err = c.WriteAt(buf[:512], 0)
	require.Error(t, err, "restored exports are read-only")
	return hex.EncodeToString(h.Sum(nil))
}

// TestServerOverTCP drives every archive command and both protocols over
// TCP on 127.0.0.1, with the client functions the storage and the proxy
// use, and reads restored images through NBD.
func TestServerOverTCP(t *testing.T) {
	root := t.TempDir()
	ta := startArchive(t, root, nil)
	ctx := testCtx(t)
	const vol = "tcp-vol"
	m := newModel(42, 2048)
	m.discard = true
	copt := ClientOptions{ClientID: "p0"}

	// Bad requests.
	_, _, err := ta.cmd(ctx, "init-vol", "../x")
	require.ErrorIs(t, err, wire.ErrBadRequest)
	_, _, err = ta.cmd(ctx, "init-vol")
	require.ErrorIs(t, err, wire.ErrBadRequest)
	_, _, err = ta.cmd(ctx, "start", vol)
	require.ErrorIs(t, err, wire.ErrWrongState)
	require.Equal(t, "archive", ta.getString(ctx, "host-type"))

	ta.ok(ctx, "init-vol", vol)
	require.Equal(t, StateSyncReady, ta.getString(ctx, "state", vol))
	_, _, err = ta.cmd(ctx, "init-vol", vol)
	require.ErrorIs(t, err, wire.ErrWrongState)

	// A wdiff before the full sync: the volume is not Archived.
	early := newModel(1, 2048).nextWdiff(t, 10)
	hdr := WdiffHeader{Sender: SenderProxy, UUID: m.uuid, SizeLB: m.sizeLB, Diff: cleanDiff(0, 1, false)}
	reply, err := SendWdiff(ctx, ta.addr, vol, hdr, bytes.NewReader(early), copt)
	require.Error(t, err)
	require.Equal(t, ReplyError, reply)
	require.ErrorIs(t, err, wire.ErrWrongState)

	// A leftover resume point of a full replication (another lineage) is
	// dropped by the full backup, which overwrites the base.
	replState := filepath.Join(root, "base", vol, fullReplStateFileName)
	require.NoError(t, meta.Save(replState, FullReplState{State: meta.State{SnapB: meta.CleanSnap(3), SnapE: meta.CleanSnap(3)}, ProgressLB: 1024, Timestamp: time.Unix(1700000000, 0)}))

	// Full sync from the "storage".
	img0 := bytes.Clone(m.img)
	m.record(0)
	var snapCalled bool
	err = SendFullSync(ctx, ta.addr, vol, bytes.NewReader(img0), m.sizeLB, m.uuid, func(context.Context) (meta.Snap, error) {
		snapCalled = true
		return meta.CleanSnap(0), nil
	}, FullSyncOptions{ClientOptions: copt, BulkLB: 64, Timestamp: time.Unix(1700000000, 0)})
	require.NoError(t, err)
	require.True(t, snapCalled)
	require.Equal(t, StateArchived, ta.getString(ctx, "state", vol))
	require.NoFileExists(t, replState, "full_repl_state removed by the full backup")
	require.Equal(t, m.uuid.String(), ta.getString(ctx, "uuid", vol))
	require.Len(t, ta.getString(ctx, "archive-uuid", vol), 32)
	require.Equal(t, "<|0|>-20231114221320", ta.getString(ctx, "base", vol))
	require.EqualValues(t, 2048, ta.getU64(ctx, "vol-size", vol))
	require.EqualValues(t, 0, ta.getU64(ctx, "progress", vol))

	// Diffs from the "proxy".
	const n = 8
	datas := map[uint64][]byte{}
	for g := uint64(0); g < n; g++ {
		datas[g] = m.nextWdiff(t, 30)
		hdr.Diff = cleanDiff(g, g+1, g%2 == 1)
		reply, err := SendWdiff(ctx, ta.addr, vol, hdr, bytes.NewReader(datas[g]), copt)
		require.NoError(t, err)
		require.Equal(t, ReplyAccept, reply)
		m.record(g + 1)
	}
	// The replies a proxy switches on.
	hdr.Diff = cleanDiff(3, 4, false)
	reply, err = SendWdiff(ctx, ta.addr, vol, hdr, bytes.NewReader(datas[3]), copt)
	require.Equal(t, ReplyTooOldDiff, reply)
	require.ErrorIs(t, err, wire.ErrTooOldDiff)
	hdr.Diff = cleanDiff(n+1, n+2, false)
	reply, _ = SendWdiff(ctx, ta.addr, vol, hdr, bytes.NewReader(datas[3]), copt)
	require.Equal(t, ReplyTooNewDiff, reply)
	bad := hdr
	bad.UUID[3] ^= 0xff
	bad.Diff = cleanDiff(n, n+1, false)
	reply, _ = SendWdiff(ctx, ta.addr, vol, bad, bytes.NewReader(datas[3]), copt)
	require.Equal(t, ReplyDifferentUUID, reply)
	big := hdr
	big.SizeLB = 4096
	big.Diff = cleanDiff(n, n+1, false)
	reply, _ = SendWdiff(ctx, ta.addr, vol, big, bytes.NewReader(datas[3]), copt)
	require.Equal(t, ReplySmallerLvSize, reply)
	// A corrupt stream after accept: not stored.
	broken := bytes.Clone(datas[3])
	broken[len(broken)/2] ^= 1
	hdr.Diff = cleanDiff(n, n+1, false)
	reply, err = SendWdiff(ctx, ta.addr, vol, hdr, bytes.NewReader(broken), copt)
	require.Equal(t, ReplyAccept, reply)
	require.ErrorIs(t, err, wire.ErrBadRequest)
	require.EqualValues(t, n, ta.getU64(ctx, "num-diff", vol))

	require.Equal(t, []string{"name:tcp-vol\tkind:archive\tgid:8\ttimestamp:" + meta.FormatPrettyTime(diffTs(8))}, ta.getStrings(ctx, "latest-snap", vol))
	restorable := ta.getStrings(ctx, "restorable", vol, "all")
	require.Len(t, restorable, n+1)
	require.True(t, strings.HasPrefix(restorable[3], "3 "))
	require.Len(t, ta.getStrings(ctx, "diff", vol), n)
	require.Len(t, ta.getStrings(ctx, "applicable-diff", vol, "4"), 4)

	// Restore over the wire; read the image through NBD and its path.
	for _, g := range []uint64{0, 3, n} {
		gs := u64s(g)
		ta.accept(ctx, "restore", vol, gs)
		waitFor(t, "restored "+gs, func() bool { return ta.getU64(ctx, "num-action", vol, "Restore") == 0 })
		require.Contains(t, ta.getStrings(ctx, "restored", vol), gs)
		export := ta.getString(ctx, "restored-export", vol, gs)
		require.Equal(t, vol+"/"+gs, export)
		require.Equal(t, m.sha[g], nbdSHA(t, ta.nbdAddr, export), "gid %d over NBD", g)
		path := ta.getString(ctx, "restored-path", vol, gs)
		require.Equal(t, m.sha[g], shaOf(readAllFile(t, path)))
	}
	_, _, err = ta.cmd(ctx, "restore", vol, "3")
	require.ErrorIs(t, err, wire.ErrExists)
	_, _, err = ta.cmd(ctx, "restore", vol, "99")
	require.ErrorIs(t, err, wire.ErrBadRequest)
	ta.ok(ctx, "del-restored", vol, "3")
	require.Equal(t, []string{"0", u64s(n)}, ta.getStrings(ctx, "restored", vol))

	// Merge 2..4 by gid: 2->3 is explicit (it may start a merge), 3->4 is
	// mergeable, 4->5 is explicit and ends it.
	ta.accept(ctx, "merge", vol, "2", "gid", "6")
	waitFor(t, "merge", func() bool { return ta.getU64(ctx, "num-action", vol, "Merge") == 0 })
	require.EqualValues(t, n-1, ta.getU64(ctx, "num-diff", vol))
	require.Equal(t, "|2|-->|4|", strings.Fields(ta.getStrings(ctx, "diff", vol, "2", "3")[0])[0])
	_, _, err = ta.cmd(ctx, "merge", vol, "3", "gid", "4")
	require.ErrorIs(t, err, wire.ErrBadRequest)

	// Apply to 5.
	ta.accept(ctx, "apply", vol, "5")
	waitFor(t, "apply", func() bool { return ta.getU64(ctx, "num-action", vol, "Apply") == 0 })
	require.True(t, strings.HasPrefix(ta.getString(ctx, "base", vol), "<|5|>"))
	require.Equal(t, m.sha[5], shaOf(readAllFile(t, mustPath(t, ta, baseImageName(vol)))))
	require.EqualValues(t, 3, ta.getU64(ctx, "num-diff", vol))

	// Snapshot flags, gc, resize, status.
	ta.ok(ctx, "disable-snapshot", vol, "6")
	require.Len(t, ta.getStrings(ctx, "restorable", vol), 2) // 5 (base), 8 (end); 6 and 7 implicit
	ta.ok(ctx, "enable-snapshot", vol, "6")
	require.Len(t, ta.getStrings(ctx, "restorable", vol), 3)
	r, c, err := ta.cmd(ctx, "gc-diff", vol)
	require.NoError(t, err)
	require.Equal(t, wire.ReplyOK, r)
	gone, err := c.RecvU64(ctx)
	require.NoError(t, err)
	require.Zero(t, gone)
	c.Close()
	ta.ok(ctx, "resize", vol, "2m", "zeroclear")
	require.EqualValues(t, 4096, ta.getU64(ctx, "vol-size", vol))
	_, _, err = ta.cmd(ctx, "resize", vol, "1m")
	require.ErrorIs(t, err, wire.ErrBadRequest)
	r, c, err = ta.cmd(ctx, "status", vol)
	require.NoError(t, err)
	lines, err := c.RecvStrings(ctx)
	require.NoError(t, err)
	c.Close()
	require.Equal(t, wire.ReplyOK, r)
	require.Contains(t, lines, "state Archived")
	require.Contains(t, lines, "numDiff 3")

	// Restart the server: the restored images are exported again.
	ta.stop()
	ta = startArchive(t, root, nil)
	require.Equal(t, m.sha[0], nbdSHA(t, ta.nbdAddr, vol+"/0"))
	require.Equal(t, StateArchived, ta.getString(ctx, "state", vol))

	// stop (accept, then Stopped), refusals, start, reset, clear.
	ta.accept(ctx, "stop", vol)
	waitFor(t, "Stopped", func() bool { return ta.getString(ctx, "state", vol) == StateStopped })
	hdr.Diff = cleanDiff(n, n+1, false)
	reply, _ = SendWdiff(ctx, ta.addr, vol, hdr, bytes.NewReader(datas[3]), copt)
	require.Equal(t, ReplyStopped, reply)
	_, _, err = ta.cmd(ctx, "stop", vol, "empty")
	require.ErrorIs(t, err, wire.ErrBadRequest)
	ta.ok(ctx, "start", vol)
	require.Equal(t, StateArchived, ta.getString(ctx, "state", vol))
	_, _, err = ta.cmd(ctx, "clear-vol", vol)
	require.ErrorIs(t, err, wire.ErrWrongState)
	ta.accept(ctx, "stop", vol, "force")
	waitFor(t, "Stopped", func() bool { return ta.getString(ctx, "state", vol) == StateStopped })
	ta.ok(ctx, "reset-vol", vol)
	require.Equal(t, StateSyncReady, ta.getString(ctx, "state", vol))
	require.Empty(t, ta.getStrings(ctx, "restored", vol))
	require.EqualValues(t, 0, ta.getU64(ctx, "num-diff", vol))
	ta.ok(ctx, "clear-vol", vol)
	require.Equal(t, StateClear, ta.getString(ctx, "state", vol))
	require.Empty(t, ta.getStrings(ctx, "vol"))
	imgs, err := filepath.Glob(filepath.Join(root, "images", "*"))
	require.NoError(t, err)
	require.Empty(t, imgs)
}

// TestFullSyncClientErrors: the archive refuses a full sync in the wrong
// state, and a client that dies midway leaves the volume SyncReady.
func TestFullSyncClientErrors(t *testing.T) {
	ta := startArchive(t, t.TempDir(), nil)
	ctx := testCtx(t)
	_, err := DialFullSync(ctx, ta.addr, "nosuch", 16, FullSyncOptions{})
	require.ErrorIs(t, err, wire.ErrWrongState)
	ta.ok(ctx, "init-vol", "v")
	f, err := DialFullSync(ctx, ta.addr, "v", 64, FullSyncOptions{BulkLB: 8})
	require.NoError(t, err)
	require.Equal(t, StateFullSync, ta.getString(ctx, "state", "v"))
	_, err = DialFullSync(ctx, ta.addr, "v", 64, FullSyncOptions{})
	require.ErrorIs(t, err, wire.ErrWrongState)
	require.NoError(t, f.SendUUID(ctx, meta.UUID{7}))
	// The device is shorter than announced: the client aborts the stream.
	err = f.SendImage(ctx, bytes.NewReader(make([]byte, 10*512)))
	require.ErrorIs(t, err, io.ErrUnexpectedEOF)
	f.Close()
	waitFor(t, "SyncReady", func() bool { return ta.getString(ctx, "state", "v") == StateSyncReady })
	require.EqualValues(t, 0, ta.getU64(ctx, "progress", "v"))

	// A complete one works afterwards.
	m := newModel(9, 64)
	require.NoError(t, SendFullSync(ctx, ta.addr, "v", bytes.NewReader(m.img), 64, m.uuid,
		func(context.Context) (meta.Snap, error) { return meta.Snap{GidB: 0, GidE: 3}, nil }, FullSyncOptions{BulkLB: 8}))
	require.Equal(t, StateArchived, ta.getString(ctx, "state", "v"))
	require.True(t, strings.HasPrefix(ta.getString(ctx, "base", "v"), "<|0,3|>"))
}

func u64s(g uint64) string { return strconv.FormatUint(g, 10) }

func mustPath(t *testing.T, ta *tcpArchive, name string) string {
	p, err := ta.s.Engine().Config().Images.Path(name)
	require.NoError(t, err)
	return p
}

// TestStopDuringTransfer: a graceful stop waits for a running wdiff
// transfer; a forced stop cancels it (nothing is stored) and stops.
func TestStopDuringTransfer(t *testing.T) {
	ta := startArchive(t, t.TempDir(), nil)
	ctx := testCtx(t)
	const vol = "sv"
	m := newModel(5, 256)
	ta.ok(ctx, "init-vol", vol)
	require.NoError(t, SendFullSync(ctx, ta.addr, vol, bytes.NewReader(m.img), m.sizeLB, m.uuid,
		func(context.Context) (meta.Snap, error) { return meta.CleanSnap(0), nil }, FullSyncOptions{}))
	data := m.nextWdiff(t, 20)
	hdr := WdiffHeader{Sender: SenderProxy, UUID: m.uuid, SizeLB: m.sizeLB, Diff: cleanDiff(0, 1, false)}
	for _, force := range []bool{false, true} {
		pr, pw := io.Pipe()
		type result struct {
			r   WdiffReply
			err error
		}
		res := make(chan result, 1)
		go func() {
			r, err := SendWdiff(ctx, ta.addr, vol, hdr, pr, ClientOptions{})
			res <- result{r, err}
		}()
		go func() { _, _ = pw.Write(data[:100]) }()
		waitFor(t, "WdiffRecv", func() bool { return ta.getString(ctx, "state", vol) == StateWdiffRecv })
		mode := "graceful"
		if force {
			mode = "force"
		}
		ta.accept(ctx, "stop", vol, mode)
		if force {
			waitFor(t, "Stopped", func() bool { return ta.getString(ctx, "state", vol) == StateStopped })
			_ = pw.CloseWithError(io.ErrClosedPipe)
			out := <-res
			require.Error(t, out.err)
			require.EqualValues(t, 1, ta.getU64(ctx, "num-diff", vol), "the cancelled diff is not stored")
			ta.ok(ctx, "start", vol)
			continue
		}
		// Graceful: the transfer goes on and completes, then the stop.
		time.Sleep(50 * time.Millisecond)
		require.Equal(t, StateWdiffRecv, ta.getString(ctx, "state", vol))
		_, err := pw.Write(data[100:])
		require.NoError(t, err)
		require.NoError(t, pw.Close())
		out := <-res
		require.NoError(t, out.err)
		require.Equal(t, ReplyAccept, out.r)
		waitFor(t, "Stopped", func() bool { return ta.getString(ctx, "state", vol) == StateStopped })
		require.EqualValues(t, 1, ta.getU64(ctx, "num-diff", vol))
		ta.ok(ctx, "start", vol)
		// Make the forced round send the next diff.
		data = m.nextWdiff(t, 20)
		hdr.Diff = cleanDiff(1, 2, false)
	}
}
