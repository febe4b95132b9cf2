package storage

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/devhost"
	"github.com/walb-go/walb/nbd"
	"github.com/walb-go/walb/walb"
	"github.com/walb-go/walb/wlog"
)

func TestParseNBDURI(t *testing.T) {
	cases := []struct{ uri, network, addr, export string }{
		{"nbd://127.0.0.1:10809/vol0", "tcp", "127.0.0.1:10809", "vol0"},
		{"nbd+unix:///vol0?socket=/run/nbd.sock", "unix", "/run/nbd.sock", "vol0"},
	}
	for _, c := range cases {
		n, a, e, err := parseNBDURI(c.uri)
		require.NoError(t, err, c.uri)
		require.Equal(t, []string{c.network, c.addr, c.export}, []string{n, a, e})
	}
	for _, bad := range []string{"", "nbds://h:1/x", "nbd+unix:///x", "http://h/x", "::"} {
		_, _, _, err := parseNBDURI(bad)
		require.ErrorIs(t, err, ErrNoDevice, bad)
	}
}

// TestDevhostDevice runs the storage on a device of a walb-dev daemon,
// reached through its control socket and NBD export, while an application
// writes through NBD: a full backup, snapshots, and the chain of transfers
// reproduces the device's image at every snapshot.
func TestDevhostDevice(t *testing.T) {
	root := t.TempDir()
	ctx := context.Background()
	daemon, err := devhost.StartDaemon(ctx, devhost.Config{
		BaseDir: filepath.Join(root, "devhost"), NBDAddr: "127.0.0.1:0", ControlSocket: filepath.Join(root, "ctl.sock"),
		Logger: testLogger(), Device: walb.Options{CheckpointInterval: 100 * time.Millisecond, LogFlushInterval: 5 * time.Millisecond},
	})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, daemon.Shutdown(context.Background())) })
	f := makeDevice(t, root, 512<<10, 8<<20, true)
	ctl := devhost.NewClient(daemon.ControlSocket())
	di, err := ctl.CreateWdev(ctx, f.ldev, f.ddev, devhost.CreateOptions{Name: "dev0"})
	require.NoError(t, err)

	devs := NewDevhostDevices(ctl)
	t.Cleanup(func() { devs.Close() })
	e := &testEnv{t: t, dir: root, devs: nil, proxies: newFakeProxies(), archive: &fakeArchive{}}
	require.NoError(t, os.Mkdir(filepath.Join(root, "base"), 0o755))
	e.start(envOpts{maxSend: 32 << 10, mutate: func(c *Config) { c.Devices = devs }})
	t.Cleanup(e.stop)

	_, err = devs.Resolve(ctx, "nosuch")
	require.ErrorIs(t, err, ErrNoDevice)
	require.ErrorIs(t, e.st.InitVol(ctx, "v", "nosuch"), ErrNoDevice)
	require.NoError(t, e.st.InitVol(ctx, "v", "dev0"))

	network, addr, export, err := parseNBDURI(di.URI)
	require.NoError(t, err)
	app, err := nbd.Dial(ctx, network, addr, nbd.ClientOptions{Export: export})
	require.NoError(t, err)
	defer app.Close()
	rng := rand.New(rand.NewPCG(5, 5))
	write := func(n int) {
		buf := make([]byte, 8<<10)
		for range n {
			for i := range buf {
				buf[i] = byte(rng.Uint32())
			}
			off := rng.Int64N(app.Size()/int64(len(buf))) * int64(len(buf))
			_, err := app.WriteAt(buf, off)
			require.NoError(t, err)
		}
		require.NoError(t, app.Flush())
	}
	image := func() []byte {
		b := make([]byte, app.Size())
		_, err := app.ReadAt(b, 0)
		require.NoError(t, err)
		return b
	}

	write(20)
	require.NoError(t, e.st.FullBackup(ctx, "v", BackupOptions{BulkSize: 64 << 10}))
	require.Equal(t, StateTarget, e.st.State("v"))
	uuid, err := e.st.UUID("v")
	require.NoError(t, err)
	require.Equal(t, uuid, e.archive.uuid)
	base := append([]byte(nil), e.archive.image...)

	images := map[uint64][]byte{}
	var last uint64
	for range 4 {
		write(30)
		last, err = e.st.Snapshot(ctx, "v")
		require.NoError(t, err)
		images[last] = image()
	}
	waitFor(t, "everything sent", 20*time.Second, func() bool {
		done, q, err := e.st.Done("v")
		if err != nil || done.Gid < last || len(q) > 0 {
			return false
		}
		p, err := ctl.PermanentLsid(ctx, "dev0")
		return err == nil && done.Lsid == p
	})
	replay := append([]byte(nil), base...)
	hit := 0
	checkChain(t, base, 0, 0, e.proxies.transfers(), func(int) bool { return false })
	for _, tr := range e.proxies.transfers() {
		redo(t, replay, tr)
		if want, ok := images[tr.Diff.SnapE.GidB]; ok {
			require.True(t, bytes.Equal(want, replay), "image at gid %d", tr.Diff.SnapE.GidB)
			hit++
		}
	}
	require.Equal(t, len(images), hit)
	waitFor(t, "log released", 10*time.Second, func() bool {
		o, err := ctl.OldestLsid(ctx, "dev0")
		return err == nil && o > 0
	})

	lu, err := e.st.LogUsage(ctx, "v")
	require.NoError(t, err)
	require.Positive(t, lu.CapacityPB)
	require.NoError(t, e.st.StopVol(ctx, "v", false))
	require.NoError(t, e.st.ResetVol(ctx, "v", 3))
	uuid2, err := e.st.UUID("v")
	require.NoError(t, err)
	require.NotEqual(t, uuid, uuid2, "a reset gives the log a new uuid")
}

// checkpointCounter is a devhost.Controller that counts the checkpoints
// asked of it.
type checkpointCounter struct {
	devhost.Controller
	ckpts atomic.Int32
}

func (c *checkpointCounter) TakeCheckpoint(ctx context.Context, name string) error {
	c.ckpts.Add(1)
	return c.Controller.TakeCheckpoint(ctx, name)
}

// TestDevhostDeviceControl checks the adapter's control path against a
// walb-dev daemon: the lsids are the device's own (latest and prev_written
// included), the identity is the log's, and a release above prev_written
// is refused as formats.md §5.3 says, without a checkpoint forced behind
// the caller's back.
func TestDevhostDeviceControl(t *testing.T) {
	root := t.TempDir()
	ctx := context.Background()
	// Checkpoints only on demand, so that prev_written stays where the
	// test puts it.
	daemon, err := devhost.StartDaemon(ctx, devhost.Config{
		BaseDir: filepath.Join(root, "devhost"), NBDAddr: "127.0.0.1:0", ControlSocket: filepath.Join(root, "ctl.sock"),
		Logger: testLogger(), Device: walb.Options{CheckpointInterval: time.Hour, LogFlushInterval: 5 * time.Millisecond},
	})
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, daemon.Shutdown(context.Background())) })
	f := makeDevice(t, root, 1<<20, 8<<20, false)
	client := devhost.NewClient(daemon.ControlSocket())
	di, err := client.CreateWdev(ctx, f.ldev, f.ddev, devhost.CreateOptions{Name: "dev0"})
	require.NoError(t, err)
	ctl := &checkpointCounter{Controller: client}
	devs := NewDevhostDevices(ctl)
	t.Cleanup(func() { devs.Close() })
	dev, err := devs.Resolve(ctx, "dev0")
	require.NoError(t, err)

	network, addr, export, err := parseNBDURI(di.URI)
	require.NoError(t, err)
	app, err := nbd.Dial(ctx, network, addr, nbd.ClientOptions{Export: export})
	require.NoError(t, err)
	defer app.Close()
	_, err = app.WriteAt(bytes.Repeat([]byte{0xab}, 64<<10), 0)
	require.NoError(t, err)
	require.NoError(t, app.Flush())

	// The data device catches up in the background; compare once it has,
	// so that both reads see the same lsids.
	var l walb.Lsids
	require.Eventually(t, func() bool {
		l, err = dev.Lsids(ctx)
		require.NoError(t, err)
		return l.Written == l.Permanent
	}, time.Minute, time.Millisecond, "the data device catches up")
	direct, err := client.Lsids(ctx, "dev0")
	require.NoError(t, err)
	require.Equal(t, direct, l)
	require.Positive(t, l.Latest)
	require.Equal(t, l.Permanent, l.Latest, "flushed and idle")
	require.Zero(t, l.PrevWritten, "no checkpoint since the writes")

	info, err := dev.Info(ctx)
	require.NoError(t, err)
	st, err := client.Info(ctx, "dev0")
	require.NoError(t, err)
	require.Equal(t, DeviceInfo{UUID: st.UUID, Salt: st.Salt, PBS: 512, SizeLB: 1 << 20 / 512, LogCapacityPB: st.LogCapacityPB}, info)
	var wl bytes.Buffer
	_, err = client.CatLog(ctx, "dev0", 0, 0, &wl)
	require.NoError(t, err)
	hdr, err := wlog.ParseFileHeader(wl.Bytes())
	require.NoError(t, err)
	require.Equal(t, hdr.UUID, info.UUID)
	require.Equal(t, hdr.Salt, info.Salt)

	require.ErrorIs(t, dev.SetOldestLsid(ctx, l.Permanent), devhost.ErrInvalid, "above prev_written")
	require.Zero(t, ctl.ckpts.Load(), "a refused release forces no checkpoint")
	require.NoError(t, dev.SetOldestLsid(ctx, l.PrevWritten))

	// A checkpoint makes everything releasable.
	require.Eventually(t, func() bool {
		require.NoError(t, client.TakeCheckpoint(ctx, "dev0"))
		l, err = dev.Lsids(ctx)
		require.NoError(t, err)
		return l.PrevWritten == l.Permanent
	}, time.Minute, 10*time.Millisecond, "a checkpoint moves prev_written")
	require.NoError(t, dev.SetOldestLsid(ctx, l.PrevWritten))
	l, err = dev.Lsids(ctx)
	require.NoError(t, err)
	require.Equal(t, l.PrevWritten, l.Oldest)

	require.NoError(t, client.DeleteWdev(ctx, "dev0", false))
	_, err = dev.Info(ctx)
	require.ErrorIs(t, err, ErrNoDevice)
}
