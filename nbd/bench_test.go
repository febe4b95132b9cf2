package nbd

import (
	"math/rand/v2"
	"testing"
)

const benchExportSize = 64 << 20

// benchClient serves a memory export over TCP loopback and connects a
// Client to it.
func benchClient(b *testing.B) *Client {
	b.Helper()
	mem := NewMemoryBackend(benchExportSize)
	copy(mem.data, randomBytes(1, 1<<20))
	_, addr := startServer(b, Options{}, testExport{name: "bench", backend: mem})
	return dialClient(b, addr, ClientOptions{Export: "bench"})
}

func BenchmarkSequentialRead1M(b *testing.B) {
	c := benchClient(b)
	buf := make([]byte, 1<<20)
	b.SetBytes(int64(len(buf)))
	off := int64(0)
	for b.Loop() {
		if _, err := c.ReadAt(buf, off); err != nil {
			b.Fatal(err)
		}
		off = (off + int64(len(buf))) % benchExportSize
	}
}

func BenchmarkSequentialWrite1M(b *testing.B) {
	c := benchClient(b)
	buf := randomBytes(2, 1<<20)
	b.SetBytes(int64(len(buf)))
	off := int64(0)
	for b.Loop() {
		if _, err := c.WriteAt(buf, off); err != nil {
			b.Fatal(err)
		}
		off = (off + int64(len(buf))) % benchExportSize
	}
}

func BenchmarkRandomRead4K(b *testing.B) {
	c := benchClient(b)
	buf := make([]byte, 4096)
	r := rand.New(rand.NewPCG(3, 4))
	b.SetBytes(int64(len(buf)))
	for b.Loop() {
		off := r.Int64N(benchExportSize/4096) * 4096
		if _, err := c.ReadAt(buf, off); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRandomRead4KParallel keeps many requests in flight on one
// connection, as qemu and the kernel do.
func BenchmarkRandomRead4KParallel(b *testing.B) {
	c := benchClient(b)
	b.SetBytes(4096)
	b.SetParallelism(8)
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		buf := make([]byte, 4096)
		r := rand.New(rand.NewPCG(rand.Uint64(), 5))
		for pb.Next() {
			off := r.Int64N(benchExportSize/4096) * 4096
			if _, err := c.ReadAt(buf, off); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
