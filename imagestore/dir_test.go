package imagestore

import (
	"context"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/pkg/errors"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

func TestValidName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"wb_vol0", true},
		{"wr_vol-1_123", true},
		{"wc_a_18446744073709551615", true},
		{"wb_vol_7_tmp", true},
		{"x.img", true},
		{"a+b", true},
		{"A", true},
		{strings.Repeat("v", MaxNameLen), true},
		{"", false},
		{strings.Repeat("v", MaxNameLen+1), false},
		{".", false},
		{"..", false},
		{".hidden", false},
		{TempPrefix + "x-abcdefgh", false},
		{"-rf", false},
		{"a..b", false},
		{"a/b", false},
		{"../etc", false},
		{"a b", false},
		{"a\x00b", false},
		{"vol:1", false},
		{"é", false},
		{"a*", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := ValidName(tt.name)
			if tt.ok {
				require.NoError(t, err)
			} else {
				require.ErrorIs(t, err, ErrInvalidName)
			}
		})
	}
}

func TestTempNamesAreNeverImageNames(t *testing.T) {
	for range 100 {
		n, err := tempName("wb_vol")
		require.NoError(t, err)
		require.True(t, IsTempName(n))
		require.ErrorIs(t, ValidName(n), ErrInvalidName)
		require.LessOrEqual(t, len(TempPrefix)+MaxNameLen+1+tempRandLen, 255)
	}
}

func TestOpenDirErrors(t *testing.T) {
	ctx := context.Background()
	_, err := OpenDir(ctx, filepath.Join(t.TempDir(), "missing"), &DirOptions{Logger: quiet})
	require.ErrorIs(t, err, os.ErrNotExist)

	file := filepath.Join(t.TempDir(), "file")
	require.NoError(t, os.WriteFile(file, nil, 0o600))
	_, err = OpenDir(ctx, file, &DirOptions{Logger: quiet})
	require.ErrorIs(t, err, ErrNotDir)

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_, err = OpenDir(cctx, t.TempDir(), nil)
	require.ErrorIs(t, err, context.Canceled)
}

func TestCapabilities(t *testing.T) {
	dir := t.TempDir()
	d := openTestDir(t, dir, DirOptions{})
	var st unix.Statfs_t
	require.NoError(t, unix.Statfs(dir, &st))
	c := d.Capabilities()
	require.Equal(t, "dir", c.Backend)
	require.Equal(t, FSTypeName(int64(st.Type)), c.FSType)
	require.NotEmpty(t, c.FSType)
	require.Equal(t, dir, d.Root())
	require.Empty(t, dirEntries(t, dir), "the probe must leave nothing behind")
	t.Logf("temp dir: %+v", c)

	nr := openTestDir(t, dir, DirOptions{NoReflink: true})
	require.False(t, nr.Capabilities().Reflink)
	require.Equal(t, c.FSType, nr.Capabilities().FSType)
}

func TestFSTypeName(t *testing.T) {
	require.Equal(t, "xfs", FSTypeName(0x58465342))
	require.Equal(t, "btrfs", FSTypeName(0x9123683e))
	require.Equal(t, "ext4", FSTypeName(0xef53))
	require.Equal(t, "tmpfs", FSTypeName(0x01021994))
	require.Equal(t, "0x1234", FSTypeName(0x1234))
}

func TestCreateOpenReadWrite(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	d := openTestDir(t, dir, DirOptions{})
	const size = 1<<20 + 512

	img, err := d.Create(ctx, "wb_vol", size)
	require.NoError(t, err)
	defer img.Close()
	require.Equal(t, int64(size), img.Size())
	require.Zero(t, allocated(t, filepath.Join(dir, "wb_vol")), "a new image must be sparse")
	checkPattern(t, img, 0, 0, size)
	fi, err := os.Stat(filepath.Join(dir, "wb_vol"))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())

	writePattern(t, img, 7, 4096, 8192)
	require.NoError(t, img.Sync())
	checkPattern(t, img, 7, 4096, 8192)

	// The last bytes: a read crossing the end is short with io.EOF.
	writePattern(t, img, 7, size-100, 100)
	buf := make([]byte, 300)
	n, err := img.ReadAt(buf, size-100)
	require.Equal(t, 100, n)
	require.ErrorIs(t, err, io.EOF)
	n, err = img.ReadAt(buf, size)
	require.Zero(t, n)
	require.ErrorIs(t, err, io.EOF)
	_, err = img.ReadAt(buf, -1)
	require.ErrorIs(t, err, ErrOutOfRange)

	for _, c := range []struct{ off, n int64 }{{size - 100, 101}, {size, 1}, {-1, 1}, {size + 4096, 0}} {
		n, err := img.WriteAt(make([]byte, c.n), c.off)
		require.ErrorIs(t, err, ErrOutOfRange, "write %d at %d", c.n, c.off)
		require.Zero(t, n)
	}
	n, err = img.WriteAt(nil, size)
	require.NoError(t, err, "an empty write at the end is within the image")
	require.Zero(t, n)
	fi, err = os.Stat(filepath.Join(dir, "wb_vol"))
	require.NoError(t, err)
	require.Equal(t, int64(size), fi.Size(), "a failed write must not grow the file")

	ro, err := d.Open(ctx, "wb_vol", ReadOnly)
	require.NoError(t, err)
	defer ro.Close()
	checkPattern(t, ro, 7, 4096, 8192)
	_, err = ro.WriteAt([]byte{1}, 0)
	require.ErrorIs(t, err, ErrReadOnly)
	require.ErrorIs(t, ro.Punch(0, 4096), ErrReadOnly)

	rw, err := d.Open(ctx, "wb_vol", ReadWrite)
	require.NoError(t, err)
	defer rw.Close()
	writePattern(t, rw, 9, 0, 4096)
	checkPattern(t, ro, 9, 0, 4096)

	_, err = d.Create(ctx, "wb_vol", 4096)
	require.ErrorIs(t, err, ErrExist)
	_, err = d.Create(ctx, "neg", -1)
	require.ErrorIs(t, err, ErrOutOfRange)
	_, err = d.Create(ctx, "../x", 1)
	require.ErrorIs(t, err, ErrInvalidName)
	_, err = d.Open(ctx, "missing", ReadOnly)
	require.ErrorIs(t, err, ErrNotFound)
	_, err = d.Open(ctx, "a/b", ReadOnly)
	require.ErrorIs(t, err, ErrInvalidName)

	require.NoError(t, os.Mkdir(filepath.Join(dir, "subdir"), 0o700))
	_, err = d.Open(ctx, "subdir", ReadOnly)
	require.Error(t, err, "a directory is not an image")

	empty, err := d.Create(ctx, "empty", 0)
	require.NoError(t, err)
	require.Zero(t, empty.Size())
	require.NoError(t, empty.Close())
	require.Equal(t, []string{"empty", "wb_vol"}, mustList(t, d))
}

func mustList(t *testing.T, d *Dir) []string {
	t.Helper()
	names, err := d.List(context.Background())
	require.NoError(t, err)
	return names
}

// sparseSource builds a 64 MiB image with data at scattered places,
// including sub-block and unaligned writes, the last byte, and 1 MiB that
// was written with zeros (allocated, but zero).
func sparseSource(t *testing.T, d *Dir, name string) (Image, []extent) {
	ctx := context.Background()
	const size = 64 << 20
	img, err := d.Create(ctx, name, size)
	require.NoError(t, err)
	regions := []extent{
		{0, 4096},
		{1 << 20, 3 << 20},
		{10<<20 + 512, 10<<20 + 1536},
		{33<<20 - 4096, 33<<20 + 8192},
		{size - 1, size},
	}
	for _, r := range regions {
		writePattern(t, img, 3, r.start, r.end-r.start)
	}
	_, err = img.WriteAt(make([]byte, 1<<20), 40<<20)
	require.NoError(t, err)
	require.NoError(t, img.Sync())
	return img, regions
}

// checkSparse checks a clone of sparseSource: same bytes, no more space,
// and holes where the source has holes.
func checkSparse(t *testing.T, dir string, src, dst Image, srcName, dstName string, regions []extent) {
	requireSameContent(t, src, dst)
	for _, r := range regions {
		checkPattern(t, dst, 3, r.start, r.end-r.start)
	}
	srcPath, dstPath := filepath.Join(dir, srcName), filepath.Join(dir, dstName)
	srcAlloc, dstAlloc := allocated(t, srcPath), allocated(t, dstPath)
	require.LessOrEqual(t, dstAlloc, srcAlloc, "the clone must not take more space than its source")
	require.Less(t, dstAlloc, src.Size()/4, "the clone must stay sparse")
	require.True(t, covered(dataMap(t, dstPath), dataMap(t, srcPath)),
		"clone data %v outside source data %v", dataMap(t, dstPath), dataMap(t, srcPath))
}

func TestCloneSparse(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	auto := openTestDir(t, dir, DirOptions{})
	// Small chunks so that the copy loops run many times.
	auto.copy.copyChunk, auto.copy.cloneChunk = 1<<20, 4<<20
	wantAuto := methodCopyRange
	if auto.Capabilities().Reflink {
		wantAuto = methodReflink
	}
	tests := []struct {
		name   string
		d      *Dir
		method string
	}{
		{"auto", auto, wantAuto},
		{"no-reflink", openTestDir(t, dir, DirOptions{NoReflink: true}), methodReadWrite},
	}
	src, regions := sparseSource(t, auto, "src")
	defer src.Close()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dst := "clone-" + tt.name
			p, err := tt.d.CloneTemp(ctx, "src", dst)
			require.NoError(t, err)
			require.Equal(t, tt.method, p.(*pendingImage).method)
			require.NotContains(t, mustList(t, tt.d), dst, "a pending clone is not listed")
			require.NoError(t, p.Commit(ctx))

			img, err := tt.d.Open(ctx, dst, ReadWrite)
			require.NoError(t, err)
			defer img.Close()
			checkSparse(t, dir, src, img, "src", dst, regions)
			switch tt.method {
			case methodCopyRange:
				// Exactly the source's extents, allocated zeros included.
				require.Equal(t, dataMap(t, filepath.Join(dir, "src")), dataMap(t, filepath.Join(dir, dst)))
			case methodReadWrite:
				// Zero blocks become holes.
				for _, e := range dataMap(t, filepath.Join(dir, dst)) {
					require.False(t, e.start < 41<<20 && e.end > 40<<20, "zero MiB copied as data: %v", e)
				}
			}

			// The clone is independent of its source.
			writePattern(t, img, 5, 1<<20, 4096)
			checkPattern(t, src, 3, 1<<20, 4096)
			checkPattern(t, img, 5, 1<<20, 4096)
		})
	}
}

func TestCloneDense(t *testing.T) {
	// An image of odd size (not a multiple of the block or chunk size),
	// written everywhere.
	ctx := context.Background()
	dir := t.TempDir()
	for _, o := range []DirOptions{{}, {NoReflink: true}} {
		d := openTestDir(t, dir, o)
		d.copy.copyChunk = 1 << 20
		const size = 5<<20 + 3*512
		name := "dense"
		if o.NoReflink {
			name = "dense-nr"
		}
		src, err := d.Create(ctx, name, size)
		require.NoError(t, err)
		writePattern(t, src, 11, 0, size)
		dst, err := d.Clone(ctx, name, name+"-clone")
		require.NoError(t, err)
		requireSameContent(t, src, dst)
		checkPattern(t, dst, 11, 0, size)
		require.NoError(t, src.Close())
		require.NoError(t, dst.Close())
	}
}

func TestCloneErrors(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	d := openTestDir(t, dir, DirOptions{})
	img, err := d.Create(ctx, "a", 8192)
	require.NoError(t, err)
	require.NoError(t, img.Close())
	img, err = d.Create(ctx, "b", 4096)
	require.NoError(t, err)
	require.NoError(t, img.Close())

	_, err = d.Clone(ctx, "a", "b")
	require.ErrorIs(t, err, ErrExist)
	_, err = d.Clone(ctx, "a", "a")
	require.ErrorIs(t, err, ErrExist)
	_, err = d.Clone(ctx, "missing", "c")
	require.ErrorIs(t, err, ErrNotFound)
	_, err = d.CloneTemp(ctx, "missing", "c")
	require.ErrorIs(t, err, ErrNotFound)
	_, err = d.Clone(ctx, "a", "../c")
	require.ErrorIs(t, err, ErrInvalidName)
	_, err = d.CloneTemp(ctx, ".x", "c")
	require.ErrorIs(t, err, ErrInvalidName)
	require.Equal(t, []string{"a", "b"}, dirEntries(t, dir), "failed clones leave nothing")
}

func TestCloneCancelled(t *testing.T) {
	dir := t.TempDir()
	for _, o := range []DirOptions{{}, {NoReflink: true}} {
		d := openTestDir(t, dir, o)
		d.copy.copyChunk, d.copy.cloneChunk = 64<<10, 64<<10
		src, err := d.Create(context.Background(), "src", 4<<20)
		require.NoError(t, err)
		writePattern(t, src, 1, 0, 4<<20)
		for _, n := range []int{0, 1, 2, 3} {
			ctx := &countdownCtx{Context: context.Background(), n: n}
			_, err := d.Clone(ctx, "src", "dst")
			require.ErrorIs(t, err, context.Canceled, "cancel after %d checks", n)
			require.Equal(t, []string{"src"}, dirEntries(t, dir), "a cancelled clone leaves nothing")
		}
		checkPattern(t, src, 1, 0, 4<<20)
		require.NoError(t, src.Close())
		require.NoError(t, d.Remove(context.Background(), "src"))
	}
}

func TestPending(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	d := openTestDir(t, dir, DirOptions{})
	base, err := d.Create(ctx, "wb_v", 1<<20)
	require.NoError(t, err)
	writePattern(t, base, 1, 0, 1<<20)
	require.NoError(t, base.Close())

	only := func() { require.Equal(t, []string{"wb_v"}, dirEntries(t, dir)) }

	// Abort, and Close without Commit, drop the clone.
	p, err := d.CloneTemp(ctx, "wb_v", "wb_v")
	require.NoError(t, err)
	writePattern(t, p, 2, 0, 4096)
	require.NoError(t, p.Abort())
	require.ErrorIs(t, p.Abort(), ErrFinished)
	require.ErrorIs(t, p.Commit(ctx), ErrFinished)
	require.NoError(t, p.Close())
	only()

	p, err = d.CloneTemp(ctx, "wb_v", "wb_v")
	require.NoError(t, err)
	writePattern(t, p, 2, 0, 4096)
	require.NoError(t, p.Close())
	only()

	// Commit with a cancelled context drops the clone too.
	p, err = d.CloneTemp(ctx, "wb_v", "wb_v")
	require.NoError(t, err)
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	require.ErrorIs(t, p.Commit(cctx), context.Canceled)
	only()
	img, err := d.Open(ctx, "wb_v", ReadOnly)
	require.NoError(t, err)
	checkPattern(t, img, 1, 0, 1<<20)

	// Commit replaces the target; an image opened before keeps the old
	// content (a file store keeps the old inode until it is closed).
	p, err = d.CloneTemp(ctx, "wb_v", "wb_v")
	require.NoError(t, err)
	writePattern(t, p, 2, 0, 4096)
	require.NoError(t, p.Commit(ctx))
	require.ErrorIs(t, p.Commit(ctx), ErrFinished)
	require.NoError(t, p.Close())
	only()
	checkPattern(t, img, 1, 0, 4096)
	require.NoError(t, img.Close())
	img, err = d.Open(ctx, "wb_v", ReadOnly)
	require.NoError(t, err)
	checkPattern(t, img, 2, 0, 4096)
	checkPattern(t, img, 1, 4096, 1<<20-4096)
	require.NoError(t, img.Close())

	// Commit to a new name, as a restore does.
	p, err = d.CloneTemp(ctx, "wb_v", "wr_v_5")
	require.NoError(t, err)
	require.NoError(t, p.Commit(ctx))
	require.Equal(t, []string{"wb_v", "wr_v_5"}, mustList(t, d))
}

func TestCloneForApply(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	d := openTestDir(t, dir, DirOptions{})
	base, err := d.Create(ctx, "wb_v", 2<<20)
	require.NoError(t, err)
	writePattern(t, base, 1, 0, 2<<20)
	require.NoError(t, base.Close())
	check := func(seed uint64) {
		t.Helper()
		img, err := d.Open(ctx, "wb_v", ReadOnly)
		require.NoError(t, err)
		defer img.Close()
		checkPattern(t, img, seed, 0, 1<<20)
		checkPattern(t, img, 1, 1<<20, 1<<20)
		require.Equal(t, []string{"wb_v"}, dirEntries(t, dir))
	}

	boom := errors.New("boom")
	err = CloneForApply(ctx, d, "wb_v", func(ctx context.Context, img Image) error {
		writePattern(t, img, 2, 0, 1<<20)
		return boom
	})
	require.ErrorIs(t, err, boom)
	check(1)

	func() {
		defer func() { require.Equal(t, "apply panicked", recover()) }()
		_ = CloneForApply(ctx, d, "wb_v", func(ctx context.Context, img Image) error {
			writePattern(t, img, 2, 0, 1<<20)
			panic("apply panicked")
		})
	}()
	check(1)

	require.NoError(t, CloneForApply(ctx, d, "wb_v", func(ctx context.Context, img Image) error {
		writePattern(t, img, 2, 0, 1<<20)
		return nil
	}))
	check(2)

	require.ErrorIs(t, CloneForApply(ctx, d, "missing", nil), ErrNotFound)
}

// TestCrashDuringCommit stops commits at each durability step, as a crash
// would, and checks what a restart (OpenDir, CleanTemps) finds.
func TestCrashDuringCommit(t *testing.T) {
	steps := []struct {
		step    string
		applied bool // the new image is under its name after the crash
	}{
		{"written", false},
		{"synced", false},
		{"renamed", true},
	}
	for _, s := range steps {
		t.Run(s.step, func(t *testing.T) {
			ctx := context.Background()
			dir := t.TempDir()
			d := openTestDir(t, dir, DirOptions{})
			base, err := d.Create(ctx, "wb_v", 1<<20)
			require.NoError(t, err)
			writePattern(t, base, 1, 0, 1<<20)
			require.NoError(t, base.Close())

			setVar(t, &testCrash, func(step string) bool { return step == s.step })
			err = CloneForApply(ctx, d, "wb_v", func(ctx context.Context, img Image) error {
				writePattern(t, img, 2, 0, 1<<20)
				return nil
			})
			require.ErrorIs(t, err, errSimulatedCrash)
			_, err = d.Create(ctx, "new", 4096)
			require.ErrorIs(t, err, errSimulatedCrash)
			_, err = d.Clone(ctx, "wb_v", "copy")
			require.ErrorIs(t, err, errSimulatedCrash)
			testCrash = nil

			d = openTestDir(t, dir, DirOptions{})
			gone, err := d.CleanTemps(ctx)
			require.NoError(t, err)
			want := []string{"wb_v"}
			if s.applied {
				require.Empty(t, gone)
				want = []string{"copy", "new", "wb_v"}
			} else {
				require.Len(t, gone, 3)
			}
			require.Equal(t, want, dirEntries(t, dir))
			img, err := d.Open(ctx, "wb_v", ReadOnly)
			require.NoError(t, err)
			defer img.Close()
			if s.applied {
				checkPattern(t, img, 2, 0, 1<<20)
			} else {
				checkPattern(t, img, 1, 0, 1<<20)
			}
		})
	}
}

func TestRenameRemoveList(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	d := openTestDir(t, dir, DirOptions{})
	for _, n := range []string{"wr_v_2_tmp", "wb_v", "wc_v_1"} {
		img, err := d.Create(ctx, n, 4096)
		require.NoError(t, err)
		writePattern(t, img, 4, 0, 4096)
		require.NoError(t, img.Close())
	}
	// Things that are not images are not listed.
	require.NoError(t, os.WriteFile(filepath.Join(dir, TempPrefix+"wb_v-zzzzzzzz"), nil, 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(dir, ".other"), nil, 0o600))
	require.NoError(t, os.Mkdir(filepath.Join(dir, "adir"), 0o700))
	require.NoError(t, os.Symlink("wb_v", filepath.Join(dir, "alink")))
	require.Equal(t, []string{"wb_v", "wc_v_1", "wr_v_2_tmp"}, mustList(t, d))

	require.ErrorIs(t, d.Rename(ctx, "wr_v_2_tmp", "wb_v"), ErrExist)
	require.ErrorIs(t, d.Rename(ctx, "missing", "x"), ErrNotFound)
	require.ErrorIs(t, d.Rename(ctx, "wb_v", "a/b"), ErrInvalidName)
	require.NoError(t, d.Rename(ctx, "wr_v_2_tmp", "wr_v_2"))
	require.Equal(t, []string{"wb_v", "wc_v_1", "wr_v_2"}, mustList(t, d))
	img, err := d.Open(ctx, "wr_v_2", ReadOnly)
	require.NoError(t, err)
	checkPattern(t, img, 4, 0, 4096)
	require.NoError(t, img.Close())

	require.NoError(t, d.Remove(ctx, "wc_v_1"))
	require.ErrorIs(t, d.Remove(ctx, "wc_v_1"), ErrNotFound)
	require.ErrorIs(t, d.Remove(ctx, ".other"), ErrInvalidName)
	require.Equal(t, []string{"wb_v", "wr_v_2"}, mustList(t, d))

	p, err := d.Path("wb_v")
	require.NoError(t, err)
	require.Equal(t, filepath.Join(dir, "wb_v"), p)
	_, err = d.Path("..")
	require.ErrorIs(t, err, ErrInvalidName)
}

func TestCleanTemps(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	d := openTestDir(t, dir, DirOptions{})
	img, err := d.Create(ctx, "wb_v", 4096)
	require.NoError(t, err)
	require.NoError(t, img.Close())
	p, err := d.CloneTemp(ctx, "wb_v", "wb_v")
	require.NoError(t, err)
	leftover := filepath.Base(p.(*pendingImage).tmpPath)
	require.NoError(t, p.(*pendingImage).f.Close()) // the process "dies"
	probe := TempPrefix + "probe-abcdefgh"
	require.NoError(t, os.WriteFile(filepath.Join(dir, probe), []byte("x"), 0o600))
	require.NoError(t, os.WriteFile(filepath.Join(dir, ".keep"), nil, 0o600))

	gone, err := d.CleanTemps(ctx)
	require.NoError(t, err)
	require.ElementsMatch(t, []string{leftover, probe}, gone)
	require.Equal(t, []string{".keep", "wb_v"}, dirEntries(t, dir))
	gone, err = d.CleanTemps(ctx)
	require.NoError(t, err)
	require.Empty(t, gone)
}

func TestResize(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	d := openTestDir(t, dir, DirOptions{})
	img, err := d.Create(ctx, "wb_v", 1<<20)
	require.NoError(t, err)
	writePattern(t, img, 1, 0, 1<<20)

	require.NoError(t, d.Resize(ctx, "wb_v", 3<<20))
	require.NoError(t, d.Resize(ctx, "wb_v", 3<<20))
	require.ErrorIs(t, d.Resize(ctx, "wb_v", 2<<20), ErrShrink)
	require.ErrorIs(t, d.Resize(ctx, "missing", 1), ErrNotFound)
	require.Equal(t, int64(1<<20), img.Size(), "an open image keeps its size")
	_, err = img.WriteAt([]byte{1}, 1<<20)
	require.ErrorIs(t, err, ErrOutOfRange)
	require.NoError(t, img.Close())

	img, err = d.Open(ctx, "wb_v", ReadWrite)
	require.NoError(t, err)
	defer img.Close()
	require.Equal(t, int64(3<<20), img.Size())
	checkPattern(t, img, 1, 0, 1<<20)
	checkPattern(t, img, 0, 1<<20, 2<<20)
	writePattern(t, img, 2, 3<<20-4096, 4096)
	require.Less(t, allocated(t, filepath.Join(dir, "wb_v")), int64(2<<20), "the grown area is a hole")
}

func TestPunch(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	d := openTestDir(t, dir, DirOptions{})
	for _, fallback := range []bool{false, true} {
		name := "p"
		if fallback {
			name = "p-fallback"
		}
		img, err := d.Create(ctx, name, 4<<20)
		require.NoError(t, err)
		writePattern(t, img, 1, 0, 4<<20)
		require.NoError(t, img.Sync())
		before := allocated(t, filepath.Join(dir, name))
		img.(*fileImage).noPunch.Store(fallback)

		require.NoError(t, img.Punch(1<<20, 2<<20))
		require.NoError(t, img.Punch(4<<20, 0))
		require.ErrorIs(t, img.Punch(4<<20-4096, 8192), ErrOutOfRange)
		require.ErrorIs(t, img.Punch(-1, 1), ErrOutOfRange)
		require.ErrorIs(t, img.Punch(0, -1), ErrOutOfRange)
		checkPattern(t, img, 1, 0, 1<<20)
		checkPattern(t, img, 0, 1<<20, 2<<20)
		checkPattern(t, img, 1, 3<<20, 1<<20)
		require.NoError(t, img.Sync())
		after := allocated(t, filepath.Join(dir, name))
		if d.Capabilities().PunchHole && !fallback {
			require.LessOrEqual(t, after, before-(2<<20), "punch must free the range")
		} else {
			require.Equal(t, before, after, "zeroing keeps the blocks")
		}
		require.NoError(t, img.Close())
	}
}

func TestConcurrentIO(t *testing.T) {
	ctx := context.Background()
	d := openTestDir(t, t.TempDir(), DirOptions{})
	img, err := d.Create(ctx, "c", 8<<20)
	require.NoError(t, err)
	defer img.Close()
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			off := int64(i) << 20
			writePattern(t, img, 1, off, 1<<20)
			checkPattern(t, img, 1, off, 1<<20)
		})
	}
	wg.Wait()
	checkPattern(t, img, 1, 0, 8<<20)
}

func TestCancelledOperations(t *testing.T) {
	d := openTestDir(t, t.TempDir(), DirOptions{})
	img, err := d.Create(context.Background(), "a", 4096)
	require.NoError(t, err)
	require.NoError(t, img.Close())
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = d.Create(ctx, "b", 1)
	require.ErrorIs(t, err, context.Canceled)
	_, err = d.Open(ctx, "a", ReadOnly)
	require.ErrorIs(t, err, context.Canceled)
	_, err = d.Clone(ctx, "a", "b")
	require.ErrorIs(t, err, context.Canceled)
	require.ErrorIs(t, d.Rename(ctx, "a", "b"), context.Canceled)
	require.ErrorIs(t, d.Remove(ctx, "a"), context.Canceled)
	require.ErrorIs(t, d.Resize(ctx, "a", 8192), context.Canceled)
	_, err = d.List(ctx)
	require.ErrorIs(t, err, context.Canceled)
	_, err = d.CleanTemps(ctx)
	require.ErrorIs(t, err, context.Canceled)
	require.Equal(t, []string{"a"}, mustList(t, d))
}
