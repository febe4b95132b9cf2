package walb

import (
	"context"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestMaxPendingOneMiB: MaxPendingMB=1 gives MinPendingMB=0 by default;
// throttled writers must still be let go once nothing is pending.
func TestMaxPendingOneMiB(t *testing.T) {
	ctx := context.Background()
	const ddevBytes = 4 << 20
	img := formatMem(t, 4096, 8<<20, make([]byte, ddevBytes), 0)
	ctl := newCrashCtl(1, 0)
	dev, err := OpenStorage(ctx, ctl.disk(img, 4096), ctl.disk(make([]byte, ddevBytes), 4096),
		Options{MaxPendingMB: 1, Logger: quietLogger()})
	require.NoError(t, err)
	require.Zero(t, dev.minPending)
	_, err = dev.WriteAt(randBytes(1<<20), 0) // pending reaches max: throttled
	require.NoError(t, err)
	require.Eventually(t, func() bool { return dev.Lsids().Written == dev.Lsids().Completed }, 5*time.Second, time.Millisecond)
	done := make(chan error, 1)
	go func() { _, err := dev.WriteAt(randBytes(4096), 0); done <- err }()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(3 * time.Second):
		dev.mu.Lock()
		p, th := dev.pending, dev.throttled
		dev.mu.Unlock()
		t.Fatalf("write blocked forever: pending=%d throttled=%v minPending=%d", p, th, dev.minPending)
	}
	require.NoError(t, dev.Close())
}

// TestFreezeCancelledMelts: a FreezeContext whose wait is cancelled returns
// the error and undoes the freeze, as hold does; later writes go through.
func TestFreezeCancelledMelts(t *testing.T) {
	var ldev *gatedDisk
	dev := openMemDevice(t, func(m *memDisk) Storage { ldev = newGatedDisk(m); return ldev }, Options{})
	ldev.arm()
	go dev.WriteAt(randBytes(4096), 0)
	<-ldev.entered // inflight == 1
	fctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	require.ErrorIs(t, dev.FreezeContext(fctx, 0), context.DeadlineExceeded)
	close(ldev.release)
	done := make(chan error, 1)
	go func() { _, err := dev.WriteAt(randBytes(4096), 4096); done <- err }()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(2 * time.Second):
		t.Errorf("write blocked after a failed Freeze: frozen=%v", dev.IsFrozen())
		dev.Melt()
		require.NoError(t, <-done)
	}
	require.NoError(t, dev.Close())
}

type syncGate struct {
	*memDisk
	mu   sync.Mutex
	gate chan struct{}
}

func (s *syncGate) Sync() error {
	s.mu.Lock()
	g := s.gate
	s.mu.Unlock()
	if g != nil {
		<-g
	}
	return s.memDisk.Sync()
}

// TestResetWALWakesFlush: Flush waiters satisfied by ResetWAL's drain must
// not miss their wake-up when the lsids are reset to 0.
func TestResetWALWakesFlush(t *testing.T) {
	ctx := context.Background()
	var ldev *syncGate
	dev := openMemDevice(t, func(m *memDisk) Storage { ldev = &syncGate{memDisk: m}; return ldev },
		Options{LogFlushInterval: time.Hour, CheckpointInterval: -1})
	for it := range 100 {
		_, err := dev.WriteAt(randBytes(4096), 0)
		require.NoError(t, err)
		g := make(chan struct{})
		ldev.mu.Lock()
		ldev.gate = g
		ldev.mu.Unlock()
		var wg sync.WaitGroup
		for range 16 {
			wg.Add(1)
			go func() { defer wg.Done(); _ = dev.Flush() }()
		}
		rw := make(chan error, 1)
		go func() { rw <- dev.ResetWAL(ctx) }()
		time.Sleep(time.Millisecond)
		ldev.mu.Lock()
		ldev.gate = nil
		ldev.mu.Unlock()
		close(g)
		require.NoError(t, <-rw)
		ch := make(chan struct{})
		go func() { wg.Wait(); close(ch) }()
		select {
		case <-ch:
		case <-time.After(5 * time.Second):
			buf := make([]byte, 1<<20)
			n := runtime.Stack(buf, true)
			t.Log(string(buf[:n]))
			t.Fatalf("iteration %d: a Flush missed the ResetWAL wake-up: lsids %+v", it, dev.Lsids())
		}
	}
	require.NoError(t, dev.Close())
}
