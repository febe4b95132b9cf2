package hashsync

import (
	"context"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/walb-go/walb/wdiff"
)

func BenchmarkHashChunk(b *testing.B) {
	buf := make([]byte, DefaultChunkSize)
	rand.NewChaCha8([32]byte{1}).Read(buf)
	b.SetBytes(int64(len(buf)))
	for b.Loop() {
		_ = HashChunk(12345, buf)
	}
}

func BenchmarkSipHash128(b *testing.B) {
	buf := make([]byte, 1<<20)
	rand.NewChaCha8([32]byte{2}).Read(buf)
	d := NewSipHash128()
	b.SetBytes(int64(len(buf)))
	for b.Loop() {
		d.Reset()
		d.Write(buf)
		_ = d.Sum128()
	}
}

// benchSize reads HASHSYNC_BENCH_SIZE ("2G", "512M", bytes): the image
// size of BenchmarkHashSyncTCP, 64 MiB by default so that an ordinary
// benchmark run stays short.
func benchSize(b *testing.B) int64 {
	s := os.Getenv("HASHSYNC_BENCH_SIZE")
	if s == "" {
		return 64 << 20
	}
	mult := int64(1)
	switch {
	case strings.HasSuffix(s, "G"):
		mult, s = 1<<30, strings.TrimSuffix(s, "G")
	case strings.HasSuffix(s, "M"):
		mult, s = 1<<20, strings.TrimSuffix(s, "M")
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		b.Fatalf("HASHSYNC_BENCH_SIZE=%q", os.Getenv("HASHSYNC_BENCH_SIZE"))
	}
	return n * mult
}

// writeBenchImages writes an old image of random data and a new one with
// 1% of its chunks (randomly placed) rewritten with random data, and
// returns the number of changed chunks.
func writeBenchImages(b *testing.B, dir string, size int64, chunk int) (oldPath, newPath string, changed int64) {
	oldPath, newPath = filepath.Join(dir, "old.img"), filepath.Join(dir, "new.img")
	of, err := os.Create(oldPath)
	if err != nil {
		b.Fatal(err)
	}
	nf, err := os.Create(newPath)
	if err != nil {
		b.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(1, 2))
	data := rand.NewChaCha8([32]byte{3})
	buf := make([]byte, chunk)
	mod := make([]byte, chunk)
	for off := int64(0); off < size; off += int64(chunk) {
		data.Read(buf)
		if _, err := of.Write(buf); err != nil {
			b.Fatal(err)
		}
		w := buf
		if rng.IntN(100) == 0 {
			data.Read(mod)
			w = mod
			changed++
		}
		if _, err := nf.Write(w); err != nil {
			b.Fatal(err)
		}
	}
	if err := of.Close(); err != nil {
		b.Fatal(err)
	}
	if err := nf.Close(); err != nil {
		b.Fatal(err)
	}
	return oldPath, newPath, changed
}

// rawRead reads the whole file sequentially in 1 MiB reads, the baseline
// a scan of the image cannot beat.
func rawRead(b *testing.B, path string) time.Duration {
	f, err := os.Open(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	start := time.Now()
	for off := int64(0); ; off += int64(len(buf)) {
		n, err := f.ReadAt(buf, off)
		if err == io.EOF || n < len(buf) {
			break
		}
		if err != nil {
			b.Fatal(err)
		}
	}
	return time.Since(start)
}

// BenchmarkHashSyncTCP runs a whole session over a loopback TCP connection
// between two image files (both sides on this machine, so they share its
// CPUs and page cache), 1% of the chunks changed. It reports the session's
// throughput against a raw sequential read of the new image measured in the
// same iteration, and the bytes sent against the bytes changed. Set
// HASHSYNC_BENCH_SIZE=2G for the benchmark. Both sides share this
// machine's CPUs and memory bandwidth, so the session reads two images in
// the time the baseline reads one: compare with BenchmarkSendHashes (one
// side's scan against the same baseline) and with sync/raw-both-%, the
// session against reading both images concurrently.
func BenchmarkHashSyncTCP(b *testing.B) {
	size := benchSize(b)
	chunk := DefaultChunkSize
	oldPath, newPath, changed := writeBenchImages(b, b.TempDir(), size, chunk)
	old, err := os.Open(oldPath)
	if err != nil {
		b.Fatal(err)
	}
	defer old.Close()
	cur, err := os.Open(newPath)
	if err != nil {
		b.Fatal(err)
	}
	defer cur.Close()
	b.SetBytes(size)
	var syncTime, rawTime, bothTime time.Duration
	var st Stats
	for b.Loop() {
		b.StopTimer()
		rawTime += rawRead(b, newPath)
		// What this machine gives for reading both images at once, which
		// the session has to do.
		start := time.Now()
		var wg sync.WaitGroup
		for _, p := range []string{oldPath, newPath} {
			wg.Go(func() { rawRead(b, p) })
		}
		wg.Wait()
		bothTime += time.Since(start)
		hc, dc := tcpPair(b)
		ctx := context.Background()
		b.StartTimer()
		start = time.Now()
		done := make(chan error, 1)
		go func() {
			dopt := DefaultDataOptions()
			dopt.Workers = benchWorkers
			_, err := SendDiff(ctx, dc, dc, cur, dopt)
			done <- err
		}()
		sw, err := wdiff.NewSortedWriter(io.Discard, wdiff.FileHeader{}, wdiff.DefaultCompression)
		if err != nil {
			b.Fatal(err)
		}
		st, err = RunHashSide(ctx, hc, hc, old, Session{ChunkSize: chunk, End: size}, sw, HashOptions{Workers: benchWorkers})
		if err != nil {
			b.Fatal(err)
		}
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		if err := sw.Close(); err != nil {
			b.Fatal(err)
		}
		syncTime += time.Since(start)
		hc.Close()
		dc.Close()
	}
	if st.DiffChunks != changed {
		b.Fatalf("%d chunks differ, %d changed", st.DiffChunks, changed)
	}
	changedBytes := float64(changed) * float64(chunk)
	mb := float64(size) / (1 << 20)
	b.ReportMetric(mb/syncTime.Seconds()*float64(b.N), "sync-MiB/s")
	b.ReportMetric(mb/rawTime.Seconds()*float64(b.N), "raw-MiB/s")
	b.ReportMetric(100*rawTime.Seconds()/syncTime.Seconds(), "sync/raw-%")
	b.ReportMetric(100*bothTime.Seconds()/syncTime.Seconds(), "sync/raw-both-%")
	b.ReportMetric(float64(st.DataBytes)/changedBytes, "sent/changed")
	b.ReportMetric(float64(st.DataBytes+st.HashBytes)/changedBytes, "(sent+hashes)/changed")
	b.ReportMetric(float64(st.HashBytes), "hash-bytes")
}

// BenchmarkSendHashes measures one side's scan of an image file (read and
// hash every chunk, stream the hashes), against a raw read of the file in
// the same iteration.
func BenchmarkSendHashes(b *testing.B) {
	size := benchSize(b)
	oldPath, _, _ := writeBenchImages(b, b.TempDir(), size, DefaultChunkSize)
	f, err := os.Open(oldPath)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	b.SetBytes(size)
	var scanTime, rawTime time.Duration
	for b.Loop() {
		b.StopTimer()
		rawTime += rawRead(b, oldPath)
		b.StartTimer()
		start := time.Now()
		if _, _, err := SendHashes(context.Background(), io.Discard, f, Session{End: size}, HashOptions{}); err != nil {
			b.Fatal(err)
		}
		scanTime += time.Since(start)
	}
	b.ReportMetric(100*rawTime.Seconds()/scanTime.Seconds(), "scan/raw-%")
}

// benchWorkers is HASHSYNC_BENCH_WORKERS, the Workers of both sides in
// BenchmarkHashSyncTCP (0: the default).
var benchWorkers = func() int {
	n, _ := strconv.Atoi(os.Getenv("HASHSYNC_BENCH_WORKERS"))
	return n
}()
