package nbd

import (
	"bytes"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/pkg/errors"
	"github.com/stretchr/testify/require"
)

func newTestFile(t *testing.T, content []byte) *FileBackend {
	t.Helper()
	path := filepath.Join(t.TempDir(), "disk.img")
	require.NoError(t, os.WriteFile(path, content, 0o600))
	fb, err := OpenFileBackend(path, false)
	require.NoError(t, err)
	t.Cleanup(func() { _ = fb.Close() })
	return fb
}

// allocatedBytes is the space the file occupies on disk.
func allocatedBytes(t *testing.T, f *os.File) int64 {
	t.Helper()
	var st syscall.Stat_t
	require.NoError(t, syscall.Fstat(int(f.Fd()), &st))
	return st.Blocks * 512
}

func TestFileBackend(t *testing.T) {
	const size = 4 << 20
	content := bytes.Repeat([]byte{0xee}, size)
	fb := newTestFile(t, content)
	require.Equal(t, int64(size), fb.Size())

	data := randomBytes(7, 300000)
	n, err := fb.WriteAt(data, 12345)
	require.NoError(t, err)
	require.Equal(t, len(data), n)
	copy(content[12345:], data)

	fua := randomBytes(8, 70000)
	n, err = fb.WriteAtFUA(fua, 1<<20+1)
	require.NoError(t, err)
	require.Equal(t, len(fua), n)
	copy(content[1<<20+1:], fua)
	require.NoError(t, fb.Flush())

	// Trim may leave anything behind, but on a filesystem with hole
	// punching the range must read as zeros and free its blocks.
	before := allocatedBytes(t, fb.File())
	require.NoError(t, fb.Trim(2<<20, 1<<20))
	if !fb.noPunchHole.Load() {
		require.Less(t, allocatedBytes(t, fb.File()), before)
		clear(content[2<<20 : 3<<20])
	} else {
		got := make([]byte, 1<<20)
		_, err := fb.ReadAt(got, 2<<20)
		require.NoError(t, err)
		copy(content[2<<20:], got)
	}

	require.NoError(t, fb.WriteZeroes(100, 5000, true))
	clear(content[100:5100])
	require.NoError(t, fb.WriteZeroes(3<<20+7, 70000, false))
	clear(content[3<<20+7 : 3<<20+7+70000])

	got := make([]byte, size)
	n, err = fb.ReadAt(got, 0)
	require.NoError(t, err)
	require.Equal(t, size, n)
	require.True(t, bytes.Equal(content, got), "file contents differ from the model")

	_, err = fb.WriteAt([]byte{1}, size)
	require.ErrorIs(t, err, ErrOutOfRange)
	_, err = fb.WriteAtFUA([]byte{1, 2}, size-1)
	require.ErrorIs(t, err, ErrOutOfRange)
	require.ErrorIs(t, fb.Trim(size, 1), ErrOutOfRange)
	require.ErrorIs(t, fb.WriteZeroes(-1, 1, true), ErrOutOfRange)
	n, err = fb.ReadAt(make([]byte, 10), size-5)
	require.ErrorIs(t, err, io.EOF)
	require.Equal(t, 5, n)
	require.True(t, fb.CanMultiConn())
}

func TestFileBackendFallbacks(t *testing.T) {
	fb := newTestFile(t, bytes.Repeat([]byte{1}, 1<<20))
	// Pretend the kernel lacks every fast path.
	fb.noDsyncWrite.Store(true)
	fb.noPunchHole.Store(true)
	fb.noZeroRange.Store(true)
	require.NoError(t, fb.WriteZeroes(1000, 300000, true))
	require.NoError(t, fb.Trim(0, 4096), "trim is a hint and succeeds without hole punching")
	_, err := fb.WriteAtFUA([]byte("durable"), 500000)
	require.NoError(t, err)
	got := make([]byte, 1<<20)
	_, err = fb.ReadAt(got, 0)
	require.NoError(t, err)
	require.Equal(t, make([]byte, 300000), got[1000:301000])
	require.Equal(t, []byte("durable"), got[500000:500007])
	require.Equal(t, byte(1), got[999])
	require.Equal(t, byte(1), got[301000])
}

func TestOpenFileBackendReadOnly(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ro.img")
	require.NoError(t, os.WriteFile(path, []byte("abcdef"), 0o600))
	fb, err := OpenFileBackend(path, true)
	require.NoError(t, err)
	defer fb.Close()
	_, err = fb.WriteAt([]byte("x"), 0)
	require.Error(t, err)
	require.Equal(t, EPERM, errnoFor(errors.Wrap(syscall.EROFS, "x")))
	_, err = OpenFileBackend(filepath.Join(t.TempDir(), "missing"), true)
	require.ErrorIs(t, err, os.ErrNotExist)
}

func TestReadOnlyWrapper(t *testing.T) {
	mem := NewMemoryBackend(4096)
	copy(mem.data, "base")
	ro := ReadOnly(mem)
	_, err := ro.WriteAt([]byte("x"), 0)
	require.ErrorIs(t, err, ErrReadOnly)
	require.Equal(t, EPERM, errnoFor(err))
	got := make([]byte, 4)
	_, err = ro.ReadAt(got, 0)
	require.NoError(t, err)
	require.Equal(t, []byte("base"), got)
	for name, ok := range map[string]bool{
		"Trimmer":    implements[Trimmer](ro),
		"ZeroWriter": implements[ZeroWriter](ro),
		"FUAWriter":  implements[FUAWriter](ro),
	} {
		require.False(t, ok, "ReadOnly must hide %s", name)
	}
	require.True(t, implements[Flusher](ro))
	require.NoError(t, ro.(Flusher).Flush())
	require.True(t, ro.(MultiConner).CanMultiConn())
	require.False(t, ReadOnly(singleConn{plainBackend{mem}}).(MultiConner).CanMultiConn())
}

func fill[T any](s []T, v T) {
	for i := range s {
		s[i] = v
	}
}

func implements[I any](b Backend) bool {
	_, ok := b.(I)
	return ok
}

// TestCopyOnWriteModel applies random writes, zeroes and trims to a
// CopyOnWrite and to a plain model and compares them, checking the base
// never changes.
func TestCopyOnWriteModel(t *testing.T) {
	for _, tc := range []struct {
		size      int64
		blockSize int
	}{
		{1 << 20, 4096},
		{1<<20 + 1000, 512}, // last block partial
		{300000, 0},         // default 64 KiB blocks, size not aligned
	} {
		t.Run(fmt.Sprintf("size=%d/block=%d", tc.size, tc.blockSize), func(t *testing.T) {
			baseData := randomBytes(uint64(tc.size), int(tc.size))
			base := NewMemoryBackend(tc.size)
			copy(base.data, baseData)
			cow, err := NewCopyOnWrite(ReadOnly(base), t.TempDir(), tc.blockSize)
			require.NoError(t, err)
			defer cow.Close()
			require.Equal(t, tc.size, cow.Size())

			model := append([]byte(nil), baseData...)
			trimmed := make([]bool, tc.size) // bytes whose content is unspecified
			r := rand.New(rand.NewPCG(1, 2))
			for i := range 300 {
				off := r.Int64N(tc.size)
				n := r.Int64N(min(tc.size-off, 100000)) + 1
				switch r.IntN(6) {
				case 0, 1, 2:
					data := randomBytes(uint64(i), int(n))
					w, err := cow.WriteAt(data, off)
					require.NoError(t, err)
					require.Equal(t, int(n), w)
					copy(model[off:], data)
					clear(trimmed[off : off+n])
				case 3:
					require.NoError(t, cow.WriteZeroes(off, n, r.IntN(2) == 0))
					clear(model[off : off+n])
					clear(trimmed[off : off+n])
				case 4:
					require.NoError(t, cow.Trim(off, n))
					fill(trimmed[off:off+n], true)
				case 5:
					got := make([]byte, n)
					rn, err := cow.ReadAt(got, off)
					require.NoError(t, err)
					require.Equal(t, int(n), rn)
					want := model[off : off+n]
					if !bytes.Equal(got, want) {
						for j := range got {
							if !trimmed[off+int64(j)] && got[j] != want[j] {
								t.Fatalf("step %d: byte %d differs", i, off+int64(j))
							}
						}
					}
				}
			}
			require.Equal(t, baseData, base.Bytes(), "the base must never change")
			require.Positive(t, cow.DirtyBlocks())
			require.LessOrEqual(t, cow.DirtyBlocks(), (tc.size+int64(cow.BlockSize())-1)/int64(cow.BlockSize()))

			n, err := cow.ReadAt(make([]byte, 100), tc.size-10)
			require.ErrorIs(t, err, io.EOF)
			require.Equal(t, 10, n)
			_, err = cow.WriteAt([]byte{1, 2}, tc.size-1)
			require.ErrorIs(t, err, ErrOutOfRange)
		})
	}
}

func TestCopyOnWriteTrimRevertsWholeBlocks(t *testing.T) {
	base := NewMemoryBackend(64 << 10)
	copy(base.data, bytes.Repeat([]byte("base"), 16<<10))
	cow, err := NewCopyOnWrite(base, t.TempDir(), 4096)
	require.NoError(t, err)
	defer cow.Close()
	_, err = cow.WriteAt(bytes.Repeat([]byte{0xff}, 16384), 0)
	require.NoError(t, err)
	require.Equal(t, int64(4), cow.DirtyBlocks())
	// Covers blocks 1 and 2 entirely, blocks 0 and 3 partly.
	require.NoError(t, cow.Trim(100, 16000))
	require.Equal(t, int64(2), cow.DirtyBlocks())
	got := make([]byte, 16384)
	_, err = cow.ReadAt(got, 0)
	require.NoError(t, err)
	require.Equal(t, bytes.Repeat([]byte{0xff}, 4096), got[:4096])
	require.Equal(t, base.data[4096:12288], got[4096:12288])
	require.Equal(t, bytes.Repeat([]byte{0xff}, 4096), got[12288:])
}

// TestCopyOnWriteConcurrentPartialWrites has goroutines write neighbouring
// byte ranges that share blocks, so each first write to a block races with
// others doing read-modify-write of the same block.
func TestCopyOnWriteConcurrentPartialWrites(t *testing.T) {
	const size = 1 << 20
	base := NewMemoryBackend(size)
	copy(base.data, randomBytes(3, size))
	cow, err := NewCopyOnWrite(base, t.TempDir(), 4096)
	require.NoError(t, err)
	defer cow.Close()
	const workers, piece = 8, 1000
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i*piece < size-piece; i += workers {
				_, err := cow.WriteAt(bytes.Repeat([]byte{byte(w + 1)}, piece), int64(i*piece))
				if err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	got := make([]byte, size)
	_, err = cow.ReadAt(got, 0)
	require.NoError(t, err)
	for i := 0; i*piece < size-piece; i++ {
		require.Equal(t, bytes.Repeat([]byte{byte(i%workers + 1)}, piece), got[i*piece:(i+1)*piece], "piece %d", i)
	}
	tail := ((size-piece-1)/piece + 1) * piece // end of the last piece written
	require.Equal(t, base.data[tail:], got[tail:], "bytes never written come from the base")
}

func TestCopyOnWriteValidation(t *testing.T) {
	base := NewMemoryBackend(4096)
	for _, bs := range []int{100, 256, 3000, 32 << 20} {
		_, err := NewCopyOnWrite(base, t.TempDir(), bs)
		require.Error(t, err, "block size %d", bs)
	}
	_, err := NewCopyOnWrite(base, filepath.Join(t.TempDir(), "missing"), 0)
	require.Error(t, err)
	dir := t.TempDir()
	cow, err := NewCopyOnWrite(base, dir, 0)
	require.NoError(t, err)
	defer cow.Close()
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Empty(t, entries, "the overlay is unlinked at once")
	require.NoError(t, cow.Flush())
}

// TestCopyOnWriteOverNBD exports a writable view of a read-only base and
// writes through the protocol.
func TestCopyOnWriteOverNBD(t *testing.T) {
	base := NewMemoryBackend(2 << 20)
	copy(base.data, randomBytes(11, 2<<20))
	orig := base.Bytes()
	cow, err := NewCopyOnWrite(ReadOnly(base), t.TempDir(), 0)
	require.NoError(t, err)
	defer cow.Close()
	_, addr := startServer(t, Options{}, testExport{name: "snap", backend: cow})
	c := dialClient(t, addr, ClientOptions{Export: "snap"})
	require.Equal(t, FlagHasFlags|FlagSendFlush|FlagSendFUA|FlagSendTrim|FlagSendWriteZeroes|FlagCanMultiConn, c.Flags())
	_, err = c.WriteAtFUA([]byte("changed"), 1000)
	require.NoError(t, err)
	require.NoError(t, c.WriteZeroes(1<<20, 128<<10, true))
	got := make([]byte, 2<<20)
	_, err = c.ReadAt(got, 0)
	require.NoError(t, err)
	want := append([]byte(nil), orig...)
	copy(want[1000:], "changed")
	clear(want[1<<20 : 1<<20+128<<10])
	require.Equal(t, want, got)
	require.Equal(t, orig, base.Bytes())
}

func TestErrnoMapping(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want Errno
	}{
		{syscall.ENOSPC, ENOSPC},
		{&os.PathError{Op: "write", Err: syscall.EDQUOT}, ENOSPC},
		{errors.Wrap(syscall.EFBIG, "x"), ENOSPC},
		{syscall.EROFS, EPERM},
		{syscall.EACCES, EPERM},
		{syscall.EINVAL, EINVAL},
		{syscall.ENOMEM, EIO},
		{syscall.EIO, EIO},
		{io.ErrUnexpectedEOF, EIO},
		{errors.Wrap(ErrReadOnly, "x"), EPERM},
		{errors.Wrap(ErrOutOfRange, "x"), EINVAL},
		{errors.Wrap(ENOTSUP, "x"), ENOTSUP},
	} {
		require.Equal(t, tc.want, errnoFor(tc.err), "%v", tc.err)
	}
}

func TestNames(t *testing.T) {
	require.Equal(t, "HAS_FLAGS|READ_ONLY|CAN_MULTI_CONN", (FlagHasFlags | FlagReadOnly | FlagCanMultiConn).String())
	require.Equal(t, "0", TransmissionFlags(0).String())
	require.Equal(t, "SEND_FAST_ZERO|0x8000", (FlagSendFastZero | 1<<15).String())
	require.Equal(t, "nbd: EPERM: operation not permitted", EPERM.Error())
	require.Equal(t, "nbd: error 4242", Errno(4242).Error())
	require.Equal(t, "WRITE_ZEROES", commandName(cmdWriteZeroes))
	require.Equal(t, "CMD_77", commandName(77))
	require.Equal(t, "GO", optionName(optGo))
	require.Equal(t, "OPT_77", optionName(77))
}

func TestBufferPool(t *testing.T) {
	for _, n := range []int{1, 4096, 4097, 1 << 20, 1<<20 + 1, 32 << 20} {
		b := getBuffer(n)
		require.Len(t, b, n)
		require.GreaterOrEqual(t, cap(b), n)
		require.Equal(t, 0, cap(b)&(cap(b)-1), "capacity is a power of two")
		putBuffer(b)
	}
}

// TestFileBackendBlockDevice runs FileBackend on a loop device, where the
// size comes from the device and fallocate goes through the block layer.
func TestFileBackendBlockDevice(t *testing.T) {
	const size = 8 << 20
	img := filepath.Join(t.TempDir(), "loop.img")
	require.NoError(t, os.WriteFile(img, bytes.Repeat([]byte{0x6b}, size), 0o600))
	out, err := exec.Command("losetup", "--find", "--show", img).CombinedOutput()
	if err != nil {
		t.Skipf("no loop device available (needs root and the loop driver): %v: %s", err, out)
	}
	dev := strings.TrimSpace(string(out))
	t.Cleanup(func() { _ = exec.Command("losetup", "--detach", dev).Run() })

	fb, err := OpenFileBackend(dev, false)
	require.NoError(t, err)
	defer fb.Close()
	require.Equal(t, int64(size), fb.Size())

	data := randomBytes(61, 1<<20)
	_, err = fb.WriteAtFUA(data, 1<<20)
	require.NoError(t, err)
	require.NoError(t, fb.WriteZeroes(3<<20, 1<<20, true))
	require.NoError(t, fb.WriteZeroes(5<<20, 1<<20, false))
	require.NoError(t, fb.Trim(7<<20, 1<<20))
	require.NoError(t, fb.Flush())

	got := make([]byte, size)
	_, err = fb.ReadAt(got, 0)
	require.NoError(t, err)
	require.Equal(t, data, got[1<<20:2<<20])
	require.Equal(t, make([]byte, 1<<20), got[3<<20:4<<20])
	require.Equal(t, make([]byte, 1<<20), got[5<<20:6<<20])
	require.Equal(t, bytes.Repeat([]byte{0x6b}, 1<<20), got[6<<20:7<<20])
	t.Logf("%s: RWF_DSYNC %v, punch hole %v, zero range %v", dev,
		!fb.noDsyncWrite.Load(), !fb.noPunchHole.Load(), !fb.noZeroRange.Load())
}
