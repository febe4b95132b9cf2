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
// the work directory (or -imagesdir), formatted with mkfs.xfs -m reflink=1,
// attached to a loop device (direct I/O when possible) and mounted. It
// needs root, losetup, mount and mkfs.xfs; without them it returns "" and
// says why, and the caller keeps the images in the work directory (then
// virtual images are overlays). The returned cleanup unmounts and detaches.
func (b *bench) reflinkDir(ctx context.Context, size int64) (dir, why string, cleanup func()) {
	cleanup = func() {}
	if os.Geteuid() != 0 {
		return "", "not root", cleanup
	}
	for _, tool := range []string{"mkfs.xfs", "losetup", "mount", "umount"} {
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
	// The loop device reads its backing file with direct I/O where it
	// can, as a disk would be read: a buffered loop caches every block
	// twice and serves small reads at a fraction of the disk's speed.
	loopDev := ""
	if err == nil {
		loopDev, err = attachLoop(ctx, backing)
		if err == nil {
			err = runCmd(ctx, "mount", loopDev, mnt)
		}
	}
	if err != nil {
		if loopDev != "" {
			_ = runCmd(context.Background(), "losetup", "-d", loopDev)
		}
		os.Remove(backing)
		return "", err.Error(), cleanup
	}
	return mnt, "", func() {
		if err := runCmd(context.Background(), "umount", mnt); err != nil {
			fmt.Fprintf(b.log, "bench: %v\n", err)
			_ = runCmd(context.Background(), "umount", "-l", mnt)
		}
		if err := runCmd(context.Background(), "losetup", "-d", loopDev); err != nil {
			fmt.Fprintf(b.log, "bench: %v\n", err)
		}
		os.Remove(backing)
	}
}

// attachLoop attaches backing to a free loop device, with direct I/O when
// the backing file system allows it, and returns the device's path.
func attachLoop(ctx context.Context, backing string) (string, error) {
	var out []byte
	var err error
	for _, args := range [][]string{{"--direct-io=on"}, nil} {
		args = append(args, "--find", "--show", backing)
		out, err = exec.CommandContext(ctx, "losetup", args...).CombinedOutput()
		if err == nil {
			return strings.TrimSpace(string(out)), nil
		}
	}
	return "", errors.Errorf("losetup %s: %v: %s", backing, err, strings.TrimSpace(string(out)))
}

func runCmd(ctx context.Context, name string, args ...string) error {
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		return errors.Errorf("%s %s: %v: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
