package controller

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/archive"
	"github.com/walb-go/walb/imagestore"
	"github.com/walb-go/walb/proxy"
	"github.com/walb-go/walb/server"
	"github.com/walb-go/walb/storage"
	"github.com/walb-go/walb/walb"
)

// realGroup runs real storage, proxy and archive servers in this process,
// on 127.0.0.1, with a userspace WalB device behind the storage.
type realGroup struct {
	layout Layout
	dev    *walb.Device
	wdev   string
	stop   []func()
}

func (g *realGroup) close() {
	for i := len(g.stop) - 1; i >= 0; i-- {
		g.stop[i]()
	}
}

// runServer runs srv.Run until the test ends.
func runServer(t *testing.T, g *realGroup, run func(ctx context.Context) error, shutdown func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- run(ctx) }()
	g.stop = append(g.stop, func() {
		shutdown()
		cancel()
		if err := <-done; err != nil {
			t.Logf("server: %v", err)
		}
	})
}

func newRealGroup(t *testing.T, devBytes int64) *realGroup {
	t.Helper()
	return newRealGroupN(t, devBytes, 1, 1)
}

// newRealGroupN runs storage s0, proxies p0.. and archives a0.. (a0 the
// primary).
func newRealGroupN(t *testing.T, devBytes int64, nProxy, nArchive int) *realGroup {
	t.Helper()
	dir := t.TempDir()
	mk := func(name string) string {
		p := filepath.Join(dir, name)
		require.NoError(t, os.MkdirAll(p, 0o755))
		return p
	}
	g := &realGroup{}
	t.Cleanup(g.close)
	ctx := context.Background()
	scfg := func(id string) server.Config {
		return server.Config{ID: id, Addr: "127.0.0.1:0", Logger: quietLogger,
			RetryMin: 20 * time.Millisecond, RetryMax: 200 * time.Millisecond}
	}

	// The archives.
	for i := 0; i < nArchive; i++ {
		name := fmt.Sprintf("a%d", i)
		store, err := imagestore.OpenDir(ctx, mk(name+"-images"), &imagestore.DirOptions{Logger: quietLogger})
		require.NoError(t, err)
		as, err := archive.NewServer(scfg(name), archive.Config{BaseDir: mk(name), Images: store, Logger: quietLogger})
		require.NoError(t, err)
		require.NoError(t, as.Listen())
		runServer(t, g, as.Run, func() { as.Shutdown(server.Force) })
		g.layout.Archives = append(g.layout.Archives, Server{Name: name, Addr: as.Addr().String(), Kind: KindArchive})
	}
	a0 := g.layout.Archives[0]

	// The proxies.
	var proxyAddrs []string
	for i := 0; i < nProxy; i++ {
		name := fmt.Sprintf("p%d", i)
		ps, err := proxy.NewServer(scfg(name), proxy.Config{BaseDir: mk(name), Logger: quietLogger,
			Archive: proxy.NewArchiveClient(archive.ClientOptions{ClientID: name}),
			Delay:   20 * time.Millisecond, MaxDelay: 200 * time.Millisecond, StopTimeout: 10 * time.Second})
		require.NoError(t, err)
		require.NoError(t, ps.Listen())
		runServer(t, g, ps.Run, func() { ps.Shutdown(server.Force) })
		g.layout.Proxies = append(g.layout.Proxies, Server{Name: name, Addr: ps.Addr().String(), Kind: KindProxy})
		proxyAddrs = append(proxyAddrs, ps.Addr().String())
	}

	// The WalB device and storage s0.
	devDir := mk("dev")
	ldev, ddev := filepath.Join(devDir, "ldev"), filepath.Join(devDir, "ddev")
	data := make([]byte, devBytes)
	_, err := rand.Read(data)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(ddev, data, 0o600))
	require.NoError(t, os.WriteFile(ldev, nil, 0o600))
	require.NoError(t, os.Truncate(ldev, 4<<20))
	_, err = walb.FormatLogDevice(ldev, ddev, walb.FormatOptions{PBS: 512, Name: "vol0"})
	require.NoError(t, err)
	g.dev, err = walb.Open(ctx, ldev, ddev, walb.Options{Logger: quietLogger, CheckpointInterval: 50 * time.Millisecond,
		LogFlushInterval: 5 * time.Millisecond, MaxLogpackKB: 64})
	require.NoError(t, err)
	g.stop = append(g.stop, func() { g.dev.Close() })
	g.wdev = "/dev/walb/vol0"
	devs := storage.NewDeviceMap()
	devs.AddWalb(g.wdev, g.dev)
	ss, err := storage.NewServer(scfg("s0"), storage.Config{
		BaseDir: mk("s0"), Archive: a0.Addr, Proxies: proxyAddrs, Devices: devs,
		ProxyClient:      storage.WireProxies{Client: &proxy.Client{ID: "s0"}},
		ArchiveClient:    storage.WireArchive{Options: archive.FullSyncOptions{ClientOptions: archive.ClientOptions{ClientID: "s0"}}},
		MaxWlogSendBytes: 1 << 20, SnapshotInterval: time.Second,
		RetryMin: 20 * time.Millisecond, RetryMax: 200 * time.Millisecond,
		MonitorInterval: 10 * time.Millisecond, StopTimeout: 10 * time.Second,
		HeartbeatInterval: 20 * time.Millisecond, ProxyCheckAge: 100 * time.Millisecond,
		Logger: quietLogger,
	})
	require.NoError(t, err)
	require.NoError(t, ss.Server().Listen())
	runServer(t, g, ss.Run, func() { ss.Server().Shutdown(server.Force) })
	g.layout.Storages = []Server{{Name: "s0", Addr: ss.Server().Addr().String(), Kind: KindStorage}}
	return g
}

// writer writes random 4 KiB blocks to the device until stopped.
type writer struct {
	stop chan struct{}
	done sync.WaitGroup
	n    int
	err  error
}

func startWriter(dev *walb.Device) *writer {
	w := &writer{stop: make(chan struct{})}
	w.done.Add(1)
	go func() {
		defer w.done.Done()
		buf := make([]byte, 4096)
		var pos [8]byte
		blocks := dev.Size() / 4096
		for {
			select {
			case <-w.stop:
				return
			default:
			}
			rand.Read(buf)
			rand.Read(pos[:])
			off := (int64(pos[0]) | int64(pos[1])<<8 | int64(pos[2])<<16) % blocks * 4096
			if _, err := dev.WriteAt(buf, off); err != nil {
				w.err = err
				return
			}
			w.n++
			time.Sleep(time.Millisecond)
		}
	}()
	return w
}

func (w *writer) finish(t *testing.T) {
	close(w.stop)
	w.done.Wait()
	require.NoError(t, w.err)
}

func sha256Of(t *testing.T, r io.Reader) string {
	h := sha256.New()
	_, err := io.Copy(h, r)
	require.NoError(t, err)
	return hex.EncodeToString(h.Sum(nil))
}

func deviceSHA(t *testing.T, dev *walb.Device) string {
	require.NoError(t, dev.Flush())
	return sha256Of(t, io.NewSectionReader(dev, 0, dev.Size()))
}

func fileSHA(t *testing.T, path string, size int64) string {
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	return sha256Of(t, io.LimitReader(f, size))
}

// TestIntegration drives real servers (system.md §10 n1, n2, n5): init,
// a full backup while the device is written, snapshots, restores compared
// with the device by sha256, and an apply.
func TestIntegration(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real servers")
	}
	g := newRealGroup(t, 8<<20)
	ctl, err := New(g.layout, &Options{ClientID: "it", Logger: quietLogger, PollInterval: 20 * time.Millisecond})
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	s0, a0 := g.layout.Storages[0], g.layout.Archives[0]
	require.NoError(t, ctl.CheckKinds(ctx))

	require.NoError(t, ctl.InitStorage(ctx, s0, "vol0", g.wdev))
	require.NoError(t, ctl.VerifyState(ctx, s0, "vol0", StateStandby))

	// n1: a full backup while the device is written.
	w := startWriter(g.dev)
	gid, err := ctl.FullBackup(ctx, s0, "vol0", &BackupOptions{BulkSize: 64 << 10})
	require.NoError(t, err)
	w.finish(t)
	t.Logf("full backup: gid %d, %d writes during it", gid, w.n)
	require.NoError(t, ctl.VerifyState(ctx, s0, "vol0", StateTarget))
	// Active, not necessarily Archived: the logs written during the backup
	// may be arriving (WdiffRecv) at this very moment.
	st, err := ctl.GetState(ctx, a0, "vol0")
	require.NoError(t, err)
	require.True(t, IsArchiveActive(st), "a0 state %s", st)

	// n2: write, snapshot, restore; the image matches the device.
	var gids []uint64
	var shas []string
	for i := 0; i < 3; i++ {
		w := startWriter(g.dev)
		time.Sleep(50 * time.Millisecond)
		w.finish(t)
		gid, err := ctl.Snapshot(ctx, s0, "vol0", []Server{a0})
		require.NoError(t, err)
		gids = append(gids, gid)
		shas = append(shas, deviceSHA(t, g.dev))
	}
	size, err := ctl.GetVolSizeLB(ctx, a0, "vol0")
	require.NoError(t, err)
	require.EqualValues(t, g.dev.Size()/512, size)
	for i, gid := range gids {
		img, err := ctl.Restore(ctx, a0, "vol0", gid)
		require.NoError(t, err, "restore %d", gid)
		require.Equal(t, shas[i], fileSHA(t, img.Path, g.dev.Size()), "gid %d", gid)
		require.NoError(t, ctl.DelRestored(ctx, a0, "vol0", gid))
	}

	// n5: apply up to the second snapshot; restoring the third still
	// gives the same image, and the oldest restorable is the second.
	require.NoError(t, ctl.Apply(ctx, a0, "vol0", gids[1]))
	rs, err := ctl.GetRestorableGids(ctx, a0, "vol0", false)
	require.NoError(t, err)
	require.Equal(t, gids[1], rs[0])
	img, err := ctl.Restore(ctx, a0, "vol0", gids[2])
	require.NoError(t, err)
	require.Equal(t, shas[2], fileSHA(t, img.Path, g.dev.Size()))

	// Queries on the real servers parse.
	ds, err := ctl.GetDiffList(ctx, a0, "vol0", 0, LatestGid)
	require.NoError(t, err)
	require.NotEmpty(t, ds)
	base, err := ctl.GetBase(ctx, a0, "vol0")
	require.NoError(t, err)
	require.Equal(t, gids[1], base.SnapB.GidB)
	ls, err := ctl.GetLatestSnap(ctx, s0, "vol0")
	require.NoError(t, err)
	require.Len(t, ls, 1)
	require.GreaterOrEqual(t, ls[0].Gid, gids[2])
	lu, err := ctl.GetLogUsage(ctx, s0, "vol0")
	require.NoError(t, err)
	require.Len(t, lu, 1)
	ov, err := ctl.IsOverflow(ctx, s0, "vol0")
	require.NoError(t, err)
	require.False(t, ov)
	se, err := ctl.IsWdiffSendError(ctx, g.layout.Proxies[0], "vol0", a0)
	require.NoError(t, err)
	require.False(t, se)
	u, err := ctl.GetUUID(ctx, a0, "vol0")
	require.NoError(t, err)
	require.Equal(t, g.dev.UUID().String(), u.String())

	// n4a: stop and start every server's volume, writing meanwhile; the
	// next snapshot is still correct.
	w = startWriter(g.dev)
	for _, s := range []Server{s0, g.layout.Proxies[0], a0} {
		require.NoError(t, ctl.Stop(ctx, s, "vol0", StopGraceful), s.Name)
		require.NoError(t, ctl.Start(ctx, s, "vol0"), s.Name)
	}
	w.finish(t)
	gid, err = ctl.Snapshot(ctx, s0, "vol0", []Server{a0})
	require.NoError(t, err)
	sha := deviceSHA(t, g.dev)
	img, err = ctl.Restore(ctx, a0, "vol0", gid)
	require.NoError(t, err)
	require.Equal(t, sha, fileSHA(t, img.Path, g.dev.Size()))

	// Back to Standby (n12's first half) and a second full backup.
	require.NoError(t, ctl.GoStandby(ctx, s0, "vol0"))
	sync, err := ctl.IsSynchronizing(ctx, a0, "vol0")
	require.NoError(t, err)
	require.False(t, sync)
	require.NoError(t, ctl.ClearVol(ctx, a0, "vol0"))
	gid, err = ctl.FullBackup(ctx, s0, "vol0", nil)
	require.NoError(t, err)
	sha = deviceSHA(t, g.dev)
	img, err = ctl.Restore(ctx, a0, "vol0", gid)
	require.NoError(t, err)
	require.Equal(t, sha, fileSHA(t, img.Path, g.dev.Size()))
}

// TestIntegrationReplication drives replication and synchronizing mode on
// real servers (system.md §10 n7, n8, n10, n14, r2): a full then a diff
// replication checked by restores and block hashes, synchronize and
// stop_synchronizing, copy_archive_info, and a replica of another lineage
// that needs a resync.
func TestIntegrationReplication(t *testing.T) {
	if testing.Short() {
		t.Skip("starts real servers")
	}
	g := newRealGroupN(t, 4<<20, 2, 2)
	ctl, err := New(g.layout, &Options{ClientID: "it", Logger: quietLogger, PollInterval: 20 * time.Millisecond})
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const vol = "vol0"
	s0, p0, p1 := g.layout.Storages[0], g.layout.Proxies[0], g.layout.Proxies[1]
	a0, a1 := g.layout.Archives[0], g.layout.Archives[1]
	size := g.dev.Size()
	restoreSHA := func(ax Server, gid uint64) string {
		t.Helper()
		img, err := ctl.Restore(ctx, ax, vol, gid)
		require.NoError(t, err, "%s restore %d", ax.Name, gid)
		sha := fileSHA(t, img.Path, size)
		require.NoError(t, ctl.DelRestored(ctx, ax, vol, gid))
		return sha
	}
	write := func() {
		w := startWriter(g.dev)
		time.Sleep(30 * time.Millisecond)
		w.finish(t)
	}

	require.NoError(t, ctl.InitStorage(ctx, s0, vol, g.wdev))
	_, err = ctl.FullBackup(ctx, s0, vol, nil)
	require.NoError(t, err)
	write()
	gid1, err := ctl.Snapshot(ctx, s0, vol, []Server{a0})
	require.NoError(t, err)
	sha1 := deviceSHA(t, g.dev)

	// n7: a full replication to a Clear archive.
	gid, err := ctl.ReplicateOnce(ctx, a0, vol, a1, nil)
	require.NoError(t, err)
	require.Equal(t, gid1, gid)
	require.Equal(t, sha1, restoreSHA(a1, gid1))
	h0, err := ctl.BlockHash(ctx, a0, vol, gid1, 0, 0)
	require.NoError(t, err)
	h1, err := ctl.BlockHash(ctx, a1, vol, gid1, 0, 0)
	require.NoError(t, err)
	require.Len(t, h0, 1)
	require.Equal(t, h0, h1)
	u0, err := ctl.GetArchiveUUID(ctx, a0, vol)
	require.NoError(t, err)
	u1, err := ctl.GetArchiveUUID(ctx, a1, vol)
	require.NoError(t, err)
	require.Equal(t, u0, u1)
	p, err := ctl.GetProgress(ctx, a1, vol)
	require.NoError(t, err)
	require.Equal(t, Progress{State: StateArchived, SizeLB: uint64(size / 512)}, p)

	// n8: a diff replication after new writes, dontMerge and options.
	write()
	gid2, err := ctl.Snapshot(ctx, s0, vol, []Server{a0})
	require.NoError(t, err)
	sha2 := deviceSHA(t, g.dev)
	sync := DefaultSyncOpt()
	gid, err = ctl.ReplicateOnce(ctx, a0, vol, a1, &ReplicateOptions{DontMerge: true, Sync: &sync})
	require.NoError(t, err)
	require.Equal(t, gid2, gid)
	require.Equal(t, sha2, restoreSHA(a1, gid2))

	// n10: synchronizing; a snapshot reaches both with the same image.
	write()
	gid, err = ctl.Synchronize(ctx, a0, vol, a1, nil)
	require.NoError(t, err)
	require.GreaterOrEqual(t, gid, gid2)
	syncing, err := ctl.IsSynchronizing(ctx, a1, vol)
	require.NoError(t, err)
	require.True(t, syncing)
	for _, px := range g.layout.Proxies {
		st, err := ctl.GetState(ctx, px, vol)
		require.NoError(t, err)
		require.Contains(t, proxyActive, st, px.Name)
	}
	write()
	gid3, err := ctl.Snapshot(ctx, s0, vol, []Server{a0, a1})
	require.NoError(t, err)
	sha3 := deviceSHA(t, g.dev)
	require.Equal(t, sha3, restoreSHA(a0, gid3))
	require.Equal(t, sha3, restoreSHA(a1, gid3))

	// r2's first step: p1 loses its archive infos and gets p0's back.
	require.NoError(t, ctl.DelArchiveFromProxy(ctx, p1, vol, a0))
	require.NoError(t, ctl.DelArchiveFromProxy(ctx, p1, vol, a1))
	require.NoError(t, ctl.VerifyState(ctx, p1, vol, StateClear))
	require.NoError(t, ctl.CopyArchiveInfo(ctx, p0, vol, p1))
	st, err := ctl.GetState(ctx, p1, vol)
	require.NoError(t, err)
	require.Contains(t, proxyActive, st)
	for _, ax := range []Server{a0, a1} {
		syncing, err := ctl.IsSynchronizing(ctx, ax, vol)
		require.NoError(t, err)
		require.True(t, syncing, ax.Name)
	}

	// stop_synchronizing: a1 no longer advances.
	require.NoError(t, ctl.StopSynchronizing(ctx, a1, vol))
	syncing, err = ctl.IsSynchronizing(ctx, a1, vol)
	require.NoError(t, err)
	require.False(t, syncing)
	write()
	gid4, err := ctl.Snapshot(ctx, s0, vol, []Server{a0})
	require.NoError(t, err)
	require.NoError(t, ctl.VerifyNotRestorable(ctx, a1, vol, gid4, 300*time.Millisecond))

	// n14: a0 rebuilt by a full backup is of another lineage; a plain
	// replication is refused, one with resync brings a1 in line.
	require.NoError(t, ctl.Stop(ctx, s0, vol, StopGraceful))
	require.NoError(t, ctl.Stop(ctx, a0, vol, StopGraceful))
	require.NoError(t, ctl.Reset(ctx, a0, vol))
	gid5, err := ctl.FullBackup(ctx, s0, vol, nil)
	require.NoError(t, err)
	sha5 := deviceSHA(t, g.dev)
	_, err = ctl.ReplicateOnce(ctx, a0, vol, a1, nil)
	require.ErrorIs(t, err, ErrUUIDMismatch)
	gid, err = ctl.ReplicateOnce(ctx, a0, vol, a1, &ReplicateOptions{Resync: true})
	require.NoError(t, err)
	require.Equal(t, gid5, gid)
	require.Equal(t, sha5, restoreSHA(a1, gid5))
}
