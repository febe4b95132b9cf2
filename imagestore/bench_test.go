package imagestore

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
)

// BenchmarkClone1GiB clones a fully written 1 GiB image: by reflink and by
// physical copy on XFS and btrfs (loop-mounted; root needed), and by the
// fallback on the test temp directory. The source is in the page cache, so
// the copies measure the write side.
func BenchmarkClone1GiB(b *testing.B) {
	const size = 1 << 30
	run := func(b *testing.B, dir string, opts DirOptions, wantMethod string) {
		ctx := context.Background()
		d := openTestDir(b, dir, opts)
		src, err := d.Create(ctx, "src", size)
		require.NoError(b, err)
		writePattern(b, src, 1, 0, size)
		require.NoError(b, src.Sync())
		require.NoError(b, src.Close())
		b.SetBytes(size)
		for b.Loop() {
			p, err := d.CloneTemp(ctx, "src", "dst")
			require.NoError(b, err)
			if wantMethod != "" {
				require.Equal(b, wantMethod, p.(*pendingImage).method)
			}
			require.NoError(b, p.Commit(ctx))
			b.StopTimer()
			require.NoError(b, d.Remove(ctx, "dst"))
			b.StartTimer()
		}
	}
	b.Run("tempdir/auto", func(b *testing.B) { run(b, b.TempDir(), DirOptions{}, "") })
	b.Run("tempdir/read-write", func(b *testing.B) { run(b, b.TempDir(), DirOptions{NoReflink: true}, methodReadWrite) })
	for _, k := range fsKinds {
		if !k.reflink {
			continue
		}
		b.Run(k.name+"/reflink", func(b *testing.B) {
			run(b, mountFS(b, k, 3<<30), DirOptions{}, methodReflink)
		})
		b.Run(k.name+"/copy", func(b *testing.B) {
			run(b, mountFS(b, k, 3<<30), DirOptions{NoReflink: true}, methodReadWrite)
		})
	}
}
