package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"io"
	"math/rand/v2"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/controller"
	"github.com/walb-go/walb/group"
	"github.com/walb-go/walb/meta"
)

func diff(b, e uint64, mergeable bool, size uint64) meta.Diff {
	d := meta.CleanDiff(b, e)
	d.Mergeable, d.DataSize = mergeable, size
	return d
}

func TestMergeRange(t *testing.T) {
	for _, tc := range []struct {
		name  string
		ds    []meta.Diff
		size  uint64
		files int
		b, e  uint64
		n     int
		ok    bool
	}{
		{"empty", nil, 100, 10, 0, 0, 0, false},
		{"one", []meta.Diff{diff(0, 1, true, 1)}, 100, 10, 0, 0, 0, false},
		{"explicit boundaries only", []meta.Diff{diff(0, 1, false, 1), diff(1, 2, false, 1), diff(2, 3, false, 1)}, 100, 10, 0, 0, 0, false},
		{"first may be explicit", []meta.Diff{diff(0, 1, false, 5), diff(1, 2, true, 5)}, 100, 10, 0, 2, 2, true},
		{"smallest average wins", []meta.Diff{
			diff(0, 1, false, 50), diff(1, 2, true, 50), // average 50
			diff(2, 3, false, 3), diff(3, 4, true, 1), diff(4, 5, true, 2), // average 2
		}, 1000, 10, 2, 5, 3, true},
		{"file limit", []meta.Diff{diff(0, 1, false, 1), diff(1, 2, true, 1), diff(2, 3, true, 1), diff(3, 4, true, 1)}, 100, 2, 0, 2, 2, true},
		{"size limit", []meta.Diff{diff(0, 1, false, 60), diff(1, 2, true, 60), diff(2, 3, false, 10), diff(3, 4, true, 10)}, 100, 10, 2, 4, 2, true},
		{"compared diff", []meta.Diff{diff(0, 1, false, 1), func() meta.Diff { d := diff(1, 2, true, 1); d.CompDiff = true; return d }()}, 100, 10, 0, 0, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, e, n, ok := mergeRange(tc.ds, tc.size, tc.files)
			require.Equal(t, tc.ok, ok)
			if ok {
				require.Equal(t, []any{tc.b, tc.e, tc.n}, []any{b, e, n})
			}
		})
	}
}

func TestApplyTarget(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	rs := []controller.RestorableGid{{Gid: 1, Timestamp: t0}, {Gid: 5, Timestamp: t0.Add(time.Minute)}, {Gid: 9, Timestamp: t0.Add(2 * time.Minute)}}
	for _, tc := range []struct {
		limit time.Time
		gid   uint64
		ok    bool
	}{
		{t0.Add(time.Hour), 9, true},
		{t0.Add(90 * time.Second), 5, true},
		{t0.Add(30 * time.Second), 0, false}, // only the base is old enough
	} {
		gid, ok := applyTarget(rs, tc.limit)
		require.Equal(t, tc.ok, ok, tc.limit)
		require.Equal(t, tc.gid, gid)
	}
	_, ok := applyTarget(nil, t0)
	require.False(t, ok)
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]uint64{"1": 1, "4k": 4 << 10, "1g": 1 << 30, "2T": 2 << 40} {
		got, err := parseSize(in)
		require.NoError(t, err, in)
		require.Equal(t, want, got, in)
	}
	for _, in := range []string{"", "k", "0", "-1", "1x", "1.5g", "99999999999999999999t"} {
		_, err := parseSize(in)
		require.Error(t, err, in)
	}
}

func TestBadFlags(t *testing.T) {
	ctx := context.Background()
	for _, args := range [][]string{
		{"-storage", "s0"},
		{"-interval", "0"},
		{"-max-merge-size", "nope"},
		{"extra"},
	} {
		_, err := run(ctx, args, io.Discard)
		require.Error(t, err, "%q", args)
	}
}

// syncBuffer is a bytes.Buffer safe for the logger and the test at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}
func (s *syncBuffer) String() string { s.mu.Lock(); defer s.mu.Unlock(); return s.b.String() }

// TestAgainstGroup runs the orchestrator for a few seconds against an
// embedded group whose device is written all along: it snapshots, applies
// and merges, and the backup stays exact.
func TestAgainstGroup(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a backup group")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	g, err := group.Start(ctx, group.Config{})
	require.NoError(t, err)
	defer g.Close(ctx)
	const size = 8 << 20
	v, err := g.AddVolume(ctx, "vol0", group.VolumeOptions{Size: size})
	require.NoError(t, err)
	_, err = v.FullBackup(ctx)
	require.NoError(t, err)
	base0, err := g.Controller().GetBase(ctx, g.Primary(), "vol0")
	require.NoError(t, err)

	// A steady writer, so that the storage cuts many small diffs.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var werr error
	wg.Add(1)
	go func() {
		defer wg.Done()
		rng := rand.New(rand.NewPCG(1, 1))
		buf := make([]byte, 16<<10)
		for {
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
			for i := range buf {
				buf[i] = byte(rng.Uint32())
			}
			if _, werr = v.Device().WriteAt(buf, rng.Int64N(size/int64(len(buf)))*int64(len(buf))); werr != nil {
				return
			}
		}
	}()

	var args []string
	for _, s := range g.Layout().All() {
		args = append(args, "-"+s.Kind.String(), s.Name+"="+s.Addr)
	}
	// One round per run, until every task ran at least once: how long that
	// takes depends on the machine, so the test waits for the outcome, not
	// for a time.
	args = append(args, "-once", "-keep", "2s", "-max-diffs", "3", "-poll", "20ms")
	var out syncBuffer
	var total stats
	for total.Snapshots < 3 || total.Applies < 1 || total.Merges < 1 {
		require.NoError(t, ctx.Err(), "%+v\n%s", total, out.String())
		st, err := run(ctx, args, &out)
		require.NoError(t, err, out.String())
		require.Equal(t, 1, st.Rounds)
		require.Zero(t, st.Failures, out.String())
		total.Snapshots += st.Snapshots
		total.Applies += st.Applies
		total.Merges += st.Merges
		time.Sleep(100 * time.Millisecond) // let diffs accumulate and age
	}
	close(stop)
	wg.Wait()
	require.NoError(t, werr)
	t.Logf("%+v\n%s", total, out.String())

	base, err := g.Controller().GetBase(ctx, g.Primary(), "vol0")
	require.NoError(t, err)
	require.Greater(t, base.SnapB.GidB, base0.SnapB.GidB, "applies moved the base")
	gid, err := v.Snapshot(ctx)
	require.NoError(t, err)
	img, err := v.Restore(ctx, gid)
	require.NoError(t, err)
	require.Equal(t, sum(t, v.Device(), size), sum(t, openFile(t, img.Path), size))
	require.NoError(t, g.Close(ctx))
}

func openFile(t *testing.T, path string) *os.File {
	f, err := os.Open(path)
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })
	return f
}

func sum(t *testing.T, r io.ReaderAt, size int64) [32]byte {
	h := sha256.New()
	_, err := io.Copy(h, io.NewSectionReader(r, 0, size))
	require.NoError(t, err)
	return [32]byte(h.Sum(nil))
}
