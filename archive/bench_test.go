package archive

import (
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/meta"
)

// BenchmarkReceiveWdiff measures a wdiff reception (checks, decompression,
// temporary file, fsync, rename) per byte of wdiff.
func BenchmarkReceiveWdiff(b *testing.B) {
	env := newEnv(b, nil)
	ctx := testCtx(b)
	m := newModel(1, 1<<14) // 8 MiB
	require.NoError(b, env.e.InitVol(ctx, "bv"))
	env.fullSync(ctx, "bv", m, meta.CleanSnap(0))
	data := m.nextWdiff(b, 400)
	b.SetBytes(int64(len(data)))
	b.ResetTimer()
	for i := range b.N {
		g := uint64(i)
		require.NoError(b, env.sendDiff(ctx, "bv", m, cleanDiff(g, g+1, true), data))
	}
}

// BenchmarkRestore measures restoring an 8 MiB image (clone of the base,
// then the chain of diffs merged and applied), per byte of image.
func BenchmarkRestore(b *testing.B) {
	for _, chain := range []int{1, 8} {
		b.Run("diffs"+strconv.Itoa(chain), func(b *testing.B) {
			env := newEnv(b, nil)
			ctx := testCtx(b)
			m := newModel(2, 1<<14)
			require.NoError(b, env.e.InitVol(ctx, "bv"))
			env.fullSync(ctx, "bv", m, meta.CleanSnap(0))
			for g := range uint64(chain) {
				require.NoError(b, env.sendDiff(ctx, "bv", m, cleanDiff(g, g+1, true), m.nextWdiff(b, 200)))
			}
			b.SetBytes(int64(len(m.img)))
			b.ResetTimer()
			for range b.N {
				require.NoError(b, env.e.Restore(ctx, "bv", uint64(chain)))
				require.NoError(b, env.e.DelRestored(ctx, "bv", uint64(chain)))
			}
		})
	}
}

// BenchmarkFullSync measures a full backup received in 256 KiB bulks.
func BenchmarkFullSync(b *testing.B) {
	env := newEnv(b, nil)
	ctx := testCtx(b)
	m := newModel(3, 1<<14)
	require.NoError(b, env.e.InitVol(ctx, "bv"))
	b.SetBytes(int64(len(m.img)))
	b.ResetTimer()
	for range b.N {
		f, err := env.e.BeginFullSync(ctx, "bv", m.sizeLB)
		require.NoError(b, err)
		for off := 0; off < len(m.img); off += 256 << 10 {
			_, err := f.Write(m.img[off : off+256<<10])
			require.NoError(b, err)
		}
		require.NoError(b, f.Flush())
		f.Abort()
	}
}
