package kernel

import (
	"context"
	"os"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/pkg/errors"
	"github.com/stretchr/testify/require"
)

// Every device method against the fake driver: the command number and the
// value fields it sends, what it returns, and what it did to the device.
func TestDeviceCommands(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name   string
		setup  func(w *fakeWdev)
		call   func(d *Device) (any, error)
		cmd    Command
		valInt int32
		valU64 uint64
		valU32 uint32
		want   any
		check  func(t *testing.T, w *fakeWdev)
	}{
		{name: "OldestLsid", cmd: CmdGetOldestLsid, want: uint64(1000),
			call: func(d *Device) (any, error) { return d.OldestLsid(ctx) }},
		{name: "WrittenLsid", cmd: CmdGetWrittenLsid, want: uint64(1400),
			call: func(d *Device) (any, error) { return d.WrittenLsid(ctx) }},
		{name: "PermanentLsid", cmd: CmdGetPermanentLsid, want: uint64(1480),
			call: func(d *Device) (any, error) { return d.PermanentLsid(ctx) }},
		{name: "CompletedLsid", cmd: CmdGetCompletedLsid, want: uint64(1500),
			call: func(d *Device) (any, error) { return d.CompletedLsid(ctx) }},
		{name: "LogUsage", cmd: CmdGetLogUsage, want: uint64(500),
			call: func(d *Device) (any, error) { return d.LogUsage(ctx) }},
		{name: "LogCapacity", cmd: CmdGetLogCapacity, want: uint64(1 << 20),
			call: func(d *Device) (any, error) { return d.LogCapacity(ctx) }},
		{name: "IsFlushCapable", cmd: CmdIsFlushCapable, want: true,
			call: func(d *Device) (any, error) { return d.IsFlushCapable(ctx) }},
		{name: "IsFlushCapable/no", cmd: CmdIsFlushCapable, want: false,
			setup: func(w *fakeWdev) { w.flushCapable = false },
			call:  func(d *Device) (any, error) { return d.IsFlushCapable(ctx) }},
		{name: "IsLogOverflow", cmd: CmdIsLogOverflow, want: true,
			setup: func(w *fakeWdev) { w.overflow = true },
			call:  func(d *Device) (any, error) { return d.IsLogOverflow(ctx) }},
		{name: "IsFrozen", cmd: CmdIsFrozen, want: true,
			setup: func(w *fakeWdev) { w.frozen = true },
			call:  func(d *Device) (any, error) { return d.IsFrozen(ctx) }},
		{name: "CheckpointInterval", cmd: CmdGetCheckpointInterval, want: uint32(10000),
			call: func(d *Device) (any, error) { return d.CheckpointInterval(ctx) }},
		{name: "SetCheckpointInterval", cmd: CmdSetCheckpointInterval, valU32: 86400000, want: nil,
			call:  func(d *Device) (any, error) { return nil, d.SetCheckpointInterval(ctx, 86400000) },
			check: func(t *testing.T, w *fakeWdev) { require.Equal(t, uint32(86400000), w.ckptMs) }},
		{name: "TakeCheckpoint", cmd: CmdTakeCheckpoint,
			call: func(d *Device) (any, error) { return nil, d.TakeCheckpoint(ctx) },
			check: func(t *testing.T, w *fakeWdev) {
				require.Equal(t, 1, w.ckpts)
				require.Equal(t, uint64(1400), w.lsids.PrevWritten)
			}},
		{name: "SetOldestLsid/prev_written", cmd: CmdSetOldestLsid, valU64: 1200,
			call:  func(d *Device) (any, error) { return nil, d.SetOldestLsid(ctx, 1200) },
			check: func(t *testing.T, w *fakeWdev) { require.Equal(t, uint64(1200), w.lsids.Oldest) }},
		{name: "SetOldestLsid/header", cmd: CmdSetOldestLsid, valU64: 1100,
			setup: func(w *fakeWdev) { w.validHeader[1100] = true },
			call:  func(d *Device) (any, error) { return nil, d.SetOldestLsid(ctx, 1100) },
			check: func(t *testing.T, w *fakeWdev) { require.Equal(t, uint64(1100), w.lsids.Oldest) }},
		{name: "Resize", cmd: CmdResize, valU64: 3 << 20,
			call:  func(d *Device) (any, error) { return nil, d.Resize(ctx, 3<<20) },
			check: func(t *testing.T, w *fakeWdev) { require.Equal(t, uint64(3<<20), w.sizeLb) }},
		{name: "Resize/auto", cmd: CmdResize, valU64: 0,
			call:  func(d *Device) (any, error) { return nil, d.Resize(ctx, 0) },
			check: func(t *testing.T, w *fakeWdev) { require.Equal(t, w.ddevSizeLb, w.sizeLb) }},
		{name: "ClearLog", cmd: CmdClearLog,
			setup: func(w *fakeWdev) { w.overflow = true },
			call:  func(d *Device) (any, error) { return nil, d.ClearLog(ctx) },
			check: func(t *testing.T, w *fakeWdev) {
				require.Equal(t, LsidSet{}, w.lsids)
				require.False(t, w.overflow)
				require.Equal(t, 1, w.resets)
			}},
		{name: "Freeze", cmd: CmdFreeze, valU32: 30,
			call: func(d *Device) (any, error) { return nil, d.Freeze(ctx, 30) },
			check: func(t *testing.T, w *fakeWdev) {
				require.True(t, w.frozen)
				require.Equal(t, uint32(30), w.freezeSec)
			}},
		{name: "Freeze/clipped by driver", cmd: CmdFreeze, valU32: 100000,
			call:  func(d *Device) (any, error) { return nil, d.Freeze(ctx, 100000) },
			check: func(t *testing.T, w *fakeWdev) { require.Equal(t, uint32(MaxFreezeTimeoutSec), w.freezeSec) }},
		{name: "Melt", cmd: CmdMelt,
			setup: func(w *fakeWdev) { w.frozen = true },
			call:  func(d *Device) (any, error) { return nil, d.Melt(ctx) },
			check: func(t *testing.T, w *fakeWdev) { require.False(t, w.frozen) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			k := newFakeDriver(t)
			w := k.addDev("vol", 0)
			if tc.setup != nil {
				tc.setup(w)
			}
			got, err := tc.call(k.device("vol"))
			require.NoError(t, err)
			if tc.want != nil {
				require.Equal(t, tc.want, got)
			}
			require.Equal(t, 1, k.nCalls())
			call := k.lastCall()
			require.Equal(t, ReqWdev, call.req)
			require.Equal(t, "vol", call.node)
			want := (&Ctl{Command: tc.cmd, ValInt: tc.valInt, ValU64: tc.valU64, ValU32: tc.valU32}).Marshal()
			require.Equal(t, want, call.raw, "request bytes")
			if tc.check != nil {
				tc.check(t, w)
			}
		})
	}
}

func TestDeviceFailures(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name  string
		setup func(w *fakeWdev)
		call  func(d *Device) error
	}{
		{"SetOldestLsid below oldest", nil, func(d *Device) error { return d.SetOldestLsid(ctx, 999) }},
		{"SetOldestLsid above prev_written", nil, func(d *Device) error { return d.SetOldestLsid(ctx, 1201) }},
		{"SetOldestLsid without header", nil, func(d *Device) error { return d.SetOldestLsid(ctx, 1100) }},
		{"Resize shrink", nil, func(d *Device) error { return d.Resize(ctx, 1) }},
		{"Resize beyond ddev", nil, func(d *Device) error { return d.Resize(ctx, 1<<23) }},
		{"ClearLog frozen", func(w *fakeWdev) { w.frozen = true }, func(d *Device) error { return d.ClearLog(ctx) }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			k := newFakeDriver(t)
			w := k.addDev("vol", 0)
			if tc.setup != nil {
				tc.setup(w)
			}
			before := *w
			err := tc.call(k.device("vol"))
			require.ErrorIs(t, err, ErrFailed)
			require.ErrorIs(t, err, syscall.EFAULT)
			var ie *IoctlError
			require.True(t, errors.As(err, &ie))
			require.Equal(t, ReqWdev, ie.Request)
			require.Zero(t, ie.Code)
			require.Equal(t, before.lsids, w.lsids)
			require.Equal(t, before.sizeLb, w.sizeLb)
		})
	}
}

func TestDeviceArgumentChecks(t *testing.T) {
	k := newFakeDriver(t)
	k.addDev("vol", 0)
	d := k.device("vol")
	err := d.SetCheckpointInterval(context.Background(), MaxCheckpointIntervalMs+1)
	require.ErrorIs(t, err, ErrInvalidArgument)
	require.Zero(t, k.nCalls())
}

// walb-tools' getLsid refuses INVALID_LSID; so do the lsid getters.
func TestDeviceInvalidLsid(t *testing.T) {
	k := newFakeDriver(t)
	w := k.addDev("vol", 0)
	w.lsids.Permanent = InvalidLsid
	_, err := k.device("vol").PermanentLsid(context.Background())
	require.ErrorIs(t, err, ErrInvalidLsid)
}

// A walb device answers commands it does not know (and the obsolete ones)
// with EFAULT, unlike the control node.
func TestDeviceUnknownCommand(t *testing.T) {
	k := newFakeDriver(t)
	k.addDev("vol", 0)
	d := k.device("vol")
	for _, cmd := range []Command{CmdStatus, CmdCreateSnapshot, CmdListSnapshotFrom, 31, CmdStartDev} {
		_, err := d.wdev(context.Background(), Ctl{Command: cmd})
		require.ErrorIs(t, err, ErrFailed, "%s", cmd)
	}
}

func TestDeviceVersion(t *testing.T) {
	k := newFakeDriver(t)
	k.addDev("vol", 0)
	v, err := k.device("vol").Version(context.Background())
	require.NoError(t, err)
	require.Equal(t, MakeVersion(1, 5, 1), v)
}

// A stopped device's node no longer answers; the error names the node.
func TestDeviceGone(t *testing.T) {
	k := newFakeDriver(t)
	k.addDev("vol", 0)
	d := k.device("vol")
	require.NoError(t, k.controller().StopDevNum(context.Background(), DevNum{252, 0}, false))
	_, err := d.OldestLsid(context.Background())
	require.ErrorIs(t, err, syscall.ENXIO)
	require.ErrorContains(t, err, d.Path)
}

func TestDeviceDefaults(t *testing.T) {
	d := NewDevice("vol0")
	require.Equal(t, "/dev/walb/vol0", d.node().path)
	require.Equal(t, os.O_RDWR, d.node().flag)
	require.Equal(t, "/sys/block/walb!vol0/walb/lsids", d.LsidsPath())
	c := NewController()
	require.Equal(t, ControlPath, c.node(os.O_RDWR).path)
	require.Equal(t, "/dev/walb/control", ControlPath)
}

func TestDeviceLsids(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "walb"), 0o755))
	text := "latest       1500\nflush        1500\ncompleted    1500\npermanent    1480\n" +
		"written      1400\nprev_written 1200\noldest       1000\n"
	require.NoError(t, os.WriteFile(filepath.Join(dir, "walb", "lsids"), []byte(text), 0o644))
	d := &Device{Name: "vol", SysfsDir: dir}
	s, err := d.Lsids(context.Background())
	require.NoError(t, err)
	require.Equal(t, LsidSet{Latest: 1500, Flush: 1500, Completed: 1500, Permanent: 1480,
		Written: 1400, PrevWritten: 1200, Oldest: 1000}, s)
	require.NoError(t, s.Check())

	require.NoError(t, os.WriteFile(filepath.Join(dir, "walb", "lsids"), []byte("latest 1\n"), 0o644))
	_, err = d.Lsids(context.Background())
	require.ErrorIs(t, err, ErrLsidsMissing)
	require.ErrorContains(t, err, filepath.Join(dir, "walb", "lsids"))

	_, err = (&Device{Name: "vol", SysfsDir: filepath.Join(dir, "nope")}).Lsids(context.Background())
	require.ErrorIs(t, err, os.ErrNotExist)
}
