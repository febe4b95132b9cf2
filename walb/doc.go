// Package walb implements a WalB device in userspace: a block device whose
// every write is first logged on a log device, in the on-disk format of the
// WalB kernel driver (log format version 2), and then written to a data
// device. A log device written by the driver can be opened here and vice
// versa, and the log can be extracted as wlog files (package wlog) for
// backup and replication, exactly as walb-tools extracts it.
//
// A Device serves IO through ReadAt, WriteAt, WriteAtFUA, Flush, Trim,
// WriteZeroes and Size, so it can back an NBD export directly. LogDevice
// reads a log device image that is not running (like wldev-show and
// wlog-cat). FormatLogDevice formats a log device (like wdevc format-ldev).
// The storage under both devices is pluggable (Storage); FileStorage works
// on regular files and block devices.
//
// # Log device layout
//
// Offsets are in physical blocks (PB) of pbs bytes; pbs is 512, 1024, 2048
// or 4096 (it must divide the 4096-byte page), and the same for both
// devices. Integers are little-endian.
//
//	region                       first PB                     pbs=512  pbs=4096
//	reserved                     0                            0-7      0
//	super sector 0               S0 = 4096/pbs                8        1
//	metadata (obsolete)          S0+1, metadata_size PBs      -        -
//	super sector 1 (reserved)    S1 = S0+1+metadata_size      9        2
//	ring buffer                  R = S1+1, to the device end  10       3
//
// The lsid L (log sequence id, counted in PBs of an endless virtual log)
// lives at PB R + L mod ring_buffer_size.
//
// # Super sector (one PB at S0; checksum salt 0)
//
//	off size field              meaning
//	  0   2  sector_type        0x0001
//	  2   2  version            2
//	  4   4  checksum           csum(whole PB, 0) computed with this field zeroed
//	  8   4  logical_bs         512
//	 12   4  physical_bs        pbs
//	 16   4  metadata_size      PBs of the obsolete metadata area (0)
//	 20   4  log_checksum_salt  salt of logpack headers and IO data
//	 24  16  uuid               log identity (random)
//	 40  32  name               NUL-terminated
//	 72   8  ring_buffer_size   PBs
//	 80   8  oldest_lsid        log below it may be overwritten
//	 88   8  written_lsid       log below it is on the data device; redo starts here
//	 96   8  device_size        walb device size in LB
//	104      zero               to the end of the PB
//
// # Ring buffer
//
// The ring holds logpacks back to back (see package wlog for the header and
// record layout): a header PB at lsid L, then the data PBs of its normal
// records, and the next pack at L + 1 + total_io_size. A record whose data
// would cross the ring end is preceded by a padding record covering the PBs
// left before the end, so that no record's data wraps; padding blocks are
// never written. Discard records carry no data.
//
// # Write path
//
// A write is split into records of at most Options.MaxIOSize, copied into a
// buffer and checksummed by the calling goroutine, and queued. One log
// writer goroutine takes everything queued, packs it into logpacks (group
// commit, each pack at most Options.MaxLogpackKB), writes headers and data
// to the ring with one vectored write per contiguous run, and acknowledges
// the writes. An acknowledged write is in the log device's OS cache and in
// an in-memory overlay that reads consult, so reads see every acknowledged
// write. A flusher goroutine then makes the log durable (fdatasync), at once
// when asked (Flush, FUA, a full pending buffer, LogFlushIntervalMB of
// unflushed log) and otherwise LogFlushInterval after the log was left
// unflushed. Only then does the applier goroutine write the data to the
// data device, in log order, and drop it from the overlay. The memory held
// by logged but unapplied writes is bounded by MaxPendingMB; writers wait
// above it.
//
// This is the driver's fast algorithm, and the reason for it is the
// durability rule of write-ahead logging: data must never reach the data
// device's durable state before its log. The kernel may write back the OS
// cache of a file at any time, so data may be written to the data device
// only after its log is durable.
//
// Discards (Trim, and WriteZeroes with mayTrim) are logged as discard
// records and applied by zeroing the range on the data device (a punched
// hole in a file, BLKZEROOUT on a block device, zero writes otherwise). A
// discarded range therefore reads as zeros, on this device and after
// recovery; consumers of the log must apply discards as zero-fill
// (wlog.RedoOptions.ZeroDiscard) to stay identical. WriteZeroes without
// mayTrim is logged as normal writes of zeros.
//
// # Durability and recovery
//
//   - Flush makes every write acknowledged before it durable: it syncs the
//     log device up to the completed lsid. FUA writes return after that sync.
//   - A checkpoint (every CheckpointInterval, default 10 s, skipped when the
//     written lsid has not moved; also on SetOldestLsid, Resize, ResetWAL and
//     Close) syncs the data device, then writes the super sector with the new
//     written lsid and syncs the log device.
//   - The ring never overwrites log at or above the written lsid of the super
//     sector on disk: the log writer takes a checkpoint, or waits for the
//     data device, when it would.
//   - Open redoes the log from the super sector's written lsid to the first
//     invalid logpack (formats.md §5.1): a header must have the right type,
//     checksum and lsid; a pack whose record i has bad data is cut to
//     records [0, i), and its rewritten header is written back. Every pack
//     is re-applied to the data device, the data device is synced, all lsids
//     but oldest are set to the end of the log, and the super sector is
//     synced and read back.
//
// So after a crash, every flushed or FUA write is present, and the data
// device equals its image at any earlier checkpoint plus the redo of the
// log since then, which is what backups rely on.
//
// # Lsids
//
//	oldest <= prev_written <= written <= permanent <= flush <= completed <= latest
//
//	latest        where the next logpack will be created
//	completed     every pack below is written to the log device
//	flush         a log flush in progress covers every pack below
//	permanent     every pack below is durable in the log: extraction stops here
//	written       every pack below is also written to the data device
//	prev_written  the written lsid of the super sector on disk
//	oldest        packs below may be overwritten; SetOldestLsid advances it
//	              after extraction
//
// Log usage is latest - oldest and capacity is the ring size. When a new
// pack makes usage exceed capacity the device is in overflow, as in the
// driver: the log from oldest is being overwritten and can no longer be
// extracted (readers get ErrOverflow), but writes keep reaching the data
// device, and they stay logged for crash recovery. The state survives a
// restart (Open finds latest - oldest > capacity, or no valid pack at
// oldest) and only ResetWAL clears it: new uuid and salt, every lsid 0, the
// ring grown if the log device grew, and the PB at lsid 0 zeroed.
package walb
