package storage

import (
	"strconv"
	"testing"
	"time"

	"github.com/walb-go/walb/meta"
)

// FuzzExtraction drives the extraction rules (system.md §3.3–3.5) over
// random snapshot queues: records made by the gid rule at random lsids,
// implicit or explicit. It then runs the transfer steps to the end with
// every lsid a pack boundary and checks, at each step, that the range and
// the diff are well formed, that no explicit record is passed, that a cut
// only happens where a free intermediate gid exists, and that the steps
// reach the newest record, each explicit record being a step's end.
func FuzzExtraction(f *testing.F) {
	f.Add([]byte{8, 0, 0, 10, 1, 20, 1, 30, 0})
	f.Add([]byte{1, 5, 2, 200, 0, 0, 0, 3, 1})
	f.Add([]byte{64, 255, 255, 255, 1, 255, 1, 255, 1, 255, 0})
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) < 3 {
			return
		}
		maxPB := 1 + uint64(b[0]%64)
		done := meta.LsidGid{Lsid: uint64(b[1]), Gid: uint64(b[2]), Timestamp: time.Unix(1, 0)}
		var q []meta.LsidGid // oldest first
		pre := done
		for i := 3; i+1 < len(b) && len(q) < 64; i += 2 {
			lsid := pre.Lsid + uint64(b[i])
			gid, err := snapshotGid(pre, lsid, maxPB)
			if err != nil {
				t.Fatalf("snapshotGid(%s, %d): %v", pre, lsid, err)
			}
			rec := meta.LsidGid{Lsid: lsid, Gid: gid, Mergeable: b[i+1]&1 == 1, Timestamp: time.Unix(int64(2+len(q)), 0)}
			q = append(q, rec)
			pre = rec
		}
		if len(q) == 0 {
			return
		}
		last := q[len(q)-1]
		explicit := map[uint64]bool{}
		for _, r := range q {
			if !r.Mergeable {
				explicit[r.Gid] = true
			}
		}
		// Every step moves done.gid forward.
		bound := int(last.Gid - done.Gid)
		for steps := 0; ; steps++ {
			if steps > bound {
				t.Fatalf("no end after %d steps: done %s, queue %v", steps, done, q)
			}
			q = q[consumedCount(q, done):]
			if len(q) == 0 {
				break
			}
			recE, limit, _, err := endRecord(q, done, maxPB, last.Lsid)
			if err != nil {
				t.Fatalf("endRecord(%v, %s): %v", q, done, err)
			}
			for _, r := range q {
				if r.Gid == recE.Gid {
					break
				}
				if !r.Mergeable {
					t.Fatalf("passed explicit record %s to reach %s", r, recE)
				}
			}
			if limit < done.Lsid || limit > recE.Lsid {
				t.Fatalf("limit %d outside [%d, %d]", limit, done.Lsid, recE.Lsid)
			}
			if limit < recE.Lsid && (recE.Gid <= done.Gid+1 || limit != done.Lsid+maxPB) {
				t.Fatalf("cut at %d toward %s from %s without a free gid", limit, recE, done)
			}
			d := transferDiff(done, recE, limit)
			if err := d.Validate(); err != nil {
				t.Fatalf("diff %s: %v", d, err)
			}
			nd := nextDone(done, recE, limit)
			if nd.Gid != d.SnapE.GidB || nd.Lsid != limit || nd.Gid <= done.Gid {
				t.Fatalf("next done %s after diff %s from %s", nd, d, done)
			}
			delete(explicit, nd.Gid)
			done = nd
		}
		if done.Gid != last.Gid || done.Lsid != last.Lsid {
			t.Fatalf("ended at %s, not at the newest record %s", done, last)
		}
		if len(explicit) > 0 {
			t.Fatalf("explicit snapshots %v were not transfer boundaries", explicit)
		}
	})
}

// FuzzParseSize: a size parses back to the same value.
func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"0", "4k", "1M", "2g", "1t", "1p", "", "x", "18446744073709551615", "16384p"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := ParseSize(s)
		if err != nil {
			return
		}
		w, err := ParseSize(strconv.FormatUint(v, 10))
		if err != nil || w != v {
			t.Fatalf("%q -> %d -> %d, %v", s, v, w, err)
		}
	})
}
