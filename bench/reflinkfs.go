package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/pkg/errors"
)

// reflinkDir returns a directory on XFS with reflink for the archives'
// images, as an operator would deploy them: a sparse file of size bytes in
// the work directory (or -imagesdir), formatted with mkfs.xfs -m reflink=1 and loop-mounted
// (autoclear). It needs root, mount and mkfs.xfs; without them it returns
// "" and says why, and the caller keeps the images in the work directory
// (then virtual images are full copies). The returned cleanup unmounts.
func (b *bench) reflinkDir(ctx context.Context, size int64) (dir, why string, cleanup func()) {
	cleanup = func() {}
	if os.Geteuid() != 0 {
		return "", "not root", cleanup
	}
	for _, tool := range []string{"mkfs.xfs", "mount", "umount"} {
		if _, err := exec.LookPath(tool); err != nil {
			return "", tool + " not installed (xfsprogs, mount)", cleanup
		}
	}
	where := b.dir
	if b.cfg.imgDir != "" {
		where = b.cfg.imgDir
	}
	backing := filepath.Join(where, fmt.Sprintf("walb-bench-images-%d.img", os.Getpid()))
	mnt := filepath.Join(b.dir, "images-xfs")
	if err := os.Mkdir(mnt, 0o700); err != nil {
		return "", err.Error(), cleanup
	}
	f, err := os.Create(backing)
	if err == nil {
		err = f.Truncate(size)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
	}
	if err == nil {
		err = runCmd(ctx, "mkfs.xfs", "-q", "-f", "-m", "reflink=1", backing)
	}
	if err == nil {
		err = runCmd(ctx, "mount", "-o", "loop", backing, mnt)
	}
	if err != nil {
		os.Remove(backing)
		return "", err.Error(), cleanup
	}
	return mnt, "", func() {
		if err := runCmd(context.Background(), "umount", mnt); err != nil {
			fmt.Fprintf(b.log, "bench: %v\n", err)
			_ = runCmd(context.Background(), "umount", "-l", mnt)
		}
		os.Remove(backing)
	}
}

func runCmd(ctx context.Context, name string, args ...string) error {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return errors.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
