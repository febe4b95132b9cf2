package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/nbd"
)

func TestDevOptions(t *testing.T) {
	tests := []struct {
		in      string
		want    devOptions
		str     string
		fields  string
		wantErr bool
	}{
		{in: "default", str: "default"},
		{in: "flushmb=64", want: devOptions{flushMB: 64}, str: "flushmb=64", fields: "LogFlushIntervalMB"},
		{in: "gcdelay=100us,pendingmb=256,flushmb=8", want: devOptions{flushMB: 8, pendingMB: 256, gcDelay: 100 * time.Microsecond},
			str: "flushmb=8,pendingmb=256,gcdelay=100µs", fields: "LogFlushIntervalMB+MaxPendingMB+GroupCommitDelay"},
		{in: "packkb=4096,gcdepth=8,flushint=10ms", want: devOptions{packKB: 4096, gcDepth: 8, flushInterval: 10 * time.Millisecond},
			str: "flushint=10ms,packkb=4096,gcdepth=8", fields: "LogFlushInterval+MaxLogpackKB+GroupCommitDepth"},
		{in: "", wantErr: true},
		{in: "flushmb", wantErr: true},
		{in: "flushmb=0", wantErr: true},
		{in: "flushmb=-1", wantErr: true},
		{in: "pendingmb=1x", wantErr: true},
		{in: "gcdelay=0s", wantErr: true},
		{in: "gcdelay=soon", wantErr: true},
		{in: "depth=4", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			o, err := parseDevOptions(tt.in)
			if tt.wantErr {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, o)
			require.Equal(t, tt.str, o.String())
			require.Equal(t, tt.fields, o.fields())
			back, err := parseDevOptions(o.String())
			require.NoError(t, err)
			require.Equal(t, o, back)
			wo := o.walb(nil)
			require.Equal(t, o.flushMB, wo.LogFlushIntervalMB)
			require.Equal(t, o.pendingMB, wo.MaxPendingMB)
			require.Equal(t, o.packKB, wo.MaxLogpackKB)
			require.Equal(t, o.gcDelay, wo.GroupCommitDelay)
			require.Equal(t, o.gcDepth, wo.GroupCommitDepth)
			require.Equal(t, o.flushInterval, wo.LogFlushInterval)
		})
	}
	a := devOptions{flushMB: 64, gcDelay: time.Millisecond}
	require.Equal(t, devOptions{flushMB: 16, pendingMB: 256, gcDelay: time.Millisecond}, a.with(devOptions{flushMB: 16, pendingMB: 256}))
}

func TestParseSweep(t *testing.T) {
	s, err := parseSweep("  flushmb=16 default flushmb=16 pendingmb=8,flushmb=2 ")
	require.NoError(t, err)
	require.Equal(t, []devOptions{{flushMB: 16}, {flushMB: 2, pendingMB: 8}}, s, "defaults and repeats are dropped")
	s, err = parseSweep("none")
	require.NoError(t, err)
	require.Empty(t, s)
	_, err = parseSweep("flushmb=16 packkb=")
	require.Error(t, err)
}

// TestSweepSummary checks the choice of the combined variant and of the
// option credited for the gain.
func TestSweepSummary(t *testing.T) {
	sweep, err := parseSweep("flushmb=16 flushmb=64 pendingmb=256 gcdelay=1ms")
	require.NoError(t, err)
	w := devWorkloads[0]
	tests := []struct {
		name     string
		rates    map[string]float64
		again    float64 // the defaults after the sweep; 0: not measured
		combined string  // "" when none is due
		summary  string
	}{
		{
			name:     "two options help",
			rates:    map[string]float64{"default": 100, "flushmb=16": 110, "flushmb=64": 120, "pendingmb=256": 105, "gcdelay=1ms": 90},
			combined: "flushmb=64,pendingmb=256",
			summary:  "device sweep seq 1M: default 100.0 MB/s; best flushmb=64 120.0 MB/s (1.20x default); the option that made the difference: LogFlushIntervalMB (flushmb=64 alone: 1.20x default)\n",
		},
		{
			name:    "one option helps",
			rates:   map[string]float64{"default": 100, "flushmb=16": 101, "flushmb=64": 102, "pendingmb=256": 150, "gcdelay=1ms": 90},
			summary: "device sweep seq 1M: default 100.0 MB/s; best pendingmb=256 150.0 MB/s (1.50x default); the option that made the difference: MaxPendingMB (pendingmb=256 alone: 1.50x default)\n",
		},
		{
			name:     "spread of the defaults raises the bar",
			rates:    map[string]float64{"default": 100, "flushmb=16": 110, "flushmb=64": 120, "pendingmb=256": 105, "gcdelay=1ms": 90},
			again:    115,
			combined: "",
			summary:  "device sweep seq 1M: default 115.0 MB/s (best of 100.0 MB/s and 115.0 MB/s after the sweep); no option gained 15% or more (best flushmb=64 120.0 MB/s)\n",
		},
		{
			name:    "noise only",
			rates:   map[string]float64{"default": 100, "flushmb=16": 101, "flushmb=64": 102, "pendingmb=256": 99, "gcdelay=1ms": 90},
			summary: "device sweep seq 1M: default 100.0 MB/s; no option gained 3% or more (best flushmb=64 102.0 MB/s)\n",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out strings.Builder
			s := &devSuite{b: &bench{cfg: config{sweep: sweep}, out: &out}, rates: map[string]map[string]float64{w.name: tt.rates},
				again: map[string]float64{}}
			if tt.again > 0 {
				s.again[w.name] = tt.again
			}
			c, ok := s.combined(w)
			require.Equal(t, tt.combined != "", ok)
			if ok {
				require.Equal(t, tt.combined, c.String())
			}
			s.summary(w)
			require.Equal(t, tt.summary, out.String())
		})
	}
}

func TestStats(t *testing.T) {
	path := filepath.Join(t.TempDir(), "stats")
	require.NoError(t, childStats{"write_ns": 5, "log_bytes": 1 << 40}.appendTo(path))
	require.NoError(t, childStats{"write_ns": 3}.appendTo(path))
	runs, err := readStats(path)
	require.NoError(t, err)
	require.Equal(t, []childStats{{"write_ns": 5, "log_bytes": 1 << 40}, {"write_ns": 3}}, runs)

	r := result{label: "x", inner: true, samples: []sample{{inner: 2 * time.Second}, {inner: time.Second}}}
	best, err := bestStats(r, runs)
	require.NoError(t, err)
	require.Equal(t, time.Duration(3), best.dur("write_ns"), "the stats of the faster second run")
	_, err = bestStats(result{label: "x", samples: r.samples[:1]}, runs)
	require.Error(t, err, "one block per run")

	require.NoError(t, os.WriteFile(path, []byte("write_ns x\nend\n"), 0o644))
	_, err = readStats(path)
	require.Error(t, err)
}

// TestWritePatterns checks the byte counts and offsets of both patterns,
// and that checkSeq finds a damaged block.
func TestWritePatterns(t *testing.T) {
	const span, total = 8 << 20, 20 << 20
	var (
		mu    sync.Mutex
		n     int64
		calls int
		bad   []int64 // misaligned or out-of-span offsets
	)
	w := func(p []byte, off int64) error {
		mu.Lock()
		defer mu.Unlock()
		if off%int64(len(p)) != 0 || off+int64(len(p)) > span {
			bad = append(bad, off)
		}
		n += int64(len(p))
		calls++
		return nil
	}
	require.NoError(t, writePattern(context.Background(), "rand", w, 1, span, total))
	require.EqualValues(t, total, n)
	require.Equal(t, total/randBlock, calls)
	require.Empty(t, bad)
	n, calls = 0, 0
	require.NoError(t, writePattern(context.Background(), "seq", w, 1, span, total))
	require.EqualValues(t, total, n)
	require.Equal(t, total/seqChunk, calls)
	require.Empty(t, bad)
	require.Error(t, writePattern(context.Background(), "zigzag", w, 1, span, total))

	path := filepath.Join(t.TempDir(), "data")
	require.NoError(t, zeroFile(path, span))
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	require.NoError(t, err)
	defer f.Close()
	fw := func(p []byte, off int64) error { _, err := f.WriteAt(p, off); return err }
	require.NoError(t, writePattern(context.Background(), "seq", fw, 7, span, 4<<20))
	require.NoError(t, checkSeq(path, 7, 4<<20))
	require.Error(t, checkSeq(path, 8, 4<<20), "another seed")
	require.Error(t, checkSeq(path, 7, 5<<20), "past what was written")
	_, err = f.WriteAt([]byte{1}, 3<<20+5)
	require.NoError(t, err)
	require.Error(t, checkSeq(path, 7, 4<<20))
}

func TestSameContent(t *testing.T) {
	dir := t.TempDir()
	a, b, c := filepath.Join(dir, "a"), filepath.Join(dir, "b"), filepath.Join(dir, "c")
	require.NoError(t, randomFile(a, 5<<20, 1))
	require.NoError(t, randomFile(b, 5<<20, 1))
	require.NoError(t, sameContent(a, b))
	require.NoError(t, randomFile(c, 5<<20, 2))
	require.Error(t, sameContent(a, c))
	require.NoError(t, randomFile(c, 4<<20, 1))
	require.Error(t, sameContent(a, c), "sizes differ")
}

func TestCountedBackend(t *testing.T) {
	path := filepath.Join(t.TempDir(), "img")
	require.NoError(t, zeroFile(path, 1<<20))
	fb, err := nbd.OpenFileBackend(path, false)
	require.NoError(t, err)
	defer fb.Close()
	cb := newCountedBackend(fb)
	var _ nbd.Backend = cb
	buf := make([]byte, 8192)
	_, err = cb.WriteAt(buf, 0)
	require.NoError(t, err)
	_, err = cb.WriteAtFUA(buf[:4096], 8192)
	require.NoError(t, err)
	_, err = cb.ReadAt(buf, 4096)
	require.NoError(t, err)
	require.NoError(t, cb.Flush())
	require.NoError(t, cb.WriteZeroes(0, 4096, false))
	require.NoError(t, cb.Trim(0, 4096))
	require.EqualValues(t, 1<<20, cb.Size())
	require.True(t, cb.CanMultiConn())
	st := childStats{}
	cb.addTo(st)
	require.Equal(t, childStats{"req_reads": 1, "req_read_bytes": 8192, "req_writes": 1, "req_write_bytes": 12288, "req_flushes": 1,
		"req_fuas": 1, "req_trims": 1, "req_zeroes": 1, "req_max_in_flight": 1}, st)
	require.Equal(t, "requests: 1 reads of 8 KiB, 2 writes of 6 KiB, 1 FUA, 1 flushes, 1 write-zeroes, 1 trims; up to 1 in flight", requestSummary(st))
	require.Empty(t, requestSummary(childStats{"server_cpu_ns": 1}))
}

// TestCPUWatch checks the /proc/stat reading on Linux: busy time only
// grows, and others' time is never negative.
func TestCPUWatch(t *testing.T) {
	a, err := systemBusy()
	require.NoError(t, err)
	require.Positive(t, a)
	w := startCPUWatch()
	x := 0
	for i := range 1 << 22 {
		x += i * i
	}
	require.NotZero(t, x)
	b, err := systemBusy()
	require.NoError(t, err)
	require.GreaterOrEqual(t, b, a)
	others, ok := w.others(0)
	require.True(t, ok)
	require.GreaterOrEqual(t, others, time.Duration(0))
	st := childStats{}
	st.addOthers(w, time.Hour)
	require.Equal(t, int64(0), st["others_cpu_ns"], "excluding more than was used leaves zero")
	require.Regexp(t, `^\d+\.\d+ \d+\.\d+ \d+\.\d+$`, loadAverage())
}
