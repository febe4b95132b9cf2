package hashsync

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/pkg/errors"
	"github.com/stretchr/testify/require"
	"github.com/walb-go/walb/wdiff"
)

// Property: for random images, chunk sizes, codecs, transports and sink
// layouts, applying the produced wdiff to the old image gives the new one,
// and exactly the differing chunks travel.
func TestSyncProperty(t *testing.T) {
	codecs := []wdiff.Codec{wdiff.CodecNone, wdiff.CodecSnappy, wdiff.CodecZstd, wdiff.CodecLZ4, wdiff.CodecGzip}
	partialChanged := 0
	defer func() { require.Positive(t, partialChanged, "no case changed a partial last chunk") }()
	for i := range 24 {
		rng := rand.New(rand.NewPCG(uint64(i), 7))
		chunk := (1 + rng.IntN(32)) * LogicalBlockSize
		size := (rng.IntN(40*chunk) / LogicalBlockSize) * LogicalBlockSize
		tr := transports[i%len(transports)]
		indexed := i%2 == 1
		codec := codecs[i%len(codecs)]
		t.Run(fmt.Sprintf("%d_%s_chunk%d_size%d_%s_indexed%v", i, tr.name, chunk, size, codec, indexed), func(t *testing.T) {
			old, cur, changed := randImages(rng, size, chunk)
			if last := size / chunk * chunk; last < size && !bytes.Equal(old[last:], cur[last:]) {
				partialChanged++
			}
			s := Session{ChunkSize: chunk, End: int64(size)}
			hopt := HashOptions{BulkChunks: 1 + rng.IntN(9), Workers: 1 + rng.IntN(4)}
			dopt := DataOptions{Compression: wdiff.Compression{Codec: codec}, Workers: 1 + rng.IntN(4), ExpectEnd: int64(size)}
			res := runSync(t, tr, bytes.NewReader(old), bytes.NewReader(cur), s, hopt, dopt, indexed)
			require.Equal(t, cur, applyDiff(t, old, res.diff))
			require.EqualValues(t, changed, res.dataSt.DiffChunks)
			require.EqualValues(t, (size+chunk-1)/chunk, res.dataSt.Chunks)
			require.EqualValues(t, size, res.dataSt.Scanned)
			require.EqualValues(t, size, res.hashSt.Offset)
			// Both halves count the same.
			require.Equal(t, res.dataSt, res.hashSt)
		})
	}
}

// A session over a sub-range with a start that is not chunk aligned, and
// images larger than the range: only the range is compared.
func TestSyncSubRange(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 3))
	old, cur, _ := randImages(rng, 64<<10, 4096)
	s := Session{ChunkSize: 4096, Start: 3 * 512, End: 50 * 1024}
	res := runSync(t, transports[0], bytes.NewReader(old), bytes.NewReader(cur), s, HashOptions{}, DefaultDataOptions(), false)
	want := bytes.Clone(old)
	copy(want[s.Start:s.End], cur[s.Start:s.End])
	require.Equal(t, want, applyDiff(t, old, res.diff))
	require.EqualValues(t, s.End-s.Start, res.dataSt.Scanned)
}

func TestSyncEmptyAndIdentical(t *testing.T) {
	img := bytes.Repeat([]byte("walb"), 1<<14)
	for _, s := range []Session{{End: 0}, {ChunkSize: 1024, End: int64(len(img))}} {
		res := runSync(t, transports[0], bytes.NewReader(img), bytes.NewReader(img), s, HashOptions{}, DefaultDataOptions(), false)
		require.Zero(t, res.dataSt.DiffChunks)
		require.Equal(t, img, applyDiff(t, img, res.diff))
		require.Equal(t, res.dataSt, res.hashSt)
	}
}

// The records of the produced wdiff are the differing chunks, in address
// order, all-zero chunks without data.
func TestSyncRecords(t *testing.T) {
	old := bytes.Repeat([]byte{1}, 10*1024)
	cur := bytes.Clone(old)
	clear(cur[2048:3072])         // chunk 2: zero
	cur[5000] = 9                 // chunk 4
	copy(cur[9*1024:], []byte{7}) // chunk 9 (the last)
	s := Session{ChunkSize: 1024, End: int64(len(old))}
	res := runSync(t, transports[1], bytes.NewReader(old), bytes.NewReader(cur), s, HashOptions{BulkChunks: 3}, DefaultDataOptions(), false)
	r, err := wdiff.NewReader(bytes.NewReader(res.diff), int64(len(res.diff)))
	require.NoError(t, err)
	var recs []wdiff.Record
	for {
		x, err := r.Next()
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
		recs = append(recs, x.Record)
	}
	require.Equal(t, []wdiff.Record{{Addr: 4, Blocks: 2, Flags: wdiff.FlagAllZero}, {Addr: 8, Blocks: 2}, {Addr: 18, Blocks: 2}}, recs)
	require.EqualValues(t, 1, res.dataSt.ZeroChunks)
}

// The data side's device is written while it is scanned. The result is
// dirty: some chunks hold data from before a write, others from after it.
// It becomes the final image once the writes made during the scan are
// applied on top of it, which is what WalB's logs of that period do.
func TestSyncConcurrentWrites(t *testing.T) {
	const size, chunk = 1 << 20, 4096
	rng := rand.New(rand.NewPCG(5, 5))
	old, cur, _ := randImages(rng, size, chunk)
	dev := &memImage{b: cur}
	type write struct {
		off  int64
		data []byte
	}
	var (
		mu     sync.Mutex
		log    []write
		stop   = make(chan struct{})
		wg     sync.WaitGroup
		writes atomic.Int64
	)
	wg.Go(func() {
		wr := rand.New(rand.NewPCG(6, 6))
		for {
			select {
			case <-stop:
				return
			default:
			}
			n := (1 + wr.IntN(16)) * 512
			off := int64(wr.IntN(size-n)) / 512 * 512
			data := make([]byte, n)
			for i := range data {
				data[i] = byte(wr.Uint32())
			}
			// Logged before it is visible, as the WalB log is written
			// before the data device.
			mu.Lock()
			log = append(log, write{off, data})
			mu.Unlock()
			_, _ = dev.WriteAt(data, off)
			writes.Add(1)
		}
	})
	// Slow the scan down so that writes land during it.
	s := Session{ChunkSize: chunk, End: size}
	res := runSync(t, transports[0], bytes.NewReader(old), dev, s, HashOptions{BulkChunks: 4}, DataOptions{Workers: 2, ReadLimit: 64 << 20}, true)
	close(stop)
	wg.Wait()
	require.Positive(t, writes.Load())
	got := applyDiff(t, old, res.diff)
	for _, w := range log {
		copy(got[w.off:], w.data)
	}
	require.Equal(t, dev.snapshot(), got)
}

// Cancelling either side stops it promptly with context.Canceled, over
// streams that can be interrupted (net.Pipe, TCP). The cancelled side tells
// its peer, or its caller closes the connection as callers do after a
// failure; either way the peer stops too.
func TestSyncCancel(t *testing.T) {
	for _, tr := range transports[:2] {
		for _, side := range []string{"hash", "data"} {
			t.Run(tr.name+"_"+side, func(t *testing.T) {
				rng := rand.New(rand.NewPCG(8, 8))
				old, cur, _ := randImages(rng, 4<<20, 4096)
				hr, hw, dr, dw := tr.open(t)
				base := testCtx(t)
				hctx, hcancel := context.WithCancel(base)
				dctx, dcancel := context.WithCancel(base)
				defer hcancel()
				defer dcancel()
				var checkpoints atomic.Int64
				hopt := HashOptions{BulkChunks: 2, Checkpoint: func(Stats) error {
					if checkpoints.Add(1) == 3 && side == "hash" {
						hcancel()
					}
					return nil
				}}
				dopt := DataOptions{Workers: 2, Progress: func(Stats) {
					if checkpoints.Load() >= 3 && side == "data" {
						dcancel()
					}
				}}
				var derr error
				var dst Stats
				done := make(chan struct{})
				go func() {
					defer close(done)
					dst, derr = SendDiff(dctx, dr, dw, bytes.NewReader(cur), dopt)
					dr.(io.Closer).Close()
				}()
				sink := newDiffSink(t, false)
				hst, herr := RunHashSide(hctx, hr, hw, bytes.NewReader(old), Session{ChunkSize: 4096, End: 4 << 20}, sink, hopt)
				hr.(io.Closer).Close()
				<-done
				if side == "hash" {
					require.ErrorIs(t, herr, context.Canceled)
					require.Error(t, derr)
				} else {
					require.ErrorIs(t, derr, context.Canceled)
					require.Error(t, herr)
					if tr.name == "netpipe" {
						// TCP may reset the connection before the message is
						// read; a pipe delivers it.
						require.ErrorIs(t, herr, ErrRemote, "data side: %v", derr)
						require.Contains(t, herr.Error(), "context canceled")
					}
				}
				require.Less(t, hst.Offset, int64(4<<20))
				require.Less(t, dst.Offset, int64(4<<20))
			})
		}
	}
}

// segmentSink cuts the wdiff at checkpoints: each finished segment is a
// complete sorted wdiff, the way a caller makes progress durable.
type segmentSink struct {
	t        testing.TB
	segments [][]byte
	cur      *diffSink
}

func (s *segmentSink) WriteStored(rec wdiff.Record, st wdiff.Stored) error {
	if s.cur == nil {
		s.cur = newDiffSink(s.t, false)
	}
	return s.cur.WriteStored(rec, st)
}

func (s *segmentSink) commit() {
	if s.cur != nil {
		s.segments = append(s.segments, s.cur.close(s.t))
		s.cur = nil
	}
}

// Resume: a session interrupted after some checkpoints leaves committed
// segments and a persisted offset; a new session from that offset (new
// seed) produces the rest, and all segments applied in order give the new
// image.
func TestSyncResume(t *testing.T) {
	const size, chunk = 3<<20 + 4608, 8192
	rng := rand.New(rand.NewPCG(9, 9))
	old, cur, _ := randImages(rng, size, chunk)
	sink := &segmentSink{t: t}
	var persisted int64
	errStop := errors.New("simulated crash")
	n := 0
	hopt := HashOptions{BulkChunks: 16, Checkpoint: func(st Stats) error {
		sink.commit()
		persisted = st.Offset
		if n++; n == 5 {
			return errStop
		}
		return nil
	}}
	run := func(s Session) (Stats, error) {
		hr, hw, dr, dw := tcpTransport(t)
		ctx := testCtx(t)
		done := make(chan struct{})
		go func() {
			defer close(done)
			_, _ = SendDiff(ctx, dr, dw, bytes.NewReader(cur), DefaultDataOptions())
		}()
		st, err := RunHashSide(ctx, hr, hw, bytes.NewReader(old), s, sink, hopt)
		hr.(io.Closer).Close()
		<-done
		return st, err
	}
	_, err := run(Session{ChunkSize: chunk, End: size})
	require.ErrorIs(t, err, errStop)
	require.EqualValues(t, 5*16*chunk, persisted)
	sink.cur = nil // the uncommitted tail is lost in the crash
	n = -1 << 30
	st, err := run(Session{ChunkSize: chunk, Start: persisted, End: size})
	require.NoError(t, err)
	sink.commit()
	require.EqualValues(t, size-5*16*chunk, st.Scanned)
	got := old
	for _, seg := range sink.segments {
		got = applyDiff(t, got, seg)
	}
	require.Equal(t, cur, got)
}

// Each session draws its own seed, and the seed changes every hash.
func TestSeedPerSession(t *testing.T) {
	seen := map[uint64]bool{}
	for range 64 {
		s, err := Session{End: 0}.withDefaults(true)
		require.NoError(t, err)
		require.NotZero(t, s.Seed)
		require.False(t, seen[s.Seed])
		seen[s.Seed] = true
	}
	// The seed announced in the stream is the one SendHashes reports.
	var a, b bytes.Buffer
	img := bytes.NewReader(make([]byte, 4096))
	s1, _, err := SendHashes(context.Background(), &a, img, Session{ChunkSize: 4096, End: 4096}, HashOptions{})
	require.NoError(t, err)
	s2, _, err := SendHashes(context.Background(), &b, img, Session{ChunkSize: 4096, End: 4096}, HashOptions{})
	require.NoError(t, err)
	require.NotEqual(t, s1.Seed, s2.Seed)
	got1, _, err := decodeHeader(a.Bytes()[:headerSize], hashMagic)
	require.NoError(t, err)
	require.Equal(t, s1, got1)
	require.NotEqual(t, a.Bytes()[headerSize:], b.Bytes()[headerSize:], "the same chunk hashes differently under another seed")
	// A given seed is kept.
	s3, _, err := SendHashes(context.Background(), io.Discard, img, Session{ChunkSize: 4096, End: 4096, Seed: 42}, HashOptions{})
	require.NoError(t, err)
	require.EqualValues(t, 42, s3.Seed)
}
