// Package nbd serves block devices over the Network Block Device protocol,
// so that real Linux and qemu clients (qemu-img, qemu-io, nbdinfo, nbdcopy,
// nbdfuse, the kernel's nbd driver) can read and write the userspace
// devices of this SDK: WalB volumes, restored snapshots, copy-on-write views
// of archives. It also has a concurrent client (Client), used by the tests
// and by Go code that needs to read or write an export of any NBD server.
//
// # Embedding
//
// A Server holds named exports; each is a Backend, a small io.ReaderAt /
// io.WriterAt style interface with optional extensions the server detects by
// type assertion (Flusher, FUAWriter, Trimmer, ZeroWriter, MultiConner):
//
//	srv := nbd.NewServer(nbd.Options{Logger: logger, DefaultExport: "snap"})
//	base, err := nbd.OpenFileBackend("/dev/walb/vol0", true)
//	cow, err := nbd.NewCopyOnWrite(nbd.ReadOnly(base), "", 0)
//	err = srv.AddExport("snap", cow, false, "vol0 at gid 42, writable copy")
//	l, err := net.Listen("tcp", "127.0.0.1:10809")
//	go srv.Serve(ctx, l)
//	...
//	err = srv.Shutdown(ctx) // stop accepting, finish in-flight requests, close
//
// Ready-made backends: FileBackend (a regular file or block device: pread,
// pwrite, fdatasync, pwritev2(RWF_DSYNC) for FUA, fallocate for trim and
// zeroing), ReadOnly (refuses writes), CopyOnWrite (reads fall through to an
// immutable base, writes go to a sparse, unlinked temporary overlay tracked
// by a block bitmap) and MemoryBackend (tests and scratch space).
//
// Serve works on any net.Listener (TCP or unix socket); ServeConn serves a
// single already-accepted connection. RemoveExport withdraws an export and
// waits until no connection uses its backend any more, so the caller may
// then close it. Logs go to Options.Logger with the key "peer" (client
// address) and "export".
//
// The package uses Linux system calls (fallocate, pwritev2, fdatasync) in
// FileBackend and CopyOnWrite.
//
// # Protocol subset
//
// Handshake: fixed newstyle only (the server sets NBD_FLAG_FIXED_NEWSTYLE
// and NBD_FLAG_NO_ZEROES and honours NBD_FLAG_C_NO_ZEROES; unknown client
// flags close the connection). Options:
//
//	option               answer
//	-------------------  ---------------------------------------------------------
//	NBD_OPT_EXPORT_NAME  size, flags [, 124 zeros]; unknown export closes (no way to error)
//	NBD_OPT_GO / INFO    NBD_INFO_EXPORT always; NBD_INFO_NAME, _DESCRIPTION and
//	                     _BLOCK_SIZE (min 1, preferred 4096, max MaxRequestSize)
//	                     when asked; NBD_REP_ERR_UNKNOWN for unknown exports
//	NBD_OPT_LIST         one NBD_REP_SERVER (name, description) per export
//	NBD_OPT_STARTTLS     with Options.TLS; Options.RequireTLS is FORCEDTLS mode
//	NBD_OPT_ABORT        NBD_REP_ACK, then close
//	anything else        NBD_REP_ERR_UNSUP (structured replies, metadata contexts
//	                     and extended headers are not implemented)
//
// Option data longer than 64 KiB is skipped and answered with
// NBD_REP_ERR_TOO_BIG; negotiation is bounded by Options.HandshakeTimeout.
//
// Transmission: simple replies only. Commands READ, WRITE, FLUSH, TRIM,
// WRITE_ZEROES (NBD_CMD_FLAG_NO_HOLE writes or allocates zeros instead of
// punching holes) and DISC; NBD_CMD_FLAG_FUA calls the backend's durable
// path (WriteAtFUA, else WriteAt then Flush). Advertised transmission flags
// follow the backend: HAS_FLAGS always, SEND_FLUSH for a Flusher, SEND_FUA
// for a Flusher or FUAWriter, SEND_TRIM for a Trimmer, SEND_WRITE_ZEROES for
// writable exports, CAN_MULTI_CONN when the backend's MultiConner says so,
// READ_ONLY for read-only exports. Errors follow the protocol: EPERM for
// writes to a read-only export, EINVAL for reads or trims past the end,
// unknown commands and flags, and READ/WRITE longer than MaxRequestSize;
// ENOSPC for writes past the end; backend errors map to EIO, ENOSPC (ENOSPC,
// EDQUOT, EFBIG) or EPERM (EROFS, EACCES). A WRITE payload of 32 MiB or more
// beyond the limit closes the connection, as the protocol permits.
//
// Each connection runs up to Options.MaxInFlight requests concurrently
// (default 16, with payload bytes bounded to twice MaxRequestSize); replies
// go out whole, in completion order. Shutdown and RemoveExport stop reading
// new requests, let those in flight finish, then close.
//
// # Connecting real clients
//
// With a server listening on 127.0.0.1:PORT and an export NAME:
//
//	qemu-img info nbd://127.0.0.1:PORT/NAME
//	qemu-io -f raw nbd://127.0.0.1:PORT/NAME -c 'read -P 0 0 1M'
//	qemu-img convert -O qcow2 nbd://127.0.0.1:PORT/NAME copy.qcow2
//	nbdinfo --json nbd://127.0.0.1:PORT/NAME
//	nbdinfo --list nbd://127.0.0.1:PORT
//	nbdcopy nbd://127.0.0.1:PORT/NAME image.raw
//	nbdfuse /mnt/dir/image nbd://127.0.0.1:PORT/NAME   (then use /mnt/dir/image)
//	nbd-client 127.0.0.1 PORT /dev/nbd0 -N NAME        (kernel block device)
//
// Over a unix socket the URI is nbd+unix:///NAME?socket=/path/to.sock; with
// TLS, nbds://... (qemu needs a tls-creds-x509 object, nbdinfo
// tls-certificates=DIR in the URI).
package nbd
