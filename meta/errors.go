package meta

import (
	"fmt"

	"github.com/pkg/errors"
)

// Sentinel errors. Every error returned by this package wraps one of these
// (or a context / OS error), so callers test with errors.Is.
var (
	// ErrTruncated means the input ended inside a value. Errors carrying it
	// also match io.EOF or io.ErrUnexpectedEOF, whichever the reader returned.
	ErrTruncated = errors.New("meta: truncated input")
	// ErrOverlong means a variable-length integer is not in the one form the
	// encoder would have produced for its value.
	ErrOverlong = errors.New("meta: non-canonical variable-length integer")
	// ErrIntRange means an 8-byte integer form was met where a 32-bit value
	// was expected.
	ErrIntRange = errors.New("meta: 8-byte integer form for a 32-bit value")
	// ErrTooLong means a length or count prefix exceeds the caller's limit.
	ErrTooLong = errors.New("meta: length over limit")
	// ErrBadBool means a bool byte holds something other than 0 or 1.
	ErrBadBool = errors.New("meta: bool byte is not 0 or 1")
	// ErrTrailingData means bytes were left after a complete value.
	ErrTrailingData = errors.New("meta: trailing bytes after value")
	// ErrPreamble means a record does not start with its expected preamble.
	ErrPreamble = errors.New("meta: wrong preamble")
	// ErrInvalid means a value breaks an invariant of the metadata model
	// (gidB > gidE, the progress constraint, a timestamp out of range...).
	ErrInvalid = errors.New("meta: invalid metadata")
	// ErrBadText means a text form (|b,e|, <|b|-->|e|>, a time) does not parse.
	ErrBadText = errors.New("meta: bad text form")

	// ErrNotApplicable means a diff (or list) cannot be applied to a snapshot
	// or state.
	ErrNotApplicable = errors.New("meta: diff not applicable")
	// ErrNotMergeable means two diffs (or a list) cannot be merged.
	ErrNotMergeable = errors.New("meta: diffs not mergeable")
	// ErrEmptyList means an operation needs at least one diff.
	ErrEmptyList = errors.New("meta: empty diff list")

	// ErrBadName means a string is not a canonical wdiff file name.
	ErrBadName = errors.New("meta: bad wdiff file name")
	// ErrDuplicate means a diff with the same snapB and snapE already exists
	// in a diff set.
	ErrDuplicate = errors.New("meta: duplicate diff")
	// ErrNoSnapshot means no diff of the set starts at the given gid.
	ErrNoSnapshot = errors.New("meta: no diff starts at gid")
	// ErrNoCleanSnapshot means no clean snapshot is reachable from the base.
	ErrNoCleanSnapshot = errors.New("meta: no clean snapshot")
	// ErrTooFewDiffs means a merge selection has fewer than two diffs.
	ErrTooFewDiffs = errors.New("meta: fewer than 2 diffs to merge")

	// ErrCorrupt means a metadata or queue file failed its integrity check.
	// Its content must not be used.
	ErrCorrupt = errors.New("meta: corrupt file")
	// ErrQueueEmpty means a front/back/pop operation met an empty queue.
	ErrQueueEmpty = errors.New("meta: queue is empty")
	// ErrClosed means the queue was closed, or broken by an earlier I/O error
	// that left the file state unknown (reopen it to recover).
	ErrClosed = errors.New("meta: queue closed or broken")
)

// truncatedError reports a short read. It matches ErrTruncated and unwraps to
// the reader's own error (io.EOF or io.ErrUnexpectedEOF), so network code can
// still tell a clean end of stream from a cut value.
type truncatedError struct {
	what  string
	off   int64
	cause error
}

func (e *truncatedError) Error() string {
	return fmt.Sprintf("%s: %s at offset %d", ErrTruncated.Error(), e.what, e.off)
}

func (e *truncatedError) Is(target error) bool { return target == ErrTruncated }

func (e *truncatedError) Unwrap() error { return e.cause }
