package storage

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/archive"
	"github.com/walb-go/walb/imagestore"
	"github.com/walb-go/walb/proxy"
	"github.com/walb-go/walb/server"
	"github.com/walb-go/walb/wire"
)

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

// runServer runs a server until the test ends.
func runServer(t *testing.T, run func(context.Context) error, shutdown func(server.ShutdownMode)) {
	done := make(chan error, 1)
	go func() { done <- run(context.Background()) }()
	t.Cleanup(func() {
		shutdown(server.Force)
		require.NoError(t, <-done)
	})
}

// TestBackupGroup runs a storage, a proxy and an archive over the network
// with the real protocols: a full backup while writes go on, snapshots
// while writes go on, and every snapshot restored on the archive equals
// the device's image at the snapshot.
func TestBackupGroup(t *testing.T) {
	if testing.Short() {
		t.Skip("backup group")
	}
	root := t.TempDir()
	quiet := testLogger()
	ctx := context.Background()
	for _, d := range []string{"a-base", "a-images", "p-base", "s-base"} {
		require.NoError(t, os.Mkdir(filepath.Join(root, d), 0o755))
	}

	images, err := imagestore.OpenDir(ctx, filepath.Join(root, "a-images"), &imagestore.DirOptions{Logger: quiet})
	require.NoError(t, err)
	as, err := archive.NewServer(server.Config{ID: "a0", Addr: "127.0.0.1:0", Logger: quiet},
		archive.Config{BaseDir: filepath.Join(root, "a-base"), Images: images, Discard: archive.DiscardZero, Logger: quiet})
	require.NoError(t, err)
	require.NoError(t, as.Listen())
	runServer(t, as.Run, as.Shutdown)
	a := peer{t, as.Addr().String()}

	ps, err := proxy.NewServer(server.Config{ID: "p0", Addr: "127.0.0.1:0", Logger: quiet}, proxy.Config{
		BaseDir: filepath.Join(root, "p-base"), Archive: proxy.NewArchiveClient(archive.ClientOptions{ClientID: "p0"}),
		Delay: 20 * time.Millisecond, MaxDelay: 200 * time.Millisecond, Logger: quiet,
	})
	require.NoError(t, err)
	require.NoError(t, ps.Listen())
	runServer(t, ps.Run, ps.Shutdown)
	p := peer{t, ps.Addr().String()}

	devs := NewDeviceMap()
	ss, err := NewServer(server.Config{ID: "s0", Addr: "unix:" + filepath.Join(root, "s.sock"), Logger: quiet}, Config{
		BaseDir: filepath.Join(root, "s-base"), Archive: a.addr, Proxies: []string{p.addr}, Devices: devs,
		ProxyClient: WireProxies{Client: &proxy.Client{ID: "s0"}}, ArchiveClient: WireArchive{},
		MaxWlogSendBytes: 64 << 10, SnapshotInterval: 50 * time.Millisecond,
		RetryMin: 20 * time.Millisecond, RetryMax: 200 * time.Millisecond, MonitorInterval: 10 * time.Millisecond,
	})
	require.NoError(t, err)
	require.NoError(t, ss.Server().Listen())
	runServer(t, ss.Run, ss.Server().Shutdown)
	s := Client{Addr: "unix:" + filepath.Join(root, "s.sock"), ID: "test"}

	env := &testEnv{t: t, dir: root, devs: devs}
	dev, _ := env.addDevice("d0", 1<<20, 16<<20, true)

	// The controller's init_storage / full_backup.
	a.ok(archive.CmdNameInitVol, "v")
	p.ok(proxy.CmdArchiveInfo, "add", "v", "a0", a.addr)
	p.ok(proxy.CmdStart, "v")
	require.NoError(t, s.InitVol(ctx, "v", "d0"))
	w := startWriter(dev, 11)
	require.NoError(t, s.SetFullScanBps(ctx, 4<<20))
	require.NoError(t, s.FullBackup(ctx, "v", 32<<10))
	waitFor(t, "storage Target", 20*time.Second, func() bool {
		st, err := s.State(ctx, "v")
		return err == nil && st == StateTarget
	})
	require.Equal(t, archive.StateArchived, a.getString("state", "v"))

	images2 := map[uint64][]byte{}
	for range 3 {
		time.Sleep(50 * time.Millisecond)
		w.pause()
		gid, err := s.Snapshot(ctx, "v")
		require.NoError(t, err)
		images2[gid] = readImage(t, dev)
		w.resume()
	}
	w.finish(t)

	for gid, want := range images2 {
		g := strconv.FormatUint(gid, 10)
		waitFor(t, "gid "+g+" restorable", 30*time.Second, func() bool {
			for _, line := range a.getStrings("restorable", "v") {
				if strings.HasPrefix(line, g+" ") {
					return true
				}
			}
			return false
		})
		a.run(wire.ReplyAccept, archive.CmdNameRestore, "v", g).Close()
		waitFor(t, "restored "+g, 30*time.Second, func() bool { return a.getU64("num-action", "v", "Restore") == 0 })
		got, err := os.ReadFile(a.getString("restored-path", "v", g))
		require.NoError(t, err)
		require.True(t, bytes.Equal(want, got), "restored gid %d equals the device image at the snapshot", gid)
	}
	u, err := s.UUID(ctx, "v")
	require.NoError(t, err)
	require.Equal(t, u.String(), a.getString("uuid", "v"))
}
