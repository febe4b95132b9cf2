// Package wdiff reads and writes WalB diff files (wdiffs), byte-compatible
// with walb-tools 1.0.19, and holds their compression codecs.
//
// A wdiff describes how to turn one snapshot of a volume into a later one:
// a list of block ranges (records) in ascending, non-overlapping address
// order, each either normal (carrying data), all-zero, or discarded.
// Addresses and lengths are in 512-byte logical blocks. Two layouts share
// one file header: the sorted layout is a stream of packs that can be read
// and written sequentially (archives store and merge these; wdiff-merge and
// wlog-to-wdiff write them by default), and the indexed layout stores each
// incoming IO once as a data image and then an address-ordered index into
// the images (proxies store received logs this way). Readers must accept
// both; Open and NewReader detect the layout.
//
// # Usage
//
// Reading either layout:
//
//	f, err := wdiff.Open(path)
//	...
//	defer f.Close()
//	for {
//		io, err := f.Next() // io.Data is valid until the next call
//		if err == io.EOF { break }
//		...
//	}
//
// Writing a sorted file: NewSortedWriter, then Write (or WriteStored to copy
// a record from a SortedReader's NextStored without recompressing), then
// Close. Writing an indexed file: NewIndexedWriter, WriteImage for every IO,
// then WriteIndex for the surviving ranges in address order, then Close.
// Show prints a file as wdiff-show does.
//
// Every reader validates everything it can (checksums, sizes, bounds,
// order) and reports failures as errors wrapping one of the sentinel errors
// (ErrChecksum, ErrTruncated, ErrCorrupt, ...) with the byte offset of the
// structure at fault. Readers never allocate more than the input justifies:
// a record's uncompressed size is limited to MaxRecordBlocks, and pack data
// is allocated as it arrives.
//
// All integers are little-endian. csum(b, salt) is the WalB checksum
// (package checksum); every structure below that holds its own checksum
// stores csum of the structure with the field zeroed, salt 0, so csum over
// the whole structure is 0.
//
// # File header (32 bytes, both layouts)
//
//	| Off | Size | Field    | Meaning                                        |
//	|-----|------|----------|------------------------------------------------|
//	| 0   | 4    | checksum | csum(32 bytes, 0)                              |
//	| 4   | 2    | version  | 2                                              |
//	| 6   | 1    | type     | 0 sorted, 1 indexed                            |
//	| 7   | 1    | reserved | 0                                              |
//	| 8   | 4    | reserved | max_io_blocks in early writers; ignored        |
//	| 12  | 4    | reserved | 0                                              |
//	| 16  | 16   | uuid     | log UUID of the volume (zero in merge output)  |
//
// Record flags: bit 1 (0x02) ALLZERO, bit 2 (0x04) DISCARD, mutually
// exclusive; bit 0 (EXIST) is legacy, ignored on read and never written.
// Compression codes: 0 none, 1 "gzip" (really a zlib RFC 1950 stream),
// 2 snappy raw block, 3 lzma (.xz stream, CRC64), 4 LZ4 raw block, 5 zstd
// frame. Data is stored compressed only when that is strictly smaller.
//
// # Sorted layout (type 0)
//
//	[file header][pack header 4096 B][pack data] ... [end pack header 4096 B]
//
// Pack header (4096 bytes, checksum over all of them):
//
//	| Off | Size  | Field      | Meaning                                      |
//	|-----|-------|------------|----------------------------------------------|
//	| 0   | 4     | checksum   | csum(4096 bytes, 0)                          |
//	| 4   | 2     | n_records  | <= 127                                       |
//	| 6   | 1     | flags      | bit 0 END                                    |
//	| 7   | 1     | reserved   |                                              |
//	| 8   | 4     | total_size | bytes of data after the header               |
//	| 12  | 4     | reserved   |                                              |
//	| 16  | 32*n  | records    | the rest of the block is zero                |
//
// Sorted record (32 bytes):
//
//	| Off | Size | Field            | Meaning                                   |
//	|-----|------|------------------|-------------------------------------------|
//	| 0   | 8    | io_address       | first logical block                       |
//	| 8   | 4    | io_blocks        | length in logical blocks (> 0 if normal)  |
//	| 12  | 1    | flags            | see above                                 |
//	| 13  | 1    | compression_type | see above                                 |
//	| 14  | 2    | reserved         |                                           |
//	| 16  | 4    | data_offset      | from the end of the pack header           |
//	| 20  | 4    | data_size        | stored bytes; 0 unless normal             |
//	| 24  | 4    | checksum         | csum(stored bytes, 0); 0 unless normal    |
//	| 28  | 4    | reserved         |                                           |
//
// A pack's data is its records' stored bytes in record order, so each
// data_offset is the sum of the previous data_size values and total_size is
// their sum. A pack closes at 127 records or when its data would pass
// 32 MiB, except that a single record may be larger. The file ends with a
// pack whose flags are END and whose other fields are zero; input ending
// exactly where a pack header would start is also accepted as the end.
//
// # Indexed layout (type 1)
//
//	[file header][images ...][0-7 zero bytes][index records][index super]
//
// Each image is one IO's data (orig_blocks blocks), stored compressed or
// raw, starting at offset 32. Images no index record refers to may remain
// after overlaps are removed. The index records start 8-byte aligned.
//
// Index record (48 bytes):
//
//	| Off | Size | Field            | Meaning                                   |
//	|-----|------|------------------|-------------------------------------------|
//	| 0   | 8    | io_address       | first logical block                       |
//	| 8   | 4    | io_blocks        | length in logical blocks                  |
//	| 12  | 1    | flags            | see above                                 |
//	| 13  | 1    | compression_type | of the image                              |
//	| 14  | 2    | reserved         |                                           |
//	| 16  | 8    | data_offset      | file offset of the image (writers also    |
//	|     |      |                  | fill it for non-normal records)           |
//	| 24  | 4    | data_size        | stored image size; 0 unless normal        |
//	| 28  | 4    | io_offset        | first block of the range in the image     |
//	| 32  | 4    | orig_blocks      | image size in blocks; 0 unless normal     |
//	| 36  | 4    | reserved         |                                           |
//	| 40  | 4    | io_checksum      | csum(stored image, 0); 0 unless normal    |
//	| 44  | 4    | rec_checksum     | csum(48 bytes, 0)                         |
//
// A record's data is bytes [io_offset*512, (io_offset+io_blocks)*512) of
// the decompressed image; several records may share an image. Records are
// in address order without overlaps, and each is a power of two long and
// aligned to its length (writers split ranges; see SplitAligned).
//
// Index super (the last 24 bytes):
//
//	| Off | Size | Field        | Meaning                                       |
//	|-----|------|--------------|-----------------------------------------------|
//	| 0   | 8    | index_offset | start of the index records (8-aligned)        |
//	| 8   | 4    | n_records    | number of index records                       |
//	| 12  | 4    | n_data       | number of IOs the writer received             |
//	| 16  | 4    | reserved     |                                               |
//	| 20  | 4    | checksum     | csum(24 bytes, 0)                             |
//
// # Codecs
//
// Compress and Decompress implement the six codes with klauspost/compress
// (snappy via s2's snappy-compatible encoder, zlib, zstd), pierrec/lz4 and
// ulikunitz/xz. Decompress must produce exactly the record's size. For lzma
// it first walks the .xz container: dictionaries over the reference
// decoder's 16 MiB memory limit are refused, and the dictionary size is
// lowered (in a private copy) to what the record needs, since liblzma
// declares 8 MiB even for a 4 KiB record.
package wdiff
