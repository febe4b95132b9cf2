package archive

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"testing/iotest"

	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/wdiff"
)

// ovRec is one record of a hand-made diff: kind 'n' normal (data from
// seed), 'z' all-zero, 'd' discard.
type ovRec struct {
	addr, blocks uint64
	kind         byte
}

// craftWdiff writes recs (sorted) as a sorted wdiff, compressed, with
// normal data drawn from seed.
func craftWdiff(t *testing.T, uuid meta.UUID, seed uint64, recs []ovRec) []byte {
	t.Helper()
	rng := rand.New(rand.NewPCG(seed, 7))
	var out bytes.Buffer
	w, err := wdiff.NewSortedWriter(&out, wdiff.FileHeader{UUID: uuid}, wdiff.DefaultCompression)
	require.NoError(t, err)
	for _, r := range recs {
		io := wdiff.IO{Record: wdiff.Record{Addr: r.addr, Blocks: uint32(r.blocks)}}
		switch r.kind {
		case 'n':
			io.Data = make([]byte, r.blocks*lbSize)
			for i := range io.Data {
				if i%512 < 300 { // compressible, but not zero
					io.Data[i] = byte(rng.Uint32())
				}
			}
		case 'z':
			io.Flags = wdiff.FlagAllZero
		case 'd':
			io.Flags = wdiff.FlagDiscard
		}
		require.NoError(t, w.Write(io))
	}
	require.NoError(t, w.Close())
	return out.Bytes()
}

// craftedDiffs overlap one another across diffs and mix all kinds, with
// records of odd lengths.
var craftedDiffs = [][]ovRec{
	{{10, 20, 'n'}, {40, 10, 'n'}, {60, 10, 'z'}, {80, 20, 'd'}, {130, 7, 'n'}},
	{{5, 7, 'z'}, {20, 25, 'd'}, {65, 20, 'n'}, {135, 1, 'd'}},
	{{0, 3, 'n'}, {21, 2, 'n'}, {90, 30, 'd'}, {200, 56, 'n'}},
	{{11, 3, 'd'}, {44, 1, 'z'}, {70, 60, 'n'}, {250, 6, 'z'}},
}

// restoredBytes restores gid and returns the image.
func (env *testEnv) restoredBytes(ctx context.Context, vol string, gid uint64) []byte {
	t := env.t
	t.Helper()
	require.NoError(t, env.e.Restore(ctx, vol, gid))
	p, err := env.e.RestoredPath(vol, gid)
	require.NoError(t, err)
	b, err := os.ReadFile(p)
	require.NoError(t, err)
	require.NoError(t, env.e.DelRestored(ctx, vol, gid))
	return b
}

// volTemps lists the temporary files of a volume directory.
func volTemps(t *testing.T, env *testEnv, vol string) []string {
	var out []string
	for _, n := range mustReadDir(t, filepath.Join(env.root, "base", vol)) {
		if meta.IsTempName(n) {
			out = append(out, n)
		}
	}
	return out
}

// checkReads compares vi with want through reads of odd sizes at odd
// offsets that straddle record boundaries, and through iotest.TestReader.
func checkReads(t *testing.T, vi *virtualImage, want []byte, seed uint64) {
	t.Helper()
	require.EqualValues(t, len(want), vi.Size())
	rng := rand.New(rand.NewPCG(seed, 3))
	for off := int64(rng.IntN(7)); off < vi.Size(); {
		n := 1 + rng.IntN(5000)
		b := make([]byte, n)
		got, err := vi.ReadAt(b, off)
		end := min(off+int64(n), vi.Size())
		require.EqualValues(t, end-off, got)
		if end < off+int64(n) {
			require.ErrorIs(t, err, io.EOF)
		} else {
			require.NoError(t, err)
		}
		require.True(t, bytes.Equal(want[off:end], b[:got]), "read [%d, %d)", off, end)
		off += int64(1 + rng.IntN(n))
	}
	require.NoError(t, iotest.TestReader(io.NewSectionReader(vi, 0, vi.Size()), want))
}

// TestOverlayDiscardModes: on a store without reflink, the image of every
// gid behind hand-made diffs (overlapping records of every kind, odd
// lengths) equals its restore under each discard mode and each pass
// split, read whole and in pieces straddling records; and a few blocks
// have the value each mode must give them.
func TestOverlayDiscardModes(t *testing.T) {
	for _, mode := range []DiscardMode{DiscardIgnore, DiscardPassdown, DiscardZero} {
		for _, maxOpen := range []int{0, 1, 2} {
			t.Run(fmt.Sprintf("%s-maxopen%d", mode, maxOpen), func(t *testing.T) {
				t.Parallel()
				env := newEnv(t, func(c *Config) { withReflink(false)(c); c.Discard = mode; c.MaxOpen = maxOpen })
				ctx := testCtx(t)
				const vol = "od"
				m := newModel(23, 256)
				env.initArchived(ctx, vol, m)
				base := bytes.Clone(m.img)
				var d1 []byte // the first diff's data at [20, 30) LB
				for g, recs := range craftedDiffs {
					data := craftWdiff(t, m.uuid, uint64(g), recs)
					if g == 0 {
						f, err := wdiff.NewReader(bytes.NewReader(data), int64(len(data)))
						require.NoError(t, err)
						x, err := f.Next()
						require.NoError(t, err)
						d1 = bytes.Clone(x.Data[10*lbSize : 20*lbSize])
					}
					require.NoError(t, env.sendDiff(ctx, vol, m, cleanDiff(uint64(g), uint64(g+1), false), data))
				}
				v, err := env.e.volume(vol)
				require.NoError(t, err)
				for g := uint64(0); g <= uint64(len(craftedDiffs)); g++ {
					want := env.restoredBytes(ctx, vol, g)
					vi, err := env.e.openVirtualGid(ctx, v, g)
					require.NoError(t, err)
					require.Equal(t, shaOf(want), shaOf(readVirtual(t, vi)), "gid %d", g)
					checkReads(t, vi, want, g)
					if g == 2 {
						// [20, 30): written by diff 1, discarded by diff 2.
						got := make([]byte, 10*lbSize)
						_, err := vi.ReadAt(got, 20*lbSize)
						require.NoError(t, err)
						switch {
						case mode != DiscardIgnore:
							require.Equal(t, make([]byte, len(got)), got)
						case maxOpen == 1: // applied by diff 1's pass, ignored by diff 2's
							require.Equal(t, d1, got)
						default: // merged in one pass: the discard wins and is ignored
							require.Equal(t, base[20*lbSize:30*lbSize], got)
						}
					}
					require.NoError(t, vi.Close())
				}
				require.Empty(t, volTemps(t, env, vol))
				require.Empty(t, tempImages(t, env))
			})
		}
	}
}

// TestOverlayManyDiffs: many random diffs (overlapping writes, all-zero
// writes, discards; one rewritten in the indexed layout) read through the overlay equal the
// restores and the model, with and without passes; one sorted diff is
// read directly and several are merged into one temporary file per pass,
// removed by Close.
func TestOverlayManyDiffs(t *testing.T) {
	for _, maxOpen := range []int{0, 4} {
		t.Run(fmt.Sprintf("maxopen%d", maxOpen), func(t *testing.T) {
			t.Parallel()
			env := newEnv(t, func(c *Config) { withReflink(false)(c); c.MaxOpen = maxOpen })
			ctx := testCtx(t)
			const vol = "om"
			const n = 12
			m := newModel(31, 1024)
			m.discard = true
			env.initArchived(ctx, vol, m)
			m.record(0)
			for g := uint64(0); g < n; g++ {
				require.NoError(t, env.sendDiff(ctx, vol, m, cleanDiff(g, g+1, false), m.nextWdiff(t, 40)))
				m.record(g + 1)
			}
			v, err := env.e.volume(vol)
			require.NoError(t, err)
			for _, d := range v.diffs.All() {
				if d.SnapB.GidB == 5 {
					name, err := meta.FileName(d)
					require.NoError(t, err)
					rewriteIndexed(t, v.path(name))
				}
			}
			for g := uint64(0); g <= n; g++ {
				vi, err := env.e.openVirtualGid(ctx, v, g)
				require.NoError(t, err)
				passes := int(g)
				if maxOpen > 0 {
					passes = (passes + maxOpen - 1) / maxOpen
				} else {
					passes = min(passes, 1)
				}
				merged := passes
				if g == 1 || maxOpen > 0 && g%uint64(maxOpen) == 1 {
					merged-- // a pass of one sorted diff is read in place
				}
				require.Len(t, volTemps(t, env, vol), merged, "gid %d", g)
				require.Equal(t, m.sha[g], shaOf(readVirtual(t, vi)), "gid %d", g)
				require.NoError(t, vi.Close())
				require.Empty(t, volTemps(t, env, vol), "Close removes the merged files")
			}
			want := env.restoredBytes(ctx, vol, n)
			require.Equal(t, m.sha[n], shaOf(want))
			vi, err := env.e.openVirtualGid(ctx, v, n)
			require.NoError(t, err)
			checkReads(t, vi, want, 99) // across the packs of the merged files
			require.NoError(t, vi.Close())
			// The indexed diff alone is merged into sorted form.
			var indexed []meta.Diff
			for _, d := range v.diffs.All() {
				if d.SnapB.GidB == 5 {
					indexed = append(indexed, d)
				}
			}
			require.Len(t, indexed, 1)
			l, err := v.openSortedDiff(indexed[0])
			require.NoError(t, err)
			require.Nil(t, l, "an indexed diff is not read directly")
		})
	}
}

// rewriteIndexed rewrites the sorted wdiff at path in the indexed layout,
// which archives read but do not receive.
func rewriteIndexed(t *testing.T, path string) {
	t.Helper()
	f, err := wdiff.Open(path)
	require.NoError(t, err)
	defer f.Close()
	var out bytes.Buffer
	w, err := wdiff.NewIndexedWriter(&out, f.Header(), wdiff.DefaultCompression)
	require.NoError(t, err)
	var recs []wdiff.IO
	var imgs []wdiff.Image
	for {
		x, err := f.Next()
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
		var img wdiff.Image
		if x.IsNormal() {
			img, err = w.WriteImage(x.Data)
			require.NoError(t, err)
		}
		recs, imgs = append(recs, wdiff.IO{Record: x.Record}), append(imgs, img)
	}
	for i, x := range recs {
		require.NoError(t, w.WriteIndex(x.Record, imgs[i], 0))
	}
	require.NoError(t, w.Close())
	require.NoError(t, os.WriteFile(path, out.Bytes(), 0o644))
}

// TestOverlayConcurrentReads: workers reading interleaved pieces of one
// overlay concurrently (as a hash scan does) all see the restored image.
func TestOverlayConcurrentReads(t *testing.T) {
	env := newEnv(t, withReflink(false))
	ctx := testCtx(t)
	const vol = "oc"
	m := virtualVol(t, env, vol, 6)
	v, err := env.e.volume(vol)
	require.NoError(t, err)
	want := env.restoredBytes(ctx, vol, 6)
	require.Equal(t, m.sha[6], shaOf(want))
	vi, err := env.e.openVirtualGid(ctx, v, 6)
	require.NoError(t, err)
	defer vi.Close()
	const workers, piece = 4, 3000
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			b := make([]byte, piece)
			for round := range 3 {
				for off := int64(w*piece + round*17); off < vi.Size(); off += workers * piece {
					n, err := vi.ReadAt(b, off)
					if err != nil && err != io.EOF {
						errs <- err
						return
					}
					if !bytes.Equal(want[off:off+int64(n)], b[:n]) {
						errs <- fmt.Errorf("worker %d: read at %d differs", w, off)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
}

// TestOverlayApplyWaits: an overlay holds the base; an apply started while
// it is open waits for Close (in place or by clone), the overlay still
// reads its snapshot meanwhile, and the apply then completes.
func TestOverlayApplyWaits(t *testing.T) {
	for _, mode := range []ApplyMode{ApplyInPlace, ApplyClone} {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			env := newEnv(t, func(c *Config) { withReflink(false)(c); c.Apply = mode })
			ctx := testCtx(t)
			const vol = "ow"
			m := virtualVol(t, env, vol, 5)
			v, err := env.e.volume(vol)
			require.NoError(t, err)
			vi, err := env.e.openVirtualGid(ctx, v, 2)
			require.NoError(t, err)
			require.NotEmpty(t, volTemps(t, env, vol), "an overlay of merged diffs")
			require.Empty(t, tempImages(t, env), "no clone")
			require.False(t, v.baseMu.TryLock(), "writers wait while the base is read")
			// A merge of its diffs may run: the overlay reads its own
			// merged copy.
			require.NoError(t, env.e.Merge(ctx, vol, MergeRange{GidB: 0, GidE: 2}))
			done := make(chan error, 1)
			go func() { done <- env.e.Apply(ctx, vol, 4) }()
			require.Equal(t, m.sha[2], shaOf(readVirtual(t, vi)))
			select {
			case err := <-done:
				t.Fatalf("apply finished while an overlay was open: %v", err)
			default:
			}
			require.Equal(t, m.sha[0], env.baseSHA(vol))
			require.NoError(t, vi.Close())
			require.NoError(t, <-done)
			require.Equal(t, m.sha[4], env.baseSHA(vol))
			require.Empty(t, volTemps(t, env, vol))
		})
	}
}

// TestOverlayCrashCleanup: a merged file left by a crash while an overlay
// was open is removed at the next start.
func TestOverlayCrashCleanup(t *testing.T) {
	env := newEnv(t, withReflink(false))
	ctx := testCtx(t)
	const vol = "ox"
	virtualVol(t, env, vol, 3)
	v, err := env.e.volume(vol)
	require.NoError(t, err)
	vi, err := env.e.openVirtualGid(ctx, v, 3)
	require.NoError(t, err)
	require.Len(t, volTemps(t, env, vol), 1)
	crashed := t.TempDir()
	copyTree(t, env.root, crashed)
	require.NoError(t, vi.Close())
	renv := openEnv(t, crashed, withReflink(false))
	require.Empty(t, volTemps(t, renv, vol))
}

// TestOverlayCorrupt: a damaged diff read directly fails the open (pack
// header) or the read (data) with the wdiff sentinel, never returns wrong
// data.
func TestOverlayCorrupt(t *testing.T) {
	for _, tc := range []struct {
		name string
		off  int64
		open bool // the open fails, else the read
		want error
	}{
		{"pack header", wdiff.FileHeaderSize + 20, true, wdiff.ErrChecksum},
		{"record data", wdiff.FileHeaderSize + wdiff.PackHeaderSize + 5, false, wdiff.ErrChecksum},
		{"truncated", -1, true, wdiff.ErrTruncated},
	} {
		t.Run(tc.name, func(t *testing.T) {
			env := newEnv(t, withReflink(false))
			ctx := testCtx(t)
			const vol = "oz"
			m := newModel(5, 256)
			env.initArchived(ctx, vol, m)
			require.NoError(t, env.sendDiff(ctx, vol, m, cleanDiff(0, 1, false), craftWdiff(t, m.uuid, 1, craftedDiffs[0])))
			v, err := env.e.volume(vol)
			require.NoError(t, err)
			name, err := meta.FileName(v.diffs.All()[0])
			require.NoError(t, err)
			p := v.path(name)
			b, err := os.ReadFile(p)
			require.NoError(t, err)
			if tc.off < 0 {
				b = b[:len(b)-wdiff.PackHeaderSize-100]
			} else {
				b[tc.off] ^= 0x40
			}
			require.NoError(t, os.WriteFile(p, b, 0o644))
			vi, err := env.e.openVirtualGid(ctx, v, 1)
			if tc.open {
				require.ErrorIs(t, err, tc.want)
				require.True(t, v.baseMu.TryLock(), "a failed open releases the base")
				v.baseMu.Unlock()
				return
			}
			require.NoError(t, err)
			_, err = vi.ReadAt(make([]byte, 4096), 10*lbSize)
			require.ErrorIs(t, err, tc.want)
			require.NoError(t, vi.Close())
		})
	}
}

// BenchmarkOverlayRead reads a whole 8 MiB image in 64 KiB pieces: the
// base alone (gid 0, read in place) and through an overlay of 8 merged
// diffs.
func BenchmarkOverlayRead(b *testing.B) {
	env := newEnv(b, withReflink(false))
	ctx := testCtx(b)
	const vol = "ob"
	m := newModel(3, 16384)
	m.discard = true
	env.initArchived(ctx, vol, m)
	for g := uint64(0); g < 8; g++ {
		require.NoError(b, env.sendDiff(ctx, vol, m, cleanDiff(g, g+1, false), m.nextWdiff(b, 400)))
	}
	v, err := env.e.volume(vol)
	require.NoError(b, err)
	for _, tc := range []struct {
		name string
		gid  uint64
	}{{"base", 0}, {"overlay", 8}} {
		b.Run(tc.name, func(b *testing.B) {
			vi, err := env.e.openVirtualGid(ctx, v, tc.gid)
			require.NoError(b, err)
			defer vi.Close()
			buf := make([]byte, 64<<10)
			b.SetBytes(vi.Size())
			for b.Loop() {
				for off := int64(0); off < vi.Size(); off += int64(len(buf)) {
					if _, err := vi.ReadAt(buf, off); err != nil && err != io.EOF {
						b.Fatal(err)
					}
				}
			}
		})
	}
}

// TestOverlayLRU: the caches keep the most recent entries, at most
// overlayCacheSize, and the record cache at most overlayCacheBytes beyond
// its newest entry.
func TestOverlayLRU(t *testing.T) {
	var c lru[int, []byte]
	c.weight = func(b []byte) int { return len(b) }
	for i := range overlayCacheSize + 3 {
		c.put(i, make([]byte, 1))
	}
	require.Len(t, c.keys, overlayCacheSize)
	_, ok := c.get(2)
	require.False(t, ok, "the oldest are evicted")
	_, ok = c.get(overlayCacheSize + 2)
	require.True(t, ok)
	_, ok = c.get(3)
	require.True(t, ok)
	require.Equal(t, 3, c.keys[0], "get moves to the front")
	c.put(100, make([]byte, overlayCacheBytes-3))
	require.Len(t, c.keys, 4, "room for three 1-byte entries after the newest")
	c.put(101, make([]byte, overlayCacheBytes+1))
	require.Equal(t, []int{101}, c.keys, "an oversized record is still kept alone")
}
