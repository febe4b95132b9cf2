package group_test

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/archive"
	"github.com/walb-go/walb/controller"
	"github.com/walb-go/walb/group"
	"github.com/walb-go/walb/nbd"
	"github.com/walb-go/walb/proxy"
	"github.com/walb-go/walb/server"
	"github.com/walb-go/walb/storage"
	"github.com/walb-go/walb/wdiff"
)

// testLogger returns nil (no logs) unless WALB_TEST_LOG is set, to debug
// a failing test with every server's logs.
func testLogger() *slog.Logger {
	if os.Getenv("WALB_TEST_LOG") == "" {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

const testTimeout = 2 * time.Minute

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

// writeRandom writes n random blocks of 4 KiB to 64 KiB at random
// 4 KiB-aligned offsets of w, a device of size bytes.
func writeRandom(t *testing.T, w io.WriterAt, size int64, n int, rng *rand.Rand) {
	t.Helper()
	buf := make([]byte, 64<<10)
	for range n {
		l := (1 + rng.IntN(16)) * 4096
		off := rng.Int64N(size/4096-16) * 4096
		for i := range l {
			buf[i] = byte(rng.Uint32())
		}
		_, err := w.WriteAt(buf[:l], off)
		require.NoError(t, err)
	}
}

func sha(t *testing.T, r io.ReaderAt, size int64) string {
	t.Helper()
	h := sha256.New()
	_, err := io.Copy(h, io.NewSectionReader(r, 0, size))
	require.NoError(t, err)
	return hex.EncodeToString(h.Sum(nil))
}

func fileSHA(t *testing.T, path string, size int64) string {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	return sha(t, f, size)
}

// openFDs lists the process's open file descriptors with their targets.
func openFDs(t *testing.T) map[string]string {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc/self/fd")
	}
	fds := make(map[string]string)
	for _, e := range ents {
		target, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		if err == nil { // the ReadDir's own descriptor is gone already
			fds[e.Name()] = target
		}
	}
	return fds
}

// checkNoLeaks fails if descriptors opened after fds0 are still open, or
// if goroutines started after n0 are still running. Goroutines may need a
// moment to return after the servers stopped, so it waits for them (the
// count, not the duration, is what is checked).
func checkNoLeaks(t *testing.T, fds0 map[string]string, n0 int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > n0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > n0 {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		t.Fatalf("%d goroutines before, %d after Close:\n%s", n0, n, buf)
	}
	var leaked []string
	for fd, target := range openFDs(t) {
		if fds0[fd] != target {
			leaked = append(leaked, fd+" -> "+target)
		}
	}
	sort.Strings(leaked)
	require.Empty(t, leaked, "descriptors left open by the group")
}

// TestGroupLifecycle starts the default group, writes to a volume through
// the device and through NBD, backs it up, takes snapshots, restores and
// applies them, and closes the group with nothing left behind: no
// goroutine, no file descriptor, no temporary directory.
func TestGroupLifecycle(t *testing.T) {
	if testing.Short() {
		t.Skip("starts servers")
	}
	ctx := testCtx(t)
	runtime.GC()
	fds0, n0 := openFDs(t), runtime.NumGoroutine()

	g, err := group.Start(ctx, group.Config{Logger: testLogger()})
	require.NoError(t, err)
	dir := g.Dir()
	require.DirExists(t, dir)
	l := g.Layout()
	require.Len(t, l.Storages, 1)
	require.Len(t, l.Proxies, 1)
	require.Len(t, l.Archives, 1)
	require.NoError(t, g.Controller().CheckKinds(ctx))

	const size = 8 << 20
	v, err := g.AddVolume(ctx, "vol0", group.VolumeOptions{Size: size})
	require.NoError(t, err)
	require.EqualValues(t, size, v.Size())
	require.Equal(t, "/dev/walb/vol0", v.DevicePath())
	require.NoError(t, g.Controller().VerifyState(ctx, v.Storage(), "vol0", controller.StateStandby))
	_, err = g.AddVolume(ctx, "vol0", group.VolumeOptions{Size: size})
	require.ErrorIs(t, err, group.ErrExists)

	rng := rand.New(rand.NewPCG(1, 2))
	dev := v.Device()
	writeRandom(t, dev, size, 100, rng)
	gid0, err := v.FullBackup(ctx)
	require.NoError(t, err)
	require.NoError(t, g.Controller().VerifyState(ctx, v.Storage(), "vol0", controller.StateTarget))

	// Writes through the NBD export are the device's writes.
	require.True(t, strings.HasPrefix(v.NBDURI(), "nbd://127.0.0.1:"), v.NBDURI())
	c, err := nbd.Dial(ctx, "tcp", g.DeviceNBDAddr(), nbd.ClientOptions{Export: "vol0"})
	require.NoError(t, err)
	require.EqualValues(t, size, c.Size())

	var gids []uint64
	var sums []string
	for i := range 3 {
		var w io.WriterAt = dev
		if i == 1 {
			w = c
		}
		writeRandom(t, w, size, 50, rng)
		if i == 1 {
			require.NoError(t, c.Flush())
		}
		gid, err := v.Snapshot(ctx)
		require.NoError(t, err)
		require.Greater(t, gid, gid0)
		gids = append(gids, gid)
		sums = append(sums, sha(t, dev, size))
	}
	require.Equal(t, sums[2], sha(t, c, size), "NBD reads see the device")
	require.NoError(t, c.Close())

	rs, err := v.Restorable(ctx)
	require.NoError(t, err)
	require.Subset(t, rs, gids)
	for i, gid := range gids {
		img, err := v.Restore(ctx, gid)
		require.NoError(t, err)
		require.Equal(t, sums[i], fileSHA(t, img.Path, size), "restored gid %d", gid)
		if i == 0 {
			// The restored image is also an NBD export of the archive.
			uri := g.RestoredURI(g.Primary(), img)
			require.Equal(t, "nbd://"+g.ArchiveNBDAddr(g.Primary())+"/vol0/"+strconv.FormatUint(gid, 10), uri)
			rc, err := nbd.Dial(ctx, "tcp", g.ArchiveNBDAddr(g.Primary()), nbd.ClientOptions{Export: img.Export})
			require.NoError(t, err)
			require.Equal(t, sums[i], sha(t, rc, size))
			require.NoError(t, rc.Close())
		}
		require.NoError(t, g.Controller().DelRestored(ctx, g.Primary(), "vol0", gid))
	}

	require.NoError(t, v.Apply(ctx, gids[1]))
	rs, err = v.Restorable(ctx)
	require.NoError(t, err)
	require.Equal(t, gids[1], rs[0])
	img, err := v.Restore(ctx, gids[2])
	require.NoError(t, err)
	require.Equal(t, sums[2], fileSHA(t, img.Path, size))

	require.NoError(t, g.Close(ctx))
	require.NoError(t, g.Close(ctx), "Close twice")
	_, err = g.AddVolume(ctx, "vol1", group.VolumeOptions{})
	require.ErrorIs(t, err, group.ErrClosed)
	require.NoDirExists(t, dir)
	checkNoLeaks(t, fds0, n0)
}

// TestRestart closes a group and starts another on its directory: the
// device keeps its content, the storage its volume (Target), the archive
// its snapshots, and backups go on.
func TestRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("starts servers")
	}
	ctx := testCtx(t)
	dir := t.TempDir()
	const size = 4 << 20
	rng := rand.New(rand.NewPCG(3, 4))

	g, err := group.Start(ctx, group.Config{Dir: dir, Logger: testLogger()})
	require.NoError(t, err)
	v, err := g.AddVolume(ctx, "vol0", group.VolumeOptions{Size: size, PBS: 512})
	require.NoError(t, err)
	_, err = v.FullBackup(ctx)
	require.NoError(t, err)
	writeRandom(t, v.Device(), size, 40, rng)
	gid1, err := v.Snapshot(ctx)
	require.NoError(t, err)
	sum1 := sha(t, v.Device(), size)
	writeRandom(t, v.Device(), size, 40, rng) // not in any snapshot yet
	sumClose := sha(t, v.Device(), size)
	a0 := g.Primary().Addr
	require.NoError(t, g.Close(ctx))
	require.DirExists(t, dir, "a given directory stays")

	// Another program took the archive's port meanwhile: the archive gets
	// a new one and the proxy's archive info must follow it.
	squatter, err := net.Listen("tcp", a0)
	require.NoError(t, err)
	defer squatter.Close()
	g, err = group.Start(ctx, group.Config{Dir: dir, Logger: testLogger()})
	require.NoError(t, err)
	defer g.Close(ctx)
	require.NotEqual(t, a0, g.Primary().Addr)
	info, err := g.Controller().GetArchiveInfo(ctx, g.Layout().Proxies[0], "vol0", g.Primary())
	require.NoError(t, err)
	require.Equal(t, g.Primary().Addr, info.Addr)
	vs := g.Volumes()
	require.Len(t, vs, 1)
	v, err = g.Volume("vol0")
	require.NoError(t, err)
	require.Equal(t, sumClose, sha(t, v.Device(), size), "device content survives")
	require.NoError(t, g.Controller().VerifyState(ctx, v.Storage(), "vol0", controller.StateTarget))

	// The writes made before the restart reach the archive as well.
	writeRandom(t, v.Device(), size, 40, rng)
	gid2, err := v.Snapshot(ctx)
	require.NoError(t, err)
	sum2 := sha(t, v.Device(), size)
	for gid, want := range map[uint64]string{gid1: sum1, gid2: sum2} {
		img, err := v.Restore(ctx, gid)
		require.NoError(t, err)
		require.Equal(t, want, fileSHA(t, img.Path, size), "gid %d", gid)
	}
	s0, a0 := g.Layout().Storages[0].Addr, g.Primary().Addr
	require.NoError(t, g.Close(ctx))

	// Every server gets its port of the last run back.
	require.NoError(t, squatter.Close())
	g, err = group.Start(ctx, group.Config{Dir: dir, Logger: testLogger()})
	require.NoError(t, err)
	require.Equal(t, s0, g.Layout().Storages[0].Addr)
	require.Equal(t, a0, g.Primary().Addr)
	require.NoError(t, g.Close(ctx))
}

// TestTLS runs a group with TLS: the group works, TLS clients get in and
// plain ones do not.
func TestTLS(t *testing.T) {
	if testing.Short() {
		t.Skip("starts servers")
	}
	ctx := testCtx(t)
	g, err := group.Start(ctx, group.Config{TLS: true})
	require.NoError(t, err)
	defer g.Close(ctx)
	require.NotNil(t, g.ClientTLS())
	require.Contains(t, string(g.CACertPEM()), "BEGIN CERTIFICATE")

	const size = 4 << 20
	v, err := g.AddVolume(ctx, "tls0", group.VolumeOptions{Size: size})
	require.NoError(t, err)
	require.True(t, strings.HasPrefix(v.NBDURI(), "nbds://127.0.0.1:"), v.NBDURI())
	_, err = v.FullBackup(ctx)
	require.NoError(t, err)

	c, err := nbd.Dial(ctx, "tcp", g.DeviceNBDAddr(), nbd.ClientOptions{Export: "tls0", TLS: g.ClientTLS()})
	require.NoError(t, err)
	writeRandom(t, c, size, 30, rand.New(rand.NewPCG(5, 6)))
	require.NoError(t, c.Flush())
	require.NoError(t, c.Close())
	gid, err := v.Snapshot(ctx)
	require.NoError(t, err)
	img, err := v.Restore(ctx, gid)
	require.NoError(t, err)
	require.Equal(t, sha(t, v.Device(), size), fileSHA(t, img.Path, size))

	_, err = nbd.Dial(ctx, "tcp", g.DeviceNBDAddr(), nbd.ClientOptions{Export: "tls0"})
	require.ErrorIs(t, err, nbd.ErrTLSRequired)
	plain, err := controller.New(g.Layout(), &controller.Options{Retries: -1})
	require.NoError(t, err)
	_, err = plain.HostType(ctx, g.Primary())
	require.Error(t, err, "a plain wire client must not get in")
	secure, err := controller.New(g.Layout(), &controller.Options{Wire: g.ClientWire()})
	require.NoError(t, err)
	require.NoError(t, secure.CheckKinds(ctx))
}

// TestSeveralServers runs two storages, two proxies and two archives with
// zstd: volumes of both storages are backed up through the proxies, and
// the proxies send with the group's compression.
func TestSeveralServers(t *testing.T) {
	if testing.Short() {
		t.Skip("starts servers")
	}
	ctx := testCtx(t)
	zstd := wdiff.Compression{Codec: wdiff.CodecZstd, Level: 1, Workers: 1}
	images := t.TempDir()
	g, err := group.Start(ctx, group.Config{Storages: 2, Proxies: 2, Archives: 2, Compression: &zstd, ImageDir: images})
	require.NoError(t, err)
	defer g.Close(ctx)
	l := g.Layout()
	require.Equal(t, []string{"s0", "s1", "p0", "p1", "a0", "a1"}, names(l.All()))
	require.Equal(t, "a0", g.Primary().Name)

	const size = 4 << 20
	rng := rand.New(rand.NewPCG(7, 8))
	for i, name := range []string{"v0", "v1"} {
		v, err := g.AddVolume(ctx, name, group.VolumeOptions{Size: size, Storage: i})
		require.NoError(t, err)
		require.Equal(t, l.Storages[i], v.Storage())
		_, err = v.FullBackup(ctx)
		require.NoError(t, err)
		for _, p := range l.Proxies {
			info, err := g.Controller().GetArchiveInfo(ctx, p, name, g.Primary())
			require.NoError(t, err)
			require.Equal(t, wdiff.CodecZstd, info.Compression.Codec, "%s on %s", name, p.Name)
		}
		writeRandom(t, v.Device(), size, 30, rng)
		gid, err := v.Snapshot(ctx)
		require.NoError(t, err)
		img, err := v.Restore(ctx, gid)
		require.NoError(t, err)
		require.Equal(t, sha(t, v.Device(), size), fileSHA(t, img.Path, size), name)
		require.Equal(t, filepath.Join(images, "a0"), filepath.Dir(img.Path), "images live in ImageDir/a0")
		st, err := g.Controller().GetState(ctx, l.Storages[1-i], name)
		require.NoError(t, err)
		require.Equal(t, controller.StateClear, st, "%s is not on the other storage", name)
	}
	require.Len(t, g.Volumes(), 2)
	require.NoError(t, g.Close(ctx))
}

func names(ss []controller.Server) []string {
	var out []string
	for _, s := range ss {
		out = append(out, s.Name)
	}
	return out
}

// TestDeleteVolume deletes a backed-up volume everywhere; its name can be
// used again.
func TestDeleteVolume(t *testing.T) {
	if testing.Short() {
		t.Skip("starts servers")
	}
	ctx := testCtx(t)
	g, err := group.Start(ctx, group.Config{})
	require.NoError(t, err)
	defer g.Close(ctx)
	require.ErrorIs(t, g.DeleteVolume(ctx, "nope"), group.ErrNotFound)
	_, err = g.Volume("nope")
	require.ErrorIs(t, err, group.ErrNotFound)

	v, err := g.AddVolume(ctx, "vol0", group.VolumeOptions{Size: 4 << 20})
	require.NoError(t, err)
	_, err = v.FullBackup(ctx)
	require.NoError(t, err)
	files := []string{v.LogDevicePath(), v.DataDevicePath()}
	for _, f := range files {
		require.FileExists(t, f)
	}
	require.NoError(t, g.DeleteVolume(ctx, "vol0"))
	for _, f := range files {
		require.NoFileExists(t, f)
	}
	require.Empty(t, g.Volumes())
	for _, st := range g.Controller().GetStateAll(ctx, "vol0") {
		require.NoError(t, st.Err)
		require.Equal(t, controller.StateClear, st.State, st.Server.Name)
	}
	_, err = nbd.Dial(ctx, "tcp", g.DeviceNBDAddr(), nbd.ClientOptions{Export: "vol0"})
	require.ErrorIs(t, err, nbd.ErrUnknownExport)

	v, err = g.AddVolume(ctx, "vol0", group.VolumeOptions{Size: 4 << 20})
	require.NoError(t, err)
	_, err = v.FullBackup(ctx)
	require.NoError(t, err)
	require.NoError(t, g.Close(ctx))
}

// TestStartFailures: a locked directory and a directory that does not
// match the configuration are refused, and a failed start leaves nothing
// running or open.
func TestStartFailures(t *testing.T) {
	if testing.Short() {
		t.Skip("starts servers")
	}
	ctx := testCtx(t)
	dir := t.TempDir()
	g, err := group.Start(ctx, group.Config{Dir: dir, Logger: testLogger()})
	require.NoError(t, err)
	_, err = group.Start(ctx, group.Config{Dir: dir, Logger: testLogger()})
	require.ErrorIs(t, err, group.ErrConfig, "a running group's directory")
	_, err = g.AddVolume(ctx, "vol0", group.VolumeOptions{Size: 4 << 20, Storage: 0})
	require.NoError(t, err)
	require.NoError(t, g.Close(ctx))

	runtime.GC()
	fds0, n0 := openFDs(t), runtime.NumGoroutine()
	// The directory has a device of s0; a group of no s0 cannot exist, but
	// a leftover of storage s2 with one storage is refused.
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "devices", "s2", "x"), 0o700))
	_, err = group.Start(ctx, group.Config{Dir: dir, Logger: testLogger()})
	require.ErrorIs(t, err, group.ErrLayout)
	checkNoLeaks(t, fds0, n0)
	require.NoError(t, os.RemoveAll(filepath.Join(dir, "devices", "s2")))

	// Interrupted creations and deletions are cleaned up.
	for _, d := range []string{".new-vol1-123", ".del-vol2-456"} {
		require.NoError(t, os.MkdirAll(filepath.Join(dir, "devices", "s0", d), 0o700))
	}
	g, err = group.Start(ctx, group.Config{Dir: dir, Logger: testLogger()})
	require.NoError(t, err)
	ents, err := os.ReadDir(filepath.Join(dir, "devices", "s0"))
	require.NoError(t, err)
	require.Len(t, ents, 1)
	require.Equal(t, "vol0", ents[0].Name())
	require.NoError(t, g.Close(ctx))
}

func TestConfigErrors(t *testing.T) {
	badCmpr := wdiff.Compression{Codec: 42}
	for _, tc := range []struct {
		name string
		cfg  group.Config
	}{
		{"negative count", group.Config{Proxies: -1}},
		{"too many", group.Config{Storages: 101}},
		{"bad compression", group.Config{Compression: &badCmpr}},
		{"retry bounds", group.Config{RetryMin: time.Second, RetryMax: time.Millisecond}},
		{"TLS configs without TLS", group.Config{ClientTLS: &tls.Config{}}},
		{"half TLS configs", group.Config{TLS: true, ClientTLS: &tls.Config{}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := group.Start(context.Background(), tc.cfg)
			require.ErrorIs(t, err, group.ErrConfig)
		})
	}
}

func TestVolumeOptionErrors(t *testing.T) {
	if testing.Short() {
		t.Skip("starts servers")
	}
	ctx := testCtx(t)
	g, err := group.Start(ctx, group.Config{NoNBD: true})
	require.NoError(t, err)
	defer g.Close(ctx)
	require.Empty(t, g.DeviceNBDAddr())
	for _, tc := range []struct {
		name string
		vol  string
		opt  group.VolumeOptions
		want error
	}{
		{"size not 4 KiB aligned", "v", group.VolumeOptions{Size: 4<<20 + 512}, group.ErrConfig},
		{"negative size", "v", group.VolumeOptions{Size: -4096}, group.ErrConfig},
		{"pbs", "v", group.VolumeOptions{PBS: 3000}, group.ErrConfig},
		{"small log", "v", group.VolumeOptions{LogSize: 1 << 20}, group.ErrConfig},
		{"no such storage", "v", group.VolumeOptions{Storage: 1}, group.ErrConfig},
		{"empty name", "", group.VolumeOptions{}, group.ErrBadName},
		{"underscore", "a_b", group.VolumeOptions{}, group.ErrBadName},
		{"leading dash", "-ab", group.VolumeOptions{}, group.ErrBadName},
		{"too long for a device", strings.Repeat("x", 26), group.VolumeOptions{}, group.ErrBadName},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := g.AddVolume(ctx, tc.vol, tc.opt)
			require.ErrorIs(t, err, tc.want)
		})
	}
	require.Empty(t, g.Volumes())
	v, err := g.AddVolume(ctx, strings.Repeat("x", 25), group.VolumeOptions{Size: 4 << 20})
	require.NoError(t, err)
	require.Empty(t, v.NBDURI())
}

// TestHooks: the hooks see each server's configuration before it starts
// and what they set is used.
func TestHooks(t *testing.T) {
	if testing.Short() {
		t.Skip("starts servers")
	}
	ctx := testCtx(t)
	var seen []string
	g, err := group.Start(ctx, group.Config{
		Proxies: 2,
		StorageHook: func(name string, scfg *server.Config, cfg *storage.Config) {
			seen = append(seen, name)
			require.Len(t, cfg.Proxies, 2)
			scfg.Version = "hooked-" + name
		},
		ProxyHook: func(name string, scfg *server.Config, cfg *proxy.Config) {
			seen = append(seen, name)
			require.NotNil(t, cfg.Archive)
		},
		ArchiveHook: func(name string, scfg *server.Config, cfg *archive.Config) {
			seen = append(seen, name)
			require.NotNil(t, cfg.Images)
		},
	})
	require.NoError(t, err)
	defer g.Close(ctx)
	require.Equal(t, []string{"a0", "p0", "p1", "s0"}, seen)
	ver, err := g.Controller().Client(g.Layout().Storages[0]).CallValue(ctx, controller.StringValue, "version")
	require.NoError(t, err)
	require.Equal(t, "hooked-s0", ver)
}

// TestSmallLog writes more than the log device holds, a snapshot after
// every part: the storage releases the log as soon as the proxy has it, so
// a log needs to hold only what is written between two transfers.
func TestSmallLog(t *testing.T) {
	if testing.Short() {
		t.Skip("starts servers")
	}
	ctx := testCtx(t)
	g, err := group.Start(ctx, group.Config{Logger: testLogger()})
	require.NoError(t, err)
	defer g.Close(ctx)
	const size = 16 << 20
	v, err := g.AddVolume(ctx, "vol0", group.VolumeOptions{Size: size, LogSize: group.MinLogSize})
	require.NoError(t, err)
	_, err = v.FullBackup(ctx)
	require.NoError(t, err)
	rng := rand.New(rand.NewPCG(9, 10))
	buf := make([]byte, 256<<10)
	var gid uint64
	for round := range 8 { // 8 x 1.5 MiB through a 4 MiB log
		for i := range 6 {
			for j := range buf {
				buf[j] = byte(rng.Uint32())
			}
			_, err := v.Device().WriteAt(buf, int64((round*6+i)%(size/len(buf)))*int64(len(buf)))
			require.NoError(t, err)
		}
		gid, err = v.Snapshot(ctx)
		require.NoError(t, err, "round %d", round)
	}
	over, err := g.Controller().IsOverflow(ctx, v.Storage(), "vol0")
	require.NoError(t, err)
	require.False(t, over)
	img, err := v.Restore(ctx, gid)
	require.NoError(t, err)
	require.Equal(t, sha(t, v.Device(), size), fileSHA(t, img.Path, size))
}

// TestHashBackupAndReplicate: a volume that went standby and was written
// meanwhile comes back by hash backup; the primary's snapshots then
// replicate to the second archive bit-exact. With TLS, so that the
// archive dials its peer with the group's client configuration.
func TestHashBackupAndReplicate(t *testing.T) {
	if testing.Short() {
		t.Skip("starts servers")
	}
	ctx := testCtx(t)
	g, err := group.Start(ctx, group.Config{Archives: 2, TLS: true})
	require.NoError(t, err)
	defer g.Close(ctx)
	const size = 4 << 20
	rng := rand.New(rand.NewPCG(3, 4))
	v, err := g.AddVolume(ctx, "hb", group.VolumeOptions{Size: size})
	require.NoError(t, err)
	writeRandom(t, v.Device(), size, 20, rng)
	_, err = v.FullBackup(ctx)
	require.NoError(t, err)

	require.NoError(t, v.GoStandby(ctx))
	st, err := g.Controller().GetState(ctx, v.Storage(), "hb")
	require.NoError(t, err)
	require.Equal(t, controller.StateStandby, st)
	writeRandom(t, v.Device(), size, 20, rng)
	gid, err := v.HashBackup(ctx)
	require.NoError(t, err)
	img, err := v.Restore(ctx, gid)
	require.NoError(t, err)
	require.Equal(t, sha(t, v.Device(), size), fileSHA(t, img.Path, size), "hash backup restores the device")

	writeRandom(t, v.Device(), size, 10, rng)
	gid, err = v.Snapshot(ctx)
	require.NoError(t, err)
	want := sha(t, v.Device(), size)
	a1 := g.Layout().Archives[1]
	rgid, err := v.ReplicateTo(ctx, a1)
	require.NoError(t, err)
	require.Equal(t, gid, rgid)
	img, err = g.Controller().Restore(ctx, a1, "hb", gid)
	require.NoError(t, err)
	require.Equal(t, want, fileSHA(t, img.Path, size), "the replica restores the snapshot")
}
