// Package hashsync compares two images chunk by chunk over a network and
// turns the chunks that differ into a wdiff: walb-tools' hash-bkp (storage
// to archive, system.md §3.7) and hash replication (archive to archive,
// §5.6), with a protocol of its own. It also holds the hash of walb-tools'
// bhash tool (BHash, SipHash128), which operators use to compare images by
// hand.
//
// # The two halves
//
// The hash side has the old image (the archive's base or latest restorable
// image). It chooses the session (range, chunk size, a fresh random seed),
// reads its image chunk by chunk and streams the seeded hash of every
// chunk (SendHashes). The data side has the new image (the storage device,
// which may be written meanwhile). It reads the same chunks, hashes them
// with the same seed, and sends back only the chunks that differ, each
// compressed when that is smaller, all-zero chunks as bare all-zero records
// (SendDiff). The hash side writes what it receives, in address order, to a
// Sink: a *wdiff.SortedWriter, or an IndexedSink around a
// *wdiff.IndexedWriter (ReceiveDiff). RunHashSide runs SendHashes and
// ReceiveDiff together over one connection; WireHashSide and WireDataSide
// run the halves over a wire.Conn, each stream as a wire bulk stream, with
// Dummy keepalive frames while a side is busy.
//
// Applying the wdiff to the old image gives the new image as the data side
// read it. The caller wraps the file as the diff of its session: for
// hash-bkp a dirty diff from the archive's snapshot to (gidB, gidE), which
// becomes clean once the log diffs from gidB onwards are applied (below).
//
// # Seed
//
// A chunk is compared by its XXH3-128 hash keyed with the session's 64-bit
// seed (HashChunk). The hash is fast (tens of GB/s), so hashing costs much
// less than reading. It is not a cryptographic MAC: the seed only makes
// sure that nobody who can write to the device (a tenant of the volume)
// can prepare, ahead of time, data whose hash collides with the old
// contents, which would make the sync skip a real change. The seed is drawn
// from crypto/rand for every session (NewSeed) and travels in the clear in
// the stream header; run the wire connection over TLS if the network is
// not trusted. Accidental collisions of the 128-bit hash are negligible.
//
// # Streams
//
// All integers are little-endian. Each stream starts with a 48-byte header;
// the data side's echoes the hash side's, with its own magic and a zero
// bulk field, so that the hash side can check that the data belongs to its
// session.
//
//	| Off | Size | Field     | Meaning                                          |
//	|-----|------|-----------|--------------------------------------------------|
//	| 0   | 4    | magic     | "WHSH" hash stream, "WHSD" data stream           |
//	| 4   | 2    | version   | 1                                                |
//	| 6   | 1    | algorithm | 1 = XXH3-128 with a 64-bit seed                  |
//	| 7   | 1    | reserved  | 0                                                |
//	| 8   | 4    | chunk     | chunk size in bytes (512 multiple, <= 4 MiB)     |
//	| 12  | 4    | bulk      | hash stream: hashes per Hashes message (<= 4096) |
//	| 16  | 8    | seed      | the session seed                                 |
//	| 24  | 8    | start     | first byte of the range (512 multiple)           |
//	| 32  | 8    | end       | end of the range (512 multiple)                  |
//	| 40  | 4    | reserved  | 0                                                |
//	| 44  | 4    | crc       | CRC-32C of bytes 0..43                           |
//
// Chunk i covers [start + i*chunk, min(start + (i+1)*chunk, end)), so only
// the last chunk may be shorter. Messages follow the header:
//
//	| Off | Size | Field    | Meaning                                           |
//	|-----|------|----------|---------------------------------------------------|
//	| 0   | 1    | type     | below                                             |
//	| 1   | 3    | reserved | 0                                                 |
//	| 4   | 4    | length n | body size; bounded per type before any allocation |
//	| 8   | n    | body     |                                                   |
//	| 8+n | 4    | crc      | CRC-32C of bytes 0..8+n-1                         |
//
//	| Type | Name       | Stream | Body                                          |
//	|------|------------|--------|-----------------------------------------------|
//	| 0x01 | Hashes     | hash   | u64 byte offset of its first chunk, then one  |
//	|      |            |        | 16-byte hash per chunk, in chunk order        |
//	| 0x02 | HashEnd    | hash   | u64 number of chunks                          |
//	| 0x10 | Record     | data   | u64 address (512-byte blocks), u32 blocks,    |
//	|      |            |        | u8 flags (0 normal, 0x02 all-zero), u8 codec  |
//	|      |            |        | (wdiff code), u16 0, u32 checksum (WalB csum  |
//	|      |            |        | of the stored bytes, salt 0; 0 if all-zero),  |
//	|      |            |        | then the stored bytes (none if all-zero)      |
//	| 0x11 | Checkpoint | data   | u64 offset: every chunk below it is compared  |
//	|      |            |        | and its Record, if any, sent                  |
//	| 0x12 | DataEnd    | data   | u64 chunks compared, u64 records, u64 bytes   |
//	|      |            |        | of the differing chunks                       |
//	| 0x7f | Error      | either | UTF-8 text (<= 4 KiB): the sender gives up    |
//
// The hash stream is Hashes messages covering every chunk in order, then
// HashEnd. The data stream is one Record per differing chunk, in address
// order, each a whole chunk; a Checkpoint after the chunks of each Hashes
// message (the last one at end); then DataEnd, whose counts the hash side
// checks. Record data is stored by the sink as it arrives
// (wdiff.SortedWriter.WriteStored), never recompressed. A side that fails
// sends Error, with its reason, in place of whatever it would send next
// (its stream header included) when its stream still allows; the peer
// returns an error wrapping ErrRemote with that text. Every violation is
// reported with a sentinel error: ErrCorrupt (checksums, framing),
// ErrTruncated, ErrProtocol (order, ranges, counts), ErrSession.
//
// # Pipelining and memory
//
// Each side reads and hashes its image on Workers goroutines (default:
// GOMAXPROCS, 2 to 8) fed in chunk order, while one goroutine writes the
// results to the network in order; on the data side the same workers also
// compress the differing chunks, and the hash stream is read as the
// pipeline needs it. On the hash side the data stream is received and
// written to the sink concurrently with the hashing. A side keeps at most
// 2*Workers+2 chunks in flight, each with a read buffer and, once a chunk
// differed, a compression buffer, plus one message buffer and 64 KiB stream
// buffers: at most about 2*(2*Workers+2)*ChunkSize (3 MiB with the defaults
// on 2 CPUs, 9 MiB on 8), whatever the image size. Flow control is the transport's: a slow receiver slows the
// sender, which stops reading ahead. An IndexedSink keeps its pending index
// records in memory up to 64Ki of them, then in a temporary file. ReadLimit
// throttles the reads of either side (walb-tools' -fst).
//
// # Cancellation, progress, resume
//
// Every function takes a context. Cancelling it interrupts blocked reads
// at once, and writes after a short grace (so that an Error message can
// still follow), on streams that have deadlines (net.Conn, the wire
// adapters); other streams are interrupted when their owner closes them.
// When the receiving half fails on its own, the hash side keeps draining
// the data stream for a moment so that its Error message reaches a peer
// that was blocked writing.
//
// DataOptions.Progress reports Stats (bytes scanned, chunks differing,
// stream sizes) at every checkpoint. HashOptions.Checkpoint is called on
// the hash side once every record below Stats.Offset is in the sink: the
// place to make the sink durable (close a wdiff segment) and persist the
// offset. A session resumed with Session.Start at that offset (a new seed
// is fine) produces the rest; the segments, applied or merged in order,
// give the whole.
//
// # Writes during the scan
//
// The data side may scan a device that is being written (hash-bkp of an
// online volume). Each chunk is read once, at some moment of the scan, so
// the resulting image is dirty: some chunks are older than others, and a
// chunk read while a write landed in it may even mix both. It is
// consistent once every write made between the start and the end of the
// scan is applied on top of it. That is the caller's part: reset the WalB
// log (gidB) before the scan starts and take the snapshot (gidE) after it
// ends, so that the logs from gidB onwards hold every such write; the
// archive marks the image clean once diffs from gidB past gidE are applied
// (system.md §3.7).
//
// # bhash
//
// BHash is walb-tools' bhash: SipHash-2-4 with key 00..0f over a range of
// a file or device, whole or per chunk, output as 128 bits
// LE64(v0^v1) || LE64(v2^v3), a non-standard output no SipHash library
// offers (SipHash128). Its options and output match the tool's (cmd/bhash,
// tested against the C++ fixtures).
package hashsync
