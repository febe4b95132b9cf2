package storage

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/server"
	"github.com/walb-go/walb/wire"
)

// bringTo puts volume "v" of e (device "d0") into steady state st through
// the commands an operator would use.
func bringTo(t *testing.T, e *testEnv, st string) {
	t.Helper()
	ctx := context.Background()
	if st == StateClear {
		return
	}
	require.NoError(t, e.st.InitVol(ctx, "v", "d0"))
	switch st {
	case StateTarget, StateStopped:
		require.NoError(t, e.st.FullBackup(ctx, "v", BackupOptions{BulkSize: 16 << 10}))
		if st == StateStopped {
			require.NoError(t, e.st.StopVol(ctx, "v", false))
		}
	case StateStandby:
		require.NoError(t, e.st.StartVol(ctx, "v", Standby))
	}
	require.Equal(t, st, e.st.State("v"))
}

// commands of the table test, with the steady state each leads to from an
// accepting state (empty: unchanged).
var tableCommands = []struct {
	name string
	run  func(e *testEnv) error
	to   func(from string) string
}{
	{"init-vol", func(e *testEnv) error { return e.st.InitVol(context.Background(), "v", "d0") }, func(string) string { return StateSyncReady }},
	{"clear-vol", func(e *testEnv) error { return e.st.ClearVol(context.Background(), "v") }, func(string) string { return StateClear }},
	{"start target", func(e *testEnv) error { return e.st.StartVol(context.Background(), "v", Target) }, func(string) string { return StateTarget }},
	{"start standby", func(e *testEnv) error { return e.st.StartVol(context.Background(), "v", Standby) }, func(string) string { return StateStandby }},
	{"stop", func(e *testEnv) error { return e.st.StopVol(context.Background(), "v", false) }, func(from string) string {
		if from == StateTarget {
			return StateStopped
		}
		return StateSyncReady
	}},
	{"full-bkp", func(e *testEnv) error {
		return e.st.FullBackup(context.Background(), "v", BackupOptions{BulkSize: 16 << 10})
	}, func(string) string { return StateTarget }},
	{"hash-bkp", func(e *testEnv) error {
		if e.archive.image == nil { // the archive holds the volume (all zeros)
			e.archive.commit(make([]byte, 64<<10), meta.Snap{}, meta.UUID{}, time.Now())
		}
		return e.st.HashBackup(context.Background(), "v", BackupOptions{BulkSize: 16 << 10})
	}, func(string) string { return StateTarget }},
	{"reset-vol", func(e *testEnv) error { return e.st.ResetVol(context.Background(), "v", 0) }, func(string) string { return StateSyncReady }},
	{"snapshot", func(e *testEnv) error { _, err := e.st.Snapshot(context.Background(), "v"); return err }, func(from string) string { return from }},
	{"resize", func(e *testEnv) error { return e.st.Resize(context.Background(), "v", 0) }, func(from string) string { return from }},
}

// TestStateCommandTable runs every command in every steady state
// (system.md §3.1): accepted where CommandStates allows it, leading to the
// expected state (also after a restart, for the persisted states); refused
// elsewhere with a wrong-state error (not-found for a Clear volume), the
// state unchanged.
func TestStateCommandTable(t *testing.T) {
	states := []string{StateClear, StateSyncReady, StateStopped, StateTarget, StateStandby}
	for _, from := range states {
		for _, cmd := range tableCommands {
			t.Run(from+"/"+cmd.name, func(t *testing.T) {
				e := newEnv(t, envOpts{})
				e.addDevice("d0", 64<<10, 256<<10, true)
				bringTo(t, e, from)
				err := cmd.run(e)
				if slices.Contains(CommandStates[cmd.name], from) {
					require.NoError(t, err)
					want := cmd.to(from)
					require.Equal(t, want, e.st.State("v"))
					e.restart(envOpts{})
					require.Equal(t, want, e.st.State("v"), "after a restart")
					return
				}
				require.Error(t, err)
				if from == StateClear {
					require.ErrorIs(t, err, ErrNotFound)
					require.ErrorIs(t, err, wire.ErrNotFound)
				} else {
					require.ErrorIs(t, err, wire.ErrWrongState, "%v", err)
				}
				require.Equal(t, from, e.st.State("v"))
			})
		}
	}
}

// Every state of the table appears in the documentation's table, and every
// persisted state is steady.
func TestTableShape(t *testing.T) {
	for _, st := range persistedStates {
		require.True(t, Table.IsSteady(st), st)
	}
	for _, st := range []string{StateInitVol, StateClearVol, StateStartStandby, StateStopStandby, StateFullSync,
		StateHashSync, StateReset, StateStartTarget, StateStopTarget} {
		require.True(t, Table.IsTransient(st), st)
	}
	for cmd, sts := range CommandStates {
		for _, st := range sts {
			require.True(t, Table.IsSteady(st), "%s: %s", cmd, st)
		}
	}
}

func TestStoppingRefusesCommands(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.addDevice("d0", 64<<10, 256<<10, true)
	bringTo(t, e, StateTarget)
	end, err := e.st.Volumes().BeginStop("v", server.Stopping)
	require.NoError(t, err)
	_, err = e.st.Snapshot(context.Background(), "v")
	require.ErrorIs(t, err, wire.ErrStopping)
	require.ErrorIs(t, e.st.StopVol(context.Background(), "v", false), wire.ErrStopping, "a second stop")
	require.ErrorIs(t, e.st.Resize(context.Background(), "v", 0), wire.ErrStopping)
	end()
	_, err = e.st.Snapshot(context.Background(), "v")
	require.NoError(t, err)
}

// A crash inside init-vol or clear-vol leaves a temporary directory that
// the next start removes; the volume is then Clear, or whole.
func TestRecoverRemovesLeftovers(t *testing.T) {
	e := newEnv(t, envOpts{})
	e.addDevice("d0", 64<<10, 256<<10, true)
	base := e.st.Config().BaseDir
	require.NoError(t, os.MkdirAll(filepath.Join(base, tmpDirPrefix+"init-v"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(base, tmpDirPrefix+"init-v", fileState), []byte("junk"), 0o644))
	e.restart(envOpts{})
	_, err := os.Stat(filepath.Join(base, tmpDirPrefix+"init-v"))
	require.True(t, os.IsNotExist(err))
	require.Equal(t, StateClear, e.st.State("v"))
	require.NoError(t, e.st.InitVol(context.Background(), "v", "d0"))
}
