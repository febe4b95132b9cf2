package storage

import "github.com/walb-go/walb/server"

// Steady states of a storage volume (system.md §3.1). All but Clear are
// persisted in the volume's `state` file; Clear means no volume directory.
const (
	StateClear     = "Clear"
	StateSyncReady = "SyncReady"
	StateStopped   = "Stopped"
	StateTarget    = "Target"
	StateStandby   = "Standby"
)

// Transient states, held while a command runs and never persisted: after a
// crash the volume is in the steady state its `state` file names.
const (
	StateInitVol      = "InitVol"
	StateClearVol     = "ClearVol"
	StateStartStandby = "StartStandby"
	StateStopStandby  = "StopStandby"
	StateFullSync     = "FullSync"
	StateHashSync     = "HashSync"
	StateReset        = "Reset"
	StateStartTarget  = "StartTarget"
	StateStopTarget   = "StopTarget"
)

// Actions run on a volume besides its state (walb-tools' action counters).
const (
	// ActionWlogSend is a wlog transfer to a proxy (Target, FullSync,
	// HashSync).
	ActionWlogSend = "WlogSend"
	// ActionWlogRemove is the standby's discard of wlogs.
	ActionWlogRemove = "WlogRemove"
)

// Table is the storage's state table (system.md §3.1). A failed command
// rolls back to the row's From state. HashSync is the transient state of
// hash-bkp; wlogs are sent during it as during FullSync.
var Table = server.MustStateMachine(StateClear,
	server.Transition{From: StateClear, Via: StateInitVol, To: StateSyncReady},
	server.Transition{From: StateSyncReady, Via: StateClearVol, To: StateClear},
	server.Transition{From: StateSyncReady, Via: StateStartStandby, To: StateStandby},
	server.Transition{From: StateStandby, Via: StateStopStandby, To: StateSyncReady},
	server.Transition{From: StateSyncReady, Via: StateFullSync, To: StateStopped},
	server.Transition{From: StateSyncReady, Via: StateHashSync, To: StateStopped},
	server.Transition{From: StateStopped, Via: StateReset, To: StateSyncReady},
	server.Transition{From: StateStopped, Via: StateStartTarget, To: StateTarget},
	server.Transition{From: StateTarget, Via: StateStopTarget, To: StateStopped},
)

// persistedStates are the states a `state` file may hold.
var persistedStates = []string{StateSyncReady, StateStopped, StateTarget, StateStandby}

// CommandStates lists, for each storage command, the steady states in which
// it is accepted (system.md §3.1, §3.6–3.8). Commands not listed (kick, get,
// status) run in any state. Besides the state, every command but stop
// requires the volume not to be stopping, and full-bkp and hash-bkp a free
// foreground slot (-fg).
var CommandStates = map[string][]string{
	"init-vol":      {StateClear},
	"clear-vol":     {StateSyncReady},
	"start target":  {StateStopped},
	"start standby": {StateSyncReady},
	"stop":          {StateTarget, StateStandby},
	"full-bkp":      {StateSyncReady},
	"hash-bkp":      {StateSyncReady},
	"reset-vol":     {StateStopped},
	"snapshot":      {StateTarget, StateStopped},
	"resize":        {StateSyncReady, StateStopped, StateTarget, StateStandby},
}

// sendStates are the states in which WlogSend runs: the transient sync
// states too, because logs written during a backup flow through the
// proxies while the image is copied.
var sendStates = []string{StateTarget, StateFullSync, StateHashSync}

// monitorStates are the steady states whose volumes are monitored.
var monitorStates = []string{StateTarget, StateStandby}
