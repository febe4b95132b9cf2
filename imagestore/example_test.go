package imagestore_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"

	"github.com/walb-go/walb/imagestore"
)

// ExampleCloneForApply applies a change to a base image so that a crash
// leaves either the old base or the changed one.
func ExampleCloneForApply() {
	ctx := context.Background()
	dir, err := os.MkdirTemp("", "imagestore-example")
	if err != nil {
		panic(err)
	}
	defer os.RemoveAll(dir)

	store, err := imagestore.OpenDir(ctx, dir, &imagestore.DirOptions{Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		panic(err)
	}
	// At startup: drop what a crash left behind.
	if _, err := store.CleanTemps(ctx); err != nil {
		panic(err)
	}
	base, err := store.Create(ctx, "wb_vol0", 1<<20)
	if err != nil {
		panic(err)
	}
	base.Close()

	err = imagestore.CloneForApply(ctx, store, "wb_vol0", func(ctx context.Context, img imagestore.Image) error {
		_, err := img.WriteAt([]byte("applied diff data"), 4096) // e.g. wdiff.Apply into img
		return err
	})
	if err != nil {
		panic(err)
	}

	img, err := store.Open(ctx, "wb_vol0", imagestore.ReadOnly)
	if err != nil {
		panic(err)
	}
	defer img.Close()
	buf := make([]byte, 17)
	if _, err := img.ReadAt(buf, 4096); err != nil {
		panic(err)
	}
	names, _ := store.List(ctx)
	fmt.Println(string(buf), names)
	// Output: applied diff data [wb_vol0]
}
