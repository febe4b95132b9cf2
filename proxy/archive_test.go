package proxy

import (
	"bytes"
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/archive"
	"github.com/walb-go/walb/imagestore"
	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/server"
	"github.com/walb-go/walb/wire"
)

// startArchive runs a real archive server on 127.0.0.1:0 with volume vol
// initialized and fully synced to a zero image of uuid at |0|.
func startArchive(t *testing.T, vol string, uuid meta.UUID) string {
	t.Helper()
	ctx := context.Background()
	root := t.TempDir()
	base, imgs := filepath.Join(root, "base"), filepath.Join(root, "images")
	require.NoError(t, os.MkdirAll(base, 0o755))
	require.NoError(t, os.MkdirAll(imgs, 0o755))
	store, err := imagestore.OpenDir(ctx, imgs, &imagestore.DirOptions{Logger: testLogger()})
	require.NoError(t, err)
	s, err := archive.NewServer(server.Config{ID: "a0", Addr: "127.0.0.1:0", Logger: testLogger()},
		archive.Config{BaseDir: base, Images: store, Logger: testLogger(), Discard: archive.DiscardZero})
	require.NoError(t, err)
	require.NoError(t, s.Listen())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		s.Shutdown(server.Force)
		require.NoError(t, <-done)
	})
	addr := s.Addr().String()
	callOK(t, addr, "init-vol", vol)
	zero := make([]byte, testVolSizeLb*512)
	require.NoError(t, archive.SendFullSync(ctx, addr, vol, bytes.NewReader(zero), testVolSizeLb, uuid,
		func(context.Context) (meta.Snap, error) { return meta.CleanSnap(0), nil }, archive.FullSyncOptions{ClientOptions: archive.ClientOptions{ClientID: "s0"}}))
	require.Equal(t, "Archived", getString(t, addr, "state", vol))
	return addr
}

// archiveLatest returns the archive's latest snapshot line of vol.
func archiveLatest(t *testing.T, addr, vol string) string {
	l := getStrings(t, addr, "get", "latest-snap", vol)
	require.Len(t, l, 1)
	return l[0]
}

// restoreImage restores gid on the archive and returns the image.
func restoreImage(t *testing.T, addr, vol string, gid uint64) []byte {
	r, err := call(t, addr, nil, "restore", vol, strconv.FormatUint(gid, 10))
	require.NoError(t, err)
	require.Equal(t, wire.ReplyAccept, r)
	waitFor(t, "the restore", func() bool {
		for _, g := range getStrings(t, addr, "get", "restored", vol) {
			if g == strconv.FormatUint(gid, 10) {
				return true
			}
		}
		return false
	})
	path := getString(t, addr, "restored-path", vol, strconv.FormatUint(gid, 10))
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	return b
}

// storage -> proxy -> archive over TCP with the real archive: the diffs
// arrive merged and restore to the image the storage wrote; duplicates,
// a foreign device and a grown volume get the archive's replies and the
// proxy's reactions of §4.5.
func TestWithRealArchive(t *testing.T) {
	ctx := context.Background()
	g := newWlogGen(512)
	aaddr := startArchive(t, "v0", g.uuid)

	cfg := testConfig(t, NewArchiveClient(archive.ClientOptions{ClientID: "p0"}))
	cfg.MaxWdiffSendFiles = 3
	ps, paddr := startServer(t, cfg)
	callOK(t, paddr, CmdArchiveInfo, "add", "v0", "a0", aaddr, "zstd:1:2")
	callOK(t, paddr, CmdStart, "v0")

	// The archive volume is stopped while the wlogs arrive: the proxy
	// retries on "stopped", and sends merged diffs once it starts.
	r0, err := call(t, aaddr, nil, "stop", "v0")
	require.NoError(t, err)
	require.Equal(t, wire.ReplyAccept, r0)
	waitFor(t, "the archive to stop", func() bool { return getString(t, aaddr, "state", "v0") == "Stopped" })
	cl := &Client{ID: "s0"}
	r := rand.New(rand.NewPCG(40, 41))
	const n = 9
	var last []byte
	for k := uint64(1); k <= n; k++ {
		last = g.packs(t, r, 5)
		require.NoError(t, cl.SendWlog(ctx, paddr, "v0", g.header(), bytes.NewReader(last), testDiff(k, k != 5)))
	}
	waitFor(t, "a refused send", func() bool { return taskState(ps.Proxy(), "v0", "a0") == "delayed" })
	require.Equal(t, n, queued(t, ps.Proxy(), "v0", "a0"))
	callOK(t, aaddr, "start", "v0")
	waitFor(t, "the queue to drain", func() bool { return queued(t, ps.Proxy(), "v0", "a0") == 0 })
	require.Contains(t, archiveLatest(t, aaddr, "v0"), "gid:9")
	// -wn 3, and diff 5 starts at an explicit snapshot.
	var ranges []string
	for _, l := range getStrings(t, aaddr, "get", "diff", "v0") {
		ranges = append(ranges, strings.Fields(l)[0])
	}
	require.Equal(t, []string{"|0|-->|3|", "|3|-->|4|", "|4|-->|7|", "|7|-->|9|"}, ranges)
	require.Equal(t, g.img, restoreImage(t, aaddr, "v0", n))

	// A resend of the last range (a lost ACK): too-old-diff, deleted.
	require.NoError(t, cl.SendWlog(ctx, paddr, "v0", g.header(), bytes.NewReader(last), testDiff(n, true)))
	waitFor(t, "the duplicate to go", func() bool { return queued(t, ps.Proxy(), "v0", "a0") == 0 })
	require.False(t, sendError(t, ps.Proxy(), "v0", "a0"))
	require.Contains(t, archiveLatest(t, aaddr, "v0"), "gid:9")

	// Another device: different-uuid, deleted.
	other := g.header()
	other.UUID[0] ^= 0xff
	require.NoError(t, cl.SendWlog(ctx, paddr, "v0", other, bytes.NewReader(nil), testDiff(n+1, true)))
	waitFor(t, "the foreign diff to go", func() bool { return queued(t, ps.Proxy(), "v0", "a0") == 0 })
	require.Contains(t, archiveLatest(t, aaddr, "v0"), "gid:9")

	// The storage grew: smaller-lv-size, a send error until the archive
	// grows and the proxy is kicked (walb-tools scenario m3).
	grown := g.header()
	grown.SizeLb = 2 * testVolSizeLb
	require.NoError(t, cl.SendWlog(ctx, paddr, "v0", grown, bytes.NewReader(g.packs(t, r, 2)), testDiff(n+1, true)))
	waitFor(t, "the send error", func() bool { return sendError(t, ps.Proxy(), "v0", "a0") })
	var isErr bool
	_, err = call(t, paddr, func(c *wire.Conn) (err error) { isErr, err = c.RecvBool(ctx); return }, "get", GetIsWdiffSendError, "v0", "a0")
	require.NoError(t, err)
	require.True(t, isErr)
	require.Equal(t, 1, queued(t, ps.Proxy(), "v0", "a0"))
	callOK(t, aaddr, "resize", "v0", strconv.Itoa(2*testVolSizeLb*512))
	callOK(t, paddr, server.CmdKick, "v0", "a0")
	waitFor(t, "the grown diff", func() bool { return queued(t, ps.Proxy(), "v0", "a0") == 0 })
	require.False(t, sendError(t, ps.Proxy(), "v0", "a0"))
	require.True(t, strings.Contains(archiveLatest(t, aaddr, "v0"), "gid:10"))
	img := restoreImage(t, aaddr, "v0", n+1)
	require.Equal(t, g.img, img[:len(g.img)])
	require.Equal(t, make([]byte, len(img)-len(g.img)), img[len(g.img):])
}
