package storage

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/server"
	"github.com/walb-go/walb/wire"
)

func TestBadInput(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.addDevice("d0", 64<<10, 256<<10, true)
	e.addDevice("d1", 64<<10, 256<<10, true)
	ctx := context.Background()
	st := e.st

	for _, name := range []string{"", "a/b", "..", "v 1", strings.Repeat("x", 65), "v\x00"} {
		require.ErrorIs(t, st.InitVol(ctx, name, "d0"), wire.ErrBadRequest, "%q", name)
		_, err := st.Snapshot(ctx, name)
		require.ErrorIs(t, err, wire.ErrBadRequest, "%q", name)
	}
	require.ErrorIs(t, st.InitVol(ctx, "v", ""), wire.ErrBadRequest)
	require.ErrorIs(t, st.InitVol(ctx, "v", "nope"), ErrNoDevice)
	require.Equal(t, StateClear, st.State("v"))
	_, err := os.Stat(filepath.Join(st.Config().BaseDir, "v"))
	require.True(t, os.IsNotExist(err), "a failed init-vol leaves no directory")

	require.NoError(t, st.InitVol(ctx, "v", "d0"))
	require.ErrorIs(t, st.InitVol(ctx, "v", "d1"), wire.ErrWrongState)
	require.ErrorIs(t, st.InitVol(ctx, "w", "d0"), ErrDeviceInUse)
	require.Equal(t, StateClear, st.State("w"))

	for _, vol := range []string{"nosuch"} {
		require.ErrorIs(t, st.ClearVol(ctx, vol), ErrNotFound)
		require.ErrorIs(t, st.StartVol(ctx, vol, Target), ErrNotFound)
		require.ErrorIs(t, st.StopVol(ctx, vol, false), ErrNotFound)
		require.ErrorIs(t, st.ResetVol(ctx, vol, 0), ErrNotFound)
		require.ErrorIs(t, st.Resize(ctx, vol, 0), ErrNotFound)
		require.ErrorIs(t, st.FullBackup(ctx, vol, BackupOptions{}), ErrNotFound)
		_, err := st.IsOverflow(ctx, vol)
		require.ErrorIs(t, err, ErrNotFound)
		_, err = st.UUID(vol)
		require.ErrorIs(t, err, ErrNotFound)
	}

	_, err = ParseMode("master")
	require.ErrorIs(t, err, wire.ErrBadRequest)
	for _, b := range []uint64{1000, 8 << 20} {
		require.ErrorIs(t, st.FullBackup(ctx, "v", BackupOptions{BulkSize: b}), wire.ErrBadRequest, "bulk %d", b)
	}
	require.Equal(t, StateSyncReady, st.State("v"))

	require.NoError(t, st.FullBackup(ctx, "v", BackupOptions{}))
	require.NoError(t, st.StopVol(ctx, "v", false))
	require.ErrorIs(t, st.ResetVol(ctx, "v", meta.InvalidGid), wire.ErrBadRequest)
	require.ErrorIs(t, st.Resize(ctx, "v", 1), ErrShrink)
	require.Error(t, st.Resize(ctx, "v", 1<<30), "beyond the data device")

	_, err = New(Config{BaseDir: filepath.Join(e.dir, "missing"), Devices: e.devs})
	require.ErrorIs(t, err, wire.ErrBadRequest)
	_, err = New(Config{BaseDir: e.dir})
	require.ErrorIs(t, err, wire.ErrBadRequest)
	_, err = New(Config{BaseDir: e.dir, Devices: e.devs, Proxies: []string{"p"}})
	require.ErrorIs(t, err, wire.ErrBadRequest)
}

// Damaged volume directories are not loaded (the volume reads as Clear and
// the error is logged); the others load.
func TestRecoverDamagedVolumes(t *testing.T) {
	e := newEnv(t, envOpts{})
	for _, d := range []string{"d0", "d1", "d2", "d3"} {
		e.addDevice(d, 64<<10, 256<<10, true)
	}
	ctx := context.Background()
	for i, v := range []string{"good", "badstate", "baddone", "badqueue"} {
		require.NoError(t, e.st.InitVol(ctx, v, "d"+string(rune('0'+i))))
	}
	base := e.st.Config().BaseDir
	e.stop()
	require.NoError(t, os.WriteFile(filepath.Join(base, "badstate", fileState), []byte("\x05Bogus"), 0o644))
	require.NoError(t, os.WriteFile(filepath.Join(base, "baddone", fileDone), []byte{1, 2, 3}, 0o644))
	q, err := os.ReadFile(filepath.Join(base, "badqueue", fileQueue))
	require.NoError(t, err)
	for i := range q {
		q[i] ^= 0x5a
	}
	require.NoError(t, os.WriteFile(filepath.Join(base, "badqueue", fileQueue), q, 0o644))
	e.start(envOpts{})
	require.Equal(t, []string{"good"}, e.st.VolumeNames())
	require.Equal(t, StateSyncReady, e.st.State("good"))
	for _, v := range []string{"badstate", "baddone", "badqueue"} {
		require.Equal(t, StateClear, e.st.State(v), v)
	}
}

// An overflowed Target is stopped; snapshot and start target are refused
// until a reset (system.md §3.6); start standby resets an overflowed log.
func TestOverflow(t *testing.T) {
	e := newEnv(t, envOpts{})
	dev, _ := e.addDevice("d0", 256<<10, 64<<10, true)
	ctx := context.Background()
	require.NoError(t, e.st.InitVol(ctx, "v", "d0"))
	require.NoError(t, e.st.FullBackup(ctx, "v", BackupOptions{}))
	e.proxies.setDown("p0", true)
	overflowLog(t, dev)
	waitFor(t, "overflowed Target stopped", 5*time.Second, func() bool { return e.st.State("v") == StateStopped })
	over, err := e.st.IsOverflow(ctx, "v")
	require.NoError(t, err)
	require.True(t, over)
	_, err = e.st.Snapshot(ctx, "v")
	require.ErrorIs(t, err, ErrOverflow)
	require.ErrorIs(t, err, CodeOverflow)
	require.ErrorIs(t, e.st.StartVol(ctx, "v", Target), ErrOverflow)
	require.Equal(t, StateStopped, e.st.State("v"))
	e.restart(envOpts{})
	require.Equal(t, StateStopped, e.st.State("v"), "persisted")

	require.NoError(t, e.st.ResetVol(ctx, "v", 0))
	require.False(t, dev.IsLogOverflow())

	// Overflow again while SyncReady: start standby resets the log.
	overflowLog(t, dev)
	require.NoError(t, e.st.StartVol(ctx, "v", Standby))
	require.False(t, dev.IsLogOverflow())
	done, q, err := e.st.Done("v")
	require.NoError(t, err)
	require.Equal(t, meta.LsidGid{Lsid: 0, Gid: 0}, meta.LsidGid{Lsid: done.Lsid, Gid: done.Gid})
	require.Empty(t, q)
}

func TestStandbyDiscardsWlogs(t *testing.T) {
	e := newEnv(t, envOpts{})
	dev, _ := e.addDevice("d0", 256<<10, 1<<20, true)
	ctx := context.Background()
	require.NoError(t, e.st.InitVol(ctx, "v", "d0"))
	require.NoError(t, e.st.StartVol(ctx, "v", Standby))
	// Twice the ring, in rounds of a quarter of it: each round waits until
	// the standby has released the log of the round before, so it must
	// release the log as it goes.
	ring := dev.LogCapacity() * 512
	for round := range 8 {
		start := dev.Lsids().Latest
		for i := range int(ring / 4 / (16 << 10)) {
			_, err := dev.WriteAt(bytes.Repeat([]byte{byte(round)}, 16<<10), int64(i%16)*(16<<10))
			require.NoError(t, err)
		}
		require.NoError(t, dev.Flush())
		waitFor(t, fmt.Sprintf("round %d released", round), 10*time.Second, func() bool { return dev.Lsids().Oldest >= start })
	}
	require.False(t, dev.IsLogOverflow())
	require.NoError(t, dev.Flush())
	waitFor(t, "standby released the log", 10*time.Second, func() bool {
		l := dev.Lsids()
		return l.Oldest == l.Latest
	})
	require.Empty(t, e.proxies.transfers(), "a standby sends nothing")
	require.Positive(t, e.st.Volumes().Actions("v")[ActionWlogRemove].LastStart.Unix())
}

func TestFullBackupFailures(t *testing.T) {
	e := newEnv(t, envOpts{})
	dev, _ := e.addDevice("d0", 256<<10, 1<<20, true)
	ctx := context.Background()
	require.NoError(t, e.st.InitVol(ctx, "v", "d0"))

	// Refused by the archive: nothing happens.
	e.archive.refuse = true
	var accepted atomic.Bool
	err := e.st.FullBackup(ctx, "v", BackupOptions{Accepted: func() { accepted.Store(true) }})
	require.Error(t, err)
	require.False(t, accepted.Load())
	require.Equal(t, StateSyncReady, e.st.State("v"))
	e.archive.refuse = false

	// Cut in the middle: back to SyncReady, not monitored.
	e.archive.failAt = 3
	err = e.st.FullBackup(ctx, "v", BackupOptions{BulkSize: 16 << 10, Accepted: func() { accepted.Store(true) }})
	require.Error(t, err)
	require.True(t, accepted.Load())
	require.Equal(t, StateSyncReady, e.st.State("v"))
	v, _ := e.st.volume("v")
	require.False(t, e.st.isMonitored(v))
	e.archive.failAt = 0

	checkBackupStops(t, e, StateFullSync, func(opt BackupOptions) error { return e.st.FullBackup(ctx, "v", opt) })
	require.Equal(t, StateSyncReady, e.st.State("v"))
	require.NoError(t, e.st.FullBackup(ctx, "v", BackupOptions{}))
	require.Equal(t, StateTarget, e.st.State("v"))
	require.Equal(t, 1, e.archive.backups)
	e.waitSent("v", e.archive.snap.GidE, dev)
}

// Snapshots queued while no proxy answers survive a restart and are sent
// after it; a graceful stop then start keeps sending.
func TestRestartResumesSending(t *testing.T) {
	e := newEnv(t, envOpts{})
	dev, _ := e.addDevice("d0", 256<<10, 1<<20, true)
	ctx := context.Background()
	require.NoError(t, e.st.InitVol(ctx, "v", "d0"))
	require.NoError(t, e.st.FullBackup(ctx, "v", BackupOptions{}))
	base := append([]byte(nil), e.archive.image...)
	e.proxies.setDown("p0", true)
	var gids []uint64
	for i := range 3 {
		_, err := dev.WriteAt(bytes.Repeat([]byte{byte(i + 1)}, 4096), int64(i)*4096)
		require.NoError(t, err)
		g, err := e.st.Snapshot(ctx, "v")
		require.NoError(t, err)
		gids = append(gids, g)
	}
	e.restart(envOpts{})
	_, q, err := e.st.Done("v")
	require.NoError(t, err)
	require.GreaterOrEqual(t, len(q), 3, "the queue survived")
	e.proxies.setDown("p0", false)
	e.st.Kick()
	e.waitSent("v", gids[2], dev)

	require.NoError(t, e.st.StopVol(ctx, "v", false))
	_, err = dev.WriteAt(bytes.Repeat([]byte{9}, 4096), 0)
	require.NoError(t, err)
	g, err := e.st.Snapshot(ctx, "v") // allowed while Stopped: queued only
	require.NoError(t, err)
	time.Sleep(50 * time.Millisecond)
	done, _, err := e.st.Done("v")
	require.NoError(t, err)
	require.Less(t, done.Gid, g, "a Stopped volume sends nothing")
	require.NoError(t, e.st.StartVol(ctx, "v", Target))
	e.waitSent("v", g, dev)
	img, gidLsid := checkChain(t, base, 0, 0, e.proxies.transfers(), func(int) bool { return false })
	require.Equal(t, readImage(t, dev), img)
	for _, g := range append(gids, g) {
		_, ok := gidLsid[g]
		require.True(t, ok, "gid %d is a boundary", g)
	}
}

func TestResizeGrows(t *testing.T) {
	e := newEnv(t, envOpts{})
	dev, f := e.addDevice("d0", 256<<10, 1<<20, true)
	ctx := context.Background()
	require.NoError(t, e.st.InitVol(ctx, "v", "d0"))
	require.NoError(t, os.Truncate(f.ddev, 512<<10))
	require.NoError(t, e.st.Resize(ctx, "v", 0))
	require.Equal(t, int64(512<<10), dev.Size())
	require.NoError(t, os.Truncate(f.ddev, 1<<20))
	require.NoError(t, e.st.Resize(ctx, "v", 768<<10/512))
	require.Equal(t, int64(768<<10), dev.Size())
}

type fakeGatherer struct {
	fakeArchive
	calls atomic.Int64
}

func (g *fakeGatherer) GatherLatestSnap(_ context.Context, _ string, vols []string) ([]SnapshotInfo, error) {
	g.calls.Add(1)
	out := make([]SnapshotInfo, len(vols))
	for i, v := range vols {
		out[i] = SnapshotInfo{Vol: v, Gid: 1, Timestamp: time.Unix(1_700_000_000, 0)}
	}
	return out, nil
}

func TestStatusAndGets(t *testing.T) {
	g := &fakeGatherer{}
	e := newEnv(t, envOpts{proxies: []string{"p0", "p1"}, mutate: func(c *Config) { c.ArchiveClient = g }})
	e.archive = &g.fakeArchive
	e.addDevice("d0", 256<<10, 1<<20, true)
	ctx := context.Background()
	require.NoError(t, e.st.InitVol(ctx, "v", "d0"))
	_, ok := e.st.LatestSnap("v")
	require.False(t, ok, "latest-snap is for Target volumes")
	require.NoError(t, e.st.FullBackup(ctx, "v", BackupOptions{}))
	gid, err := e.st.Snapshot(ctx, "v")
	require.NoError(t, err)
	info, ok := e.st.LatestSnap("v")
	require.True(t, ok)
	require.GreaterOrEqual(t, info.Gid, gid)
	require.Contains(t, LatestSnapLine(info), "name:v\tkind:storage\tgid:")

	u, err := e.st.LogUsage(ctx, "v")
	require.NoError(t, err)
	require.Equal(t, uint32(512), u.PBS)
	require.Regexp(t, `^name:v\tusage_pb:\d+\tcapacity_pb:\d+\tpbs:512$`, u.String())
	require.Len(t, e.st.LogUsageAll(ctx), 1)

	lines, err := e.st.VolStatus(ctx, "v")
	require.NoError(t, err)
	all := strings.Join(lines, "\n")
	for _, want := range []string{"state Target", "isUnderMonitoring true", "wdevPath d0", "-----DoneFile-----", "-----QueueFile-----", "stopState NotStopping"} {
		require.Contains(t, all, want)
	}
	lines, err = e.st.VolStatus(ctx, "nosuch")
	require.NoError(t, err)
	require.Contains(t, lines, "state Clear")

	glob := strings.Join(e.st.Status(ctx), "\n")
	for _, want := range []string{"-----Proxy-----", "addr:p0", "addr:p1", "-----Volume-----", "volume v state Target", "host a0"} {
		require.Contains(t, glob, want)
	}

	require.NoError(t, e.st.gatherTsDelta(ctx, g))
	tsd := e.st.TsDelta()
	require.Len(t, tsd, 1)
	require.Regexp(t, `^name:v\tdest:a0\tkind:storage\tdest_kind:archive\tgid:\d+\tts:\S+\tdest_gid:1\tdest_ts:\S+\tts_delta:-?\d+$`, tsd[0])
	require.Equal(t, "name:v\tdest:a0\tkind:storage\tdest_kind:archive\tgid:3\tts:---\tdest_ts:\tdest_gid:\tts_delta:",
		tsDeltaLine(SnapshotInfo{Vol: "v", Gid: 3}, SnapshotInfo{Gid: meta.InvalidGid}, "a0"))
}

var _ = server.Stopping
