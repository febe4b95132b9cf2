package kernel

import "fmt"

// Linux encodes an ioctl request as dir<<30 | size<<16 | type<<8 | nr
// (include/uapi/asm-generic/ioctl.h). x86_64 and arm64 use this generic
// layout; the request codes below are only meaningful there.
const (
	iocNRBits   = 8
	iocTypeBits = 8
	iocSizeBits = 14

	iocNRShift   = 0
	iocTypeShift = iocNRShift + iocNRBits
	iocSizeShift = iocTypeShift + iocTypeBits
	iocDirShift  = iocSizeShift + iocSizeBits

	iocWrite = 1 // userland writes, the kernel reads (_IOW)
	iocRead  = 2 // the kernel writes, userland reads (_IOR)
)

// ioc builds a request code like the kernel's _IOC macro. It panics when a
// field does not fit, because request codes are compile-time facts and a bad
// one is a programming error.
func ioc(dir, typ, nr, size uint32) uint32 {
	if dir > 3 || typ > 0xff || nr > 0xff || size >= 1<<iocSizeBits {
		panic(fmt.Sprintf("kernel: ioctl code out of range: dir=%d type=%#x nr=%d size=%d", dir, typ, nr, size))
	}
	return dir<<iocDirShift | size<<iocSizeShift | typ<<iocTypeShift | nr<<iocNRShift
}

// ior mirrors _IOR: the kernel copies size bytes out to userland.
func ior(typ, nr, size uint32) uint32 { return ioc(iocRead, typ, nr, size) }

// iowr mirrors _IOWR: the kernel reads and writes size bytes.
func iowr(typ, nr, size uint32) uint32 { return ioc(iocRead|iocWrite, typ, nr, size) }

// IoctlMagic is the ioctl type byte of every WalB request (WALB_IOCTL_ID).
const IoctlMagic = 0xfe

// Request codes of the WalB driver. They are written as constant
// expressions so they can be switch cases; ioc_test.go checks them against
// ioc() and the values walb-tools builds with.
const (
	// ReqVersion (WALB_IOCTL_VERSION = _IOR(0xFE, 0, u32) = 0x8004FE00) asks
	// the control node or a walb device for the driver version as a u32.
	ReqVersion uint32 = iocRead<<iocDirShift | 4<<iocSizeShift | IoctlMagic<<iocTypeShift | 0<<iocNRShift
	// ReqControl (WALB_IOCTL_CONTROL = _IOWR(0xFE, 1, struct walb_ctl) =
	// 0xC078FE01) carries a Ctl to /dev/walb/control.
	ReqControl uint32 = (iocRead|iocWrite)<<iocDirShift | CtlSize<<iocSizeShift | IoctlMagic<<iocTypeShift | 1<<iocNRShift
	// ReqWdev (WALB_IOCTL_WDEV = _IOWR(0xFE, 2, struct walb_ctl) = 0xC078FE02)
	// carries a Ctl to a walb device node.
	ReqWdev uint32 = (iocRead|iocWrite)<<iocDirShift | CtlSize<<iocSizeShift | IoctlMagic<<iocTypeShift | 2<<iocNRShift
)

// Command is the walb_ctl.command field: what a ReqControl or ReqWdev ioctl
// asks the driver to do.
type Command int32

// Commands in the driver's numbering (enum in linux/walb/ioctl.h). 1..5 go to
// the control node, the rest to a walb device.
const (
	CmdDummy Command = 0

	CmdStartDev Command = 1 // control: create a walb device (create-wdev)
	CmdStopDev  Command = 2 // control: delete a walb device (delete-wdev)
	CmdGetMajor Command = 3 // control: major number of walb devices
	CmdListDev  Command = 4 // control: list walb devices in a minor range
	CmdNumOfDev Command = 5 // control: number of walb devices

	CmdGetOldestLsid Command = 6 // wdev: oldest_lsid -> val_u64
	CmdSetOldestLsid Command = 7 // wdev: val_u64 -> oldest_lsid
	CmdStatus        Command = 8 // wdev: never implemented, always EFAULT

	// 9..15 are the snapshot commands of WalB 0.x. Current drivers answer
	// them with EFAULT; they are listed only so that numbers print by name.
	CmdCreateSnapshot        Command = 9
	CmdDeleteSnapshot        Command = 10
	CmdDeleteSnapshotRange   Command = 11
	CmdGetSnapshot           Command = 12
	CmdNumOfSnapshotRange    Command = 13
	CmdListSnapshotRange     Command = 14
	CmdListSnapshotFrom      Command = 15
	CmdGetCheckpointInterval Command = 16 // wdev: val_u32 [ms]
	CmdTakeCheckpoint        Command = 17 // wdev: sync the super block now
	CmdSetCheckpointInterval Command = 18 // wdev: val_u32 [ms]
	CmdGetWrittenLsid        Command = 19 // wdev: val_u64
	CmdGetPermanentLsid      Command = 20 // wdev: val_u64
	CmdGetCompletedLsid      Command = 21 // wdev: val_u64
	CmdGetLogUsage           Command = 22 // wdev: val_u64 [physical blocks]
	CmdGetLogCapacity        Command = 23 // wdev: val_u64 [physical blocks]
	CmdIsFlushCapable        Command = 24 // wdev: val_int
	CmdResize                Command = 25 // wdev: val_u64 new size [logical blocks]
	CmdClearLog              Command = 26 // wdev: reset-wal
	CmdIsLogOverflow         Command = 27 // wdev: val_int
	CmdFreeze                Command = 28 // wdev: val_u32 timeout [s]
	CmdMelt                  Command = 29 // wdev
	CmdIsFrozen              Command = 30 // wdev: val_int
)

var commandNames = [...]string{
	CmdDummy:                 "DUMMY",
	CmdStartDev:              "START_DEV",
	CmdStopDev:               "STOP_DEV",
	CmdGetMajor:              "GET_MAJOR",
	CmdListDev:               "LIST_DEV",
	CmdNumOfDev:              "NUM_OF_DEV",
	CmdGetOldestLsid:         "GET_OLDEST_LSID",
	CmdSetOldestLsid:         "SET_OLDEST_LSID",
	CmdStatus:                "STATUS",
	CmdCreateSnapshot:        "CREATE_SNAPSHOT",
	CmdDeleteSnapshot:        "DELETE_SNAPSHOT",
	CmdDeleteSnapshotRange:   "DELETE_SNAPSHOT_RANGE",
	CmdGetSnapshot:           "GET_SNAPSHOT",
	CmdNumOfSnapshotRange:    "NUM_OF_SNAPSHOT_RANGE",
	CmdListSnapshotRange:     "LIST_SNAPSHOT_RANGE",
	CmdListSnapshotFrom:      "LIST_SNAPSHOT_FROM",
	CmdGetCheckpointInterval: "GET_CHECKPOINT_INTERVAL",
	CmdTakeCheckpoint:        "TAKE_CHECKPOINT",
	CmdSetCheckpointInterval: "SET_CHECKPOINT_INTERVAL",
	CmdGetWrittenLsid:        "GET_WRITTEN_LSID",
	CmdGetPermanentLsid:      "GET_PERMANENT_LSID",
	CmdGetCompletedLsid:      "GET_COMPLETED_LSID",
	CmdGetLogUsage:           "GET_LOG_USAGE",
	CmdGetLogCapacity:        "GET_LOG_CAPACITY",
	CmdIsFlushCapable:        "IS_FLUSH_CAPABLE",
	CmdResize:                "RESIZE",
	CmdClearLog:              "CLEAR_LOG",
	CmdIsLogOverflow:         "IS_LOG_OVERFLOW",
	CmdFreeze:                "FREEZE",
	CmdMelt:                  "MELT",
	CmdIsFrozen:              "IS_FROZEN",
}

// String returns the driver's name for the command without the
// WALB_IOCTL_ prefix, or "COMMAND(n)" for numbers the driver does not define.
func (c Command) String() string {
	if c >= 0 && int(c) < len(commandNames) {
		return commandNames[c]
	}
	return fmt.Sprintf("COMMAND(%d)", int32(c))
}

// IsControl reports whether the command belongs to the control node
// (ReqControl) rather than to a walb device (ReqWdev).
func (c Command) IsControl() bool { return c >= CmdStartDev && c <= CmdNumOfDev }

// Version is the driver version as WALB_IOCTL_VERSION returns it:
// (major<<16) | (minor<<8) | patch.
type Version uint32

// Major is bits 16..23 of the version.
func (v Version) Major() uint8 { return uint8(v >> 16) }

// Minor is bits 8..15 of the version.
func (v Version) Minor() uint8 { return uint8(v >> 8) }

// Patch is bits 0..7 of the version.
func (v Version) Patch() uint8 { return uint8(v) }

// String formats the version as walb-tools' get-version does: "1.5.1".
func (v Version) String() string {
	return fmt.Sprintf("%d.%d.%d", v.Major(), v.Minor(), v.Patch())
}

// MakeVersion packs a version the way the driver's build does.
func MakeVersion(major, minor, patch uint8) Version {
	return Version(uint32(major)<<16 | uint32(minor)<<8 | uint32(patch))
}
