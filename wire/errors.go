package wire

import (
	"context"
	"fmt"
	"os"

	"github.com/pkg/errors"
)

// Local errors. They describe what went wrong on this side of a connection;
// they never travel (a peer learns about them only as a Reply error frame
// whose code is ErrProtocol).
var (
	// ErrBadMagic means the peer's preamble does not start with the wire
	// magic: the peer does not speak this protocol.
	ErrBadMagic = errors.New("wire: bad magic (peer does not speak the walb-go wire protocol)")
	// ErrFrameTooLarge means a frame announced a payload larger than the
	// receiver's MaxFrame, or a sender tried to send one larger than the
	// peer's MaxFrame.
	ErrFrameTooLarge = errors.New("wire: frame too large")
	// ErrBadFrame means a frame header is malformed (unknown type) or its
	// payload does not decode as its type requires.
	ErrBadFrame = errors.New("wire: malformed frame")
	// ErrChecksum means a frame's CRC-32C does not match its bytes.
	ErrChecksum = errors.New("wire: frame checksum mismatch")
	// ErrUnexpectedFrame means a well-formed frame of another type arrived
	// than the exchange expects at this point.
	ErrUnexpectedFrame = errors.New("wire: unexpected frame")
	// ErrUnexpectedReply means a Reply frame of another kind arrived than
	// expected (for example accept where ok was required).
	ErrUnexpectedReply = errors.New("wire: unexpected reply")
	// ErrPeerClosed means the peer closed the connection at a frame
	// boundary, when a frame was expected.
	ErrPeerClosed = errors.New("wire: connection closed by peer")
	// ErrTruncated means the connection ended inside a frame.
	ErrTruncated = errors.New("wire: connection closed inside a frame")
	// ErrTimeout means no frame could be sent or received within the I/O
	// timeout. Errors carrying it also match os.ErrDeadlineExceeded.
	ErrTimeout = errors.New("wire: i/o timeout")
	// ErrStreamDone means a stream writer or reader was used after its end.
	ErrStreamDone = errors.New("wire: stream already ended")
	// ErrConnClosed means the Conn was used after Close.
	ErrConnClosed = errors.New("wire: use of closed connection")
	// ErrRemote matches every *RemoteError.
	ErrRemote = errors.New("wire: remote error")
)

// Code is the machine-readable part of an error reply. A Code is itself an
// error, so the codes below double as sentinels: a handler returns
// errors.Wrapf(wire.ErrWrongState, "vol %s is %s", ...) and the client tests
// errors.Is(err, wire.ErrWrongState) on the *RemoteError it receives. Codes
// are lowercase words joined by '-' (at most 255 bytes); other packages may
// define their own with Code("...").
type Code string

// Error returns "wire: " followed by the code.
func (c Code) Error() string { return "wire: " + string(c) }

// Reply codes. Adding a code never changes the protocol version: a peer that
// does not know a code still gets the message text, and errors.Is with a
// known sentinel is false.
const (
	// ErrFailed is the code of an error that carries no other code.
	ErrFailed Code = "error"
	// ErrProtocol means the peer broke the wire protocol (bad frame,
	// checksum, unexpected frame).
	ErrProtocol Code = "protocol"
	// ErrVersionMismatch means the server does not speak the client's
	// protocol version.
	ErrVersionMismatch Code = "version-mismatch"
	// ErrUnknownCommand means the server has no handler for the command.
	ErrUnknownCommand Code = "unknown-command"
	// ErrBadRequest means the arguments are missing or malformed.
	ErrBadRequest Code = "bad-request"
	// ErrNotFound means the volume (or other named object) does not exist.
	ErrNotFound Code = "not-found"
	// ErrExists means the object to create already exists.
	ErrExists Code = "exists"
	// ErrWrongState means the volume is not in a state that allows the
	// command.
	ErrWrongState Code = "wrong-state"
	// ErrActionRunning means an action that must not run concurrently with
	// the command is running on the volume.
	ErrActionRunning Code = "action-running"
	// ErrStopping means the volume is being stopped.
	ErrStopping Code = "stopping"
	// ErrTooManyTasks means the server already runs its maximum number of
	// foreground tasks (-fg); walb-tools says "exceeds max foreground tasks".
	ErrTooManyTasks Code = "too-many-tasks"
	// ErrShuttingDown means the server is shutting down.
	ErrShuttingDown Code = "shutting-down"
	// ErrCanceled means the operation was canceled (force shutdown, client
	// gone).
	ErrCanceled Code = "canceled"
	// ErrDeadline means the operation ran out of time.
	ErrDeadline Code = "timeout"

	// Replies of wdiff-transfer (system.md §5.9); the proxy's reaction
	// depends on which one it gets (§4.5).

	// ErrVolStopped: the archive volume is Stopped.
	ErrVolStopped Code = "stopped"
	// ErrSyncing: a full or hash backup is running on the archive volume.
	ErrSyncing Code = "syncing"
	// ErrWdiffRecv: another wdiff transfer to the volume is running.
	ErrWdiffRecv Code = "wdiff-recv"
	// ErrArchiveNotFound: the archive has no such volume.
	ErrArchiveNotFound Code = "archive-not-found"
	// ErrDifferentUUID: the diff comes from another device than the base.
	ErrDifferentUUID Code = "different-uuid"
	// ErrSmallerLvSize: the archive's base is smaller than the source.
	ErrSmallerLvSize Code = "smaller-lv-size"
	// ErrTooOldDiff: the archive already has what the diff brings.
	ErrTooOldDiff Code = "too-old-diff"
	// ErrTooNewDiff: the diff does not start at or before the latest snapshot.
	ErrTooNewDiff Code = "too-new-diff"
)

// maxCodeLen bounds a code on the wire (its length is one byte).
const maxCodeLen = 255

// Coder is implemented by errors that know their reply code. CodeOf uses it,
// so another package can give its own sentinel errors a code.
type Coder interface {
	WireCode() Code
}

// RemoteError is an error reply received from the peer.
type RemoteError struct {
	// Code is the peer's code (ErrFailed when the peer gave none).
	Code Code
	// Msg is the peer's error text.
	Msg string
}

// Error returns "wire: remote: " followed by the peer's text.
func (e *RemoteError) Error() string {
	if e.Msg == "" {
		return "wire: remote: " + string(e.Code)
	}
	return "wire: remote: " + e.Msg
}

// Is reports whether target is ErrRemote or the Code of e.
func (e *RemoteError) Is(target error) bool {
	if target == ErrRemote {
		return true
	}
	c, ok := target.(Code)
	return ok && c == e.Code
}

// WireCode returns e.Code, so a server relaying a peer's error keeps its code.
func (e *RemoteError) WireCode() Code { return e.Code }

// CodeOf returns the code an error reply for err carries: the code of the
// outermost error in the chain that has one (a Code, a Coder, a
// *RemoteError), ErrCanceled or ErrDeadline for context errors, ErrProtocol
// for this package's framing errors, and ErrFailed otherwise.
func CodeOf(err error) Code {
	if err == nil {
		return ""
	}
	for e := err; e != nil; e = errors.Unwrap(e) {
		switch v := e.(type) {
		case Code:
			return v
		case Coder:
			return v.WireCode()
		}
	}
	var cd Coder
	if errors.As(err, &cd) {
		return cd.WireCode()
	}
	var c Code
	if errors.As(err, &c) {
		return c
	}
	switch {
	case errors.Is(err, context.Canceled):
		return ErrCanceled
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, ErrTimeout):
		return ErrDeadline
	case errors.Is(err, ErrBadMagic), errors.Is(err, ErrFrameTooLarge), errors.Is(err, ErrBadFrame),
		errors.Is(err, ErrChecksum), errors.Is(err, ErrUnexpectedFrame), errors.Is(err, ErrUnexpectedReply),
		errors.Is(err, ErrTruncated):
		return ErrProtocol
	}
	return ErrFailed
}

// timeoutError reports an expired I/O deadline that no context caused.
type timeoutError struct {
	op string
}

func (e *timeoutError) Error() string { return fmt.Sprintf("wire: i/o timeout while %s", e.op) }

// Is makes the error match ErrTimeout and os.ErrDeadlineExceeded.
func (e *timeoutError) Is(target error) bool {
	return target == ErrTimeout || target == os.ErrDeadlineExceeded
}

// Timeout reports true, as net.Error does.
func (e *timeoutError) Timeout() bool { return true }

// Temporary reports false: the connection is unusable after a timeout.
func (e *timeoutError) Temporary() bool { return false }
