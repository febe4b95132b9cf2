package hashsync

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"

	"github.com/pkg/errors"
	"github.com/zeebo/xxh3"
)

// Sizes and limits of the protocol.
const (
	// LogicalBlockSize is the unit of record addresses (512 bytes, as in
	// wdiff). Session offsets and chunk sizes are multiples of it.
	LogicalBlockSize = 512
	// DefaultChunkSize is the default comparison unit, walb-tools' default
	// bulk for hash-bkp and replicate (256 KiB).
	DefaultChunkSize = 256 << 10
	// MaxChunkSize is the largest chunk size, walb-tools' maximum bulk.
	MaxChunkSize = 4 << 20
	// DefaultBulkChunks is how many chunk hashes one Hashes message carries
	// by default (16 MiB of image at the default chunk size).
	DefaultBulkChunks = 64
	// MaxBulkChunks bounds the hashes per message (64 KiB of hashes).
	MaxBulkChunks = 4096
	// HashSize is the size of a chunk hash.
	HashSize = 16
	// HashXXH3 is the algorithm code of XXH3-128 with a 64-bit seed, the
	// only one defined.
	HashXXH3 = 1
	// Version is the protocol version written in both stream headers.
	Version = 1
)

// Hash is the seeded hash of one chunk: XXH3-128 with the session seed, in
// the canonical (big-endian) byte order of the reference implementation.
type Hash [HashSize]byte

// String returns the hash in hex.
func (h Hash) String() string { return hex.EncodeToString(h[:]) }

// HashChunk returns the hash of p under seed.
func HashChunk(seed uint64, p []byte) Hash {
	return Hash(xxh3.Hash128Seed(p, seed).Bytes())
}

// NewSeed draws a random non-zero session seed from crypto/rand.
func NewSeed() (uint64, error) {
	var b [8]byte
	for {
		if _, err := rand.Read(b[:]); err != nil {
			return 0, errors.Wrap(err, "hashsync: draw a seed")
		}
		if s := binary.LittleEndian.Uint64(b[:]); s != 0 {
			return s, nil
		}
	}
}

// Session holds the parameters both halves must agree on. The hash side
// announces them in its stream header and the data side echoes them.
type Session struct {
	// ChunkSize is the comparison unit in bytes: a multiple of 512 up to
	// MaxChunkSize. Zero means DefaultChunkSize.
	ChunkSize int
	// Start and End delimit the compared byte range [Start, End) of both
	// images; both are multiples of 512. Chunks are cut from Start, so the
	// last one may be shorter. A resumed session starts at the Offset of
	// the last checkpoint the caller persisted.
	Start, End int64
	// Seed keys the chunk hashes. Zero means: draw a random one
	// (RunHashSide, SendHashes). It is fresh for every session so that
	// nobody can prepare data whose hash collides with the old contents.
	Seed uint64
}

// withDefaults fills ChunkSize and, if draw is set, Seed, then validates.
func (s Session) withDefaults(draw bool) (Session, error) {
	if s.ChunkSize == 0 {
		s.ChunkSize = DefaultChunkSize
	}
	if s.Seed == 0 && draw {
		seed, err := NewSeed()
		if err != nil {
			return s, err
		}
		s.Seed = seed
	}
	return s, s.validate()
}

func (s Session) validate() error {
	switch {
	case s.ChunkSize <= 0 || s.ChunkSize > MaxChunkSize || s.ChunkSize%LogicalBlockSize != 0:
		return errors.Wrapf(ErrInvalid, "chunk size %d: want a multiple of 512 up to %d", s.ChunkSize, MaxChunkSize)
	case s.Start < 0 || s.End < s.Start || s.Start%LogicalBlockSize != 0 || s.End%LogicalBlockSize != 0:
		return errors.Wrapf(ErrInvalid, "range [%d, %d): want 0 <= start <= end, multiples of 512", s.Start, s.End)
	case s.Seed == 0:
		return errors.Wrap(ErrInvalid, "seed 0: the session needs a seed")
	}
	return nil
}

// Chunks returns the number of chunks in the session range.
func (s Session) Chunks() int64 {
	c := int64(s.ChunkSize)
	return (s.End - s.Start + c - 1) / c
}

// chunk returns the byte offset and length of chunk i.
func (s Session) chunk(i int64) (off int64, n int) {
	off = s.Start + i*int64(s.ChunkSize)
	return off, int(min(int64(s.ChunkSize), s.End-off))
}
