package storage

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/server"
	"github.com/walb-go/walb/wire"
)

// startServer runs a storage Server on a unix socket with fake peers.
func startServer(t *testing.T) (*Server, Client, *testEnv) {
	t.Helper()
	e := &testEnv{t: t, dir: t.TempDir(), devs: NewDeviceMap(), proxies: newFakeProxies(), archive: &fakeArchive{}}
	base := filepath.Join(e.dir, "base")
	require.NoError(t, os.Mkdir(base, 0o755))
	sock := "unix:" + filepath.Join(e.dir, "s.sock")
	srv, err := NewServer(server.Config{ID: "s0", Addr: sock, Logger: testLogger()}, Config{
		BaseDir: base, Archive: "a0", Proxies: []string{"p0"}, Devices: e.devs,
		ProxyClient: e.proxies, ArchiveClient: e.archive,
		RetryMin: 20 * time.Millisecond, RetryMax: 100 * time.Millisecond, MonitorInterval: 10 * time.Millisecond,
		HeartbeatInterval: 10 * time.Millisecond, ProxyCheckAge: 50 * time.Millisecond,
	})
	require.NoError(t, err)
	require.NoError(t, srv.Server().Listen())
	done := make(chan error, 1)
	go func() { done <- srv.Run(context.Background()) }()
	t.Cleanup(func() {
		srv.Server().Shutdown(server.Force)
		require.NoError(t, <-done)
	})
	e.st = srv.Storage()
	return srv, Client{Addr: sock, ID: "test"}, e
}

func TestServerCommands(t *testing.T) {
	_, c, e := startServer(t)
	dev, _ := e.addDevice("d0", 256<<10, 1<<20, true)
	ctx := context.Background()
	state := func() string {
		st, err := c.State(ctx, "v")
		require.NoError(t, err)
		return st
	}
	waitState := func(want string) {
		waitFor(t, "state "+want, 10*time.Second, func() bool { return state() == want })
	}

	ht, err := c.HostType(ctx)
	require.NoError(t, err)
	require.Equal(t, "storage", ht)
	require.Equal(t, StateClear, state())

	require.NoError(t, c.InitVol(ctx, "v", "d0"))
	require.ErrorIs(t, c.InitVol(ctx, "v", "d0"), wire.ErrWrongState)
	require.ErrorIs(t, c.InitVol(ctx, "w", "d0"), wire.ErrExists)
	vols, err := c.VolumeNames(ctx)
	require.NoError(t, err)
	require.Equal(t, []string{"v"}, vols)

	require.NoError(t, c.FullBackup(ctx, "v", 64<<10))
	waitState(StateTarget)
	gid, err := c.Snapshot(ctx, "v")
	require.NoError(t, err)
	e.waitSent("v", gid, dev)

	u, err := c.UUID(ctx, "v")
	require.NoError(t, err)
	require.Equal(t, meta.UUID(dev.UUID()), u)
	over, err := c.IsOverflow(ctx, "v")
	require.NoError(t, err)
	require.False(t, over)
	lu, err := c.LogUsage(ctx, "")
	require.NoError(t, err)
	require.Len(t, lu, 1)
	require.True(t, strings.HasPrefix(lu[0], "name:v\tusage_pb:"))
	ls, err := c.LatestSnap(ctx, "v")
	require.NoError(t, err)
	require.Len(t, ls, 1)
	require.Contains(t, ls[0], "gid:")
	tsd, err := c.TsDelta(ctx)
	require.NoError(t, err)
	require.Empty(t, tsd, "the fake archive gathers no snapshots")

	st, err := c.Status(ctx, "")
	require.NoError(t, err)
	require.Contains(t, strings.Join(st, "\n"), "volume v state Target")
	st, err = c.Status(ctx, "v")
	require.NoError(t, err)
	require.Contains(t, st, "state Target")

	require.NoError(t, c.SetFullScanBps(ctx, 1<<20))
	require.Equal(t, uint64(1<<20), e.st.FullScanBps())
	require.NoError(t, c.Kick(ctx))
	require.NoError(t, c.Resize(ctx, "v", 0))

	require.NoError(t, c.Stop(ctx, "v", false))
	waitState(StateStopped)
	_, err = c.LatestSnap(ctx, "v")
	require.ErrorIs(t, err, wire.ErrWrongState)
	require.NoError(t, c.ResetVol(ctx, "v", 7))
	require.Equal(t, StateSyncReady, state())
	require.NoError(t, c.Start(ctx, "v", Standby))
	require.Equal(t, StateStandby, state())
	require.ErrorIs(t, c.ClearVol(ctx, "v"), wire.ErrWrongState)
	require.NoError(t, c.Stop(ctx, "v", true))
	waitState(StateSyncReady)
	require.NoError(t, c.ClearVol(ctx, "v"))
	require.Equal(t, StateClear, state())
}

func TestServerBadRequests(t *testing.T) {
	_, c, e := startServer(t)
	e.addDevice("d0", 64<<10, 256<<10, true)
	ctx := context.Background()
	bad := []struct {
		cmd  string
		args []string
		code error
	}{
		{CmdInitVol, []string{"v"}, wire.ErrBadRequest},
		{CmdInitVol, []string{"v", "d0", "x"}, wire.ErrBadRequest},
		{CmdInitVol, []string{"../v", "d0"}, wire.ErrBadRequest},
		{CmdInitVol, []string{"v", "nosuch"}, wire.ErrNotFound},
		{CmdStart, []string{"v", "master"}, wire.ErrBadRequest},
		{CmdStop, []string{"v", "empty"}, wire.ErrBadRequest},
		{CmdStop, []string{"nosuch"}, wire.ErrNotFound},
		{CmdResetVol, []string{"v", "-1"}, wire.ErrBadRequest},
		{CmdFullBkp, []string{"v", "3x"}, wire.ErrBadRequest},
		{CmdFullBkp, []string{"v", "0"}, wire.ErrBadRequest},
		{CmdResize, []string{"v", "1000"}, wire.ErrBadRequest},
		{CmdSnapshot, []string{}, wire.ErrBadRequest},
		{CmdSetFullScanBps, []string{"fast"}, wire.ErrBadRequest},
		{CmdHashBkp, []string{"v", "3x"}, wire.ErrBadRequest},
		{CmdHashBkp, []string{"v", "0"}, wire.ErrBadRequest},
		{CmdHashBkp, []string{"v", "1000"}, wire.ErrBadRequest},
		{CmdHashBkp, []string{"nosuch"}, wire.ErrNotFound},
		{server.CmdGet, []string{GetProgress, "nosuch"}, wire.ErrNotFound},
		{server.CmdGet, []string{GetProgress}, wire.ErrBadRequest},
		{"no-such-command", []string{"v"}, wire.ErrUnknownCommand},
		{server.CmdGet, []string{GetState}, wire.ErrBadRequest},
		{server.CmdGet, []string{GetUUID, "nosuch"}, wire.ErrNotFound},
		{server.CmdGet, []string{"no-such-target"}, wire.ErrBadRequest},
		{server.CmdStatus, []string{"a", "b"}, wire.ErrBadRequest},
	}
	for _, b := range bad {
		conn, err := c.dial(ctx, b.cmd, b.args...)
		if err == nil {
			_, err = conn.RecvReply(ctx)
			conn.Close()
		}
		require.ErrorIs(t, err, b.code, "%s %q: %v", b.cmd, b.args, err)
	}
	require.NoError(t, c.InitVol(ctx, "v", "d0"))
	_, err := c.Snapshot(ctx, "v")
	require.ErrorIs(t, err, wire.ErrWrongState)
}

func TestParseSize(t *testing.T) {
	for s, want := range map[string]uint64{"0": 0, "512": 512, "4k": 4096, "1M": 1 << 20, "2g": 2 << 30, "1t": 1 << 40, "1p": 1 << 50} {
		got, err := ParseSize(s)
		require.NoError(t, err, s)
		require.Equal(t, want, got, s)
	}
	for _, s := range []string{"", "k", "-1", "1x", "99999999999p", "1.5k"} {
		_, err := ParseSize(s)
		require.ErrorIs(t, err, wire.ErrBadRequest, s)
	}
}
