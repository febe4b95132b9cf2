package proxy

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/wire"
)

// §7: at restart the volumes load as Stopped from their directories and
// start: what a crash left in received/ is handed to the queues, temporary
// files go, and what interrupted deletes and clears left is removed.
func TestRecoverFinishesInterruptedWork(t *testing.T) {
	ctx := context.Background()
	arch := newFakeArchive()
	arch.setReply(func(WdiffRequest) error { return remote(wire.ErrSyncing) })
	cfg := testConfig(t, arch)
	cfg.Delay, cfg.MaxDelay = time.Hour, time.Hour
	p, err := Open(ctx, cfg)
	require.NoError(t, err)
	startedVolume(t, p, "v0", "a0", "a1")
	g := newWlogGen(512)
	r := rand.New(rand.NewPCG(31, 32))
	var files [][]byte
	for k := uint64(1); k <= 2; k++ {
		_, err := receive(ctx, p, "v0", g.header(), bytes.NewReader(g.packs(t, r, 3)), testDiff(k, true))
		require.NoError(t, err)
		name, _ := meta.FileName(testDiff(k, true))
		b, err := os.ReadFile(volPath(p, "v0", "sendto", "a0", name))
		require.NoError(t, err)
		files = append(files, b)
	}
	require.NoError(t, p.Close())

	// A crash after step 3 of §4.4: diff 3 made durable in received/ only.
	// Build diff 3's file by converting packs through a scratch proxy that
	// cannot send.
	scratchArch := newFakeArchive()
	scratchArch.setReply(func(WdiffRequest) error { return remote(wire.ErrSyncing) })
	sc := testConfig(t, scratchArch)
	sc.Delay, sc.MaxDelay = time.Hour, time.Hour
	scratch := openTest(t, sc)
	startedVolume(t, scratch, "s", "a0")
	_, err = receive(ctx, scratch, "s", g.header(), bytes.NewReader(g.packs(t, r, 3)), testDiff(3, true))
	require.NoError(t, err)
	name3, _ := meta.FileName(testDiff(3, true))
	b3, err := os.ReadFile(volPath(scratch, "s", "sendto", "a0", name3))
	require.NoError(t, err)
	files = append(files, b3)
	require.NoError(t, os.WriteFile(volPath(p, "v0", "received", name3), b3, 0o644))
	// And the link to a0 was already made before the crash.
	require.NoError(t, os.Link(volPath(p, "v0", "received", name3), volPath(p, "v0", "sendto", "a0", name3)))

	// Temporary files, an interrupted clear, a volume without archive
	// info (interrupted add), a queue without archive info (interrupted
	// delete), a foreign file name and a non-volume directory.
	require.NoError(t, os.WriteFile(volPath(p, "v0", "received", "tmpAbC123"), []byte("x"), 0o644))
	require.NoError(t, os.WriteFile(volPath(p, "v0", "sendto", "a1", "tmpXyZ789"), []byte("x"), 0o644))
	require.NoError(t, os.MkdirAll(filepath.Join(cfg.BaseDir, "gone.clearing", "received"), 0o755))
	require.NoError(t, createVolDir(volDir(filepath.Join(cfg.BaseDir, "half"))))
	require.NoError(t, os.MkdirAll(volPath(p, "v0", "sendto", "old"), 0o755))
	require.NoError(t, os.WriteFile(volPath(p, "v0", "sendto", "old", name3), b3, 0o644))
	require.NoError(t, os.WriteFile(volPath(p, "v0", "sendto", "a0", "junk.wdiff"), []byte("x"), 0o644))
	require.NoError(t, os.Mkdir(filepath.Join(cfg.BaseDir, "not_a_volume"), 0o755))

	arch.setReply(nil)
	p = openTest(t, cfg)
	require.Equal(t, []string{"v0"}, p.VolumeNames())
	require.Equal(t, StateStarted, p.State("v0"))
	require.Equal(t, []string{"not_a_volume", "v0"}, dirNames(t, cfg.BaseDir))
	require.Equal(t, []string{"a0", "a1"}, dirNames(t, volPath(p, "v0", "sendto")))
	require.Empty(t, dirNames(t, volPath(p, "v0", "received")))
	waitFor(t, "both queues to empty", func() bool { return queued(t, p, "v0", "a0")+queued(t, p, "v0", "a1") == 0 })
	require.Equal(t, meta.CleanSnap(3), arch.latestOf("archive-a0:1", "v0"))
	require.Equal(t, meta.CleanSnap(3), arch.latestOf("archive-a1:2", "v0"))
	require.Equal(t, []string{"junk.wdiff"}, dirNames(t, volPath(p, "v0", "sendto", "a0")), "a foreign file is left alone")
	require.Empty(t, dirNames(t, volPath(p, "v0", "sendto", "a1")))
	var got [][]byte
	for _, s := range arch.received() {
		if s.req.Addr == "archive-a1:2" {
			got = append(got, s.data)
		}
	}
	require.Equal(t, applyAll(t, files), applyAll(t, got))
}

// -stop: volumes load as Stopped and nothing is sent until start.
func TestRecoverStopped(t *testing.T) {
	ctx := context.Background()
	arch := newFakeArchive()
	arch.setReply(func(WdiffRequest) error { return remote(wire.ErrSyncing) })
	cfg := testConfig(t, arch)
	cfg.Delay, cfg.MaxDelay = time.Hour, time.Hour
	p, err := Open(ctx, cfg)
	require.NoError(t, err)
	startedVolume(t, p, "v0", "a0")
	_, err = receive(ctx, p, "v0", newWlogGen(512).header(), bytes.NewReader(nil), testDiff(1, true))
	require.NoError(t, err)
	require.NoError(t, p.Close())

	arch.setReply(nil)
	cfg.StartStopped = true
	p = openTest(t, cfg)
	require.Equal(t, StateStopped, p.State("v0"))
	require.Equal(t, 1, queued(t, p, "v0", "a0"))
	require.Equal(t, "", taskState(p, "v0", "a0"))
	require.NoError(t, p.Start(ctx, "v0"))
	waitFor(t, "the send", func() bool { return queued(t, p, "v0", "a0") == 0 })
}

// Unreadable metadata fails the recovery, naming the file.
func TestRecoverRefusesCorruptMetadata(t *testing.T) {
	ctx := context.Background()
	cfg := testConfig(t, newFakeArchive())
	p, err := Open(ctx, cfg)
	require.NoError(t, err)
	require.NoError(t, p.AddArchiveInfo(ctx, "v0", "a0", ArchiveInfo{Host: "h", Port: 1, Compression: DefaultCompression}, false))
	require.NoError(t, p.Close())
	path := filepath.Join(cfg.BaseDir, "v0", "a0.archive")
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	b[1] ^= 0xff
	require.NoError(t, os.WriteFile(path, b, 0o644))
	_, err = Open(ctx, cfg)
	require.ErrorIs(t, err, meta.ErrCorrupt)
	require.ErrorContains(t, err, "a0")

	_, err = Open(ctx, Config{BaseDir: filepath.Join(cfg.BaseDir, "missing"), Archive: newFakeArchive()})
	require.Error(t, err)
	_, err = New(Config{BaseDir: cfg.BaseDir})
	require.Error(t, err, "no archive client")
}
