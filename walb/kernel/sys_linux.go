//go:build linux

package kernel

import (
	"encoding/binary"
	"os"
	"strconv"
	"syscall"
	"unsafe"

	"github.com/pkg/errors"
	"golang.org/x/sys/unix"
)

// platformOK is true where the 120-byte walb_ctl layout is the kernel's:
// 8-byte size_t and pointers, little-endian integers.
var platformOK = strconv.IntSize == 64 && binary.NativeEndian.Uint16([]byte{1, 0}) == 1

// SysIoctl is the real IoctlFunc: ioctl(2) on fd. arg must point to memory
// that stays valid and unmoved for the call; Controller and Device pin it.
func SysIoctl(fd uintptr, req uint32, arg unsafe.Pointer) error {
	if !platformOK {
		return ErrUnsupportedPlatform
	}
	_, _, errno := unix.Syscall(unix.SYS_IOCTL, fd, uintptr(req), uintptr(arg))
	if errno != 0 {
		return errno
	}
	return nil
}

// StatBlockDevice is the real StatFunc: the major and minor numbers of the
// block device node at path (following symlinks, as walb-tools' stat does).
func StatBlockDevice(path string) (major, minor uint32, err error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, 0, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	if st.Mode&syscall.S_IFMT != syscall.S_IFBLK {
		return 0, 0, errors.Wrapf(ErrNotBlockDevice, "%s", path)
	}
	dev := uint64(st.Rdev) //nolint:unconvert // Rdev is uint32 on some linux ports
	return unix.Major(dev), unix.Minor(dev), nil
}
