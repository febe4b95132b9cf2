package storage

import (
	"bytes"
	"context"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/walb"
)

// writer writes random data (and some trims and zeroings) to a device, or
// the same to several (replicas), until stopped; pause holds it between
// writes.
type writer struct {
	ds     []*walb.Device
	rng    *rand.Rand
	gate   sync.RWMutex
	stop   atomic.Bool
	wg     sync.WaitGroup
	writes atomic.Int64
	err    atomic.Value
}

func startWriter(d *walb.Device, seed uint64) *writer { return startMirrorWriter(seed, d) }

// startMirrorWriter writes the same to every device (of the same size).
func startMirrorWriter(seed uint64, ds ...*walb.Device) *writer {
	w := &writer{ds: ds, rng: rand.New(rand.NewPCG(seed, 1))}
	w.wg.Add(1)
	go w.loop()
	return w
}

func (w *writer) loop() {
	defer w.wg.Done()
	size := w.ds[0].Size() / walb.LBS
	buf := make([]byte, 16*walb.LBS)
	for !w.stop.Load() {
		w.gate.RLock()
		n := 1 + w.rng.Int64N(16)
		off := w.rng.Int64N(size - n + 1)
		p := w.rng.IntN(20)
		if p > 1 {
			for i := range buf[:n*walb.LBS] {
				buf[i] = byte(w.rng.Uint32())
			}
		}
		var err error
		for _, d := range w.ds {
			switch {
			case p == 0:
				err = d.Trim(off*walb.LBS, n*walb.LBS)
			case p == 1:
				err = d.WriteZeroes(off*walb.LBS, n*walb.LBS, false)
			default:
				_, err = d.WriteAt(buf[:n*walb.LBS], off*walb.LBS)
			}
			if err != nil {
				break
			}
		}
		w.gate.RUnlock()
		if err != nil {
			w.err.Store(err)
			return
		}
		w.writes.Add(1)
		// About 2 MB/s: the log must not overflow while the test runs.
		time.Sleep(2 * time.Millisecond)
	}
}

func (w *writer) pause()  { w.gate.Lock() }
func (w *writer) resume() { w.gate.Unlock() }
func (w *writer) finish(t testing.TB) {
	w.stop.Store(true)
	w.wg.Wait()
	if err, _ := w.err.Load().(error); err != nil {
		t.Fatalf("writer: %v", err)
	}
}

// TestTransferLoopImages is the end-to-end check of the storage side: a
// full backup while writes go on, then snapshots while writes go on, with a
// small send size so that ranges are cut and implicit snapshots taken. For
// every explicit snapshot, the archive's base image plus the redo of the
// transfers up to that gid equals the device's image at the snapshot.
func TestTransferLoopImages(t *testing.T) {
	const maxSend = 32 << 10 // 64 PBs: transfers are cut
	e := newEnv(t, envOpts{maxSend: maxSend, snapIntv: 30 * time.Millisecond})
	dev, _ := e.addDevice("d0", 1<<20, 16<<20, true)
	ctx := context.Background()
	require.NoError(t, e.st.InitVol(ctx, "v", "d0"))

	w := startWriter(dev, 1)
	e.st.SetFullScanBps(4 << 20) // 1 MiB in ~250 ms: writes overlap the copy
	require.NoError(t, e.st.FullBackup(ctx, "v", BackupOptions{BulkSize: 32 << 10}))
	require.Equal(t, StateTarget, e.st.State("v"))
	base := append([]byte(nil), e.archive.image...)
	require.Equal(t, uint64(0), e.archive.snap.GidB)
	require.True(t, e.archive.snap.IsDirty(), "an online copy is a dirty snapshot")
	uuid, err := e.st.UUID("v")
	require.NoError(t, err)
	require.Equal(t, uuid, e.archive.uuid)
	require.Equal(t, meta.UUID(dev.UUID()), uuid, "the uuid of the reset log")

	images := map[uint64][]byte{}
	for i := range 8 {
		time.Sleep(time.Duration(10+10*i) * time.Millisecond)
		w.pause()
		gid, err := e.st.Snapshot(ctx, "v")
		require.NoError(t, err)
		images[gid] = readImage(t, dev)
		w.resume()
	}
	w.finish(t)
	require.Greater(t, w.writes.Load(), int64(100))
	last, err := e.st.Snapshot(ctx, "v")
	require.NoError(t, err)
	images[last] = readImage(t, dev)
	e.waitSent("v", last, dev)

	trs := e.proxies.transfers()
	img, gids := checkChain(t, base, 0, 0, trs, func(int) bool { return false })
	require.Equal(t, images[last], img, "final image")

	// Replay the chain and compare at every explicit snapshot.
	replay := append([]byte(nil), base...)
	hit := map[uint64]bool{}
	implicit := 0
	for _, tr := range trs {
		redo(t, replay, tr)
		g := tr.Diff.SnapE.GidB
		if want, ok := images[g]; ok {
			require.True(t, bytes.Equal(want, replay), "image at gid %d", g)
			hit[g] = true
		}
		// Only a range with no intermediate gid left may exceed the cap.
		if tr.EndLsid-tr.BeginLsid > maxSend/512 && g != tr.Diff.SnapB.GidB+1 {
			t.Errorf("transfer %s carries %d PBs, over the %d PB cap", tr.Diff, tr.EndLsid-tr.BeginLsid, maxSend/512)
		}
		if tr.Diff.Mergeable {
			implicit++
		}
	}
	for g := range images {
		require.True(t, hit[g], "explicit snapshot gid %d is a transfer boundary", g)
	}
	require.GreaterOrEqual(t, e.archive.snap.GidE, uint64(1))
	_, ok := gids[e.archive.snap.GidE]
	require.True(t, ok, "the backup's gidE is a boundary: the first clean point")
	require.Positive(t, implicit, "implicit snapshots were taken")
	t.Logf("%d transfers, %d writes, %d explicit snapshots, %d implicit begins", len(trs), w.writes.Load(), len(images), implicit)

	// The log was released up to what was acknowledged.
	waitFor(t, "log released", 5*time.Second, func() bool {
		l := dev.Lsids()
		return l.Oldest == l.Permanent
	})
}

// TestProxyFailover: with the first proxy down, transfers go to the second;
// once the first is back and a heartbeat has seen it, they return to it.
// The two proxies' transfers together form one chain.
func TestProxyFailover(t *testing.T) {
	e := newEnv(t, envOpts{proxies: []string{"p0", "p1"}})
	dev, _ := e.addDevice("d0", 256<<10, 1<<20, true)
	ctx := context.Background()
	require.NoError(t, e.st.InitVol(ctx, "v", "d0"))
	require.NoError(t, e.st.FullBackup(ctx, "v", BackupOptions{}))
	base := append([]byte(nil), e.archive.image...)

	write := func(seed byte) uint64 {
		buf := bytes.Repeat([]byte{seed}, 8192)
		_, err := dev.WriteAt(buf, int64(seed)*8192%dev.Size())
		require.NoError(t, err)
		gid, err := e.st.Snapshot(ctx, "v")
		require.NoError(t, err)
		e.waitSent("v", gid, dev)
		return gid
	}
	lastProxy := func() string {
		trs := e.proxies.transfers()
		return trs[len(trs)-1].Proxy
	}

	write(1)
	require.Equal(t, "p0", lastProxy())

	e.proxies.setDown("p0", true)
	write(2)
	require.Equal(t, "p1", lastProxy(), "failover to the second proxy")
	e.st.Kick() // the heartbeat notices p0 is down
	waitFor(t, "p0 marked unavailable", 5*time.Second, func() bool {
		return !contains(e.st.proxies.available(), "p0")
	})
	write(3)
	require.Equal(t, "p1", lastProxy())

	e.proxies.setDown("p0", false)
	e.st.Kick()
	waitFor(t, "p0 available again", 5*time.Second, func() bool {
		return contains(e.st.proxies.available(), "p0")
	})
	write(4)
	require.Equal(t, "p0", lastProxy(), "fall back to the recovered higher-priority proxy")

	// Both down: transfers fail and are retried until one comes back.
	e.proxies.setDown("p0", true)
	e.proxies.setDown("p1", true)
	_, err := dev.WriteAt(bytes.Repeat([]byte{5}, 4096), 0)
	require.NoError(t, err)
	gid, err := e.st.Snapshot(ctx, "v")
	require.NoError(t, err)
	time.Sleep(100 * time.Millisecond)
	done, _, err := e.st.Done("v")
	require.NoError(t, err)
	require.Less(t, done.Gid, gid, "nothing is acknowledged while every proxy is down")
	e.proxies.setDown("p1", false)
	e.st.Kick()
	e.waitSent("v", gid, dev)
	require.Equal(t, "p1", lastProxy())

	img, _ := checkChain(t, base, 0, 0, e.proxies.transfers(), func(int) bool { return false })
	require.Equal(t, readImage(t, dev), img)
}

// A lost ACK makes the storage resend from the old done; the proxy side sees
// a resend starting at a reached point, which the archive tolerates.
func TestLostAckResends(t *testing.T) {
	e := newEnv(t, envOpts{})
	dev, _ := e.addDevice("d0", 256<<10, 1<<20, true)
	ctx := context.Background()
	require.NoError(t, e.st.InitVol(ctx, "v", "d0"))
	require.NoError(t, e.st.FullBackup(ctx, "v", BackupOptions{}))
	base := append([]byte(nil), e.archive.image...)
	e.waitSent("v", e.archive.snap.GidE, dev)

	e.proxies.mu.Lock()
	e.proxies.dropAcks = 1
	e.proxies.failSends = 1 // and one transfer cut in the middle
	e.proxies.mu.Unlock()
	var gid uint64
	for i := range 3 {
		_, err := dev.WriteAt(bytes.Repeat([]byte{byte(i + 1)}, 64<<10), int64(i)*(64<<10))
		require.NoError(t, err)
		var err2 error
		gid, err2 = e.st.Snapshot(ctx, "v")
		require.NoError(t, err2)
	}
	e.waitSent("v", gid, dev)
	trs := e.proxies.transfers()
	dropped := -1
	for i, tr := range trs {
		if tr.AckDropped {
			dropped = i
		}
	}
	require.GreaterOrEqual(t, dropped, 0)
	img, _ := checkChain(t, base, 0, 0, trs, func(i int) bool { return i == dropped+1 })
	require.Equal(t, readImage(t, dev), img)
	require.Equal(t, trs[dropped].BeginLsid, trs[dropped+1].BeginLsid, "the resend starts where the unacknowledged one did")
}

func contains(v []string, s string) bool {
	for _, x := range v {
		if x == s {
			return true
		}
	}
	return false
}
