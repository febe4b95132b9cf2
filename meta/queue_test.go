package meta

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/checksum"
)

// memFile is an in-memory queueIO that logs every write, truncate and sync,
// so tests can rebuild the file as a crash at any point would leave it.
type memFile struct {
	data []byte
	ops  []memOp
}

type memOp struct {
	sync bool
	off  int64 // write offset; -1 for a truncate
	data []byte
	size int64 // truncate size
}

func newMemFile(img []byte) *memFile { return &memFile{data: bytes.Clone(img)} }

func (m *memFile) ReadAt(p []byte, off int64) (int, error) {
	if off >= int64(len(m.data)) {
		return 0, io.EOF
	}
	n := copy(p, m.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (m *memFile) WriteAt(p []byte, off int64) (int, error) {
	m.ops = append(m.ops, memOp{off: off, data: bytes.Clone(p)})
	m.data = applyWrite(m.data, off, p)
	return len(p), nil
}

func (m *memFile) Sync() error {
	m.ops = append(m.ops, memOp{sync: true})
	return nil
}

func (m *memFile) Truncate(size int64) error {
	m.ops = append(m.ops, memOp{off: -1, size: size})
	m.data = applyTruncate(m.data, size)
	return nil
}

func (m *memFile) Size() (int64, error) { return int64(len(m.data)), nil }

func applyWrite(b []byte, off int64, p []byte) []byte {
	if end := int(off) + len(p); end > len(b) {
		b = append(b, make([]byte, end-len(b))...)
	}
	copy(b[off:], p)
	return b
}

func applyTruncate(b []byte, size int64) []byte {
	if int(size) <= len(b) {
		return b[:size]
	}
	return append(b, make([]byte, int(size)-len(b))...)
}

func applyOp(b []byte, op memOp) []byte {
	if op.off < 0 {
		return applyTruncate(b, op.size)
	}
	return applyWrite(b, op.off, op.data)
}

// crashImages returns every file image a crash during ops could leave when
// ops started from img: everything before the last completed sync is on
// disk, and of the writes after it any subset may be, each possibly torn
// (only its first half written).
func crashImages(img []byte, ops []memOp) [][]byte {
	var out [][]byte
	durable := bytes.Clone(img)
	var batch []memOp
	flush := func() {
		n := len(batch)
		for mask := 0; mask < 1<<n; mask++ {
			for torn := -1; torn < n; torn++ {
				if torn >= 0 && (mask&(1<<torn) == 0 || batch[torn].off < 0 || len(batch[torn].data) < 2) {
					continue
				}
				b := bytes.Clone(durable)
				for i, op := range batch {
					if mask&(1<<i) == 0 {
						continue
					}
					if i == torn {
						op.data = op.data[:len(op.data)/2]
					}
					b = applyOp(b, op)
				}
				out = append(out, b)
			}
		}
	}
	for _, op := range ops {
		if op.sync {
			flush()
			for _, w := range batch {
				durable = applyOp(durable, w)
			}
			batch = nil
			continue
		}
		batch = append(batch, op)
	}
	flush()
	return out
}

func openMem(t testing.TB, img []byte) (*Queue, *memFile, error) {
	t.Helper()
	m := newMemFile(img)
	q, err := openQueueIO(m, true)
	return q, m, err
}

func lg(i int) LsidGid {
	return LsidGid{Lsid: uint64(i) * 1000, Gid: uint64(i), Mergeable: i%2 == 0, Timestamp: ts(int64(1500000000 + i))}
}

// Each operation, cut by a crash anywhere, leaves the queue as it was
// before or after, never anything else, and a reopened queue is clean.
func TestQueueCrashAtEveryStep(t *testing.T) {
	r := rand.New(rand.NewPCG(31, 32))
	img := newQueueImage(0xdbbc70f1)
	var model []LsidGid
	var ops []string
	for range 160 {
		ops = append(ops, "pushback")
	}
	for range 150 {
		ops = append(ops, "popfront") // reaches the compaction threshold
	}
	for range 120 {
		ops = append(ops, []string{"pushback", "pushfront", "pushfront", "popfront", "popback", "pushback"}[r.IntN(6)])
	}
	ops = append(ops, "clear", "pushfront", "popback")
	checked := 0
	for i, op := range ops {
		q, m, err := openMem(t, img)
		require.NoError(t, err)
		require.True(t, q.Recovery().Clean(), "op %d: %v", i, q.Recovery())
		require.Equal(t, nonNil(model), nonNil(q.Items()))
		m.ops = nil
		before := append([]LsidGid(nil), model...)
		rec := lg(i)
		switch op {
		case "pushback":
			require.NoError(t, q.PushBack(rec))
			model = append(model, rec)
		case "pushfront":
			require.NoError(t, q.PushFront(rec))
			model = append([]LsidGid{rec}, model...)
		case "popfront":
			err = q.PopFront()
			if len(model) == 0 {
				require.ErrorIs(t, err, ErrQueueEmpty)
			} else {
				require.NoError(t, err)
				model = model[1:]
			}
		case "popback":
			err = q.PopBack()
			if len(model) == 0 {
				require.ErrorIs(t, err, ErrQueueEmpty)
			} else {
				require.NoError(t, err)
				model = model[:len(model)-1]
			}
		case "clear":
			require.NoError(t, q.Clear())
			model = nil
		}
		require.Equal(t, nonNil(model), nonNil(q.Items()))
		// Test only a sample of the long pushback/popfront run in full, and
		// a smaller one under the race detector.
		sample := (i >= 150 || i%10 == 0 || i == 149) && (!raceEnabled || i%7 == 0 || i >= len(ops)-3)
		if !sample {
			img = m.data
			continue
		}
		for _, c := range crashImages(img, m.ops) {
			cq, cm, err := openMem(t, c)
			require.NoError(t, err, "op %d %s", i, op)
			got := nonNil(cq.Items())
			if !equalRecs(got, before) && !equalRecs(got, model) {
				t.Fatalf("op %d %s: crash left %v; before %v after %v", i, op, got, before, model)
			}
			rc := cq.Recovery()
			require.False(t, rc.DroppedFront || rc.DroppedBack, "our writes never leave a torn record: %v", rc)
			again, err := openQueueIO(newMemFile(cm.data), true)
			require.NoError(t, err)
			require.True(t, again.Recovery().Clean(), "repair is complete: %v", again.Recovery())
			require.Equal(t, got, nonNil(again.Items()))
			checked++
		}
		img = m.data
	}
	t.Logf("crash images checked: %d", checked)
	if !raceEnabled {
		require.Greater(t, checked, 1000)
	}
	// The long FIFO run did not let the file grow without bound.
	require.Less(t, len(img), 3*compactMin)
}

func nonNil(v []LsidGid) []LsidGid {
	if v == nil {
		return []LsidGid{}
	}
	return v
}

func equalRecs(a, b []LsidGid) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// smallQueue returns the image of a queue holding lg(1..n) pushed at the
// front, as the storage does (front = newest).
func smallQueue(t testing.TB, n int) ([]byte, []LsidGid) {
	q, m, err := openMem(t, newQueueImage(0x635f4fa4))
	require.NoError(t, err)
	for i := 1; i <= n; i++ {
		require.NoError(t, q.PushFront(lg(i)))
	}
	return m.data, q.Items()
}

// Any single damaged byte is either repaired to the same content, detected
// (ErrCorrupt), or costs exactly one record at an end, which is reported.
func TestQueueCorruptEveryByte(t *testing.T) {
	img, items := smallQueue(t, 3)
	outcomes := map[string]int{}
	for i := range img {
		for _, mask := range []byte{0x01, 0x80, 0xFF} {
			b := bytes.Clone(img)
			b[i] ^= mask
			q, m, err := openMem(t, b)
			if err != nil {
				require.ErrorIs(t, err, ErrCorrupt, "byte %d mask %#x", i, mask)
				outcomes["corrupt"]++
				continue
			}
			got := nonNil(q.Items())
			rc := q.Recovery()
			switch {
			case equalRecs(got, items):
				require.False(t, rc.DroppedFront || rc.DroppedBack)
				outcomes["same"]++
			case rc.DroppedFront && equalRecs(got, items[1:]):
				outcomes["dropped front"]++
			case rc.DroppedBack && equalRecs(got, items[:len(items)-1]):
				outcomes["dropped back"]++
			default:
				t.Fatalf("byte %d mask %#x: got %v, recovery %v", i, mask, got, rc)
			}
			// Whatever was recovered is now a clean, working queue.
			again, err := openQueueIO(newMemFile(m.data), true)
			require.NoError(t, err)
			require.True(t, again.Recovery().Clean(), "byte %d: %v", i, again.Recovery())
			require.Equal(t, got, nonNil(again.Items()))
			require.NoError(t, again.PushBack(lg(9)))
			if len(got) > 0 {
				require.NoError(t, again.PopFront())
			}
			third, err := openQueueIO(newMemFile(again.f.(*memFile).data), false)
			require.NoError(t, err)
			require.True(t, third.Recovery().Clean())
		}
	}
	t.Logf("outcomes: %v", outcomes)
	require.Positive(t, outcomes["same"])
	require.Positive(t, outcomes["corrupt"])
	require.Positive(t, outcomes["dropped front"])
	require.Positive(t, outcomes["dropped back"])
}

// expectedImage builds a queue file from the formats.md description alone.
func expectedImage(salt uint32, begin uint64, recs [][]byte, lastToPrev uint32) []byte {
	var body []byte
	toPrev := uint32(0)
	for _, d := range recs {
		h := make([]byte, 16)
		binary.LittleEndian.PutUint32(h[0:], 0x119D83A7)
		binary.LittleEndian.PutUint32(h[4:], checksum.Sum(d, salt))
		binary.LittleEndian.PutUint32(h[8:], uint32(len(d)))
		binary.LittleEndian.PutUint32(h[12:], toPrev)
		body = append(append(body, h...), d...)
		toPrev = uint32(16 + len(d))
	}
	stub := make([]byte, 16)
	binary.LittleEndian.PutUint32(stub[0:], 0x119D83A7)
	binary.LittleEndian.PutUint32(stub[12:], lastToPrev)
	hdr := make([]byte, 28)
	binary.LittleEndian.PutUint32(hdr[0:], 0x119D83A7)
	binary.LittleEndian.PutUint32(hdr[8:], salt)
	binary.LittleEndian.PutUint64(hdr[12:], begin)
	binary.LittleEndian.PutUint64(hdr[20:], begin+uint64(len(body)))
	binary.LittleEndian.PutUint32(hdr[4:], checksum.Sum(hdr, 0))
	img := append(append(bytes.Clone(hdr), hdr...), make([]byte, begin)...)
	return append(append(img, body...), stub...)
}

func TestQueueFileLayout(t *testing.T) {
	path := filepath.Join(t.TempDir(), "queue")
	ctx := context.Background()
	q, err := CreateQueue(ctx, path, 0o644)
	require.NoError(t, err)
	salt := q.salt
	b0, _ := os.ReadFile(path)
	require.Equal(t, expectedImage(salt, 0, nil, 0), b0)
	a, b := lg(1), lg(2)
	require.NoError(t, q.PushBack(a))
	require.NoError(t, q.PushBack(b))
	require.NoError(t, q.Close())
	da, _ := Marshal(a)
	db, _ := Marshal(b)
	got, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, expectedImage(salt, 0, [][]byte{da, db}, uint32(16+len(db))), got)
	fi, err := os.Stat(path)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o644), fi.Mode().Perm())

	// A file laid out by another writer (records not at offset 0, an end
	// stub left by a pop) reads back.
	img := expectedImage(0x12345678, 100, [][]byte{db, da}, uint32(16+len(da)))
	require.NoError(t, os.WriteFile(path, img, 0o644))
	items, rc, err := ReadQueueFile(path)
	require.NoError(t, err)
	require.True(t, rc.Clean(), "%v", rc)
	require.Equal(t, []LsidGid{b, a}, items)

	_, err = CreateQueue(ctx, path, 0o644)
	require.Error(t, err, "creation refuses an existing file")
	q, err = OpenQueue(ctx, path)
	require.NoError(t, err)
	front, err := q.Front()
	require.NoError(t, err)
	require.Equal(t, b, front)
	back, err := q.Back()
	require.NoError(t, err)
	require.Equal(t, a, back)
	require.Equal(t, 2, q.Len())
	require.NoError(t, q.Close())
	require.NoError(t, q.Close())
	_, err = q.Front()
	require.ErrorIs(t, err, ErrClosed)
	require.ErrorIs(t, q.PushBack(a), ErrClosed)
}

// A record whose bytes never reached the disk although the header did (what
// an mmap writer can leave) is dropped, at either end.
func TestQueueTornRecord(t *testing.T) {
	da, _ := Marshal(lg(1))
	db, _ := Marshal(lg(2))
	dc, _ := Marshal(lg(3))
	img := expectedImage(7, 0, [][]byte{da, db, dc}, uint32(16+len(dc)))
	// Tear the back record: its data is half zeros.
	back := bytes.Clone(img)
	off := len(back) - 16 - len(dc)/2
	copy(back[off:off+len(dc)/2], make([]byte, len(dc)/2))
	q, _, err := openMem(t, back)
	require.NoError(t, err)
	require.True(t, q.Recovery().DroppedBack)
	require.Equal(t, []LsidGid{lg(1), lg(2)}, q.Items())

	// Tear the front record: its header never made it.
	front := bytes.Clone(img)
	copy(front[56:72], make([]byte, 16))
	q, _, err = openMem(t, front)
	require.NoError(t, err)
	require.True(t, q.Recovery().DroppedFront)
	require.Equal(t, []LsidGid{lg(2), lg(3)}, q.Items())

	// A bad record in the middle is not a torn write: refuse the file.
	mid := bytes.Clone(img)
	mid[56+16+len(da)+16] ^= 0x40
	_, _, err = openMem(t, mid)
	require.ErrorIs(t, err, ErrCorrupt)

	// Both headers gone.
	_, _, err = openMem(t, append(make([]byte, 56), img[56:]...))
	require.ErrorIs(t, err, ErrCorrupt)
	// Too short to be a queue.
	_, _, err = openMem(t, img[:60])
	require.ErrorIs(t, err, ErrCorrupt)
	// A header pointing past the file.
	short := bytes.Clone(img[:len(img)-1])
	_, _, err = openMem(t, short)
	require.ErrorIs(t, err, ErrCorrupt)
}

func TestQueueDequeOps(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "queue")
	q, err := CreateQueue(ctx, path, 0o600)
	require.NoError(t, err)
	_, err = q.Front()
	require.ErrorIs(t, err, ErrQueueEmpty)
	_, err = q.Back()
	require.ErrorIs(t, err, ErrQueueEmpty)
	require.ErrorIs(t, q.PopBack(), ErrQueueEmpty)
	require.True(t, q.Empty())
	// walb-tools queueFilePushFront: push i at both ends, pop both ends.
	const n = 20
	for i := 0; i < n; i++ {
		require.NoError(t, q.PushFront(lg(i)))
		require.NoError(t, q.PushBack(lg(i)))
	}
	require.NoError(t, q.Close())
	q, err = OpenQueue(ctx, path)
	require.NoError(t, err)
	require.True(t, q.Recovery().Clean())
	for i := n; i > 0; i-- {
		f, err := q.Front()
		require.NoError(t, err)
		require.Equal(t, lg(i-1), f)
		require.NoError(t, q.PopFront())
		b, err := q.Back()
		require.NoError(t, err)
		require.Equal(t, lg(i-1), b)
		require.NoError(t, q.PopBack())
	}
	require.True(t, q.Empty())
	require.NoError(t, q.PushFront(lg(5)))
	require.NoError(t, q.Clear())
	require.True(t, q.Empty())
	require.ErrorIs(t, q.PushBack(LsidGid{Timestamp: MaxTimestamp.Add(time.Hour)}), ErrInvalid)
	require.NoError(t, q.PushBack(lg(6)), "an invalid record does not break the queue")
	require.NoError(t, q.Close())
	items, rc, err := ReadQueueFile(path)
	require.NoError(t, err)
	require.True(t, rc.Clean())
	require.Equal(t, []LsidGid{lg(6)}, items)
}

func TestQueueLock(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "queue")
	q, err := CreateQueue(ctx, path, 0o644)
	require.NoError(t, err)
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	_, err = OpenQueue(short, path)
	require.ErrorIs(t, err, context.DeadlineExceeded)
	require.NoError(t, q.Close())
	q2, err := OpenQueue(ctx, path)
	require.NoError(t, err)
	require.NoError(t, q2.Close())
	_, err = OpenQueue(ctx, filepath.Join(t.TempDir(), "missing"))
	require.Error(t, err)
}

func BenchmarkQueueOpen(b *testing.B) {
	q, m, err := openMem(b, newQueueImage(1))
	require.NoError(b, err)
	for i := range 100 {
		require.NoError(b, q.PushFront(lg(i)))
	}
	img := m.data
	b.SetBytes(int64(len(img)))
	for b.Loop() {
		if _, err := openQueueIO(newMemFile(img), false); err != nil {
			b.Fatal(err)
		}
	}
}
