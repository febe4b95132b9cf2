package storage

import "github.com/walb-go/walb/wire"

// codedError is a sentinel that carries the wire code its reply gets, so a
// command handler can return it (wrapped) and the client sees the code.
type codedError struct {
	msg  string
	code wire.Code
}

func (e *codedError) Error() string { return e.msg }

// WireCode returns the reply code (wire.Coder).
func (e *codedError) WireCode() wire.Code { return e.code }

// Is makes the error match its wire code too.
func (e *codedError) Is(target error) bool {
	c, ok := target.(wire.Code)
	return ok && c == e.code
}

// Wire codes of the storage's own refusals.
const (
	// CodeOverflow: the device's log overflowed; recovery is a hash-bkp.
	CodeOverflow wire.Code = "overflow"
	// CodeNoProxy: no proxy accepted a wlog transfer.
	CodeNoProxy wire.Code = "no-proxy"
	// CodeLogMismatch: the device's log does not match the volume's
	// metadata (its uuid or lsids changed behind the storage's back).
	CodeLogMismatch wire.Code = "log-mismatch"
)

// Sentinel errors. Returned errors wrap them with context; test with
// errors.Is. Errors about states, actions and stopping are package server's
// (server.ErrWrongState, server.ErrActionRunning, server.ErrStopping,
// server.ErrTooManyTasks, server.ErrBadArgs).
var (
	// ErrNotFound means the volume does not exist (it is Clear).
	ErrNotFound error = &codedError{"storage: volume not found", wire.ErrNotFound}
	// ErrDeviceInUse means init-vol named a device another volume uses.
	ErrDeviceInUse error = &codedError{"storage: device already used by a volume", wire.ErrExists}
	// ErrNoDevice means the device of a volume cannot be reached.
	ErrNoDevice error = &codedError{"storage: device not available", wire.ErrNotFound}
	// ErrOverflow means the device's log overflowed: wlogs were lost, so
	// snapshots and start target are refused until a hash-bkp or a reset.
	ErrOverflow error = &codedError{"storage: wlog overflow", CodeOverflow}
	// ErrNoProxy means no proxy in the list accepted the wlog transfer.
	ErrNoProxy error = &codedError{"storage: no available proxy", CodeNoProxy}
	// ErrLogMismatch means the device's log is not the one the volume's
	// metadata describes: its uuid differs, or its lsids are behind the
	// done record. Sending would ship wrong data, so nothing is sent.
	ErrLogMismatch error = &codedError{"storage: device log does not match the volume metadata", CodeLogMismatch}
	// ErrNoLogOrigin means the volume never had its log reset (no full-bkp
	// or reset-vol yet), so there is no lsid to count gids from.
	ErrNoLogOrigin error = &codedError{"storage: volume has no log origin (run full-bkp or reset-vol)", wire.ErrWrongState}
	// ErrSendSizeTooSmall means a single logpack is larger than the
	// maximum wlog send size (-wl), so no transfer could ever make progress.
	ErrSendSizeTooSmall error = &codedError{"storage: max wlog send size is smaller than a logpack", wire.ErrFailed}
	// ErrShrink means resize asked for a size below the current one.
	ErrShrink error = &codedError{"storage: shrinking is not supported", wire.ErrBadRequest}
	// ErrCorrupt means a volume directory holds metadata that breaks the
	// storage's invariants.
	ErrCorrupt error = &codedError{"storage: corrupt volume metadata", wire.ErrFailed}
	// ErrForceStopped means a running transfer or backup was aborted by a
	// force stop.
	ErrForceStopped error = &codedError{"storage: force stopped", wire.ErrCanceled}
	// ErrRaced means the done record or the queue changed while a wlog
	// transfer ran (a bug or an operator acting on the directory); the
	// transfer's result is dropped and it runs again.
	ErrRaced error = &codedError{"storage: volume metadata changed during a transfer", wire.ErrFailed}
	// ErrBadArchiveSnap means an archive accepted a hash backup but named a
	// latest snapshot no log can follow (invalid, or gids exhausted).
	ErrBadArchiveSnap error = &codedError{"storage: the archive's latest snapshot cannot start a hash backup", wire.ErrFailed}
	// ErrClosed means the Storage was closed.
	ErrClosed error = &codedError{"storage: closed", wire.ErrShuttingDown}
)
