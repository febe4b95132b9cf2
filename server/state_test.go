package server

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// archiveTable is the archive's table of system.md §5.1, used as a
// realistic fixture.
var archiveTable = MustStateMachine("Clear",
	Transition{"Clear", "InitVol", "SyncReady"},
	Transition{"SyncReady", "ClearVol", "Clear"},
	Transition{"Stopped", "ClearVol", "Clear"},
	Transition{"SyncReady", "FullSync", "Archived"},
	Transition{"SyncReady", "Resync", "Archived"},
	Transition{"Archived", "HashSync", "Archived"},
	Transition{"Archived", "WdiffRecv", "Archived"},
	Transition{"Archived", "ReplSyncAsServer", "Archived"},
	Transition{"Archived", "Stop", "Stopped"},
	Transition{"Stopped", "Start", "Archived"},
	Transition{"Stopped", "ResetVol", "SyncReady"},
	Transition{"SyncReady", "ResetVol", "SyncReady"},
)

func TestStateMachineTable(t *testing.T) {
	m := archiveTable
	require.Equal(t, "Clear", m.Initial())
	for _, s := range []string{"Clear", "SyncReady", "Archived", "Stopped"} {
		require.True(t, m.IsSteady(s), s)
		require.False(t, m.IsTransient(s), s)
	}
	for _, s := range []string{"InitVol", "ClearVol", "FullSync", "Resync", "HashSync", "WdiffRecv", "ReplSyncAsServer", "Stop", "Start", "ResetVol"} {
		require.True(t, m.IsTransient(s), s)
		require.False(t, m.IsSteady(s), s)
	}
	require.False(t, m.IsState("Target"))
	require.Len(t, m.States(), 14)

	edges := []struct {
		from, to string
		ok       bool
	}{
		{"Clear", "InitVol", true},
		{"InitVol", "SyncReady", true},
		{"InitVol", "Clear", true}, // rollback
		{"Clear", "SyncReady", false},
		{"SyncReady", "FullSync", true},
		{"FullSync", "Archived", true},
		{"FullSync", "SyncReady", true},
		{"Archived", "FullSync", false},
		{"ClearVol", "SyncReady", true}, // rollback to either origin
		{"ClearVol", "Stopped", true},
		{"ClearVol", "Archived", false},
		{"ResetVol", "Stopped", true},
		{"Archived", "Archived", false},
	}
	for _, e := range edges {
		require.Equal(t, e.ok, m.CanChange(e.from, e.to), "%s -> %s", e.from, e.to)
	}
	require.Contains(t, m.String(), "SyncReady -> FullSync -> Archived\n")
}

func TestStateMachineInvalid(t *testing.T) {
	_, err := NewStateMachine("Clear", Transition{"Clear", "", ""})
	require.Error(t, err)
	_, err = NewStateMachine("Clear", Transition{"Clear", "Ready", "Ready"})
	require.ErrorContains(t, err, "both steady and transient")
	_, err = NewStateMachine("Nowhere", Transition{"Clear", "Init", "Ready"})
	require.ErrorContains(t, err, "initial state")
	_, err = NewStateMachine("Clear", Transition{"Clear", "Init", "Ready"}, Transition{"Init", "X", "Ready"})
	require.ErrorContains(t, err, "both steady and transient")
	require.Panics(t, func() { MustStateMachine("Clear") })

	m, err := NewStateMachine("A", Transition{From: "A", To: "B"})
	require.NoError(t, err)
	require.True(t, m.CanChange("A", "B"))
	require.False(t, m.CanChange("B", "A"))
	require.Equal(t, "A -> B\n", m.String())
}
