package storage

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/archive"
	"github.com/walb-go/walb/imagestore"
	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/proxy"
	"github.com/walb-go/walb/server"
	"github.com/walb-go/walb/walb"
	"github.com/walb-go/walb/wire"
)

// The tests of this file run the real servers in process: an archive and
// proxies on 127.0.0.1, storages on unix sockets, with the real protocols
// and userspace WalB devices, and check every snapshot by restoring it on
// the archive.

// peer runs commands on a server, as walbc does.
type peer struct {
	t    *testing.T
	addr string
}

func (p peer) run(want wire.Reply, cmd string, args ...string) *wire.Conn {
	p.t.Helper()
	ctx := context.Background()
	c, err := wire.Dial(ctx, p.addr, "test", cmd, nil, args...)
	require.NoError(p.t, err)
	r, err := c.RecvReply(ctx)
	require.NoError(p.t, err, "%s %q", cmd, args)
	require.Equal(p.t, want, r, "%s %q", cmd, args)
	return c
}

func (p peer) ok(cmd string, args ...string) { p.run(wire.ReplyOK, cmd, args...).Close() }

func (p peer) getStrings(args ...string) []string {
	p.t.Helper()
	c := p.run(wire.ReplyOK, server.CmdGet, args...)
	defer c.Close()
	v, err := c.RecvStrings(context.Background())
	require.NoError(p.t, err)
	return v
}

func (p peer) getString(args ...string) string {
	p.t.Helper()
	c := p.run(wire.ReplyOK, server.CmdGet, args...)
	defer c.Close()
	v, err := c.RecvString(context.Background())
	require.NoError(p.t, err)
	return v
}

func (p peer) getU64(args ...string) uint64 {
	p.t.Helper()
	c := p.run(wire.ReplyOK, server.CmdGet, args...)
	defer c.Close()
	v, err := c.RecvU64(context.Background())
	require.NoError(p.t, err)
	return v
}

// serverProc is a server running in a goroutine; it can be stopped and, for
// a proxy, started again on the same address and directory.
type serverProc struct {
	shutdown func(server.ShutdownMode)
	done     chan error
}

func runProc(t *testing.T, run func(context.Context) error, shutdown func(server.ShutdownMode)) *serverProc {
	p := &serverProc{shutdown: shutdown, done: make(chan error, 1)}
	go func() { p.done <- run(context.Background()) }()
	return p
}

func (p *serverProc) stop(t *testing.T) {
	if p.done == nil {
		return
	}
	p.shutdown(server.Force)
	require.NoError(t, <-p.done)
	p.done = nil
}

// recordingProxies is the storage's real proxy client, recording which
// proxy acknowledged each transfer.
type recordingProxies struct {
	WireProxies
	mu    sync.Mutex
	acked []string
}

func (r *recordingProxies) OpenWlog(ctx context.Context, addr string, h WlogHeader) (WlogSession, error) {
	s, err := r.WireProxies.OpenWlog(ctx, addr, h)
	if err != nil {
		return nil, err
	}
	return &recordingSession{WlogSession: s, r: r, addr: addr}, nil
}

// ackedSince returns the proxies of the transfers acknowledged after the
// first n.
func (r *recordingProxies) ackedSince(n int) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.acked[min(n, len(r.acked)):])
}

type recordingSession struct {
	WlogSession
	r    *recordingProxies
	addr string
}

func (s *recordingSession) Commit(ctx context.Context, d meta.Diff) error {
	err := s.WlogSession.Commit(ctx, d)
	if err == nil {
		s.r.mu.Lock()
		s.r.acked = append(s.r.acked, s.addr)
		s.r.mu.Unlock()
	}
	return err
}

// group is an archive a0, proxies p0.. and storages s0.. in process.
type group struct {
	t        *testing.T
	root     string
	quiet    bool
	a        peer
	proxies  []peer
	pprocs   []*serverProc
	storages []*storageNode
	devs     *DeviceMap
	env      *testEnv // makes the devices
}

type storageNode struct {
	c   Client
	st  *Storage
	rec *recordingProxies
	env *testEnv // the Storage in a testEnv, for its helpers
}

type groupOpts struct {
	proxies, storages int
	mutate            func(*Config)
}

func newGroup(t *testing.T, o groupOpts) *group {
	g := &group{t: t, root: t.TempDir(), devs: NewDeviceMap()}
	g.env = &testEnv{t: t, dir: g.root, devs: g.devs}
	quiet := testLogger()
	ctx := context.Background()
	for _, d := range []string{"a-base", "a-images"} {
		require.NoError(t, os.Mkdir(filepath.Join(g.root, d), 0o755))
	}
	images, err := imagestore.OpenDir(ctx, filepath.Join(g.root, "a-images"), &imagestore.DirOptions{Logger: quiet})
	require.NoError(t, err)
	as, err := archive.NewServer(server.Config{ID: "a0", Addr: "127.0.0.1:0", Logger: quiet},
		archive.Config{BaseDir: filepath.Join(g.root, "a-base"), Images: images, Discard: archive.DiscardZero, Logger: quiet})
	require.NoError(t, err)
	require.NoError(t, as.Listen())
	ap := runProc(t, as.Run, as.Shutdown)
	t.Cleanup(func() { ap.stop(t) })
	g.a = peer{t, as.Addr().String()}

	g.proxies = make([]peer, o.proxies)
	g.pprocs = make([]*serverProc, o.proxies)
	for i := range o.proxies {
		require.NoError(t, os.Mkdir(g.proxyBase(i), 0o755))
		g.startProxy(i, "127.0.0.1:0")
	}
	t.Cleanup(func() {
		for _, p := range g.pprocs {
			p.stop(t)
		}
	})
	proxies := make([]string, o.proxies)
	for i, p := range g.proxies {
		proxies[i] = p.addr
	}

	for i := range o.storages {
		id := fmt.Sprintf("s%d", i)
		base := filepath.Join(g.root, id+"-base")
		require.NoError(t, os.Mkdir(base, 0o755))
		sock := "unix:" + filepath.Join(g.root, id+".sock")
		rec := &recordingProxies{WireProxies: WireProxies{Client: &proxy.Client{ID: id}}}
		cfg := Config{
			BaseDir: base, Archive: g.a.addr, Proxies: proxies, Devices: g.devs,
			ProxyClient: rec, ArchiveClient: WireArchive{Options: archive.FullSyncOptions{ClientOptions: archive.ClientOptions{ClientID: id}}},
			MaxWlogSendBytes: 64 << 10, SnapshotInterval: 50 * time.Millisecond,
			RetryMin: 20 * time.Millisecond, RetryMax: 200 * time.Millisecond, MonitorInterval: 10 * time.Millisecond,
			HeartbeatInterval: 20 * time.Millisecond, ProxyCheckAge: 200 * time.Millisecond, HeartbeatTimeout: time.Second,
		}
		if o.mutate != nil {
			o.mutate(&cfg)
		}
		ss, err := NewServer(server.Config{ID: id, Addr: sock, Logger: quiet}, cfg)
		require.NoError(t, err)
		require.NoError(t, ss.Server().Listen())
		sp := runProc(t, ss.Run, ss.Server().Shutdown)
		t.Cleanup(func() { sp.stop(t) })
		n := &storageNode{c: Client{Addr: sock, ID: "test"}, st: ss.Storage(), rec: rec}
		n.env = &testEnv{t: t, dir: g.root, devs: g.devs, st: ss.Storage()}
		g.storages = append(g.storages, n)
	}
	return g
}

func (g *group) proxyBase(i int) string { return filepath.Join(g.root, fmt.Sprintf("p%d-base", i)) }

// startProxy starts proxy i on addr (its old address to restart it).
func (g *group) startProxy(i int, addr string) {
	quiet := testLogger()
	id := fmt.Sprintf("p%d", i)
	ps, err := proxy.NewServer(server.Config{ID: id, Addr: addr, Logger: quiet}, proxy.Config{
		BaseDir: g.proxyBase(i), Archive: proxy.NewArchiveClient(archive.ClientOptions{ClientID: id}),
		Delay: 20 * time.Millisecond, MaxDelay: 200 * time.Millisecond, Logger: quiet,
	})
	require.NoError(g.t, err)
	require.NoError(g.t, ps.Listen())
	g.proxies[i] = peer{g.t, ps.Addr().String()}
	g.pprocs[i] = runProc(g.t, ps.Run, ps.Shutdown)
}

// initVol creates vol on the archive and makes every proxy forward it there
// (the controller's start_synchronizing).
func (g *group) initVol(vol string) {
	g.a.ok(archive.CmdNameInitVol, vol)
	g.startSync(vol)
}

func (g *group) startSync(vol string) {
	for _, p := range g.proxies {
		p.ok(proxy.CmdArchiveInfo, "add", vol, "a0", g.a.addr)
		p.ok(proxy.CmdStart, vol)
	}
}

// stopSync makes every proxy forget the archive for vol, dropping the
// diffs queued for it (the controller's stop_synchronizing, part of
// preparing a backup).
func (g *group) stopSync(vol string) {
	for _, p := range g.proxies {
		p.run(wire.ReplyAccept, proxy.CmdStop, vol, "force").Close()
		waitFor(g.t, "proxy volume stopped", 10*time.Second, func() bool { return p.getString("state", vol) == proxy.StateStopped })
		p.ok(proxy.CmdArchiveInfo, "delete", vol, "a0")
	}
}

// waitState waits until vol on storage n is in state want.
func (n *storageNode) waitState(t *testing.T, vol, want string) {
	t.Helper()
	waitFor(t, "storage state "+want, 30*time.Second, func() bool {
		st, err := n.c.State(context.Background(), vol)
		return err == nil && st == want
	})
}

// checkRestore waits until gid is restorable on the archive, restores it
// and compares it with want.
func (g *group) checkRestore(vol string, gid uint64, want []byte) {
	t := g.t
	t.Helper()
	gs := strconv.FormatUint(gid, 10)
	waitFor(t, "gid "+gs+" restorable", 30*time.Second, func() bool {
		for _, line := range g.a.getStrings("restorable", vol) {
			if strings.HasPrefix(line, gs+" ") {
				return true
			}
		}
		return false
	})
	g.a.run(wire.ReplyAccept, archive.CmdNameRestore, vol, gs).Close()
	waitFor(t, "restored "+gs, 30*time.Second, func() bool { return g.a.getU64("num-action", vol, "Restore") == 0 })
	got, err := os.ReadFile(g.a.getString("restored-path", vol, gs))
	require.NoError(t, err)
	require.True(t, bytes.Equal(want, got), "restored gid %d equals the device image at the snapshot", gid)
	g.a.ok(archive.CmdNameDelRestored, vol, gs)
}

// TestBackupGroup runs a storage, a proxy and an archive over the network
// with the real protocols: a full backup while writes go on, snapshots
// while writes go on, and every snapshot restored on the archive equals
// the device's image at the snapshot.
func TestBackupGroup(t *testing.T) {
	if testing.Short() {
		t.Skip("backup group")
	}
	g := newGroup(t, groupOpts{proxies: 1, storages: 1})
	s := g.storages[0]
	ctx := context.Background()
	dev, _ := g.env.addDevice("d0", 1<<20, 16<<20, true)

	// The controller's init_storage / full_backup.
	g.initVol("v")
	require.NoError(t, s.c.InitVol(ctx, "v", "d0"))
	w := startWriter(dev, 11)
	require.NoError(t, s.c.SetFullScanBps(ctx, 4<<20))
	require.NoError(t, s.c.FullBackup(ctx, "v", 32<<10))
	s.waitState(t, "v", StateTarget)
	require.Contains(t, archive.ActiveStates, g.a.getString("state", "v"), "the archive holds the volume")

	images := snapshotImages(t, s.st, "v", dev, w, 3)
	w.finish(t)
	for gid, want := range images {
		g.checkRestore("v", gid, want)
	}
	u, err := s.c.UUID(ctx, "v")
	require.NoError(t, err)
	require.Equal(t, u.String(), g.a.getString("uuid", "v"))
}

// TestProxyFailoverReal is spec e1 with real proxies: with p0 down, more
// than the log's size is written and the wlogs go to p1 without overflow;
// once p0 is back, the heartbeat finds it and wlogs go to p0 again. The
// snapshots taken in each phase restore correctly on the archive.
func TestProxyFailoverReal(t *testing.T) {
	if testing.Short() {
		t.Skip("backup group")
	}
	g := newGroup(t, groupOpts{proxies: 2, storages: 1})
	s := g.storages[0]
	ctx := context.Background()
	dev, _ := g.env.addDevice("d0", 1<<20, 512<<10, true)
	g.initVol("v")
	require.NoError(t, s.c.InitVol(ctx, "v", "d0"))
	require.NoError(t, s.c.FullBackup(ctx, "v", 0))
	s.waitState(t, "v", StateTarget)
	p0, p1 := g.proxies[0].addr, g.proxies[1].addr

	images := map[uint64][]byte{}
	snap := func() uint64 {
		gid, err := s.c.Snapshot(ctx, "v")
		require.NoError(t, err)
		images[gid] = readImage(t, dev)
		s.env.waitSent("v", gid, dev)
		return gid
	}
	buf := make([]byte, 32<<10) // a logpack within the 64 KiB max send size
	writeMore := func(bytes uint64, seed byte) {
		ring := dev.LogCapacity()
		for i := uint64(0); i*uint64(len(buf)) < bytes; i++ {
			for j := range buf {
				buf[j] = byte(j) ^ seed ^ byte(i)
			}
			_, err := dev.WriteAt(buf, int64(i%32)*int64(len(buf)))
			require.NoError(t, err)
			// Keep the log from overflowing: the storage must send as
			// fast as it is written.
			waitFor(t, "log drained", 20*time.Second, func() bool {
				l := dev.Lsids()
				return l.Latest-l.Oldest < ring/2
			})
		}
	}

	writeMore(256<<10, 1)
	snap()
	require.Equal(t, []string{p0}, slices.Compact(s.rec.ackedSince(0)), "p0 has the priority")

	g.pprocs[0].stop(t)
	n := len(s.rec.ackedSince(0))
	writeMore(2*dev.LogCapacity()*512, 2)
	snap()
	require.Equal(t, []string{p1}, slices.Compact(s.rec.ackedSince(n)), "p0 down: the wlogs go to p1")
	over, err := s.c.IsOverflow(ctx, "v")
	require.NoError(t, err)
	require.False(t, over)
	status := func() string {
		st, err := s.c.Status(ctx, "")
		require.NoError(t, err)
		return strings.Join(st, "\n")
	}
	waitFor(t, "the heartbeat finds p0 down", 10*time.Second, func() bool {
		return strings.Contains(status(), "addr:"+p0+"\tavailable:false")
	})

	g.startProxy(0, p0)
	waitFor(t, "the heartbeat finds p0 back", 10*time.Second, func() bool {
		return strings.Contains(status(), "addr:"+p0+"\tavailable:true")
	})
	n = len(s.rec.ackedSince(0))
	writeMore(256<<10, 3)
	snap()
	require.Equal(t, []string{p0}, slices.Compact(s.rec.ackedSince(n)), "p0 is back: the wlogs go to it again")

	for _, gid := range sortedKeys(images) {
		g.checkRestore("v", gid, images[gid])
	}
}

// TestSwitchTargetsReal is spec n12 with real servers: two storages whose
// devices hold the same data (every write goes to both) swap the Target
// and Standby roles twice while writes go on: the Target is force stopped,
// reset and started as standby; the standby is stopped and made Target by
// hash-bkp. Every snapshot, from either storage, restores bit-exact.
func TestSwitchTargetsReal(t *testing.T) {
	if testing.Short() {
		t.Skip("backup group")
	}
	g := newGroup(t, groupOpts{proxies: 1, storages: 2})
	ctx := context.Background()
	d0, _ := g.env.addDevice("d0", 1<<20, 8<<20, false)
	d1, _ := g.env.addDevice("d1", 1<<20, 8<<20, false)
	s0, s1 := g.storages[0], g.storages[1]
	dev := map[*storageNode]*walb.Device{s0: d0, s1: d1}
	other := map[*storageNode]*storageNode{s0: s1, s1: s0}
	g.initVol("v")
	require.NoError(t, s0.c.InitVol(ctx, "v", "d0"))
	require.NoError(t, s1.c.InitVol(ctx, "v", "d1"))
	require.NoError(t, s1.c.Start(ctx, "v", Standby))
	w := startMirrorWriter(21, d0, d1)
	require.NoError(t, s0.c.FullBackup(ctx, "v", 0))
	s0.waitState(t, "v", StateTarget)

	// snapshots takes two snapshots on the target n and waits until they
	// restore correctly (the scenario's snapshot_sync): a snapshot not yet
	// on the archive when the target is switched is lost with the old
	// target's log.
	var lastGid uint64
	snapshots := func(n *storageNode) {
		for range 2 {
			time.Sleep(30 * time.Millisecond)
			w.pause()
			gid, err := n.c.Snapshot(ctx, "v")
			img := readImage(t, dev[n])
			mirror := readImage(t, dev[other[n]])
			w.resume()
			require.NoError(t, err)
			require.True(t, bytes.Equal(img, mirror), "the devices hold the same data")
			require.Greater(t, gid, lastGid, "gids keep growing across storages")
			lastGid = gid
			g.checkRestore("v", gid, img)
		}
	}
	snapshots(s0)

	target, standby := s0, s1
	for range 2 {
		// go_standby on the target.
		require.NoError(t, target.c.Stop(ctx, "v", true))
		target.waitState(t, "v", StateStopped)
		require.NoError(t, target.c.ResetVol(ctx, "v", 0))
		require.NoError(t, target.c.Start(ctx, "v", Standby))
		// hash_backup from the standby: prepare (stop it, restart the
		// archive's synchronizing), then hash-bkp.
		require.NoError(t, standby.c.Stop(ctx, "v", false))
		standby.waitState(t, "v", StateSyncReady)
		g.stopSync("v")
		g.startSync("v")
		require.NoError(t, standby.c.HashBackup(ctx, "v", 64<<10))
		standby.waitState(t, "v", StateTarget)
		target, standby = standby, target
		snapshots(target)
	}
	w.finish(t)
	require.Equal(t, StateStandby, standby.st.State("v"))
	require.Equal(t, StateTarget, target.st.State("v"))
}
