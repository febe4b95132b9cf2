package server

import "github.com/walb-go/walb/wire"

// codedError is a sentinel error that carries the wire code its reply gets,
// so a handler can return it (wrapped) and the client sees the right code.
type codedError struct {
	msg  string
	code wire.Code
}

func (e *codedError) Error() string { return e.msg }

// WireCode returns the reply code (wire.Coder).
func (e *codedError) WireCode() wire.Code { return e.code }

// Is makes the error match its wire code too, so that errors.Is(err,
// wire.ErrWrongState) holds on both sides of a connection.
func (e *codedError) Is(target error) bool {
	c, ok := target.(wire.Code)
	return ok && c == e.code
}

// Sentinel errors. Each carries a wire code (in parentheses), so returning
// one (wrapped with context) from a handler gives the client a
// *wire.RemoteError that matches the same wire code.
var (
	// ErrWrongState means the volume's state does not allow the operation
	// (wire.ErrWrongState).
	ErrWrongState error = &codedError{"server: wrong state", wire.ErrWrongState}
	// ErrNoTransition means the state table has no such transition: a bug
	// in the caller, reported like a wrong state (wire.ErrWrongState).
	ErrNoTransition error = &codedError{"server: transition not in the state table", wire.ErrWrongState}
	// ErrActionRunning means an action that excludes the operation is
	// running on the volume (wire.ErrActionRunning).
	ErrActionRunning error = &codedError{"server: action running", wire.ErrActionRunning}
	// ErrStopping means the volume is being stopped (wire.ErrStopping).
	ErrStopping error = &codedError{"server: volume is stopping", wire.ErrStopping}
	// ErrTooManyTasks means -fg foreground tasks are already running
	// (wire.ErrTooManyTasks); the text is walb-tools'.
	ErrTooManyTasks error = &codedError{"server: exceeds max foreground tasks", wire.ErrTooManyTasks}
	// ErrBadVolumeName means a volume name breaks ValidateVolumeName's
	// rules (wire.ErrBadRequest).
	ErrBadVolumeName error = &codedError{"server: bad volume name", wire.ErrBadRequest}
	// ErrBadArgs means a command's arguments are missing or malformed
	// (wire.ErrBadRequest).
	ErrBadArgs error = &codedError{"server: bad arguments", wire.ErrBadRequest}
	// ErrShuttingDown means the server is shutting down
	// (wire.ErrShuttingDown).
	ErrShuttingDown error = &codedError{"server: shutting down", wire.ErrShuttingDown}
	// ErrUnknownCommand means no handler is registered for a command
	// (wire.ErrUnknownCommand).
	ErrUnknownCommand error = &codedError{"server: unknown command", wire.ErrUnknownCommand}
	// ErrPanic means a handler or task panicked; the panic is logged with
	// its stack (wire.ErrFailed).
	ErrPanic error = &codedError{"server: internal error (panic)", wire.ErrFailed}
)
