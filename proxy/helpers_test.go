package proxy

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pkg/errors"
	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/checksum"
	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/wdiff"
	"github.com/walb-go/walb/wire"
	"github.com/walb-go/walb/wlog"
)

// testVolSizeLb is the size of the volumes the tests write (4 MiB).
const testVolSizeLb = 8192

// baseTime stamps the generated diffs.
var baseTime = time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)

// wlogGen makes logpack streams as a storage would send them, and keeps the
// image they produce (discards and all-zero writes read as zeros).
type wlogGen struct {
	pbs, salt uint32
	uuid      meta.UUID
	lsid      uint64
	img       []byte
}

func newWlogGen(pbs uint32) *wlogGen {
	g := &wlogGen{pbs: pbs, salt: 0x5a17, lsid: 1000, img: make([]byte, testVolSizeLb*512)}
	for i := range g.uuid {
		g.uuid[i] = byte(i + 1)
	}
	return g
}

func (g *wlogGen) header() WlogHeader {
	return WlogHeader{UUID: g.uuid, PBS: g.pbs, Salt: g.salt, SizeLb: testVolSizeLb, MaxLogSizePb: 1 << 16}
}

// packs returns nPacks logpacks starting at g.lsid built from r, applying
// their writes to g.img. Some IOs are all zero, some are discards, and a
// padding record appears now and then.
func (g *wlogGen) packs(t testing.TB, r *rand.Rand, nPacks int) []byte {
	t.Helper()
	var file bytes.Buffer
	w, err := wlog.NewWriter(&file, wlog.FileHeader{Salt: g.salt, PBS: g.pbs, UUID: wlog.UUID(g.uuid), BeginLsid: g.lsid, EndLsid: wlog.InvalidLsid})
	require.NoError(t, err)
	for range nPacks {
		h := wlog.NewPackHeader(g.pbs, g.lsid)
		var ios [][]byte
		for k := 0; k < 1+r.IntN(6); k++ {
			lb := uint32(1 + r.IntN(24))
			off := uint64(r.IntN(testVolSizeLb - int(lb)))
			if r.IntN(8) == 0 {
				if h.AddDiscard(off, lb) == nil {
					clear(g.img[off*512 : (off+uint64(lb))*512])
				}
				continue
			}
			buf := make([]byte, lb*512)
			if r.IntN(6) != 0 {
				for i := range buf {
					buf[i] = byte(r.Uint32())
				}
			}
			ringLeft := uint64(0)
			if r.IntN(10) == 0 {
				ringLeft = 1 // force a padding record before this IO
			}
			if h.AddNormal(off, lb, checksum.Sum(buf, g.salt), ringLeft) != nil {
				break
			}
			copy(g.img[off*512:], buf)
			ios = append(ios, buf)
		}
		if len(h.Records) == 0 {
			continue
		}
		var data []byte
		i := 0
		for _, rec := range h.Records {
			if !rec.HasData() {
				continue
			}
			blk := make([]byte, rec.DataPBs(g.pbs)*uint64(g.pbs))
			if rec.IsNormal() {
				copy(blk, ios[i])
				i++
			}
			data = append(data, blk...)
		}
		require.NoError(t, w.WritePack(h, data))
		g.lsid = h.NextLsid()
	}
	return file.Bytes()[wlog.FileHeaderSize:]
}

// testDiff is the diff of the k-th transfer of a storage: |k-1| --> |k|.
func testDiff(k uint64, mergeable bool) meta.Diff {
	d := meta.CleanDiff(k-1, k)
	d.Mergeable = mergeable
	d.Timestamp = baseTime.Add(time.Duration(k) * time.Second)
	return d
}

// receive runs one whole wlog transfer into p.
func receive(ctx context.Context, p *Proxy, vol string, hdr WlogHeader, packs io.Reader, d meta.Diff) (meta.Diff, error) {
	r, err := p.BeginReceive(ctx, vol, hdr)
	if err != nil {
		return meta.Diff{}, err
	}
	defer r.Abort()
	if err := r.ReadPacks(packs); err != nil {
		return meta.Diff{}, err
	}
	return r.Commit(d)
}

// sentWdiff is one transfer an archive accepted.
type sentWdiff struct {
	req  WdiffRequest
	data []byte
}

// fakeArchive is an in-memory ArchiveClient. Without a reply function it
// behaves like an archive whose volumes start at |0|: accept what applies
// to the latest snapshot, too-old-diff / too-new-diff otherwise.
type fakeArchive struct {
	mu     sync.Mutex
	reply  func(req WdiffRequest) error
	latest map[string]meta.Snap // by "addr vol"
	calls  []WdiffRequest
	got    []sentWdiff
	hold   chan struct{} // when set, accepted transfers wait for it (or ctx)
}

func newFakeArchive() *fakeArchive { return &fakeArchive{latest: map[string]meta.Snap{}} }

func remote(code wire.Code) error { return &wire.RemoteError{Code: code, Msg: string(code)} }

func (f *fakeArchive) SendWdiff(ctx context.Context, req WdiffRequest, r io.Reader) error {
	f.mu.Lock()
	f.calls = append(f.calls, req)
	reply := f.reply
	key := req.Addr + " " + req.Vol
	latest, ok := f.latest[key]
	if !ok {
		latest = meta.CleanSnap(0)
	}
	hold := f.hold
	f.mu.Unlock()
	if reply != nil {
		if err := reply(req); err != nil {
			return err
		}
	} else {
		switch meta.RelationOf(latest, req.Diff) {
		case meta.TooOld:
			return remote(wire.ErrTooOldDiff)
		case meta.TooNew:
			return remote(wire.ErrTooNewDiff)
		}
	}
	data, err := io.ReadAll(r)
	if err != nil {
		return errors.Wrap(err, "fake archive: read stream")
	}
	if err := checkSorted(data); err != nil {
		return err
	}
	if hold != nil {
		select {
		case <-hold:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if next, err := latest.Apply(req.Diff); err == nil {
		f.latest[key] = next
	}
	f.got = append(f.got, sentWdiff{req: req, data: data})
	return nil
}

func (f *fakeArchive) setReply(fn func(req WdiffRequest) error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.reply = fn
}

func (f *fakeArchive) received() []sentWdiff {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]sentWdiff(nil), f.got...)
}

func (f *fakeArchive) numCalls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.calls)
}

func (f *fakeArchive) latestOf(addr, vol string) meta.Snap {
	f.mu.Lock()
	defer f.mu.Unlock()
	s, ok := f.latest[addr+" "+vol]
	if !ok {
		return meta.CleanSnap(0)
	}
	return s
}

// checkSorted verifies that data is a whole, valid sorted wdiff.
func checkSorted(data []byte) error {
	r, err := wdiff.NewSortedReader(bytes.NewReader(data))
	if err != nil {
		return err
	}
	for {
		if _, err := r.Next(); err == io.EOF {
			return nil
		} else if err != nil {
			return err
		}
	}
}

// memImage is an io.WriterAt over a byte slice.
type memImage []byte

func (m memImage) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > int64(len(m)) {
		return 0, errors.Errorf("write [%d, +%d) beyond %d", off, len(p), len(m))
	}
	return copy(m[off:], p), nil
}

// applyAll applies wdiff images in order to a zero image.
func applyAll(t testing.TB, files [][]byte) []byte {
	t.Helper()
	img := make(memImage, testVolSizeLb*512)
	for _, data := range files {
		r, err := wdiff.NewReader(bytes.NewReader(data), int64(len(data)))
		require.NoError(t, err)
		_, err = wdiff.Apply(context.Background(), r, img, wdiff.ApplyOptions{ZeroDiscard: true})
		require.NoError(t, err)
	}
	return img
}

// testConfig returns a configuration with short delays for tests.
func testConfig(t testing.TB, arch ArchiveClient) Config {
	return Config{
		BaseDir:     t.TempDir(),
		Archive:     arch,
		Delay:       5 * time.Millisecond,
		MaxDelay:    20 * time.Millisecond,
		StopTimeout: 10 * time.Second,
		Logger:      testLogger(),
	}
}

// testLogger discards logs unless WALB_TEST_LOG is set.
func testLogger() *slog.Logger {
	if os.Getenv("WALB_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// openTest opens a proxy and closes it at the end of the test.
func openTest(t testing.TB, cfg Config) *Proxy {
	t.Helper()
	p, err := Open(context.Background(), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { p.Close() })
	return p
}

// startedVolume makes vol Started with the given archives (addresses
// archive-host:1..n).
func startedVolume(t testing.TB, p *Proxy, vol string, archives ...string) {
	t.Helper()
	ctx := context.Background()
	for i, a := range archives {
		info := ArchiveInfo{Host: "archive-" + a, Port: uint16(i + 1), Compression: DefaultCompression}
		require.NoError(t, p.AddArchiveInfo(ctx, vol, a, info, false))
	}
	require.NoError(t, p.Start(ctx, vol))
}

// waitFor polls cond until it holds; it fails the test after 20 s.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// dirNames lists a directory's entries, sorted.
func dirNames(t testing.TB, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	sort.Strings(names)
	return names
}

func wdiffNames(t testing.TB, dir string) []string {
	var out []string
	for _, n := range dirNames(t, dir) {
		if strings.HasSuffix(n, ".wdiff") {
			out = append(out, n)
		}
	}
	return out
}

func volPath(p *Proxy, vol string, elem ...string) string {
	return filepath.Join(append([]string{p.cfg.BaseDir, vol}, elem...)...)
}

func itoa(i int) string { return strconv.Itoa(i) }
