// Package walb is the root of a Go SDK for block-level continuous backup and
// replication, compatible with WalB and walb-tools.
//
// WalB is a block device with a write-ahead log: every write lands in a log
// ring first, so the changes can be streamed off the host continuously
// without scanning the disk. This module reads and writes WalB's formats byte
// for byte (log devices, wlog files, wdiff files with every codec), provides
// a userspace WalB device that needs no kernel module and is served over NBD,
// and (in progress) the storage, proxy and archive servers that move the logs
// into point-in-time restorable archives.
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
//	internal/cli the walb-tools compatible command-line tools in cmd/
//
// # Tools
//
// cmd/ holds thin binaries with walb-tools' names and flags: wlog-show,
// wlog-redo, wlog-to-wdiff, wdiff-show, wdiff-merge, wdiff-redo.
//
// See README.md for the two commands a newcomer runs and ARCHITECTURE.md for
// the layers, the data flow and where each piece of state lives.
package walb
