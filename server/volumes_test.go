package server

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/wire"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func newVols() *Volumes { return NewVolumes(archiveTable, quiet) }

func TestVolumesTransition(t *testing.T) {
	ctx := context.Background()
	vs := newVols()
	require.Equal(t, "Clear", vs.State("v0"))
	require.Empty(t, vs.Names())

	err := vs.Transition(ctx, "v0", "Clear", "SyncReady")
	require.ErrorIs(t, err, ErrNoTransition)
	require.Equal(t, wire.ErrWrongState, wire.CodeOf(err))

	require.NoError(t, vs.Set("v0", "Archived"))
	require.Equal(t, []string{"v0"}, vs.Names())
	err = vs.Transition(ctx, "v0", "Stopped", "Start")
	require.ErrorIs(t, err, ErrWrongState)
	require.ErrorIs(t, err, wire.ErrWrongState)
	require.Contains(t, err.Error(), "volume v0 is Archived, not Stopped")
	require.Equal(t, "Archived", vs.State("v0"))

	require.True(t, vs.TryChange("v0", "Archived", "Stop"))
	require.False(t, vs.TryChange("v0", "Archived", "Stop"))
	require.True(t, vs.TryChange("v0", "Stop", "Stopped"))
	require.Equal(t, "Stopped", vs.State("v0"))

	// Back to the initial state: the volume is forgotten.
	require.NoError(t, vs.Transition(ctx, "v0", "Stopped", "ClearVol"))
	require.NoError(t, vs.Transition(ctx, "v0", "ClearVol", "Clear"))
	require.Empty(t, vs.Names())

	require.ErrorIs(t, vs.Set("v1", "FullSync"), ErrNoTransition)
	require.ErrorIs(t, vs.Set("../x", "SyncReady"), ErrBadVolumeName)
	require.ErrorIs(t, vs.Transition(ctx, "a/b", "Clear", "InitVol"), ErrBadVolumeName)
	require.Empty(t, vs.Names())
}

func TestStateTxnCommitAndRollback(t *testing.T) {
	ctx := context.Background()
	vs := newVols()
	require.NoError(t, vs.Set("v", "SyncReady"))

	tx, err := vs.Begin(ctx, "v", "FullSync", Guard{States: []string{"SyncReady"}, Idle: true})
	require.NoError(t, err)
	require.Equal(t, "SyncReady", tx.From())
	require.Equal(t, "FullSync", tx.Via())
	require.Equal(t, "FullSync", vs.State("v"))
	// Locked while the transaction runs.
	require.ErrorIs(t, vs.Transition(ctx, "v", "FullSync", "Archived"), ErrWrongState)
	_, err = vs.Begin(ctx, "v", "FullSync", Guard{})
	require.ErrorIs(t, err, ErrWrongState)
	require.ErrorIs(t, vs.Set("v", "Archived"), ErrWrongState)
	require.ErrorIs(t, vs.Check("v", Guard{Steady: true}), ErrWrongState)
	// A commit the table does not allow leaves the transaction open.
	require.ErrorIs(t, tx.Commit("Stopped"), ErrNoTransition)
	require.Equal(t, "FullSync", vs.State("v"))
	require.NoError(t, tx.Commit("Archived"))
	require.Equal(t, "Archived", vs.State("v"))
	tx.Rollback() // no-op after commit
	require.Equal(t, "Archived", vs.State("v"))
	require.ErrorIs(t, tx.Commit("Archived"), ErrWrongState)

	// A failing command rolls back.
	func() {
		tx, err := vs.Begin(ctx, "v", "HashSync", Guard{States: []string{"Archived"}})
		require.NoError(t, err)
		defer tx.Rollback()
		require.Equal(t, "HashSync", vs.State("v"))
	}()
	require.Equal(t, "Archived", vs.State("v"))

	// Begin checks the state and the table.
	_, err = vs.Begin(ctx, "v", "InitVol", Guard{})
	require.ErrorIs(t, err, ErrWrongState)
	require.Contains(t, err.Error(), "does not lead to InitVol")
	_, err = vs.Begin(ctx, "v", "Archived", Guard{})
	require.ErrorIs(t, err, ErrNoTransition)
	_, err = vs.Begin(ctx, "v", "Stop", Guard{States: []string{"Stopped"}})
	require.ErrorIs(t, err, ErrWrongState)

	// A rolled-back init of an unknown volume leaves nothing behind.
	tx, err = vs.Begin(ctx, "new", "InitVol", Guard{States: []string{"Clear"}})
	require.NoError(t, err)
	require.Contains(t, vs.Names(), "new")
	tx.Rollback()
	require.NotContains(t, vs.Names(), "new")
}

func TestActionsAndGuards(t *testing.T) {
	ctx := context.Background()
	vs := newVols()
	require.NoError(t, vs.Set("v", "Archived"))
	aActive := []string{"Archived", "HashSync", "WdiffRecv", "ReplSyncAsServer"}

	before := time.Now()
	endMerge, err := vs.StartAction("v", "Merge", Guard{States: aActive, NoActions: []string{"Apply", "Merge", "Resize"}})
	require.NoError(t, err)
	require.Equal(t, 1, vs.NumAction("v", "Merge"))
	st := vs.Actions("v")["Merge"]
	require.Equal(t, 1, st.Running)
	require.False(t, st.LastStart.Before(before))

	// Apply excludes Merge; Restore does not.
	_, err = vs.StartAction("v", "Apply", Guard{States: aActive, NoActions: []string{"Restore", "ReplSyncAsClient", "Apply", "Merge", "Resize"}})
	require.ErrorIs(t, err, ErrActionRunning)
	require.Equal(t, wire.ErrActionRunning, wire.CodeOf(err))
	require.Contains(t, err.Error(), "Merge is running")
	endRestore, err := vs.StartAction("v", "Restore", Guard{States: aActive, NoActions: []string{"Restore", "Resize"}})
	require.NoError(t, err)
	endRestore2, err := vs.StartAction("v", "Restore", Guard{States: aActive})
	require.NoError(t, err)
	require.Equal(t, 2, vs.NumAction("v", "Restore"))

	// Commands needing no action at all.
	_, err = vs.Begin(ctx, "v", "Stop", Guard{Idle: true})
	require.ErrorIs(t, err, ErrActionRunning)
	endMerge()
	endMerge() // idempotent
	require.Equal(t, 0, vs.NumAction("v", "Merge"))
	endRestore()
	endRestore2()
	tx, err := vs.Begin(ctx, "v", "Stop", Guard{Idle: true})
	require.NoError(t, err)
	require.NoError(t, tx.Commit("Stopped"))

	// Actions keep an otherwise forgotten volume known.
	end, err := vs.StartAction("w", "Apply", Guard{})
	require.NoError(t, err)
	require.Contains(t, vs.Names(), "w")
	end()
	require.NotContains(t, vs.Names(), "w")
	_, err = vs.StartAction("w", "Apply", Guard{States: aActive})
	require.ErrorIs(t, err, ErrWrongState)
	require.NotContains(t, vs.Names(), "w")
}

func TestStopState(t *testing.T) {
	vs := newVols()
	require.NoError(t, vs.Set("v", "Archived"))
	require.Equal(t, NotStopping, vs.StopState("v"))
	end, err := vs.BeginStop("v", Stopping)
	require.NoError(t, err)
	require.Equal(t, Stopping, vs.StopState("v"))
	_, err = vs.BeginStop("v", ForceStopping)
	require.ErrorIs(t, err, ErrStopping)
	_, err = vs.StartAction("v", "Merge", Guard{NotStopping: true})
	require.ErrorIs(t, err, ErrStopping)
	require.Equal(t, wire.ErrStopping, wire.CodeOf(err))
	_, err = vs.BeginStop("v", NotStopping)
	require.ErrorIs(t, err, ErrBadArgs)
	end()
	end()
	require.Equal(t, NotStopping, vs.StopState("v"))
	end, err = vs.BeginStop("v", WaitingForEmpty)
	require.NoError(t, err)
	require.Equal(t, "WaitingForEmpty", vs.StopState("v").String())
	end()
	require.Equal(t, "StopState(9)", StopState(9).String())
}

func TestWaitFor(t *testing.T) {
	vs := newVols()
	require.NoError(t, vs.Set("v", "Archived"))
	end, err := vs.StartAction("v", "Merge", Guard{})
	require.NoError(t, err)
	tx, err := vs.Begin(context.Background(), "v", "WdiffRecv", Guard{})
	require.NoError(t, err)

	done := make(chan error, 1)
	go func() {
		done <- vs.WaitFor(context.Background(), "v", Guard{Steady: true, Idle: true})
	}()
	require.NoError(t, tx.Commit("Archived"))
	select {
	case err := <-done:
		t.Fatalf("WaitFor returned %v while Merge runs", err)
	case <-time.After(20 * time.Millisecond):
	}
	end()
	require.NoError(t, <-done)

	// Gives up with the reason.
	end, err = vs.StartAction("v", "Apply", Guard{})
	require.NoError(t, err)
	defer end()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Millisecond)
	defer cancel()
	err = vs.WaitFor(ctx, "v", Guard{Idle: true})
	require.ErrorIs(t, err, ErrActionRunning)
	require.Contains(t, err.Error(), "gave up waiting")
}

func TestBeginIsExclusive(t *testing.T) {
	// Many concurrent full backups of one volume: exactly one gets in.
	vs := newVols()
	require.NoError(t, vs.Set("v", "SyncReady"))
	var wins atomic.Int32
	var wg sync.WaitGroup
	start := make(chan struct{})
	txs := make(chan *StateTxn, 64)
	for range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			tx, err := vs.Begin(context.Background(), "v", "FullSync", Guard{States: []string{"SyncReady"}, Idle: true})
			if err == nil {
				wins.Add(1)
				txs <- tx
			}
		}()
	}
	close(start)
	wg.Wait()
	require.Equal(t, int32(1), wins.Load())
	(<-txs).Rollback()
	require.Equal(t, "SyncReady", vs.State("v"))
}
