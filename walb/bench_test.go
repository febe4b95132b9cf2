package walb

import (
	"context"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
)

// The benchmarks compare the device with raw pwrite to the same kind of
// file, so that the ratio can be read: BenchmarkRawSeq1M against
// BenchmarkDeviceSeq1M, BenchmarkRawRand4K against BenchmarkDeviceRand4K.
// Files live in the test's temporary directory and are filled first, so
// that both sides overwrite allocated blocks in the page cache.

const benchBytes = 256 << 20

func benchFile(b *testing.B, dir, name string, size int64) string {
	b.Helper()
	p := filepath.Join(dir, name)
	f, err := os.Create(p)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4<<20)
	for off := int64(0); off < size; off += int64(len(buf)) {
		if _, err := f.WriteAt(buf, off); err != nil {
			b.Fatal(err)
		}
	}
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
	return p
}

type writerAt interface {
	WriteAt(p []byte, off int64) (int, error)
}

func benchDevice(b *testing.B) (*Device, string) {
	dir := b.TempDir()
	l := benchFile(b, dir, "ldev", benchBytes)
	d := benchFile(b, dir, "ddev", benchBytes)
	if _, err := FormatLogDevice(l, d, FormatOptions{PBS: 4096}); err != nil {
		b.Fatal(err)
	}
	dev, err := Open(context.Background(), l, d, Options{Logger: quietLogger(), MaxPendingMB: benchEnv("WALB_BENCH_PENDING"), LogFlushIntervalMB: benchEnv("WALB_BENCH_FLUSHMB")})
	if err != nil {
		b.Fatal(err)
	}
	return dev, d
}

func seq1M(b *testing.B, w writerAt) {
	buf := make([]byte, 1<<20)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	n := int64(benchBytes / len(buf))
	b.SetBytes(int64(len(buf)))
	b.ResetTimer()
	for i := range int64(b.N) {
		if _, err := w.WriteAt(buf, (i%n)*int64(len(buf))); err != nil {
			b.Fatal(err)
		}
	}
}

// rand4K writes 4 KiB blocks at random offsets from 32 goroutines.
func rand4K(b *testing.B, w writerAt) {
	var seed atomic.Uint64
	b.SetBytes(4096)
	b.SetParallelism(max(1, 32/runtimeProcs()))
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		rng := rand.New(rand.NewPCG(seed.Add(1), 1))
		buf := make([]byte, 4096)
		for i := range buf {
			buf[i] = byte(rng.Uint32())
		}
		for pb.Next() {
			off := rng.Int64N(benchBytes/4096) * 4096
			if _, err := w.WriteAt(buf, off); err != nil {
				b.Error(err)
				return
			}
		}
	})
}

func BenchmarkRawSeq1M(b *testing.B) {
	f, err := os.OpenFile(benchFile(b, b.TempDir(), "raw", benchBytes), os.O_RDWR, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	seq1M(b, f)
}

// syncEvery4M is raw pwrite with an fdatasync every 4 MiB: the durable
// log bandwidth the device needs, since data may reach the data device
// only after its log is durable.
type syncEvery4M struct {
	f *os.File
	n int
}

func (s *syncEvery4M) WriteAt(p []byte, off int64) (int, error) {
	n, err := s.f.WriteAt(p, off)
	if s.n += n; err == nil && s.n >= 4<<20 {
		s.n = 0
		err = s.f.Sync()
	}
	return n, err
}

func BenchmarkRawSeq1MSync4M(b *testing.B) {
	f, err := os.OpenFile(benchFile(b, b.TempDir(), "raw", benchBytes), os.O_RDWR, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	seq1M(b, &syncEvery4M{f: f})
}

func BenchmarkDeviceSeq1M(b *testing.B) {
	dev, _ := benchDevice(b)
	seq1M(b, dev)
	b.StopTimer()
	if err := dev.Close(); err != nil {
		b.Fatal(err)
	}
}

func BenchmarkRawRand4K(b *testing.B) {
	f, err := os.OpenFile(benchFile(b, b.TempDir(), "raw", benchBytes), os.O_RDWR, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	rand4K(b, f)
}

func BenchmarkDeviceRand4K(b *testing.B) {
	dev, _ := benchDevice(b)
	rand4K(b, dev)
	b.StopTimer()
	if err := dev.Close(); err != nil {
		b.Fatal(err)
	}
}

func benchEnv(name string) uint32 {
	n := 0
	for _, c := range os.Getenv(name) {
		n = n*10 + int(c-'0')
	}
	return uint32(n)
}
