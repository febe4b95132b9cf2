package archive

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/hashsync"
	"github.com/walb-go/walb/imagestore"
	"github.com/walb-go/walb/meta"
)

// capsStore reports a chosen reflink capability, so that both ways of
// making a virtual image run whatever the test file system is.
type capsStore struct {
	imagestore.Store
	reflink bool
}

func (s capsStore) Capabilities() imagestore.Capabilities {
	c := s.Store.Capabilities()
	c.Reflink = s.reflink
	return c
}

func withReflink(reflink bool) func(*Config) {
	return func(c *Config) {
		if cs, ok := c.Images.(capsStore); ok {
			c.Images = cs.Store
		}
		c.Images = capsStore{Store: c.Images, reflink: reflink}
	}
}

// setReflink changes the reflink capability an open engine sees.
func setReflink(env *testEnv, reflink bool) {
	withReflink(reflink)(&env.e.cfg)
}

// readVirtual reads a whole virtual image.
func readVirtual(t *testing.T, vi *virtualImage) []byte {
	t.Helper()
	b := make([]byte, vi.Size())
	n, err := vi.ReadAt(b, 0)
	require.NoError(t, err)
	require.Equal(t, len(b), n)
	_, err = vi.ReadAt(make([]byte, 1), vi.Size())
	require.ErrorIs(t, err, io.EOF)
	return b
}

// tempImages lists the store's temporary files.
func tempImages(t *testing.T, env *testEnv) []string {
	var out []string
	for _, n := range mustReadDir(t, filepath.Join(env.root, "images")) {
		if imagestore.IsTempName(n) {
			out = append(out, n)
		}
	}
	return out
}

// virtualVol makes a volume with a base at |0| and n diffs, some
// mergeable, recording the model at every gid.
func virtualVol(t *testing.T, env *testEnv, vol string, n uint64) *model {
	ctx := testCtx(t)
	m := newModel(17, 2048)
	m.discard = true
	env.initArchived(ctx, vol, m)
	m.record(0)
	for g := uint64(0); g < n; g++ {
		require.NoError(t, env.sendDiff(ctx, vol, m, cleanDiff(g, g+1, g%2 == 1), m.nextWdiff(t, 25)))
		m.record(g + 1)
	}
	return m
}

// TestVirtualImage (system.md §5.5): the image of every gid equals the
// restore of that gid and the model; the latest one is found with its
// snapshot; the base is never written; Close leaves no temporary image.
// With and without reflink, and with -maxopen passes.
func TestVirtualImage(t *testing.T) {
	for _, tc := range []struct {
		name    string
		reflink bool
		maxOpen int
	}{{"copy", false, 0}, {"reflink", true, 0}, {"copy-maxopen2", false, 2}} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			env := newEnv(t, func(c *Config) { withReflink(tc.reflink)(c); c.MaxOpen = tc.maxOpen })
			ctx := testCtx(t)
			const vol = "vv"
			const n = 5
			m := virtualVol(t, env, vol, n)
			v, err := env.e.volume(vol)
			require.NoError(t, err)
			base := env.baseSHA(vol)
			for g := uint64(0); g <= n; g++ {
				vi, err := env.e.openVirtualGid(ctx, v, g)
				require.NoError(t, err, "gid %d", g)
				got := shaOf(readVirtual(t, vi))
				require.Equal(t, m.sha[g], got, "gid %d", g)
				require.NoError(t, vi.Close())
				require.NoError(t, vi.Close(), "Close twice")
				require.Empty(t, tempImages(t, env))
				require.Equal(t, m.sha[g], env.restoredSHA(ctx, vol, g), "restore of gid %d", g)
			}
			require.Equal(t, base, env.baseSHA(vol), "the base is only read")
			vi, snap, err := env.e.openVirtualLatest(ctx, v)
			require.NoError(t, err)
			require.Equal(t, meta.CleanSnap(n), snap)
			require.Equal(t, m.sha[n], shaOf(readVirtual(t, vi)))
			require.NoError(t, vi.Close())
			_, err = env.e.openVirtualGid(ctx, v, n+1)
			require.ErrorIs(t, err, ErrNotRestorable)
			require.Empty(t, tempImages(t, env))
		})
	}
}

// TestVirtualImageDirty: a dirty latest snapshot has a virtual image (hash
// backup compares against it) though it is not restorable.
func TestVirtualImageDirty(t *testing.T) {
	env := newEnv(t, withReflink(false))
	ctx := testCtx(t)
	const vol = "vd"
	m := newModel(4, 512)
	require.NoError(t, env.e.InitVol(ctx, vol))
	env.fullSync(ctx, vol, m, meta.Snap{GidB: 0, GidE: 2})
	v, err := env.e.volume(vol)
	require.NoError(t, err)
	vi, snap, err := env.e.openVirtualLatest(ctx, v)
	require.NoError(t, err)
	require.Equal(t, meta.Snap{GidB: 0, GidE: 2}, snap)
	require.Equal(t, m.img, readVirtual(t, vi))
	require.NoError(t, vi.Close())
	_, err = env.e.openVirtualGid(ctx, v, 0)
	require.ErrorIs(t, err, ErrNotRestorable)
	// |0|-->|3| makes it clean at 3; the dirty |0,2| is gone from the chain.
	require.NoError(t, env.sendDiff(ctx, vol, m, cleanDiff(0, 3, false), m.nextWdiff(t, 10)))
	vi, err = env.e.openVirtualSnap(ctx, v, meta.CleanSnap(3))
	require.NoError(t, err)
	require.Equal(t, m.img, readVirtual(t, vi))
	require.NoError(t, vi.Close())
	vi, err = env.e.openVirtualSnap(ctx, v, meta.Snap{GidB: 0, GidE: 2})
	require.NoError(t, err, "the base itself")
	require.NoError(t, vi.Close())
	require.Empty(t, tempImages(t, env))
}

// TestVirtualImageIsolation: a cloned virtual image (reflink store) does
// not change when the base is applied (in place or by clone) or the diffs
// are merged while it is open; a base read in place (no reflink) holds off
// writers until Close (TestOverlayApplyWaits does the same with diffs).
func TestVirtualImageIsolation(t *testing.T) {
	for _, mode := range []ApplyMode{ApplyInPlace, ApplyClone} {
		t.Run(mode.String(), func(t *testing.T) {
			t.Parallel()
			env := newEnv(t, func(c *Config) { withReflink(true)(c); c.Apply = mode })
			ctx := testCtx(t)
			const vol = "vi"
			m := virtualVol(t, env, vol, 6)
			v, err := env.e.volume(vol)
			require.NoError(t, err)
			vi, err := env.e.openVirtualGid(ctx, v, 2)
			require.NoError(t, err)
			require.NoError(t, env.e.Merge(ctx, vol, MergeRange{GidB: 2, GidE: 4}))
			require.NoError(t, env.e.Apply(ctx, vol, 4))
			require.Equal(t, m.sha[4], env.baseSHA(vol))
			require.Equal(t, m.sha[2], shaOf(readVirtual(t, vi)))
			require.NoError(t, vi.Close())

			// A list computed before an apply is stale afterwards.
			stale, err := v.gidList(5)
			require.NoError(t, err)
			require.NoError(t, env.e.Apply(ctx, vol, 5))
			_, err = env.e.openVirtual(ctx, v, stale)
			require.ErrorIs(t, err, errStaleList)
			vi, err = env.e.openVirtualGid(ctx, v, 6)
			require.NoError(t, err)
			require.Equal(t, m.sha[6], shaOf(readVirtual(t, vi)))
			require.NoError(t, vi.Close())

			// No diff and no reflink: the base is read in place, under
			// baseMu shared until Close.
			setReflink(env, false)
			vi, err = env.e.openVirtualGid(ctx, v, 5)
			require.NoError(t, err)
			require.Empty(t, tempImages(t, env), "not a clone")
			require.False(t, v.baseMu.TryLock(), "writers wait while the base is read")
			require.Equal(t, m.sha[5], shaOf(readVirtual(t, vi)))
			require.NoError(t, vi.Close())
			require.True(t, v.baseMu.TryLock())
			v.baseMu.Unlock()
		})
	}
}

// TestBlockHash: bhash of a gid equals hashsync.BHash of the restored
// image, per chunk and whole, for the base and for gids behind diffs.
func TestBlockHash(t *testing.T) {
	env := newEnv(t, nil)
	ctx := testCtx(t)
	const vol = "bh"
	virtualVol(t, env, vol, 3)
	for g := uint64(0); g <= 3; g++ {
		require.NoError(t, env.e.Restore(ctx, vol, g))
		p, err := env.e.RestoredPath(vol, g)
		require.NoError(t, err)
		img, err := os.ReadFile(p)
		require.NoError(t, err)
		for _, opt := range []hashsync.BHashOptions{{Chunk: 64 << 10}, {}, {IOSize: 4096, Chunk: 12288, Size: 300 << 10}} {
			var want, got []string
			collect := func(out *[]string) func(uint64, [hashsync.SipHash128Size]byte) error {
				return func(addr uint64, sum [hashsync.SipHash128Size]byte) error {
					*out = append(*out, FormatBHash(opt.Chunk > 0, addr, sum))
					return nil
				}
			}
			require.NoError(t, hashsync.BHash(ctx, bytes.NewReader(img), int64(len(img)), opt, collect(&want)))
			require.NoError(t, env.e.BlockHash(ctx, vol, g, opt, collect(&got)))
			require.Equal(t, want, got, "gid %d %+v", g, opt)
			require.NotEmpty(t, got)
			if opt.Chunk > 0 {
				require.True(t, strings.HasPrefix(got[1], "0000000000000080\t") || strings.HasPrefix(got[1], "0000000000000018\t"), got[1])
			}
		}
		require.NoError(t, env.e.DelRestored(ctx, vol, g))
	}
	err := env.e.BlockHash(ctx, vol, 0, hashsync.BHashOptions{IOSize: 1000}, func(uint64, [16]byte) error { return nil })
	require.ErrorIs(t, err, ErrBadArgs)
	err = env.e.BlockHash(ctx, vol, 9, hashsync.BHashOptions{}, func(uint64, [16]byte) error { return nil })
	require.ErrorIs(t, err, ErrNotRestorable)
	err = env.e.BlockHash(ctx, "nosuch", 0, hashsync.BHashOptions{}, func(uint64, [16]byte) error { return nil })
	require.ErrorIs(t, err, ErrWrongState)
	require.Empty(t, tempImages(t, env))
}

// TestBHashIOSize: the read size divides the bulk and the size.
func TestBHashIOSize(t *testing.T) {
	for _, tc := range []struct{ bulk, size, want uint64 }{
		{0, 0, 64 << 10}, {1 << 20, 0, 64 << 10}, {1536, 0, 512}, {64 << 10, 96 << 10, 32 << 10}, {4096, 1 << 30, 4096},
	} {
		require.EqualValues(t, tc.want, bhashIOSize(tc.bulk, tc.size), "%+v", tc)
	}
}
