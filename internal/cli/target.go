package cli

import (
	"os"

	"github.com/pkg/errors"
	"golang.org/x/sys/unix"
)

// Target is a block device or image file that redo tools write to.
type Target struct {
	f      *os.File
	size   int64
	isBdev bool
	closed bool
}

// OpenTarget opens path for writing and learns its size.
func OpenTarget(path string) (*Target, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, err
	}
	t := &Target{f: f, size: st.Size()}
	if st.Mode()&os.ModeDevice != 0 {
		t.isBdev = true
		n, err := blockDeviceSize(int(f.Fd()))
		if err != nil {
			f.Close()
			return nil, errors.Wrapf(err, "%s: get block device size", path)
		}
		t.size = int64(n)
	}
	return t, nil
}

// Size returns the target size in bytes.
func (t *Target) Size() int64 { return t.size }

// WriteAt writes p at off.
func (t *Target) WriteAt(p []byte, off int64) (int, error) { return t.f.WriteAt(p, off) }

// ReadAt reads p at off.
func (t *Target) ReadAt(p []byte, off int64) (int, error) { return t.f.ReadAt(p, off) }

// Discard discards a range: BLKDISCARD on a block device, a punched hole
// on a file.
func (t *Target) Discard(off, length int64) error {
	if t.isBdev {
		r := [2]uint64{uint64(off), uint64(length)}
		return ioctlDiscard(int(t.f.Fd()), &r)
	}
	return unix.Fallocate(int(t.f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, off, length)
}

// Close syncs and closes the target.
func (t *Target) Close() error {
	if t.closed {
		return nil
	}
	t.closed = true
	err := t.f.Sync()
	if cerr := t.f.Close(); err == nil {
		err = cerr
	}
	return err
}
