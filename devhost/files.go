package devhost

import (
	"os"

	"github.com/pkg/errors"
	"golang.org/x/sys/unix"
)

// OpenExclusive opens a log or data device (a regular file or a block
// device) for reading and writing, for the exclusive use of the caller:
// block devices are opened with O_EXCL, which the kernel refuses while the
// device is mounted or claimed, and every file gets an flock(LOCK_EX), which
// other walb-dev daemons, wdevc format-ldev and wdevc cat-log respect. The
// lock lasts until the file is closed. A file in use is an ErrBusy error;
// what names the file in messages ("log device").
func OpenExclusive(path, what string) (*os.File, error) {
	return openLocked(path, what, os.O_RDWR, unix.LOCK_EX)
}

// OpenShared opens a log device image read-only under a shared flock, so
// that it is refused (ErrBusy) while a walb device runs on it.
func OpenShared(path, what string) (*os.File, error) {
	return openLocked(path, what, os.O_RDONLY, unix.LOCK_SH)
}

func openLocked(path, what string, flag, how int) (*os.File, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, errors.Wrapf(err, "devhost: %s", what)
	}
	switch {
	case fi.Mode()&os.ModeDevice != 0 && fi.Mode()&os.ModeCharDevice == 0:
		if how == unix.LOCK_EX {
			flag |= unix.O_EXCL
		}
	case !fi.Mode().IsRegular():
		return nil, errors.Wrapf(ErrInvalid, "%s %s is neither a regular file nor a block device", what, path)
	}
	f, err := os.OpenFile(path, flag, 0)
	if err != nil {
		if errors.Is(err, unix.EBUSY) {
			return nil, errors.Wrapf(ErrBusy, "%s %s is in use (mounted or claimed)", what, path)
		}
		return nil, errors.Wrapf(err, "devhost: %s", what)
	}
	if err := unix.Flock(int(f.Fd()), how|unix.LOCK_NB); err != nil {
		f.Close()
		if err == unix.EWOULDBLOCK {
			return nil, errors.Wrapf(ErrBusy, "%s %s is used by a running walb device", what, path)
		}
		return nil, errors.Wrapf(err, "devhost: lock %s", what)
	}
	return f, nil
}
