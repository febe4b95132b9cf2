package archive_test

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/walb-go/walb/archive"
	"github.com/walb-go/walb/imagestore"
	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/wdiff"
)

// Example runs the life of a volume in process: init-vol, a full backup,
// one diff, the restorable list, a restore and an apply.
func Example() {
	ctx := context.Background()
	quiet := slog.New(slog.DiscardHandler)
	root, err := os.MkdirTemp("", "archive-example")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(root)
	base, images := filepath.Join(root, "base"), filepath.Join(root, "images")
	_ = os.Mkdir(base, 0o755)
	_ = os.Mkdir(images, 0o700)
	store, err := imagestore.OpenDir(ctx, images, &imagestore.DirOptions{Logger: quiet})
	if err != nil {
		panic(err)
	}
	e, err := archive.Open(ctx, archive.Config{BaseDir: base, Images: store, Logger: quiet})
	if err != nil {
		panic(err)
	}
	defer e.Close()

	const vol = "vol0"
	uuid := meta.UUID{0xab}
	must(e.InitVol(ctx, vol))

	// Full backup of a 1 MiB volume (2048 blocks) that holds zeros.
	fs, err := e.BeginFullSync(ctx, vol, 2048)
	must(err)
	must(fs.WriteZeros(2048))
	must(fs.Commit(meta.CleanSnap(0), time.Unix(1700000000, 0), uuid))

	// One diff |0|-->|1| that writes "hello" at block 8.
	var wd bytes.Buffer
	w, err := wdiff.NewSortedWriter(&wd, wdiff.FileHeader{UUID: uuid}, wdiff.DefaultCompression)
	must(err)
	block := make([]byte, 512)
	copy(block, "hello")
	must(w.Write(wdiff.IO{Record: wdiff.Record{Addr: 8, Blocks: 1}, Data: block}))
	must(w.Close())
	d := meta.CleanDiff(0, 1)
	d.Timestamp = time.Unix(1700000060, 0)
	must(e.ReceiveWdiff(ctx, vol, archive.WdiffHeader{Sender: archive.SenderProxy, UUID: uuid, SizeLB: 2048, Diff: d}, &wd))

	pts, err := e.Restorable(vol, true)
	must(err)
	for _, p := range pts {
		fmt.Println("restorable:", p)
	}
	must(e.Restore(ctx, vol, 1))
	path, err := e.RestoredPath(vol, 1)
	must(err)
	img, err := os.ReadFile(path)
	must(err)
	fmt.Printf("restored gid 1: %q at block 8\n", img[8*512:8*512+5])

	must(e.Apply(ctx, vol, 1))
	st, err := e.Base(vol)
	must(err)
	fmt.Println("base:", st.StringTs())
	// Output:
	// restorable: 0 2023-11-14T22:13:20 0
	// restorable: 1 2023-11-14T22:14:20 1
	// restored gid 1: "hello" at block 8
	// base: <|1|>-20231114221420
}

func must(err error) {
	if err != nil {
		panic(err)
	}
}
