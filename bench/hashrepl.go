package main

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/controller"
	"github.com/walb-go/walb/group"
	"github.com/walb-go/walb/server"
	"github.com/walb-go/walb/storage"
)

// hashChunk is the chunk hash-bkp compares (walb-tools' default bulk).
const hashChunk = 256 << 10

// hashRepl measures hash-bkp and archive replication on an embedded group
// with two archives:
//
//   - the device is filled with random data and read once raw (the
//     baseline: what reading the image costs on this machine now);
//   - full-bkp copies it to a0 (timed: the reference for replicate);
//   - the storage goes standby, 1% of the 256 KiB chunks are rewritten
//     (the standby drops their logs, so only a hash backup can find them),
//     and hash-bkp runs until its gid is restorable; a counting relay
//     between the storage and a0 gives the bytes each way;
//   - replicate-once copies the volume a0 -> a1 (full replication).
func (b *bench) hashRepl(ctx context.Context) error {
	size := b.cfg.hashSize
	relay := &countingRelay{}
	defer relay.Close()
	dir := filepath.Join(b.dir, "hashrepl")
	g, err := group.Start(ctx, group.Config{
		Dir:      dir,
		Archives: 2,
		StorageHook: func(_ string, _ *server.Config, cfg *storage.Config) {
			if addr, err := relay.Start(cfg.Archive); err == nil {
				cfg.Archive = addr
			} else {
				relay.err = err
			}
		},
	})
	if err != nil {
		return err
	}
	defer g.Close(context.Background())
	if relay.err != nil {
		return errors.Wrap(relay.err, "bench: relay")
	}
	v, err := g.AddVolume(ctx, "hb", group.VolumeOptions{Size: size, LogSize: 512 << 20})
	if err != nil {
		return err
	}
	dev := v.Device()
	buf := make([]byte, 1<<20)
	rng := rand.New(rand.NewPCG(17, 17))
	for off := int64(0); off < size; off += int64(len(buf)) {
		fillRand(rng, buf)
		if _, err := dev.WriteAt(buf, off); err != nil {
			return err
		}
	}
	if err := dev.FlushContext(ctx); err != nil {
		return err
	}
	start := time.Now()
	if _, err := io.CopyBuffer(io.Discard, io.NewSectionReader(dev, 0, size), buf); err != nil {
		return err
	}
	rawRead := time.Since(start)
	fmt.Fprintf(b.out, "\nhashbkp suite: embedded group (1 storage, 1 proxy, 2 archives on 127.0.0.1), %s device, chunk 256 KiB\n", mib(size))
	fmt.Fprintf(b.out, "baseline raw device read     %8.1f MB/s   (the whole image through walb.Device.ReadAt)\n", rate(size, rawRead))

	ctl := g.Controller()
	sx, a0 := v.Storage(), g.Primary()
	relay.Reset()
	start = time.Now()
	if _, err := v.FullBackup(ctx); err != nil {
		return errors.Wrap(err, "full backup")
	}
	full := time.Since(start)
	fmt.Fprintf(b.out, "full-bkp                     %8.1f MB/s   (%.2fx raw read; %s sent to the archive)\n",
		rate(size, full), rawRead.Seconds()/full.Seconds(), mib(relay.Up()))

	if err := ctl.GoStandby(ctx, sx, v.Name()); err != nil {
		return errors.Wrap(err, "go standby")
	}
	chunks := size / hashChunk
	nChange := max(chunks/100, 1)
	changed := map[int64]bool{}
	p := make([]byte, hashChunk)
	for int64(len(changed)) < nChange {
		c := rng.Int64N(chunks)
		if changed[c] {
			continue
		}
		changed[c] = true
		fillRand(rng, p)
		if _, err := dev.WriteAt(p, c*hashChunk); err != nil {
			return err
		}
	}
	if err := dev.FlushContext(ctx); err != nil {
		return err
	}
	changedBytes := nChange * hashChunk
	relay.Reset()
	start = time.Now()
	if _, err := ctl.HashBackup(ctx, sx, v.Name(), &controller.BackupOptions{BulkSize: hashChunk}); err != nil {
		return errors.Wrap(err, "hash backup")
	}
	hb := time.Since(start)
	up, down := relay.Up(), relay.Down()
	fmt.Fprintf(b.out, "hash-bkp, %d%% chunks changed  %8.1f MB/s   (%.2fx raw read, goal >= 0.80; until the gid is restorable)\n",
		100*nChange/chunks, rate(size, hb), rawRead.Seconds()/hb.Seconds())
	fmt.Fprintf(b.out, "hash-bkp bytes              sent %s for %s changed = %.3fx (goal <= 1.05); hashes received %s (%.3fx with them)\n",
		mib(up), mib(changedBytes), float64(up)/float64(changedBytes), mib(down), float64(up+down)/float64(changedBytes))

	a1 := g.Layout().Archives[1]
	start = time.Now()
	if _, err := ctl.ReplicateOnce(ctx, a0, v.Name(), a1, nil); err != nil {
		return errors.Wrap(err, "replicate a0 -> a1")
	}
	repl := time.Since(start)
	fmt.Fprintf(b.out, "replicate a0 -> a1 (full)    %8.1f MB/s   (%.2fx full-bkp; until a1 has the latest gid)\n",
		rate(size, repl), full.Seconds()/repl.Seconds())
	return nil
}

func fillRand(rng *rand.Rand, p []byte) {
	for i := 0; i+8 <= len(p); i += 8 {
		v := rng.Uint64()
		for k := 0; k < 8; k++ {
			p[i+k] = byte(v >> (8 * k))
		}
	}
}

// countingRelay forwards TCP connections to one address and counts the
// bytes each way: what a server really sent over the network.
type countingRelay struct {
	ln       net.Listener
	up, down atomic.Int64
	wg       sync.WaitGroup
	err      error
}

// Start listens on a loopback port and relays to target.
func (r *countingRelay) Start(target string) (string, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	r.ln = ln
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			r.wg.Add(1)
			go func() {
				defer r.wg.Done()
				r.relay(c, target)
			}()
		}
	}()
	return ln.Addr().String(), nil
}

func (r *countingRelay) relay(c net.Conn, target string) {
	defer c.Close()
	t, err := net.Dial("tcp", target)
	if err != nil {
		return
	}
	defer t.Close()
	done := make(chan struct{}, 2)
	pipe := func(dst, src net.Conn, n *atomic.Int64) {
		buf := make([]byte, 256<<10)
		for {
			k, err := src.Read(buf)
			if k > 0 {
				n.Add(int64(k))
				if _, werr := dst.Write(buf[:k]); werr != nil {
					break
				}
			}
			if err != nil {
				break
			}
		}
		if tc, ok := dst.(*net.TCPConn); ok {
			tc.CloseWrite()
		}
		done <- struct{}{}
	}
	go pipe(t, c, &r.up)
	go pipe(c, t, &r.down)
	<-done
	<-done
}

// Reset zeroes the counters.
func (r *countingRelay) Reset() { r.up.Store(0); r.down.Store(0) }

// Up is the bytes relayed from the clients to the target.
func (r *countingRelay) Up() int64 { return r.up.Load() }

// Down is the bytes relayed back.
func (r *countingRelay) Down() int64 { return r.down.Load() }

// Close stops listening; relayed connections end with their peers.
func (r *countingRelay) Close() {
	if r.ln != nil {
		r.ln.Close()
	}
}
