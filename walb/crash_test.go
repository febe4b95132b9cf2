package walb

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"math/rand/v2"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/wlog"
)

// formatMem formats an in-memory log device for ddev and, when start > 0,
// moves the start of its log to lsid start, as wlog-restore does. It returns
// the log device image.
func formatMem(t testing.TB, pbs uint32, ldevBytes int, ddev []byte, start uint64) []byte {
	t.Helper()
	ctl := newCrashCtl(0, 0)
	l := ctl.disk(make([]byte, ldevBytes), int(pbs))
	dd := ctl.disk(ddev, int(pbs))
	s, err := Format(l, dd, FormatOptions{PBS: pbs, Name: "mem"})
	require.NoError(t, err)
	if start > 0 {
		s.OldestLsid, s.WrittenLsid = start, start
		_, err = l.WriteAt(s.Marshal(), s.Super0Offset())
		require.NoError(t, err)
		_, err = l.WriteAt(make([]byte, pbs), s.LsidOffset(start))
		require.NoError(t, err)
		require.NoError(t, l.Sync())
	}
	return l.snapshot()
}

type opKind int

const (
	opWrite opKind = iota
	opFUA
	opTrim
	opZero
	opFlush
)

func (k opKind) String() string {
	return [...]string{"write", "fua", "trim", "zero", "flush"}[k]
}

// opRec is one operation of a workload, with the logical times at which it
// was issued and returned.
type opRec struct {
	id         uint64
	kind       opKind
	off, n     int64 // sectors
	start, end int64
	err        error
}

func (o *opRec) String() string {
	return fmt.Sprintf("op %d %s [%d,+%d) t=[%d,%d] err=%v", o.id, o.kind, o.off, o.n, o.start, o.end, o.err)
}

// sectorPattern is the content op id writes to sector s: recognisable, and
// different for every (op, sector).
func sectorPattern(b []byte, id uint64, s int64) {
	binary.LittleEndian.PutUint64(b[0:], id)
	binary.LittleEndian.PutUint64(b[8:], uint64(s))
	for i := 16; i < LBS; i++ {
		b[i] = byte(id*131 + uint64(s)*7 + uint64(i))
	}
}

// workload runs random writes, FUA writes, trims, zeroings and flushes from
// several goroutines until each has done nOps or the device fails.
func workload(d *Device, seed uint64, workers, nOps int, sectors int64) []*opRec {
	var (
		clock atomic.Int64
		ids   atomic.Uint64
		mu    sync.Mutex
		ops   []*opRec
		wg    sync.WaitGroup
	)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(seed, uint64(w)))
			buf := make([]byte, 8*LBS)
			for range nOps {
				o := &opRec{id: ids.Add(1)}
				switch p := rng.IntN(100); {
				case p < 60:
					o.kind = opWrite
				case p < 70:
					o.kind = opFUA
				case p < 80:
					o.kind = opFlush
				case p < 90:
					o.kind = opTrim
				default:
					o.kind = opZero
				}
				if o.kind != opFlush {
					o.n = 1 + rng.Int64N(8)
					o.off = rng.Int64N(sectors - o.n + 1)
				}
				for i := range o.n {
					sectorPattern(buf[i*LBS:], o.id, o.off+i)
				}
				o.start = clock.Add(1)
				switch o.kind {
				case opWrite:
					_, o.err = d.WriteAt(buf[:o.n*LBS], o.off*LBS)
				case opFUA:
					_, o.err = d.WriteAtFUA(buf[:o.n*LBS], o.off*LBS)
				case opFlush:
					o.err = d.Flush()
				case opTrim:
					o.err = d.Trim(o.off*LBS, o.n*LBS)
				case opZero:
					o.err = d.WriteZeroes(o.off*LBS, o.n*LBS, rng.IntN(2) == 0)
				}
				o.end = clock.Add(1)
				mu.Lock()
				ops = append(ops, o)
				mu.Unlock()
				if o.err != nil {
					return
				}
			}
		}()
	}
	wg.Wait()
	sort.Slice(ops, func(i, j int) bool { return ops[i].start < ops[j].start })
	return ops
}

// checkModel checks every sector of got against the operations: a sector
// holds the initial data or the data of an operation covering it that no
// durable operation covering it superseded (one issued after it returned),
// and a sector covered by a durable operation does not hold its initial
// data. A write is durable when it was FUA, or when a flush issued after it
// returned succeeded.
func checkModel(t *testing.T, ops []*opRec, initial, got []byte) {
	t.Helper()
	lastFlush := int64(-1)
	for _, o := range ops {
		if o.kind == opFlush && o.err == nil {
			lastFlush = max(lastFlush, o.start)
		}
	}
	durable := func(o *opRec) bool {
		return o.err == nil && (o.kind == opFUA || o.end < lastFlush)
	}
	nSectors := int64(len(got)) / LBS
	pattern := make([]byte, LBS)
	zero := make([]byte, LBS)
	for s := range nSectors {
		var cover []*opRec
		for _, o := range ops {
			if o.kind != opFlush && o.off <= s && s < o.off+o.n {
				cover = append(cover, o)
			}
		}
		superseded := func(o *opRec) bool {
			for _, d := range cover {
				if durable(d) && d.start > o.end {
					return true
				}
			}
			return false
		}
		v := got[s*LBS : (s+1)*LBS]
		ok := false
		what := "garbage"
		switch {
		case bytes.Equal(v, initial[s*LBS:(s+1)*LBS]):
			what = "initial data"
			ok = true
			for _, o := range cover {
				if durable(o) {
					ok = false
				}
			}
		case bytes.Equal(v, zero):
			what = "zeros"
			for _, o := range cover {
				if (o.kind == opTrim || o.kind == opZero) && !superseded(o) {
					ok = true
				}
			}
		default:
			id := binary.LittleEndian.Uint64(v)
			what = fmt.Sprintf("data of op %d", id)
			for _, o := range cover {
				if o.id == id && (o.kind == opWrite || o.kind == opFUA) {
					sectorPattern(pattern, id, s)
					ok = bytes.Equal(v, pattern) && !superseded(o)
				}
			}
		}
		if !ok {
			for _, o := range cover {
				t.Logf("  %v durable=%v superseded=%v", o, durable(o), superseded(o))
			}
			t.Fatalf("sector %d holds %s, which no ordering consistent with the acknowledgements allows", s, what)
		}
	}
}

// TestCrashRecovery crashes a device running a random concurrent workload
// at random points, with unsynced writes dropped at random and the last one
// torn, then checks after recovery that (1) every sector is consistent with
// the acknowledgements and every flushed write is there, and (2) the data
// device equals its initial image plus the redo of the log extracted from
// the device, which is what backups rely on.
func TestCrashRecovery(t *testing.T) {
	runs := 120
	if testing.Short() {
		runs = 30
	}
	const (
		ddevBytes = 128 << 10
		ldevBytes = 2 << 20
	)
	ctx := context.Background()
	crashes := 0
	for run := range runs {
		seed := uint64(run) + 1
		rng := rand.New(rand.NewPCG(seed, 7))
		pbs := []uint32{512, 4096, 1024}[run%3]
		initial := make([]byte, ddevBytes)
		for i := range initial {
			initial[i] = byte(rng.Uint32())
		}
		// Start the log at lsid 0, near the ring end (so that it wraps),
		// or far along.
		ringPB := uint64(ldevBytes)/uint64(pbs) - 3
		start := []uint64{0, ringPB - rng.Uint64N(40) - 1, 1000*ringPB + rng.Uint64N(ringPB)}[run%3]
		ldevImg := formatMem(t, pbs, ldevBytes, initial, start)

		crashAt := 1 + rng.IntN(300)
		ctl := newCrashCtl(seed, crashAt)
		ldev := ctl.disk(ldevImg, int(pbs))
		ddev := ctl.disk(initial, int(pbs))
		opts := Options{
			LogFlushInterval:   time.Duration(1+rng.IntN(3)) * time.Millisecond,
			LogFlushIntervalMB: 1,
			CheckpointInterval: time.Duration(2+rng.IntN(8)) * time.Millisecond,
			Logger:             quietLogger(),
		}
		if rng.IntN(2) == 0 {
			opts.MaxLogpackKB = 8
			opts.MaxIOSize = 2048
		}
		var ops []*opRec
		d, err := OpenStorage(ctx, ldev, ddev, opts)
		if err == nil {
			ops = workload(d, seed, 4, 30, ddevBytes/LBS)
			ctl.crashNow()
			_ = d.Close()
		} else {
			// The crash hit the recovery at open.
			require.ErrorIs(t, err, errCrashed, "run %d", run)
		}
		if ctl.ops >= crashAt {
			crashes++
		}

		// Reopen on the crash images: recovery.
		ctl2 := newCrashCtl(seed, 0)
		ldev2 := ctl2.disk(ldev.image, int(pbs))
		ddev2 := ctl2.disk(ddev.image, int(pbs))
		d2, err := OpenStorage(ctx, ldev2, ddev2, Options{Logger: testLogger(t)})
		require.NoError(t, err, "run %d: recovery", run)
		ls := d2.Lsids()
		require.Equal(t, start, ls.Oldest, "run %d", run)
		require.False(t, d2.IsLogOverflow(), "run %d", run)

		got := make([]byte, ddevBytes)
		_, err = d2.ReadAt(got, 0)
		require.NoError(t, err)
		t.Run(fmt.Sprintf("run%d", run), func(t *testing.T) { checkModel(t, ops, initial, got) })

		var wl bytes.Buffer
		end, err := d2.ReadLog(ctx, start, wlog.InvalidLsid, &wl)
		require.NoError(t, err, "run %d: extract", run)
		require.Equal(t, ls.Permanent, end)
		redone := bytes.Clone(initial)
		r, err := wlog.NewReader(&wl)
		require.NoError(t, err)
		_, err = wlog.Redo(ctx, r, sliceWriterAt(redone), wlog.RedoOptions{ZeroDiscard: true})
		require.NoError(t, err, "run %d: the extracted log must be valid", run)
		require.True(t, bytes.Equal(redone, got), "run %d: data device != initial image + redo of the log", run)
		require.NoError(t, d2.Close())
		require.True(t, bytes.Equal(got, ddev2.snapshot()), "run %d: data device after close", run)
	}
	t.Logf("%d runs, %d crashed during the workload", runs, crashes)
}
