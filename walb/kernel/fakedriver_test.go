package kernel

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"unsafe"
)

// The fake driver below deliberately decodes walb_ctl with its own offsets
// (formats.md §5.3) instead of Ctl.Unmarshal, so a layout mistake shared by
// Marshal and Unmarshal cannot go unnoticed.
const (
	fCommand = 0
	fValInt  = 4
	fValU64  = 8
	fValU32  = 16
	fError   = 20
	fU2K     = 24
	fK2U     = 72
	// inside walb_ctl_data
	fWMajor  = 0
	fWMinor  = 4
	fLMajor  = 8
	fLMinor  = 12
	fDMajor  = 16
	fDMinor  = 20
	fBufSize = 24
	fBuf     = 32
	fKBuf    = 40

	fakeKernelAddr = 0xffff888000100000 // what the driver leaves in kbuf
)

// userMem returns n bytes of this process's memory at addr, the way
// copy_from_user/copy_to_user see a user pointer. The address is
// reinterpreted rather than converted from uintptr so vet's unsafeptr check
// has nothing to flag; under -race, checkptr still verifies that the slice
// lies within one allocation, which catches a buf_size larger than the
// buffer.
func userMem(addr, n uint64) []byte {
	p := *(*unsafe.Pointer)(unsafe.Pointer(&addr))
	return unsafe.Slice((*byte)(p), n)
}

// fakeCall is one ioctl as the fake driver received it.
type fakeCall struct {
	node string // "control" or the device name
	req  uint32
	raw  [CtlSize]byte // walb_ctl as userland passed it
	u2k  []byte        // copy of u2k.buf
	k2u  uint64        // k2u.buf_size requested
}

func (c fakeCall) u32(off int) uint32 { return binary.LittleEndian.Uint32(c.raw[off:]) }
func (c fakeCall) u64(off int) uint64 { return binary.LittleEndian.Uint64(c.raw[off:]) }

// fakeWdev is the state of one walb device in the fake driver.
type fakeWdev struct {
	name         string
	minor        uint32
	ldev, ddev   DevNum
	users        int
	lsids        LsidSet
	ckptMs       uint32
	ckpts        int
	superSyncs   int
	frozen       bool
	freezeSec    uint32
	overflow     bool
	flushCapable bool
	capacityPb   uint64
	sizeLb       uint64
	ddevSizeLb   uint64
	resets       int
	validHeader  map[uint64]bool // lsids holding a valid logpack header
}

// fakeDriver emulates the ioctl side of walb-driver's control.c and
// wdev_ioctl.c: it copies walb_ctl and the u2k buffer in through their user
// addresses, checks the request, runs the command on its state and copies
// the k2u buffer and walb_ctl back.
type fakeDriver struct {
	t       testing.TB
	mu      sync.Mutex
	major   uint32
	version uint32
	devs    map[uint32]*fakeWdev
	calls   []fakeCall

	// Fault injection.
	startCode int32                           // if nonzero, START_DEV fails with this error code
	listHook  func(c *fakeCtl, recs [][]byte) // rewrites LIST_DEV answers

	dir string // where fake device nodes live
}

func newFakeDriver(t testing.TB) *fakeDriver {
	return &fakeDriver{
		t:       t,
		major:   252,
		version: 0x00010501,
		devs:    map[uint32]*fakeWdev{},
		dir:     t.TempDir(),
	}
}

// nodePath returns a file to open in place of a device node; the fake does
// not care which descriptor it gets.
func (k *fakeDriver) nodePath(name string) string {
	p := filepath.Join(k.dir, name)
	if _, err := os.Stat(p); err != nil {
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			k.t.Fatal(err)
		}
	}
	return p
}

func (k *fakeDriver) controller() *Controller {
	return &Controller{
		Path:  k.nodePath("control"),
		Ioctl: k.controlIoctl,
		Stat:  k.stat,
	}
}

func (k *fakeDriver) device(name string) *Device {
	return &Device{
		Name:  name,
		Path:  k.nodePath("wdev-" + name),
		Ioctl: k.deviceIoctl(name),
	}
}

// stat resolves "/dev/fake/MAJ:MIN" paths; anything else does not exist.
func (k *fakeDriver) stat(path string) (uint32, uint32, error) {
	var major, minor uint32
	if _, err := fmt.Sscanf(path, "/dev/fake/%d:%d", &major, &minor); err != nil {
		return 0, 0, &os.PathError{Op: "stat", Path: path, Err: syscall.ENOENT}
	}
	return major, minor, nil
}

// addDev installs a running device as START_DEV would.
func (k *fakeDriver) addDev(name string, minor uint32) *fakeWdev {
	w := &fakeWdev{
		name:         name,
		minor:        minor,
		ldev:         DevNum{9, minor},
		ddev:         DevNum{10, minor},
		ckptMs:       DefaultCheckpointIntervalMs,
		flushCapable: true,
		capacityPb:   1 << 20,
		sizeLb:       1 << 21,
		ddevSizeLb:   1 << 22,
		validHeader:  map[uint64]bool{},
		lsids: LsidSet{
			Latest: 1500, Flush: 1500, Completed: 1500, Permanent: 1480,
			Written: 1400, PrevWritten: 1200, Oldest: 1000,
		},
	}
	k.devs[minor] = w
	return w
}

func (k *fakeDriver) findDev(name string) *fakeWdev {
	for _, w := range k.devs {
		if w.name == name {
			return w
		}
	}
	return nil
}

func (k *fakeDriver) lastCall() fakeCall {
	k.t.Helper()
	k.mu.Lock()
	defer k.mu.Unlock()
	if len(k.calls) == 0 {
		k.t.Fatal("fake driver: no ioctl was made")
	}
	return k.calls[len(k.calls)-1]
}

func (k *fakeDriver) nCalls() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return len(k.calls)
}

func (k *fakeDriver) controlIoctl(fd uintptr, req uint32, arg unsafe.Pointer) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	switch req {
	case ReqVersion:
		k.calls = append(k.calls, fakeCall{node: "control", req: req})
		binary.LittleEndian.PutUint32(unsafe.Slice((*byte)(arg), 4), k.version)
		return nil
	case ReqControl:
		return k.withCtl("control", req, arg, k.dispatchControl)
	}
	return syscall.ENOTTY
}

func (k *fakeDriver) deviceIoctl(name string) IoctlFunc {
	return func(fd uintptr, req uint32, arg unsafe.Pointer) error {
		k.mu.Lock()
		defer k.mu.Unlock()
		w := k.findDev(name)
		if w == nil {
			return syscall.ENXIO // the node of a stopped device
		}
		switch req {
		case ReqVersion:
			k.calls = append(k.calls, fakeCall{node: name, req: req})
			binary.LittleEndian.PutUint32(unsafe.Slice((*byte)(arg), 4), k.version)
			return nil
		case ReqWdev:
			return k.withCtl(name, req, arg, func(c *fakeCtl) syscall.Errno { return k.dispatchWdev(w, c) })
		}
		return syscall.ENOTTY
	}
}

// fakeCtl is the driver's kernel copy of walb_ctl plus its kernel buffers.
type fakeCtl struct {
	raw [CtlSize]byte
	u2k []byte
	k2u []byte
}

func (c *fakeCtl) u32(off int) uint32       { return binary.LittleEndian.Uint32(c.raw[off:]) }
func (c *fakeCtl) u64(off int) uint64       { return binary.LittleEndian.Uint64(c.raw[off:]) }
func (c *fakeCtl) i32(off int) int32        { return int32(c.u32(off)) }
func (c *fakeCtl) setU32(off int, v uint32) { binary.LittleEndian.PutUint32(c.raw[off:], v) }
func (c *fakeCtl) setU64(off int, v uint64) { binary.LittleEndian.PutUint64(c.raw[off:], v) }
func (c *fakeCtl) setI32(off int, v int32)  { c.setU32(off, uint32(v)) }
func (c *fakeCtl) setError(code int32)      { c.setI32(fError, code) }

// withCtl mirrors walb_get_ctl / dispatch / walb_put_ctl.
func (k *fakeDriver) withCtl(node string, req uint32, arg unsafe.Pointer, dispatch func(*fakeCtl) syscall.Errno) error {
	user := unsafe.Slice((*byte)(arg), CtlSize)
	c := &fakeCtl{}
	copy(c.raw[:], user)
	call := fakeCall{node: node, req: req, raw: c.raw, k2u: c.u64(fK2U + fBufSize)}

	// Userland never has a reason to send kernel pointers.
	if c.u64(fU2K+fKBuf) != 0 || c.u64(fK2U+fKBuf) != 0 {
		k.t.Errorf("fake driver: %s: kbuf set by userland", node)
	}
	if n := c.u64(fU2K + fBufSize); n > 0 {
		addr := c.u64(fU2K + fBuf)
		if addr == 0 || n > 1<<20 {
			k.calls = append(k.calls, call)
			return syscall.EFAULT
		}
		c.u2k = append([]byte(nil), userMem(addr, n)...)
		call.u2k = c.u2k
		c.setU64(fU2K+fKBuf, fakeKernelAddr)
	}
	if n := c.u64(fK2U + fBufSize); n > 0 {
		if n > 1<<20 {
			k.calls = append(k.calls, call)
			return syscall.EFAULT
		}
		c.k2u = make([]byte, n)
		c.setU64(fK2U+fKBuf, fakeKernelAddr+0x1000)
	}
	k.calls = append(k.calls, call)

	ret := dispatch(c)

	if n := c.u64(fK2U + fBufSize); n > 0 {
		addr := c.u64(fK2U + fBuf)
		if addr == 0 {
			return syscall.EFAULT // walb_copy_to_user_and_free fails, struct not copied
		}
		copy(userMem(addr, n), c.k2u)
	}
	copy(user, c.raw[:])
	if ret != 0 {
		return ret
	}
	return nil
}

func (k *fakeDriver) dispatchControl(c *fakeCtl) syscall.Errno {
	switch Command(c.i32(fCommand)) {
	case CmdStartDev:
		return k.startDev(c)
	case CmdStopDev:
		return k.stopDev(c)
	case CmdGetMajor:
		c.setU32(fK2U+fWMajor, k.major)
		c.setError(0)
		return 0
	case CmdListDev:
		return k.listDev(c)
	case CmdNumOfDev:
		c.setI32(fValInt, int32(len(k.devs)))
		return 0
	}
	return syscall.ENOTTY
}

// fakeParamValid is the fake's own rendering of is_walb_start_param_valid.
func fakeParamValid(b []byte) bool {
	u := func(off int) uint32 { return binary.LittleEndian.Uint32(b[off:]) }
	maxP, minP, qst, fmb, npb, nib := u(32), u(36), u(40), u(52), u(56), u(60)
	return bytes.IndexByte(b[:32], 0) >= 0 &&
		2 <= maxP && maxP <= 16384 && 1 <= minP && minP < maxP &&
		qst >= 1 && fmb*2 <= maxP && npb > 0 && nib > 0
}

func (k *fakeDriver) startDev(c *fakeCtl) syscall.Errno {
	if c.u64(fU2K+fBufSize) != 64 {
		c.setError(-1)
		return syscall.EFAULT
	}
	if c.u64(fK2U+fBufSize) != 64 {
		c.setError(-2)
		return syscall.EFAULT
	}
	if k.startCode != 0 {
		c.setError(k.startCode)
		return syscall.EFAULT
	}
	if !fakeParamValid(c.u2k) {
		c.setError(-3)
		return syscall.EFAULT
	}
	ldev := DevNum{c.u32(fU2K + fLMajor), c.u32(fU2K + fLMinor)}
	ddev := DevNum{c.u32(fU2K + fDMajor), c.u32(fU2K + fDMinor)}
	for _, w := range k.devs {
		if ldev == w.ldev || ldev == w.ddev {
			c.setError(-4)
			return syscall.EFAULT
		}
	}
	for _, w := range k.devs {
		if ddev == w.ldev || ddev == w.ddev {
			c.setError(-5)
			return syscall.EFAULT
		}
	}
	if c.u32(fU2K+fWMinor) != DynamicMinor {
		k.t.Errorf("fake driver: START_DEV with wminor %d, walb-tools always asks for a dynamic one", c.u32(fU2K+fWMinor))
	}
	minor := uint32(0)
	for k.devs[minor] != nil {
		minor += 2
	}
	name := string(c.u2k[:bytes.IndexByte(c.u2k[:32], 0)])
	if name == "" {
		name = fmt.Sprint(minor / 2)
	}
	if len(name) > 25 {
		c.setError(-6)
		return syscall.EFAULT
	}
	if k.findDev(name) != nil {
		c.setError(-7)
		return syscall.EFAULT
	}
	w := k.addDev(name, minor)
	w.ldev, w.ddev = ldev, ddev
	c.setU32(fK2U+fWMajor, k.major)
	c.setU32(fK2U+fWMinor, minor)
	copy(c.k2u, c.u2k) // *param1 = *param0
	c.setError(0)
	return 0
}

func (k *fakeDriver) stopDev(c *fakeCtl) syscall.Errno {
	if c.u64(fU2K+fBufSize) != 0 || c.u64(fK2U+fBufSize) != 0 {
		k.t.Errorf("fake driver: STOP_DEV with buffers")
	}
	if c.u32(fU2K+fWMajor) != k.major {
		return syscall.EFAULT
	}
	minor := c.u32(fU2K + fWMinor)
	w := k.devs[minor]
	if w == nil {
		c.setError(-1)
		return syscall.EFAULT
	}
	if w.users > 0 && c.i32(fValInt) == 0 {
		c.setError(-2)
		return syscall.EBUSY
	}
	delete(k.devs, minor)
	c.setError(0)
	return 0
}

func (k *fakeDriver) listDev(c *fakeCtl) syscall.Errno {
	if len(c.u2k) < 8 {
		return syscall.EFAULT
	}
	minor0 := binary.LittleEndian.Uint32(c.u2k[0:])
	minor1 := binary.LittleEndian.Uint32(c.u2k[4:])
	if minor0 >= minor1 {
		return syscall.EFAULT
	}
	n := uint64(^uint32(0))
	if c.k2u != nil {
		n = uint64(len(c.k2u) / 40)
	}
	// The driver indexes devices by minor/2 (alldevs.c, idr version).
	key0, key1 := minor0/2, minor1/2
	if key0 == key1 {
		key1 = key0 + 1
	}
	var minors []uint32
	for m := range k.devs {
		if m/2 >= key0 && m/2 < key1 {
			minors = append(minors, m)
		}
	}
	slices.Sort(minors)
	var recs [][]byte
	for _, m := range minors {
		if uint64(len(recs)) == n {
			break
		}
		r := make([]byte, 40)
		copy(r[:31], "walb/"+k.devs[m].name)
		binary.LittleEndian.PutUint32(r[32:], k.major)
		binary.LittleEndian.PutUint32(r[36:], m)
		recs = append(recs, r)
	}
	if k.listHook != nil {
		k.listHook(c, recs)
		return 0
	}
	for i, r := range recs {
		copy(c.k2u[i*40:], r)
	}
	c.setI32(fValInt, int32(len(recs)))
	return 0
}

func (k *fakeDriver) dispatchWdev(w *fakeWdev, c *fakeCtl) syscall.Errno {
	// walb-tools sends every device command without buffers.
	for _, off := range []int{fU2K + fBufSize, fU2K + fBuf, fK2U + fBufSize, fK2U + fBuf} {
		if c.u64(off) != 0 {
			k.t.Errorf("fake driver: %s: buffer field at %d is %#x", Command(c.i32(fCommand)), off, c.u64(off))
		}
	}
	l := &w.lsids
	switch Command(c.i32(fCommand)) {
	case CmdGetOldestLsid:
		c.setU64(fValU64, l.Oldest)
	case CmdSetOldestLsid:
		v := c.u64(fValU64)
		ok := v == l.PrevWritten || (l.Oldest <= v && v < l.PrevWritten && w.validHeader[v])
		if !ok {
			return syscall.EFAULT
		}
		l.Oldest = v
		w.superSyncs++
	case CmdGetCheckpointInterval:
		c.setU32(fValU32, w.ckptMs)
	case CmdTakeCheckpoint:
		w.ckpts++
		l.PrevWritten = l.Written
		w.superSyncs++
	case CmdSetCheckpointInterval:
		v := c.u32(fValU32)
		if v > 24*60*60*1000 {
			return syscall.EFAULT
		}
		w.ckptMs = v
	case CmdGetWrittenLsid:
		c.setU64(fValU64, l.Written)
	case CmdGetPermanentLsid:
		c.setU64(fValU64, l.Permanent)
	case CmdGetCompletedLsid:
		c.setU64(fValU64, l.Completed)
	case CmdGetLogUsage:
		c.setU64(fValU64, l.Latest-l.Oldest)
	case CmdGetLogCapacity:
		c.setU64(fValU64, w.capacityPb)
	case CmdIsFlushCapable:
		c.setI32(fValInt, b2i(w.flushCapable))
	case CmdResize:
		size := c.u64(fValU64)
		if size == 0 {
			size = w.ddevSizeLb
		}
		if size < w.sizeLb || size > w.ddevSizeLb {
			return syscall.EFAULT
		}
		w.sizeLb = size
		w.superSyncs++
	case CmdClearLog:
		if w.frozen {
			return syscall.EFAULT
		}
		*l = LsidSet{}
		w.overflow = false
		w.resets++
		w.superSyncs++
	case CmdIsLogOverflow:
		c.setI32(fValInt, b2i(w.overflow))
	case CmdFreeze:
		w.freezeSec = min(c.u32(fValU32), 86400)
		w.frozen = true
	case CmdMelt:
		w.frozen = false
		w.freezeSec = 0
	case CmdIsFrozen:
		c.setI32(fValInt, b2i(w.frozen))
	default:
		return syscall.EFAULT
	}
	return 0
}

func b2i(b bool) int32 {
	if b {
		return 1
	}
	return 0
}
