package imagestore

import (
	"bytes"
	"context"
	"log/slog"
	"os"

	"github.com/pkg/errors"
	"golang.org/x/sys/unix"
)

// How a clone was made; recorded for logs and tests.
const (
	methodReflink   = "reflink"
	methodCopyRange = "copy_file_range"
	methodReadWrite = "read/write"
)

// defaultCloneChunk is the length of one FICLONERANGE call. Cloning in
// pieces lets a clone of a large, fragmented file (btrfs clones extent by
// extent) notice a cancelled context. It must be a multiple of every file
// system block size (64 KiB covers all).
const defaultCloneChunk = 1 << 30

// defaultCopyChunk bounds one copy_file_range call, for the same reason.
const defaultCopyChunk = 16 << 20

// bufSize is the buffer of the read/write copy: the only memory a copy
// needs, whatever the image size.
const bufSize = 1 << 20

// zeroBlockSize is the granularity at which the read/write copy leaves
// all-zero data as holes.
const zeroBlockSize = 4096

var zeroBlock [zeroBlockSize]byte

// copier copies one image file into a new, empty file of the same store.
type copier struct {
	reflink    bool  // try FICLONERANGE first
	copyRange  bool  // use copy_file_range for data extents
	cloneChunk int64 // bytes per FICLONERANGE call; tests lower it
	copyChunk  int64 // bytes per copy_file_range call; tests lower it
	log        *slog.Logger
}

// copyFile fills dst (a new, empty file) with the content of src, size
// bytes, and returns the method that did it. dst keeps src's holes: with
// reflink the extents are shared (holes included); otherwise only the
// extents SEEK_DATA reports are copied into a file truncated to size.
func (c copier) copyFile(ctx context.Context, src, dst *os.File, size int64) (method string, err error) {
	if err := dst.Truncate(size); err != nil {
		return "", errors.Wrap(err, "imagestore: size clone")
	}
	if c.reflink {
		err := cloneRange(ctx, src, dst, size, c.cloneChunk)
		if err == nil {
			return methodReflink, nil
		}
		if !isUnsupported(err) {
			return "", err
		}
		// The probe said yes but these files cannot share extents:
		// start over with a copy.
		c.log.Warn("imagestore: reflink refused, copying instead", "file", src.Name(), "err", err)
		if err := dst.Truncate(0); err != nil {
			return "", errors.Wrap(err, "imagestore: reset clone")
		}
		if err := dst.Truncate(size); err != nil {
			return "", errors.Wrap(err, "imagestore: size clone")
		}
	}
	return c.sparseCopy(ctx, src, dst, size)
}

// cloneRange shares src's extents with dst in pieces of chunk bytes. Every
// piece starts block-aligned; the last may end unaligned because it ends
// at both files' EOF, which the kernel allows.
func cloneRange(ctx context.Context, src, dst *os.File, size, chunk int64) error {
	sfd, dfd := int64(src.Fd()), int(dst.Fd())
	for off := int64(0); off < size; off += chunk {
		if err := ctx.Err(); err != nil {
			return err
		}
		n := min(chunk, size-off)
		r := unix.FileCloneRange{Src_fd: sfd, Src_offset: uint64(off), Src_length: uint64(n), Dest_offset: uint64(off)}
		if err := unix.IoctlFileCloneRange(dfd, &r); err != nil {
			return errors.Wrapf(err, "imagestore: FICLONERANGE at %d+%d", off, n)
		}
	}
	return nil
}

// sparseCopy copies the data extents of src into dst, which is already
// size bytes of hole. Holes are found with SEEK_DATA/SEEK_HOLE; a file
// system without them is treated as one data extent, and the read/write
// path then still leaves zero blocks as holes.
func (c copier) sparseCopy(ctx context.Context, src, dst *os.File, size int64) (string, error) {
	sfd := int(src.Fd())
	useRange := c.copyRange
	var buf []byte
	for off := int64(0); off < size; {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		start, end, err := nextData(sfd, off, size)
		if err != nil {
			return "", err
		}
		if start >= end {
			break
		}
		for pos := start; pos < end; {
			if err := ctx.Err(); err != nil {
				return "", err
			}
			if useRange {
				n, err := copyRange(src, dst, pos, min(end-pos, c.copyChunk))
				if err == nil {
					pos += n
					continue
				}
				if !isUnsupported(err) {
					return "", err
				}
				useRange = false
			}
			if buf == nil {
				buf = make([]byte, bufSize)
			}
			n, err := copyBuffered(src, dst, pos, buf[:min(end-pos, bufSize)])
			if err != nil {
				return "", err
			}
			pos += n
		}
		off = end
	}
	if useRange {
		return methodCopyRange, nil
	}
	return methodReadWrite, nil
}

// nextData returns the data extent [start, end) at or after off, clipped to
// size; start == end when only holes remain.
func nextData(fd int, off, size int64) (start, end int64, err error) {
	start, err = unix.Seek(fd, off, unix.SEEK_DATA)
	switch {
	case errors.Is(err, unix.ENXIO):
		return size, size, nil
	case errors.Is(err, unix.EINVAL) || errors.Is(err, unix.EOPNOTSUPP):
		return off, size, nil
	case err != nil:
		return 0, 0, errors.Wrapf(err, "imagestore: SEEK_DATA at %d", off)
	}
	if start >= size {
		return size, size, nil
	}
	end, err = unix.Seek(fd, start, unix.SEEK_HOLE)
	if err != nil {
		return 0, 0, errors.Wrapf(err, "imagestore: SEEK_HOLE at %d", start)
	}
	return start, min(end, size), nil
}

// copyRange copies up to n bytes at pos with copy_file_range. A zero
// return means src ended early: it shrank under us.
func copyRange(src, dst *os.File, pos, n int64) (int64, error) {
	roff, woff := pos, pos
	m, err := unix.CopyFileRange(int(src.Fd()), &roff, int(dst.Fd()), &woff, int(n), 0)
	if err != nil {
		return 0, errors.Wrapf(err, "imagestore: copy_file_range at %d+%d", pos, n)
	}
	if m == 0 {
		return 0, errors.Errorf("imagestore: source ended at %d while copying", pos)
	}
	return int64(m), nil
}

// copyBuffered copies len(buf) bytes at pos by pread/pwrite, writing only
// the blocks that are not all zeros (dst reads zeros there already).
func copyBuffered(src, dst *os.File, pos int64, buf []byte) (int64, error) {
	if _, err := src.ReadAt(buf, pos); err != nil {
		return 0, errors.Wrapf(err, "imagestore: read source at %d", pos)
	}
	for i := 0; i < len(buf); {
		// Find the next run of non-zero blocks and write it in one call.
		for i < len(buf) && isZero(buf[i:min(i+zeroBlockSize, len(buf))]) {
			i += zeroBlockSize
		}
		j := i
		for j < len(buf) && !isZero(buf[j:min(j+zeroBlockSize, len(buf))]) {
			j += zeroBlockSize
		}
		j = min(j, len(buf))
		if i < j {
			if _, err := dst.WriteAt(buf[i:j], pos+int64(i)); err != nil {
				return 0, errors.Wrapf(err, "imagestore: write clone at %d", pos+int64(i))
			}
		}
		i = j
	}
	return int64(len(buf)), nil
}

func isZero(b []byte) bool { return bytes.Equal(b, zeroBlock[:len(b)]) }
