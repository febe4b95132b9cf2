//go:build !linux

package kernel

import (
	"unsafe"

	"github.com/pkg/errors"
)

// SysIoctl is the real IoctlFunc. WalB exists only on Linux, so elsewhere it
// always fails with ErrUnsupportedPlatform.
func SysIoctl(fd uintptr, req uint32, arg unsafe.Pointer) error {
	return ErrUnsupportedPlatform
}

// StatBlockDevice is the real StatFunc; outside Linux it always fails.
func StatBlockDevice(path string) (major, minor uint32, err error) {
	return 0, 0, errors.Wrapf(ErrUnsupportedPlatform, "stat %s", path)
}
