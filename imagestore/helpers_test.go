package imagestore

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"sync"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// quiet keeps test output free of the store's Info lines.
var quiet = slog.New(slog.DiscardHandler)

func openTestDir(tb testing.TB, path string, opts DirOptions) *Dir {
	tb.Helper()
	if opts.Logger == nil {
		opts.Logger = quiet
	}
	d, err := OpenDir(context.Background(), path, &opts)
	require.NoError(tb, err)
	return d
}

// Test data: position x of a pattern with seed s holds base_s[x mod 1 MiB],
// except that the first 16 bytes of every 4 KiB block hold s and the
// block's offset, so misplaced or stale blocks never compare equal.
const patternPeriod = 1 << 20

var (
	patternMu    sync.Mutex
	patternBases = map[uint64][]byte{}
)

func patternBase(seed uint64) []byte {
	patternMu.Lock()
	defer patternMu.Unlock()
	b, ok := patternBases[seed]
	if !ok {
		b = make([]byte, patternPeriod)
		var key [32]byte
		binary.LittleEndian.PutUint64(key[:], seed)
		rand.NewChaCha8(key).Read(b)
		patternBases[seed] = b
	}
	return b
}

// fillPattern sets p to the pattern's bytes at [off, off+len(p)).
func fillPattern(p []byte, seed uint64, off int64) {
	base := patternBase(seed)
	for i := 0; i < len(p); {
		j := int((off + int64(i)) % patternPeriod)
		i += copy(p[i:], base[j:])
	}
	var stamp [16]byte
	binary.LittleEndian.PutUint64(stamp[:8], seed)
	for blk := off &^ 4095; blk < off+int64(len(p)); blk += 4096 {
		binary.LittleEndian.PutUint64(stamp[8:], uint64(blk))
		for k := int64(0); k < 16; k++ {
			if x := blk + k - off; x >= 0 && x < int64(len(p)) {
				p[x] = stamp[k]
			}
		}
	}
}

func writePattern(tb testing.TB, w io.WriterAt, seed uint64, off, n int64) {
	tb.Helper()
	buf := make([]byte, min(n, 1<<20))
	for done := int64(0); done < n; {
		k := min(n-done, int64(len(buf)))
		fillPattern(buf[:k], seed, off+done)
		_, err := w.WriteAt(buf[:k], off+done)
		require.NoError(tb, err)
		done += k
	}
}

// checkPattern requires [off, off+n) of r to hold the pattern, or zeros
// when seed is 0.
func checkPattern(tb testing.TB, r io.ReaderAt, seed uint64, off, n int64) {
	tb.Helper()
	got := make([]byte, min(n, 1<<20))
	want := make([]byte, len(got))
	for done := int64(0); done < n; {
		k := min(n-done, int64(len(got)))
		_, err := r.ReadAt(got[:k], off+done)
		if err == io.EOF && off+done+k == sizeOf(r) {
			err = nil
		}
		require.NoError(tb, err)
		if seed == 0 {
			clear(want[:k])
		} else {
			fillPattern(want[:k], seed, off+done)
		}
		if !bytes.Equal(got[:k], want[:k]) {
			tb.Fatalf("content differs from pattern %d in [%d, %d)", seed, off+done, off+done+k)
		}
		done += k
	}
}

func sizeOf(r io.ReaderAt) int64 {
	if s, ok := r.(interface{ Size() int64 }); ok {
		return s.Size()
	}
	return -1
}

// requireSameContent compares two images in bounded chunks.
func requireSameContent(tb testing.TB, a, b Image) {
	tb.Helper()
	require.Equal(tb, a.Size(), b.Size(), "sizes")
	ba, bb := make([]byte, 1<<20), make([]byte, 1<<20)
	for off := int64(0); off < a.Size(); off += int64(len(ba)) {
		n := min(a.Size()-off, int64(len(ba)))
		_, err := a.ReadAt(ba[:n], off)
		if err == io.EOF && off+n == a.Size() {
			err = nil
		}
		require.NoError(tb, err)
		_, err = b.ReadAt(bb[:n], off)
		if err == io.EOF && off+n == a.Size() {
			err = nil
		}
		require.NoError(tb, err)
		if !bytes.Equal(ba[:n], bb[:n]) {
			tb.Fatalf("images differ in [%d, %d)", off, off+n)
		}
	}
}

// allocated returns the bytes a file occupies on disk (st_blocks).
func allocated(tb testing.TB, path string) int64 {
	tb.Helper()
	var st unix.Stat_t
	require.NoError(tb, unix.Stat(path, &st))
	return st.Blocks * 512
}

type extent struct{ start, end int64 }

// dataMap lists a file's data extents as SEEK_DATA/SEEK_HOLE report them.
func dataMap(tb testing.TB, path string) []extent {
	tb.Helper()
	f, err := os.Open(path)
	require.NoError(tb, err)
	defer f.Close()
	fi, err := f.Stat()
	require.NoError(tb, err)
	var m []extent
	for off := int64(0); off < fi.Size(); {
		s, e, err := nextData(int(f.Fd()), off, fi.Size())
		require.NoError(tb, err)
		if s >= e {
			break
		}
		m = append(m, extent{s, e})
		off = e
	}
	return m
}

// covered reports whether every extent of inner lies within outer.
func covered(inner, outer []extent) bool {
	for _, x := range inner {
		ok := false
		for _, y := range outer {
			if y.start <= x.start && x.end <= y.end {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	return true
}

// dirEntries lists every name in dir, temporary files included.
func dirEntries(tb testing.TB, dir string) []string {
	tb.Helper()
	ents, err := os.ReadDir(dir)
	require.NoError(tb, err)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

// countdownCtx reports cancellation from its n-th Err call on, so tests
// can cancel a copy at a chosen step.
type countdownCtx struct {
	context.Context
	mu sync.Mutex
	n  int
}

func (c *countdownCtx) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n <= 0 {
		return context.Canceled
	}
	c.n--
	return nil
}

// setVar sets a package variable for one test.
func setVar[T any](tb testing.TB, p *T, v T) {
	old := *p
	*p = v
	tb.Cleanup(func() { *p = old })
}
