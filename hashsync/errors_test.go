package hashsync

import (
	"bytes"
	"context"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"testing"
	"testing/iotest"

	"github.com/pkg/errors"
	"github.com/stretchr/testify/require"
	"github.com/walb-go/walb/wdiff"
)

// recordStreams runs both halves one after the other into buffers and
// returns the session and the two streams.
func recordStreams(t testing.TB, old, cur []byte, s Session, hopt HashOptions, dopt DataOptions) (Session, []byte, []byte) {
	t.Helper()
	var hs, ds bytes.Buffer
	s, _, err := SendHashes(context.Background(), &hs, bytes.NewReader(old), s, hopt)
	require.NoError(t, err)
	_, err = SendDiff(context.Background(), bytes.NewReader(hs.Bytes()), &ds, bytes.NewReader(cur), dopt)
	require.NoError(t, err)
	return s, hs.Bytes(), ds.Bytes()
}

type discardSink struct{ n int }

func (d *discardSink) WriteStored(wdiff.Record, wdiff.Stored) error { d.n++; return nil }

func streamErr(err error) bool {
	for _, e := range []error{ErrCorrupt, ErrTruncated, ErrProtocol, ErrSession} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

func smallStreams(t testing.TB) (Session, []byte, []byte, []byte) {
	rng := rand.New(rand.NewPCG(11, 11))
	old, cur, _ := randImages(rng, 9*1024+512, 1024)
	s, hs, ds := recordStreams(t, old, cur, Session{ChunkSize: 1024, Start: 512, End: int64(len(old))}, HashOptions{BulkChunks: 3}, DefaultDataOptions())
	return s, hs, ds, cur
}

// Every single corrupted byte and every truncation of either stream is
// detected, with a sentinel error.
func TestStreamCorruptionDetected(t *testing.T) {
	s, hs, ds, cur := smallStreams(t)
	_, err := ReceiveDiff(context.Background(), bytes.NewReader(ds), s, &discardSink{}, HashOptions{})
	require.NoError(t, err)
	for i := range ds {
		b := bytes.Clone(ds)
		b[i] ^= 0x20
		_, err := ReceiveDiff(context.Background(), bytes.NewReader(b), s, &discardSink{}, HashOptions{})
		require.True(t, streamErr(err), "data byte %d: %v", i, err)
	}
	for n := range len(ds) {
		_, err := ReceiveDiff(context.Background(), iotest.HalfReader(bytes.NewReader(ds[:n])), s, &discardSink{}, HashOptions{})
		require.True(t, streamErr(err), "data cut at %d: %v", n, err)
	}
	for i := range hs {
		b := bytes.Clone(hs)
		b[i] ^= 0x01
		_, err := SendDiff(context.Background(), bytes.NewReader(b), io.Discard, bytes.NewReader(cur), DataOptions{})
		require.True(t, streamErr(err), "hash byte %d: %v", i, err)
	}
	for n := range len(hs) {
		_, err := SendDiff(context.Background(), iotest.OneByteReader(bytes.NewReader(hs[:n])), io.Discard, bytes.NewReader(cur), DataOptions{})
		require.True(t, streamErr(err), "hash cut at %d: %v", n, err)
	}
}

func TestStreamSessionChecks(t *testing.T) {
	s, hs, ds, cur := smallStreams(t)
	other := s
	other.Seed++
	_, err := ReceiveDiff(context.Background(), bytes.NewReader(ds), other, &discardSink{}, HashOptions{})
	require.ErrorIs(t, err, ErrSession)
	_, err = SendDiff(context.Background(), bytes.NewReader(hs), io.Discard, bytes.NewReader(cur), DataOptions{ExpectEnd: s.End + 512})
	require.ErrorIs(t, err, ErrSession)
	_, err = SendDiff(context.Background(), bytes.NewReader(hs), io.Discard, bytes.NewReader(cur), DataOptions{ExpectChunkSize: 4096})
	require.ErrorIs(t, err, ErrSession)
	// A data stream fed back as a hash stream, and the reverse.
	_, err = SendDiff(context.Background(), bytes.NewReader(ds), io.Discard, bytes.NewReader(cur), DataOptions{})
	require.ErrorIs(t, err, ErrCorrupt)
	_, err = ReceiveDiff(context.Background(), bytes.NewReader(hs), s, &discardSink{}, HashOptions{})
	require.ErrorIs(t, err, ErrCorrupt)
	// A newer version.
	b := bytes.Clone(hs)
	b[4] = 2
	fixCRC(b[:headerSize])
	_, err = SendDiff(context.Background(), bytes.NewReader(b), io.Discard, bytes.NewReader(cur), DataOptions{})
	require.ErrorIs(t, err, ErrSession)
}

func fixCRC(h []byte) {
	c := crc32.Checksum(h[:44], castagnoli)
	h[44], h[45], h[46], h[47] = byte(c), byte(c>>8), byte(c>>16), byte(c>>24)
}

func TestInvalidOptions(t *testing.T) {
	ctx := context.Background()
	img := bytes.NewReader(make([]byte, 4096))
	for _, s := range []Session{
		{ChunkSize: 1000, End: 4096},
		{ChunkSize: MaxChunkSize + 512, End: 4096},
		{Start: 100, End: 4096},
		{Start: 4096, End: 512},
		{End: 513},
	} {
		_, _, err := SendHashes(ctx, io.Discard, img, s, HashOptions{})
		require.ErrorIs(t, err, ErrInvalid, "%+v", s)
	}
	for _, o := range []HashOptions{{BulkChunks: MaxBulkChunks + 1}, {BulkChunks: -1}, {Workers: -1}, {ReadLimit: -1}} {
		_, _, err := SendHashes(ctx, io.Discard, img, Session{End: 4096}, o)
		require.ErrorIs(t, err, ErrInvalid, "%+v", o)
		_, err = RunHashSide(ctx, bytes.NewReader(nil), io.Discard, img, Session{End: 4096}, &discardSink{}, o)
		require.ErrorIs(t, err, ErrInvalid, "%+v", o)
	}
	_, err := SendDiff(ctx, bytes.NewReader(nil), io.Discard, img, DataOptions{Workers: -1})
	require.ErrorIs(t, err, ErrInvalid)
	_, err = ReceiveDiff(ctx, bytes.NewReader(nil), Session{ChunkSize: 512, End: 4096}, &discardSink{}, HashOptions{})
	require.ErrorIs(t, err, ErrInvalid, "ReceiveDiff needs the seed")
	_, err = SendDiff(ctx, bytes.NewReader(nil), io.Discard, img, DataOptions{Compression: wdiff.Compression{Codec: 9}})
	require.ErrorIs(t, err, ErrInvalid)
}

// A short image on either side fails that side with ErrShortImage, and the
// peer learns it from the Error message.
func TestShortImages(t *testing.T) {
	full := make([]byte, 64<<10)
	short := full[:40<<10]
	s := Session{ChunkSize: 4096, End: int64(len(full))}
	for _, tc := range []struct {
		name     string
		old, cur []byte
	}{{"old", short, full}, {"new", full, short}} {
		t.Run(tc.name, func(t *testing.T) {
			hr, hw, dr, dw := netPipeTransport(t)
			ctx := testCtx(t)
			var derr error
			done := make(chan struct{})
			go func() {
				defer close(done)
				_, derr = SendDiff(ctx, dr, dw, bytes.NewReader(tc.cur), DataOptions{})
				dr.(io.Closer).Close()
			}()
			_, herr := RunHashSide(ctx, hr, hw, bytes.NewReader(tc.old), s, &discardSink{}, HashOptions{})
			hr.(io.Closer).Close()
			<-done
			if tc.name == "old" {
				require.ErrorIs(t, herr, ErrShortImage)
				require.ErrorIs(t, derr, ErrRemote)
				require.Contains(t, derr.Error(), "shorter")
			} else {
				require.ErrorIs(t, derr, ErrShortImage)
				require.ErrorIs(t, herr, ErrRemote)
				require.Contains(t, herr.Error(), "shorter")
			}
		})
	}
}

type failingSink struct{ after int }

var errSinkFull = errors.New("disk full")

func (f *failingSink) WriteStored(wdiff.Record, wdiff.Stored) error {
	if f.after--; f.after < 0 {
		return errSinkFull
	}
	return nil
}

// A failing sink stops the session; the data side is told why.
func TestSinkFailure(t *testing.T) {
	rng := rand.New(rand.NewPCG(12, 12))
	old, cur, _ := randImages(rng, 1<<20, 4096)
	hr, hw, dr, dw := netPipeTransport(t)
	ctx := testCtx(t)
	var derr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, derr = SendDiff(ctx, dr, dw, bytes.NewReader(cur), DataOptions{})
		dr.(io.Closer).Close()
	}()
	_, herr := RunHashSide(ctx, hr, hw, bytes.NewReader(old), Session{ChunkSize: 4096, End: 1 << 20}, &failingSink{after: 3}, HashOptions{})
	hr.(io.Closer).Close()
	<-done
	require.ErrorIs(t, herr, errSinkFull)
	require.ErrorIs(t, derr, ErrRemote)
	require.Contains(t, derr.Error(), "disk full")
}

// A data side that refuses the session (another device size) tells the
// hash side why, although it has not sent its header yet.
func TestSessionRefused(t *testing.T) {
	img := make([]byte, 64<<10)
	hr, hw, dr, dw := netPipeTransport(t)
	ctx := testCtx(t)
	var derr error
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, derr = SendDiff(ctx, dr, dw, bytes.NewReader(img), DataOptions{ExpectEnd: 128 << 10})
		dr.(io.Closer).Close()
	}()
	_, herr := RunHashSide(ctx, hr, hw, bytes.NewReader(img), Session{End: int64(len(img))}, &discardSink{}, HashOptions{})
	hr.(io.Closer).Close()
	<-done
	require.ErrorIs(t, derr, ErrSession)
	require.ErrorIs(t, herr, ErrRemote)
	require.Contains(t, herr.Error(), "the session ends at 65536, this image at 131072")
}
