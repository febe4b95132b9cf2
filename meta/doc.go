// Package meta holds the metadata model of walb-tools (snapshots, diffs, the
// archive base state and storage snapshot records), its serialized forms,
// wdiff file names, the per-directory diff index the servers query, durable
// metadata files and the storage's snapshot queue file. Everything is
// byte-compatible with walb-tools 1.0.19 (formats.md §8–9, system.md §2, §7).
//
// # Generations and snapshots
//
// A gid (generation id) numbers points in the life of a volume; the storage
// assigns a new one at every snapshot, leaving gaps for the pieces a long
// transfer is cut into. A snapshot (Snap) is written |b,e|: an image whose
// blocks each come from some moment in [b, e]. It is clean, written |g|, when
// b == e; an online copy of a device that is being written is dirty. The
// default snapshot is (-1, -1) (InvalidGid).
//
// # Diffs
//
// A diff (Diff) |B|-->|E| holds the blocks written between two snapshots. It
// must make progress: B.gidB < E.gidB and B.gidE <= E.gidE. Its flags are
// Mergeable (its begin snapshot is implicit, so it may be merged into the diff
// before it) and CompDiff (made by hash-repl by comparing images; never
// merged). Its Timestamp is the time of E; DataSize is its file size. Two
// diffs are equal when B and E are.
//
// Relation (RelationOf) of a diff d to a snapshot s: a compared diff is
// Applicable only when d.B.gidB == s.gidB (else NotApplicable); any other diff
// is TooNew if d.B.gidB > s.gidB, TooOld if d.E.gidB <= s.gidB, and
// Applicable otherwise.
//
// Apply: a clean diff takes s to |d.E.gidB, max(d.E.gidB, s.gidE)|, which is
// how a dirty image becomes clean once log diffs pass its gidE; a dirty diff
// takes s to d.E. Lists apply left to right, every step applicable.
//
// Merge: d1 merges onto d0 (CanMerge) when d1 is mergeable, neither is
// compared, and d0.B.gidB <= d1.B.gidB <= d0.E.gidB < d1.E.gidB. The result
// keeps d0.B and d0's mergeability, takes d1's timestamp, and ends where
// applying d1 to d0.E ends. Applying a merged diff gives the same snapshot as
// applying its parts one by one (the package tests this on random chains).
//
// Explicit snapshots (from the snapshot command or the end of a backup) start
// a non-mergeable diff, so they are never merged away and are listed by
// default; implicit ones (the storage's automatic snapshots) start mergeable
// diffs. disable-snapshot / enable-snapshot flip that flag (SetMergeable) and
// the file name with it.
//
// # The archive base
//
// A State is the archive's base image: <|B|> when steady, <|B|-->|E|> while an
// apply is running. While applying, the image is only usable again after the
// diffs from B reaching E (the minimum list) have been (re)applied; applying
// is idempotent. BeginApplying and EndApplying give the two states an apply
// persists around writing the data.
//
// # Diff sets
//
// A DiffSet indexes the diffs of one directory and answers the queries of
// system.md §2.6 and the merge limits of §2.10: the applicable chain from a
// snapshot (max progress first), the minimum list, apply / restore / sync
// lists, the restorable list with explicit flags, the mergeable list, gc,
// gcRange and eraseBeforeGid. LoadDir rebuilds one from a directory listing.
// PickCold chooses the cold snapshot (thin mode) a restore or apply starts
// from.
//
// Two choices differ from walb-tools where it would get stuck: the minimum
// list runs up to and including the diff that reaches the applying target,
// even when a later merge made that diff span past it (walb-tools stops short
// and cannot complete the base), and ApplyList returns the minimum list even
// when the chain cut at the requested gid is empty. When a diff boundary lies
// exactly at the target, as apply itself guarantees, both agree.
//
// # Serialized forms (cybozu serializer)
//
// bool, u8 and u16 are raw little-endian (bool is 0 or 1). Integers declared
// as int, unsigned, long, size_t, uint64_t... use a variable-length form that
// depends on the declared type T; the encoder uses the first rule whose
// round trip through the narrower type gives x back:
//
//	rule                        | bytes
//	----------------------------+----------------------------------------
//	x fits int8, b = x & 0xff   | b (84 b if b is 80..87)
//	x fits uint8                | 80 b
//	x fits uint16 / int16       | 81 lo hi / 85 lo hi
//	x fits uint32 / int32       | 82 + 4 bytes / 86 + 4 bytes
//	otherwise (64-bit T only)   | 83 + 8 bytes
//
// Headers 80–83 zero-extend 1/2/4/8 payload bytes, 84–87 sign-extend them,
// any other header byte is the value as int8. Examples: 0 → 00, 127 → 7F,
// 128 → 80 80, 256 → 81 00 01, 65536 → 82 00 00 01 00, 2^32 → 83 + 8 bytes,
// u64 2^64-1 → FF, u64 2^64-128 → 84 80, i32 -200 → 85 38 FF. The Decoder
// accepts only the canonical encoding of each value and refuses 8-byte forms
// for 32-bit targets. Strings and byte vectors are a size_t length and the
// bytes; vectors are a count and the elements; a UUID is 16 raw bytes.
//
// Records start with a u16 preamble and list their fields in this order:
//
//	record                 preamble  fields, in order
//	---------------------  --------  ---------------------------------------
//	Snap (MetaSnap)        0x0311    gidB u64, gidE u64
//	Diff (MetaDiff)        0x0312    isMergeable bool, isCompDiff bool,
//	                                 timestamp u64, snapB Snap, snapE Snap,
//	                                 dataSize u64
//	State (MetaState)      0x0313    isApplying bool, timestamp u64,
//	                                 snapB Snap, snapE Snap
//	LsidGid (MetaLsidGid)  0x0314    isMergeable bool, timestamp u64,
//	                                 lsid u64, gid u64
//
// Timestamps are UNIX seconds; 0 means unset and maps to the zero time.Time.
// Example: Diff |10|-->|20|, mergeable, ts 1500000000, dataSize 0 is
// 12 03 01 00 82 00 2F 68 59 11 03 0A 0A 11 03 14 14 00.
//
// # wdiff file names
//
//	YYYYMMDDhhmmss-MC-b-e.wdiff          clean diff
//	YYYYMMDDhhmmss-MC-bb-be-eb-ee.wdiff  dirty diff
//
// The time is the diff's timestamp in UTC, M is "M" or "-", C is "C" or "-",
// gids are decimal without leading zeros. ParseFileName accepts only this
// canonical form, so FileName(ParseFileName(n)) == n for every accepted n.
//
// # Metadata files
//
// Small metadata files (base, state, done, uuid, ...) are written by
// WriteFileAtomic: a temporary file tmpXXXXXX in the same directory, fsync,
// rename, fsync of the directory. CleanTemps removes temporaries a crash left.
// Save adds an integrity trailer after the serialized value:
//
//	offset  size  field
//	------  ----  -------------------------------------------
//	0       n     serialized value
//	n       4     magic 0x314D4257 ("WBM1"), little-endian
//	n+4     4     CRC-32C (Castagnoli) of the n value bytes
//
// walb-tools reads such files unchanged (it stops after the value). Load
// accepts them and also trailer-less files written by walb-tools, which must
// then decode exactly; anything else is ErrCorrupt.
//
// # Queue file
//
// The storage's queue file (walb-tools cybozu::util::QueueFile) holds
// LsidGid records; the storage pushes new snapshots at the front and consumes
// the oldest at the back. All integers are little-endian; "csum" is the WalB
// checksum (package checksum).
//
//	offset      size  field
//	----------  ----  -----------------------------------------------------
//	0           28    header copy 0
//	28          28    header copy 1
//	56+begin    ...   records, front to back, up to 56+end
//	56+end      16    end stub (a record header; only its toPrev is used)
//
//	header: preamble u32 0x119D83A7 @0, checksum u32 @4 (csum of the 28
//	bytes, salt 0, with this field zero), salt u32 @8, beginOffset u64 @12,
//	endOffset u64 @20.
//
//	record header: preamble u32 0x119D83A7 @0, checksum u32 @4 (csum of the
//	data with the header's salt), dataSize u32 @8, toPrev u32 @12 (bytes back
//	to the previous record's header: its 16+dataSize), then dataSize bytes of
//	data (a serialized LsidGid).
//
// Writes: new record bytes (and links) are written outside the live region
// [begin, end+16) or rewrite bytes the current state does not read, then the
// file is fsynced, then header copy 0 is written and fsynced, then copy 1.
// When the front has no room, the live region is first copied past its end
// and the header switched to it; pops that leave enough free space copy it
// back to offset 0. A crash therefore leaves either state.
//
// # Queue file recovery
//
// On open the first header copy with a valid preamble, checksum and in-file
// offsets wins, and both copies are rewritten to match. The records between
// begin and end are walked forward. If one is invalid (bad preamble, size or
// checksum, or undecodable data), the records after it are walked backward
// from the end stub through the toPrev links: if nothing valid follows it,
// it is a torn record at the back and is dropped with what follows; if the
// first record alone is bad and everything after it is valid, it is a torn
// record at the front and is dropped; otherwise the file is ErrCorrupt.
// Wrong toPrev links and a damaged end stub are rewritten from the validated
// records. Queue.Recovery reports what was done, for the log.
package meta
