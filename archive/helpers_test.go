package archive

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/pkg/errors"
	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/checksum"
	"github.com/walb-go/walb/imagestore"
	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/nbd"
	"github.com/walb-go/walb/wdiff"
	"github.com/walb-go/walb/wlog"
)

// quiet keeps test output free of the engine's Info lines.
var quiet = slog.New(slog.DiscardHandler)

// testEnv is an engine over a temporary base directory and image store.
type testEnv struct {
	t      testing.TB
	root   string
	cfg    Config
	e      *Engine
	images *imagestore.Dir
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// newEnv makes the directories and opens an engine; tweak may change the
// configuration first.
func newEnv(t testing.TB, tweak func(*Config)) *testEnv {
	t.Helper()
	root := t.TempDir()
	return openEnv(t, root, tweak)
}

// openEnv opens (or reopens, after a crash) the engine of root.
func openEnv(t testing.TB, root string, tweak func(*Config)) *testEnv {
	t.Helper()
	base := filepath.Join(root, "base")
	imgs := filepath.Join(root, "images")
	require.NoError(t, os.MkdirAll(base, 0o755))
	require.NoError(t, os.MkdirAll(imgs, 0o755))
	d, err := imagestore.OpenDir(context.Background(), imgs, &imagestore.DirOptions{Logger: quiet})
	require.NoError(t, err)
	cfg := Config{BaseDir: base, Images: d, Logger: quiet, Discard: DiscardZero}
	if tweak != nil {
		tweak(&cfg)
	}
	e, err := Open(context.Background(), cfg)
	require.NoError(t, err)
	env := &testEnv{t: t, root: root, cfg: cfg, e: e, images: d}
	t.Cleanup(func() { _ = e.Close() })
	return env
}

// reopen closes the engine and opens a new one on the same directories.
func (env *testEnv) reopen(tweak func(*Config)) *testEnv {
	_ = env.e.Close()
	return openEnv(env.t, env.root, tweak)
}

// model is the expected content of a volume: an image to which the test
// applies the same IOs it sends as diffs, and the sha256 of the image at
// every gid.
type model struct {
	rng     *rand.Rand
	sizeLB  uint64
	img     []byte
	sha     map[uint64]string
	uuid    meta.UUID
	salt    uint32
	lsid    uint64
	discard bool // generate discards (the model zeroes them)
}

func newModel(seed uint64, sizeLB uint64) *model {
	m := &model{
		rng:    rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		sizeLB: sizeLB,
		img:    make([]byte, sizeLB*lbSize),
		sha:    map[uint64]string{},
	}
	for i := range m.uuid {
		m.uuid[i] = byte(m.rng.Uint32())
	}
	m.salt = m.rng.Uint32()
	// The initial image: random data with some zero areas.
	for off := 0; off < len(m.img); off += 4096 {
		if m.rng.IntN(4) != 0 {
			for i := off; i < off+4096 && i < len(m.img); i++ {
				m.img[i] = byte(m.rng.Uint32())
			}
		}
	}
	return m
}

func shaOf(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// record notes the model image as the content of clean gid.
func (m *model) record(gid uint64) { m.sha[gid] = shaOf(m.img) }

// nextWdiff makes a sorted wdiff of n random IOs, applies them to the
// model, and returns the file bytes: the IOs go into a wlog written with
// wlog.Writer, which wdiff.ConvertWlogs turns into a wdiff, as a proxy
// does.
func (m *model) nextWdiff(t testing.TB, n int) []byte {
	t.Helper()
	return m.wdiff(t, n, false)
}

// wdiff is nextWdiff with a choice of layout (proxies store indexed
// wdiffs; archives take sorted ones).
func (m *model) wdiff(t testing.TB, n int, indexed bool) []byte {
	t.Helper()
	const pbs = 512
	var wl bytes.Buffer
	w, err := wlog.NewWriter(&wl, wlog.FileHeader{Salt: m.salt, PBS: pbs, UUID: wlog.UUID(m.uuid), BeginLsid: m.lsid, EndLsid: m.lsid + 1<<40})
	require.NoError(t, err)
	h := wlog.NewPackHeader(pbs, m.lsid)
	var data []byte
	flush := func() {
		if len(h.Records) == 0 {
			return
		}
		require.NoError(t, w.WritePack(h, data))
		m.lsid = h.NextLsid()
		h = wlog.NewPackHeader(pbs, m.lsid)
		data = data[:0]
	}
	for range n {
		maxLB := min(uint64(64), m.sizeLB)
		lb := 1 + m.rng.Uint64N(maxLB)
		off := m.rng.Uint64N(m.sizeLB - lb + 1)
		if m.discard && m.rng.IntN(8) == 0 {
			if h.AddDiscard(off, uint32(lb)) != nil {
				flush()
				require.NoError(t, h.AddDiscard(off, uint32(lb)))
			}
			clear(m.img[off*lbSize : (off+lb)*lbSize])
			continue
		}
		buf := make([]byte, lb*lbSize)
		if m.rng.IntN(6) != 0 { // else all zeros: an ALLZERO record
			for i := range buf {
				buf[i] = byte(m.rng.Uint32())
			}
		}
		cs := checksum.Sum(buf, m.salt)
		if h.AddNormal(off, uint32(lb), cs, 0) != nil {
			flush()
			require.NoError(t, h.AddNormal(off, uint32(lb), cs, 0))
		}
		data = append(data, buf...)
		copy(m.img[off*lbSize:], buf)
	}
	flush()
	require.NoError(t, w.Close())
	var out bytes.Buffer
	_, err = wdiff.ConvertWlogs(context.Background(), []wdiff.WlogInput{{Name: "gen", R: bytes.NewReader(wl.Bytes())}}, &out,
		wdiff.ConvertOptions{Compression: wdiff.DefaultCompression, Indexed: indexed})
	require.NoError(t, err)
	return out.Bytes()
}

// fullSync writes the model image into vol as a full backup ending at
// snap.
func (env *testEnv) fullSync(ctx context.Context, vol string, m *model, snap meta.Snap) {
	t := env.t
	t.Helper()
	f, err := env.e.BeginFullSync(ctx, vol, m.sizeLB)
	require.NoError(t, err)
	const bulk = 64 << 10
	for off := 0; off < len(m.img); off += bulk {
		b := m.img[off:min(off+bulk, len(m.img))]
		if bytes.Count(b, []byte{0}) == len(b) {
			require.NoError(t, f.WriteZeros(uint64(len(b))/lbSize))
		} else {
			_, err := f.Write(b)
			require.NoError(t, err)
		}
	}
	require.NoError(t, f.Commit(snap, time.Unix(1700000000, 0), m.uuid))
}

// initArchived makes vol an Archived volume holding m's image: init-vol,
// then a full backup ending at the clean snapshot 0.
func (env *testEnv) initArchived(ctx context.Context, vol string, m *model) {
	env.t.Helper()
	require.NoError(env.t, env.e.InitVol(ctx, vol))
	env.fullSync(ctx, vol, m, meta.CleanSnap(0))
}

// sendDiff receives one wdiff.
func (env *testEnv) sendDiff(ctx context.Context, vol string, m *model, d meta.Diff, data []byte) error {
	return env.e.ReceiveWdiff(ctx, vol, WdiffHeader{Sender: SenderProxy, UUID: m.uuid, SizeLB: m.sizeLB, Diff: d}, bytes.NewReader(data))
}

// diffTs is the timestamp of the diff ending at gid.
func diffTs(gid uint64) time.Time { return time.Unix(1700000000+int64(gid)*60, 0).UTC() }

// cleanDiff returns |b|-->|e| stamped for e.
func cleanDiff(b, e uint64, mergeable bool) meta.Diff {
	d := meta.CleanDiff(b, e)
	d.Mergeable = mergeable
	d.Timestamp = diffTs(e)
	return d
}

// restoredSHA restores gid, hashes the image and deletes it.
func (env *testEnv) restoredSHA(ctx context.Context, vol string, gid uint64) string {
	t := env.t
	t.Helper()
	require.NoError(t, env.e.Restore(ctx, vol, gid), "restore %d", gid)
	p, err := env.e.RestoredPath(vol, gid)
	require.NoError(t, err)
	b, err := os.ReadFile(p)
	require.NoError(t, err)
	require.NoError(t, env.e.DelRestored(ctx, vol, gid))
	return shaOf(b)
}

// baseSHA hashes the base image.
func (env *testEnv) baseSHA(vol string) string {
	p, err := env.images.Path(baseImageName(vol))
	require.NoError(env.t, err)
	b, err := os.ReadFile(p)
	require.NoError(env.t, err)
	return shaOf(b)
}

// dirSnapshot describes everything on disk and in memory that a refused
// command must not change: the files of the base directory with their
// content hashes, the images with theirs, and the volume states.
func (env *testEnv) dirSnapshot() map[string]string {
	t := env.t
	out := map[string]string{}
	for _, dir := range []string{filepath.Join(env.root, "base"), filepath.Join(env.root, "images")} {
		err := filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(env.root, p)
			if fi.IsDir() {
				out[rel] = "dir"
				return nil
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			out[rel] = shaOf(b)
			return nil
		})
		require.NoError(t, err)
	}
	for _, v := range env.e.VolumeNames() {
		out["state:"+v] = env.e.vols.State(v)
		gids, _ := env.e.Restored(v)
		out["restored:"+v] = fmtU64s(gids)
		vv, _ := env.e.volume(v)
		out["base:"+v] = vv.getBase().StringTs()
		var names []string
		for _, d := range vv.diffs.All() {
			n, _ := meta.FileName(d)
			names = append(names, n)
		}
		sort.Strings(names)
		out["diffs:"+v] = fmtStrings(names)
	}
	return out
}

func fmtU64s(s []uint64) string { return fmt.Sprint(s) }

func fmtStrings(s []string) string {
	var b bytes.Buffer
	for _, x := range s {
		b.WriteString(x)
		b.WriteString(";")
	}
	return b.String()
}

// readAllFile reads a file for tests.
func readAllFile(t testing.TB, p string) []byte {
	f, err := os.Open(p)
	require.NoError(t, err)
	defer f.Close()
	b, err := io.ReadAll(f)
	require.NoError(t, err)
	return b
}

// newNBD returns an NBD server for exports (not listening; tests read
// through the image paths or start Serve themselves).
func newNBD() *nbd.Server { return nbd.NewServer(nbd.Options{Logger: quiet}) }

func errorsIs(err, target error) bool { return errors.Is(err, target) }

func mapKeys[K comparable, V any](m map[K]V) func(func(K) bool) {
	return func(yield func(K) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	}
}

func sortedCommands() []Command {
	var out []Command
	for c := range Preconditions {
		out = append(out, c)
	}
	slices.Sort(out)
	return out
}

func fmtMap(m map[string]string) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b bytes.Buffer
	for _, k := range keys {
		b.WriteString(k + "=" + m[k] + "\n")
	}
	return b.String()
}
