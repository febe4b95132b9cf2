package proxy

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"os"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/server"
	"github.com/walb-go/walb/wire"
)

// stop graceful waits for a running send; stop force aborts it and keeps
// the files (§4.6).
func TestStopGracefulAndForce(t *testing.T) {
	for _, mode := range []StopMode{StopGraceful, StopForce} {
		t.Run(mode.String(), func(t *testing.T) {
			ctx := context.Background()
			arch := newFakeArchive()
			arch.hold = make(chan struct{})
			p := openTest(t, testConfig(t, arch))
			startedVolume(t, p, "v0", "a0")
			g := newWlogGen(512)
			_, err := receive(ctx, p, "v0", g.header(), bytes.NewReader(g.packs(t, rand.New(rand.NewPCG(1, 1)), 3)), testDiff(1, true))
			require.NoError(t, err)
			waitFor(t, "the send to run", func() bool { return p.vols.NumAction("v0", actionName("a0")) == 1 })
			done := make(chan error, 1)
			go func() { done <- p.Stop(ctx, "v0", mode) }()
			if mode == StopGraceful {
				waitFor(t, "the stop to begin", func() bool { return p.vols.StopState("v0") == server.Stopping })
				select {
				case err := <-done:
					t.Fatalf("graceful stop returned %v while a send runs", err)
				default:
				}
				require.Equal(t, StateStarted, p.State("v0"))
				close(arch.hold)
				require.NoError(t, <-done)
				require.Len(t, arch.received(), 1)
				require.Equal(t, 0, queued(t, p, "v0", "a0"))
			} else {
				require.NoError(t, <-done)
				require.Empty(t, arch.received())
				require.Equal(t, 1, queued(t, p, "v0", "a0"), "an aborted send keeps its files")
			}
			require.Equal(t, StateStopped, p.State("v0"))
			waitFor(t, "queued sends to be dropped", func() bool { return taskState(p, "v0", "a0") == "" })
			// A later start sends what is left.
			if mode == StopForce {
				close(arch.hold)
			}
			require.NoError(t, p.Start(ctx, "v0"))
			waitFor(t, "the queue to empty", func() bool { return queued(t, p, "v0", "a0") == 0 })
		})
	}
}

// A force stop aborts a running receive.
func TestStopForceAbortsReceive(t *testing.T) {
	ctx := context.Background()
	p := openTest(t, testConfig(t, newFakeArchive()))
	startedVolume(t, p, "v0", "a0")
	g := newWlogGen(512)
	r, err := p.BeginReceive(ctx, "v0", g.header())
	require.NoError(t, err)
	defer r.Abort()
	pr, pw := io.Pipe()
	// As the network layer does: a canceled transfer ends a blocked read.
	go func() {
		<-r.Context().Done()
		pw.CloseWithError(r.Context().Err())
	}()
	read := make(chan error, 1)
	go func() { read <- r.ReadPacks(pr) }()
	_, err = pw.Write(g.packs(t, rand.New(rand.NewPCG(1, 1)), 2))
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { done <- p.Stop(ctx, "v0", StopForce) }()
	require.ErrorIs(t, <-read, context.Canceled)
	pw.Close()
	require.NoError(t, <-done)
	require.Equal(t, StateStopped, p.State("v0"))
	require.Empty(t, dirNames(t, volPath(p, "v0", "received")))
}

// stop empty sends everything, then stops; with an archive that refuses
// for good it times out and rolls back (§4.6).
func TestStopEmpty(t *testing.T) {
	ctx := context.Background()
	arch := newFakeArchive()
	arch.setReply(func(WdiffRequest) error { return remote(wire.ErrSyncing) })
	cfg := testConfig(t, arch)
	cfg.Delay, cfg.MaxDelay = time.Hour, time.Hour
	p := openTest(t, cfg)
	startedVolume(t, p, "v0", "a0", "a1")
	g := newWlogGen(512)
	r := rand.New(rand.NewPCG(4, 4))
	for k := uint64(1); k <= 3; k++ {
		_, err := receive(ctx, p, "v0", g.header(), bytes.NewReader(g.packs(t, r, 2)), testDiff(k, true))
		require.NoError(t, err)
	}
	arch.setReply(nil)
	require.NoError(t, p.Kick(ctx, "", ""))
	require.NoError(t, p.Stop(ctx, "v0", StopEmpty))
	require.Equal(t, StateStopped, p.State("v0"))
	require.Equal(t, 0, queued(t, p, "v0", "a0"))
	require.Equal(t, 0, queued(t, p, "v0", "a1"))
	require.Equal(t, meta.CleanSnap(3), arch.latestOf("archive-a0:1", "v0"))
	require.Equal(t, meta.CleanSnap(3), arch.latestOf("archive-a1:2", "v0"))

	// An archive that refuses for good: the stop times out and rolls back.
	require.NoError(t, p.Start(ctx, "v0"))
	arch.setReply(func(WdiffRequest) error { return remote(wire.ErrArchiveNotFound) })
	_, err := receive(ctx, p, "v0", g.header(), bytes.NewReader(g.packs(t, r, 2)), testDiff(4, true))
	require.NoError(t, err)
	p.cfg.StopTimeout = 100 * time.Millisecond
	require.ErrorIs(t, p.Stop(ctx, "v0", StopEmpty), ErrTimeout)
	require.Equal(t, StateStarted, p.State("v0"))
	require.Equal(t, server.NotStopping, p.vols.StopState("v0"))
}

// archive-info add/update/get/list/delete and their files (§4.2, §4.3).
func TestArchiveInfoCommands(t *testing.T) {
	ctx := context.Background()
	p := openTest(t, testConfig(t, newFakeArchive()))
	a0, err := ParseArchiveInfo([]string{"127.0.0.1:5000", "zstd:3:2", "7"})
	require.NoError(t, err)
	require.NoError(t, p.AddArchiveInfo(ctx, "v0", "a0", a0, false))
	require.ErrorIs(t, p.AddArchiveInfo(ctx, "v0", "a0", a0, false), ErrArchiveExists)
	require.ErrorIs(t, p.AddArchiveInfo(ctx, "v0", "a0", a0, false), wire.ErrExists)
	got, err := p.ArchiveInfo("v0", "a0")
	require.NoError(t, err)
	require.Equal(t, a0, got)
	require.Equal(t, "127.0.0.1:5000 zstd:3:2 7", got.String())
	a1, err := ParseArchiveInfo([]string{"[::1]:6000"})
	require.NoError(t, err)
	require.NoError(t, p.AddArchiveInfo(ctx, "v0", "a1", a1, true)) // update creates too
	names, err := p.ArchiveNames("v0")
	require.NoError(t, err)
	require.Equal(t, []string{"a0", "a1"}, names)
	require.Equal(t, []string{"a0.archive", "a1.archive", "received", "sendto", "size"}, dirNames(t, volPath(p, "v0")))
	require.Equal(t, []string{"a0", "a1"}, dirNames(t, volPath(p, "v0", "sendto")))
	var back ArchiveInfo
	require.NoError(t, meta.Load(volPath(p, "v0", "a1.archive"), &back))
	require.Equal(t, a1, back)

	a0.Delay = 0
	require.NoError(t, p.AddArchiveInfo(ctx, "v0", "a0", a0, true))
	got, _ = p.ArchiveInfo("v0", "a0")
	require.Equal(t, time.Duration(0), got.Delay)

	_, err = p.ArchiveInfo("v0", "a9")
	require.ErrorIs(t, err, ErrNoArchive)
	require.ErrorIs(t, p.DeleteArchiveInfo(ctx, "v0", "a9"), ErrNoArchive)
	require.NoError(t, p.DeleteArchiveInfo(ctx, "v0", "a0"))
	require.Equal(t, StateStopped, p.State("v0"))
	require.Equal(t, []string{"a1"}, dirNames(t, volPath(p, "v0", "sendto")))
	require.NoError(t, p.DeleteArchiveInfo(ctx, "v0", "a1"))
	require.Equal(t, StateClear, p.State("v0"))
	_, err = os.Stat(volPath(p, "v0"))
	require.True(t, os.IsNotExist(err), "the last delete clears the volume")
	names, err = p.ArchiveNames("v0")
	require.NoError(t, err)
	require.Empty(t, names)
	require.Empty(t, p.VolumeNames())
}

// The archive-info syntax and the file's byte layout.
func TestParseArchiveInfo(t *testing.T) {
	good := []struct {
		args []string
		want string
	}{
		{[]string{"host:1"}, "host:1 snappy:0:1 0"},
		{[]string{"10.0.0.1:5000", "none"}, "10.0.0.1:5000 none:0:1 0"},
		{[]string{"h:65535", "gzip:9:4", "4294967295"}, "h:65535 gzip:9:4 4294967295"},
		{[]string{"[fe80::1]:5", "lz4:0:1", "3"}, "[fe80::1]:5 lz4:0:1 3"},
		{[]string{"h:2", "lzma:0:1"}, "h:2 lzma:0:1 0"},
		{[]string{"h:2", "zstd:9:255"}, "h:2 zstd:9:255 0"},
	}
	for _, tc := range good {
		a, err := ParseArchiveInfo(tc.args)
		require.NoError(t, err, "%q", tc.args)
		require.Equal(t, tc.want, a.String())
		b, err := meta.Marshal(a)
		require.NoError(t, err)
		var back ArchiveInfo
		require.NoError(t, meta.Unmarshal(b, &back))
		require.Equal(t, a, back)
	}
	bad := [][]string{
		nil, {}, {"host"}, {"host:0"}, {"host:65536"}, {":5"}, {"host:x"}, {"h:1", "brotli"},
		{"h:1", "zstd:10"}, {"h:1", "snappy:0:0"}, {"h:1", "snappy:0:256"}, {"h:1", "snappy", "-1"},
		{"h:1", "snappy", "4294967296"}, {"h:1", "snappy", "1", "extra"}, {"h:1", "snappy", "1s"},
	}
	for _, args := range bad {
		_, err := ParseArchiveInfo(args)
		require.ErrorIs(t, err, ErrBadArchiveInfo, "%q", args)
	}
	// string host, u16 port (raw LE), u8 type, u8 level, u8 cpus, u32 delay.
	a := ArchiveInfo{Host: "ab", Port: 0x1388, Compression: DefaultCompression, Delay: 300 * time.Second}
	b, err := meta.Marshal(a)
	require.NoError(t, err)
	require.Equal(t, []byte{2, 'a', 'b', 0x88, 0x13, 2, 0, 1, 0x81, 0x2c, 0x01}, b)
}

// Status and get targets (§4.7).
func TestStatusAndGets(t *testing.T) {
	ctx := context.Background()
	arch := newFakeArchive()
	arch.setReply(func(WdiffRequest) error { return remote(wire.ErrSyncing) })
	cfg := testConfig(t, arch)
	cfg.Delay, cfg.MaxDelay = time.Hour, time.Hour
	p := openTest(t, cfg)
	startedVolume(t, p, "v0", "a0", "a1")
	g := newWlogGen(512)
	r := rand.New(rand.NewPCG(8, 8))
	for k := uint64(1); k <= 2; k++ {
		_, err := receive(ctx, p, "v0", g.header(), bytes.NewReader(g.packs(t, r, 2)), testDiff(k, true))
		require.NoError(t, err)
	}
	lines, err := p.LatestSnap("v0")
	require.NoError(t, err)
	ts := meta.FormatPrettyTime(testDiff(2, true).Timestamp)
	require.Equal(t, []string{
		"name:v0\tkind:proxy\tarchive:a0\tgid:2\ttimestamp:" + ts,
		"name:v0\tkind:proxy\tarchive:a1\tgid:2\ttimestamp:" + ts,
	}, lines)
	all, err := p.LatestSnap("")
	require.NoError(t, err)
	require.Equal(t, lines, all)
	_, err = p.LatestSnap("nope")
	require.ErrorIs(t, err, server.ErrWrongState)

	diffs, err := p.ProxyDiff("v0", "a0")
	require.NoError(t, err)
	require.Len(t, diffs, 2)
	require.Contains(t, diffs[0], "|0|-->|1| M-")
	recv, err := p.ProxyDiff("v0", "")
	require.NoError(t, err)
	require.Empty(t, recv)

	st, err := p.Status(ctx, []string{"v0"})
	require.NoError(t, err)
	for _, want := range []string{"state Started", "sizeLb 8192", "numDiff 0", "  archive a0", "  host archive-a0:1",
		"  compression snappy:0:1", "  numDiff 2", "  isWdiffSendError 0", "  wdiffSendDelay 0"} {
		require.Contains(t, st, want)
	}
	st, err = p.Status(ctx, []string{"nope"})
	require.NoError(t, err)
	require.Equal(t, []string{"hostType proxy", "volume nope", "state Clear"}, st)
	st, err = p.Status(ctx, nil)
	require.NoError(t, err)
	require.Len(t, st, 1+1+2)
	_, err = p.Status(ctx, []string{"a", "b"})
	require.ErrorIs(t, err, server.ErrBadArgs)
	require.Equal(t, []string{"v0"}, p.VolumeNames())
}

// resize rewrites size, in Stopped only.
func TestResize(t *testing.T) {
	ctx := context.Background()
	p := openTest(t, testConfig(t, newFakeArchive()))
	require.NoError(t, p.AddArchiveInfo(ctx, "v0", "a0", ArchiveInfo{Host: "h", Port: 1, Compression: DefaultCompression}, false))
	require.NoError(t, p.Resize(ctx, "v0", 12345))
	size, err := p.SizeLb("v0")
	require.NoError(t, err)
	require.EqualValues(t, 12345, size)
	d, err := loadSize(volDir(volPath(p, "v0")))
	require.NoError(t, err)
	require.EqualValues(t, 12345, d)
}
