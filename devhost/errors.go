package devhost

import (
	"context"
	"os"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/walb"
	"github.com/walb-go/walb/walb/kernel"
)

// Sentinel errors. Every error a Controller returns matches one of them with
// errors.Is, whether it came from the Host in this process, from the daemon
// through a Client (the code crosses the socket), or from the kernel driver
// through KernelController.
var (
	// ErrNotFound means no device has the given name.
	ErrNotFound = errors.New("devhost: no such device")
	// ErrExists means a device with the given name is already registered.
	ErrExists = errors.New("devhost: device already exists")
	// ErrInvalid reports a bad argument: a bad name, an lsid the device
	// refuses, a shrinking resize, bad tuning options.
	ErrInvalid = errors.New("devhost: invalid argument")
	// ErrState means the device is in a state that forbids the operation:
	// frozen (reset-wal, delete-wdev without force), not open (its open
	// failed when the daemon started), or being deleted.
	ErrState = errors.New("devhost: wrong device state")
	// ErrBusy means a file is used by someone else: a log or data device
	// already used by a walb device, or a base directory locked by another
	// daemon.
	ErrBusy = errors.New("devhost: in use")
	// ErrOverflow means the log needed by cat-log was overwritten.
	ErrOverflow = errors.New("devhost: log overflow")
	// ErrFailed reports an I/O error or a device that failed.
	ErrFailed = errors.New("devhost: operation failed")
	// ErrBadRequest means the daemon could not understand a request:
	// malformed JSON, an unknown operation or field, a missing argument.
	ErrBadRequest = errors.New("devhost: bad request")
	// ErrVersion means the request's protocol version is not supported.
	ErrVersion = errors.New("devhost: unsupported protocol version")
	// ErrTooLarge means a request line exceeded MaxRequestSize.
	ErrTooLarge = errors.New("devhost: request too large")
	// ErrShutdown means the daemon is shutting down.
	ErrShutdown = errors.New("devhost: shutting down")
	// ErrProtocol means the peer broke the control protocol (a malformed
	// answer, a broken stream).
	ErrProtocol = errors.New("devhost: protocol error")
	// ErrDenied means the daemon refused the connection: only root and the
	// daemon's own user may control it.
	ErrDenied = errors.New("devhost: permission denied")
)

// Error codes on the wire, one per sentinel (see the package documentation).
const (
	codeNotFound   = "not-found"
	codeExists     = "exists"
	codeInvalid    = "invalid"
	codeState      = "state"
	codeBusy       = "busy"
	codeOverflow   = "overflow"
	codeFailed     = "failed"
	codeBadRequest = "bad-request"
	codeVersion    = "version"
	codeTooLarge   = "too-large"
	codeShutdown   = "shutdown"
	codeProtocol   = "protocol"
	codeDenied     = "denied"
	codeCanceled   = "canceled"
)

var codeSentinels = map[string]error{
	codeNotFound:   ErrNotFound,
	codeExists:     ErrExists,
	codeInvalid:    ErrInvalid,
	codeState:      ErrState,
	codeBusy:       ErrBusy,
	codeOverflow:   ErrOverflow,
	codeFailed:     ErrFailed,
	codeBadRequest: ErrBadRequest,
	codeVersion:    ErrVersion,
	codeTooLarge:   ErrTooLarge,
	codeShutdown:   ErrShutdown,
	codeProtocol:   ErrProtocol,
	codeDenied:     ErrDenied,
	codeCanceled:   context.Canceled,
}

// codeError attaches a devhost sentinel to an error from a lower layer, so
// that callers can test for both (errors.Is(err, ErrInvalid) and
// errors.Is(err, walb.ErrInvalid)).
type codeError struct {
	sentinel error
	cause    error
}

func (e *codeError) Error() string   { return e.cause.Error() }
func (e *codeError) Unwrap() []error { return []error{e.sentinel, e.cause} }

// classify returns err tagged with the devhost sentinel that describes it.
// Errors that already match a devhost sentinel are returned as they are.
func classify(err error) error {
	if err == nil {
		return nil
	}
	for _, s := range codeSentinels {
		if s != context.Canceled && errors.Is(err, s) {
			return err
		}
	}
	var s error
	switch {
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	case errors.Is(err, walb.ErrInvalid), errors.Is(err, kernel.ErrInvalidArgument),
		errors.Is(err, kernel.ErrInvalidStartParam), errors.Is(err, kernel.ErrInvalidLsid),
		errors.Is(err, kernel.ErrStartParamInvalid), errors.Is(err, kernel.ErrSameDevice),
		errors.Is(err, kernel.ErrNotBlockDevice):
		s = ErrInvalid
	case errors.Is(err, walb.ErrOverflow):
		s = ErrOverflow
	case errors.Is(err, walb.ErrClosed), errors.Is(err, walb.ErrReset):
		s = ErrState
	case errors.Is(err, kernel.ErrNameExists):
		s = ErrExists
	case errors.Is(err, kernel.ErrLdevInUse), errors.Is(err, kernel.ErrDdevInUse),
		errors.Is(err, kernel.ErrBusy):
		s = ErrBusy
	case errors.Is(err, kernel.ErrDeviceNotFound), errors.Is(err, os.ErrNotExist):
		s = ErrNotFound
	default:
		s = ErrFailed
	}
	return &codeError{sentinel: s, cause: err}
}

// codeOf returns the wire code of err.
func codeOf(err error) string {
	err = classify(err)
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return codeCanceled
	}
	// Fixed order: an error may match several sentinels (a codeError around
	// an error that already carries one); the most specific wins.
	for _, code := range []string{codeNotFound, codeExists, codeInvalid, codeState, codeBusy, codeOverflow,
		codeBadRequest, codeVersion, codeTooLarge, codeShutdown, codeProtocol, codeDenied, codeFailed} {
		if errors.Is(err, codeSentinels[code]) {
			return code
		}
	}
	return codeFailed
}

// remoteError is an error received from the daemon: its text and the
// sentinel of its code.
type remoteError struct {
	sentinel error
	msg      string
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.sentinel }

func decodeError(code, msg string) error {
	s, ok := codeSentinels[code]
	if !ok {
		s = ErrFailed
	}
	if msg == "" {
		msg = s.Error()
	}
	return &remoteError{sentinel: s, msg: msg}
}
