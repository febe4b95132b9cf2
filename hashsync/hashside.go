package hashsync

import (
	"context"
	"encoding/binary"
	"io"
	"sync"
	"time"

	"github.com/pkg/errors"
	"github.com/walb-go/walb/checksum"
	"github.com/walb-go/walb/wdiff"
)

// HashOptions configure the hash side (SendHashes, RunHashSide).
type HashOptions struct {
	// BulkChunks is the number of hashes per Hashes message, which is
	// also how often the data side checkpoints (0: DefaultBulkChunks).
	BulkChunks int
	// Workers is the number of goroutines reading and hashing chunks
	// (0: GOMAXPROCS, between 2 and 8).
	Workers int
	// ReadLimit caps the reads of the old image in bytes per second (0:
	// unlimited).
	ReadLimit int64
	// Checkpoint, if set, is called by the receiving half after each
	// checkpoint of the data side, once every record below st.Offset has
	// been written to the sink: the moment to make the sink durable and
	// persist st.Offset for a resume. An error aborts the session.
	Checkpoint func(st Stats) error
}

func (o HashOptions) bulk() (int, error) {
	switch {
	case o.Workers < 0 || o.ReadLimit < 0:
		return 0, errors.Wrapf(ErrInvalid, "workers %d, read limit %d", o.Workers, o.ReadLimit)
	case o.BulkChunks == 0:
		return DefaultBulkChunks, nil
	case o.BulkChunks < 0 || o.BulkChunks > MaxBulkChunks:
		return 0, errors.Wrapf(ErrInvalid, "%d hashes per message: want 1..%d", o.BulkChunks, MaxBulkChunks)
	}
	return o.BulkChunks, nil
}

// SendHashes runs the sending half of the hash side, the side that has
// the old image: it writes the stream header announcing s, then the seeded
// hash of every chunk of old in s's range, opt.BulkChunks per message, then
// HashEnd. A zero s.Seed is replaced by a random one; the session actually
// used is returned. Reading and hashing run on opt.Workers goroutines,
// ahead of the writes by a bounded number of chunks. old must hold the
// whole range (ErrShortImage otherwise).
func SendHashes(ctx context.Context, w io.Writer, old io.ReaderAt, s Session, opt HashOptions) (Session, Stats, error) {
	return sendHashesSoft(ctx, nil, w, old, s, opt)
}

// sendHashesSoft is SendHashes that also stops, at a message boundary, when
// soft ends, telling the peer the cause.
func sendHashesSoft(ctx, soft context.Context, w io.Writer, old io.ReaderAt, s Session, opt HashOptions) (Session, Stats, error) {
	var st Stats
	s, err := s.withDefaults(true)
	if err != nil {
		return s, st, err
	}
	bulk, err := opt.bulk()
	if err != nil {
		return s, st, err
	}
	stopW := interrupt(ctx, w, false)
	mw := newMsgWriter(w)
	st, err = sendHashes(ctx, soft, mw, old, s, bulk, opt)
	stopW()
	if err != nil {
		sendAbort(ctx, w, mw, err)
	}
	st.HashBytes = mw.written()
	return s, st, ctxErr(ctx, err)
}

func sendHashes(ctx, soft context.Context, mw *msgWriter, old io.ReaderAt, s Session, bulk int, opt HashOptions) (Stats, error) {
	st := Stats{Offset: s.Start}
	hdr := encodeHeader(hashMagic, s, bulk)
	if err := mw.raw(hdr[:]); err != nil {
		return st, err
	}
	var (
		total = s.Chunks()
		next  int64
		lim   = newLimiter(opt.ReadLimit)
		msg   = make([]byte, 8, 8+HashSize*bulk)
	)
	feed := func(ctx context.Context, j *job) (bool, error) {
		if next == total {
			return false, nil
		}
		j.idx = next
		j.off, j.n = s.chunk(next)
		next++
		return true, nil
	}
	process := func(ctx context.Context, j *job) {
		buf := j.buf[:j.n]
		if j.err = lim.wait(ctx, j.n); j.err == nil {
			if j.err = readChunk(old, buf, j.off); j.err == nil {
				j.got = HashChunk(s.Seed, buf)
			}
		}
	}
	flush := func() error {
		if len(msg) == 8 {
			return nil
		}
		if err := mw.msg(msgHashes, msg, nil); err != nil {
			return err
		}
		msg = msg[:8]
		return mw.flush()
	}
	consume := func(j *job) error {
		if soft != nil && soft.Err() != nil {
			return context.Cause(soft)
		}
		if len(msg) == 8 {
			binary.LittleEndian.PutUint64(msg, uint64(j.off))
		}
		msg = append(msg, j.got[:]...)
		st.Chunks++
		st.Scanned += int64(j.n)
		st.Offset = j.off + int64(j.n)
		if len(msg) == cap(msg) {
			return flush()
		}
		return nil
	}
	workers := defaultWorkers(opt.Workers)
	p := pipeline{depth: depthFor(workers), workers: workers, chunkSize: s.ChunkSize, feed: feed, process: process, consume: consume}
	if err := p.run(ctx); err != nil {
		return st, err
	}
	if err := flush(); err != nil {
		return st, err
	}
	if err := mw.u64s(msgHashEnd, uint64(total)); err != nil {
		return st, err
	}
	return st, mw.flush()
}

// Sink receives the differing chunks of a session in ascending address
// order. *wdiff.SortedWriter is a Sink; IndexedSink adapts an
// *wdiff.IndexedWriter. s.Data is only valid during the call.
type Sink interface {
	WriteStored(rec wdiff.Record, s wdiff.Stored) error
}

// ReceiveDiff runs the receiving half of the hash side: it reads the data
// stream from r, checks that its header echoes s (which must be complete,
// seed included), and writes every record to sink, verifying ranges, order
// and checksums. opt.Checkpoint is called at each checkpoint. It returns
// when the data side's DataEnd has been checked.
func ReceiveDiff(ctx context.Context, r io.Reader, s Session, sink Sink, opt HashOptions) (Stats, error) {
	st := Stats{Offset: s.Start}
	if err := s.validate(); err != nil {
		return st, err
	}
	defer interrupt(ctx, r, true)()
	mr := newMsgReader(r)
	st, err := receiveDiff(ctx, mr, s, sink, opt)
	st.DataBytes = mr.off
	return st, ctxErr(ctx, err)
}

func receiveDiff(ctx context.Context, mr *msgReader, s Session, sink Sink, opt HashOptions) (Stats, error) {
	st := Stats{Offset: s.Start}
	got, _, err := mr.header(dataMagic)
	if err != nil {
		return st, err
	}
	if got != s {
		return st, errors.Wrapf(ErrSession, "data stream for chunk %d range [%d, %d) seed %016x, expected chunk %d range [%d, %d) seed %016x",
			got.ChunkSize, got.Start, got.End, got.Seed, s.ChunkSize, s.Start, s.End, s.Seed)
	}
	mr.max = recordFixed + s.ChunkSize
	var (
		nextRec = s.Start // lowest offset the next record may start at
		chunk   = int64(s.ChunkSize)
	)
	for {
		if err := ctx.Err(); err != nil {
			return st, err
		}
		t, body, err := mr.next()
		if err != nil {
			return st, err
		}
		switch t {
		case msgRecord:
			if len(body) < recordFixed {
				return st, errors.Wrapf(ErrCorrupt, "Record message of %d bytes", len(body))
			}
			rec := wdiff.Record{
				Addr:   binary.LittleEndian.Uint64(body[0:]),
				Blocks: binary.LittleEndian.Uint32(body[8:]),
				Flags:  wdiff.Flags(body[12]),
			}
			stored := wdiff.Stored{Codec: wdiff.Codec(body[13]), Checksum: binary.LittleEndian.Uint32(body[16:]), Data: body[recordFixed:]}
			if rec.Addr > uint64(s.End/LogicalBlockSize) {
				return st, errors.Wrapf(ErrProtocol, "record at block %d beyond the range end %d", rec.Addr, s.End)
			}
			off := int64(rec.Addr) * LogicalBlockSize
			_, n := s.chunk((off - s.Start) / chunk)
			switch {
			case off < nextRec || (off-s.Start)%chunk != 0:
				return st, errors.Wrapf(ErrProtocol, "record at %d: not the start of a chunk at or after %d", off, nextRec)
			case off >= s.End || int64(rec.Blocks)*LogicalBlockSize != int64(n):
				return st, errors.Wrapf(ErrProtocol, "record %d+%d: not a chunk of the range", rec.Addr, rec.Blocks)
			case rec.Flags != 0 && rec.Flags != wdiff.FlagAllZero:
				return st, errors.Wrapf(ErrProtocol, "record %d+%d: flags %#x", rec.Addr, rec.Blocks, rec.Flags)
			case body[14]|body[15] != 0:
				return st, errors.Wrapf(ErrCorrupt, "record %d+%d: reserved bytes set", rec.Addr, rec.Blocks)
			case rec.IsAllZero() && (len(stored.Data) != 0 || stored.Codec != wdiff.CodecNone || stored.Checksum != 0):
				return st, errors.Wrapf(ErrProtocol, "all-zero record %d+%d carries data", rec.Addr, rec.Blocks)
			case rec.IsNormal() && (!stored.Codec.Valid() || len(stored.Data) == 0 || len(stored.Data) > n ||
				(stored.Codec == wdiff.CodecNone && len(stored.Data) != n)):
				return st, errors.Wrapf(ErrProtocol, "record %d+%d: %d stored bytes with codec %d", rec.Addr, rec.Blocks, len(stored.Data), stored.Codec)
			case rec.IsNormal() && checksum.Sum(stored.Data, 0) != stored.Checksum:
				return st, errors.Wrapf(ErrCorrupt, "record %d+%d: data checksum %08x, given %08x",
					rec.Addr, rec.Blocks, checksum.Sum(stored.Data, 0), stored.Checksum)
			}
			if err := sink.WriteStored(rec, stored); err != nil {
				return st, errors.WithMessagef(err, "hashsync: write record %d+%d", rec.Addr, rec.Blocks)
			}
			nextRec = off + int64(n)
			st.DiffChunks++
			st.DiffBytes += int64(n)
			st.StoredBytes += int64(len(stored.Data))
			if rec.IsAllZero() {
				st.ZeroChunks++
			}
		case msgCheckpoint:
			var off uint64
			if err := u64s(t, body, &off); err != nil {
				return st, err
			}
			o := int64(off)
			if off > uint64(s.End) || o < st.Offset || o < nextRec || ((o-s.Start)%chunk != 0 && o != s.End) {
				return st, errors.Wrapf(ErrProtocol, "checkpoint at %d after %d (records up to %d)", off, st.Offset, nextRec)
			}
			st.Chunks += (o - st.Offset + chunk - 1) / chunk
			st.Scanned += o - st.Offset
			st.Offset = o
			if opt.Checkpoint != nil {
				st.DataBytes = mr.off
				if err := opt.Checkpoint(st); err != nil {
					return st, err
				}
			}
		case msgDataEnd:
			var chunks, diffs, diffBytes uint64
			if err := u64s(t, body, &chunks, &diffs, &diffBytes); err != nil {
				return st, err
			}
			if st.Offset != s.End || chunks != uint64(st.Chunks) || diffs != uint64(st.DiffChunks) || diffBytes != uint64(st.DiffBytes) {
				return st, errors.Wrapf(ErrProtocol, "DataEnd: %d chunks, %d differing (%d bytes) at offset %d; received %d, %d (%d) up to %d",
					chunks, diffs, diffBytes, s.End, st.Chunks, st.DiffChunks, st.DiffBytes, st.Offset)
			}
			return st, nil
		default:
			return st, errors.Wrapf(ErrProtocol, "%s message in the data stream", msgName(t))
		}
	}
}

// RunHashSide runs the whole hash side over one connection: the hash
// stream goes out on w while the data stream comes in on r, and the
// differing chunks go to sink. A zero s.Seed is replaced by a random one.
// The two halves run concurrently; the first failure stops both (blocked
// reads and writes are interrupted on streams with deadlines; close other
// streams to unblock them). The returned Stats are the receiving half's,
// with HashBytes from the sending half.
func RunHashSide(ctx context.Context, r io.Reader, w io.Writer, old io.ReaderAt, s Session, sink Sink, opt HashOptions) (Stats, error) {
	return runHashSide(ctx, r, w, old, s, sink, opt, nil)
}

// runHashSide is RunHashSide with a hook run after the hash stream was
// sent successfully (the wire adapter ends its bulk stream there).
//
// Each half, when it fails, lets the other end by itself for a moment
// before interrupting it: when the receiving half fails on its own (a sink
// error, a corrupt stream), the sending half stops at its next message and
// sends the cause to the peer, while the data stream is drained in case
// the peer is blocked writing to us; when the sending half fails, the peer
// normally answers with an Error message or by closing, which ends the
// receiving half. The error returned is the peer's Error message if there
// was one, else the first failure.
func runHashSide(ctx context.Context, r io.Reader, w io.Writer, old io.ReaderAt, s Session, sink Sink, opt HashOptions, afterSend func() error) (Stats, error) {
	s, err := s.withDefaults(true)
	if err != nil {
		return Stats{Offset: s.Start}, err
	}
	if _, err := opt.bulk(); err != nil {
		return Stats{Offset: s.Start}, err
	}
	hardCtx, hard := context.WithCancelCause(ctx)
	defer hard(nil)
	softCtx, soft := context.WithCancelCause(context.Background())
	defer soft(nil)
	var (
		wg        sync.WaitGroup
		sendSt    Stats
		sendErr   error
		sendTimer *time.Timer
		mu        sync.Mutex
		first     error
	)
	fail := func(err error) {
		mu.Lock()
		defer mu.Unlock()
		if first == nil {
			first = err
		}
	}
	wg.Go(func() {
		_, sendSt, sendErr = sendHashesSoft(hardCtx, softCtx, w, old, s, opt)
		if sendErr == nil && afterSend != nil {
			sendErr = afterSend()
		}
		if sendErr != nil {
			fail(sendErr)
			err := sendErr
			sendTimer = time.AfterFunc(abortTimeout, func() { hard(err) })
		}
	})
	st, recvErr := ReceiveDiff(hardCtx, r, s, sink, opt)
	if recvErr != nil {
		fail(recvErr)
		if ctx.Err() != nil || errors.Is(recvErr, ErrRemote) || errors.Is(recvErr, context.Canceled) {
			hard(recvErr)
		} else {
			soft(recvErr)
			stopLinger := linger(r)
			t := time.AfterFunc(abortTimeout, func() { hard(recvErr) })
			wg.Wait()
			t.Stop()
			stopLinger()
		}
	}
	wg.Wait()
	if sendTimer != nil {
		sendTimer.Stop()
	}
	st.HashBytes = sendSt.HashBytes
	switch {
	case ctx.Err() != nil:
		return st, ctxErr(ctx, firstErr(recvErr, sendErr, ctx.Err()))
	case errors.Is(recvErr, ErrRemote):
		return st, recvErr
	}
	return st, first
}

func firstErr(errs ...error) error {
	for _, e := range errs {
		if e != nil {
			return e
		}
	}
	return nil
}
