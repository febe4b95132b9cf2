package devhost

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/walb"
	"github.com/walb-go/walb/walb/kernel"
)

// fakeKernel answers the ioctls of package walb/kernel as the WalB driver
// would, for the nodes of one directory: "control" and one file per
// device. It identifies the node by the descriptor's path.
type fakeKernel struct {
	t     *testing.T
	dir   string
	mu    sync.Mutex
	major uint32
	next  uint32
	devs  map[string]*fakeKDev
	nums  map[string]kernel.DevNum // path -> device number (the Stat seam)
	cmds  []kernel.Command
}

type fakeKDev struct {
	name                       string
	minor                      uint32
	ldev, ddev                 kernel.DevNum
	param                      kernel.StartParam
	oldest, written, permanent uint64
	completed, usage, capacity uint64
	sizeLb, ddevLb             uint64
	frozen, overflow           bool
	freezeSec, ckptMs          uint32
	ckpts, clears              int
}

func newFakeKernel(t *testing.T) *fakeKernel {
	k := &fakeKernel{t: t, dir: t.TempDir(), major: 252, devs: map[string]*fakeKDev{}, nums: map[string]kernel.DevNum{}}
	require.NoError(t, os.WriteFile(filepath.Join(k.dir, "control"), nil, 0o600))
	return k
}

// blockDevice registers a path as a block device with the next number.
func (k *fakeKernel) blockDevice(path string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.nums[path] = kernel.DevNum{Major: 8, Minor: uint32(len(k.nums)) * 16}
}

func (k *fakeKernel) controller() *KernelController {
	return &KernelController{
		Control:     &kernel.Controller{Path: filepath.Join(k.dir, "control"), Ioctl: k.ioctl, Stat: k.stat},
		DevDir:      k.dir + "/",
		Ioctl:       k.ioctl,
		SysBlockDir: filepath.Join(k.dir, "sys", "block"),
	}
}

// sysfs writes the attribute rel (e.g. "size", "walb/lsids") of the walb
// disk name, as the driver and the block layer would show it.
func (k *fakeKernel) sysfs(name, rel, text string) {
	path := filepath.Join(k.dir, "sys", "block", "walb!"+name, rel)
	require.NoError(k.t, os.MkdirAll(filepath.Dir(path), 0o755))
	require.NoError(k.t, os.WriteFile(path, []byte(text), 0o644))
}

func (k *fakeKernel) stat(path string) (uint32, uint32, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	n, ok := k.nums[path]
	if !ok {
		return 0, 0, syscall.ENOENT
	}
	return n.Major, n.Minor, nil
}

// userMem is n bytes of this process's memory at addr, as copy_from_user
// sees a user pointer (reinterpreted, not converted, for vet).
func userMem(addr, n uint64) []byte {
	p := *(*unsafe.Pointer)(unsafe.Pointer(&addr))
	return unsafe.Slice((*byte)(p), n)
}

func (k *fakeKernel) ioctl(fd uintptr, req uint32, arg unsafe.Pointer) error {
	path, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(int(fd)))
	require.NoError(k.t, err)
	if req != kernel.ReqControl && req != kernel.ReqWdev {
		return syscall.ENOTTY
	}
	raw := unsafe.Slice((*byte)(arg), kernel.CtlSize)
	var c kernel.Ctl
	require.NoError(k.t, c.Unmarshal(raw))
	k.mu.Lock()
	defer k.mu.Unlock()
	k.cmds = append(k.cmds, c.Command)
	var errno syscall.Errno
	node := filepath.Base(path)
	switch {
	case node == "control" && req == kernel.ReqControl:
		errno = k.control(&c)
	case node != "control" && req == kernel.ReqWdev:
		d := k.devs[node]
		if d == nil {
			return syscall.ENXIO
		}
		errno = k.wdev(d, &c)
	default:
		return syscall.ENOTTY
	}
	b := c.Marshal()
	copy(raw, b[:])
	if errno != 0 {
		return errno
	}
	return nil
}

func (k *fakeKernel) control(c *kernel.Ctl) syscall.Errno {
	switch c.Command {
	case kernel.CmdStartDev:
		p, err := kernel.UnmarshalStartParam(userMem(c.U2K.Buf, c.U2K.BufSize))
		require.NoError(k.t, err)
		if p.Validate() != nil {
			c.Error = -3
			return syscall.EFAULT
		}
		l := kernel.DevNum{Major: c.U2K.LMajor, Minor: c.U2K.LMinor}
		dd := kernel.DevNum{Major: c.U2K.DMajor, Minor: c.U2K.DMinor}
		for _, d := range k.devs {
			switch {
			case d.ldev == l:
				c.Error = -4
				return syscall.EFAULT
			case d.ddev == dd:
				c.Error = -5
				return syscall.EFAULT
			case d.name == p.Name:
				c.Error = -7
				return syscall.EFAULT
			}
		}
		d := &fakeKDev{name: p.Name, minor: k.next, ldev: l, ddev: dd, param: p,
			capacity: 1000, sizeLb: 2048, ddevLb: 4096, ckptMs: kernel.DefaultCheckpointIntervalMs}
		k.next += 2
		k.devs[p.Name] = d
		node := filepath.Join(k.dir, p.Name)
		require.NoError(k.t, os.WriteFile(node, nil, 0o600))
		k.nums[node] = kernel.DevNum{Major: k.major, Minor: d.minor}
		echo, err := p.Marshal()
		require.NoError(k.t, err)
		copy(userMem(c.K2U.Buf, c.K2U.BufSize), echo[:])
		c.K2U.WMajor, c.K2U.WMinor = k.major, d.minor
		return 0
	case kernel.CmdStopDev:
		for name, d := range k.devs {
			if c.U2K.WMajor == k.major && c.U2K.WMinor == d.minor {
				delete(k.devs, name)
				require.NoError(k.t, os.Remove(filepath.Join(k.dir, name)))
				return 0
			}
		}
		c.Error = -1
		return syscall.EFAULT
	case kernel.CmdListDev:
		in := userMem(c.U2K.Buf, c.U2K.BufSize)
		lo, hi := uint32(in[0])|uint32(in[1])<<8|uint32(in[2])<<16|uint32(in[3])<<24,
			uint32(in[4])|uint32(in[5])<<8|uint32(in[6])<<16|uint32(in[7])<<24
		var recs []*fakeKDev
		for _, d := range k.devs {
			if lo <= d.minor && d.minor < hi {
				recs = append(recs, d)
			}
		}
		sort.Slice(recs, func(i, j int) bool { return recs[i].minor < recs[j].minor })
		out := userMem(c.K2U.Buf, c.K2U.BufSize)
		n := 0
		for _, d := range recs {
			if (n+1)*kernel.DiskDataSize > len(out) {
				break
			}
			rec := kernel.DiskData{DiskName: "walb/" + d.name, Major: k.major, Minor: d.minor}.Marshal()
			copy(out[n*kernel.DiskDataSize:], rec[:])
			n++
		}
		c.ValInt = int32(n)
		return 0
	}
	return syscall.ENOTTY
}

func (k *fakeKernel) wdev(d *fakeKDev, c *kernel.Ctl) syscall.Errno {
	b2i := func(b bool) int32 {
		if b {
			return 1
		}
		return 0
	}
	switch c.Command {
	case kernel.CmdGetOldestLsid:
		c.ValU64 = d.oldest
	case kernel.CmdGetWrittenLsid:
		c.ValU64 = d.written
	case kernel.CmdGetPermanentLsid:
		c.ValU64 = d.permanent
	case kernel.CmdGetCompletedLsid:
		c.ValU64 = d.completed
	case kernel.CmdGetLogUsage:
		c.ValU64 = d.usage
	case kernel.CmdGetLogCapacity:
		c.ValU64 = d.capacity
	case kernel.CmdSetOldestLsid:
		if c.ValU64 < d.oldest || c.ValU64 > d.written {
			return syscall.EFAULT
		}
		d.oldest = c.ValU64
	case kernel.CmdIsFlushCapable:
		c.ValInt = 1
	case kernel.CmdIsLogOverflow:
		c.ValInt = b2i(d.overflow)
	case kernel.CmdIsFrozen:
		c.ValInt = b2i(d.frozen)
	case kernel.CmdFreeze:
		d.frozen, d.freezeSec = true, c.ValU32
	case kernel.CmdMelt:
		d.frozen = false
	case kernel.CmdClearLog:
		if d.frozen {
			return syscall.EFAULT
		}
		d.oldest, d.written, d.permanent, d.completed, d.usage, d.overflow = 0, 0, 0, 0, 0, false
		d.clears++
	case kernel.CmdResize:
		v := c.ValU64
		if v == 0 {
			v = d.ddevLb
		}
		if v < d.sizeLb || v > d.ddevLb {
			return syscall.EFAULT
		}
		d.sizeLb = v
	case kernel.CmdTakeCheckpoint:
		d.ckpts++
	case kernel.CmdGetCheckpointInterval:
		c.ValU32 = d.ckptMs
	case kernel.CmdSetCheckpointInterval:
		if c.ValU32 > kernel.MaxCheckpointIntervalMs {
			return syscall.EFAULT
		}
		d.ckptMs = c.ValU32
	default:
		return syscall.EFAULT
	}
	return 0
}

func (k *fakeKernel) dev(name string) *fakeKDev {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.devs[name]
}

func (k *fakeKernel) countCmd(cmd kernel.Command) int {
	k.mu.Lock()
	defer k.mu.Unlock()
	n := 0
	for _, c := range k.cmds {
		if c == cmd {
			n++
		}
	}
	return n
}

func TestKernelControllerLifecycle(t *testing.T) {
	ctx := testCtx(t)
	k := newFakeKernel(t)
	kc := k.controller()
	for _, p := range []string{"/dev/sda1", "/dev/sda2", "/dev/sdb1", "/dev/sdb2"} {
		k.blockDevice(p)
	}

	di, err := kc.CreateWdev(ctx, "/dev/sda1", "/dev/sda2", CreateOptions{Name: "vol0", MaxLogpackKB: 64, NIOBulk: 7})
	require.NoError(t, err)
	require.Equal(t, DeviceInfo{Name: "vol0", State: StateRunning, Major: 252, Minor: 0, Path: k.dir + "/vol0"}, di)
	p := k.dev("vol0").param
	want := kernel.DefaultStartParam()
	want.Name, want.MaxLogpackKB, want.NIOBulk = "vol0", 64, 7
	require.Equal(t, want, p, "options given, wdevc defaults for the rest")

	_, err = kc.CreateWdev(ctx, "/dev/sdb1", "/dev/sdb2", CreateOptions{Name: "vol0"})
	require.ErrorIs(t, err, ErrExists)
	_, err = kc.CreateWdev(ctx, "/dev/sda1", "/dev/sdb2", CreateOptions{Name: "vol1"})
	require.ErrorIs(t, err, ErrBusy)
	_, err = kc.CreateWdev(ctx, "/dev/sdb1", "/dev/sdb2", CreateOptions{Name: "vol1", MaxPendingMB: 8, LogFlushIntervalMB: 16})
	require.ErrorIs(t, err, ErrInvalid, "2*flush MB above max pending")
	_, err = kc.CreateWdev(ctx, "/dev/sdb1", "/dev/sdb1", CreateOptions{Name: "vol1"})
	require.ErrorIs(t, err, ErrInvalid, "same device")
	_, err = kc.CreateWdev(ctx, "/dev/sdb1", "/dev/sdb2", CreateOptions{Name: "vol1"})
	require.NoError(t, err)

	list, err := kc.List(ctx)
	require.NoError(t, err)
	require.Len(t, list, 2)
	require.Equal(t, "vol0", list[0].Name)
	require.Equal(t, "vol1", list[1].Name)
	require.EqualValues(t, 2, list[1].Minor)
	require.Equal(t, k.dir+"/vol1", list[1].Path)

	d := k.dev("vol0")
	k.mu.Lock()
	d.oldest, d.written, d.permanent, d.completed, d.usage = 10, 20, 30, 40, 30
	k.mu.Unlock()
	for want, get := range map[uint64]func(context.Context, string) (uint64, error){
		10: kc.OldestLsid, 20: kc.WrittenLsid, 30: kc.PermanentLsid, 40: kc.CompletedLsid, 1000: kc.LogCapacity,
	} {
		v, err := get(ctx, "vol0")
		require.NoError(t, err)
		require.Equal(t, want, v)
	}
	usage, err := kc.LogUsage(ctx, "vol0")
	require.NoError(t, err)
	require.EqualValues(t, 30, usage)
	require.NoError(t, kc.SetOldestLsid(ctx, "vol0", 20))
	require.EqualValues(t, 20, k.dev("vol0").oldest)
	require.ErrorIs(t, kc.SetOldestLsid(ctx, "vol0", 5), ErrFailed, "the driver only says EFAULT")

	// Freeze timeouts travel in whole seconds, rounded up and clipped.
	for _, tc := range []struct {
		in   time.Duration
		want uint32
	}{{0, 0}, {1500 * time.Millisecond, 2}, {3 * time.Second, 3}, {48 * time.Hour, kernel.MaxFreezeTimeoutSec}} {
		require.NoError(t, kc.Freeze(ctx, "vol0", tc.in))
		require.Equal(t, tc.want, k.dev("vol0").freezeSec, "%v", tc.in)
	}
	require.ErrorIs(t, kc.Freeze(ctx, "vol0", -time.Second), ErrInvalid)
	frozen, err := kc.IsFrozen(ctx, "vol0")
	require.NoError(t, err)
	require.True(t, frozen)
	// reset-wal on a frozen device is refused before the driver is asked.
	require.ErrorIs(t, kc.ResetWAL(ctx, "vol0"), ErrState)
	require.Zero(t, k.countCmd(kernel.CmdClearLog))
	require.NoError(t, kc.Melt(ctx, "vol0"))
	require.NoError(t, kc.ResetWAL(ctx, "vol0"))
	require.Equal(t, 1, k.dev("vol0").clears)
	v, err := kc.PermanentLsid(ctx, "vol0")
	require.NoError(t, err)
	require.Zero(t, v)

	require.ErrorIs(t, kc.Resize(ctx, "vol0", 100), ErrFailed)
	require.NoError(t, kc.Resize(ctx, "vol0", 0))
	require.EqualValues(t, 4096, k.dev("vol0").sizeLb)

	require.NoError(t, kc.TakeCheckpoint(ctx, "vol0"))
	require.Equal(t, 1, k.dev("vol0").ckpts)
	require.NoError(t, kc.SetCheckpointInterval(ctx, "vol0", 2500*time.Millisecond))
	iv, err := kc.CheckpointInterval(ctx, "vol0")
	require.NoError(t, err)
	require.Equal(t, 2500*time.Millisecond, iv)
	require.ErrorIs(t, kc.SetCheckpointInterval(ctx, "vol0", 25*time.Hour), ErrInvalid)
	for _, f := range []func(context.Context, string) (bool, error){kc.IsFlushCapable, kc.IsLogOverflow} {
		_, err := f(ctx, "vol0")
		require.NoError(t, err)
	}
	fc, _ := kc.IsFlushCapable(ctx, "vol0")
	require.True(t, fc)

	// Unknown devices have no node.
	_, err = kc.OldestLsid(ctx, "nope")
	require.ErrorIs(t, err, ErrNotFound)
	require.ErrorIs(t, kc.DeleteWdev(ctx, "nope", false), ErrNotFound)
	require.ErrorIs(t, kc.Melt(ctx, "bad/name"), ErrInvalid)

	require.NoError(t, kc.DeleteWdev(ctx, "vol0", true))
	list, err = kc.List(ctx)
	require.NoError(t, err)
	require.Len(t, list, 1)
	require.Equal(t, "vol1", list[0].Name)
}

// cat-log on a kernel device reads its log node within the driver's lsids:
// the result equals wlog-cat of the same log device image.
func TestKernelControllerCatLog(t *testing.T) {
	ctx := testCtx(t)
	k := newFakeKernel(t)
	kc := k.controller()
	k.blockDevice("/dev/sda1")
	k.blockDevice("/dev/sda2")
	_, err := kc.CreateWdev(ctx, "/dev/sda1", "/dev/sda2", CreateOptions{Name: "vol0"})
	require.NoError(t, err)

	// Make the log node hold a real log: write through a userspace device.
	src := t.TempDir()
	ldev, ddev := deviceFiles(t, src, "vol0", 4<<20, 4<<20)
	dev, err := walb.Open(ctx, ldev, ddev, walb.Options{Logger: testLogger(t)})
	require.NoError(t, err)
	for i := range 20 {
		_, err := dev.WriteAt(randomBytes(uint64(i), 8192), int64(i)*64<<10)
		require.NoError(t, err)
	}
	require.NoError(t, dev.Trim(2<<20, 64<<10))
	require.NoError(t, dev.Flush())
	permanent := dev.Lsids().Permanent
	require.NoError(t, dev.Close())
	require.NoError(t, os.Rename(ldev, kc.LogPath("vol0")))

	d := k.dev("vol0")
	k.mu.Lock()
	d.oldest, d.permanent = 0, permanent
	k.mu.Unlock()

	var got bytes.Buffer
	end, err := kc.CatLog(ctx, "vol0", AutoLsid, AutoLsid, &got)
	require.NoError(t, err)
	require.Equal(t, permanent, end)
	ld, err := walb.OpenLogDevice(kc.LogPath("vol0"), 0)
	require.NoError(t, err)
	var want bytes.Buffer
	_, err = ld.ReadLog(ctx, 0, permanent, &want)
	require.NoError(t, err)
	require.NoError(t, ld.Close())
	require.True(t, bytes.Equal(want.Bytes(), got.Bytes()), "cat-log differs from wlog-cat of the image")
	data, err := os.ReadFile(ddev)
	require.NoError(t, err)
	require.True(t, bytes.Equal(data, redoOnZero(t, got.Bytes(), int64(len(data)))))

	// The end is clipped to the permanent lsid: packs above it may not be
	// durable.
	k.mu.Lock()
	d.permanent = 1
	k.mu.Unlock()
	got.Reset()
	end, err = kc.CatLog(ctx, "vol0", 0, AutoLsid-1, &got)
	require.NoError(t, err)
	require.Greater(t, end, uint64(1), "the pack at 0 is returned whole")
	require.Less(t, end, permanent)

	k.mu.Lock()
	d.oldest, d.permanent = permanent, permanent
	k.mu.Unlock()
	_, err = kc.CatLog(ctx, "vol0", 0, AutoLsid, io.Discard)
	require.ErrorIs(t, err, ErrInvalid, "below the oldest lsid")
	got.Reset()
	end, err = kc.CatLog(ctx, "vol0", AutoLsid, AutoLsid, &got)
	require.NoError(t, err)
	require.Equal(t, permanent, end)
	requireZero(t, redoOnZero(t, got.Bytes(), 1<<20))
}

// get-lsids on a kernel device reads the sysfs attribute walb/lsids; info
// combines the driver's flags and capacity, the sysfs size and the super
// sector of the log node.
func TestKernelControllerLsidsAndInfo(t *testing.T) {
	ctx := testCtx(t)
	k := newFakeKernel(t)
	kc := k.controller()
	k.blockDevice("/dev/sda1")
	k.blockDevice("/dev/sda2")
	_, err := kc.CreateWdev(ctx, "/dev/sda1", "/dev/sda2", CreateOptions{Name: "vol0"})
	require.NoError(t, err)

	_, err = kc.Lsids(ctx, "vol0")
	require.ErrorIs(t, err, ErrNotFound, "no sysfs attribute")
	want := walb.Lsids{Latest: 900, Completed: 880, Flush: 870, Permanent: 860, Written: 850, PrevWritten: 700, Oldest: 600}
	for _, tc := range []struct{ name, text string }{
		{"padded, as the driver prints", "latest       900\ncompleted    880\nflush        870\npermanent    860\n" +
			"written      850\nprev_written 700\noldest       600\n"},
		{"with submitted, as older drivers print", "latest 900\nsubmitted 890\ncompleted 880\nflush 870\npermanent 860\n" +
			"written 850\nprev_written 700\noldest 600\n"},
	} {
		k.sysfs("vol0", "walb/lsids", tc.text)
		l, err := kc.Lsids(ctx, "vol0")
		require.NoError(t, err, tc.name)
		require.Equal(t, want, l, tc.name)
	}
	for _, bad := range []string{"latest 900\n", "latest x\n", "latest 18446744073709551615\ncompleted 1\nflush 1\n" +
		"permanent 1\nwritten 1\nprev_written 1\noldest 1\n"} {
		k.sysfs("vol0", "walb/lsids", bad)
		_, err := kc.Lsids(ctx, "vol0")
		require.ErrorIs(t, err, ErrFailed, "%q is the driver's fault", bad)
	}
	_, err = kc.Lsids(ctx, "nope")
	require.ErrorIs(t, err, ErrNotFound)
	_, err = kc.Lsids(ctx, "bad/name")
	require.ErrorIs(t, err, ErrInvalid)

	// The log node holds a formatted log device (pbs 4096, read from its
	// super sector since a file has no block size of its own).
	src := t.TempDir()
	ldev, ddev := deviceFiles(t, src, "vol0", 4<<20, 4<<20)
	super, err := walb.FormatLogDevice(ldev, ddev, walb.FormatOptions{Name: "vol0", PBS: 4096})
	require.NoError(t, err)
	_, err = kc.Info(ctx, "vol0")
	require.Error(t, err, "no log node, no sysfs size")
	k.sysfs("vol0", "size", "8192\n")
	_, err = kc.Info(ctx, "vol0")
	require.ErrorIs(t, err, ErrNotFound, "no log node")
	require.NoError(t, os.Rename(ldev, kc.LogPath("vol0")))

	d := k.dev("vol0")
	k.mu.Lock()
	d.frozen, d.overflow, d.capacity = true, true, 777
	k.mu.Unlock()
	st, err := kc.Info(ctx, "vol0")
	require.NoError(t, err)
	require.Equal(t, DeviceStatus{Name: "vol0", UUID: super.UUID, Salt: super.Salt, PBS: 4096, SizeLB: 8192,
		LogCapacityPB: 777, Overflow: true, Frozen: true}, st)

	k.sysfs("vol0", "size", "lots\n")
	_, err = kc.Info(ctx, "vol0")
	require.ErrorIs(t, err, ErrFailed)
	k.sysfs("vol0", "size", "8192\n")
	require.NoError(t, os.WriteFile(kc.LogPath("vol0"), make([]byte, 64<<10), 0o600))
	_, err = kc.Info(ctx, "vol0")
	require.ErrorIs(t, err, ErrFailed, "not a log device")
	_, err = kc.Info(ctx, "nope")
	require.ErrorIs(t, err, ErrNotFound)
}
