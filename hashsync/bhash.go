package hashsync

import (
	"context"
	"io"
	"sync"

	"github.com/pkg/errors"
)

// BHashOptions are the options of walb-tools' bhash, in bytes.
type BHashOptions struct {
	// IOSize is the size of each read (0: 64 KiB); a multiple of 512.
	IOSize int64
	// Offset is where the scan starts; a multiple of IOSize.
	Offset int64
	// Size is the number of bytes to scan (0: up to the end of the image,
	// whole logical blocks only); a multiple of IOSize.
	Size int64
	// Chunk, if positive, asks for one hash per chunk of that many bytes
	// (the last one may be shorter); a multiple of IOSize. Zero asks for
	// one hash of the whole range.
	Chunk int64
}

// DefaultBHashIOSize is bhash's default read size.
const DefaultBHashIOSize = 64 << 10

// bhashBatch is how many bytes the reading goroutine reads ahead per
// buffer; three buffers circulate.
const bhashBatch = 1 << 20

// BHash computes walb-tools' bhash of img (imgSize bytes) with the
// options of the bhash tool: emit is called for each chunk with its start
// address in logical blocks and its SipHash128, or, without Chunk, once for
// the whole range with the range's start address. Reading runs ahead of
// hashing in its own goroutine; memory use is a few MiB whatever the size.
func BHash(ctx context.Context, img io.ReaderAt, imgSize int64, opt BHashOptions, emit func(addr uint64, sum [SipHash128Size]byte) error) error {
	ios := opt.IOSize
	if ios == 0 {
		ios = DefaultBHashIOSize
	}
	if ios < 0 || ios%LogicalBlockSize != 0 || ios > 1<<30 {
		return errors.Wrapf(ErrInvalid, "bhash: bad IO size %d", ios)
	}
	for _, v := range []struct {
		name string
		v    int64
	}{{"offset", opt.Offset}, {"scan size", opt.Size}, {"chunk size", opt.Chunk}} {
		if v.v < 0 || v.v%ios != 0 {
			return errors.Wrapf(ErrInvalid, "bhash: bad %s %d: not a multiple of the IO size %d", v.name, v.v, ios)
		}
	}
	start := opt.Offset
	end := start + opt.Size
	if opt.Size == 0 {
		end = imgSize / LogicalBlockSize * LogicalBlockSize
		if end < start {
			return errors.Wrapf(ErrInvalid, "bhash: offset %d beyond the image size %d", start, imgSize)
		}
	}
	chunk := opt.Chunk
	if chunk == 0 {
		chunk = end - start
	}
	batch := max(ios, bhashBatch/ios*ios)

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type filled struct {
		b   []byte
		err error
	}
	free := make(chan []byte, 3)
	for range 3 {
		free <- make([]byte, batch)
	}
	full := make(chan filled, 3)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Go(func() {
		defer close(full)
		for off := start; off < end; {
			var b []byte
			select {
			case b = <-free:
			case <-ctx.Done():
				return
			}
			n := min(batch, end-off)
			var err error
			for i := int64(0); i < n && err == nil; i += ios {
				err = readChunk(img, b[i:min(i+ios, n)], off+i)
			}
			full <- filled{b: b[:n], err: err}
			if err != nil {
				return
			}
			off += n
		}
	})

	d := NewSipHash128()
	addr := uint64(start / LogicalBlockSize)
	var done int64 // bytes of the current chunk hashed
	for f := range full {
		if f.err != nil {
			return f.err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		for p := f.b; len(p) > 0; {
			k := min(int64(len(p)), chunk-done)
			d.Write(p[:k])
			p = p[k:]
			done += k
			if opt.Chunk > 0 && done == chunk {
				if err := emit(addr, d.Sum128()); err != nil {
					return err
				}
				d.Reset()
				addr += uint64(chunk / LogicalBlockSize)
				done = 0
			}
		}
		free <- f.b[:cap(f.b)]
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if opt.Chunk > 0 {
		if done > 0 {
			return emit(addr, d.Sum128())
		}
		return nil
	}
	return emit(addr, d.Sum128())
}
