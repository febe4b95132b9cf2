package proxy

import (
	"bytes"
	"context"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/walb-go/walb/wire"
)

// benchPacks returns about 8 MiB of logpacks of random 4 KiB-ish writes.
func benchPacks(b *testing.B) ([]byte, WlogHeader) {
	g := newWlogGen(4096)
	packs := g.packs(b, rand.New(rand.NewPCG(1, 2)), 1200)
	return packs, g.header()
}

// BenchmarkReceive measures a whole wlog transfer into the queues: verify,
// convert to an indexed snappy wdiff, fsync, link.
func BenchmarkReceive(b *testing.B) {
	arch := newFakeArchive()
	arch.setReply(func(WdiffRequest) error { return remote(wire.ErrSyncing) })
	cfg := testConfig(b, arch)
	cfg.Delay, cfg.MaxDelay = time.Hour, time.Hour
	p := openTest(b, cfg)
	startedVolume(b, p, "v0", "a0", "a1")
	packs, hdr := benchPacks(b)
	b.SetBytes(int64(len(packs)))
	b.ResetTimer()
	for i := range b.N {
		if _, err := receive(context.Background(), p, "v0", hdr, bytes.NewReader(packs), testDiff(uint64(i+1), true)); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkWlogTransferTCP is BenchmarkReceive through the wlog-transfer
// protocol on a loopback connection.
func BenchmarkWlogTransferTCP(b *testing.B) {
	arch := newFakeArchive()
	arch.setReply(func(WdiffRequest) error { return remote(wire.ErrSyncing) })
	cfg := testConfig(b, arch)
	cfg.Delay, cfg.MaxDelay = time.Hour, time.Hour
	s, addr := startServer(b, cfg)
	startedVolume(b, s.Proxy(), "v0", "a0")
	packs, hdr := benchPacks(b)
	cl := &Client{ID: "bench"}
	b.SetBytes(int64(len(packs)))
	b.ResetTimer()
	for i := range b.N {
		if err := cl.SendWlog(context.Background(), addr, "v0", hdr, bytes.NewReader(packs), testDiff(uint64(i+1), true)); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkSend measures one send of a queued diff: merge (recompressing
// to snappy) and stream to an archive that discards it.
func BenchmarkSend(b *testing.B) {
	arch := newFakeArchive()
	p := openTest(b, testConfig(b, arch))
	startedVolume(b, p, "v0", "a0")
	packs, hdr := benchPacks(b)
	b.SetBytes(int64(len(packs)))
	b.ResetTimer()
	for i := range b.N {
		if _, err := receive(context.Background(), p, "v0", hdr, bytes.NewReader(packs), testDiff(uint64(i+1), true)); err != nil {
			b.Fatal(err)
		}
		for queued(b, p, "v0", "a0") > 0 {
			time.Sleep(100 * time.Microsecond)
		}
	}
}
