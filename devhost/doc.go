// Package devhost hosts userspace WalB devices (package walb) as a daemon,
// walb-dev: it keeps a registry of named devices, reopens them at start
// (crash recovery runs inside walb.Open), serves each over NBD under its
// name, and answers control requests (the commands of walb-tools' wdevc) on
// a local unix socket. It also defines Controller, the control interface
// that wdevc drives, with three implementations:
//
//	Host              the devices of this process
//	Client            the devices of a walb-dev daemon, through its socket
//	KernelController  devices of the WalB kernel driver, through ioctls
//	                  (package walb/kernel)
//
// # Running the daemon
//
//	walb-dev -b /var/lib/walb-dev -nbd 127.0.0.1:10809 -ctl /run/walb-dev.sock -l -
//
//	wdevc format-ldev /dev/vg/vol0-log /dev/vg/vol0-data -n vol0
//	wdevc create-wdev /dev/vg/vol0-log /dev/vg/vol0-data -n vol0
//	    name vol0
//	    nbd nbd://127.0.0.1:10809/vol0
//	wdevc get-permanent-lsid vol0
//	wdevc cat-log vol0 -o vol0.wlog        # [oldest, permanent)
//	wdevc set-oldest-lsid vol0 LSID        # after the wlog is safe
//
// The log and data devices may be block devices or regular (sparse) files.
// Any NBD client can then use the device:
//
//	qemu-io -f raw nbd://127.0.0.1:10809/vol0 -c 'write -P 0xab 0 1M'
//	qemu-img convert -O raw nbd://127.0.0.1:10809/vol0 copy.img
//	nbdcopy nbd://127.0.0.1:10809/vol0 copy.img
//	nbdinfo nbd://127.0.0.1:10809/vol0
//	nbdfuse /mnt/vol0/disk nbd://127.0.0.1:10809/vol0   # then losetup, mkfs, mount
//	nbd-client 127.0.0.1 10809 /dev/nbd0 -N vol0       # a kernel block device
//
// With -nbd /path/to/nbd.sock the URI is nbd+unix:///vol0?socket=/path/to/nbd.sock.
// With -tls-cert and -tls-key, TLS is mandatory and clients use nbds:// URIs.
// A flush or FUA write from the client makes its writes durable in the log
// (walb.Device.Flush); everything acknowledged and flushed survives a crash
// of the daemon or the machine.
//
// SIGTERM or SIGINT shuts the daemon down gracefully: the control socket
// closes, the NBD server stops accepting and finishes the requests it has
// read (at most 30 s), and every device is closed with a final checkpoint.
// After SIGKILL or a crash, the next start recovers every device from its
// log.
//
// Each device's files are opened exclusively: O_EXCL for block devices (a
// mounted device is refused) and flock(LOCK_EX) for all, so a second daemon,
// wdevc format-ldev and wdevc cat-log on an image refuse a device in use.
// The base directory is locked the same way (BASE/lock).
//
// # Registry
//
// BASE/devices.json is rewritten whole on every create-wdev and delete-wdev:
// written to a temporary file tmpXXXXXX in BASE, fsynced, renamed over the
// old file, and BASE fsynced, so after a crash it holds the old or the new
// list, never a mix; leftover temporary files are removed at start. Paths
// are absolute. A device that cannot be opened at start stays registered
// with state "failed" and the reason; delete-wdev removes it.
//
//	{
//	  "version": 1,
//	  "devices": [
//	    {
//	      "name": "vol0",
//	      "log_device": "/dev/vg/vol0-log",
//	      "data_device": "/dev/vg/vol0-data",
//	      "options": {"max_logpack_kb": 256, "log_flush_interval_ms": 50}
//	    }
//	  ]
//	}
//
//	field                          meaning
//	version                        1; another version is refused
//	devices[].name                 device and NBD export name (ValidName)
//	devices[].log_device           log device path
//	devices[].data_device          data device path
//	devices[].options              CreateOptions; absent fields take walb.Options' defaults:
//	  max_logpack_kb               -maxl, logpack size cap
//	  max_pending_mb, min_pending_mb   -maxp, -minp
//	  log_flush_interval_ms, _mb   -fp, -fs
//	  queue_stop_timeout_ms, n_pack_bulk, n_io_bulk   kernel-only, kept but unused
//
// # Control protocol (version 1)
//
// The socket (mode 0600; only root and the daemon's user may connect, which
// is also checked with SO_PEERCRED) carries JSON lines: the client sends a
// request object on one line, the daemon answers with a response object on
// one line, and the connection may carry further requests. A request line
// is at most 64 KiB (MaxRequestSize); a longer one is answered with code
// "too-large" and the connection closed. Unknown fields, fields an
// operation does not take and missing required fields are "bad-request";
// a version other than 1 is "version". Every request carries "v":1, every
// response "v":1 and "ok".
//
//	op                       request fields              answer
//	create-wdev              log_device, data_device     device
//	                         [name] [options]
//	delete-wdev              name [force]                -
//	list                     -                           devices
//	get-oldest-lsid          name                        value
//	get-written-lsid         name                        value
//	get-permanent-lsid       name                        value
//	get-completed-lsid       name                        value
//	get-lsids                name                        lsids
//	info                     name                        info
//	set-oldest-lsid          name, lsid                  -
//	freeze                   name [timeout_ms]           -
//	melt                     name                        -
//	is-frozen                name                        bool
//	reset-wal                name                        -
//	resize                   name [size_lb]              -
//	is-log-overflow          name                        bool
//	get-log-usage            name                        value  [PB]
//	get-log-capacity         name                        value  [PB]
//	is-flush-capable         name                        bool
//	force-checkpoint         name                        -
//	get-checkpoint-interval  name                        value  [ms]
//	set-checkpoint-interval  name, interval_ms           -
//	cat-log                  name [begin] [end]          stream, then value (real end lsid)
//
// Examples:
//
//	-> {"v":1,"op":"get-permanent-lsid","name":"vol0"}
//	<- {"v":1,"ok":true,"value":2050}
//	-> {"v":1,"op":"reset-wal","name":"vol0"}
//	<- {"v":1,"ok":false,"code":"state","error":"device vol0 is frozen: melt it before reset-wal: devhost: wrong device state"}
//
// get-lsids answers every indicator at once, under the names of the
// driver's sysfs attribute walb/lsids; info answers the log's identity,
// the geometry and the flags of a running device (DeviceStatus), the uuid
// in hex:
//
//	-> {"v":1,"op":"get-lsids","name":"vol0"}
//	<- {"v":1,"ok":true,"lsids":{"latest":2058,"completed":2058,"flush":2058,"permanent":2058,"written":2050,"prev_written":1024,"oldest":0}}
//	-> {"v":1,"op":"info","name":"vol0"}
//	<- {"v":1,"ok":true,"info":{"name":"vol0","salt":3735928559,"pbs":512,"size_lb":8192,"log_capacity_pb":32758,"overflow":false,"frozen":false,"uuid":"5f0e8b7c2a9d4e31b6c07a1d9e2f3b4c"}}
//
// cat-log answers {"v":1,"ok":true,"stream":true}, then the wlog file in
// frames (a 4-byte big-endian length of 1 to 1 MiB, then that many bytes),
// a frame of length 0, and a trailer response: {"v":1,"ok":true,"value":E}
// with the real end lsid, or an error if the extraction failed midway. An
// extraction that fails before its first byte is answered with a plain
// error instead of the stream. Lsids left out mean [oldest, permanent).
//
// The version changes only when an existing operation changes: its
// fields, its answer or its meaning. Both sides decode strictly (unknown
// keys are errors), so an answer never gains keys within a version; new
// data comes as new operations, which need no new version since a client
// only receives the answers of the operations it knows. A daemon older
// than its client answers a newer operation with "bad-request" (unknown
// operation). get-lsids and info were added to version 1 this way.
//
// Error codes and their sentinels (errors.Is works on both sides of the
// socket):
//
//	code           sentinel          meaning
//	not-found      ErrNotFound       no device with that name
//	exists         ErrExists         the name is taken
//	invalid        ErrInvalid        bad argument (name, lsid, size, options)
//	state          ErrState          frozen, not open, or being deleted
//	busy           ErrBusy           a file is used by another device or process
//	overflow       ErrOverflow       the log to extract was overwritten
//	failed         ErrFailed         I/O error or device failure
//	bad-request    ErrBadRequest     malformed request
//	version        ErrVersion        unsupported protocol version
//	too-large      ErrTooLarge       request line over 64 KiB
//	shutdown       ErrShutdown       the daemon is stopping
//	denied         ErrDenied         the peer is neither root nor the daemon's user
//	protocol       ErrProtocol       (client side) a malformed answer or broken stream
//	canceled       context.Canceled  the request was cancelled
//
// # Semantics shared with the kernel driver
//
// reset-wal is refused while the device is frozen (the driver answers
// EFAULT); delete-wdev refuses a frozen device unless forced (force melts
// it, so that the writes waiting on it finish before the export goes);
// a shutdown melts every device for the same reason; resize only grows, and NBD clients
// see the new size when they reconnect; set-oldest-lsid takes the written
// lsid of the last checkpoint (prev_written in get-lsids), or a logpack lsid
// between the oldest lsid and it (formats.md §5.3). Userspace devices always accept flushes, ignore the kernel-only
// tuning options (-qp, -bp, -bi), and take walb.Options' defaults (not the
// driver's) for options left out.
//
// # Kernel devices
//
// KernelController implements the same interface for devices of the WalB
// kernel driver with the ioctls of package walb/kernel (/dev/walb/control,
// /dev/walb/NAME), and cat-log reads the log node /dev/walb/LNAME, clipped
// to the permanent lsid. get-lsids reads the sysfs attribute
// /sys/block/walb!NAME/walb/lsids, the only source of latest and
// prev_written; info takes the size from /sys/block/walb!NAME/size and
// the uuid, salt and block size from the super sector of /dev/walb/LNAME. The driver only builds for Linux kernels up to the
// 4.x series, so this path is exercised here only against a fake ioctl (the
// walb/kernel IoctlFunc seam) and cannot be run on this machine. wdevc uses
// it with -kernel, or by itself when /dev/walb/control exists and the
// daemon's socket does not.
package devhost
