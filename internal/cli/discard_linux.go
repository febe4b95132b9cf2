package cli

import (
	"unsafe"

	"golang.org/x/sys/unix"
)

// blkDiscard is BLKDISCARD, _IO(0x12, 119).
const blkDiscard = 0x1277

func ioctlDiscard(fd int, r *[2]uint64) error {
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), blkDiscard, uintptr(unsafe.Pointer(r)))
	if e != 0 {
		return e
	}
	return nil
}

// blockDeviceSize returns a block device's size in bytes (BLKGETSIZE64).
func blockDeviceSize(fd int) (uint64, error) {
	var n uint64
	_, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), unix.BLKGETSIZE64, uintptr(unsafe.Pointer(&n)))
	if e != 0 {
		return 0, e
	}
	return n, nil
}
