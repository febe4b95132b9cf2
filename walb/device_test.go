package walb

import (
	"bytes"
	"context"
	"crypto/rand"
	"io"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/wlog"
)

// newFiles creates a log device file and a data device file.
func newFiles(t testing.TB, ldevBytes, ddevBytes int64) (string, string) {
	t.Helper()
	dir := t.TempDir()
	l, d := filepath.Join(dir, "ldev.img"), filepath.Join(dir, "ddev.img")
	for p, n := range map[string]int64{l: ldevBytes, d: ddevBytes} {
		f, err := os.Create(p)
		require.NoError(t, err)
		require.NoError(t, f.Truncate(n))
		require.NoError(t, f.Close())
	}
	return l, d
}

func openFiles(t testing.TB, l, d string, opts Options) *Device {
	t.Helper()
	if opts.Logger == nil {
		opts.Logger = testLogger(t)
	}
	dev, err := Open(context.Background(), l, d, opts)
	require.NoError(t, err)
	return dev
}

func randBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// extract reads the whole log of an image file and redoes it onto base.
func redoImage(t testing.TB, ldevPath string, base []byte) []byte {
	t.Helper()
	l, err := OpenLogDevice(ldevPath, 0)
	require.NoError(t, err)
	defer l.Close()
	var wl bytes.Buffer
	_, err = l.ReadLog(context.Background(), 0, wlog.InvalidLsid, &wl)
	require.NoError(t, err)
	r, err := wlog.NewReader(&wl)
	require.NoError(t, err)
	out := bytes.Clone(base)
	_, err = wlog.Redo(context.Background(), r, sliceWriterAt(out), wlog.RedoOptions{ZeroDiscard: true})
	require.NoError(t, err)
	return out
}

func TestFormatOpenReopen(t *testing.T) {
	for _, pbs := range []uint32{512, 1024, 2048, 4096} {
		t.Run(fmtPBS(pbs), func(t *testing.T) {
			const ldevBytes, ddevBytes = 2<<20 + 1000, 4 << 20
			l, d := newFiles(t, ldevBytes, ddevBytes)
			s, err := FormatLogDevice(l, d, FormatOptions{Name: "vol0", PBS: pbs})
			require.NoError(t, err)
			require.Equal(t, uint64(ldevBytes/int64(pbs))-(PageSize/uint64(pbs)+2), s.RingBufferSize)
			require.Equal(t, uint64(ddevBytes/LBS), s.DeviceSize)
			img, err := os.ReadFile(l)
			require.NoError(t, err)
			got, err := ParseSuper(img[PageSize : PageSize+int(pbs)])
			require.NoError(t, err)
			require.Equal(t, s, got)
			require.Equal(t, make([]byte, pbs), img[s.LsidOffset(0):s.LsidOffset(0)+int64(pbs)])

			dev := openFiles(t, l, d, Options{})
			require.Equal(t, int64(ddevBytes), dev.Size())
			require.Equal(t, pbs, dev.PBS())
			require.Equal(t, s.UUID, dev.UUID())
			require.Equal(t, s.Salt, dev.Salt())
			model := make([]byte, ddevBytes)
			for i, w := range []struct{ off, n int64 }{{0, 512}, {4096, 8192}, {1 << 20, 1 << 20}, {ddevBytes - 1536, 1536}, {512, 512}} {
				b := randBytes(int(w.n))
				if i%2 == 0 {
					_, err = dev.WriteAt(b, w.off)
				} else {
					_, err = dev.WriteAtFUA(b, w.off)
				}
				require.NoError(t, err)
				copy(model[w.off:], b)
			}
			require.NoError(t, dev.Trim(8192, 4096))
			clear(model[8192 : 8192+4096])
			require.NoError(t, dev.WriteZeroes(2<<20, 512*3, false))
			clear(model[2<<20 : 2<<20+1536])
			readAll := func(dev *Device) []byte {
				b := make([]byte, ddevBytes)
				_, err := dev.ReadAt(b, 0)
				require.NoError(t, err)
				return b
			}
			require.True(t, bytes.Equal(model, readAll(dev)))
			require.NoError(t, dev.Flush())
			ls := dev.Lsids()
			require.Equal(t, ls.Completed, ls.Permanent)
			require.NoError(t, dev.Close())
			_, err = dev.ReadAt(make([]byte, 512), 0)
			require.ErrorIs(t, err, ErrClosed)
			_, err = dev.WriteAt(make([]byte, 512), 0)
			require.ErrorIs(t, err, ErrClosed)

			// Closed cleanly: the super sector has written == latest.
			li, err := OpenLogDevice(l, 0)
			require.NoError(t, err)
			require.Equal(t, ls.Latest, li.Super().WrittenLsid)
			require.NoError(t, li.Close())
			raw, err := os.ReadFile(d)
			require.NoError(t, err)
			require.True(t, bytes.Equal(model, raw))
			// The log replayed on a zero image gives the same data device.
			require.True(t, bytes.Equal(model, redoImage(t, l, make([]byte, ddevBytes))))

			dev = openFiles(t, l, d, Options{})
			require.Equal(t, Lsids{Latest: ls.Latest, Completed: ls.Latest, Flush: ls.Latest, Permanent: ls.Latest,
				Written: ls.Latest, PrevWritten: ls.Latest}, dev.Lsids())
			require.True(t, bytes.Equal(model, readAll(dev)))
			require.NoError(t, dev.Close())
		})
	}
}

func fmtPBS(pbs uint32) string { return "pbs" + itoa(int(pbs)) }

func itoa(n int) string {
	var b []byte
	for {
		b = append([]byte{byte('0' + n%10)}, b...)
		n /= 10
		if n == 0 {
			return string(b)
		}
	}
}

func TestFormatErrors(t *testing.T) {
	l, d := newFiles(t, 1<<20, 1<<20)
	_, err := FormatLogDevice(l, d, FormatOptions{PBS: 3072})
	require.ErrorIs(t, err, ErrInvalid)
	_, err = FormatLogDevice(l, d, FormatOptions{Name: "0123456789012345678901234567890123"})
	require.ErrorIs(t, err, ErrInvalid)
	_, err = FormatLogDevice(l, d, FormatOptions{DeviceSize: 1 << 30})
	require.ErrorIs(t, err, ErrInvalid)
	small, _ := newFiles(t, 8192, 1<<20)
	_, err = FormatLogDevice(small, d, FormatOptions{PBS: 4096})
	require.ErrorIs(t, err, ErrInvalid)

	// A damaged super sector is refused.
	_, err = FormatLogDevice(l, d, FormatOptions{})
	require.NoError(t, err)
	f, err := os.OpenFile(l, os.O_RDWR, 0)
	require.NoError(t, err)
	_, err = f.WriteAt([]byte{0xff}, PageSize+100)
	require.NoError(t, err)
	require.NoError(t, f.Close())
	_, err = Open(context.Background(), l, d, Options{Logger: testLogger(t)})
	require.ErrorIs(t, err, ErrChecksum)
	_, err = OpenLogDevice(l, 0)
	require.ErrorIs(t, err, ErrChecksum)
}

func TestIOValidation(t *testing.T) {
	l, d := newFiles(t, 1<<20, 1<<20)
	_, err := FormatLogDevice(l, d, FormatOptions{})
	require.NoError(t, err)
	dev := openFiles(t, l, d, Options{})
	defer dev.Close()
	for _, c := range []struct {
		off int64
		n   int
	}{{1, 512}, {0, 100}, {-512, 512}, {1 << 20, 512}, {1<<20 - 512, 1024}} {
		_, err := dev.WriteAt(make([]byte, c.n), c.off)
		require.ErrorIs(t, err, ErrInvalid, "write %+v", c)
		_, err = dev.ReadAt(make([]byte, c.n), c.off)
		require.ErrorIs(t, err, ErrInvalid, "read %+v", c)
		require.ErrorIs(t, dev.Trim(c.off, int64(c.n)), ErrInvalid)
		require.ErrorIs(t, dev.WriteZeroes(c.off, int64(c.n), false), ErrInvalid)
	}
	n, err := dev.WriteAt(nil, 0)
	require.NoError(t, err)
	require.Zero(t, n)
	require.Zero(t, dev.Lsids().Latest, "an empty write logs nothing")
}

// TestLargeWriteSplit checks that a write larger than the maximum IO size
// becomes several records, each within the limit.
func TestLargeWriteSplit(t *testing.T) {
	l, d := newFiles(t, 1<<20, 1<<20)
	_, err := FormatLogDevice(l, d, FormatOptions{PBS: 4096})
	require.NoError(t, err)
	dev := openFiles(t, l, d, Options{MaxIOSize: 8192, MaxLogpackKB: 16})
	b := randBytes(64 << 10)
	_, err = dev.WriteAt(b, 4096)
	require.NoError(t, err)
	got := make([]byte, len(b))
	_, err = dev.ReadAt(got, 4096)
	require.NoError(t, err)
	require.Equal(t, b, got)
	require.NoError(t, dev.Flush())
	var wl bytes.Buffer
	_, err = dev.ReadLog(context.Background(), 0, wlog.InvalidLsid, &wl)
	require.NoError(t, err)
	r, err := wlog.NewReader(&wl)
	require.NoError(t, err)
	nRec := 0
	for {
		h, err := r.NextPack()
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
		require.LessOrEqual(t, 1+int(h.TotalIOSize), 4, "a pack stays within MaxLogpackKB")
		for {
			rec, _, err := r.NextRecord()
			if err == io.EOF {
				break
			}
			require.NoError(t, err)
			require.Equal(t, uint32(16), rec.IOSize)
			nRec++
		}
	}
	require.Equal(t, 8, nRec)
	require.NoError(t, dev.Close())
}

// TestPaddingAtRingWrap writes across the end of the ring: the record that
// would cross it is preceded by a padding record, no record's data crosses
// the ring end, and the log stays readable and replayable.
func TestPaddingAtRingWrap(t *testing.T) {
	for _, pbs := range []uint32{512, 4096} {
		t.Run(fmtPBS(pbs), func(t *testing.T) {
			ctx := context.Background()
			const ddevBytes = 1 << 20
			ldevBytes := int(pbs) * 203
			ringPB := uint64(203) - (PageSize/uint64(pbs) + 2)
			start := 5*ringPB - 3 // three PBs before the ring end
			ldevImg := formatMem(t, pbs, ldevBytes, make([]byte, ddevBytes), start)
			ctl := newCrashCtl(1, 0)
			ldev, ddev := ctl.disk(ldevImg, int(pbs)), ctl.disk(make([]byte, ddevBytes), int(pbs))
			dev, err := OpenStorage(ctx, ldev, ddev, Options{Logger: testLogger(t)})
			require.NoError(t, err)
			model := make([]byte, ddevBytes)
			for i := range 6 {
				b := randBytes(int(pbs) * 4)
				off := int64(i) * int64(len(b))
				_, err := dev.WriteAt(b, off)
				require.NoError(t, err)
				copy(model[off:], b)
			}
			require.NoError(t, dev.Flush())
			var wl bytes.Buffer
			_, err = dev.ReadLog(ctx, start, wlog.InvalidLsid, &wl)
			require.NoError(t, err)
			r, err := wlog.NewReader(bytes.NewReader(wl.Bytes()))
			require.NoError(t, err)
			padding := 0
			for {
				h, err := r.NextPack()
				if err == io.EOF {
					break
				}
				require.NoError(t, err)
				for _, rec := range h.Records {
					if rec.IsPadding() {
						padding++
						require.Zero(t, (rec.Lsid+rec.DataPBs(pbs))%ringPB, "padding ends at the ring end")
						continue
					}
					require.LessOrEqual(t, rec.Lsid%ringPB+rec.DataPBs(pbs), ringPB, "record data crosses the ring end")
				}
			}
			require.Equal(t, 1, padding)
			redone := make([]byte, ddevBytes)
			r, err = wlog.NewReader(bytes.NewReader(wl.Bytes()))
			require.NoError(t, err)
			_, err = wlog.Redo(ctx, r, sliceWriterAt(redone), wlog.RedoOptions{})
			require.NoError(t, err)
			require.True(t, bytes.Equal(model, redone))
			require.NoError(t, dev.Close())
		})
	}
}

func TestOverflowAndResetWAL(t *testing.T) {
	ctx := context.Background()
	const ddevBytes = 1 << 20
	l, d := newFiles(t, 64<<10, ddevBytes)
	_, err := FormatLogDevice(l, d, FormatOptions{PBS: 4096})
	require.NoError(t, err)
	dev := openFiles(t, l, d, Options{})
	capacity := dev.LogCapacity()
	require.Equal(t, uint64(16-3), capacity)
	oldUUID, oldSalt := dev.UUID(), dev.Salt()
	model := make([]byte, ddevBytes)
	for i := range 40 {
		b := randBytes(8192)
		off := int64(i%100) * 8192
		_, err := dev.WriteAt(b, off)
		require.NoError(t, err)
		copy(model[off:], b)
	}
	require.True(t, dev.IsLogOverflow())
	require.Greater(t, dev.LogUsage(), capacity)
	got := make([]byte, ddevBytes)
	_, err = dev.ReadAt(got, 0)
	require.NoError(t, err)
	require.True(t, bytes.Equal(model, got), "writes reach the data device during overflow")
	_, err = dev.ReadLog(ctx, 0, wlog.InvalidLsid, io.Discard)
	require.ErrorIs(t, err, ErrOverflow)
	ls := dev.Lsids()
	require.LessOrEqual(t, ls.Latest-ls.PrevWritten, capacity, "the log recovery needs is never overwritten")
	require.NoError(t, dev.Close())
	raw, err := os.ReadFile(d)
	require.NoError(t, err)
	require.True(t, bytes.Equal(model, raw))

	// The overflow is still known after a restart.
	dev = openFiles(t, l, d, Options{})
	require.True(t, dev.IsLogOverflow())
	require.ErrorIs(t, dev.SetOldestLsid(5), ErrInvalid)

	// Grow the log device, then reset.
	require.NoError(t, os.Truncate(l, 128<<10))
	require.NoError(t, dev.ResetWAL(ctx))
	require.False(t, dev.IsLogOverflow())
	require.Equal(t, Lsids{}, dev.Lsids())
	require.NotEqual(t, oldUUID, dev.UUID())
	require.NotEqual(t, oldSalt, dev.Salt())
	require.Equal(t, uint64(32-3), dev.LogCapacity())
	b := randBytes(4096)
	_, err = dev.WriteAtFUA(b, 0)
	require.NoError(t, err)
	copy(model, b)
	var wl bytes.Buffer
	end, err := dev.ReadLog(ctx, 0, wlog.InvalidLsid, &wl)
	require.NoError(t, err)
	require.Equal(t, uint64(2), end)
	require.NoError(t, dev.Close())

	li, err := OpenLogDevice(l, 0)
	require.NoError(t, err)
	s := li.Super()
	require.Equal(t, uint64(29), s.RingBufferSize)
	require.Equal(t, dev.UUID(), s.UUID)
	require.Equal(t, uint64(0), s.OldestLsid)
	require.NoError(t, li.Close())
	raw, err = os.ReadFile(d)
	require.NoError(t, err)
	require.True(t, bytes.Equal(model, raw))
}

func TestFreezeMelt(t *testing.T) {
	l, d := newFiles(t, 1<<20, 1<<20)
	_, err := FormatLogDevice(l, d, FormatOptions{})
	require.NoError(t, err)
	dev := openFiles(t, l, d, Options{})
	defer dev.Close()
	require.ErrorIs(t, dev.Freeze(-time.Second), ErrInvalid)
	require.NoError(t, dev.Freeze(0))
	require.True(t, dev.IsFrozen())
	done := make(chan error, 1)
	go func() {
		_, err := dev.WriteAt(randBytes(4096), 0)
		done <- err
	}()
	select {
	case err := <-done:
		t.Fatalf("write completed while frozen: %v", err)
	case <-time.After(50 * time.Millisecond):
	}
	require.Zero(t, dev.Lsids().Latest, "nothing is logged while frozen")
	// Reads still work while frozen.
	_, err = dev.ReadAt(make([]byte, 512), 0)
	require.NoError(t, err)
	require.NoError(t, dev.Melt())
	require.False(t, dev.IsFrozen())
	require.NoError(t, <-done)
	require.NotZero(t, dev.Lsids().Latest)

	// A timeout melts by itself.
	require.NoError(t, dev.Freeze(20*time.Millisecond))
	require.True(t, dev.IsFrozen())
	require.Eventually(t, func() bool { return !dev.IsFrozen() }, 5*time.Second, 5*time.Millisecond)
	_, err = dev.WriteAt(randBytes(512), 0)
	require.NoError(t, err)

	// Close melts and completes held writes.
	require.NoError(t, dev.Freeze(0))
	go func() {
		_, err := dev.WriteAt(randBytes(4096), 8192)
		done <- err
	}()
	require.Eventually(t, func() bool {
		dev.mu.Lock()
		defer dev.mu.Unlock()
		return len(dev.queue) == 1
	}, 5*time.Second, time.Millisecond)
	require.NoError(t, dev.Close())
	require.NoError(t, <-done)
}

func TestResize(t *testing.T) {
	l, d := newFiles(t, 1<<20, 1<<20)
	_, err := FormatLogDevice(l, d, FormatOptions{DeviceSize: 1024})
	require.NoError(t, err)
	dev := openFiles(t, l, d, Options{})
	require.Equal(t, int64(1024*LBS), dev.Size())
	_, err = dev.WriteAt(make([]byte, 512), 1024*LBS)
	require.ErrorIs(t, err, ErrInvalid)
	require.ErrorIs(t, dev.Resize(512), ErrInvalid, "shrinking is refused")
	require.ErrorIs(t, dev.Resize(4096), ErrInvalid, "beyond the data device")
	require.NoError(t, dev.Resize(1536))
	require.Equal(t, int64(1536*LBS), dev.Size())
	require.NoError(t, os.Truncate(d, 2<<20))
	require.NoError(t, dev.Resize(0))
	require.Equal(t, int64(2<<20), dev.Size())
	b := randBytes(4096)
	_, err = dev.WriteAt(b, 2<<20-4096)
	require.NoError(t, err)
	require.NoError(t, dev.Close())
	dev = openFiles(t, l, d, Options{})
	require.Equal(t, int64(2<<20), dev.Size())
	got := make([]byte, 4096)
	_, err = dev.ReadAt(got, 2<<20-4096)
	require.NoError(t, err)
	require.Equal(t, b, got)
	require.NoError(t, dev.Close())
}

func TestSetOldestLsid(t *testing.T) {
	l, d := newFiles(t, 1<<20, 1<<20)
	_, err := FormatLogDevice(l, d, FormatOptions{PBS: 4096})
	require.NoError(t, err)
	dev := openFiles(t, l, d, Options{CheckpointInterval: -1})
	// Three packs of 1 + 2 PBs at lsids 0, 3, 6.
	for i := range 3 {
		_, err := dev.WriteAtFUA(randBytes(8192), int64(i)*8192)
		require.NoError(t, err)
	}
	ls := dev.Lsids()
	require.Equal(t, uint64(9), ls.Permanent)
	require.Equal(t, uint64(0), ls.PrevWritten, "no checkpoint yet")
	require.ErrorIs(t, dev.SetOldestLsid(3), ErrInvalid, "above prev_written")
	// The applier writes the data once the log is durable; a checkpoint
	// then records how far it got.
	require.Eventually(t, func() bool { return dev.Lsids().Written == 9 }, 5*time.Second, time.Millisecond)
	require.NoError(t, dev.TakeCheckpoint())
	require.Equal(t, uint64(9), dev.Lsids().PrevWritten)
	for _, bad := range []uint64{1, 2, 4, 10, 100} {
		require.ErrorIs(t, dev.SetOldestLsid(bad), ErrInvalid, "lsid %d", bad)
	}
	require.NoError(t, dev.SetOldestLsid(3))
	require.Equal(t, uint64(6), dev.LogUsage())
	require.ErrorIs(t, dev.SetOldestLsid(0), ErrInvalid, "below oldest")
	_, err = dev.NewPackReader(0, 9)
	require.ErrorIs(t, err, ErrInvalid, "reading below oldest")
	require.NoError(t, dev.SetOldestLsid(9), "prev_written itself")
	require.Zero(t, dev.LogUsage())
	require.NoError(t, dev.Close())
	li, err := OpenLogDevice(l, 0)
	require.NoError(t, err)
	require.Equal(t, uint64(9), li.Super().OldestLsid)
	require.NoError(t, li.Close())
}

func TestCheckpointInterval(t *testing.T) {
	l, d := newFiles(t, 1<<20, 1<<20)
	_, err := FormatLogDevice(l, d, FormatOptions{})
	require.NoError(t, err)
	dev := openFiles(t, l, d, Options{CheckpointInterval: -1})
	defer dev.Close()
	require.Zero(t, dev.CheckpointInterval())
	require.ErrorIs(t, dev.SetCheckpointInterval(25*time.Hour), ErrInvalid)
	require.ErrorIs(t, dev.SetCheckpointInterval(-time.Second), ErrInvalid)
	_, err = dev.WriteAtFUA(randBytes(4096), 0)
	require.NoError(t, err)
	require.NoError(t, dev.SetCheckpointInterval(5*time.Millisecond))
	require.Equal(t, 5*time.Millisecond, dev.CheckpointInterval())
	// Data is applied once its log is durable; then a checkpoint follows.
	require.Eventually(t, func() bool {
		ls := dev.Lsids()
		return ls.PrevWritten == ls.Latest
	}, 5*time.Second, time.Millisecond)
}

// TestPackReaderFollows reads the log of a running device as it grows.
func TestPackReaderFollows(t *testing.T) {
	ctx := context.Background()
	l, d := newFiles(t, 1<<20, 1<<20)
	_, err := FormatLogDevice(l, d, FormatOptions{PBS: 4096})
	require.NoError(t, err)
	dev := openFiles(t, l, d, Options{LogFlushInterval: time.Hour})
	defer dev.Close()
	pr, err := dev.NewPackReader(0, wlog.InvalidLsid)
	require.NoError(t, err)
	_, err = dev.WriteAt(randBytes(4096), 0)
	require.NoError(t, err)
	_, _, err = pr.Next(ctx)
	require.ErrorIs(t, err, io.EOF, "nothing is permanent yet")

	pr, err = dev.NewPackReader(0, wlog.InvalidLsid)
	require.NoError(t, err)
	require.NoError(t, dev.Flush())
	h, data, err := pr.Next(ctx)
	require.NoError(t, err)
	require.Equal(t, uint64(0), h.LogpackLsid)
	require.Len(t, data, 4096)
	_, _, err = pr.Next(ctx)
	require.ErrorIs(t, err, io.EOF)

	pr, err = dev.NewPackReader(2, wlog.InvalidLsid)
	require.NoError(t, err)
	_, err = dev.WriteAtFUA(randBytes(8192), 8192)
	require.NoError(t, err)
	h, _, err = pr.Next(ctx)
	require.NoError(t, err)
	require.Equal(t, uint64(2), h.LogpackLsid)

	// A reset invalidates readers.
	pr, err = dev.NewPackReader(0, wlog.InvalidLsid)
	require.NoError(t, err)
	require.NoError(t, dev.ResetWAL(ctx))
	_, _, err = pr.Next(ctx)
	require.ErrorIs(t, err, ErrReset)
}

// TestConcurrentIO runs writers, readers, flushes and checkpoints at once
// (run it with -race): every goroutine reads back what it wrote, the lsids
// keep their order, and the final content matches.
func TestConcurrentIO(t *testing.T) {
	const ddevBytes = 4 << 20
	l, d := newFiles(t, 64<<20, ddevBytes)
	_, err := FormatLogDevice(l, d, FormatOptions{PBS: 4096})
	require.NoError(t, err)
	dev := openFiles(t, l, d, Options{MaxPendingMB: 2, MinPendingMB: 1, LogFlushInterval: time.Millisecond,
		CheckpointInterval: 3 * time.Millisecond, MaxLogpackKB: 64})
	const workers = 8
	region := int64(ddevBytes / workers)
	model := make([]byte, ddevBytes)
	var wg sync.WaitGroup
	errs := make(chan error, workers+2)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 64<<10)
			got := make([]byte, 64<<10)
			for i := range 150 {
				n := int64(512 * (1 + (i*7+w)%128))
				off := int64(w)*region + (int64(i*4099+w*512)%(region-n))/512*512
				rand.Read(buf[:n])
				var err error
				switch i % 5 {
				case 0:
					_, err = dev.WriteAtFUA(buf[:n], off)
				case 1:
					err = dev.Trim(off, n)
					clear(buf[:n])
				default:
					_, err = dev.WriteAt(buf[:n], off)
				}
				if err == nil {
					_, err = dev.ReadAt(got[:n], off)
				}
				if err == nil && !bytes.Equal(buf[:n], got[:n]) {
					err = io.ErrUnexpectedEOF
				}
				if err != nil {
					errs <- err
					return
				}
				copy(model[off:], buf[:n])
				if i%17 == 0 {
					if err := dev.Flush(); err != nil {
						errs <- err
						return
					}
				}
			}
		}()
	}
	stop := make(chan struct{})
	var side sync.WaitGroup
	side.Add(1)
	go func() {
		defer side.Done()
		b := make([]byte, 128<<10)
		for {
			select {
			case <-stop:
				return
			default:
			}
			ls := dev.Lsids()
			if !(ls.Oldest <= ls.PrevWritten && ls.PrevWritten <= ls.Written && ls.Written <= ls.Permanent &&
				ls.Permanent <= ls.Flush && ls.Flush <= ls.Completed && ls.Completed <= ls.Latest) {
				errs <- io.ErrClosedPipe
				t.Errorf("lsids out of order: %+v", ls)
				return
			}
			if _, err := dev.ReadAt(b, 0); err != nil {
				errs <- err
				return
			}
			if err := dev.TakeCheckpoint(); err != nil {
				errs <- err
				return
			}
		}
	}()
	wg.Wait()
	close(stop)
	side.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	require.NoError(t, dev.Close())
	raw, err := os.ReadFile(d)
	require.NoError(t, err)
	require.True(t, bytes.Equal(model, raw))
	require.True(t, bytes.Equal(model, redoImage(t, l, make([]byte, ddevBytes))))
}

// failingDisk fails writes once armed.
type failingDisk struct {
	*memDisk
	mu    sync.Mutex
	armed bool
}

func (f *failingDisk) WriteAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	armed := f.armed
	f.mu.Unlock()
	if armed {
		return 0, io.ErrShortWrite
	}
	return f.memDisk.WriteAt(p, off)
}

func TestDeviceFailure(t *testing.T) {
	var ldev *failingDisk
	dev := openMemDevice(t, func(m *memDisk) Storage { ldev = &failingDisk{memDisk: m}; return ldev }, Options{})
	b := randBytes(4096)
	_, err := dev.WriteAt(b, 0)
	require.NoError(t, err)
	ldev.mu.Lock()
	ldev.armed = true
	ldev.mu.Unlock()
	_, err = dev.WriteAt(randBytes(4096), 4096)
	require.ErrorIs(t, err, ErrFailed)
	require.ErrorIs(t, err, io.ErrShortWrite)
	_, err = dev.WriteAt(randBytes(4096), 8192)
	require.ErrorIs(t, err, ErrFailed)
	require.ErrorIs(t, dev.Flush(), ErrFailed)
	got := make([]byte, 4096)
	_, err = dev.ReadAt(got, 0)
	require.NoError(t, err)
	require.Equal(t, b, got, "acknowledged writes stay readable")
	require.ErrorIs(t, dev.Close(), ErrFailed)
}

// gatedDisk parks WriteAt calls while armed, until released.
type gatedDisk struct {
	*memDisk
	mu      sync.Mutex
	armed   bool
	entered chan struct{}
	release chan struct{}
}

func (g *gatedDisk) WriteAt(p []byte, off int64) (int, error) {
	g.mu.Lock()
	armed := g.armed
	g.armed = false
	g.mu.Unlock()
	if armed {
		close(g.entered)
		<-g.release
	}
	return g.memDisk.WriteAt(p, off)
}

func newGatedDisk(m *memDisk) *gatedDisk {
	return &gatedDisk{memDisk: m, entered: make(chan struct{}), release: make(chan struct{})}
}

// arm parks the next WriteAt.
func (g *gatedDisk) arm() {
	g.mu.Lock()
	g.armed = true
	g.mu.Unlock()
}

// openMemDevice opens a device on a freshly formatted 1 MiB in-memory log
// device (wrapped by wrap, when not nil) and a 1 MiB data device of zeros.
func openMemDevice(t *testing.T, wrap func(*memDisk) Storage, opts Options) *Device {
	t.Helper()
	const ddevBytes = 1 << 20
	img := formatMem(t, 4096, 1<<20, make([]byte, ddevBytes), 0)
	ctl := newCrashCtl(1, 0)
	var ldev Storage = ctl.disk(img, 4096)
	if wrap != nil {
		ldev = wrap(ldev.(*memDisk))
	}
	if opts.Logger == nil {
		opts.Logger = quietLogger()
	}
	dev, err := OpenStorage(context.Background(), ldev, ctl.disk(make([]byte, ddevBytes), 4096), opts)
	require.NoError(t, err)
	return dev
}

// TestFailureWhileLogging fails the device while a FUA write is being
// logged: the write must get the failure, not wait for a flush that will
// never come.
func TestFailureWhileLogging(t *testing.T) {
	var ldev *gatedDisk
	dev := openMemDevice(t, func(m *memDisk) Storage { ldev = newGatedDisk(m); return ldev }, Options{})
	ldev.arm()
	res := make(chan error, 1)
	go func() {
		_, err := dev.WriteAtFUA(randBytes(4096), 0)
		res <- err
	}()
	<-ldev.entered
	dev.fail(io.ErrUnexpectedEOF)
	close(ldev.release)
	select {
	case err := <-res:
		require.ErrorIs(t, err, ErrFailed)
	case <-time.After(30 * time.Second):
		t.Fatal("a FUA write logged while the device failed never returned")
	}
	require.ErrorIs(t, dev.Close(), ErrFailed)
}
