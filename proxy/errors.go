package proxy

import (
	"github.com/pkg/errors"

	"github.com/walb-go/walb/wire"
)

// codedError is a sentinel that carries the wire code its error reply gets,
// so a handler returns it (wrapped) and the client can test errors.Is with
// either the sentinel's code or, in-process, the sentinel itself.
type codedError struct {
	msg  string
	code wire.Code
}

func (e *codedError) Error() string { return e.msg }

// WireCode returns the reply code (wire.Coder).
func (e *codedError) WireCode() wire.Code { return e.code }

// Is makes the sentinel match its wire code as well.
func (e *codedError) Is(target error) bool {
	c, ok := target.(wire.Code)
	return ok && c == e.code
}

// Sentinel errors of the proxy. Each carries the wire code (in parentheses)
// of the error reply a client receives for it. Errors about states, stop
// states, arguments and foreground slots come from package server
// (server.ErrWrongState, server.ErrStopping, server.ErrBadArgs,
// server.ErrTooManyTasks, server.ErrBadVolumeName).
var (
	// ErrNoArchive means the volume has no archive info of that name
	// (wire.ErrNotFound).
	ErrNoArchive error = &codedError{"proxy: no such archive info", wire.ErrNotFound}
	// ErrArchiveExists means archive-info add named an archive the volume
	// already has (wire.ErrExists).
	ErrArchiveExists error = &codedError{"proxy: archive info already exists", wire.ErrExists}
	// ErrBadArchiveInfo means an archive info (address, compression, delay)
	// or its file is malformed (wire.ErrBadRequest).
	ErrBadArchiveInfo error = &codedError{"proxy: bad archive info", wire.ErrBadRequest}
	// ErrNoSpace means the file system holding the volume has less free
	// space than the transfer may need (wire.ErrFailed).
	ErrNoSpace error = &codedError{"proxy: not enough free disk space", wire.ErrFailed}
	// ErrBadStream means a wlog-transfer carried invalid logpacks or
	// parameters: bad checksums, broken lsid sequence, trailing data, a diff
	// that is not clean (wire.ErrBadRequest).
	ErrBadStream error = &codedError{"proxy: bad wlog stream", wire.ErrBadRequest}
	// ErrNotEmpty means start found diffs in received/ that it could not
	// hand to any archive queue (wire.ErrFailed).
	ErrNotEmpty error = &codedError{"proxy: received directory not empty", wire.ErrFailed}
	// ErrTimeout means stop gave up waiting for the volume to become idle
	// or empty (wire.ErrDeadline).
	ErrTimeout error = &codedError{"proxy: timed out waiting for the volume", wire.ErrDeadline}
	// ErrClosed means the proxy was closed (wire.ErrShuttingDown).
	ErrClosed error = &codedError{"proxy: closed", wire.ErrShuttingDown}
)

// isRemote reports whether err is an error reply of the archive (as opposed
// to a local or transport failure).
func isRemote(err error) bool { return errors.Is(err, wire.ErrRemote) }
