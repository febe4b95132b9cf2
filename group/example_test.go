package group_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"log"
	"os"
	"time"

	"github.com/walb-go/walb/group"
	"github.com/walb-go/walb/wdiff"
)

// The whole life of a volume in an embedded group: write, back up,
// snapshot, restore, check.
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	g, err := group.Start(ctx, group.Config{}) // a temp dir; s0, p0, a0 on 127.0.0.1
	if err != nil {
		log.Fatal(err)
	}
	defer g.Close(ctx)

	v, err := g.AddVolume(ctx, "vol0", group.VolumeOptions{Size: 16 << 20})
	if err != nil {
		log.Fatal(err)
	}
	dev := v.Device() // an io.ReaderAt and io.WriterAt; also v.NBDURI()
	if _, err := v.FullBackup(ctx); err != nil {
		log.Fatal(err)
	}

	if _, err := dev.WriteAt(bytes.Repeat([]byte("walb"), 4096), 1<<20); err != nil {
		log.Fatal(err)
	}
	gid, err := v.Snapshot(ctx) // restorable at the archive when it returns
	if err != nil {
		log.Fatal(err)
	}
	want := sum(io.NewSectionReader(dev, 0, v.Size()))
	if _, err := dev.WriteAt(bytes.Repeat([]byte{0xff}, 4096), 0); err != nil { // after the snapshot
		log.Fatal(err)
	}

	img, err := v.Restore(ctx, gid)
	if err != nil {
		log.Fatal(err)
	}
	f, err := os.Open(img.Path)
	if err != nil {
		log.Fatal(err)
	}
	defer f.Close()
	fmt.Println("restored image equals the device at the snapshot:", sum(io.NewSectionReader(f, 0, v.Size())) == want)
	fmt.Println("and differs from the device now:", sum(io.NewSectionReader(dev, 0, v.Size())) != want)

	if err := g.Close(ctx); err != nil {
		log.Fatal(err)
	}
	// Output:
	// restored image equals the device at the snapshot: true
	// and differs from the device now: true
}

// A group with more servers, zstd-compressed diffs and TLS everywhere.
func ExampleConfig() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	zstd := wdiff.Compression{Codec: wdiff.CodecZstd, Level: 3, Workers: 2}
	g, err := group.Start(ctx, group.Config{
		Storages:    2,
		Proxies:     2,
		Compression: &zstd,
		TLS:         true, // a throwaway CA; clients use g.ClientTLS()
	})
	if err != nil {
		log.Fatal(err)
	}
	defer g.Close(ctx)
	for _, s := range g.Layout().All() {
		fmt.Println(s.Name, s.Kind)
	}
	fmt.Println("diffs travel as", g.SyncOpt().Compression.Codec)
	// Unordered output:
	// s0 storage
	// s1 storage
	// p0 proxy
	// p1 proxy
	// a0 archive
	// diffs travel as zstd
}

func sum(r io.Reader) [32]byte {
	h := sha256.New()
	if _, err := io.Copy(h, r); err != nil {
		log.Fatal(err)
	}
	return [32]byte(h.Sum(nil))
}
