package proxy_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"

	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/proxy"
)

// printArchive accepts every diff and says what it got.
type printArchive struct{ sent chan string }

func (a printArchive) SendWdiff(_ context.Context, req proxy.WdiffRequest, wdiff io.Reader) error {
	n, err := io.Copy(io.Discard, wdiff)
	if err != nil {
		return err
	}
	a.sent <- fmt.Sprintf("%s got %s for %s (%d bytes of sorted wdiff)", req.Addr, req.Diff, req.Vol, n)
	return nil
}

// The proxy's life in process: register an archive, start the volume,
// receive one wlog transfer (here an empty one), and see it forwarded.
func Example() {
	base, _ := os.MkdirTemp("", "proxy-example")
	defer os.RemoveAll(base)
	ctx := context.Background()
	arch := printArchive{sent: make(chan string, 1)}
	p, err := proxy.Open(ctx, proxy.Config{
		BaseDir: base, Archive: arch,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil)),
	})
	if err != nil {
		panic(err)
	}
	defer p.Close()

	info, _ := proxy.ParseArchiveInfo([]string{"archive0:5000", "zstd:3:1"})
	if err := p.AddArchiveInfo(ctx, "vol0", "a0", info, false); err != nil {
		panic(err)
	}
	if err := p.Start(ctx, "vol0"); err != nil {
		panic(err)
	}

	// What the wlog-transfer handler does for each connection.
	r, err := p.BeginReceive(ctx, "vol0", proxy.WlogHeader{PBS: 4096, Salt: 1, SizeLb: 1 << 21, MaxLogSizePb: 1024})
	if err != nil {
		panic(err)
	}
	defer r.Abort()
	if err := r.ReadPacks(bytes.NewReader(nil)); err != nil { // the logpacks
		panic(err)
	}
	d := meta.CleanDiff(0, 1)
	d.Mergeable = true
	if _, err := r.Commit(d); err != nil { // durable: now the ACK may go
		panic(err)
	}
	fmt.Println(<-arch.sent)
	// Output: archive0:5000 got |0|-->|1| for vol0 (4128 bytes of sorted wdiff)
}
