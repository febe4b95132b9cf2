package hashsync

import (
	"bytes"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"github.com/walb-go/walb/wdiff"
	"github.com/walb-go/walb/wire"
)

// wireSession runs both sides over a wire connection, followed by more of
// the exchange on the same connection (as dirty-hash-sync sends MetaSnap
// and waits for the ACK).
func wireSession(t *testing.T, opts *wire.Options, old, cur []byte, s Session, hopt HashOptions, dopt DataOptions) (Stats, []byte) {
	client, server := wirePair(t, opts)
	ctx := testCtx(t)
	type result struct {
		st  Stats
		err error
	}
	dataRes := make(chan result, 1)
	go func() {
		st, err := WireDataSide(ctx, client, bytes.NewReader(cur), dopt)
		if err == nil {
			err = client.SendString(ctx, "meta-snap")
		}
		if err == nil {
			err = client.RecvAck(ctx)
		}
		dataRes <- result{st, err}
	}()
	sink := newDiffSink(t, false)
	st, err := WireHashSide(ctx, server, bytes.NewReader(old), s, sink, hopt)
	require.NoError(t, err)
	msg, err := server.RecvString(ctx)
	require.NoError(t, err)
	require.Equal(t, "meta-snap", msg)
	require.NoError(t, server.SendAck(ctx))
	d := <-dataRes
	require.NoError(t, d.err)
	require.Equal(t, d.st, st)
	return st, sink.close(t)
}

// With the smallest MaxFrame, 128 KiB records travel in several Chunk
// frames.
func TestWireSession(t *testing.T) {
	const chunk = 128 << 10
	rng := rand.New(rand.NewPCG(21, 21))
	old, cur, changed := randImages(rng, 21*chunk+1024, chunk)
	st, diff := wireSession(t, &wire.Options{MaxFrame: wire.MinMaxFrame}, old, cur, Session{ChunkSize: chunk, End: int64(len(old))},
		HashOptions{BulkChunks: 4}, DataOptions{Compression: wdiff.DefaultCompression, ExpectEnd: int64(len(cur))})
	require.EqualValues(t, changed, st.DiffChunks)
	require.Equal(t, cur, applyDiff(t, old, diff))
}

// A throttled data side sends nothing for longer than the I/O timeout;
// the Dummy frames of the adapters keep the hash side waiting.
func TestWireKeepAlive(t *testing.T) {
	rng := rand.New(rand.NewPCG(22, 22))
	old, cur, _ := randImages(rng, 512<<10, 4096)
	start := time.Now()
	// 256 KiB between checkpoints at 1 MiB/s: 250 ms of silence on the data
	// stream each time, more than the 100 ms timeout.
	st, diff := wireSession(t, &wire.Options{IOTimeout: 100 * time.Millisecond}, old, cur, Session{ChunkSize: 4096, End: int64(len(old))},
		HashOptions{BulkChunks: 64}, DataOptions{ReadLimit: 1 << 20, Workers: 1})
	// The limiter guarantees the premise (a lower bound, not a timing race).
	require.Greater(t, time.Since(start), 400*time.Millisecond)
	require.EqualValues(t, len(old), st.Offset)
	require.Equal(t, cur, applyDiff(t, old, diff))
}

// A failure on the data side reaches the hash side over the wire.
func TestWireDataSideFailure(t *testing.T) {
	old := make([]byte, 1<<20)
	client, server := wirePair(t, nil)
	ctx := testCtx(t)
	derr := make(chan error, 1)
	go func() {
		_, err := WireDataSide(ctx, client, bytes.NewReader(old[:1<<19]), DataOptions{})
		derr <- err
	}()
	_, err := WireHashSide(ctx, server, bytes.NewReader(old), Session{ChunkSize: 4096, End: 1 << 20}, &discardSink{}, HashOptions{})
	require.ErrorIs(t, err, ErrRemote)
	require.Contains(t, err.Error(), "shorter")
	require.ErrorIs(t, <-derr, ErrShortImage)
}
