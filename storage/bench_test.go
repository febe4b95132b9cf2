package storage

import (
	"context"
	"crypto/rand"
	"sync/atomic"
	"testing"
	"time"

	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/wlog"
)

// countingProxies accepts every transfer and only counts the bytes.
type countingProxies struct{ bytes atomic.Int64 }

func (c *countingProxies) HostType(context.Context, string) (string, error) { return "proxy", nil }

func (c *countingProxies) OpenWlog(context.Context, string, WlogHeader) (WlogSession, error) {
	return countingSession{c}, nil
}

type countingSession struct{ c *countingProxies }

func (s countingSession) SendPack(_ context.Context, h *wlog.PackHeader, data []byte) error {
	s.c.bytes.Add(int64(h.PBS) + int64(len(data)))
	return nil
}
func (countingSession) Commit(context.Context, meta.Diff) error { return nil }
func (countingSession) Abort(error)                             {}

// BenchmarkWlogExtraction measures the storage's extraction: log written to
// a userspace device, then read, framed and handed to a proxy session that
// discards it, up to a snapshot. Bytes are the log bytes written.
func BenchmarkWlogExtraction(b *testing.B) {
	const chunk = 8 << 20
	e := newEnv(b, envOpts{maxSend: 4 << 20})
	cp := &countingProxies{}
	e.stop()
	e.start(envOpts{maxSend: 4 << 20, mutate: func(c *Config) { c.ProxyClient = cp }})
	dev, _ := e.addDevice("d0", 4<<20, 64<<20, false)
	ctx := context.Background()
	if err := e.st.InitVol(ctx, "v", "d0"); err != nil {
		b.Fatal(err)
	}
	if err := e.st.FullBackup(ctx, "v", BackupOptions{BulkSize: 1 << 20}); err != nil {
		b.Fatal(err)
	}
	buf := make([]byte, 256<<10)
	rand.Read(buf)
	b.SetBytes(chunk)
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		if err := e.st.StopVol(ctx, "v", false); err != nil {
			b.Fatal(err)
		}
		for off := int64(0); off < chunk; off += int64(len(buf)) {
			if _, err := dev.WriteAt(buf, off%dev.Size()); err != nil {
				b.Fatal(err)
			}
		}
		if err := dev.Flush(); err != nil {
			b.Fatal(err)
		}
		gid, err := e.st.Snapshot(ctx, "v")
		if err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if err := e.st.StartVol(ctx, "v", Target); err != nil {
			b.Fatal(err)
		}
		for {
			done, _, err := e.st.Done("v")
			if err != nil {
				b.Fatal(err)
			}
			if done.Gid >= gid {
				break
			}
			time.Sleep(time.Millisecond)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(cp.bytes.Load())/float64(b.N)/chunk, "sent/written")
}
