package demo

import (
	"bytes"
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestDemoSmall runs the whole demo at small sizes: it fails if any
// restored image differs from the device at its snapshot.
func TestDemoSmall(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a backup group")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out bytes.Buffer
	opt := Options{DeviceMiB: 8, LogMiB: 4, Snapshots: 3, BurstWrites: 60, MaxWriteKiB: 32, Seed: 3}
	require.NoError(t, Run(ctx, &out, opt), out.String())
	s := out.String()
	t.Log("\n" + s)
	// Three snapshots restored; after the apply up to the first, all three
	// again (the first is the base now); the hash backup's snapshot on a0,
	// and on a1 after the replication.
	require.Len(t, regexp.MustCompile(`(?m)restored gid \d+ .* matches snapshot`).FindAllString(s, -1), 8)
	require.Contains(t, s, "burst 2 through NBD")
	require.Regexp(t, `full backup to a0 while writing \(\d+ writes`, s)
	require.Regexp(t, `applied the diffs up to gid \d+`, s)
	require.Regexp(t, `standby, then hash backup to a0: restorable at gid \d+`, s)
	require.Regexp(t, `replicated a0 -> a1 up to gid \d+`, s)
	require.Regexp(t, `restored gid \d+ on a1 `, s)
	require.Contains(t, s, "OK: 8 restores of 4 snapshots matched")
	lines := strings.Split(strings.TrimSpace(s), "\n")
	require.Regexp(t, `closed the group: .* temporary directory removed`, lines[len(lines)-1], "the group is closed last")
}

// TestDemoDirTwice runs the demo twice in one kept directory: the second
// run starts over from the first one's leftovers.
func TestDemoDirTwice(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a backup group")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	opt := Options{Dir: t.TempDir(), DeviceMiB: 4, LogMiB: 4, Snapshots: 2, BurstWrites: 20, MaxWriteKiB: 16, Seed: 4}
	for i := range 2 {
		var out bytes.Buffer
		require.NoError(t, Run(ctx, &out, opt), out.String())
		require.Equal(t, i == 1, strings.Contains(out.String(), "deleted volume vol0 left by an earlier run"), out.String())
		require.Contains(t, out.String(), opt.Dir+" kept")
	}
}

func TestDemoOptions(t *testing.T) {
	for _, opt := range []Options{
		{DeviceMiB: 0, LogMiB: 4, Snapshots: 2, BurstWrites: 1, MaxWriteKiB: 4},
		{DeviceMiB: 8, LogMiB: 1, Snapshots: 2, BurstWrites: 1, MaxWriteKiB: 4},
		{DeviceMiB: 8, LogMiB: 4, Snapshots: 1, BurstWrites: 1, MaxWriteKiB: 4},
		{DeviceMiB: 8, LogMiB: 4, Snapshots: 2, BurstWrites: 0, MaxWriteKiB: 4},
		{DeviceMiB: 8, LogMiB: 4, Snapshots: 2, BurstWrites: 1, MaxWriteKiB: 6},
	} {
		require.Error(t, Run(context.Background(), &bytes.Buffer{}, opt), "%+v", opt)
	}
	require.NoError(t, DefaultOptions.check())
}

// TestRandomWrite: writes stay inside the device, aligned, and fill the
// buffer prefix they report.
func TestRandomWrite(t *testing.T) {
	buf := make([]byte, 64<<10)
	rng := newRand(7)
	for range 1000 {
		n, off := randomWrite(rng, buf, 1<<20)
		require.Zero(t, n%4096)
		require.Zero(t, off%4096)
		require.LessOrEqual(t, off+int64(n), int64(1<<20))
		require.Positive(t, n)
	}
}
