package main

import (
	"bytes"
	"context"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/proxy"
	"github.com/walb-go/walb/wire"
)

// The daemon serves on its socket with its flags and stops on SIGTERM.
func TestRunServesAndStopsOnSignal(t *testing.T) {
	dir := t.TempDir()
	sock := "unix:" + filepath.Join(dir, "proxy.sock")
	var out bytes.Buffer
	done := make(chan int, 1)
	go func() {
		done <- run([]string{"-p", sock, "-b", dir, "-id", "p9", "-l", "proxy.log", "-fg", "1", "-stop"}, &out)
	}()
	cl := &proxy.Client{ID: "test"}
	var ht string
	require.Eventually(t, func() bool {
		var err error
		ht, err = cl.HostType(context.Background(), sock)
		return err == nil
	}, 20*time.Second, 10*time.Millisecond)
	require.Equal(t, proxy.HostType, ht)
	c, err := wire.Dial(context.Background(), sock, "test", proxy.CmdArchiveInfo, nil, "add", "v0", "a0", "127.0.0.1:1")
	require.NoError(t, err)
	require.NoError(t, c.ExpectOK(context.Background()))
	c.Close()
	require.NoError(t, syscall.Kill(syscall.Getpid(), syscall.SIGTERM))
	select {
	case rc := <-done:
		require.Equal(t, 0, rc, out.String())
	case <-time.After(20 * time.Second):
		t.Fatal("no exit after SIGTERM")
	}
	require.FileExists(t, filepath.Join(dir, "proxy.log"))
	require.FileExists(t, filepath.Join(dir, "v0", "a0.archive"))
}

func TestRunRejectsBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{},
		{"-b", t.TempDir(), "-fg", "0"},
		{"-b", t.TempDir(), "extra"},
		{"-b", t.TempDir(), "-ka", "-kacnt", "0"},
		{"-nosuchflag"},
	} {
		var out bytes.Buffer
		require.Equal(t, 2, run(args, &out), "%q", args)
		require.NotEmpty(t, out.String())
	}
}
