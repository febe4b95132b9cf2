package walb

import (
	"context"
	"io"
	"time"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/wlog"
)

// Freeze stops write processing: writes submitted while the device is
// frozen wait (they do not fail) until Melt. Freeze returns once the writes
// already being logged are done. A positive timeout melts the device
// automatically after that long (capped at 24 hours, like the driver's
// 86400 s); 0 means no timeout.
func (d *Device) Freeze(timeout time.Duration) error {
	return d.FreezeContext(context.Background(), timeout)
}

// FreezeContext is Freeze with a context for the wait. When ctx ends first,
// the freeze is undone (unless another Freeze or Melt came since) and the
// context's error is returned.
func (d *Device) FreezeContext(ctx context.Context, timeout time.Duration) error {
	if timeout < 0 {
		return errors.Wrapf(ErrInvalid, "freeze timeout %v", timeout)
	}
	timeout = min(timeout, maxFreezeTimeout)
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closing {
		return ErrClosed
	}
	d.frozen = true
	d.meltGen++
	gen0 := d.meltGen
	if d.meltTimer != nil {
		d.meltTimer.Stop()
		d.meltTimer = nil
	}
	if timeout > 0 {
		gen := d.meltGen
		d.meltTimer = time.AfterFunc(timeout, func() {
			d.mu.Lock()
			melt := d.meltGen == gen && d.frozen
			d.mu.Unlock()
			if melt {
				d.log.Info("walb: freeze timed out; melting")
				d.Melt()
			}
		})
	}
	err := d.waitLocked(ctx, func() bool { return d.inflight > 0 && d.err == nil })
	if err != nil && d.meltGen == gen0 {
		d.frozen = false
		d.meltGen++
		if d.meltTimer != nil {
			d.meltTimer.Stop()
			d.meltTimer = nil
		}
		kick(d.writeKick)
	}
	return err
}

// Melt resumes write processing after Freeze.
func (d *Device) Melt() error {
	d.mu.Lock()
	d.frozen = false
	d.meltGen++
	if d.meltTimer != nil {
		d.meltTimer.Stop()
		d.meltTimer = nil
	}
	d.mu.Unlock()
	kick(d.writeKick)
	return nil
}

// IsFrozen reports whether the device is frozen.
func (d *Device) IsFrozen() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.frozen
}

// hold stops the log writer for an administrative operation and waits for
// the writes being logged; release undoes it.
func (d *Device) hold(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.holds++
	if err := d.waitLocked(ctx, func() bool { return d.inflight > 0 && d.err == nil }); err != nil {
		d.holds--
		return err
	}
	return nil
}

func (d *Device) release() {
	d.mu.Lock()
	d.holds--
	d.mu.Unlock()
	kick(d.writeKick)
}

// drain waits until everything logged is durable and on the data device.
func (d *Device) drain(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	err := d.waitLocked(ctx, func() bool {
		if d.err != nil || d.lsids.Written >= d.lsids.Completed {
			return false
		}
		if d.lsids.Permanent < d.lsids.Completed {
			d.flushUrgent = true
			kick(d.flushKick)
		}
		kick(d.applyKick)
		return true
	})
	if d.err != nil {
		return d.err
	}
	return err
}

// Resize grows the device to newLB logical blocks; 0 means the size of the
// data device. Shrinking is refused, as by the driver.
func (d *Device) Resize(newLB uint64) error {
	d.adminMu.Lock()
	defer d.adminMu.Unlock()
	dsize, err := d.ddev.Size()
	if err != nil {
		return err
	}
	ddevLB := uint64(dsize) / LBS
	if newLB == 0 {
		newLB = ddevLB
	}
	d.mu.Lock()
	cur := d.super.DeviceSize
	switch {
	case d.closing:
		err = ErrClosed
	case newLB < cur:
		err = errors.Wrapf(ErrInvalid, "resize to %d LB: shrinking from %d LB is not supported", newLB, cur)
	case newLB > ddevLB:
		err = errors.Wrapf(ErrInvalid, "resize to %d LB: the data device has %d LB", newLB, ddevLB)
	}
	if err != nil || newLB == cur {
		d.mu.Unlock()
		return err
	}
	d.super.DeviceSize = newLB
	d.ddevLB = ddevLB
	d.sizeLB.Store(newLB)
	d.mu.Unlock()
	d.log.Info("walb: resized", "from_lb", cur, "to_lb", newLB)
	return d.checkpoint(true)
}

// SetOldestLsid releases the log below lsid (after it was extracted). As
// in the driver, lsid must be prev_written, or lie in [oldest, prev_written)
// on a valid logpack header. The super sector is synced.
func (d *Device) SetOldestLsid(lsid uint64) error {
	d.adminMu.Lock()
	defer d.adminMu.Unlock()
	d.mu.Lock()
	oldest, prev, closing := d.lsids.Oldest, d.lsids.PrevWritten, d.closing
	d.mu.Unlock()
	if closing {
		return ErrClosed
	}
	valid := lsid == prev || (oldest <= lsid && lsid < prev && d.validPackAt(lsid))
	if !valid {
		return errors.Wrapf(ErrInvalid, "set oldest lsid %d: want prev_written %d, or a logpack lsid in [%d, %d)",
			lsid, prev, oldest, prev)
	}
	d.mu.Lock()
	d.lsids.Oldest = lsid
	d.mu.Unlock()
	return d.checkpoint(true)
}

// ResetWAL clears the log: every lsid becomes 0, the log gets a new random
// uuid and salt, the ring buffer grows if the log device did, the PB at lsid
// 0 is zeroed, and the overflow flag is cleared. Writes are held meanwhile;
// every write logged before is first applied and synced to the data device.
func (d *Device) ResetWAL(ctx context.Context) error {
	d.adminMu.Lock()
	defer d.adminMu.Unlock()
	if err := d.hold(ctx); err != nil {
		return err
	}
	defer d.release()
	if err := d.drain(ctx); err != nil {
		return err
	}
	if err := d.checkpoint(false); err != nil {
		return err
	}
	lsize, err := d.ldev.Size()
	if err != nil {
		return err
	}
	uuid, salt, err := newIdentity()
	if err != nil {
		return err
	}
	d.cpMu.Lock()
	defer d.cpMu.Unlock()
	d.mu.Lock()
	if d.closing {
		d.mu.Unlock()
		return ErrClosed
	}
	s := d.super
	s.UUID, s.Salt = uuid, salt
	s.OldestLsid, s.WrittenLsid = 0, 0
	s.RingBufferSize = max(s.RingBufferSize, RingSizeFor(s.PBS, s.MetadataSize, lsize))
	d.mu.Unlock()

	// The driver's order: the new super sector first, then the first block
	// of the new log. A crash in between leaves a stale block at lsid 0,
	// which fails the new salt's checksum.
	if err := d.writeSuper(&s); err != nil {
		d.fail(err)
		return d.Err()
	}
	rg := newRing(d.ldev, &s)
	if _, err := d.ldev.WriteAt(make([]byte, s.PBS), rg.offset(0)); err != nil {
		d.fail(err)
		return d.Err()
	}
	if err := d.ldev.Sync(); err != nil {
		d.fail(err)
		return d.Err()
	}
	d.mu.Lock()
	d.super = s
	d.ring = rg
	d.generation++
	d.lsids = Lsids{}
	d.overflow = false
	d.configureRing()
	d.cond.Broadcast()
	d.mu.Unlock()
	d.log.Info("walb: log reset", "uuid", s.UUID.String(), "ring_pb", s.RingBufferSize)
	return nil
}

// Close stops the device gracefully: it waits for the writes in progress,
// flushes the log, applies every logged write to the data device, takes a
// final checkpoint and closes the storages. Writes submitted during Close
// fail with ErrClosed.
func (d *Device) Close() error {
	d.adminMu.Lock()
	defer d.adminMu.Unlock()
	d.mu.Lock()
	if d.closing {
		d.mu.Unlock()
		return ErrClosed
	}
	d.closing = true
	d.frozen = false
	if d.meltTimer != nil {
		d.meltTimer.Stop()
		d.meltTimer = nil
	}
	d.cond.Broadcast()
	d.mu.Unlock()
	kick(d.writeKick)

	ctx := context.Background()
	d.mu.Lock()
	_ = d.waitLocked(ctx, func() bool { return (len(d.queue) > 0 || d.inflight > 0) && d.err == nil })
	d.mu.Unlock()
	err := d.drain(ctx)
	if err == nil {
		err = d.checkpoint(false)
	}
	close(d.quit)
	d.wg.Wait()

	d.closeMu.Lock()
	d.closed = true
	d.closeMu.Unlock()
	if e := d.ldev.Close(); err == nil {
		err = e
	}
	if e := d.ddev.Close(); err == nil {
		err = e
	}
	return err
}

// deviceSource bounds a PackReader on a running device.
type deviceSource struct {
	d    *Device
	gen  uint64
	ring uint64
}

func (s deviceSource) check() error {
	d := s.d
	switch {
	case d.generation != s.gen:
		return ErrReset
	case d.overflow:
		return errors.Wrap(ErrOverflow, "the log was overwritten before it was read")
	}
	return nil
}

func (s deviceSource) limit() (uint64, error) {
	s.d.mu.Lock()
	defer s.d.mu.Unlock()
	if err := s.check(); err != nil {
		return 0, err
	}
	return s.d.lsids.Permanent, nil
}

func (s deviceSource) verify(begin, _ uint64) error {
	s.d.mu.Lock()
	defer s.d.mu.Unlock()
	if err := s.check(); err != nil {
		return err
	}
	// A pack may be overwritten once the log has moved a whole ring past it.
	if s.d.lsids.Latest > begin+s.ring {
		return errors.Wrapf(ErrOverflow, "the log at lsid %d was overwritten while it was read", begin)
	}
	return nil
}

func (deviceSource) strict() bool { return true }

// NewPackReader returns a reader of the logpacks in [begin, end) of the
// running device. It stops at the permanent lsid as it is at each call of
// Next, so a reader can follow the log as it grows. begin must be a logpack
// lsid not below the oldest lsid.
func (d *Device) NewPackReader(begin, end uint64) (*PackReader, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if begin < d.lsids.Oldest || begin >= end {
		return nil, errors.Wrapf(ErrInvalid, "read log [%d, %d): the log starts at the oldest lsid %d", begin, end, d.lsids.Oldest)
	}
	src := deviceSource{d: d, gen: d.generation, ring: d.super.RingBufferSize}
	if err := src.check(); err != nil {
		return nil, err
	}
	return newPackReader(d.ring, d.super.Salt, src, begin, end), nil
}

// ReadLog writes the log in [begin, end) as a wlog file to w and returns
// the real end lsid: at most the permanent lsid at the time of the last
// pack read. The file header carries the requested end, as walb-tools'
// extractors write it.
func (d *Device) ReadLog(ctx context.Context, begin, end uint64, w io.Writer) (uint64, error) {
	pr, err := d.NewPackReader(begin, end)
	if err != nil {
		return begin, err
	}
	d.mu.Lock()
	hdr := wlog.FileHeader{Salt: d.super.Salt, PBS: d.pbs, UUID: d.super.UUID, BeginLsid: begin, EndLsid: end}
	d.mu.Unlock()
	return writeLog(ctx, pr, hdr, w)
}
