package meta

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/checksum"
)

// Queue file layout (walb-tools cybozu::util::QueueFile; see doc.go).
const (
	// QueuePreamble starts both header copies and every record header.
	QueuePreamble uint32 = 0x119D83A7

	queueHeaderSize  = 28
	queueHeadersSize = 2 * queueHeaderSize // records start here
	queueRecHdrSize  = 16

	// maxQueueData bounds a record's data: a serialized LsidGid is at most
	// 30 bytes; anything much larger is corruption, not a record.
	maxQueueData = 1024
	// maxQueueRecords bounds what Open keeps in memory.
	maxQueueRecords = 1 << 20
	// compactMin is the free space at the front that makes a pop move the
	// live records back to offset 0.
	compactMin = 4096
	// copyChunk bounds the buffer used to move records.
	copyChunk = 64 << 10
)

// queueIO is the file under a Queue; tests substitute one that records
// every write and sync to replay crashes.
type queueIO interface {
	io.ReaderAt
	io.WriterAt
	Sync() error
	Truncate(size int64) error
	Size() (int64, error)
}

type osQueueFile struct{ *os.File }

func (f osQueueFile) Size() (int64, error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

// queueRec is one live record as kept in memory.
type queueRec struct {
	off    uint64 // record offset relative to the end of the headers
	size   uint32 // data size
	toPrev uint32 // as stored on disk
	val    LsidGid
}

func (r queueRec) total() uint64 { return queueRecHdrSize + uint64(r.size) }

// QueueRecovery tells what OpenQueue had to do to a queue file.
type QueueRecovery struct {
	// HeaderCopy is the header copy in use: 0, or 1 when copy 0 was invalid.
	HeaderCopy int
	// HeaderRepaired means the header copies were rewritten to agree with
	// the state in use (ReadQueueFile: would have been).
	HeaderRepaired bool
	// DroppedFront and DroppedBack mean an invalid record at that end (a
	// torn write) was dropped.
	DroppedFront, DroppedBack bool
	// LinksRepaired counts back links (toPrev fields, the end stub) rewritten
	// (ReadQueueFile: found wrong) from the validated records.
	LinksRepaired int
}

// Clean reports whether the file needed nothing.
func (r QueueRecovery) Clean() bool { return r == QueueRecovery{} }

// String summarizes the recovery for logs.
func (r QueueRecovery) String() string {
	if r.Clean() {
		return "clean"
	}
	return fmt.Sprintf("header copy %d (repaired %t), dropped front %t, dropped back %t, links repaired %d",
		r.HeaderCopy, r.HeaderRepaired, r.DroppedFront, r.DroppedBack, r.LinksRepaired)
}

// Queue is the storage's durable queue of snapshot records: a deque of
// LsidGid in walb-tools' queue file format. The storage pushes new records at
// the front and consumes the oldest at the back. Every change is durable
// when the method returns: data first, then the header copies, each fsynced,
// so a crash leaves the queue as it was before or after the change.
//
// The file is locked (flock) while open. Methods are safe for concurrent use.
// After an I/O error the queue refuses further use (ErrClosed); reopen it.
type Queue struct {
	mu       sync.Mutex
	f        queueIO
	closer   io.Closer
	salt     uint32
	begin    uint64
	end      uint64
	recs     []queueRec // front to back
	recovery QueueRecovery
	err      error
	closed   bool
}

// header image of the current state, checksummed.
func (q *Queue) headerBytes() []byte {
	b := make([]byte, queueHeaderSize)
	binary.LittleEndian.PutUint32(b[0:], QueuePreamble)
	binary.LittleEndian.PutUint32(b[8:], q.salt)
	binary.LittleEndian.PutUint64(b[12:], q.begin)
	binary.LittleEndian.PutUint64(b[20:], q.end)
	checksum.Store(b, 4, 0)
	return b
}

func putRecHeader(b []byte, sum, size, toPrev uint32) {
	binary.LittleEndian.PutUint32(b[0:], QueuePreamble)
	binary.LittleEndian.PutUint32(b[4:], sum)
	binary.LittleEndian.PutUint32(b[8:], size)
	binary.LittleEndian.PutUint32(b[12:], toPrev)
}

// CreateQueue creates an empty queue file at path, with a random salt, and
// opens it. It fails if path exists. The file appears atomically.
func CreateQueue(ctx context.Context, path string, perm os.FileMode) (*Queue, error) {
	var sb [4]byte
	if _, err := rand.Read(sb[:]); err != nil {
		return nil, errors.Wrap(err, "meta: queue salt")
	}
	img := newQueueImage(binary.LittleEndian.Uint32(sb[:]))
	dir := filepath.Dir(path)
	t, err := CreateTemp(dir, perm)
	if err != nil {
		return nil, err
	}
	tmp := t.Name()
	if _, err := t.Write(img); err != nil {
		t.Abort()
		return nil, errors.Wrap(err, "meta: create queue")
	}
	// Link, not rename: creation must fail if the queue already exists.
	err = t.Sync()
	if err == nil {
		err = t.Chmod(perm)
	}
	t.File.Close()
	if err == nil {
		err = os.Link(tmp, path)
	}
	os.Remove(tmp)
	if err != nil {
		return nil, errors.Wrapf(err, "meta: create queue %s", path)
	}
	if err := SyncDir(dir); err != nil {
		return nil, err
	}
	return OpenQueue(ctx, path)
}

// newQueueImage returns the bytes of an empty queue file: both header copies
// (begin = end = 0) and the end stub.
func newQueueImage(salt uint32) []byte {
	q := &Queue{salt: salt}
	img := make([]byte, 0, queueHeadersSize+queueRecHdrSize)
	h := q.headerBytes()
	img = append(append(img, h...), h...)
	stub := make([]byte, queueRecHdrSize)
	putRecHeader(stub, 0, 0, 0)
	return append(img, stub...)
}

// OpenQueue opens and locks an existing queue file, waiting for the lock
// until ctx is done. It validates the file and repairs what a crash can
// leave behind (see doc.go, "Queue file recovery"); Recovery tells what was
// done. A file it cannot explain is refused with ErrCorrupt.
func OpenQueue(ctx context.Context, path string) (*Queue, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, errors.Wrap(err, "meta: open queue")
	}
	if err := lockFile(ctx, f); err != nil {
		f.Close()
		return nil, errors.Wrapf(err, "meta: lock queue %s", path)
	}
	q, err := openQueueIO(osQueueFile{f}, true)
	if err != nil {
		f.Close()
		return nil, errors.Wrapf(err, "meta: open queue %s", path)
	}
	q.closer = f
	return q, nil
}

// ReadQueueFile returns the records of a queue file, front to back, without
// locking or repairing it (for status and debugging).
func ReadQueueFile(path string) ([]LsidGid, QueueRecovery, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, QueueRecovery{}, errors.Wrap(err, "meta: read queue")
	}
	defer f.Close()
	q, err := openQueueIO(osQueueFile{f}, false)
	if err != nil {
		return nil, QueueRecovery{}, errors.Wrapf(err, "meta: read queue %s", path)
	}
	return q.items(), q.recovery, nil
}

// lockFile takes an exclusive flock, polling so that ctx can cancel the wait.
func lockFile(ctx context.Context, f *os.File) error {
	delay := time.Millisecond
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return nil
		}
		if err != syscall.EWOULDBLOCK && err != syscall.EINTR {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
		delay = min(2*delay, 100*time.Millisecond)
	}
}

// queueHeader is a decoded header copy.
type queueHeader struct {
	salt       uint32
	begin, end uint64
}

// readQueueHeader decodes and checks header copy i against the file size.
func readQueueHeader(f io.ReaderAt, i int, fileSize int64) (queueHeader, []byte, error) {
	b := make([]byte, queueHeaderSize)
	if _, err := f.ReadAt(b, int64(i*queueHeaderSize)); err != nil {
		return queueHeader{}, nil, errors.Wrapf(ErrCorrupt, "header %d: %v", i, err)
	}
	if binary.LittleEndian.Uint32(b) != QueuePreamble {
		return queueHeader{}, b, errors.Wrapf(ErrCorrupt, "header %d: bad preamble", i)
	}
	if !checksum.Valid(b, 0) {
		return queueHeader{}, b, errors.Wrapf(ErrCorrupt, "header %d: bad checksum", i)
	}
	h := queueHeader{
		salt:  binary.LittleEndian.Uint32(b[8:]),
		begin: binary.LittleEndian.Uint64(b[12:]),
		end:   binary.LittleEndian.Uint64(b[20:]),
	}
	// end+stub must lie inside the file; this also bounds both offsets.
	if h.begin > h.end || h.end > uint64(fileSize) ||
		uint64(fileSize)-h.end < queueHeadersSize+queueRecHdrSize {
		return queueHeader{}, b, errors.Wrapf(ErrCorrupt, "header %d: offsets %d..%d outside a %d-byte file",
			i, h.begin, h.end, fileSize)
	}
	return h, b, nil
}

// recHeaderAt reads the 16-byte record header at off.
func recHeaderAt(f io.ReaderAt, off uint64) (pre, sum, size, toPrev uint32, err error) {
	var b [queueRecHdrSize]byte
	if _, err = f.ReadAt(b[:], int64(queueHeadersSize+off)); err != nil {
		return
	}
	return binary.LittleEndian.Uint32(b[0:]), binary.LittleEndian.Uint32(b[4:]),
		binary.LittleEndian.Uint32(b[8:]), binary.LittleEndian.Uint32(b[12:]), nil
}

// readRecord validates the record at off, which must end at or before limit.
func readRecord(f io.ReaderAt, off, limit uint64, salt uint32) (queueRec, error) {
	if limit < off || limit-off < queueRecHdrSize {
		return queueRec{}, errors.Errorf("no room for a record header at %d", off)
	}
	pre, sum, size, toPrev, err := recHeaderAt(f, off)
	if err != nil {
		return queueRec{}, err
	}
	if pre != QueuePreamble {
		return queueRec{}, errors.Errorf("bad record preamble at %d", off)
	}
	if size == 0 || size > maxQueueData || uint64(size) > limit-off-queueRecHdrSize {
		return queueRec{}, errors.Errorf("bad record size %d at %d", size, off)
	}
	data := make([]byte, size)
	if _, err := f.ReadAt(data, int64(queueHeadersSize+off+queueRecHdrSize)); err != nil {
		return queueRec{}, err
	}
	if checksum.Sum(data, salt) != sum {
		return queueRec{}, errors.Errorf("bad record checksum at %d", off)
	}
	r := queueRec{off: off, size: size, toPrev: toPrev}
	if err := Unmarshal(data, &r.val); err != nil {
		return queueRec{}, errors.Wrapf(err, "record at %d", off)
	}
	return r, nil
}

// openQueueIO validates f and, if writable, repairs it.
func openQueueIO(f queueIO, writable bool) (*Queue, error) {
	size, err := f.Size()
	if err != nil {
		return nil, err
	}
	if size < queueHeadersSize+queueRecHdrSize {
		return nil, errors.Wrapf(ErrCorrupt, "file of %d bytes is too short", size)
	}
	q := &Queue{f: f}
	h0, b0, err0 := readQueueHeader(f, 0, size)
	h1, b1, err1 := readQueueHeader(f, 1, size)
	h := h0
	switch {
	case err0 == nil:
		q.recovery.HeaderRepaired = !bytes.Equal(b0, b1)
	case err1 == nil:
		h = h1
		q.recovery.HeaderCopy = 1
		q.recovery.HeaderRepaired = true
	default:
		return nil, errors.Wrapf(ErrCorrupt, "both header copies invalid: %v; %v", err0, err1)
	}
	q.salt, q.begin, q.end = h.salt, h.begin, h.end
	if err := q.scan(); err != nil {
		return nil, err
	}
	fixes := q.linkFixes()
	q.recovery.LinksRepaired = len(fixes)
	if !writable {
		return q, nil
	}
	if len(fixes) > 0 {
		for _, fx := range fixes {
			if _, err := f.WriteAt(fx.b, int64(queueHeadersSize+fx.off)); err != nil {
				return nil, errors.Wrap(err, "meta: repair queue links")
			}
		}
		if err := f.Sync(); err != nil {
			return nil, errors.Wrap(err, "meta: repair queue links")
		}
	}
	if q.recovery.HeaderRepaired || q.recovery.DroppedFront || q.recovery.DroppedBack {
		q.recovery.HeaderRepaired = true
		if err := q.writeHeader(); err != nil {
			return nil, err
		}
	}
	return q, nil
}

// scan walks the records between begin and end (see doc.go for the rules).
func (q *Queue) scan() error {
	var fwd []queueRec
	off := q.begin
	var ferr error
	for off < q.end {
		r, err := readRecord(q.f, off, q.end, q.salt)
		if err != nil {
			ferr = err
			break
		}
		if len(fwd) == maxQueueRecords {
			return errors.Wrapf(ErrCorrupt, "more than %d records", maxQueueRecords)
		}
		fwd = append(fwd, r)
		off += r.total()
	}
	if ferr == nil {
		q.recs = fwd
		return nil
	}
	// The forward walk stopped at a bad record at off. Walk back from the
	// end through the toPrev links to see what lies after it.
	var back []queueRec
	cur := q.end
	badAtBegin := false
	for cur > q.begin && len(back) <= maxQueueRecords {
		_, _, _, toPrev, err := recHeaderAt(q.f, cur)
		if err != nil || toPrev < queueRecHdrSize || uint64(toPrev) > cur-q.begin {
			break
		}
		prev := cur - uint64(toPrev)
		r, err := readRecord(q.f, prev, cur, q.salt)
		if err != nil || r.total() != uint64(toPrev) {
			badAtBegin = prev == q.begin
			break
		}
		back = append(back, r)
		cur = prev
	}
	switch {
	case len(back) == 0:
		// Nothing valid after the bad record: a torn write at the back.
		q.recs = fwd
		q.end = off
		q.recovery.DroppedBack = true
	case len(fwd) == 0 && badAtBegin:
		// Everything after the first record is valid: a torn write at the front.
		for i, j := 0, len(back)-1; i < j; i, j = i+1, j-1 {
			back[i], back[j] = back[j], back[i]
		}
		q.recs = back
		q.begin = back[0].off
		q.recovery.DroppedFront = true
	default:
		return errors.Wrapf(ErrCorrupt, "invalid record inside the queue: %v", ferr)
	}
	return nil
}

// linkFix is a write that restores a derived back link.
type linkFix struct {
	off uint64
	b   []byte
}

// linkFixes lists the toPrev fields (of every record but the first) and the
// end stub that disagree with the validated records, and updates the
// in-memory copies.
func (q *Queue) linkFixes() []linkFix {
	var fixes []linkFix
	for i := 1; i < len(q.recs); i++ {
		want := uint32(q.recs[i-1].total())
		if q.recs[i].toPrev != want {
			q.recs[i].toPrev = want
			fixes = append(fixes, linkFix{q.recs[i].off + 12, binary.LittleEndian.AppendUint32(nil, want)})
		}
	}
	pre, _, _, toPrev, err := recHeaderAt(q.f, q.end)
	var want uint32
	if n := len(q.recs); n > 0 {
		want = uint32(q.recs[n-1].total())
	} else {
		want = toPrev // an empty queue's stub link is never followed
	}
	if err != nil || pre != QueuePreamble || toPrev != want {
		stub := make([]byte, queueRecHdrSize)
		putRecHeader(stub, 0, 0, want)
		fixes = append(fixes, linkFix{q.end, stub})
	}
	return fixes
}

// writeHeader commits begin/end: copy 0, fsync, copy 1, fsync. The first
// valid copy wins on open, so a torn copy 0 leaves the old state in copy 1.
func (q *Queue) writeHeader() error {
	h := q.headerBytes()
	for i := 0; i < 2; i++ {
		if _, err := q.f.WriteAt(h, int64(i*queueHeaderSize)); err != nil {
			return errors.Wrap(err, "meta: write queue header")
		}
		if err := q.f.Sync(); err != nil {
			return errors.Wrap(err, "meta: sync queue header")
		}
	}
	return nil
}

// Recovery returns what OpenQueue repaired.
func (q *Queue) Recovery() QueueRecovery {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.recovery
}

// Close releases the lock and closes the file.
func (q *Queue) Close() error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return nil
	}
	q.closed = true
	q.err = ErrClosed
	if q.closer != nil {
		return q.closer.Close()
	}
	return nil
}

// Len returns the number of records.
func (q *Queue) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.recs)
}

// Empty reports whether the queue has no record.
func (q *Queue) Empty() bool { return q.Len() == 0 }

func (q *Queue) items() []LsidGid {
	v := make([]LsidGid, len(q.recs))
	for i, r := range q.recs {
		v[i] = r.val
	}
	return v
}

// Items returns the records from front (newest for the storage) to back.
func (q *Queue) Items() []LsidGid {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.items()
}

// Front returns the front record.
func (q *Queue) Front() (LsidGid, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.err != nil {
		return LsidGid{}, q.err
	}
	if len(q.recs) == 0 {
		return LsidGid{}, ErrQueueEmpty
	}
	return q.recs[0].val, nil
}

// Back returns the back record.
func (q *Queue) Back() (LsidGid, error) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.err != nil {
		return LsidGid{}, q.err
	}
	if len(q.recs) == 0 {
		return LsidGid{}, ErrQueueEmpty
	}
	return q.recs[len(q.recs)-1].val, nil
}

// mutate runs op under the lock; an I/O error breaks the queue because the
// file may no longer match memory.
func (q *Queue) mutate(op func() error) error {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.err != nil {
		return q.err
	}
	if err := op(); err != nil {
		if errors.Is(err, ErrQueueEmpty) || errors.Is(err, ErrInvalid) {
			return err
		}
		q.err = errors.Wrapf(ErrClosed, "after %v", err)
		return err
	}
	return nil
}

func encodeRecord(r LsidGid, salt uint32) ([]byte, uint32, error) {
	data, err := Marshal(r)
	if err != nil {
		return nil, 0, err
	}
	return data, checksum.Sum(data, salt), nil
}

// PushBack appends r at the back.
func (q *Queue) PushBack(r LsidGid) error {
	return q.mutate(func() error {
		data, sum, err := encodeRecord(r, q.salt)
		if err != nil {
			return err
		}
		var toPrev uint32
		if n := len(q.recs); n > 0 {
			toPrev = uint32(q.recs[n-1].total())
		}
		rec := queueRec{off: q.end, size: uint32(len(data)), toPrev: toPrev, val: r}
		// The new record goes where the end stub is, keeping the stub's
		// preamble and link bytes, then a new stub follows it.
		buf := make([]byte, 2*queueRecHdrSize+len(data))
		putRecHeader(buf, sum, rec.size, toPrev)
		copy(buf[queueRecHdrSize:], data)
		putRecHeader(buf[queueRecHdrSize+len(data):], 0, 0, uint32(rec.total()))
		if _, err := q.f.WriteAt(buf, int64(queueHeadersSize+q.end)); err != nil {
			return err
		}
		if err := q.f.Sync(); err != nil {
			return err
		}
		q.end += rec.total()
		q.recs = append(q.recs, rec)
		return q.writeHeader()
	})
}

// PushFront inserts r at the front (where the storage puts a new snapshot).
func (q *Queue) PushFront(r LsidGid) error {
	return q.mutate(func() error {
		data, sum, err := encodeRecord(r, q.salt)
		if err != nil {
			return err
		}
		total := queueRecHdrSize + uint64(len(data))
		if q.begin < total {
			if err := q.reserveFront(total); err != nil {
				return err
			}
		}
		off := q.begin - total
		buf := make([]byte, total)
		putRecHeader(buf, sum, uint32(len(data)), 0)
		copy(buf[queueRecHdrSize:], data)
		if _, err := q.f.WriteAt(buf, int64(queueHeadersSize+off)); err != nil {
			return err
		}
		// Link the old front record (or the stub) back to the new one. Its
		// toPrev is unused while it is first, so the old state is untouched.
		link := binary.LittleEndian.AppendUint32(nil, uint32(total))
		if _, err := q.f.WriteAt(link, int64(queueHeadersSize+q.begin+12)); err != nil {
			return err
		}
		if err := q.f.Sync(); err != nil {
			return err
		}
		if len(q.recs) > 0 {
			q.recs[0].toPrev = uint32(total)
		}
		q.begin = off
		q.recs = append([]queueRec{{off: off, size: uint32(len(data)), val: r}}, q.recs...)
		return q.writeHeader()
	})
}

// moveLive copies the live region [begin, end+stub) to offset to, which must
// not overlap it, commits the header and shifts the in-memory offsets.
func (q *Queue) moveLive(to uint64) error {
	live := q.end + queueRecHdrSize - q.begin
	buf := make([]byte, min(live, copyChunk))
	for done := uint64(0); done < live; {
		n := min(live-done, uint64(len(buf)))
		if _, err := q.f.ReadAt(buf[:n], int64(queueHeadersSize+q.begin+done)); err != nil {
			return err
		}
		if _, err := q.f.WriteAt(buf[:n], int64(queueHeadersSize+to+done)); err != nil {
			return err
		}
		done += n
	}
	if err := q.f.Sync(); err != nil {
		return err
	}
	from := q.begin
	q.begin, q.end = to, to+live-queueRecHdrSize
	for i := range q.recs {
		q.recs[i].off = q.recs[i].off - from + to
	}
	return q.writeHeader()
}

// reserveFront makes room for total bytes before begin by moving the live
// records just past their current end, as walb-tools does.
func (q *Queue) reserveFront(total uint64) error {
	return q.moveLive(max(q.end+queueRecHdrSize, total))
}

// PopFront removes the front record.
func (q *Queue) PopFront() error {
	return q.mutate(func() error {
		if len(q.recs) == 0 {
			return ErrQueueEmpty
		}
		q.begin += q.recs[0].total()
		q.recs = q.recs[1:]
		if err := q.writeHeader(); err != nil {
			return err
		}
		return q.compact()
	})
}

// PopBack removes the back record. The removed record's header becomes the
// end stub: its link to the previous record is already right.
func (q *Queue) PopBack() error {
	return q.mutate(func() error {
		n := len(q.recs)
		if n == 0 {
			return ErrQueueEmpty
		}
		q.end -= q.recs[n-1].total()
		q.recs = q.recs[:n-1]
		if err := q.writeHeader(); err != nil {
			return err
		}
		return q.compact()
	})
}

// Clear removes every record.
func (q *Queue) Clear() error {
	return q.mutate(func() error {
		q.begin = q.end
		q.recs = nil
		if err := q.writeHeader(); err != nil {
			return err
		}
		return q.compact()
	})
}

// compact keeps the file small: it moves the live records back to offset 0
// when enough space is free before them (never overlapping), and cuts
// garbage past the end stub. Both happen after the header no longer refers
// to the space they reuse or drop.
func (q *Queue) compact() error {
	live := q.end + queueRecHdrSize - q.begin
	if q.begin >= compactMin && q.begin >= live {
		if err := q.moveLive(0); err != nil {
			return err
		}
	}
	size, err := q.f.Size()
	if err != nil {
		return err
	}
	need := int64(queueHeadersSize + q.end + queueRecHdrSize)
	if size-need >= compactMin {
		if err := q.f.Truncate(need); err != nil {
			return err
		}
		return q.f.Sync()
	}
	return nil
}
