package proxy

import (
	"bytes"
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/server"
	"github.com/walb-go/walb/wire"
)

// §4.1/§4.3/§4.6: every command in every steady state. ok means the command
// succeeds and leaves the volume in state after; otherwise it fails with the
// wrong-state code and the state is unchanged.
func TestStateCommandTable(t *testing.T) {
	ctx := context.Background()
	info := ArchiveInfo{Host: "h", Port: 9, Compression: DefaultCompression}
	type cmd func(p *Proxy) error
	commands := map[string]cmd{
		"archive-info add":    func(p *Proxy) error { return p.AddArchiveInfo(ctx, "v", "a9", info, false) },
		"archive-info update": func(p *Proxy) error { return p.AddArchiveInfo(ctx, "v", "a0", info, true) },
		"archive-info delete": func(p *Proxy) error { return p.DeleteArchiveInfo(ctx, "v", "a0") },
		"clear-vol":           func(p *Proxy) error { return p.ClearVol(ctx, "v") },
		"start":               func(p *Proxy) error { return p.Start(ctx, "v") },
		"stop graceful":       func(p *Proxy) error { return p.Stop(ctx, "v", StopGraceful) },
		"stop force":          func(p *Proxy) error { return p.Stop(ctx, "v", StopForce) },
		"stop empty":          func(p *Proxy) error { return p.Stop(ctx, "v", StopEmpty) },
		"resize":              func(p *Proxy) error { return p.Resize(ctx, "v", 100) },
		"kick":                func(p *Proxy) error { return p.Kick(ctx, "v", "") },
		"wlog-transfer": func(p *Proxy) error {
			_, err := receive(ctx, p, "v", newWlogGen(512).header(), bytes.NewReader(nil), testDiff(1, true))
			return err
		},
	}
	const fail = ""
	// after[cmd] = {Clear, Stopped, Started}: the state after success, or fail.
	table := map[string][3]string{
		"archive-info add":    {StateStopped, StateStopped, fail},
		"archive-info update": {StateStopped, StateStopped, fail},
		"archive-info delete": {fail, StateStopped, fail}, // two archives: stays Stopped
		"clear-vol":           {fail, StateClear, fail},
		"start":               {fail, StateStarted, fail},
		"stop graceful":       {fail, fail, StateStopped},
		"stop force":          {fail, fail, StateStopped},
		"stop empty":          {fail, fail, StateStopped},
		"resize":              {fail, StateStopped, fail},
		"kick":                {fail, fail, StateStarted},
		"wlog-transfer":       {fail, fail, StateStarted},
	}
	require.Len(t, table, len(commands))
	for name, c := range commands {
		for i, from := range []string{StateClear, StateStopped, StateStarted} {
			t.Run(name+"/"+from, func(t *testing.T) {
				p := openTest(t, testConfig(t, newFakeArchive()))
				if from != StateClear {
					require.NoError(t, p.AddArchiveInfo(ctx, "v", "a0", info, false))
					require.NoError(t, p.AddArchiveInfo(ctx, "v", "a1", info, false))
				}
				if from == StateStarted {
					require.NoError(t, p.Start(ctx, "v"))
				}
				require.Equal(t, from, p.State("v"))
				err := c(p)
				if want := table[name][i]; want != fail {
					require.NoError(t, err)
					require.Equal(t, want, p.State("v"))
				} else {
					require.ErrorIs(t, err, wire.ErrWrongState)
					require.Equal(t, from, p.State("v"))
				}
			})
		}
	}
}

// The table itself: transient states lead back where they came from.
func TestStatesTable(t *testing.T) {
	for _, s := range []string{StateClear, StateStopped, StateStarted} {
		require.True(t, States.IsSteady(s), s)
	}
	for _, s := range []string{StateAddArchiveInfo, StateDeleteArchiveInfo, StateClearVol, StateStart, StateStop, StateWaitForEmpty, StateWlogRecv} {
		require.True(t, States.IsTransient(s), s)
	}
	require.True(t, States.CanChange(StateWaitForEmpty, StateStarted), "stop empty rolls back")
	require.True(t, States.CanChange(StateDeleteArchiveInfo, StateClear), "deleting the last archive clears")
	require.False(t, States.CanChange(StateStarted, StateClearVol))
	require.Equal(t, StateClear, States.Initial())
}

// Commands that need a volume not being stopped are refused with the
// stopping code while a stop empty waits, and bad names are refused first.
func TestCommandsWhileStoppingAndBadNames(t *testing.T) {
	ctx := context.Background()
	arch := newFakeArchive()
	arch.setReply(func(WdiffRequest) error { return remote(wire.ErrSyncing) }) // the queue never empties
	p := openTest(t, testConfig(t, arch))
	startedVolume(t, p, "v", "a0")
	_, err := receive(ctx, p, "v", newWlogGen(512).header(), bytes.NewReader(nil), testDiff(1, true))
	require.NoError(t, err)

	done := make(chan error, 1)
	stopCtx, cancel := context.WithCancel(ctx)
	go func() { done <- p.Stop(stopCtx, "v", StopEmpty) }()
	waitFor(t, "stop empty to begin", func() bool { return p.State("v") == StateWaitForEmpty })
	_, err = p.BeginReceive(ctx, "v", newWlogGen(512).header())
	require.ErrorIs(t, err, server.ErrStopping)
	require.ErrorIs(t, p.Stop(ctx, "v", StopGraceful), server.ErrStopping)
	cancel()
	require.ErrorIs(t, <-done, ErrTimeout)
	require.Equal(t, StateStarted, p.State("v"), "stop empty rolled back")

	for _, bad := range []string{"", "a/b", "..", "x y", string(make([]byte, 65))} {
		require.ErrorIs(t, p.Start(ctx, bad), server.ErrBadVolumeName, "%q", bad)
		require.ErrorIs(t, p.ClearVol(ctx, bad), server.ErrBadVolumeName)
		require.ErrorIs(t, p.AddArchiveInfo(ctx, "v", bad, ArchiveInfo{Host: "h", Port: 1, Compression: DefaultCompression}, false), ErrBadArchiveInfo)
	}
	require.ErrorIs(t, p.Kick(ctx, "v", "nope"), ErrNoArchive)
	_, err = p.IsWdiffSendError("v", "nope")
	require.ErrorIs(t, err, ErrNoArchive)
	_, err = p.IsWdiffSendError("nope", "a0")
	require.ErrorIs(t, err, server.ErrWrongState)
}
