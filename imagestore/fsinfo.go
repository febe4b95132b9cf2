package imagestore

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/pkg/errors"
	"golang.org/x/sys/unix"
)

// fsNames maps statfs magics to the names mount(8) uses, for the file
// systems an archive is likely to sit on.
var fsNames = map[int64]string{
	unix.XFS_SUPER_MAGIC:       "xfs",
	unix.BTRFS_SUPER_MAGIC:     "btrfs",
	unix.EXT4_SUPER_MAGIC:      "ext4", // ext2 and ext3 share the magic
	unix.TMPFS_MAGIC:           "tmpfs",
	unix.OVERLAYFS_SUPER_MAGIC: "overlay",
	unix.NFS_SUPER_MAGIC:       "nfs",
	unix.F2FS_SUPER_MAGIC:      "f2fs",
	unix.BCACHEFS_SUPER_MAGIC:  "bcachefs",
	unix.OCFS2_SUPER_MAGIC:     "ocfs2",
	unix.FUSE_SUPER_MAGIC:      "fuse",
	0x2fc12fc1:                 "zfs", // not in x/sys: ZFS is out of tree
}

// FSTypeName names a statfs magic number; unknown magics are shown in hex.
func FSTypeName(magic int64) string {
	if n, ok := fsNames[magic]; ok {
		return n
	}
	return fmt.Sprintf("0x%x", magic)
}

// fsType returns the name of the file system holding path.
func fsType(path string) (string, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return "", errors.Wrapf(err, "imagestore: statfs %s", path)
	}
	return FSTypeName(int64(st.Type)), nil
}

// isUnsupported reports whether err from FICLONE, FICLONERANGE,
// copy_file_range or fallocate means "this file system (or this pair of
// files) cannot do that" rather than a real failure such as EIO or ENOSPC.
// EINVAL is included because file systems without remap support, and
// files that cannot share extents (btrfs nodatacow against datacow, XFS
// realtime), report it.
func isUnsupported(err error) bool {
	return errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOTTY) ||
		errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EXDEV) ||
		errors.Is(err, unix.ENOSYS)
}

// probeSize is enough for one file system block on every common block size,
// so the probes exercise real extents rather than inline data.
const probeSize = 64 << 10

// probe finds out, with two temporary files in dir, whether the file
// system clones files (FICLONE) and punches holes. A failure to create or
// write the probe files is an error: the store could not work there.
func probe(dir string, perm os.FileMode) (reflink, punch bool, err error) {
	src, srcPath, err := createTempFile(dir, "probe", perm)
	if err != nil {
		return false, false, err
	}
	defer func() {
		src.Close()
		os.Remove(srcPath)
	}()
	buf := make([]byte, probeSize)
	for i := range buf {
		buf[i] = byte(i*7 + 1)
	}
	if _, err := src.WriteAt(buf, 0); err != nil {
		return false, false, errors.Wrapf(err, "imagestore: write probe in %s", dir)
	}
	dst, dstPath, err := createTempFile(dir, "probe", perm)
	if err != nil {
		return false, false, err
	}
	defer func() {
		dst.Close()
		os.Remove(dstPath)
	}()
	if err := unix.IoctlFileClone(int(dst.Fd()), int(src.Fd())); err == nil {
		reflink = true
	} else if !isUnsupported(err) {
		return false, false, errors.Wrapf(err, "imagestore: reflink probe in %s", dir)
	}
	err = unix.Fallocate(int(src.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, probeSize/2)
	if err == nil {
		punch = true
	} else if !isUnsupported(err) {
		return false, false, errors.Wrapf(err, "imagestore: punch probe in %s", dir)
	}
	return reflink, punch, nil
}

// createTempFile creates a new file TempPrefix+target+"-XXXXXXXX" in dir
// with exactly perm (not filtered by the umask).
func createTempFile(dir, target string, perm os.FileMode) (*os.File, string, error) {
	for try := 0; try < 100; try++ {
		name, err := tempName(target)
		if err != nil {
			return nil, "", err
		}
		p := filepath.Join(dir, name)
		f, err := os.OpenFile(p, os.O_RDWR|os.O_CREATE|os.O_EXCL, perm)
		if os.IsExist(err) {
			continue
		}
		if err != nil {
			return nil, "", errors.Wrapf(err, "imagestore: create temp in %s", dir)
		}
		if err := f.Chmod(perm); err != nil {
			f.Close()
			os.Remove(p)
			return nil, "", errors.Wrapf(err, "imagestore: chmod %s", p)
		}
		return f, p, nil
	}
	return nil, "", errors.Errorf("imagestore: no free temp name in %s", dir)
}

// syncDir fsyncs a directory so that creates, renames and unlinks in it
// survive a crash.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return errors.Wrap(err, "imagestore: sync dir")
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return errors.Wrapf(err, "imagestore: sync dir %s", dir)
	}
	return nil
}
