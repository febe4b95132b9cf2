package storage

import (
	"time"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/walb"
)

// This file holds the pure rules of snapshots and wlog extraction
// (system.md §3.3–3.5). They take the queue oldest first and never touch
// files or devices, so they are tested as tables.

// maxSendPB converts the maximum wlog send size (-wl) to PBs.
func maxSendPB(maxBytes uint64, pbs uint32) uint64 { return maxBytes / uint64(pbs) }

// snapshotGid gives the gid of a snapshot at lsid after record pre (the
// newest queue record, or done when the queue is empty): one more than
// pre's, plus one per maxPB of log in between, so that a transfer cut into
// maxPB pieces has a gid for every piece (§3.3).
func snapshotGid(pre meta.LsidGid, lsid, maxPB uint64) (uint64, error) {
	switch {
	case pre.Lsid == meta.InvalidLsid:
		return 0, errors.WithStack(ErrNoLogOrigin)
	case pre.Lsid > lsid:
		return 0, errors.Wrapf(ErrLogMismatch, "snapshot at lsid %d is before the previous record %s", lsid, pre)
	case maxPB == 0:
		return 0, errors.Wrap(ErrSendSizeTooSmall, "max wlog send size is below one PB")
	}
	return pre.Gid + 1 + (lsid-pre.Lsid)/maxPB, nil
}

// isConsumed reports whether a queue record lies at or before done, so a
// transfer already covered it.
func isConsumed(rec, done meta.LsidGid) bool {
	return rec.Lsid < done.Lsid || rec.Lsid == done.Lsid && rec.Gid <= done.Gid
}

// consumedCount returns how many records at the back (oldest end) of the
// queue, given oldest first, are consumed by done.
func consumedCount(oldestFirst []meta.LsidGid, done meta.LsidGid) int {
	n := 0
	for n < len(oldestFirst) && isConsumed(oldestFirst[n], done) {
		n++
	}
	return n
}

// mustSendNow is step 2 of §3.4: durable logs past done, or snapshots not
// yet transferred.
func mustSendNow(done meta.LsidGid, l walb.Lsids, queueLen int) bool {
	return done.Lsid < l.Permanent || queueLen > 0
}

// mustSendLater reports whether logs exist past done that are not durable
// yet: the volume is checked again after a delay.
func mustSendLater(done meta.LsidGid, l walb.Lsids) bool { return done.Lsid < l.Latest }

// needImplicitSnapshot is step 3 of §3.4: the transfer needs an end record
// when the queue is empty, and a fresh one when the newest record is below
// latest and at least interval old (so a steady stream of writes is cut
// into diffs every interval).
func needImplicitSnapshot(newest *meta.LsidGid, latest uint64, now time.Time, interval time.Duration) bool {
	if newest == nil {
		return true
	}
	return newest.Lsid < latest && !newest.Timestamp.Add(interval).After(now)
}

// endRecord is step 4 of §3.4. From the oldest record it advances over
// implicit records to newer ones while they are within maxPB of done and
// permanent, never past an explicit one; the record reached is recE. The
// limit is the lsid the transfer may not pass: recE's lsid, or done.Lsid +
// maxPB when that is sooner (the transfer then ends at the intermediate
// gid done.Gid+1). When the walk stayed on the first record and its gid is
// done.Gid+1 there is no intermediate gid left, so the limit is recE's lsid
// even past maxPB; overCap reports that case for a warning.
func endRecord(oldestFirst []meta.LsidGid, done meta.LsidGid, maxPB, permanent uint64) (recE meta.LsidGid, limit uint64, overCap bool, err error) {
	if len(oldestFirst) == 0 {
		return recE, 0, false, errors.Wrap(ErrCorrupt, "no snapshot record to send up to")
	}
	recE = oldestFirst[0]
	n := 1
	for ; n < len(oldestFirst) && recE.Mergeable; n++ {
		rec := oldestFirst[n]
		if rec.Lsid > done.Lsid+maxPB || rec.Lsid > permanent {
			break
		}
		recE = rec
	}
	walked := n > 1
	if recE.Lsid < done.Lsid || recE.Gid <= done.Gid {
		return recE, 0, false, errors.Wrapf(ErrCorrupt, "snapshot record %s is not after done %s", recE, done)
	}
	if !walked && recE.Gid == done.Gid+1 {
		return recE, recE.Lsid, recE.Lsid-done.Lsid > maxPB, nil
	}
	return recE, min(done.Lsid+maxPB, recE.Lsid), false, nil
}

// transferDiff is the diff a transfer of [done.Lsid, lsidE) carries: to
// recE's gid when it reached recE, otherwise to the intermediate gid
// done.Gid+1. It has recE's timestamp and done's mergeability (the begin
// snapshot's kind).
func transferDiff(done, recE meta.LsidGid, lsidE uint64) meta.Diff {
	d := meta.Diff{SnapB: meta.CleanSnap(done.Gid), Mergeable: done.Mergeable, Timestamp: recE.Timestamp}
	if lsidE == recE.Lsid {
		d.SnapE = meta.CleanSnap(recE.Gid)
	} else {
		d.SnapE = meta.CleanSnap(done.Gid + 1)
	}
	return d
}

// nextDone is the done record after an acknowledged transfer: recE, or the
// intermediate record (lsidE, done.Gid+1), which is implicit and keeps
// done's timestamp because no snapshot was taken there (§2.8).
func nextDone(done, recE meta.LsidGid, lsidE uint64) meta.LsidGid {
	if lsidE == recE.Lsid {
		return recE
	}
	return meta.LsidGid{Lsid: lsidE, Gid: done.Gid + 1, Mergeable: true, Timestamp: done.Timestamp}
}

// Delays of the extraction task.
const (
	minWaitDelay = 100 * time.Millisecond
	maxWaitDelay = time.Second
	// garbageDelay is how soon the task looks again when acknowledged logs
	// could not be released yet because prev_written lags (it moves at the
	// device's checkpoints).
	garbageDelay = time.Second
	// monitorDelay lets logs accumulate a little after the monitor sees new
	// ones, so they go in one transfer (walb-tools: 100 ms).
	monitorDelay = 100 * time.Millisecond
)

// waitDelay is how long to wait for logs to become durable: 1 s while the
// backlog is under a tenth of the send size, 100 ms from half of it, linear
// in between (walb-tools' calcDelayMsWithRemainingMb).
func waitDelay(remaining, maxBytes uint64) time.Duration {
	switch {
	case maxBytes == 0 || remaining*2 >= maxBytes:
		return minWaitDelay
	case remaining*10 <= maxBytes:
		return maxWaitDelay
	}
	span := maxWaitDelay - minWaitDelay
	return maxWaitDelay - time.Duration(float64(span)*float64(remaining*10-maxBytes)/float64(maxBytes*4))
}
