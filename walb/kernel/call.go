package kernel

import (
	"context"
	"encoding/binary"
	"os"
	"runtime"
	"syscall"
	"unsafe"

	"github.com/pkg/errors"
)

// IoctlFunc performs one ioctl(2): request req on fd with argument arg.
// SysIoctl is the real one; tests install a fake driver. arg points to the
// 4-byte version (ReqVersion) or to the 120-byte walb_ctl (ReqControl,
// ReqWdev), whose u2k.buf and k2u.buf hold further userland addresses. All of
// that memory is pinned for the duration of the call. A failed call returns
// the syscall.Errno.
type IoctlFunc func(fd uintptr, req uint32, arg unsafe.Pointer) error

// StatFunc returns the device number of the block device node at path.
// StatBlockDevice is the real one.
type StatFunc func(path string) (major, minor uint32, err error)

// DevNum is a device number.
type DevNum struct {
	Major, Minor uint32
}

// node is one device node the package sends ioctls to. The node is opened
// for each call and closed right after: a walb device counts its openers and
// STOP_DEV without force fails while any remain, so holding a descriptor
// would block delete-wdev.
type node struct {
	path  string
	flag  int
	ioctl IoctlFunc
}

// do opens the node, runs one ioctl and closes it again.
func (n node) do(ctx context.Context, req uint32, arg unsafe.Pointer) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	f, err := os.OpenFile(n.path, n.flag, 0)
	if err != nil {
		return openError{err}
	}
	ioErr := n.ioctl(f.Fd(), req, arg)
	// Fd() does not keep f alive; a finalizer must not close the descriptor
	// while the ioctl runs.
	runtime.KeepAlive(f)
	if cerr := f.Close(); cerr != nil && ioErr == nil {
		return errors.Wrap(cerr, "kernel")
	}
	return ioErr
}

// version runs ReqVersion, which both the control node and walb devices
// answer.
func (n node) version(ctx context.Context) (Version, error) {
	v := new([4]byte)
	var pin runtime.Pinner
	pin.Pin(v)
	defer pin.Unpin()
	if err := n.do(ctx, ReqVersion, unsafe.Pointer(v)); err != nil {
		return 0, n.wrap(err, ReqVersion, CmdDummy, 0)
	}
	return Version(binary.NativeEndian.Uint32(v[:])), nil
}

// exchange runs one ReqControl or ReqWdev ioctl with c. in becomes u2k.buf
// (the driver copies it in) and out becomes k2u.buf (the driver copies its
// answer there); either may be nil. On return c holds the driver's copy of
// the struct: the driver writes it back after most failures too, which is
// where START_DEV and STOP_DEV leave their error codes.
func (n node) exchange(ctx context.Context, req uint32, c *Ctl, in, out []byte) error {
	var pin runtime.Pinner
	defer pin.Unpin()
	c.Error = 0
	c.U2K.Buf, c.U2K.BufSize, c.U2K.KBuf = 0, 0, 0
	c.K2U.Buf, c.K2U.BufSize, c.K2U.KBuf = 0, 0, 0
	// The driver only knows these buffers by address: pin them so they
	// neither move (a stack-allocated buffer would when the stack grows) nor
	// get freed while only a uintptr in raw refers to them.
	if len(in) > 0 {
		pin.Pin(&in[0])
		c.U2K.Buf = uint64(uintptr(unsafe.Pointer(&in[0])))
		c.U2K.BufSize = uint64(len(in))
	}
	if len(out) > 0 {
		pin.Pin(&out[0])
		c.K2U.Buf = uint64(uintptr(unsafe.Pointer(&out[0])))
		c.K2U.BufSize = uint64(len(out))
	}
	raw := new([CtlSize]byte)
	*raw = c.Marshal()
	pin.Pin(raw)
	err := n.do(ctx, req, unsafe.Pointer(raw))
	if uerr := c.Unmarshal(raw[:]); uerr != nil {
		return uerr // cannot happen: raw is CtlSize bytes
	}
	runtime.KeepAlive(in)
	runtime.KeepAlive(out)
	if err != nil {
		return n.wrap(err, req, c.Command, c.Error)
	}
	return nil
}

// openError marks a failure to open the node, so that its errno (ENOENT,
// EACCES, ...) is not reported as the ioctl's.
type openError struct{ err error }

func (e openError) Error() string { return e.err.Error() }
func (e openError) Unwrap() error { return e.err }

// wrap turns the errno of a failed ioctl into an *IoctlError and gives other
// failures context.
func (n node) wrap(err error, req uint32, cmd Command, code int32) error {
	var oe openError
	switch {
	case errors.As(err, &oe):
		return errors.Wrapf(oe.err, "kernel: %s: open node", opName(req, cmd))
	case errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded):
		return err
	}
	if errno, ok := err.(syscall.Errno); ok {
		return &IoctlError{Path: n.path, Request: req, Command: cmd, Errno: errno, Code: code}
	}
	return errors.Wrapf(err, "kernel: %s on %s", opName(req, cmd), n.path)
}

func opName(req uint32, cmd Command) string {
	if req == ReqVersion {
		return "VERSION"
	}
	return cmd.String()
}
