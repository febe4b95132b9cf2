package proxy

import "github.com/walb-go/walb/server"

// Volume states (system.md §4.1). Clear, Stopped and Started are steady; the
// others are transient and held while a command runs. No state is persisted:
// a volume directory loads as Stopped.
const (
	StateClear   = "Clear"
	StateStopped = "Stopped"
	StateStarted = "Started"

	StateAddArchiveInfo    = "AddArchiveInfo"
	StateDeleteArchiveInfo = "DeleteArchiveInfo"
	StateClearVol          = "ClearVol"
	StateStart             = "Start"
	StateStop              = "Stop"
	StateWaitForEmpty      = "WaitForEmpty"
	StateWlogRecv          = "WlogRecv"
)

// States is the proxy's state table. archive-info update uses the
// AddArchiveInfo transition, as walb-tools does.
var States = server.MustStateMachine(StateClear,
	server.Transition{From: StateClear, Via: StateAddArchiveInfo, To: StateStopped},
	server.Transition{From: StateStopped, Via: StateAddArchiveInfo, To: StateStopped},
	server.Transition{From: StateStopped, Via: StateDeleteArchiveInfo, To: StateStopped},
	server.Transition{From: StateStopped, Via: StateDeleteArchiveInfo, To: StateClear},
	server.Transition{From: StateStopped, Via: StateClearVol, To: StateClear},
	server.Transition{From: StateStopped, Via: StateStart, To: StateStarted},
	server.Transition{From: StateStarted, Via: StateStop, To: StateStopped},
	server.Transition{From: StateStarted, Via: StateWaitForEmpty, To: StateStopped},
	server.Transition{From: StateStarted, Via: StateWlogRecv, To: StateStarted},
)

// sendStates are the states in which wdiffs are sent to archives.
var sendStates = []string{StateStarted, StateWlogRecv, StateWaitForEmpty}

// Preconditions of the commands, checked atomically with the state change
// they guard. Commands that change the configuration need every send to be
// finished (walb-tools verifyActionNotRunning); archive-info and clear-vol
// also refuse a volume being stopped.
var (
	guardAddArchiveInfo    = server.Guard{States: []string{StateClear, StateStopped}, Idle: true, NotStopping: true}
	guardDeleteArchiveInfo = server.Guard{States: []string{StateStopped}, Idle: true, NotStopping: true}
	guardClearVol          = server.Guard{States: []string{StateStopped}, Idle: true, NotStopping: true}
	guardStart             = server.Guard{States: []string{StateStopped}, Idle: true, NotStopping: true}
	guardWlogRecv          = server.Guard{States: []string{StateStarted}, NotStopping: true}
	guardResize            = server.Guard{States: []string{StateStopped}, Steady: true, NotStopping: true}
	guardKick              = server.Guard{States: []string{StateStarted}}
)

// actionName is the action a send to archive runs under: one WdiffSend per
// archive, as walb-tools counts them.
func actionName(archive string) string { return "WdiffSend:" + archive }
