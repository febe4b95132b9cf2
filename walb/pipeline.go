package walb

import (
	"time"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/checksum"
	"github.com/walb-go/walb/wlog"
)

// The write pipeline: the log writer packs queued requests into logpacks
// and writes them to the ring; the flusher makes the log durable; the
// applier then writes the data to the data device; checkpoints record on
// the super sector how far the data device is.

// writeLoop is the log writer: it takes the queued requests, packs them
// into logpacks and writes those to the ring buffer.
func (d *Device) writeLoop() {
	defer d.wg.Done()
	for {
		select {
		case <-d.quit:
			return
		case <-d.writeKick:
		}
		for {
			batch := d.takeBatch()
			if batch == nil {
				break
			}
			d.processBatch(batch)
		}
	}
}

func (d *Device) takeBatch() []*writeReq {
	if d.opts.GroupCommitDelay > 0 {
		d.mu.Lock()
		n := len(d.queue)
		d.mu.Unlock()
		if n > 0 && n < d.opts.GroupCommitDepth {
			time.Sleep(d.opts.GroupCommitDelay)
		}
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.queue) == 0 || d.frozen || d.holds > 0 || d.err != nil {
		return nil
	}
	b := d.queue
	d.queue = nil
	d.inflight += len(b)
	return b
}

// processBatch logs a batch of requests, in groups of packs small enough
// for the ring.
func (d *Device) processBatch(batch []*writeReq) {
	d.mu.Lock()
	lsid, salt := d.lsids.Latest, d.super.Salt
	d.mu.Unlock()
	packs, err := d.buildPacks(batch, lsid, salt)
	for i := 0; i < len(packs) && err == nil; {
		start := packs[i].hdr.LogpackLsid
		j := i + 1
		for j < len(packs) && packs[j].hdr.NextLsid()-start <= d.groupPB {
			j++
		}
		group := packs[i:j]
		end := group[len(group)-1].hdr.NextLsid()
		if err = d.reserveRing(end); err != nil {
			break
		}
		d.mu.Lock()
		d.lsids.Latest = end
		if !d.overflow && end-d.lsids.Oldest > d.super.RingBufferSize {
			d.overflow = true
			d.log.Error("walb: log overflow: the ring buffer was overwritten before it was extracted; reset-wal is required",
				"lsid", d.lsids.Oldest, "latest", end)
		}
		d.mu.Unlock()
		if err = d.writePacks(group, salt); err != nil {
			break
		}
		d.completePacks(group, end)
		i = j
	}
	if err == nil {
		return
	}
	// Fail what was not logged.
	d.mu.Lock()
	d.failLocked(err)
	for _, r := range batch {
		if r.end == 0 {
			d.releasePendingLocked(r.cost)
			d.inflight--
			r.done <- d.err
			if r.pio != nil && r.pio.buf != nil {
				putBuf(r.pio.buf)
			}
		}
	}
	d.cond.Broadcast()
	d.mu.Unlock()
}

// buildPacks packs the requests into logpacks from lsid on, adding padding
// where a record would cross the ring end.
func (d *Device) buildPacks(batch []*writeReq, lsid uint64, salt uint32) ([]*packWork, error) {
	var packs []*packWork
	cur := &packWork{hdr: wlog.NewPackHeader(d.pbs, lsid)}
	for _, r := range batch {
		if !r.discard && r.salt != salt {
			// The log was reset since the request was checksummed.
			r.csum = checksum.Sum(r.pio.data, salt)
		}
		for {
			err := d.addToPack(cur, r)
			if err == nil {
				break
			}
			if err != wlog.ErrFull || len(cur.hdr.Records) == 0 {
				return nil, errors.Wrapf(err, "walb: build logpack at lsid %d", cur.hdr.LogpackLsid)
			}
			packs = append(packs, cur)
			cur = &packWork{hdr: wlog.NewPackHeader(d.pbs, cur.hdr.NextLsid())}
		}
	}
	if len(cur.hdr.Records) > 0 {
		packs = append(packs, cur)
	}
	return packs, nil
}

func (d *Device) addToPack(p *packWork, r *writeReq) error {
	h := p.hdr
	if r.discard {
		if err := h.AddDiscard(r.off, uint32(r.nLB)); err != nil {
			return err
		}
		p.reqs = append(p.reqs, r)
		return nil
	}
	n := wlog.PBsFor(d.pbs, r.nLB)
	left := d.super.RingBufferSize - (h.NextLsid() % d.super.RingBufferSize)
	need := n
	if left < n {
		need += left
	}
	if len(h.Records) > 0 && 1+uint64(h.TotalIOSize)+need > d.maxPackPB {
		return wlog.ErrFull
	}
	if err := h.AddNormal(r.off, uint32(r.nLB), r.csum, left); err != nil {
		return err
	}
	p.reqs = append(p.reqs, r)
	return nil
}

// reserveRing waits until packs up to end may be written without
// overwriting log that recovery needs: the log from the written lsid of
// the super sector on disk (prev_written). It takes a checkpoint, or waits
// for the data device to catch up, as the driver does.
func (d *Device) reserveRing(end uint64) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	for end-d.lsids.PrevWritten > d.super.RingBufferSize {
		if d.err != nil {
			return d.err
		}
		if end-d.lsids.Written > d.super.RingBufferSize {
			d.flushUrgent = true
			kick(d.flushKick)
			kick(d.applyKick)
			d.cond.Wait()
			continue
		}
		d.mu.Unlock()
		err := d.checkpoint(false)
		d.mu.Lock()
		if err != nil {
			return err
		}
	}
	return nil
}

// writePacks writes the headers and data blocks of packs to the ring.
// Padding blocks are not written. Blocks that are contiguous on the log
// device go out in one call.
func (d *Device) writePacks(packs []*packWork, salt uint32) error {
	d.mu.Lock()
	rg := d.ring
	d.mu.Unlock()
	var (
		bufs    [][]byte
		runLsid uint64 // lsid of the first block of the run
		next    uint64 // lsid just after the run
		scratch []byte
	)
	flushRun := func() error {
		if len(bufs) == 0 {
			return nil
		}
		err := writeBufs(d.ldev, bufs, rg.offset(runLsid), &scratch)
		bufs = bufs[:0]
		return errors.Wrapf(err, "walb: write log at lsid %d", runLsid)
	}
	add := func(lsid uint64, b []byte) error {
		if len(bufs) > 0 && (lsid != next || lsid%rg.size == 0) {
			if err := flushRun(); err != nil {
				return err
			}
		}
		if len(bufs) == 0 {
			runLsid = lsid
		}
		bufs = append(bufs, b)
		next = lsid + uint64(len(b))/uint64(d.pbs)
		return nil
	}
	for _, p := range packs {
		p.hbuf = make([]byte, d.pbs)
		p.hdr.MarshalTo(p.hbuf, salt)
		if err := add(p.hdr.LogpackLsid, p.hbuf); err != nil {
			return err
		}
		ri := 0
		for k := range p.hdr.Records {
			rec := &p.hdr.Records[k]
			if rec.IsPadding() {
				continue
			}
			r := p.reqs[ri]
			ri++
			if rec.IsDiscard() {
				continue
			}
			if err := add(rec.Lsid, r.logData); err != nil {
				return err
			}
		}
	}
	return flushRun()
}

// completePacks publishes logged packs: their IOs become visible to reads,
// plain writes are acknowledged, FUA writes wait for the next log flush.
func (d *Device) completePacks(packs []*packWork, end uint64) {
	var ios []*pendingIO
	for _, p := range packs {
		for _, r := range p.reqs {
			ios = append(ios, r.pio)
		}
	}
	d.ov.add(ios)
	d.mu.Lock()
	d.lsids.Completed = end
	d.applyQ = append(d.applyQ, packs...)
	n := 0
	for _, p := range packs {
		for _, r := range p.reqs {
			n++
			r.end = p.hdr.NextLsid()
			switch {
			case r.fua && d.err != nil:
				// The device failed while the pack was being written:
				// no flush will come, and failLocked has already
				// answered the waiters it knew of.
				r.done <- d.err
			case r.fua:
				d.fuaWait = append(d.fuaWait, r)
				d.flushUrgent = true
			default:
				r.done <- nil
			}
		}
	}
	d.inflight -= n
	if end-d.lsids.Permanent >= d.flushPB || d.throttled {
		d.flushUrgent = true
	}
	if d.inflight == 0 {
		d.cond.Broadcast()
	}
	d.mu.Unlock()
	kick(d.flushKick)
}

// flushLoop syncs the log device when a flush is due: at once when asked
// (Flush, FUA, a full pending buffer, enough unflushed log), otherwise
// LogFlushInterval after the log was last left unflushed.
func (d *Device) flushLoop() {
	defer d.wg.Done()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	armed := false
	for {
		fired := false
		select {
		case <-d.quit:
			timer.Stop()
			return
		case <-d.flushKick:
		case <-timer.C:
			armed, fired = false, true
		}
		d.mu.Lock()
		target := d.lsids.Completed
		if target <= d.lsids.Permanent || d.err != nil {
			d.flushUrgent = false
			d.mu.Unlock()
			continue
		}
		if !(d.flushUrgent || fired || d.closing || target-d.lsids.Permanent >= d.flushPB) {
			if !armed {
				timer.Reset(d.opts.LogFlushInterval)
				armed = true
			}
			d.mu.Unlock()
			continue
		}
		d.flushUrgent = false
		d.lsids.Flush = target
		d.mu.Unlock()

		err := d.ldev.Sync()

		d.mu.Lock()
		if err != nil {
			d.failLocked(errors.WithMessage(err, "walb: flush log"))
		} else {
			d.lsids.Permanent = target
			i := 0
			for i < len(d.fuaWait) && d.fuaWait[i].end <= target {
				d.fuaWait[i].done <- nil
				i++
			}
			d.fuaWait = d.fuaWait[i:]
			if d.lsids.Completed > target {
				kick(d.flushKick) // re-evaluate: flush again or arm the timer
			}
		}
		d.cond.Broadcast()
		d.mu.Unlock()
		kick(d.applyKick)
	}
}

// applyLoop writes logged data to the data device once its log is durable,
// in log order, and then drops it from the overlay.
func (d *Device) applyLoop() {
	defer d.wg.Done()
	for {
		select {
		case <-d.quit:
			return
		case <-d.applyKick:
		}
		for d.applyOnce() {
		}
	}
}

func (d *Device) applyOnce() bool {
	d.mu.Lock()
	n := 0
	for n < len(d.applyQ) && d.applyQ[n].hdr.NextLsid() <= d.lsids.Permanent {
		n++
	}
	if n == 0 || d.err != nil {
		d.mu.Unlock()
		return false
	}
	batch := make([]*packWork, n)
	copy(batch, d.applyQ)
	d.applyQ = d.applyQ[n:]
	d.mu.Unlock()

	var ios []*pendingIO
	var cost int64
	var err error
	for _, p := range batch {
		for _, r := range p.reqs {
			ios = append(ios, r.pio)
			cost += r.cost
			if err != nil {
				continue
			}
			off, length := int64(r.off)*LBS, int64(r.nLB)*LBS
			if r.discard {
				err = zeroRange(d.ddev, off, length)
			} else if _, err = d.ddev.WriteAt(r.pio.data, off); err != nil {
				err = errors.Wrapf(err, "walb: write data device at %d", off)
			}
		}
	}
	if err != nil {
		d.fail(err)
		return false
	}
	d.ov.remove(ios)
	d.mu.Lock()
	d.lsids.Written = batch[len(batch)-1].hdr.NextLsid()
	d.releasePendingLocked(cost)
	d.cond.Broadcast()
	d.mu.Unlock()
	return true
}

// checkpoint syncs the data device and then writes the super sector with
// the written lsid and syncs the log device, so that recovery may start
// there. Unless force is set it does nothing when written has not moved.
func (d *Device) checkpoint(force bool) error {
	d.cpMu.Lock()
	defer d.cpMu.Unlock()
	d.mu.Lock()
	if d.err != nil {
		err := d.err
		d.mu.Unlock()
		return err
	}
	w := d.lsids.Written
	if !force && w == d.lsids.PrevWritten {
		d.mu.Unlock()
		return nil
	}
	s := d.super
	s.WrittenLsid, s.OldestLsid = w, d.lsids.Oldest
	d.mu.Unlock()

	if err := d.writeSuper(&s); err != nil {
		d.fail(err)
		return d.Err()
	}
	d.mu.Lock()
	d.lsids.PrevWritten = w
	d.cond.Broadcast()
	d.mu.Unlock()
	return nil
}

// writeSuper syncs the data device, then writes s and syncs the log device.
func (d *Device) writeSuper(s *Super) error {
	if err := d.ddev.Sync(); err != nil {
		return errors.WithMessage(err, "walb: checkpoint")
	}
	if _, err := d.ldev.WriteAt(s.Marshal(), s.Super0Offset()); err != nil {
		return errors.Wrap(err, "walb: write super sector")
	}
	return errors.WithMessage(d.ldev.Sync(), "walb: checkpoint")
}

func (d *Device) checkpointLoop() {
	defer d.wg.Done()
	for {
		d.mu.Lock()
		iv := d.cpInterval
		d.mu.Unlock()
		var tc <-chan time.Time
		var t *time.Timer
		if iv > 0 {
			t = time.NewTimer(iv)
			tc = t.C
		}
		select {
		case <-d.quit:
			if t != nil {
				t.Stop()
			}
			return
		case <-d.cpKick:
		case <-tc:
			if err := d.checkpoint(false); err != nil {
				d.log.Error("walb: checkpoint failed", "err", err.Error())
			}
		}
		if t != nil {
			t.Stop()
		}
	}
}
