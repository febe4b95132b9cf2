package kernel

import (
	"fmt"
	"syscall"

	"github.com/pkg/errors"
)

// Errors about encodings and arguments.
var (
	ErrCtlSize           = errors.New("kernel: walb_ctl must be 120 bytes")
	ErrStartParamSize    = errors.New("kernel: walb_start_param must be 64 bytes")
	ErrDiskDataSize      = errors.New("kernel: walb_disk_data must be 40 bytes")
	ErrInvalidStartParam = errors.New("kernel: invalid start parameter")
	ErrInvalidArgument   = errors.New("kernel: invalid argument")
	ErrInvalidLsid       = errors.New("kernel: invalid lsid")
	ErrLsidsSyntax       = errors.New("kernel: malformed lsids text")
	ErrLsidsMissing      = errors.New("kernel: lsids text lacks an indicator")
	ErrLsidsOrder        = errors.New("kernel: lsids out of order")
	ErrBadReply          = errors.New("kernel: malformed answer from the driver")
	ErrNotBlockDevice    = errors.New("kernel: not a block device")
	ErrSameDevice        = errors.New("kernel: log and data device are the same")
	// ErrUnsupportedPlatform is returned by the real ioctl on anything but
	// 64-bit little-endian Linux: the packed layouts assume 8-byte pointers.
	ErrUnsupportedPlatform = errors.New("kernel: walb ioctls need 64-bit little-endian Linux")
)

// Errors for the errno of a failed ioctl. An *IoctlError matches one of these
// and the syscall.Errno itself.
var (
	// ErrNotSupported is ENOTTY: the node does not know the request or the
	// control node does not know the command. Also what a non-walb file says.
	ErrNotSupported = errors.New("kernel: request not supported (ENOTTY)")
	// ErrFailed is EFAULT, the driver's answer to every failed command: bad
	// arguments, a wrong state (for example CLEAR_LOG on a frozen device),
	// an I/O error, or a command a walb device does not know.
	ErrFailed = errors.New("kernel: driver refused or failed the command (EFAULT)")
	// ErrBusy is EBUSY: STOP_DEV without force on an open device.
	ErrBusy = errors.New("kernel: device busy (EBUSY)")
)

// START_DEV failure codes (walb_ctl.error). The driver returns EFAULT with
// these; an *IoctlError for START_DEV matches the one for its code.
var (
	ErrStartBufSize      = errors.New("kernel: start: u2k/k2u buffer is not a 64-byte walb_start_param")     // -1, -2
	ErrStartParamInvalid = errors.New("kernel: start: driver rejected the start parameter")                  // -3
	ErrLdevInUse         = errors.New("kernel: start: log device already used by a walb device")             // -4
	ErrDdevInUse         = errors.New("kernel: start: data device already used by a walb device")            // -5
	ErrPrepareFailed     = errors.New("kernel: start: preparing the device failed (see the kernel log)")     // -6
	ErrNameExists        = errors.New("kernel: start: a walb device with that name exists")                  // -7
	ErrRegisterFailed    = errors.New("kernel: start: registering the block device failed (see kernel log)") // -8
)

// STOP_DEV failure codes (walb_ctl.error).
var (
	ErrDeviceNotFound = errors.New("kernel: stop: no walb device with that minor") // -1 with EFAULT
	ErrDeviceOpen     = errors.New("kernel: stop: device still open")              // -2 with EBUSY
)

// startCodes explains START_DEV's walb_ctl.error values -1..-8
// (ioctl_start_dev in the driver's control.c).
var startCodes = map[int32]struct {
	err  error
	text string
}{
	-1: {ErrStartBufSize, "u2k.buf_size is not sizeof(walb_start_param)"},
	-2: {ErrStartBufSize, "k2u.buf_size is not sizeof(walb_start_param)"},
	-3: {ErrStartParamInvalid, "is_walb_start_param_valid() failed"},
	-4: {ErrLdevInUse, "the log device is already used by a walb device"},
	-5: {ErrDdevInUse, "the data device is already used by a walb device"},
	-6: {ErrPrepareFailed, "prepare_wdev() failed: cannot open or claim ldev/ddev, bad super block, or name too long"},
	-7: {ErrNameExists, "a walb device with the same disk name exists"},
	-8: {ErrRegisterFailed, "register_wdev() failed"},
}

// stopCodes explains STOP_DEV's walb_ctl.error values (ioctl_stop_dev).
var stopCodes = map[int32]struct {
	err  error
	text string
}{
	-1: {ErrDeviceNotFound, "no walb device has that minor"},
	-2: {ErrDeviceOpen, "the device is open and force was not set"},
}

// IoctlError describes a failed ioctl. errors.Is matches it against the
// errno sentinel (ErrFailed, ErrNotSupported, ErrBusy), the command's failure
// code sentinel (ErrLdevInUse, ...) and the syscall.Errno.
type IoctlError struct {
	Path    string        // node the ioctl went to
	Request uint32        // ReqVersion, ReqControl or ReqWdev
	Command Command       // the walb_ctl command; meaningless for ReqVersion
	Errno   syscall.Errno // errno of the ioctl
	Code    int32         // walb_ctl.error after the call; 0 if none
}

func (e *IoctlError) op() string {
	switch e.Request {
	case ReqVersion:
		return "VERSION"
	case ReqControl, ReqWdev:
		return e.Command.String()
	}
	return fmt.Sprintf("request %#x", e.Request)
}

func (e *IoctlError) codeInfo() (error, string) {
	var tbl map[int32]struct {
		err  error
		text string
	}
	switch {
	case e.Request == ReqControl && e.Command == CmdStartDev:
		tbl = startCodes
	case e.Request == ReqControl && e.Command == CmdStopDev:
		tbl = stopCodes
	default:
		return nil, ""
	}
	if c, ok := tbl[e.Code]; ok {
		return c.err, c.text
	}
	return nil, ""
}

func (e *IoctlError) errnoSentinel() error {
	switch e.Errno {
	case syscall.EFAULT:
		return ErrFailed
	case syscall.ENOTTY:
		return ErrNotSupported
	case syscall.EBUSY:
		return ErrBusy
	}
	return nil
}

// Error explains the failure: node, command, errno and, for START_DEV and
// STOP_DEV, what the error code means.
func (e *IoctlError) Error() string {
	var what string
	switch e.Errno {
	case syscall.EFAULT:
		// The driver's catch-all: libc's "bad address" would mislead.
		what = "command failed (EFAULT; the kernel log has the reason)"
	case syscall.ENOTTY:
		what = "request not supported (ENOTTY)"
	default:
		what = fmt.Sprintf("%s (%s)", e.Errno.Error(), errnoName(e.Errno))
	}
	msg := fmt.Sprintf("kernel: %s on %s: %s", e.op(), e.Path, what)
	if e.Errno == syscall.ENOTTY && e.Request == ReqWdev {
		msg += "; not a walb device?"
	}
	if e.Code != 0 {
		if _, text := e.codeInfo(); text != "" {
			msg += fmt.Sprintf("; error %d: %s", e.Code, text)
		} else {
			msg += fmt.Sprintf("; error %d", e.Code)
		}
	}
	return msg
}

// Unwrap exposes the sentinels and the errno to errors.Is and errors.As.
func (e *IoctlError) Unwrap() []error {
	var errs []error
	if s := e.errnoSentinel(); s != nil {
		errs = append(errs, s)
	}
	if s, _ := e.codeInfo(); s != nil {
		errs = append(errs, s)
	}
	return append(errs, e.Errno)
}

func errnoName(e syscall.Errno) string {
	switch e {
	case syscall.EFAULT:
		return "EFAULT"
	case syscall.ENOTTY:
		return "ENOTTY"
	case syscall.EBUSY:
		return "EBUSY"
	case syscall.EINVAL:
		return "EINVAL"
	case syscall.EPERM:
		return "EPERM"
	case syscall.EACCES:
		return "EACCES"
	case syscall.ENOMEM:
		return "ENOMEM"
	}
	return fmt.Sprintf("errno %d", int(e))
}
