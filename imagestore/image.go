package imagestore

import (
	"context"
	"io"
	"os"
	"sync"
	"sync/atomic"

	"github.com/pkg/errors"
	"golang.org/x/sys/unix"
)

// fileImage is an Image backed by an open file. Reads and writes are
// positional (pread/pwrite), so they run concurrently without a lock.
type fileImage struct {
	name     string // for error messages: the image, not the temp file
	f        *os.File
	fd       int
	size     int64
	readOnly bool
	// noPunch is set once fallocate has refused to punch, so later calls
	// go straight to writing zeros.
	noPunch atomic.Bool
}

func newFileImage(f *os.File, name string, readOnly bool) (*fileImage, error) {
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return nil, errors.Wrapf(err, "imagestore: stat %s", name)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return nil, errors.Errorf("imagestore: %s is not a regular file", name)
	}
	return &fileImage{name: name, f: f, fd: int(f.Fd()), size: st.Size, readOnly: readOnly}, nil
}

// ReadAt reads from the image; past Size it returns io.EOF.
func (m *fileImage) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, errors.Wrapf(ErrOutOfRange, "read at %d", off)
	}
	if off >= m.size {
		return 0, io.EOF
	}
	short := false
	if rest := m.size - off; int64(len(p)) > rest {
		p, short = p[:rest], true
	}
	n, err := m.f.ReadAt(p, off)
	if err == io.EOF {
		// The file is shorter than the size it had at open, which only
		// happens when someone else truncated it.
		return n, errors.Errorf("imagestore: %s shrank below %d bytes", m.name, m.size)
	}
	if err != nil {
		return n, errors.Wrapf(err, "imagestore: read %s at %d", m.name, off)
	}
	if short {
		return n, io.EOF
	}
	return n, nil
}

// WriteAt writes within the image; a write reaching past Size fails whole.
func (m *fileImage) WriteAt(p []byte, off int64) (int, error) {
	if m.readOnly {
		return 0, ErrReadOnly
	}
	if off < 0 || off > m.size || int64(len(p)) > m.size-off {
		return 0, errors.Wrapf(ErrOutOfRange, "write %d bytes at %d, size %d", len(p), off, m.size)
	}
	n, err := m.f.WriteAt(p, off)
	if err != nil {
		return n, errors.Wrapf(err, "imagestore: write %s at %d", m.name, off)
	}
	return n, nil
}

// Size returns the size the image had when it was opened.
func (m *fileImage) Size() int64 { return m.size }

// Sync is fdatasync: the data and the metadata needed to read it back.
func (m *fileImage) Sync() error {
	if err := unix.Fdatasync(m.fd); err != nil {
		return errors.Wrapf(err, "imagestore: sync %s", m.name)
	}
	return nil
}

// Punch deallocates a range, or zeroes it where the file system cannot.
func (m *fileImage) Punch(off, n int64) error {
	if m.readOnly {
		return ErrReadOnly
	}
	if off < 0 || n < 0 || off > m.size || n > m.size-off {
		return errors.Wrapf(ErrOutOfRange, "punch %d bytes at %d, size %d", n, off, m.size)
	}
	if n == 0 {
		return nil
	}
	if !m.noPunch.Load() {
		err := unix.Fallocate(m.fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, n)
		if err == nil {
			return nil
		}
		if !isUnsupported(err) {
			return errors.Wrapf(err, "imagestore: punch %s at %d+%d", m.name, off, n)
		}
		m.noPunch.Store(true)
	}
	for n > 0 {
		k := min(n, int64(len(zeroBuf)))
		if _, err := m.f.WriteAt(zeroBuf[:k], off); err != nil {
			return errors.Wrapf(err, "imagestore: zero %s at %d", m.name, off)
		}
		off += k
		n -= k
	}
	return nil
}

// zeroBuf is the source of zeros for Punch on file systems that cannot
// punch holes. It is only ever read.
var zeroBuf [256 << 10]byte

// Close closes the file.
func (m *fileImage) Close() error {
	if err := m.f.Close(); err != nil {
		return errors.Wrapf(err, "imagestore: close %s", m.name)
	}
	return nil
}

// pendingImage is a clone under a temporary name (see Pending).
type pendingImage struct {
	*fileImage
	d       *Dir
	tmpPath string
	target  string
	method  string // how the clone was made, for logs and tests

	mu   sync.Mutex
	done bool
}

// Commit syncs, renames the clone over its target and syncs the directory.
func (p *pendingImage) Commit(ctx context.Context) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done {
		return ErrFinished
	}
	p.done = true
	if err := ctx.Err(); err != nil {
		p.discard()
		return errors.Wrapf(err, "imagestore: commit %s", p.target)
	}
	if err := p.d.commit(p.f, p.tmpPath, p.target, true); err != nil {
		p.f.Close()
		return err
	}
	return p.fileImage.Close()
}

// Abort closes and removes the clone.
func (p *pendingImage) Abort() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done {
		return ErrFinished
	}
	p.done = true
	return p.discard()
}

// Close aborts a pending image that was not committed, and does nothing
// after Commit or Abort.
func (p *pendingImage) Close() error {
	err := p.Abort()
	if errors.Is(err, ErrFinished) {
		return nil
	}
	return err
}

func (p *pendingImage) discard() error {
	cerr := p.f.Close()
	if err := os.Remove(p.tmpPath); err != nil && !os.IsNotExist(err) {
		return errors.Wrapf(err, "imagestore: remove %s", p.tmpPath)
	}
	if cerr != nil {
		return errors.Wrapf(cerr, "imagestore: close %s", p.tmpPath)
	}
	return nil
}
