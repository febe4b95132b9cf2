package nbd

import (
	"io"
	"sync"

	"github.com/pkg/errors"
)

// Backend is the storage behind an export. ReadAt and WriteAt follow the
// io.ReaderAt and io.WriterAt contracts and must be safe for concurrent use:
// the server runs several requests of a connection (and of several
// connections) at once. The server never calls them past Size, so a short
// count with a nil error is treated as EIO.
type Backend interface {
	ReadAt(p []byte, off int64) (int, error)
	WriteAt(p []byte, off int64) (int, error)
	// Size is the export size in bytes. It is sampled once per connection,
	// when the client enters transmission.
	Size() int64
}

// Flusher is implemented by backends with a volatile cache. Flush makes every
// completed write durable. Exports whose backend implements it advertise
// NBD_FLAG_SEND_FLUSH and NBD_FLAG_SEND_FUA.
type Flusher interface {
	Flush() error
}

// FUAWriter is implemented by backends that can make a single write durable
// more cheaply than WriteAt followed by Flush (e.g. pwritev2 with RWF_DSYNC).
type FUAWriter interface {
	WriteAtFUA(p []byte, off int64) (int, error)
}

// Trimmer is implemented by backends that can discard a range. Trim is a
// hint: afterwards the range may read as anything until it is rewritten.
// Exports whose backend implements it advertise NBD_FLAG_SEND_TRIM.
type Trimmer interface {
	Trim(off, length int64) error
}

// ZeroWriter is implemented by backends that can zero a range faster than by
// writing zero buffers. When mayTrim is true the range may be deallocated
// (it must still read back as zeros); when false it must stay allocated
// (NBD_CMD_FLAG_NO_HOLE). Without it the server writes zero buffers.
type ZeroWriter interface {
	WriteZeroes(off, length int64, mayTrim bool) error
}

// MultiConner is implemented by backends whose cache, if any, is shared by
// all connections, so that a flush on one connection makes writes of every
// connection durable. Exports whose backend returns true advertise
// NBD_FLAG_CAN_MULTI_CONN, which lets clients such as nbdcopy open several
// connections.
type MultiConner interface {
	CanMultiConn() bool
}

// zeroBuf is a shared source of zeros for the write-zeroes fallback. It is
// only ever read.
var zeroBuf [1 << 20]byte

// writeZeroes zeroes [off, off+length) of b with its fastest method.
func writeZeroes(b Backend, off, length int64, mayTrim bool) error {
	if zw, ok := b.(ZeroWriter); ok {
		return zw.WriteZeroes(off, length, mayTrim)
	}
	return writeZeroBuffers(b, off, length)
}

// writeZeroBuffers zeroes a range by plain writes, in bounded chunks.
func writeZeroBuffers(w io.WriterAt, off, length int64) error {
	for length > 0 {
		n := min(length, int64(len(zeroBuf)))
		if _, err := w.WriteAt(zeroBuf[:n], off); err != nil {
			return err
		}
		off += n
		length -= n
	}
	return nil
}

// checkRange reports ErrOutOfRange unless [off, off+n) lies within size.
func checkRange(off, n, size int64) error {
	if off < 0 || n < 0 || off > size || n > size-off {
		return errors.Wrapf(ErrOutOfRange, "range [%d, +%d) of %d bytes", off, n, size)
	}
	return nil
}

// ReadOnly wraps b so that every write fails with ErrReadOnly. It hides the
// optional write interfaces (FUAWriter, Trimmer, ZeroWriter) of b and keeps
// Flusher and MultiConner, so a wrapped backend can serve as the immutable
// base of a CopyOnWrite overlay or be exported without trusting the client.
func ReadOnly(b Backend) Backend {
	return readOnly{b}
}

type readOnly struct{ b Backend }

func (r readOnly) ReadAt(p []byte, off int64) (int, error) { return r.b.ReadAt(p, off) }
func (r readOnly) Size() int64                             { return r.b.Size() }

func (r readOnly) WriteAt(p []byte, off int64) (int, error) {
	return 0, errors.Wrapf(ErrReadOnly, "write of %d bytes at %d", len(p), off)
}

// Flush keeps NBD_CMD_FLUSH meaningful on a read-only export: a flush on a
// read-only device is a no-op for the client but harmless to forward.
func (r readOnly) Flush() error {
	if f, ok := r.b.(Flusher); ok {
		return f.Flush()
	}
	return nil
}

func (r readOnly) CanMultiConn() bool {
	m, ok := r.b.(MultiConner)
	return !ok || m.CanMultiConn()
}

// MemoryBackend is a Backend held in memory, for tests, examples and small
// scratch exports. Its contents are lost when it is garbage collected.
type MemoryBackend struct {
	mu   sync.RWMutex
	data []byte
}

// NewMemoryBackend returns a zero-filled in-memory backend of size bytes.
func NewMemoryBackend(size int64) *MemoryBackend {
	return &MemoryBackend{data: make([]byte, size)}
}

// Size returns the size given to NewMemoryBackend.
func (m *MemoryBackend) Size() int64 { return int64(len(m.data)) }

// ReadAt copies from memory; reads past the end return io.EOF.
func (m *MemoryBackend) ReadAt(p []byte, off int64) (int, error) {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if off < 0 || off > int64(len(m.data)) {
		return 0, errors.Wrapf(ErrOutOfRange, "read at %d of %d bytes", off, len(m.data))
	}
	n := copy(p, m.data[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

// WriteAt copies into memory; writes past the end fail with ErrOutOfRange.
func (m *MemoryBackend) WriteAt(p []byte, off int64) (int, error) {
	if err := checkRange(off, int64(len(p)), int64(len(m.data))); err != nil {
		return 0, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	return copy(m.data[off:], p), nil
}

// WriteZeroes clears a range without a zero source buffer.
func (m *MemoryBackend) WriteZeroes(off, length int64, _ bool) error {
	if err := checkRange(off, length, int64(len(m.data))); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	clear(m.data[off : off+length])
	return nil
}

// Trim zeroes the range, the cheapest thing a trim may do in memory.
func (m *MemoryBackend) Trim(off, length int64) error {
	return m.WriteZeroes(off, length, true)
}

// Flush has nothing to persist; it exists so the export advertises FLUSH and
// FUA, which clients such as the Linux kernel rely on for barriers.
func (m *MemoryBackend) Flush() error { return nil }

// CanMultiConn is true: every connection shares the same memory.
func (m *MemoryBackend) CanMultiConn() bool { return true }

// Bytes returns a copy of the contents, for tests that compare images.
func (m *MemoryBackend) Bytes() []byte {
	m.mu.RLock()
	defer m.mu.RUnlock()
	return append([]byte(nil), m.data...)
}
