// Package kernel controls devices of the WalB kernel driver through its
// ioctl interface, as walb-tools' wdevc does: Controller talks to the control
// node /dev/walb/control (create, delete and list walb devices) and Device to
// one walb device /dev/walb/NAME (lsids, checkpoints, freeze/melt, resize,
// reset-wal, log usage). It also decodes the sysfs attribute walb/lsids.
//
// # Where it runs
//
// The WalB driver (github.com/walb-linux/walb-driver) builds only for Linux
// kernels up to the 4.x series; this package speaks its ABI for 64-bit
// little-endian processes (x86_64, arm64). Where the module is not loaded there is no /dev/walb/control and every call fails
// (opening the node, or ENOTTY from a node that is not WalB's). This package
// therefore cannot be exercised end to end on such machines, including the
// ones its tests run on: the tests drive Controller and Device against a fake
// driver that decodes the raw 120-byte structs at their documented offsets,
// follows the user pointers, checks every field and answers as the driver's
// control.c and wdev_ioctl.c do. Correctness rests on the layouts below.
//
// Package walb (github.com/walb-go/walb/walb) implements the WalB device in
// userspace: it keeps the same log device format and lsid indicators and
// provides the same operations (oldest/permanent/written lsids, checkpoints,
// freeze and melt, resize, reset-wal, log usage and overflow) without any
// kernel module. Use package walb on current kernels; use this package to
// operate hosts that run the WalB module. The log device is formatted by
// package walb (wdevc format-ldev) in either case; this package only starts
// a device on an already formatted log device.
//
// # Usage
//
//	ctl := kernel.NewController()
//	p := kernel.DefaultStartParam()
//	p.Name = "vol0"
//	dev, err := ctl.StartDev(ctx, "/dev/vg/vol0-log", "/dev/vg/vol0-data", p)
//	...
//	wdev := kernel.NewDevice(dev.Name)
//	permanent, err := wdev.PermanentLsid(ctx)
//	lsids, err := wdev.Lsids(ctx) // latest ... oldest in one snapshot
//	...
//	err = ctl.StopDev(ctx, dev.Path(), false)
//
// Each call opens the node, runs one ioctl and closes it: a walb device
// counts its openers and refuses STOP_DEV while any remain. The context is
// checked before the call; an ioctl in progress cannot be interrupted.
//
// Failed ioctls come back as *IoctlError, which errors.Is matches against the
// errno (syscall.EFAULT, ...), against ErrFailed (EFAULT, the driver's answer
// to every failed command), ErrNotSupported (ENOTTY: unknown request, unknown
// control command, or not a walb node) and ErrBusy (EBUSY), and for START_DEV
// and STOP_DEV against the sentinel of the driver's walb_ctl.error code.
//
// # Request codes
//
// Linux encodes a request as dir<<30 | size<<16 | type<<8 | nr; WalB's type
// byte is 0xFE.
//
//	name                nr  dir         size  code        node
//	WALB_IOCTL_VERSION   0  read (_IOR)    4  0x8004FE00  control and walb devices; kernel writes a u32
//	WALB_IOCTL_CONTROL   1  _IOWR        120  0xC078FE01  /dev/walb/control; struct walb_ctl
//	WALB_IOCTL_WDEV      2  _IOWR        120  0xC078FE02  /dev/walb/NAME; struct walb_ctl
//
// The version is (major<<16)|(minor<<8)|patch, for example 0x00010501 = 1.5.1.
//
// # struct walb_ctl (120 bytes, packed, little-endian)
//
//	off size field     meaning
//	  0   4  command   i32, see the command table
//	  4   4  val_int   i32 in/out value
//	  8   8  val_u64   u64 in/out value
//	 16   4  val_u32   u32 in/out value
//	 20   4  error     i32 failure code (START_DEV, STOP_DEV)
//	 24  48  u2k       walb_ctl_data, userland -> kernel
//	 72  48  k2u       walb_ctl_data, kernel -> userland
//
// # struct walb_ctl_data (48 bytes, packed)
//
//	off size field     meaning
//	  0   4  wmajor    walb device major
//	  4   4  wminor    walb device minor (0xFFFFFFFF: driver picks, START_DEV)
//	  8   4  lmajor    log device major
//	 12   4  lminor    log device minor
//	 16   4  dmajor    data device major
//	 20   4  dminor    data device minor
//	 24   8  buf_size  size_t, bytes at buf
//	 32   8  buf       userland pointer (uintptr-sized), 0 if none
//	 40   8  kbuf      kernel-side copy; the driver overwrites it
//
// The driver copies the struct in, copies buf_size bytes from u2k.buf, runs
// the command, copies buf_size bytes of its answer to k2u.buf and copies the
// struct back (also after most failures, which is how error codes arrive).
// The package pins u2k.buf, k2u.buf and the struct with runtime.Pinner for
// the duration of the call, because the kernel only knows them by address.
//
// # Commands
//
//	 #  command                  node     in                              out / effect
//	 1  START_DEV                control  u2k l/d major:minor, wminor,    k2u.wmajor/wminor; k2u.buf = echo of
//	                                      u2k.buf = start param (64 B)    the param (64 B); error -1..-8
//	 2  STOP_DEV                 control  u2k.wmajor/wminor,              error -1 (EFAULT), -2 (EBUSY)
//	                                      val_int = force
//	 3  GET_MAJOR                control                                  k2u.wmajor
//	 4  LIST_DEV                 control  u2k.buf = u32 minor[2] [b, e)   k2u.buf = walb_disk_data[]; val_int = count
//	 5  NUM_OF_DEV               control                                  val_int
//	 6  GET_OLDEST_LSID          wdev                                     val_u64
//	 7  SET_OLDEST_LSID          wdev     val_u64                         oldest := v; super synced
//	 8  STATUS                   wdev                                     never implemented: EFAULT
//	 9-15 snapshot commands      wdev                                     obsolete (WalB 0.x): EFAULT
//	16  GET_CHECKPOINT_INTERVAL  wdev                                     val_u32 [ms], default 10000
//	17  TAKE_CHECKPOINT          wdev                                     super synced now
//	18  SET_CHECKPOINT_INTERVAL  wdev     val_u32 [ms] <= 86400000
//	19  GET_WRITTEN_LSID         wdev                                     val_u64
//	20  GET_PERMANENT_LSID       wdev                                     val_u64
//	21  GET_COMPLETED_LSID       wdev                                     val_u64
//	22  GET_LOG_USAGE            wdev                                     val_u64 [pb] = latest - oldest
//	23  GET_LOG_CAPACITY         wdev                                     val_u64 [pb] = ring buffer size
//	24  IS_FLUSH_CAPABLE         wdev                                     val_int
//	25  RESIZE                   wdev     val_u64 [lb], 0 = ddev size     grow only; super synced
//	26  CLEAR_LOG (reset-wal)    wdev                                     lsids := 0, new uuid and salt
//	27  IS_LOG_OVERFLOW          wdev                                     val_int
//	28  FREEZE                   wdev     val_u32 timeout [s], 0 = none   clipped to 86400
//	29  MELT                     wdev
//	30  IS_FROZEN                wdev                                     val_int
//
// The control node answers an unknown command with ENOTTY, a walb device
// with EFAULT. START_DEV's error codes: -1 u2k.buf_size is not 64, -2
// k2u.buf_size is not 64, -3 invalid start parameter, -4 log device used by
// another walb device, -5 data device used by another walb device, -6
// preparing the device failed (opening the devices, the super block, a name
// longer than 25 bytes), -7 a device with that name exists, -8 registering
// the disk failed. EFAULT with error 0 means that no minor was free or that
// the struct itself could not be copied.
//
// # struct walb_start_param (64 bytes, packed)
//
//	off size field                  wdevc default  rule
//	  0  32  name                   ""             NUL-terminated, <= 25 bytes used
//	 32   4  max_pending_mb         32             2 <= v <= 16384
//	 36   4  min_pending_mb         16             1 <= v < max_pending_mb
//	 40   4  queue_stop_timeout_ms  100            >= 1
//	 44   4  max_logpack_kb         32
//	 48   4  log_flush_interval_ms  100            0 disables flushing by interval and size
//	 52   4  log_flush_interval_mb  16             2*v <= max_pending_mb
//	 56   4  n_pack_bulk            128            > 0
//	 60   4  n_io_bulk              1024           > 0
//
// # struct walb_disk_data (40 bytes, packed; LIST_DEV records)
//
//	off size field  meaning
//	  0  32  name   disk name "walb/NAME", NUL-terminated
//	 32   4  major
//	 36   4  minor  even; devices are indexed by minor/2
//
// # sysfs walb/lsids
//
// /sys/block/walb!NAME/walb/lsids ('!' is sysfs' spelling of '/') holds one
// "name value" line per indicator, names padded with spaces:
//
//	latest       1500
//	flush        1500
//	completed    1500
//	permanent    1500
//	written      1400
//	prev_written 1200
//	oldest       1000
//
// Older drivers also print a "submitted" line. The attribute is the only source
// of latest and prev_written, and its values form one consistent snapshot.
package kernel
