package hashsync

import (
	"context"
	"encoding/binary"
	"io"
	"sync/atomic"

	"github.com/pkg/errors"
	"github.com/walb-go/walb/checksum"
	"github.com/walb-go/walb/wdiff"
)

// DataOptions configure the data side (SendDiff).
type DataOptions struct {
	// Compression compresses differing chunks (each is sent compressed
	// only when that is smaller). Its Workers field is not used; the zero
	// value means no compression. DefaultDataOptions uses snappy, as
	// walb-tools' -sync-cmpr does.
	Compression wdiff.Compression
	// Workers is the number of goroutines reading, hashing and
	// compressing chunks (0: GOMAXPROCS, between 2 and 8).
	Workers int
	// ReadLimit caps the reads of the image in bytes per second (0:
	// unlimited), like walb-tools' -fst / set-full-scan-bps.
	ReadLimit int64
	// ExpectEnd, if positive, is the size the session range must end at
	// (normally the device size); another announced End is refused with
	// ErrSession.
	ExpectEnd int64
	// ExpectChunkSize, if positive, is the chunk size the session must use.
	ExpectChunkSize int
	// Progress, if set, is called on the sending goroutine after each
	// checkpoint is sent, and once at the end.
	Progress func(Stats)
}

// DefaultDataOptions returns options with snappy compression.
func DefaultDataOptions() DataOptions {
	return DataOptions{Compression: wdiff.DefaultCompression}
}

// SendDiff runs the data side of a session, the half that has the new
// image cur: it reads the hash stream from hashes, reads and hashes the
// same chunks of cur, and writes a Record message to w for each chunk that
// differs (address, length, data compressed when smaller; all-zero chunks
// without data), with a Checkpoint after every Hashes message. The session
// (range, chunk size, seed) comes from the hash stream's header.
//
// cur may be written to while SendDiff runs (an online device): each chunk
// is read once, at some moment of the scan, so the result is a dirty image
// that becomes consistent once the writes made during the scan are applied
// on top of it (see the package documentation).
//
// Reads, hashing and compression run on opt.Workers goroutines, ahead of
// the writes to w by a bounded number of chunks. On failure SendDiff
// writes an Error message to w when it still can, so the peer learns why.
func SendDiff(ctx context.Context, hashes io.Reader, w io.Writer, cur io.ReaderAt, opt DataOptions) (Stats, error) {
	var st Stats
	if err := opt.Compression.Validate(); err != nil {
		return st, errors.Wrapf(ErrInvalid, "compression: %v", err)
	}
	if opt.Workers < 0 || opt.ReadLimit < 0 {
		return st, errors.Wrapf(ErrInvalid, "workers %d, read limit %d", opt.Workers, opt.ReadLimit)
	}
	defer interrupt(ctx, hashes, true)()
	stopW := interrupt(ctx, w, false)
	mr := newMsgReader(hashes)
	mw := newMsgWriter(w)
	st, err := sendDiff(ctx, mr, mw, cur, opt)
	stopW()
	if err != nil {
		sendAbort(ctx, w, mw, err)
	}
	st.HashBytes, st.DataBytes = mr.off, mw.written()
	return st, ctxErr(ctx, err)
}

func sendDiff(ctx context.Context, mr *msgReader, mw *msgWriter, cur io.ReaderAt, opt DataOptions) (st Stats, err error) {
	s, bulk, err := mr.header(hashMagic)
	if err != nil {
		return st, err
	}
	switch {
	case opt.ExpectEnd > 0 && s.End != opt.ExpectEnd:
		return st, errors.Wrapf(ErrSession, "the session ends at %d, this image at %d", s.End, opt.ExpectEnd)
	case opt.ExpectChunkSize > 0 && s.ChunkSize != opt.ExpectChunkSize:
		return st, errors.Wrapf(ErrSession, "chunk size %d, expected %d", s.ChunkSize, opt.ExpectChunkSize)
	case bulk == 0 && s.Chunks() > 0:
		return st, errors.Wrap(ErrProtocol, "stream header: 0 hashes per message")
	}
	mr.max = 8 + HashSize*bulk
	st.Offset = s.Start
	hdr := encodeHeader(dataMagic, s, 0)
	if err := mw.raw(hdr[:]); err != nil {
		return st, err
	}
	if err := mw.flush(); err != nil {
		return st, err
	}
	var (
		total   = s.Chunks()
		next    int64  // next chunk to feed
		pending []byte // hashes of the current message not yet fed
		ended   bool
		lim     = newLimiter(opt.ReadLimit)
		cmpr    = opt.Compression
		rec     [recordFixed]byte
		// The feeder goroutine reads the hash stream; progress reports
		// run on the consumer.
		hashBytes atomic.Int64
		// The peer's Error message explains whatever failed after it, such
		// as a write to the peer who has gone away.
		remote atomic.Pointer[error]
	)
	feed := func(ctx context.Context, j *job) (bool, error) {
		if len(pending) == 0 {
			if ended {
				return false, nil
			}
			t, body, err := mr.next()
			hashBytes.Store(mr.off)
			if err != nil {
				if errors.Is(err, ErrRemote) {
					remote.Store(&err)
				}
				return false, err
			}
			switch t {
			case msgHashes:
				var off uint64
				if len(body) < 8+HashSize || (len(body)-8)%HashSize != 0 {
					return false, errors.Wrapf(ErrCorrupt, "Hashes message of %d bytes", len(body))
				}
				off = binary.LittleEndian.Uint64(body)
				if want, _ := s.chunk(next); next >= total || off != uint64(want) {
					return false, errors.Wrapf(ErrProtocol, "Hashes message at offset %d, expected chunk %d of %d", off, next, total)
				}
				if n := int64(len(body)-8) / HashSize; n > total-next {
					return false, errors.Wrapf(ErrProtocol, "Hashes message with %d hashes, %d chunks left", n, total-next)
				}
				pending = body[8:]
			case msgHashEnd:
				var n uint64
				if err := u64s(t, body, &n); err != nil {
					return false, err
				}
				if next != total || n != uint64(total) {
					return false, errors.Wrapf(ErrProtocol, "HashEnd after %d of %d chunks, announcing %d", next, total, n)
				}
				ended = true
				return false, nil
			default:
				return false, errors.Wrapf(ErrProtocol, "%s message in the hash stream", msgName(t))
			}
		}
		j.idx = next
		j.off, j.n = s.chunk(next)
		j.want = Hash(pending[:HashSize])
		pending = pending[HashSize:]
		j.bulkEnd = len(pending) == 0
		next++
		return true, nil
	}
	process := func(ctx context.Context, j *job) {
		buf := j.buf[:j.n]
		if j.err = lim.wait(ctx, j.n); j.err != nil {
			return
		}
		if j.err = readChunk(cur, buf, j.off); j.err != nil {
			return
		}
		j.got = HashChunk(s.Seed, buf)
		if j.got == j.want {
			return
		}
		j.differ = true
		if j.zero = isZero(buf); j.zero {
			return
		}
		if j.out == nil && cmpr.Codec != wdiff.CodecNone {
			j.out = make([]byte, 0, len(j.buf))
		}
		j.stored, j.codec, j.err = wdiff.Compress(j.out, buf, cmpr.Codec, cmpr.Level)
		if j.err == nil {
			j.csum = checksum.Sum(j.stored, 0)
		}
	}
	report := func() {
		if opt.Progress != nil {
			st.HashBytes, st.DataBytes = hashBytes.Load(), mw.written()
			opt.Progress(st)
		}
	}
	consume := func(j *job) error {
		st.Chunks++
		st.Scanned += int64(j.n)
		st.Offset = j.off + int64(j.n)
		if j.differ {
			st.DiffChunks++
			st.DiffBytes += int64(j.n)
			binary.LittleEndian.PutUint64(rec[0:], uint64(j.off/LogicalBlockSize))
			binary.LittleEndian.PutUint32(rec[8:], uint32(j.n/LogicalBlockSize))
			var data []byte
			if j.zero {
				st.ZeroChunks++
				rec[12], rec[13] = byte(wdiff.FlagAllZero), byte(wdiff.CodecNone)
				binary.LittleEndian.PutUint32(rec[16:], 0)
			} else {
				data = j.stored
				rec[12], rec[13] = 0, byte(j.codec)
				binary.LittleEndian.PutUint32(rec[16:], j.csum)
			}
			st.StoredBytes += int64(len(data))
			if err := mw.msg(msgRecord, rec[:], data); err != nil {
				return err
			}
		}
		if j.bulkEnd {
			if err := mw.u64s(msgCheckpoint, uint64(st.Offset)); err != nil {
				return err
			}
			if err := mw.flush(); err != nil {
				return err
			}
			report()
		}
		return nil
	}
	workers := defaultWorkers(opt.Workers)
	p := pipeline{depth: depthFor(workers), workers: workers, chunkSize: s.ChunkSize, feed: feed, process: process, consume: consume}
	if err := p.run(ctx); err != nil {
		if r := remote.Load(); r != nil {
			return st, *r
		}
		return st, err
	}
	if st.Offset != s.End {
		return st, errors.Wrapf(ErrProtocol, "scan ended at %d, the session at %d", st.Offset, s.End)
	}
	if err := mw.u64s(msgDataEnd, uint64(st.Chunks), uint64(st.DiffChunks), uint64(st.DiffBytes)); err != nil {
		return st, err
	}
	if err := mw.flush(); err != nil {
		return st, err
	}
	report()
	return st, nil
}
