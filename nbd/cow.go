package nbd

import (
	"io"
	"math/bits"
	"os"
	"sync"
	"sync/atomic"

	"github.com/pkg/errors"
)

// DefaultCOWBlockSize is the copy-on-write granularity used when
// NewCopyOnWrite is given 0. 64 KiB keeps the bitmap small (2 MiB for a
// 1 TiB base) while bounding the read-modify-write cost of small writes.
const DefaultCOWBlockSize = 64 << 10

// cowStripes is the number of mutexes serializing writers per block; blocks
// map to stripes by index, so unrelated blocks rarely contend.
const cowStripes = 256

// CopyOnWrite lets clients write to an export whose base must not change,
// such as a restored snapshot. Reads of blocks never written come from the
// base; the first write to a block copies it into an overlay (a sparse,
// already unlinked temporary file) and sets its bit in a block bitmap, and
// later reads of that block come from the overlay. The base is only ever
// read.
//
// The overlay lives only as long as the CopyOnWrite: Close discards it. Flush
// is therefore a no-op; it exists so that clients which insist on flushes
// (filesystems, qemu) can still use the export.
type CopyOnWrite struct {
	base      Backend
	overlay   *FileBackend
	size      int64
	blockSize int64
	shift     uint

	// dirty has one bit per block, set once the overlay holds the block.
	// A bit is set only after the overlay write completes, so a reader that
	// sees it set reads complete data.
	dirty []atomic.Uint64
	count atomic.Int64
	locks [cowStripes]sync.Mutex
	pool  sync.Pool
}

// NewCopyOnWrite creates an overlay over base in a temporary file in dir
// ("" means os.TempDir()). blockSize must be a power of two between 512
// bytes and 16 MiB, or 0 for DefaultCOWBlockSize. The overlay file is
// unlinked at once, so nothing is left behind even after a crash; it needs
// up to base.Size() bytes of space in dir.
func NewCopyOnWrite(base Backend, dir string, blockSize int) (*CopyOnWrite, error) {
	if blockSize == 0 {
		blockSize = DefaultCOWBlockSize
	}
	if blockSize < 512 || blockSize > 16<<20 || blockSize&(blockSize-1) != 0 {
		return nil, errors.Errorf("nbd: copy-on-write block size %d is not a power of two in [512, 16 MiB]", blockSize)
	}
	size := base.Size()
	if size < 0 {
		return nil, errors.Errorf("nbd: copy-on-write base has negative size %d", size)
	}
	f, err := os.CreateTemp(dir, "nbd-cow-*")
	if err != nil {
		return nil, errors.Wrap(err, "nbd: create copy-on-write overlay")
	}
	if err := os.Remove(f.Name()); err != nil {
		_ = f.Close()
		return nil, errors.Wrap(err, "nbd: unlink copy-on-write overlay")
	}
	if err := f.Truncate(size); err != nil {
		_ = f.Close()
		return nil, errors.Wrap(err, "nbd: size copy-on-write overlay")
	}
	overlay, err := NewFileBackend(f)
	if err != nil {
		_ = f.Close()
		return nil, err
	}
	blocks := (size + int64(blockSize) - 1) / int64(blockSize)
	c := &CopyOnWrite{
		base:      base,
		overlay:   overlay,
		size:      size,
		blockSize: int64(blockSize),
		shift:     uint(bits.TrailingZeros(uint(blockSize))),
		dirty:     make([]atomic.Uint64, (blocks+63)/64),
	}
	c.pool.New = func() any {
		b := make([]byte, blockSize)
		return &b
	}
	return c, nil
}

// Size is the base's size.
func (c *CopyOnWrite) Size() int64 { return c.size }

// BlockSize is the copy-on-write granularity in bytes.
func (c *CopyOnWrite) BlockSize() int { return int(c.blockSize) }

// DirtyBlocks is the number of blocks currently held by the overlay.
func (c *CopyOnWrite) DirtyBlocks() int64 { return c.count.Load() }

// Close discards the overlay. It does not close the base.
func (c *CopyOnWrite) Close() error { return c.overlay.Close() }

// Flush does nothing: the overlay is discarded on Close by design, so there
// is no durable state to protect.
func (c *CopyOnWrite) Flush() error { return nil }

// CanMultiConn is true: every connection shares this overlay and bitmap.
func (c *CopyOnWrite) CanMultiConn() bool { return true }

func (c *CopyOnWrite) isDirty(block int64) bool {
	return c.dirty[block>>6].Load()&(1<<(block&63)) != 0
}

func (c *CopyOnWrite) setDirty(block int64) {
	if c.dirty[block>>6].Or(1<<(block&63))&(1<<(block&63)) == 0 {
		c.count.Add(1)
	}
}

func (c *CopyOnWrite) clearDirty(block int64) {
	if c.dirty[block>>6].And(^uint64(1<<(block&63)))&(1<<(block&63)) != 0 {
		c.count.Add(-1)
	}
}

func (c *CopyOnWrite) lock(block int64) *sync.Mutex {
	m := &c.locks[block%cowStripes]
	m.Lock()
	return m
}

// blockEnd is the end offset of block, clipped to the export size.
func (c *CopyOnWrite) blockEnd(block int64) int64 {
	return min((block+1)<<c.shift, c.size)
}

// ReadAt reads each run of blocks from the overlay or the base, whichever
// holds it.
func (c *CopyOnWrite) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 || off > c.size {
		return 0, errors.Wrapf(ErrOutOfRange, "read at %d of %d bytes", off, c.size)
	}
	want := int64(len(p))
	var eof error
	if want > c.size-off {
		want = c.size - off
		eof = io.EOF
	}
	done := int64(0)
	for done < want {
		pos := off + done
		block := pos >> c.shift
		fromOverlay := c.isDirty(block)
		// Extend the run over following blocks in the same state.
		end := c.blockEnd(block)
		for end < off+want && c.isDirty(end>>c.shift) == fromOverlay {
			end = c.blockEnd(end >> c.shift)
		}
		end = min(end, off+want)
		src := c.base
		if fromOverlay {
			src = c.overlay
		}
		n, err := src.ReadAt(p[done:end-off], pos)
		done += int64(n)
		if err != nil && !(err == io.EOF && pos+int64(n) == end) {
			return int(done), errors.Wrapf(err, "nbd: copy-on-write read at %d", pos)
		}
		if int64(n) < end-pos {
			return int(done), errors.Wrapf(io.ErrUnexpectedEOF, "nbd: copy-on-write read at %d", pos)
		}
	}
	return int(done), eof
}

// WriteAt writes into the overlay, first copying from the base any block
// that is only partly overwritten and not yet in the overlay.
func (c *CopyOnWrite) WriteAt(p []byte, off int64) (int, error) {
	if err := checkRange(off, int64(len(p)), c.size); err != nil {
		return 0, err
	}
	done := int64(0)
	for done < int64(len(p)) {
		pos := off + done
		block := pos >> c.shift
		end := min(c.blockEnd(block), off+int64(len(p)))
		if err := c.writeBlock(block, p[done:end-off], pos); err != nil {
			return int(done), err
		}
		done = end - off
	}
	return int(done), nil
}

// writeBlock writes seg at pos, which lies within block.
func (c *CopyOnWrite) writeBlock(block int64, seg []byte, pos int64) error {
	m := c.lock(block)
	defer m.Unlock()
	start := block << c.shift
	end := c.blockEnd(block)
	if c.isDirty(block) || (pos == start && pos+int64(len(seg)) == end) {
		if _, err := c.overlay.WriteAt(seg, pos); err != nil {
			return errors.Wrapf(err, "nbd: copy-on-write overlay write at %d", pos)
		}
		c.setDirty(block)
		return nil
	}
	bp := c.pool.Get().(*[]byte)
	defer c.pool.Put(bp)
	buf := (*bp)[:end-start]
	if n, err := c.base.ReadAt(buf, start); n < len(buf) {
		if err == nil {
			err = io.ErrUnexpectedEOF
		}
		return errors.Wrapf(err, "nbd: copy-on-write base read at %d", start)
	}
	copy(buf[pos-start:], seg)
	if _, err := c.overlay.WriteAt(buf, start); err != nil {
		return errors.Wrapf(err, "nbd: copy-on-write overlay write at %d", start)
	}
	c.setDirty(block)
	return nil
}

// Trim drops whole blocks from the overlay, so they read from the base again
// and their overlay space is freed; a trimmed range may read as anything.
// Partly covered blocks are left alone.
func (c *CopyOnWrite) Trim(off, length int64) error {
	if err := checkRange(off, length, c.size); err != nil {
		return err
	}
	first := (off + c.blockSize - 1) >> c.shift
	for block := first; block<<c.shift < off+length; block++ {
		start, end := block<<c.shift, c.blockEnd(block)
		if end > off+length {
			break
		}
		if err := c.dropBlock(block, start, end); err != nil {
			return err
		}
	}
	return nil
}

func (c *CopyOnWrite) dropBlock(block, start, end int64) error {
	m := c.lock(block)
	defer m.Unlock()
	if !c.isDirty(block) {
		return nil
	}
	c.clearDirty(block)
	// The bit is already clear, so a failure to free space costs only space.
	return c.overlay.Trim(start, end-start)
}

// WriteZeroes zeroes whole blocks in the overlay with fallocate (a sparse
// hole when mayTrim, an allocated zero range otherwise) and marks them as
// held by the overlay; partly covered blocks go through WriteAt.
func (c *CopyOnWrite) WriteZeroes(off, length int64, mayTrim bool) error {
	if err := checkRange(off, length, c.size); err != nil {
		return err
	}
	pos, end := off, off+length
	for pos < end {
		block := pos >> c.shift
		bstart, bend := block<<c.shift, c.blockEnd(block)
		segEnd := min(bend, end)
		if pos != bstart || segEnd != bend {
			if err := writeZeroBuffers(c, pos, segEnd-pos); err != nil {
				return err
			}
		} else if err := c.zeroBlock(block, bstart, bend, mayTrim); err != nil {
			return err
		}
		pos = segEnd
	}
	return nil
}

func (c *CopyOnWrite) zeroBlock(block, start, end int64, mayTrim bool) error {
	m := c.lock(block)
	defer m.Unlock()
	if err := c.overlay.WriteZeroes(start, end-start, mayTrim); err != nil {
		return errors.Wrapf(err, "nbd: copy-on-write zero at %d", start)
	}
	c.setDirty(block)
	return nil
}
