package storage

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/walb"
	"github.com/walb-go/walb/wire"
)

// writeChunks writes a distinct pattern over the chunks whose indexes are
// given (chunk bytes each) and returns the data written.
func writeChunks(t testing.TB, d *walb.Device, chunk int64, idx ...int64) {
	t.Helper()
	for _, i := range idx {
		_, err := d.WriteAt(bytes.Repeat([]byte{byte(i*7 + 1)}, int(chunk)), i*chunk)
		require.NoError(t, err)
	}
	require.NoError(t, d.Flush())
}

// snapshotImages takes n explicit snapshots of vol while w writes, each with
// the writer paused, and returns the device image at each gid.
func snapshotImages(t testing.TB, st *Storage, vol string, d *walb.Device, w *writer, n int) map[uint64][]byte {
	t.Helper()
	images := map[uint64][]byte{}
	for i := range n {
		time.Sleep(time.Duration(10+10*i) * time.Millisecond)
		w.pause()
		gid, err := st.Snapshot(context.Background(), vol)
		if err == nil {
			images[gid] = readImage(t, d)
		}
		w.resume()
		require.NoError(t, err)
	}
	return images
}

// checkImages replays the archive's view: from the image the last backup
// committed, every transfer of that backup's log; at each gid of images
// the result must equal the device image taken at that snapshot.
func checkImages(t testing.TB, a *fakeArchive, trs []transferRec, images map[uint64][]byte) {
	t.Helper()
	a.mu.Lock()
	replay := append([]byte(nil), a.base...)
	uuid, gidB := a.uuid, a.baseSnap.GidB
	a.mu.Unlock()
	hit := map[uint64]bool{}
	var mine []transferRec
	for _, tr := range trs {
		if tr.Header.UUID == uuid {
			mine = append(mine, tr)
		}
	}
	checkChain(t, replay, 0, gidB, mine, func(int) bool { return false })
	for _, tr := range mine {
		redo(t, replay, tr)
		if want, ok := images[tr.Diff.SnapE.GidB]; ok {
			require.True(t, bytes.Equal(want, replay), "image at gid %d", tr.Diff.SnapE.GidB)
			hit[tr.Diff.SnapE.GidB] = true
		}
	}
	for g := range images {
		require.True(t, hit[g], "snapshot gid %d is a transfer boundary", g)
	}
}

// TestHashBackupSendsOnlyDifferences: after a full backup whose logs the
// archive applied, the volume is stopped and three chunks are rewritten;
// the hash backup from SyncReady sends exactly those chunks, restarts the
// gids after the archive's latest snapshot, and leaves the archive's image
// equal to the device (system.md §3.7).
func TestHashBackupSendsOnlyDifferences(t *testing.T) {
	const chunk = 16 << 10
	e := newEnv(t, envOpts{})
	dev, _ := e.addDevice("d0", 512<<10, 1<<20, true)
	ctx := context.Background()
	require.NoError(t, e.st.InitVol(ctx, "v", "d0"))
	require.NoError(t, e.st.FullBackup(ctx, "v", BackupOptions{}))
	writeChunks(t, dev, chunk, 1, 5)
	gid, err := e.st.Snapshot(ctx, "v")
	require.NoError(t, err)
	e.waitSent("v", gid, dev)
	require.NoError(t, e.st.StopVol(ctx, "v", false))
	e.archive.catchUp(t, e.proxies.transfers())
	img, from := e.archive.latest()
	require.Equal(t, meta.Snap{GidB: gid, GidE: gid}, from)
	require.Equal(t, readImage(t, dev), img)

	writeChunks(t, dev, chunk, 0, 7, 31) // 31 is the last chunk
	require.NoError(t, e.st.ResetVol(ctx, "v", 0))
	var accepted atomic.Bool
	require.NoError(t, e.st.HashBackup(ctx, "v", BackupOptions{BulkSize: chunk, Accepted: func() { accepted.Store(true) }}))
	require.True(t, accepted.Load())
	require.Equal(t, StateTarget, e.st.State("v"))
	_, ok := e.st.BackupProgress("v")
	require.False(t, ok, "no backup runs")

	a := e.archive
	require.Equal(t, 1, a.hashes)
	require.Equal(t, from, a.hashFrom)
	require.Equal(t, gid+1, a.snap.GidB, "gidB = From.GidE + 1")
	require.Greater(t, a.snap.GidE, a.snap.GidB)
	require.Equal(t, int64(3), a.hashStats.DiffChunks, "only the rewritten chunks are sent")
	require.Equal(t, int64(512<<10), a.hashStats.Scanned)
	require.Equal(t, readImage(t, dev), a.image)
	uuid, err := e.st.UUID("v")
	require.NoError(t, err)
	require.Equal(t, meta.UUID(dev.UUID()), uuid)
	require.Equal(t, uuid, a.uuid, "the archive got the new log's uuid")

	// The new log continues the chain from gidB.
	writeChunks(t, dev, chunk, 9)
	g2, err := e.st.Snapshot(ctx, "v")
	require.NoError(t, err)
	e.waitSent("v", g2, dev)
	checkImages(t, a, e.proxies.transfers(), map[uint64][]byte{g2: readImage(t, dev)})
}

// TestHashBackupWhileWriting is hash-bkp on an online device: writes go on
// during the (throttled) comparison, whose progress is visible, then during
// snapshots. The archive's dirty image |gidB,gidE| plus the logs from gidB
// equals the device at every snapshot.
func TestHashBackupWhileWriting(t *testing.T) {
	const maxSend = 32 << 10
	e := newEnv(t, envOpts{maxSend: maxSend, snapIntv: 30 * time.Millisecond})
	dev, _ := e.addDevice("d0", 2<<20, 16<<20, true)
	ctx := context.Background()
	require.NoError(t, e.st.InitVol(ctx, "v", "d0"))
	require.NoError(t, e.st.FullBackup(ctx, "v", BackupOptions{}))
	require.NoError(t, e.st.StopVol(ctx, "v", false))
	require.NoError(t, e.st.ResetVol(ctx, "v", 0))

	w := startWriter(dev, 5)
	e.st.SetFullScanBps(4 << 20) // 2 MiB in ~500 ms
	errc := make(chan error, 1)
	// 8 KiB chunks: the comparison checkpoints every 512 KiB (64 chunks).
	go func() { errc <- e.st.HashBackup(ctx, "v", BackupOptions{BulkSize: 8 << 10}) }()
	var seen BackupProgress
	var during string
	var status []string
	waitFor(t, "progress", 10*time.Second, func() bool {
		st := e.st.State("v")
		lines, err := e.st.VolStatus(ctx, "v")
		require.NoError(t, err)
		p, ok := e.st.BackupProgress("v")
		if ok && p.ComparedBytes > 0 && p.ComparedBytes < p.SizeBytes {
			seen, during, status = p, st, lines
		}
		return seen.ComparedBytes > 0
	})
	require.Equal(t, CmdHashBkp, seen.Command)
	require.Equal(t, uint64(2<<20), seen.SizeBytes)
	require.GreaterOrEqual(t, seen.ReadBytes, seen.ComparedBytes)
	require.Equal(t, StateHashSync, during)
	require.Regexp(t, `backup hash-bkp startedAt \S+ readLb \d+ comparedLb \d+ sizeLb 4096`, strings.Join(status, "\n"))
	require.NoError(t, <-errc)
	e.st.SetFullScanBps(0)
	require.Equal(t, StateTarget, e.st.State("v"))
	require.True(t, e.archive.snap.IsDirty(), "an online comparison is a dirty snapshot")

	images := snapshotImages(t, e.st, "v", dev, w, 5)
	w.finish(t)
	last, err := e.st.Snapshot(ctx, "v")
	require.NoError(t, err)
	images[last] = readImage(t, dev)
	e.waitSent("v", last, dev)
	trs := e.proxies.transfers()
	checkImages(t, e.archive, trs, images)
	gids := e.archive.catchUp(t, trs)
	_, ok := gids[e.archive.baseSnap.GidE]
	require.True(t, ok, "the backup's gidE is a transfer boundary")
	img, _ := e.archive.latest()
	require.Equal(t, readImage(t, dev), img)
}

// TestHashBackupFailures: a refusal, a cut in the middle of the comparison
// and a force stop each leave the volume SyncReady and unmonitored and the
// archive as it was (spec e13); a bad latest snapshot is refused; the rerun
// succeeds.
func TestHashBackupFailures(t *testing.T) {
	e := newEnv(t, envOpts{})
	dev, _ := e.addDevice("d0", 256<<10, 1<<20, true)
	ctx := context.Background()
	require.NoError(t, e.st.InitVol(ctx, "v", "d0"))
	require.NoError(t, e.st.FullBackup(ctx, "v", BackupOptions{}))
	require.ErrorIs(t, e.st.HashBackup(ctx, "v", BackupOptions{}), wire.ErrWrongState, "Target")
	require.NoError(t, e.st.StopVol(ctx, "v", false))
	require.ErrorIs(t, e.st.HashBackup(ctx, "v", BackupOptions{}), wire.ErrWrongState, "Stopped")
	require.NoError(t, e.st.ResetVol(ctx, "v", 0))
	writeChunks(t, dev, 16<<10, 2, 3)
	img0, snap0 := e.archive.latest()
	v, _ := e.st.volume("v")
	unchanged := func(what string) {
		t.Helper()
		require.Equal(t, StateSyncReady, e.st.State("v"), what)
		require.False(t, e.st.isMonitored(v), what)
		img, snap := e.archive.latest()
		require.Equal(t, snap0, snap, what)
		require.True(t, bytes.Equal(img0, img), what)
		require.Zero(t, e.archive.hashes, what)
		_, ok := e.st.BackupProgress("v")
		require.False(t, ok, what)
	}

	for _, b := range []uint64{1000, 8 << 20} {
		require.ErrorIs(t, e.st.HashBackup(ctx, "v", BackupOptions{BulkSize: b}), wire.ErrBadRequest, "bulk %d", b)
	}
	unchanged("bad bulk")

	e.archive.refuse = true
	var accepted atomic.Bool
	require.Error(t, e.st.HashBackup(ctx, "v", BackupOptions{Accepted: func() { accepted.Store(true) }}))
	require.False(t, accepted.Load())
	unchanged("refused")
	e.archive.refuse = false

	e.archive.badFrom = true
	require.ErrorIs(t, e.st.HashBackup(ctx, "v", BackupOptions{}), ErrBadArchiveSnap)
	unchanged("bad latest snapshot")
	e.archive.badFrom = false

	e.archive.hashCutAfter = 100 // past the stream header
	err := e.st.HashBackup(ctx, "v", BackupOptions{BulkSize: 16 << 10, Accepted: func() { accepted.Store(true) }})
	require.Error(t, err)
	require.True(t, accepted.Load())
	unchanged("cut")
	e.archive.hashCutAfter = 0

	checkBackupStops(t, e, StateHashSync, func(opt BackupOptions) error { return e.st.HashBackup(ctx, "v", opt) })
	unchanged("force stop, too many backups")

	require.NoError(t, e.st.HashBackup(ctx, "v", BackupOptions{BulkSize: 16 << 10}))
	require.Equal(t, StateTarget, e.st.State("v"))
	require.Equal(t, int64(2), e.archive.hashStats.DiffChunks)
	require.Equal(t, readImage(t, dev), e.archive.image)
}

// TestOverflowThenHashBackup is spec e4/e10 over the network commands: a
// Target's tiny log overflows while the proxy is unreachable; the volume
// is Stopped and unmonitored, is-overflow is true, snapshot and start
// target fail with the overflow code; reset-vol then hash-bkp recover, and
// the snapshots after it are correct.
func TestOverflowThenHashBackup(t *testing.T) {
	_, c, e := startServer(t)
	dev, _ := e.addDevice("d0", 256<<10, 64<<10, true)
	ctx := context.Background()
	state := func() string {
		st, err := c.State(ctx, "v")
		require.NoError(t, err)
		return st
	}
	require.NoError(t, c.InitVol(ctx, "v", "d0"))
	require.NoError(t, c.FullBackup(ctx, "v", 0))
	waitFor(t, "Target", 10*time.Second, func() bool { return state() == StateTarget })
	_, err := c.Snapshot(ctx, "v")
	require.NoError(t, err)

	e.proxies.setDown("p0", true)
	overflowLog(t, dev)
	waitFor(t, "overflowed Target stopped", 10*time.Second, func() bool { return state() == StateStopped })
	over, err := c.IsOverflow(ctx, "v")
	require.NoError(t, err)
	require.True(t, over)
	st, err := c.Status(ctx, "v")
	require.NoError(t, err)
	require.Contains(t, st, "isUnderMonitoring false")
	require.Contains(t, st, "isOverflow true")
	_, err = c.Snapshot(ctx, "v")
	require.ErrorIs(t, err, CodeOverflow, "snapshot: %v", err)
	require.ErrorIs(t, c.Start(ctx, "v", Target), CodeOverflow)
	require.ErrorIs(t, c.HashBackup(ctx, "v", 0), wire.ErrWrongState, "hash-bkp needs SyncReady")
	require.Equal(t, StateStopped, state())

	// Recovery: reset-vol, then hash-bkp against what the archive got.
	e.proxies.setDown("p0", false)
	e.archive.catchUp(t, e.proxies.transfers())
	_, from := e.archive.latest()
	require.NoError(t, c.ResetVol(ctx, "v", 0))
	over, err = c.IsOverflow(ctx, "v")
	require.NoError(t, err)
	require.False(t, over)
	require.NoError(t, c.HashBackup(ctx, "v", 16<<10))
	waitFor(t, "Target after hash-bkp", 10*time.Second, func() bool { return state() == StateTarget })
	require.Equal(t, from.GidE+1, e.archive.snap.GidB)
	require.Positive(t, e.archive.hashStats.DiffChunks, "the lost writes are sent")
	lb, err := c.Progress(ctx, "v")
	require.NoError(t, err)
	require.Zero(t, lb, "no backup runs")
	_, err = dev.WriteAt(bytes.Repeat([]byte{9}, 4096), 8192)
	require.NoError(t, err)
	gid, err := c.Snapshot(ctx, "v")
	require.NoError(t, err)
	e.waitSent("v", gid, dev)
	checkImages(t, e.archive, e.proxies.transfers(), map[uint64][]byte{gid: readImage(t, dev)})
}

// TestStandbyThenHashBackup is spec n3: a standby releases its log as it
// fills (the usage stays below the capacity although twice the ring is
// written) and sends nothing; stopped, it becomes the target by hash-bkp,
// and the archive then holds the standby's writes.
func TestStandbyThenHashBackup(t *testing.T) {
	e := newEnv(t, envOpts{})
	dev, _ := e.addDevice("d0", 256<<10, 256<<10, true)
	ctx := context.Background()
	require.NoError(t, e.st.InitVol(ctx, "v", "d0"))
	require.NoError(t, e.st.FullBackup(ctx, "v", BackupOptions{}))
	require.NoError(t, e.st.StopVol(ctx, "v", false))
	require.NoError(t, e.st.ResetVol(ctx, "v", 0))
	e.archive.catchUp(t, e.proxies.transfers())
	sent := len(e.proxies.transfers())
	require.NoError(t, e.st.StartVol(ctx, "v", Standby))

	capacity := dev.LogCapacity()
	written := uint64(0)
	var peak uint64
	for round := 0; written < 2*capacity; round++ {
		for i := range 4 {
			writeChunks(t, dev, 4<<10, int64(round*4+i)%16)
			written += 4 << 10 / 512
		}
		u, err := e.st.LogUsage(ctx, "v")
		require.NoError(t, err)
		peak = max(peak, u.UsagePB)
		waitFor(t, fmt.Sprintf("round %d released", round), 10*time.Second, func() bool {
			u, err := e.st.LogUsage(ctx, "v")
			return err == nil && u.UsagePB < capacity/2
		})
	}
	require.False(t, dev.IsLogOverflow())
	require.Less(t, peak, capacity)
	require.Len(t, e.proxies.transfers(), sent, "a standby sends nothing")
	lines, err := e.st.VolStatus(ctx, "v")
	require.NoError(t, err)
	require.Contains(t, lines, "state Standby")

	require.NoError(t, e.st.StopVol(ctx, "v", false))
	require.Equal(t, StateSyncReady, e.st.State("v"))
	require.NoError(t, e.st.HashBackup(ctx, "v", BackupOptions{BulkSize: 8 << 10}))
	require.Equal(t, StateTarget, e.st.State("v"))
	require.Equal(t, readImage(t, dev), e.archive.image)
	require.Equal(t, int64(8), e.archive.hashStats.DiffChunks, "the 8 chunks the standby wrote, not the others")
}
