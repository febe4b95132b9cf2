package walb

import (
	"math/rand/v2"
	"slices"
	"sync"

	"github.com/pkg/errors"
)

var errCrashed = errors.New("memdisk: crashed")

// crashCtl drives one or more memDisks that crash together. Writes stay
// volatile until Sync; at the crash every volatile write is kept or dropped
// at random and the last kept one is torn: only a random subset of its
// tear-unit blocks reaches the image (a device writes one physical block
// atomically, not more).
type crashCtl struct {
	mu      sync.Mutex
	rng     *rand.Rand
	ops     int
	crashAt int // storage operation that crashes; 0: only crashNow
	crashed bool
	disks   []*memDisk
}

type memWrite struct {
	off  int64
	data []byte
}

type memDisk struct {
	ctl      *crashCtl
	unit     int
	cur      []byte // what reads see
	durable  []byte
	unsynced []memWrite
	image    []byte // after the crash
}

func newCrashCtl(seed uint64, crashAt int) *crashCtl {
	return &crashCtl{rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)), crashAt: crashAt}
}

// disk adds a disk holding a copy of img (durable), torn in units of unit bytes.
func (c *crashCtl) disk(img []byte, unit int) *memDisk {
	d := &memDisk{ctl: c, unit: unit, cur: slices.Clone(img), durable: slices.Clone(img)}
	c.mu.Lock()
	c.disks = append(c.disks, d)
	c.mu.Unlock()
	return d
}

// tick counts a storage operation and crashes at crashAt. c.mu is held.
func (c *crashCtl) tick() error {
	if c.crashed {
		return errCrashed
	}
	c.ops++
	if c.ops == c.crashAt {
		c.crashLocked()
		return errCrashed
	}
	return nil
}

func (c *crashCtl) crashNow() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.crashed {
		c.crashLocked()
	}
}

func (c *crashCtl) crashLocked() {
	c.crashed = true
	for _, d := range c.disks {
		img := slices.Clone(d.durable)
		var kept []memWrite
		for _, w := range d.unsynced {
			if c.rng.IntN(2) == 0 {
				kept = append(kept, w)
			}
		}
		for i, w := range kept {
			if i < len(kept)-1 {
				copy(img[w.off:], w.data)
				continue
			}
			for b := 0; b < len(w.data); b += d.unit {
				if c.rng.IntN(2) == 0 {
					copy(img[w.off+int64(b):], w.data[b:min(b+d.unit, len(w.data))])
				}
			}
		}
		d.image = img
	}
}

func (d *memDisk) ReadAt(p []byte, off int64) (int, error) {
	d.ctl.mu.Lock()
	defer d.ctl.mu.Unlock()
	if d.ctl.crashed {
		return 0, errCrashed
	}
	if off < 0 || off+int64(len(p)) > int64(len(d.cur)) {
		return 0, errors.Errorf("memdisk: read [%d, +%d) beyond %d", off, len(p), len(d.cur))
	}
	return copy(p, d.cur[off:]), nil
}

func (d *memDisk) WriteAt(p []byte, off int64) (int, error) {
	d.ctl.mu.Lock()
	defer d.ctl.mu.Unlock()
	if err := d.ctl.tick(); err != nil {
		return 0, err
	}
	if off < 0 || off+int64(len(p)) > int64(len(d.cur)) {
		return 0, errors.Errorf("memdisk: write [%d, +%d) beyond %d", off, len(p), len(d.cur))
	}
	copy(d.cur[off:], p)
	d.unsynced = append(d.unsynced, memWrite{off: off, data: slices.Clone(p)})
	return len(p), nil
}

func (d *memDisk) Sync() error {
	d.ctl.mu.Lock()
	defer d.ctl.mu.Unlock()
	if err := d.ctl.tick(); err != nil {
		return err
	}
	for _, w := range d.unsynced {
		copy(d.durable[w.off:], w.data)
	}
	d.unsynced = d.unsynced[:0]
	return nil
}

func (d *memDisk) Size() (int64, error) { return int64(len(d.cur)), nil }
func (d *memDisk) Close() error         { return nil }

// snapshot returns what reads see now.
func (d *memDisk) snapshot() []byte {
	d.ctl.mu.Lock()
	defer d.ctl.mu.Unlock()
	return slices.Clone(d.cur)
}
