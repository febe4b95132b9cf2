// Package wlog reads and writes WalB logpacks and wlog files, byte-compatible
// with the WalB kernel driver (log format version 2) and walb-tools.
//
// A WalB device logs every write into a ring buffer before it reaches the data
// device. The unit of the log is the logpack: one header block followed by the
// data blocks of its records. A wlog file is a run of logpacks copied off the
// ring, behind a file header, so it can be shipped and replayed elsewhere.
//
// Integers are little-endian. LB is a 512-byte logical block; PB is a physical
// block of pbs bytes (a multiple of 512, from 512 to 65536). An lsid (log
// sequence id) counts PBs of an infinite virtual log.
//
// # Logpack header (one PB, checksummed with the device's log salt)
//
//	off size field          meaning
//	  0   4  checksum       csum(whole PB, salt) computed with this field zeroed
//	  4   2  sector_type    0x0003
//	  6   2  total_io_size  PBs of data following the header (discards excluded)
//	  8   8  logpack_lsid   lsid of this header
//	 16   2  n_records      records used, padding included
//	 18   2  n_padding      0 or 1
//	 20   4  reserved       0
//	 24  32n records        see below; the rest of the PB is zero
//
// A header holds at most (pbs-24)/32 records: 15 at pbs 512, 127 at 4096.
//
// # Log record (32 bytes)
//
//	off size field      meaning
//	  0   4  checksum   csum(io_size*512 data bytes, salt); 0 for padding/discard
//	  4   4  flags      0x1 EXIST, 0x2 PADDING, 0x4 DISCARD
//	  8   8  offset     data-device address in LB
//	 16   4  io_size    LB (normal 1..65535, discard up to 2^32-1)
//	 20   2  lsid_local lsid - logpack_lsid (>= 1)
//	 22   2  reserved
//	 24   8  lsid       lsid of the record's first data PB
//
// Records with data (normal and padding) own ceil(io_size*512/pbs) PBs each,
// contiguous from lsid_local 1. Discards own none. The next logpack starts at
// logpack_lsid + 1 + total_io_size.
//
// # wlog file
//
//	[file header, 4096 bytes] [logpack]* [end block, one PB, optional]
//
// File header (the rest of the 4096 bytes is zero; checksum salt 0):
//
//	off size field             meaning
//	  0   2  sector_type       0x0004
//	  2   2  version           2
//	  4   2  header_size       4096
//	  6   2  reserved
//	  8   4  checksum          csum(4096 bytes, 0) with this field zeroed
//	 12   4  log_checksum_salt salt of the packs
//	 16   4  logical_bs        512
//	 20   4  physical_bs       pbs of the packs
//	 24  16  uuid              log device uuid
//	 40   8  begin_lsid        lsid of the first pack
//	 48   8  end_lsid          requested end (often 2^64-1)
//
// Each logpack is a byte copy of the ring: header PB, then the data PBs of its
// normal and padding records. The end block is a logpack header with
// n_records 0 and logpack_lsid 2^64-1.
//
// # Validation
//
// [Reader] checks every header checksum, record layout and IO checksum and
// fails with an error naming the lsid and the file offset of the damage.
// Unlike walb-tools, which treats a damaged header as the end of the log, a
// damaged header or a file that ends inside a pack is an error here
// ([ErrChecksum], [ErrCorrupt], [ErrTruncated]); only an end block or EOF at a
// pack boundary ends a file cleanly. Errors are sticky.
package wlog
