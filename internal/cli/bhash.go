package cli

import (
	"bufio"
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"os"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/hashsync"
)

// BHash prints the SipHash of a file or block device, whole or per chunk
// (walb-tools' bhash), so operators can compare two images chunk by chunk.
func BHash(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o := NewOptions("bhash", "Print the hash of a block device or file: one for the scanned range, or one per chunk "+
		"(start address in 512-byte blocks, TAB, hash).")
	var path string
	var opt struct{ ios, off, size, chunk uint64 }
	var aio bool
	o.Param(&path, "FILE_PATH", "block device or file", false)
	o.Size(&opt.ios, "ios", "SIZE", hashsync.DefaultBHashIOSize, "read IO size in bytes")
	o.Size(&opt.off, "off", "SIZE", 0, "start offset in bytes")
	o.Size(&opt.size, "size", "SIZE", 0, "bytes to scan (0: up to the end)")
	o.Size(&opt.chunk, "chunk", "SIZE", 0, "chunk size in bytes: print one hash per chunk (0: one hash in all)")
	o.Bool(&aio, "aio", "accepted for compatibility; reads always run ahead of hashing")
	if err := parse(o, args, stdout); err != nil {
		return err
	}
	for _, v := range []uint64{opt.ios, opt.off, opt.size, opt.chunk} {
		if v > 1<<62 {
			return errors.Wrapf(ErrUsage, "size %d too large", v)
		}
	}
	if opt.ios == 0 {
		return errors.Wrap(ErrUsage, "-ios 0: the IO size must be positive")
	}
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	// Seeking to the end gives the size of block devices as well as files.
	size, err := f.Seek(0, io.SeekEnd)
	if err != nil {
		return errors.Wrapf(err, "%s: size", path)
	}
	bw := bufio.NewWriter(stdout)
	chunked := opt.chunk > 0
	err = hashsync.BHash(ctx, f, size, hashsync.BHashOptions{
		IOSize: int64(opt.ios), Offset: int64(opt.off), Size: int64(opt.size), Chunk: int64(opt.chunk),
	}, func(addr uint64, sum [hashsync.SipHash128Size]byte) error {
		var err error
		if chunked {
			_, err = fmt.Fprintf(bw, "%016x\t%s\n", addr, hex.EncodeToString(sum[:]))
		} else {
			_, err = fmt.Fprintf(bw, "%s\n", hex.EncodeToString(sum[:]))
		}
		return err
	})
	if errors.Is(err, hashsync.ErrInvalid) {
		err = errors.Wrap(ErrUsage, err.Error())
	}
	if ferr := bw.Flush(); err == nil {
		err = ferr
	}
	return err
}

func init() {
	Tools["bhash"] = BHash
}
