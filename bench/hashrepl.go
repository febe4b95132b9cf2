package main

import (
	"context"
	"fmt"
	"golang.org/x/sys/unix"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/controller"
	"github.com/walb-go/walb/group"
	"github.com/walb-go/walb/server"
	"github.com/walb-go/walb/storage"
	"github.com/walb-go/walb/walb"
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
	// Archives keep their images on a reflink file system (a clone of the
	// base costs nothing); elsewhere a virtual image is a full copy.
	images, why, unmount := "", "-plainfs", func() {}
	if !b.cfg.plainFS {
		images, why, unmount = b.reflinkDir(ctx, 3*size+1<<30)
	}
	defer unmount()
	where := "XFS with reflink (loop mount)"
	if images == "" {
		where = "the work directory (" + why + "; no reflink: the archive reads its base with the diffs overlaid)"
		if b.cfg.imgDir != "" {
			images = filepath.Join(b.cfg.imgDir, fmt.Sprintf("walb-bench-images-%d", os.Getpid()))
			defer os.RemoveAll(images)
			where = images + " (" + why + "; no reflink: the archive reads its base with the diffs overlaid)"
		}
	}
	if b.cfg.imgDir != "" {
		where += ", backed in " + b.cfg.imgDir + " (-imagesdir: not the device's disk)"
	}
	var logger *slog.Logger
	if os.Getenv("WALB_BENCH_LOG") != "" {
		logger = slog.New(server.NewLogHandler(b.log, slog.LevelInfo))
	}
	g, err := group.Start(ctx, group.Config{
		Logger:   logger,
		Dir:      dir,
		ImageDir: images,
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
	if err := fillDevice(ctx, dev, size, rng, buf, fillRand); err != nil {
		return err
	}
	// Every measured step starts with an empty page cache: in service
	// neither the device nor the archive's image is cached, and here both
	// were just written.
	cold, err := b.coldCache(v.DataDevicePath())
	if err != nil {
		return err
	}
	rawRead, err := readAll(size, dev)
	if err != nil {
		return err
	}
	fmt.Fprintf(b.out, "\nhashbkp suite: embedded group (1 storage, 1 proxy, 2 archives on 127.0.0.1), %s device, chunk 256 KiB\n", mib(size))
	fmt.Fprintf(b.out, "  archive images on %s; page cache %s before every step\n", where, cold)
	fmt.Fprintf(b.out, "baseline raw device read     %8.1f MB/s   (the whole image through walb.Device.ReadAt, %d readers of 1 MiB)\n", rate(size, rawRead), rawReaders)

	ctl := g.Controller()
	sx, a0 := v.Storage(), g.Primary()
	relay.Reset()
	if _, err := b.coldCache(v.DataDevicePath()); err != nil {
		return err
	}
	start := time.Now()
	if _, err := v.FullBackup(ctx); err != nil {
		return errors.Wrap(err, "full backup")
	}
	full := time.Since(start)
	fmt.Fprintf(b.out, "full-bkp                     %8.1f MB/s   (%.2fx raw read; %s sent to the archive)\n",
		rate(size, full), rawRead.Seconds()/full.Seconds(), mib(relay.Up()))

	// What any comparison must read on this one machine: the device and
	// the archive's image, at the same time, from the same disk.
	imgDir := images
	if imgDir == "" {
		imgDir = filepath.Join(dir, "images")
	}
	basePath := filepath.Join(imgDir, a0.Name, "wb_"+v.Name())
	// The disk's speed drifts between runs (2x on a VM), so each round
	// reads raw right before its hash backup and the ratio is taken per
	// round; -count rounds give the best and the median.
	var rounds []hashRound
	for round := range max(b.cfg.count, 1) {
		r, err := b.hashBackupRound(ctx, ctl, v, sx, basePath, rng, relay, round == 0)
		if err != nil {
			return errors.Wrapf(err, "round %d", round+1)
		}
		rounds = append(rounds, r)
		fmt.Fprintf(b.out, "  round %d: raw %7.1f MB/s, device + image %7.1f MB/s, hash-bkp %7.1f MB/s = %.2fx raw, %.2fx device + image\n",
			round+1, rate(size, r.raw), rate(size, r.both), rate(size, r.hb), r.rawRatio(), r.bothRatio())
	}
	ratios := func(f func(hashRound) float64) (best, median float64) {
		x := make([]float64, len(rounds))
		for i, r := range rounds {
			x[i] = f(r)
		}
		slices.Sort(x)
		n := len(x)
		return x[n-1], (x[(n-1)/2] + x[n/2]) / 2
	}
	rawBest, rawMed := ratios(hashRound.rawRatio)
	bothBest, bothMed := ratios(hashRound.bothRatio)
	last := rounds[len(rounds)-1]
	fmt.Fprintf(b.out, "hash-bkp, %4.1f%% chunks changed  %.2fx raw device read (median of %d rounds; best %.2fx), goal >= 0.80; %.2fx device + image read (best %.2fx); until the gid is restorable\n",
		100*float64(last.changed)/float64(size), rawMed, len(rounds), rawBest, bothMed, bothBest)
	fmt.Fprintf(b.out, "hash-bkp bytes              sent %s for %s changed = %.3fx (goal <= 1.05); hashes received %s (%.3fx with them)\n",
		mib(last.up), mib(last.changed), float64(last.up)/float64(last.changed), mib(last.down), float64(last.up+last.down)/float64(last.changed))
	if _, err := b.coldCache(v.DataDevicePath(), basePath); err != nil {
		return err
	}

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

// rawReaders is how many goroutines read an image raw: as many as the
// hash comparison's workers keep in flight, so that the baseline gets the
// same queue depth from the disk.
const rawReaders = 4

// readAll reads [0, size) of every source at once, each with rawReaders
// goroutines taking 1 MiB blocks in turn, and returns the time it took.
func readAll(size int64, srcs ...io.ReaderAt) (time.Duration, error) {
	const blk = 1 << 20
	start := time.Now()
	errs := make(chan error, len(srcs)*rawReaders)
	for _, r := range srcs {
		for i := range rawReaders {
			go func() {
				buf := make([]byte, blk)
				for off := int64(i) * blk; off < size; off += rawReaders * blk {
					n := min(blk, size-off)
					if _, err := r.ReadAt(buf[:n], off); err != nil {
						errs <- errors.Wrap(err, "bench: raw read")
						return
					}
				}
				errs <- nil
			}()
		}
	}
	var first error
	for range len(srcs) * rawReaders {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return time.Since(start), first
}

// coldCache empties the page cache: all of it with drop_caches when root
// (the archive's images sit on a loop device whose backing file is cached
// too), else the given files' pages with fadvise. It says which.
func (b *bench) coldCache(paths ...string) (string, error) {
	if os.Geteuid() == 0 {
		unix.Sync()
		if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0); err == nil {
			return "dropped (drop_caches)", nil
		}
	}
	for _, p := range paths {
		if err := dropCache(p); err != nil {
			return "", err
		}
	}
	return "dropped for the device and image files (fadvise)", nil
}

// fillDevice writes [0, size) of dev in len(buf) pieces, each filled by
// fill, and flushes.
func fillDevice(ctx context.Context, dev *walb.Device, size int64, rng *rand.Rand, buf []byte, fill func(*rand.Rand, []byte)) error {
	for off := int64(0); off < size; off += int64(len(buf)) {
		fill(rng, buf)
		if _, err := dev.WriteAt(buf, off); err != nil {
			return err
		}
	}
	return dev.FlushContext(ctx)
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

// hashRound is one hash backup and the raw reads measured right before it.
type hashRound struct {
	raw, both, hb time.Duration
	changed       int64 // bytes rewritten since the last backup
	up, down      int64 // bytes relayed storage -> archive and back
}

func (r hashRound) rawRatio() float64  { return r.raw.Seconds() / r.hb.Seconds() }
func (r hashRound) bothRatio() float64 { return r.both.Seconds() / r.hb.Seconds() }

// hashBackupRound puts the storage in standby, rewrites 1% of the chunks
// (the standby drops their logs, so only a hash backup finds them), reads
// the device, and the device and a0's base image together, raw, and runs a
// hash backup until its gid is restorable, each from an empty page cache.
func (b *bench) hashBackupRound(ctx context.Context, ctl *controller.Controller, v *group.Volume, sx controller.Server,
	basePath string, rng *rand.Rand, relay *countingRelay, profile bool) (hashRound, error) {
	var r hashRound
	size := b.cfg.hashSize
	dev := v.Device()
	if err := ctl.GoStandby(ctx, sx, v.Name()); err != nil {
		return r, errors.Wrap(err, "go standby")
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
			return r, err
		}
	}
	if err := dev.FlushContext(ctx); err != nil {
		return r, err
	}
	r.changed = nChange * hashChunk

	var err error
	if _, err = b.coldCache(v.DataDevicePath(), basePath); err != nil {
		return r, err
	}
	if r.raw, err = readAll(size, dev); err != nil {
		return r, err
	}
	if _, err = b.coldCache(v.DataDevicePath(), basePath); err != nil {
		return r, err
	}
	f, err := os.Open(basePath)
	if err != nil {
		return r, errors.Wrap(err, "bench: archive image")
	}
	r.both, err = readAll(size, dev, f)
	f.Close()
	if err != nil {
		return r, err
	}

	relay.Reset()
	if _, err := b.coldCache(v.DataDevicePath(), basePath); err != nil {
		return r, err
	}
	stopProf := func() {}
	if path := os.Getenv("WALB_BENCH_HASHPROF"); path != "" && profile {
		f, err := os.Create(path)
		if err != nil {
			return r, err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return r, err
		}
		stopProf = pprof.StopCPUProfile
		defer stopProf()
	}
	start := time.Now()
	if _, err := ctl.HashBackup(ctx, sx, v.Name(), &controller.BackupOptions{BulkSize: hashChunk}); err != nil {
		return r, errors.Wrap(err, "hash backup")
	}
	r.hb = time.Since(start)
	stopProf()
	r.up, r.down = relay.Up(), relay.Down()
	return r, nil
}
