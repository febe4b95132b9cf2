package main

import (
	"bytes"
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/group"
	"github.com/walb-go/walb/nbd"
)

// syncBuffer is a bytes.Buffer safe for the program and the test at once.
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

func TestRun(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a backup group")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out syncBuffer
	require.NoError(t, run(ctx, []string{"-size", "8"}, &out, nil), out.String())
	require.Contains(t, out.String(), "volume vol0 (8 MiB) backed up")
	require.Regexp(t, `overwrote it; restored gid \d+ reads "hello from `, out.String())
}

// TestServeAndResume serves a group in a kept directory, writes to the
// device over NBD while it runs, stops it with the context (the signal),
// and runs again on the directory: the volume is resumed, not re-created.
func TestServeAndResume(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a backup group")
	}
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sctx, stop := context.WithCancel(ctx)
	var out syncBuffer
	ready := make(chan *group.Group, 1)
	done := make(chan error, 1)
	go func() { done <- run(sctx, []string{"-dir", dir, "-size", "8", "-serve"}, &out, ready) }()
	var g *group.Group
	select {
	case g = <-ready:
	case err := <-done:
		t.Fatalf("run ended before serving: %v\n%s", err, out.String())
	}
	require.Contains(t, out.String(), "serving until interrupted")
	require.Contains(t, out.String(), "-storage s0=127.0.0.1:")
	c, err := nbd.Dial(ctx, "tcp", g.DeviceNBDAddr(), nbd.ClientOptions{Export: "vol0"})
	require.NoError(t, err)
	_, err = c.WriteAt([]byte(strings.Repeat("x", 4096)), 1<<20)
	require.NoError(t, err)
	require.NoError(t, c.Flush())
	require.NoError(t, c.Close())
	stop()
	require.NoError(t, <-done, out.String())
	require.Contains(t, out.String(), "shutting down")

	var out2 syncBuffer
	require.NoError(t, run(ctx, []string{"-dir", dir}, &out2, nil), out2.String())
	require.Contains(t, out2.String(), "volume vol0 resumed from "+dir)
}
