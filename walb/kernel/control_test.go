package kernel

import (
	"context"
	"encoding/binary"
	"fmt"
	"os"
	"syscall"
	"testing"
	"unsafe"

	"github.com/pkg/errors"
	"github.com/stretchr/testify/require"
)

func TestControllerVersionAndMajor(t *testing.T) {
	k := newFakeDriver(t)
	c := k.controller()
	ctx := context.Background()

	v, err := c.Version(ctx)
	require.NoError(t, err)
	require.Equal(t, Version(0x00010501), v)
	require.Equal(t, "1.5.1", v.String())
	require.Equal(t, ReqVersion, k.lastCall().req)

	major, err := c.GetMajor(ctx)
	require.NoError(t, err)
	require.Equal(t, uint32(252), major)
	call := k.lastCall()
	require.Equal(t, ReqControl, call.req)
	require.Equal(t, uint32(CmdGetMajor), call.u32(fCommand))
	require.Equal(t, make([]byte, CtlSize-4), call.raw[4:], "everything but the command is zero")
}

func TestControllerNumOfDev(t *testing.T) {
	k := newFakeDriver(t)
	for i := range uint32(3) {
		k.addDev(fmt.Sprint(i), 2*i)
	}
	n, err := k.controller().NumOfDev(context.Background())
	require.NoError(t, err)
	require.Equal(t, 3, n)
	require.Equal(t, uint32(CmdNumOfDev), k.lastCall().u32(fCommand))
}

// §5.3 START_DEV: u2k carries both device numbers, WALB_DYNAMIC_MINOR and the
// 64-byte parameter; k2u gets the new device and an echo of the parameter.
func TestStartDevEncoding(t *testing.T) {
	k := newFakeDriver(t)
	c := k.controller()
	p := DefaultStartParam()
	p.Name = "vol0"
	p.MaxLogpackKB = 64

	s, err := c.StartDev(context.Background(), "/dev/fake/8:16", "/dev/fake/8:32", p)
	require.NoError(t, err)
	require.Equal(t, Started{Name: "vol0", Major: 252, Minor: 0, Param: p}, s)
	require.Equal(t, "/dev/walb/vol0", s.Path())

	call := k.lastCall()
	require.Equal(t, ReqControl, call.req)
	require.Equal(t, uint32(CmdStartDev), call.u32(fCommand))
	require.Equal(t, uint32(0xFFFFFFFF), call.u32(fU2K+fWMinor))
	require.Equal(t, uint32(8), call.u32(fU2K+fLMajor))
	require.Equal(t, uint32(16), call.u32(fU2K+fLMinor))
	require.Equal(t, uint32(8), call.u32(fU2K+fDMajor))
	require.Equal(t, uint32(32), call.u32(fU2K+fDMinor))
	require.Equal(t, uint64(64), call.u64(fU2K+fBufSize))
	require.NotZero(t, call.u64(fU2K+fBuf))
	require.Equal(t, uint64(64), call.u64(fK2U+fBufSize))
	require.NotZero(t, call.u64(fK2U+fBuf))
	require.NotEqual(t, call.u64(fU2K+fBuf), call.u64(fK2U+fBuf), "u2k and k2u must be separate buffers")

	// The parameter as the driver copied it in, decoded by hand.
	u := call.u2k
	require.Len(t, u, 64)
	require.Equal(t, "vol0\x00", string(u[:5]))
	require.Equal(t, make([]byte, 27), u[5:32])
	le := binary.LittleEndian
	require.Equal(t, []uint32{32, 16, 100, 64, 100, 16, 128, 1024}, []uint32{
		le.Uint32(u[32:]), le.Uint32(u[36:]), le.Uint32(u[40:]), le.Uint32(u[44:]),
		le.Uint32(u[48:]), le.Uint32(u[52:]), le.Uint32(u[56:]), le.Uint32(u[60:]),
	})

	w := k.findDev("vol0")
	require.NotNil(t, w)
	require.Equal(t, DevNum{8, 16}, w.ldev)
	require.Equal(t, DevNum{8, 32}, w.ddev)
}

// With an empty name the driver names the device itself and only echoes the
// empty request, so StartDev asks LIST_DEV for the real name.
func TestStartDevEmptyNameIsLookedUp(t *testing.T) {
	k := newFakeDriver(t)
	k.addDev("first", 0)
	c := k.controller()
	s, err := c.StartDev(context.Background(), "/dev/fake/8:48", "/dev/fake/8:64", DefaultStartParam())
	require.NoError(t, err)
	require.Equal(t, "1", s.Name, "minor 2 -> default name minor/2")
	require.Equal(t, uint32(2), s.Minor)

	call := k.lastCall()
	require.Equal(t, uint32(CmdListDev), call.u32(fCommand))
	require.Equal(t, uint64(8), call.u64(fU2K+fBufSize))
	require.Equal(t, []uint32{2, 4}, []uint32{binary.LittleEndian.Uint32(call.u2k), binary.LittleEndian.Uint32(call.u2k[4:])})
	require.Equal(t, uint64(DiskDataSize), call.k2u)
}

func TestStartDevRejectsBeforeIoctl(t *testing.T) {
	k := newFakeDriver(t)
	c := k.controller()
	ctx := context.Background()

	bad := DefaultStartParam()
	bad.MinPendingMB = bad.MaxPendingMB
	_, err := c.StartDev(ctx, "/dev/fake/8:16", "/dev/fake/8:32", bad)
	require.ErrorIs(t, err, ErrInvalidStartParam)

	_, err = c.StartDev(ctx, "/dev/fake/8:16", "/dev/fake/8:16", DefaultStartParam())
	require.ErrorIs(t, err, ErrSameDevice)

	_, err = c.StartDev(ctx, "/nonexistent", "/dev/fake/8:16", DefaultStartParam())
	require.ErrorIs(t, err, os.ErrNotExist)
	require.ErrorContains(t, err, "log device")

	_, err = c.StartDev(ctx, "/dev/fake/8:16", "/nonexistent", DefaultStartParam())
	require.ErrorContains(t, err, "data device")

	require.Zero(t, k.nCalls(), "no ioctl for a request that cannot succeed")
}

// Every START_DEV error code maps to its sentinel, EFAULT and ErrFailed.
func TestStartDevErrorCodes(t *testing.T) {
	tests := []struct {
		code   int32
		setup  func(k *fakeDriver) // natural cause; nil means injected
		want   error
		ldev   string
		name   string
		detail string
	}{
		{code: -1, want: ErrStartBufSize, detail: "u2k.buf_size"},
		{code: -2, want: ErrStartBufSize, detail: "k2u.buf_size"},
		{code: -3, want: ErrStartParamInvalid, detail: "is_walb_start_param_valid"},
		{code: -4, want: ErrLdevInUse, setup: func(k *fakeDriver) { k.addDev("x", 0).ldev = DevNum{8, 16} }},
		{code: -5, want: ErrDdevInUse, setup: func(k *fakeDriver) { k.addDev("x", 0).ddev = DevNum{8, 32} }},
		{code: -6, want: ErrPrepareFailed, detail: "prepare_wdev"},
		{code: -7, want: ErrNameExists, setup: func(k *fakeDriver) { k.addDev("vol", 0) }},
		{code: -8, want: ErrRegisterFailed, detail: "register_wdev"},
	}
	for _, tc := range tests {
		t.Run(fmt.Sprint(tc.code), func(t *testing.T) {
			k := newFakeDriver(t)
			if tc.setup != nil {
				tc.setup(k)
			} else {
				k.startCode = tc.code
			}
			p := DefaultStartParam()
			p.Name = "vol"
			_, err := k.controller().StartDev(context.Background(), "/dev/fake/8:16", "/dev/fake/8:32", p)
			require.ErrorIs(t, err, tc.want)
			require.ErrorIs(t, err, ErrFailed)
			require.ErrorIs(t, err, syscall.EFAULT)
			var ie *IoctlError
			require.True(t, errors.As(err, &ie))
			require.Equal(t, tc.code, ie.Code)
			require.Equal(t, CmdStartDev, ie.Command)
			require.ErrorContains(t, err, fmt.Sprintf("START_DEV on %s: ", k.nodePath("control")))
			require.ErrorContains(t, err, fmt.Sprintf("error %d: ", tc.code))
			require.ErrorContains(t, err, tc.detail)
		})
	}
}

// EFAULT without an error code: the driver found no free minor.
func TestStartDevEfaultWithoutCode(t *testing.T) {
	k := newFakeDriver(t)
	c := k.controller()
	c.Ioctl = func(fd uintptr, req uint32, arg unsafe.Pointer) error { return syscall.EFAULT }
	_, err := c.StartDev(context.Background(), "/dev/fake/8:16", "/dev/fake/8:32", DefaultStartParam())
	require.ErrorIs(t, err, ErrFailed)
	require.NotErrorIs(t, err, ErrStartBufSize)
	var ie *IoctlError
	require.True(t, errors.As(err, &ie))
	require.Zero(t, ie.Code)
}

func TestStopDev(t *testing.T) {
	ctx := context.Background()
	t.Run("encoding", func(t *testing.T) {
		for _, force := range []bool{false, true} {
			k := newFakeDriver(t)
			k.addDev("a", 4)
			require.NoError(t, k.controller().StopDev(ctx, "/dev/fake/252:4", force))
			call := k.lastCall()
			require.Equal(t, uint32(CmdStopDev), call.u32(fCommand))
			require.Equal(t, uint32(252), call.u32(fU2K+fWMajor))
			require.Equal(t, uint32(4), call.u32(fU2K+fWMinor))
			require.Equal(t, b2i(force), int32(call.u32(fValInt)))
			require.Nil(t, k.findDev("a"))
		}
	})
	t.Run("busy", func(t *testing.T) {
		k := newFakeDriver(t)
		k.addDev("a", 0).users = 1
		err := k.controller().StopDevNum(ctx, DevNum{252, 0}, false)
		require.ErrorIs(t, err, ErrBusy)
		require.ErrorIs(t, err, ErrDeviceOpen)
		require.ErrorIs(t, err, syscall.EBUSY)
		require.ErrorContains(t, err, "error -2")
		require.NotNil(t, k.findDev("a"))
		require.NoError(t, k.controller().StopDevNum(ctx, DevNum{252, 0}, true))
		require.Nil(t, k.findDev("a"))
	})
	t.Run("not found", func(t *testing.T) {
		k := newFakeDriver(t)
		err := k.controller().StopDevNum(ctx, DevNum{252, 8}, false)
		require.ErrorIs(t, err, ErrDeviceNotFound)
		require.ErrorIs(t, err, ErrFailed)
	})
	t.Run("wrong major", func(t *testing.T) {
		k := newFakeDriver(t)
		k.addDev("a", 0)
		err := k.controller().StopDevNum(ctx, DevNum{8, 0}, false)
		require.ErrorIs(t, err, ErrFailed)
		require.NotErrorIs(t, err, ErrDeviceNotFound)
	})
	t.Run("stat", func(t *testing.T) {
		k := newFakeDriver(t)
		err := k.controller().StopDev(ctx, "/nonexistent", false)
		require.ErrorIs(t, err, os.ErrNotExist)
		require.Zero(t, k.nCalls())
	})
}

// ListDev pages through more devices than one LIST_DEV answer holds, and
// restarts each page two minors past the last device, as walb-tools does.
func TestListDevPaging(t *testing.T) {
	k := newFakeDriver(t)
	const n = 2*listBatch + 5
	var want []DiskData
	for i := range uint32(n) {
		minor := 2*i + 2*(i/10) // leave holes
		name := fmt.Sprintf("v%d", i)
		k.addDev(name, minor)
		want = append(want, DiskData{DiskName: "walb/" + name, Major: 252, Minor: minor})
	}
	got, err := k.controller().ListDev(context.Background())
	require.NoError(t, err)
	require.Equal(t, want, got)
	require.Equal(t, "v0", got[0].Name())
	require.Equal(t, "/dev/walb/v0", got[0].Path())

	require.Equal(t, 3, k.nCalls())
	for i, c := range k.calls {
		require.Equal(t, uint32(CmdListDev), c.u32(fCommand))
		require.Equal(t, uint64(listBatch*DiskDataSize), c.k2u)
		b := binary.LittleEndian.Uint32(c.u2k)
		e := binary.LittleEndian.Uint32(c.u2k[4:])
		require.Equal(t, uint32(0xFFFFFFFF), e)
		if i > 0 {
			require.Equal(t, want[i*listBatch-1].Minor+2, b)
		} else {
			require.Zero(t, b)
		}
	}
}

func TestListDevEmpty(t *testing.T) {
	k := newFakeDriver(t)
	got, err := k.controller().ListDev(context.Background())
	require.NoError(t, err)
	require.Empty(t, got)
}

func TestListDevRangeRejectsBadAnswers(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name string
		hook func(c *fakeCtl, recs [][]byte)
	}{
		{"count above buffer", func(c *fakeCtl, recs [][]byte) { c.setI32(fValInt, int32(len(c.k2u)/40+1)) }},
		{"negative count", func(c *fakeCtl, recs [][]byte) { c.setI32(fValInt, -1) }},
		{"minor below range", func(c *fakeCtl, recs [][]byte) {
			binary.LittleEndian.PutUint32(c.k2u[36:], 0)
			c.setI32(fValInt, 1)
		}},
		{"minors not increasing", func(c *fakeCtl, recs [][]byte) {
			copy(c.k2u, recs[1])
			copy(c.k2u[40:], recs[0])
			c.setI32(fValInt, 2)
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			k := newFakeDriver(t)
			k.addDev("a", 4)
			k.addDev("b", 6)
			k.listHook = tc.hook
			_, err := k.controller().ListDevRange(ctx, 4, 100, 4)
			require.ErrorIs(t, err, ErrBadReply)
		})
	}
	k := newFakeDriver(t)
	_, err := k.controller().ListDevRange(ctx, 4, 4, 1)
	require.ErrorIs(t, err, ErrInvalidArgument)
	_, err = k.controller().ListDevRange(ctx, 0, 4, 0)
	require.ErrorIs(t, err, ErrInvalidArgument)
	require.Zero(t, k.nCalls())
}

// The control node answers commands it does not know with ENOTTY.
func TestControlUnknownCommand(t *testing.T) {
	k := newFakeDriver(t)
	c := k.controller()
	ctl := Ctl{Command: CmdGetOldestLsid}
	err := c.control(context.Background(), &ctl, nil, nil)
	require.ErrorIs(t, err, ErrNotSupported)
	require.ErrorIs(t, err, syscall.ENOTTY)
	require.ErrorContains(t, err, "GET_OLDEST_LSID")
}

func TestControllerOpenAndContextErrors(t *testing.T) {
	k := newFakeDriver(t)
	c := k.controller()
	c.Path = "/nonexistent/walb/control"
	_, err := c.GetMajor(context.Background())
	require.ErrorIs(t, err, os.ErrNotExist)
	var ie *IoctlError
	require.False(t, errors.As(err, &ie), "an open failure is not an ioctl failure")

	c = k.controller()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = c.NumOfDev(ctx)
	require.ErrorIs(t, err, context.Canceled)
	require.Zero(t, k.nCalls())
}

// A non-errno failure of the ioctl function keeps its identity and gains
// context.
func TestControllerForeignIoctlError(t *testing.T) {
	k := newFakeDriver(t)
	c := k.controller()
	c.Ioctl = func(uintptr, uint32, unsafe.Pointer) error { return ErrUnsupportedPlatform }
	_, err := c.NumOfDev(context.Background())
	require.ErrorIs(t, err, ErrUnsupportedPlatform)
	require.ErrorContains(t, err, "NUM_OF_DEV")
}
