package walb

import (
	"io"
	"os"
	"unsafe"

	"github.com/pkg/errors"
	"golang.org/x/sys/unix"
)

// Storage is what the device keeps its log and data on. *FileStorage
// implements it over regular files and block devices; tests wrap it to
// inject faults and crashes. Offsets and sizes are in bytes.
//
// The device relies on Sync for ordering: data written before a successful
// Sync survives a crash, data written after it may be lost or torn.
type Storage interface {
	io.ReaderAt
	io.WriterAt
	// Sync makes every completed write durable (fdatasync).
	Sync() error
	// Size returns the usable size in bytes.
	Size() (int64, error)
	Close() error
}

// ZeroRanger is implemented by storages that can zero a range faster than
// by writing zero buffers (punching a hole, BLKZEROOUT). After ZeroRange
// the range must read back as zeros.
type ZeroRanger interface {
	ZeroRange(off, length int64) error
}

// VectorWriter is implemented by storages that can write several buffers
// at one offset in a single call (pwritev), saving a copy.
type VectorWriter interface {
	WritevAt(bufs [][]byte, off int64) (int, error)
}

// FileStorage is a Storage on an *os.File: a regular file or a block device.
type FileStorage struct {
	f     *os.File
	fd    int
	block bool
	pbs   uint32 // from BLKPBSZGET; 0 for regular files
}

// OpenFile opens path (a regular file or a block device) as a Storage.
func OpenFile(path string, readOnly bool) (*FileStorage, error) {
	flag := os.O_RDWR
	if readOnly {
		flag = os.O_RDONLY
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		return nil, errors.Wrap(err, "walb: open")
	}
	s, err := NewFileStorage(f)
	if err != nil {
		f.Close()
		return nil, err
	}
	return s, nil
}

// NewFileStorage wraps an open file. The storage owns f from now on.
func NewFileStorage(f *os.File) (*FileStorage, error) {
	fi, err := f.Stat()
	if err != nil {
		return nil, errors.Wrapf(err, "walb: stat %s", f.Name())
	}
	s := &FileStorage{f: f, fd: int(f.Fd())}
	switch {
	case fi.Mode()&os.ModeDevice != 0 && fi.Mode()&os.ModeCharDevice == 0:
		s.block = true
		pbs, err := unix.IoctlGetUint32(s.fd, unix.BLKPBSZGET)
		if err != nil {
			return nil, errors.Wrapf(err, "walb: BLKPBSZGET %s", f.Name())
		}
		s.pbs = pbs
	case fi.Mode().IsRegular():
	default:
		return nil, errors.Wrapf(ErrInvalid, "%s is neither a regular file nor a block device", f.Name())
	}
	return s, nil
}

// Name returns the path the storage was opened with.
func (s *FileStorage) Name() string { return s.f.Name() }

// IsBlockDevice reports whether the storage is a block device.
func (s *FileStorage) IsBlockDevice() bool { return s.block }

// PhysicalBlockSize returns the device's physical block size (BLKPBSZGET),
// or 0 for a regular file, which has none.
func (s *FileStorage) PhysicalBlockSize() uint32 { return s.pbs }

// ReadAt implements io.ReaderAt.
func (s *FileStorage) ReadAt(p []byte, off int64) (int, error) { return s.f.ReadAt(p, off) }

// WriteAt implements io.WriterAt.
func (s *FileStorage) WriteAt(p []byte, off int64) (int, error) { return s.f.WriteAt(p, off) }

// iovMax is the kernel's limit on buffers per pwritev call.
const iovMax = 1024

// WritevAt writes bufs back to back at off with pwritev.
func (s *FileStorage) WritevAt(bufs [][]byte, off int64) (int, error) {
	total := 0
	for len(bufs) > 0 {
		chunk := bufs[:min(len(bufs), iovMax)]
		want := 0
		for _, b := range chunk {
			want += len(b)
		}
		n, err := unix.Pwritev(s.fd, chunk, off)
		if err != nil {
			return total, errors.Wrapf(err, "walb: pwritev %s at %d", s.f.Name(), off)
		}
		total += n
		off += int64(n)
		if n < want {
			// A short write: finish the rest buffer by buffer.
			for _, b := range chunk {
				if n >= len(b) {
					n -= len(b)
					continue
				}
				m, err := s.f.WriteAt(b[n:], off)
				total += m
				off += int64(m)
				if err != nil {
					return total, err
				}
				n = 0
			}
		}
		bufs = bufs[len(chunk):]
	}
	return total, nil
}

// Sync implements Storage with fdatasync, which on a block device also
// flushes the device's volatile cache.
func (s *FileStorage) Sync() error {
	return errors.Wrapf(unix.Fdatasync(s.fd), "walb: fdatasync %s", s.f.Name())
}

// Size implements Storage: BLKGETSIZE64 for block devices, the file size
// otherwise.
func (s *FileStorage) Size() (int64, error) {
	if s.block {
		var n uint64
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(s.fd), unix.BLKGETSIZE64, uintptr(unsafe.Pointer(&n))); e != 0 {
			return 0, errors.Wrapf(e, "walb: BLKGETSIZE64 %s", s.f.Name())
		}
		return int64(n), nil
	}
	fi, err := s.f.Stat()
	if err != nil {
		return 0, errors.Wrapf(err, "walb: stat %s", s.f.Name())
	}
	return fi.Size(), nil
}

// ZeroRange zeroes [off, off+length): BLKZEROOUT on a block device (which
// unmaps when the device can and guarantees zeros, unlike BLKDISCARD), a
// punched hole in a regular file, and zero writes where neither works.
func (s *FileStorage) ZeroRange(off, length int64) error {
	if length <= 0 {
		return nil
	}
	var err error
	if s.block {
		r := [2]uint64{uint64(off), uint64(length)}
		if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(s.fd), unix.BLKZEROOUT, uintptr(unsafe.Pointer(&r))); e != 0 {
			err = e
		}
	} else {
		err = unix.Fallocate(s.fd, unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
	}
	if err == nil {
		return nil
	}
	if err != unix.EOPNOTSUPP && err != unix.ENOTTY && err != unix.EINVAL {
		return errors.Wrapf(err, "walb: zero range [%d, +%d) of %s", off, length, s.f.Name())
	}
	return writeZeros(s, off, length)
}

// Close closes the file.
func (s *FileStorage) Close() error { return s.f.Close() }

// zeroBlock is a shared, read-only source of zeros.
var zeroBlock = make([]byte, 1<<20)

func writeZeros(w io.WriterAt, off, length int64) error {
	for length > 0 {
		n := min(length, int64(len(zeroBlock)))
		if _, err := w.WriteAt(zeroBlock[:n], off); err != nil {
			return errors.Wrapf(err, "walb: write zeros at %d", off)
		}
		off += n
		length -= n
	}
	return nil
}

// zeroRange zeroes a range of st with its fastest method.
func zeroRange(st Storage, off, length int64) error {
	if z, ok := st.(ZeroRanger); ok {
		return z.ZeroRange(off, length)
	}
	return writeZeros(st, off, length)
}

// writeBufs writes bufs back to back at off, in one call when st can.
// scratch is reused to join the buffers otherwise.
func writeBufs(st Storage, bufs [][]byte, off int64, scratch *[]byte) error {
	if len(bufs) == 1 {
		_, err := st.WriteAt(bufs[0], off)
		return err
	}
	if v, ok := st.(VectorWriter); ok {
		_, err := v.WritevAt(bufs, off)
		return err
	}
	n := 0
	for _, b := range bufs {
		n += len(b)
	}
	if cap(*scratch) < n {
		*scratch = make([]byte, n)
	}
	buf := (*scratch)[:0]
	for _, b := range bufs {
		buf = append(buf, b...)
	}
	_, err := st.WriteAt(buf, off)
	return err
}
