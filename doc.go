// Package walb is the root of a Go SDK for block-level continuous backup and
// replication, compatible with WalB and walb-tools.
//
// WalB is a block device with a write-ahead log: every write lands in a log
// ring first, so the changes can be streamed off the host continuously
// without scanning the disk. This module reads and writes WalB's formats byte
// for byte (log devices, wlog files, wdiff files with every codec), provides
// a userspace WalB device that needs no kernel module and is served over NBD,
// and the storage, proxy and archive servers that move the logs into
// point-in-time restorable archives. Package group starts a whole backup
// group inside one Go program; package controller drives servers anywhere.
//
// # Package map
//
// Lower layers never import higher ones.
//
//	checksum     the WalB checksum that protects every on-disk structure
//	wlog         logpacks and wlog files: reader, writer, show, redo
//	wdiff        diff files (sorted and indexed, six codecs), convert, merge, apply
//	meta         snapshots, diffs and archive states; metadata files; storage queue
//	walb         the userspace WalB device and log device format
//	walb/kernel  control of the WalB kernel driver through ioctls
//	nbd          an NBD server that exports devices and images to real clients
//	devhost      the walb-dev device daemon and its control protocol
//	imagestore   archive images with reflink clones (XFS, btrfs) or sparse copies
//	hashsync     seeded chunk-hash comparison of two images; bhash
//	wire         the servers' versioned, framed network protocol
//	server       what the storage, proxy and archive servers share
//	storage      the storage server: wlog extraction, full backup
//	proxy        the proxy server: wlogs to wdiffs, forwarding to archives
//	archive      the archive server: base image, diffs, restore, apply, merge
//	controller   the SDK front door (and walbc)
//	group        a whole backup group in one process
//	internal/cli the walb-tools compatible command-line tools in cmd/
//
// # Tools
//
// cmd/ holds thin binaries with walb-tools' names and flags: wlog-show,
// wlog-redo, wlog-to-wdiff, wdiff-show, wdiff-merge, wdiff-redo, wdevc,
// bhash, walbc, and the daemons walb-dev, walb-storage, walb-proxy and
// walb-archive; walb-demo runs the demonstration.
//
// See README.md for the two commands a newcomer runs and ARCHITECTURE.md for
// the layers, the data flow and where each piece of state lives.
package walb
