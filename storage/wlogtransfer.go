package storage

import (
	"context"
	"io"
	"time"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/server"
	"github.com/walb-go/walb/walb"
)

// One extraction step (system.md §3.4, §3.5): release acknowledged logs,
// decide what to send, send it to the first available proxy, and on the
// proxy's ACK move done durably, pop the consumed snapshot records and
// release the log. done moves only after the ACK and the log is released
// only up to min(done, prev_written), so a crash at any point resends logs
// but never loses them (§7).

// transferPlan is what a step decided under the volume lock.
type transferPlan struct {
	done   meta.LsidGid // begin of the transfer
	recE   meta.LsidGid // the snapshot record it heads for
	oldest meta.LsidGid // the queue's back when planned
	limit  uint64       // the transfer may not pass this lsid
	info   DeviceInfo
	maxPB  uint64
	wait   time.Duration // when nothing is sent now: noRerun or a delay
}

// sendWlogs runs one step and says when to run the next (noRerun: when the
// monitor sees new logs).
func (s *Storage) sendWlogs(ctx context.Context, v *volume, dev Device) (time.Duration, error) {
	info, err := dev.Info(ctx)
	if err != nil {
		return noRerun, err
	}
	maxPB := maxSendPB(s.cfg.MaxWlogSendBytes, info.PBS)
	if maxPB == 0 {
		return noRerun, errors.Wrapf(ErrSendSizeTooSmall, "%d bytes, PB %d bytes", s.cfg.MaxWlogSendBytes, info.PBS)
	}
	v.mu.Lock()
	p, send, err := s.prepareLocked(ctx, v, dev, info, maxPB)
	v.mu.Unlock()
	if err != nil || !send {
		return p.wait, err
	}
	lsidE, addr, err := s.transfer(ctx, v, dev, p)
	if err != nil {
		return noRerun, err
	}
	v.mu.Lock()
	next, err := s.finishLocked(ctx, v, dev, p, lsidE)
	v.mu.Unlock()
	if err != nil {
		return noRerun, err
	}
	s.log.Info("wlogs sent", "vol", v.name, "peer", addr, "lsid", p.done.Lsid, "lsidE", lsidE,
		"gid", p.done.Gid, "gidE", v.done.Gid)
	return next, nil
}

// prepareLocked is steps 1–5 of §3.4. It reports whether to send now; if
// not, p.wait says when to look again.
func (s *Storage) prepareLocked(ctx context.Context, v *volume, dev Device, info DeviceInfo, maxPB uint64) (p transferPlan, send bool, err error) {
	p = transferPlan{wait: noRerun, info: info, maxPB: maxPB}
	if meta.UUID(info.UUID) != v.uuid {
		return p, false, errors.Wrapf(ErrLogMismatch, "device log uuid %s, volume uuid %s", info.UUID, v.uuid)
	}
	done := v.done
	if done.Lsid == meta.InvalidLsid {
		return p, false, errors.WithStack(ErrNoLogOrigin)
	}
	l, err := dev.Lsids(ctx)
	if err != nil {
		return p, false, err
	}
	if done.Lsid > l.Latest {
		return p, false, errors.Wrapf(ErrLogMismatch, "done %s is past the device's latest lsid %d", done, l.Latest)
	}
	garbage, err := s.releaseLocked(ctx, v, dev, l)
	if err != nil {
		return p, false, err
	}
	if err := s.dropConsumedLocked(v); err != nil {
		return p, false, err
	}
	q := oldestFirst(v.queue.Items())
	remaining := (l.Latest - done.Lsid) * uint64(info.PBS)
	if !mustSendNow(done, l, len(q)) {
		switch {
		case garbage:
			p.wait = garbageDelay
		case mustSendLater(done, l):
			p.wait = waitDelay(remaining, s.cfg.MaxWlogSendBytes)
		}
		return p, false, nil
	}
	var newest *meta.LsidGid
	if len(q) > 0 {
		newest = &q[len(q)-1]
	}
	if needImplicitSnapshot(newest, l.Latest, s.now(), s.cfg.SnapshotInterval) {
		if _, err := s.takeSnapshotLocked(ctx, v, dev, l.Latest, true); err != nil {
			return p, false, err
		}
		q = oldestFirst(v.queue.Items())
	}
	recE, limit, overCap, err := endRecord(q, done, maxPB, l.Permanent)
	if err != nil {
		return p, false, errors.WithMessagef(err, "volume %s", v.name)
	}
	if overCap {
		s.log.Warn("transfer exceeds the max wlog send size: it has no intermediate gid to stop at",
			"vol", v.name, "lsid", done.Lsid, "lsidE", limit, "maxPB", maxPB)
	}
	if l.Permanent < limit {
		p.wait = waitDelay(remaining, s.cfg.MaxWlogSendBytes)
		return p, false, nil
	}
	p.done, p.recE, p.oldest, p.limit = done, recE, q[0], limit
	return p, true, nil
}

// oldestFirst reverses the queue's front-to-back (newest first) order.
func oldestFirst(frontToBack []meta.LsidGid) []meta.LsidGid {
	n := len(frontToBack)
	v := make([]meta.LsidGid, n)
	for i, r := range frontToBack {
		v[n-1-i] = r
	}
	return v
}

// releaseLocked erases the log up to min(done, prev_written) and reports
// whether acknowledged log remains that prev_written still holds back.
func (s *Storage) releaseLocked(ctx context.Context, v *volume, dev Device, l walb.Lsids) (bool, error) {
	if cp, ok := dev.(Checkpointer); ok && l.PrevWritten < v.done.Lsid && l.PrevWritten < l.Written {
		// Acknowledged log is held back only because the last checkpoint
		// is old: take one now (data device flush + super sector sync).
		if err := cp.TakeCheckpoint(ctx); err != nil {
			return false, errors.WithMessagef(err, "volume %s: checkpoint", v.name)
		}
		var err error
		if l, err = dev.Lsids(ctx); err != nil {
			return false, err
		}
	}
	target := min(v.done.Lsid, l.PrevWritten)
	oldest := l.Oldest
	if oldest < target {
		if err := dev.SetOldestLsid(ctx, target); err != nil {
			return false, errors.WithMessagef(err, "volume %s: release log below lsid %d", v.name, target)
		}
		oldest = target
	}
	return oldest < v.done.Lsid, nil
}

// dropConsumedLocked pops the queue records a transfer already covered.
func (s *Storage) dropConsumedLocked(v *volume) error {
	n := consumedCount(oldestFirst(v.queue.Items()), v.done)
	for range n {
		if err := v.queue.PopBack(); err != nil {
			return errors.WithMessagef(err, "volume %s: pop queue", v.name)
		}
	}
	return nil
}

// transfer streams the packs of [p.done.Lsid, p.limit) that end by the
// limit to a proxy and commits the diff they make. It returns the lsid the
// packs end at.
func (s *Storage) transfer(ctx context.Context, v *volume, dev Device, p transferPlan) (lsidE uint64, addr string, err error) {
	var pr PackReader
	if p.limit > p.done.Lsid {
		if pr, err = dev.NewPackReader(ctx, p.done.Lsid, p.limit); err != nil {
			return 0, "", errors.WithMessagef(err, "volume %s: read log", v.name)
		}
		defer pr.Close()
	}
	h := WlogHeader{
		Vol: v.name, UUID: v.uuid, PBS: p.info.PBS, Salt: p.info.Salt, SizeLB: p.info.SizeLB,
		MaxLogSizePB: p.limit - p.done.Lsid, BeginLsid: p.done.Lsid,
	}
	sess, addr, err := s.proxies.open(ctx, h)
	if err != nil {
		return 0, "", err
	}
	committed := false
	defer func() {
		if !committed {
			sess.Abort(err)
		}
	}()
	lsidE = p.done.Lsid
	for pr != nil {
		if s.states.StopState(v.name) == server.ForceStopping {
			return 0, addr, errors.Wrapf(ErrForceStopped, "volume %s: wlog transfer at lsid %d", v.name, lsidE)
		}
		ph, data, err := pr.Next(ctx)
		if err == io.EOF {
			break
		}
		if err != nil {
			return 0, addr, errors.WithMessagef(err, "volume %s: read logpack at lsid %d", v.name, lsidE)
		}
		if uint64(ph.TotalIOSize)+1 > p.maxPB {
			return 0, addr, errors.Wrapf(ErrSendSizeTooSmall, "volume %s: logpack at lsid %d has %d PBs, max send %d PBs",
				v.name, ph.LogpackLsid, uint64(ph.TotalIOSize)+1, p.maxPB)
		}
		if ph.NextLsid() > p.limit {
			break
		}
		if err := sess.SendPack(ctx, ph, data); err != nil {
			return 0, addr, errors.WithMessagef(err, "volume %s: send logpack at lsid %d to %s", v.name, ph.LogpackLsid, addr)
		}
		lsidE = ph.NextLsid()
	}
	if lsidE != p.recE.Lsid && p.recE.Gid <= p.done.Gid+1 {
		// No intermediate gid is free: the log must end exactly at recE,
		// which lies on a pack boundary unless the log is damaged.
		return 0, addr, errors.Wrapf(ErrCorrupt, "volume %s: logpacks end at lsid %d, not at the snapshot record %s", v.name, lsidE, p.recE)
	}
	d := transferDiff(p.done, p.recE, lsidE)
	if err := sess.Commit(ctx, d); err != nil {
		return 0, addr, errors.WithMessagef(err, "volume %s: commit %s to %s", v.name, d, addr)
	}
	committed = true
	return lsidE, addr, nil
}

// finishLocked is steps 3–6 of §3.5 after the ACK. It returns when to run
// the next step: at once if snapshot records remain; after a delay that
// shrinks with the backlog if only unsnapshotted logs remain, so that a
// steady stream of writes is sent in batches rather than one implicit
// snapshot per pack.
func (s *Storage) finishLocked(ctx context.Context, v *volume, dev Device, p transferPlan, lsidE uint64) (time.Duration, error) {
	if !sameRecord(v.done, p.done) {
		return noRerun, errors.Wrapf(ErrRaced, "volume %s: done moved from %s to %s", v.name, p.done, v.done)
	}
	if back, err := v.queue.Back(); err != nil || !sameRecord(back, p.oldest) {
		return noRerun, errors.Wrapf(ErrRaced, "volume %s: queue back changed from %s (%v)", v.name, p.oldest, err)
	}
	if err := v.saveDone(nextDone(p.done, p.recE, lsidE)); err != nil {
		return noRerun, err
	}
	v.lastSend = s.cfg.Now()
	if err := s.dropConsumedLocked(v); err != nil {
		return noRerun, err
	}
	l, err := dev.Lsids(ctx)
	if err != nil {
		return noRerun, err
	}
	garbage, err := s.releaseLocked(ctx, v, dev, l)
	if err != nil {
		return noRerun, err
	}
	switch {
	case !v.queue.Empty():
		return 0, nil
	case mustSendLater(v.done, l):
		return waitDelay((l.Latest-v.done.Lsid)*uint64(p.info.PBS), s.cfg.MaxWlogSendBytes), nil
	case garbage:
		return garbageDelay, nil
	}
	return noRerun, nil
}

// sameRecord compares two records field by field.
func sameRecord(a, b meta.LsidGid) bool {
	return a.Lsid == b.Lsid && a.Gid == b.Gid && a.Mergeable == b.Mergeable && a.Timestamp.Equal(b.Timestamp)
}
