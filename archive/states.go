package archive

import (
	"slices"

	"github.com/walb-go/walb/server"
)

// Steady states of an archive volume (persisted in the volume's state file;
// Clear is the absence of a volume directory).
const (
	StateClear     = "Clear"
	StateSyncReady = "SyncReady"
	StateArchived  = "Archived"
	StateStopped   = "Stopped"
)

// Transient states, held while a command runs and never persisted: after a
// crash the volume is back in the steady state it came from (system.md §7).
const (
	StateInitVol          = "InitVol"
	StateClearVol         = "ClearVol"
	StateResetVol         = "ResetVol"
	StateFullSync         = "FullSync"
	StateResync           = "Resync"
	StateHashSync         = "HashSync"
	StateWdiffRecv        = "WdiffRecv"
	StateReplSyncAsServer = "ReplSyncAsServer"
	StateStop             = "Stop"
	StateStart            = "Start"
)

// Actions: long operations counted per volume (`get num-action VOL ACTION`).
// They run beside the state rather than changing it.
const (
	ActionMerge            = "Merge"
	ActionApply            = "Apply"
	ActionRestore          = "Restore"
	ActionReplSyncAsClient = "ReplSyncAsClient"
	ActionResize           = "Resize"
)

// AllActions lists every action, in walb-tools' order.
var AllActions = []string{ActionMerge, ActionApply, ActionRestore, ActionReplSyncAsClient, ActionResize}

// Table is the archive's state table (system.md §5.1). Each row is
// From -> Via -> To; a failed command rolls back from Via to From.
var Table = server.MustStateMachine(StateClear,
	server.Transition{From: StateClear, Via: StateInitVol, To: StateSyncReady},
	server.Transition{From: StateSyncReady, Via: StateClearVol, To: StateClear},
	server.Transition{From: StateStopped, Via: StateClearVol, To: StateClear},
	server.Transition{From: StateSyncReady, Via: StateFullSync, To: StateArchived},
	server.Transition{From: StateSyncReady, Via: StateResync, To: StateArchived},
	server.Transition{From: StateArchived, Via: StateHashSync, To: StateArchived},
	server.Transition{From: StateArchived, Via: StateWdiffRecv, To: StateArchived},
	server.Transition{From: StateArchived, Via: StateReplSyncAsServer, To: StateArchived},
	server.Transition{From: StateArchived, Via: StateStop, To: StateStopped},
	server.Transition{From: StateStopped, Via: StateStart, To: StateArchived},
	server.Transition{From: StateStopped, Via: StateResetVol, To: StateSyncReady},
	server.Transition{From: StateSyncReady, Via: StateResetVol, To: StateSyncReady},
)

// ActiveStates (walb-tools aActive) are the states in which the volume has
// a usable base and takes diffs.
var ActiveStates = []string{StateArchived, StateHashSync, StateWdiffRecv, StateReplSyncAsServer}

// ActiveOrStoppedStates (aActiveOrStopped) adds Stopped.
var ActiveOrStoppedStates = append(slices.Clone(ActiveStates), StateStopped)

// Command names a command of the precondition table.
type Command string

// Commands with preconditions, named as walbc names them.
const (
	CmdInitVol         Command = "init-vol"
	CmdClearVol        Command = "clear-vol"
	CmdResetVol        Command = "reset-vol"
	CmdStart           Command = "start"
	CmdStop            Command = "stop"
	CmdRestore         Command = "restore"
	CmdDelRestored     Command = "del-restored"
	CmdApply           Command = "apply"
	CmdMerge           Command = "merge"
	CmdResize          Command = "resize"
	CmdDisableSnapshot Command = "disable-snapshot"
	CmdEnableSnapshot  Command = "enable-snapshot"
	CmdGcDiff          Command = "gc-diff"
	CmdFullSync        Command = "full-sync"
	CmdWdiffTransfer   Command = "wdiff-transfer"
	CmdHashSync        Command = "hash-sync"
	CmdReplicate       Command = "replicate"
	CmdReplServer      Command = "repl-server"
	CmdBlockHash       Command = "bhash"
)

// Precondition is one row of the precondition table: the states a command
// needs, and the actions that must not be running (nil Deny with AllDenied
// means every action).
type Precondition struct {
	States    []string
	Deny      []string
	AllDenied bool
}

// Guard turns the row into a server.Guard. Every command requires that the
// volume is not being stopped, as walb-tools' verifyNotStopping does,
// except stop itself (which sets the stop state).
func (p Precondition) Guard() server.Guard {
	return server.Guard{States: p.States, Idle: p.AllDenied, NoActions: p.Deny, NotStopping: true}
}

// Preconditions is the archive's precondition table (system.md §5.1, which
// follows walb-tools' code). Commands that start a transaction (init-vol,
// clear-vol, reset-vol, start, stop, full-sync, wdiff-transfer) are further
// limited by Table: a transaction can only start from a steady state.
var Preconditions = map[Command]Precondition{
	CmdInitVol:         {States: []string{StateClear}, AllDenied: true},
	CmdClearVol:        {States: []string{StateSyncReady, StateStopped}, AllDenied: true},
	CmdResetVol:        {States: []string{StateStopped, StateSyncReady}, AllDenied: true},
	CmdStart:           {States: []string{StateStopped}, AllDenied: true},
	CmdStop:            {States: []string{StateArchived}},
	CmdRestore:         {States: ActiveStates, Deny: []string{ActionRestore, ActionResize}},
	CmdDelRestored:     {States: ActiveOrStoppedStates, Deny: []string{ActionRestore, ActionResize}},
	CmdApply:           {States: ActiveStates, Deny: []string{ActionRestore, ActionReplSyncAsClient, ActionApply, ActionMerge, ActionResize}},
	CmdMerge:           {States: ActiveStates, Deny: []string{ActionApply, ActionMerge, ActionResize}},
	CmdResize:          {States: append([]string{StateSyncReady}, ActiveOrStoppedStates...), Deny: []string{ActionRestore, ActionReplSyncAsClient, ActionApply, ActionResize}},
	CmdDisableSnapshot: {States: ActiveStates, Deny: []string{ActionApply, ActionMerge}},
	CmdEnableSnapshot:  {States: ActiveStates, Deny: []string{ActionApply, ActionMerge}},
	CmdGcDiff:          {States: ActiveOrStoppedStates, AllDenied: true},
	CmdFullSync:        {States: []string{StateSyncReady}, AllDenied: true},
	CmdWdiffTransfer:   {States: []string{StateArchived}},
	CmdHashSync:        {States: []string{StateArchived}, AllDenied: true},
	CmdReplicate:       {States: ActiveStates, Deny: []string{ActionRestore, ActionReplSyncAsClient, ActionApply, ActionMerge, ActionResize}},
	CmdReplServer:      {States: []string{StateSyncReady, StateArchived}, AllDenied: true},
	CmdBlockHash:       {States: ActiveOrStoppedStates, Deny: []string{ActionApply, ActionMerge, ActionResize}},
}

// guard returns the server.Guard of cmd.
func guard(cmd Command) server.Guard {
	p, ok := Preconditions[cmd]
	if !ok {
		panic("archive: no precondition for " + string(cmd))
	}
	return p.Guard()
}
