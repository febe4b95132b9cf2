package kernel

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// §5.3: the request codes walb-tools builds with _IOR/_IOWR on x86_64.
func TestRequestCodes(t *testing.T) {
	tests := []struct {
		name     string
		ioc      uint32
		constant uint32
		want     uint32
	}{
		{"VERSION", ior(IoctlMagic, 0, 4), ReqVersion, 0x8004FE00},
		{"CONTROL", iowr(IoctlMagic, 1, CtlSize), ReqControl, 0xC078FE01},
		{"WDEV", iowr(IoctlMagic, 2, CtlSize), ReqWdev, 0xC078FE02},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, tc.ioc, "ioc()")
			require.Equal(t, tc.want, tc.constant, "constant")
		})
	}
}

// Known request codes from linux/fs.h and linux/loop.h pin the generic
// encoding itself, independently of WalB.
func TestIocGenericEncoding(t *testing.T) {
	require.Equal(t, uint32(0x80081272), ior(0x12, 114, 8), "BLKGETSIZE64 = _IOR(0x12,114,size_t)")
	require.Equal(t, uint32(0x4C00), ioc(0, 'L', 0, 0), "LOOP_SET_FD = _IO('L', 0)")
	require.Equal(t, uint32(0x40086602), ioc(iocWrite, 'f', 2, 8), "FS_IOC_SETFLAGS = _IOW('f', 2, long)")
	require.Panics(t, func() { ioc(0, 0x100, 0, 0) })
	require.Panics(t, func() { ioc(0, 0, 0, 1<<14) })
	require.Panics(t, func() { ioc(4, 0, 0, 0) })
}

// formats.md §5.3 command table.
func TestCommandNumbers(t *testing.T) {
	tests := []struct {
		cmd     Command
		n       int32
		name    string
		control bool
	}{
		{CmdDummy, 0, "DUMMY", false},
		{CmdStartDev, 1, "START_DEV", true},
		{CmdStopDev, 2, "STOP_DEV", true},
		{CmdGetMajor, 3, "GET_MAJOR", true},
		{CmdListDev, 4, "LIST_DEV", true},
		{CmdNumOfDev, 5, "NUM_OF_DEV", true},
		{CmdGetOldestLsid, 6, "GET_OLDEST_LSID", false},
		{CmdSetOldestLsid, 7, "SET_OLDEST_LSID", false},
		{CmdStatus, 8, "STATUS", false},
		{CmdCreateSnapshot, 9, "CREATE_SNAPSHOT", false},
		{CmdDeleteSnapshot, 10, "DELETE_SNAPSHOT", false},
		{CmdDeleteSnapshotRange, 11, "DELETE_SNAPSHOT_RANGE", false},
		{CmdGetSnapshot, 12, "GET_SNAPSHOT", false},
		{CmdNumOfSnapshotRange, 13, "NUM_OF_SNAPSHOT_RANGE", false},
		{CmdListSnapshotRange, 14, "LIST_SNAPSHOT_RANGE", false},
		{CmdListSnapshotFrom, 15, "LIST_SNAPSHOT_FROM", false},
		{CmdGetCheckpointInterval, 16, "GET_CHECKPOINT_INTERVAL", false},
		{CmdTakeCheckpoint, 17, "TAKE_CHECKPOINT", false},
		{CmdSetCheckpointInterval, 18, "SET_CHECKPOINT_INTERVAL", false},
		{CmdGetWrittenLsid, 19, "GET_WRITTEN_LSID", false},
		{CmdGetPermanentLsid, 20, "GET_PERMANENT_LSID", false},
		{CmdGetCompletedLsid, 21, "GET_COMPLETED_LSID", false},
		{CmdGetLogUsage, 22, "GET_LOG_USAGE", false},
		{CmdGetLogCapacity, 23, "GET_LOG_CAPACITY", false},
		{CmdIsFlushCapable, 24, "IS_FLUSH_CAPABLE", false},
		{CmdResize, 25, "RESIZE", false},
		{CmdClearLog, 26, "CLEAR_LOG", false},
		{CmdIsLogOverflow, 27, "IS_LOG_OVERFLOW", false},
		{CmdFreeze, 28, "FREEZE", false},
		{CmdMelt, 29, "MELT", false},
		{CmdIsFrozen, 30, "IS_FROZEN", false},
	}
	for _, tc := range tests {
		require.Equal(t, tc.n, int32(tc.cmd), tc.name)
		require.Equal(t, tc.name, tc.cmd.String())
		require.Equal(t, tc.control, tc.cmd.IsControl(), tc.name)
	}
	require.Equal(t, "COMMAND(31)", Command(31).String())
	require.Equal(t, "COMMAND(-1)", Command(-1).String())
}

func TestVersion(t *testing.T) {
	tests := []struct {
		v                   Version
		major, minor, patch uint8
		s                   string
	}{
		{0x00010501, 1, 5, 1, "1.5.1"},
		{0x00000001, 0, 0, 1, "0.0.1"},
		{0x00020a0f, 2, 10, 15, "2.10.15"},
		{0xff01ffff, 1, 255, 255, "1.255.255"}, // top byte is ignored, as walb-tools masks it
	}
	for _, tc := range tests {
		require.Equal(t, tc.major, tc.v.Major())
		require.Equal(t, tc.minor, tc.v.Minor())
		require.Equal(t, tc.patch, tc.v.Patch())
		require.Equal(t, tc.s, tc.v.String())
		require.Equal(t, tc.v&0xffffff, MakeVersion(tc.major, tc.minor, tc.patch))
	}
}
