package main

import (
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/group"
)

// rpo measures the backup group end to end, in this process: an embedded
// group (package group: device, storage, proxy, archive on loopback), a
// writer at a steady rate, and the time from taking a snapshot to that gid
// being restorable at the archive (the recovery point objective the group
// achieves). It also times a full backup against reading the device raw.
func (b *bench) rpo(ctx context.Context) error {
	const (
		devSize   = 1 << 30
		logSize   = 512 << 20
		writeRate = 50e6 // bytes/s
		snapshots = 10
	)
	dir := filepath.Join(b.dir, "rpo")
	g, err := group.Start(ctx, group.Config{Dir: dir})
	if err != nil {
		return err
	}
	defer g.Close(context.Background())
	v, err := g.AddVolume(ctx, "rpo", group.VolumeOptions{Size: devSize, LogSize: logSize})
	if err != nil {
		return err
	}
	dev := v.Device()
	// Fill the device so the backup and the raw read copy real data (one
	// random byte in eight: compressible, as much data is).
	buf := make([]byte, 1<<20)
	rng := rand.New(rand.NewPCG(9, 9))
	err = fillDevice(ctx, dev, devSize, rng, buf, func(rng *rand.Rand, p []byte) {
		for i := 0; i < len(p); i += 8 {
			p[i] = byte(rng.Uint32())
		}
	})
	if err != nil {
		return err
	}
	start := time.Now()
	if _, err := io.CopyBuffer(io.Discard, io.NewSectionReader(dev, 0, devSize), buf); err != nil {
		return err
	}
	rawRead := time.Since(start)
	fmt.Fprintf(b.out, "rpo suite: embedded group (1 storage, 1 proxy, 1 archive on 127.0.0.1), 1 GiB device, 512 MiB log\n")
	fmt.Fprintf(b.out, "baseline raw device read     %8.1f MB/s   (1 GiB through walb.Device.ReadAt)\n", rate(devSize, rawRead))

	start = time.Now()
	if _, err := v.FullBackup(ctx); err != nil {
		return errors.Wrap(err, "full backup")
	}
	bkp := time.Since(start)
	fmt.Fprintf(b.out, "full-bkp to the archive      %8.1f MB/s   (%.2fx raw read; until the first gid is restorable)\n",
		rate(devSize, bkp), rawRead.Seconds()/bkp.Seconds())

	// A steady writer: 64 KiB writes at random offsets paced to writeRate.
	wctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var written atomic.Int64
	var werr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		p := make([]byte, 64<<10)
		r := rand.New(rand.NewPCG(1, 2))
		t0 := time.Now()
		for wctx.Err() == nil {
			due := t0.Add(time.Duration(float64(written.Load()) / writeRate * float64(time.Second)))
			if d := time.Until(due); d > 0 {
				time.Sleep(d)
			}
			p[r.IntN(len(p))]++
			off := int64(r.IntN(devSize/len(p))) * int64(len(p))
			if _, err := dev.WriteAt(p, off); err != nil {
				werr = err
				return
			}
			written.Add(int64(len(p)))
		}
	}()
	var lat []time.Duration
	wStart := time.Now()
	for i := 0; i < snapshots; i++ {
		time.Sleep(500 * time.Millisecond)
		t := time.Now()
		if _, err := v.Snapshot(ctx); err != nil {
			stop()
			wg.Wait()
			return errors.Wrap(err, "snapshot")
		}
		lat = append(lat, time.Since(t))
	}
	stop()
	wg.Wait()
	if werr != nil {
		return werr
	}
	slices.Sort(lat)
	fmt.Fprintf(b.out, "writer during snapshots      %8.1f MB/s   (target 50 MB/s of 64 KiB random writes)\n",
		rate(written.Load(), time.Since(wStart)))
	fmt.Fprintf(b.out, "rpo snapshot->restorable     median %v, max %v, min %v over %d snapshots (goal <= 2s)\n",
		lat[len(lat)/2].Round(time.Millisecond), lat[len(lat)-1].Round(time.Millisecond), lat[0].Round(time.Millisecond), len(lat))
	return nil
}
