package nbd

import (
	"io"
	"os"
	"sync/atomic"

	"github.com/pkg/errors"
	"golang.org/x/sys/unix"
)

// FileBackend exports a regular file or a block device. Reads and writes are
// positional (pread/pwrite), so requests run concurrently without a lock;
// Flush is fdatasync; FUA writes use pwritev2(RWF_DSYNC) where the kernel
// supports it; Trim punches a hole and WriteZeroes uses
// FALLOC_FL_PUNCH_HOLE or FALLOC_FL_ZERO_RANGE, falling back to writing
// zeros where the filesystem or device lacks them.
//
// The export size is taken when the backend is created; writes past it fail
// with ErrOutOfRange rather than growing the file.
type FileBackend struct {
	f    *os.File
	fd   int
	size int64

	// Capabilities found missing at run time, so later calls skip the
	// failing system call.
	noDsyncWrite atomic.Bool
	noPunchHole  atomic.Bool
	noZeroRange  atomic.Bool
}

// NewFileBackend wraps an open file or block device. The backend owns f from
// then on: Close closes it.
func NewFileBackend(f *os.File) (*FileBackend, error) {
	// Seek to the end works for block devices as well as regular files,
	// where Stat would report a block device's size as 0.
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return nil, errors.Wrapf(err, "nbd: size of %s", f.Name())
	}
	return &FileBackend{f: f, fd: int(f.Fd()), size: size}, nil
}

// OpenFileBackend opens path (a regular file or block device) for reading,
// and also for writing unless readOnly.
func OpenFileBackend(path string, readOnly bool) (*FileBackend, error) {
	flag := os.O_RDWR
	if readOnly {
		flag = os.O_RDONLY
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return nil, errors.Wrap(err, "nbd: open backend")
	}
	fb, err := NewFileBackend(f)
	if err != nil {
		_ = f.Close()
		return nil, err
	}
	return fb, nil
}

// Size returns the size measured when the backend was created.
func (fb *FileBackend) Size() int64 { return fb.size }

// File returns the underlying file.
func (fb *FileBackend) File() *os.File { return fb.f }

// Close closes the file.
func (fb *FileBackend) Close() error { return fb.f.Close() }

// ReadAt reads with pread.
func (fb *FileBackend) ReadAt(p []byte, off int64) (int, error) {
	return fb.f.ReadAt(p, off)
}

// WriteAt writes with pwrite.
func (fb *FileBackend) WriteAt(p []byte, off int64) (int, error) {
	if err := checkRange(off, int64(len(p)), fb.size); err != nil {
		return 0, err
	}
	return fb.f.WriteAt(p, off)
}

// WriteAtFUA writes p and makes it durable before returning.
func (fb *FileBackend) WriteAtFUA(p []byte, off int64) (int, error) {
	if err := checkRange(off, int64(len(p)), fb.size); err != nil {
		return 0, err
	}
	if !fb.noDsyncWrite.Load() {
		n, err := fb.pwriteDsync(p, off)
		if err == nil || n > 0 || !unsupported(err) {
			return n, err
		}
		fb.noDsyncWrite.Store(true)
	}
	n, err := fb.f.WriteAt(p, off)
	if err != nil {
		return n, err
	}
	return n, fb.Flush()
}

// pwriteDsync writes all of p with RWF_DSYNC, which persists just this write
// instead of the whole file's dirty pages.
func (fb *FileBackend) pwriteDsync(p []byte, off int64) (int, error) {
	done := 0
	for done < len(p) {
		n, err := unix.Pwritev2(fb.fd, [][]byte{p[done:]}, off+int64(done), unix.RWF_DSYNC)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return done, &os.PathError{Op: "pwritev2", Path: fb.f.Name(), Err: err}
		}
		if n == 0 {
			return done, io.ErrShortWrite
		}
		done += n
	}
	return done, nil
}

// Flush runs fdatasync: data and the metadata needed to read it back.
func (fb *FileBackend) Flush() error {
	for {
		err := unix.Fdatasync(fb.fd)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return &os.PathError{Op: "fdatasync", Path: fb.f.Name(), Err: err}
		}
		return nil
	}
}

// Trim punches a hole. Trim is only a hint, so a filesystem without hole
// punching makes it a successful no-op.
func (fb *FileBackend) Trim(off, length int64) error {
	if err := checkRange(off, length, fb.size); err != nil {
		return err
	}
	if length == 0 || fb.noPunchHole.Load() {
		return nil
	}
	err := fb.fallocate(unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
	if err != nil && unsupported(err) {
		fb.noPunchHole.Store(true)
		return nil
	}
	return err
}

// WriteZeroes zeroes a range. With mayTrim it first tries to punch a hole
// (which reads back as zeros on files, and on block devices is done only
// when the device guarantees zeros); then FALLOC_FL_ZERO_RANGE, which keeps
// the range allocated; then plain writes of zeros.
func (fb *FileBackend) WriteZeroes(off, length int64, mayTrim bool) error {
	if err := checkRange(off, length, fb.size); err != nil {
		return err
	}
	if length == 0 {
		return nil
	}
	if mayTrim && !fb.noPunchHole.Load() {
		err := fb.fallocate(unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
		if err == nil || !unsupported(err) {
			return err
		}
		fb.noPunchHole.Store(true)
	}
	if !fb.noZeroRange.Load() {
		err := fb.fallocate(unix.FALLOC_FL_ZERO_RANGE|unix.FALLOC_FL_KEEP_SIZE, off, length)
		if err == nil || !unsupported(err) {
			return err
		}
		fb.noZeroRange.Store(true)
	}
	return writeZeroBuffers(fb.f, off, length)
}

// CanMultiConn is true: all connections share the kernel's page cache, and
// fdatasync on any descriptor flushes the whole file.
func (fb *FileBackend) CanMultiConn() bool { return true }

func (fb *FileBackend) fallocate(mode uint32, off, length int64) error {
	for {
		err := unix.Fallocate(fb.fd, mode, off, length)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return &os.PathError{Op: "fallocate", Path: fb.f.Name(), Err: err}
		}
		return nil
	}
}

// unsupported reports whether err means the kernel, filesystem or device
// lacks the operation, as opposed to a real I/O failure.
func unsupported(err error) bool {
	return errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) ||
		errors.Is(err, unix.ENOTTY)
}
