package controller

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
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

	// Archive a0.
	store, err := imagestore.OpenDir(ctx, mk("a0-images"), &imagestore.DirOptions{Logger: quietLogger})
	require.NoError(t, err)
	as, err := archive.NewServer(scfg("a0"), archive.Config{BaseDir: mk("a0"), Images: store, Logger: quietLogger})
	require.NoError(t, err)
	require.NoError(t, as.Listen())
	runServer(t, g, as.Run, func() { as.Shutdown(server.Force) })
	a0 := Server{Name: "a0", Addr: as.Addr().String(), Kind: KindArchive}

	// Proxy p0.
	ps, err := proxy.NewServer(scfg("p0"), proxy.Config{BaseDir: mk("p0"), Logger: quietLogger,
		Archive: proxy.NewArchiveClient(archive.ClientOptions{ClientID: "p0"}),
		Delay:   20 * time.Millisecond, MaxDelay: 200 * time.Millisecond, StopTimeout: 10 * time.Second})
	require.NoError(t, err)
	require.NoError(t, ps.Listen())
	runServer(t, g, ps.Run, func() { ps.Shutdown(server.Force) })
	p0 := Server{Name: "p0", Addr: ps.Addr().String(), Kind: KindProxy}

	// The WalB device and storage s0.
	devDir := mk("dev")
	ldev, ddev := filepath.Join(devDir, "ldev"), filepath.Join(devDir, "ddev")
	data := make([]byte, devBytes)
	_, err = rand.Read(data)
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
		BaseDir: mk("s0"), Archive: a0.Addr, Proxies: []string{p0.Addr}, Devices: devs,
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
	s0 := Server{Name: "s0", Addr: ss.Server().Addr().String(), Kind: KindStorage}

	g.layout = Layout{Storages: []Server{s0}, Proxies: []Server{p0}, Archives: []Server{a0}}
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
	require.NoError(t, ctl.VerifyState(ctx, a0, "vol0", StateArchived))

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
