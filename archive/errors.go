package archive

import (
	"github.com/pkg/errors"

	"github.com/walb-go/walb/server"
	"github.com/walb-go/walb/wire"
)

// codedError is a sentinel that carries the wire code its error reply gets,
// so that a handler can return it (wrapped with context) and the proxy or
// controller receives a *wire.RemoteError matching the same code.
type codedError struct {
	msg  string
	code wire.Code
}

func (e *codedError) Error() string { return e.msg }

// WireCode returns the reply code (wire.Coder).
func (e *codedError) WireCode() wire.Code { return e.code }

// Is makes the sentinel match its wire code too, so errors.Is(err,
// wire.ErrTooOldDiff) holds locally as it does on the peer's side.
func (e *codedError) Is(target error) bool {
	c, ok := target.(wire.Code)
	return ok && c == e.code
}

// CodeNotApplicableDiff is the reply to a compared diff that does not start
// exactly at the archive's latest snapshot (walb-tools' relation
// NOT_APPLICABLE_DIFF). wire has no constant for it.
const CodeNotApplicableDiff wire.Code = "not-applicable-diff"

// The wrong-state, action-running, stopping, bad-name and bad-argument
// errors are package server's sentinels, so that errors.Is works the same
// whichever layer refused the command.
var (
	// ErrWrongState means the volume's state does not allow the command;
	// nothing was changed.
	ErrWrongState = server.ErrWrongState
	// ErrActionRunning means an action that excludes the command is running
	// on the volume; nothing was changed.
	ErrActionRunning = server.ErrActionRunning
	// ErrStopping means the volume is being stopped.
	ErrStopping = server.ErrStopping
	// ErrBadVolumeName means a volume name is not 1-64 characters of
	// [0-9A-Za-z-].
	ErrBadVolumeName = server.ErrBadVolumeName
	// ErrBadArgs means a command's arguments are out of range or malformed.
	ErrBadArgs = server.ErrBadArgs
)

// Archive sentinels. Each carries the wire code in parentheses.
var (
	// ErrNotFound means the volume has no directory, or a restored image or
	// diff asked for does not exist (wire.ErrNotFound).
	ErrNotFound error = &codedError{"archive: not found", wire.ErrNotFound}
	// ErrExists means the object to create exists already: a restored
	// image, a volume directory (wire.ErrExists).
	ErrExists error = &codedError{"archive: already exists", wire.ErrExists}
	// ErrNotRestorable means the gid cannot be materialized as a clean
	// snapshot from the base and the diffs (wire.ErrBadRequest).
	ErrNotRestorable error = &codedError{"archive: gid is not restorable", wire.ErrBadRequest}
	// ErrNothingToApply means apply found no diff between the base and the
	// requested gid (walb-tools: "There is no diff to apply").
	ErrNothingToApply error = &codedError{"archive: no diff to apply", wire.ErrBadRequest}
	// ErrNothingToMerge means fewer than two diffs qualify for a merge
	// (walb-tools: "There is no mergeable diff").
	ErrNothingToMerge error = &codedError{"archive: no mergeable diffs", wire.ErrBadRequest}
	// ErrApplying means the base is in the applying state, which forbids the
	// command (merge).
	ErrApplying error = &codedError{"archive: base is applying", wire.ErrWrongState}
	// ErrNoBaseImage means the volume has no base image (never fully
	// synced, or reset).
	ErrNoBaseImage error = &codedError{"archive: base image does not exist", wire.ErrWrongState}
	// ErrShrink means a resize asked for a smaller size; images only grow
	// (wire.ErrBadRequest).
	ErrShrink error = &codedError{"archive: cannot shrink a volume", wire.ErrBadRequest}
	// ErrBusy means the base image is being applied or cloned, so an
	// automatic resize must wait; the sender retries later (wire.ErrFailed).
	ErrBusy error = &codedError{"archive: base image busy", wire.ErrFailed}
	// ErrCorruptStream means a received wdiff or full-sync stream failed its
	// checks (checksums, layout, ranges, length); nothing was kept
	// (wire.ErrBadRequest).
	ErrCorruptStream error = &codedError{"archive: corrupt or truncated stream", wire.ErrBadRequest}
	// ErrBroken means a volume's metadata on disk is missing or corrupt.
	ErrBroken error = &codedError{"archive: volume metadata broken", wire.ErrFailed}

	// Replies to a wdiff transfer (system.md §5.9), in the order they are
	// checked.

	// ErrVolStopped: the volume is Stopped or starting (wire.ErrVolStopped).
	ErrVolStopped error = &codedError{"archive: volume stopped", wire.ErrVolStopped}
	// ErrSyncing: a full or hash backup is running (wire.ErrSyncing).
	ErrSyncing error = &codedError{"archive: volume syncing", wire.ErrSyncing}
	// ErrWdiffRecv: another wdiff transfer is running (wire.ErrWdiffRecv).
	ErrWdiffRecv error = &codedError{"archive: another wdiff transfer is running", wire.ErrWdiffRecv}
	// ErrArchiveNotFound: the volume has no directory
	// (wire.ErrArchiveNotFound).
	ErrArchiveNotFound error = &codedError{"archive: volume not found", wire.ErrArchiveNotFound}
	// ErrDifferentUUID: a proxy sent a diff of another device
	// (wire.ErrDifferentUUID).
	ErrDifferentUUID error = &codedError{"archive: different uuid", wire.ErrDifferentUUID}
	// ErrSmallerLvSize: the base is smaller than the sender's volume, even
	// after an automatic resize (wire.ErrSmallerLvSize).
	ErrSmallerLvSize error = &codedError{"archive: base image smaller than the source volume", wire.ErrSmallerLvSize}
	// ErrTooOldDiff: the archive already has what the diff brings
	// (wire.ErrTooOldDiff).
	ErrTooOldDiff error = &codedError{"archive: too old diff", wire.ErrTooOldDiff}
	// ErrTooNewDiff: the diff starts after the archive's latest snapshot
	// (wire.ErrTooNewDiff).
	ErrTooNewDiff error = &codedError{"archive: too new diff", wire.ErrTooNewDiff}
	// ErrNotApplicableDiff: a compared diff that does not start at the
	// latest snapshot (CodeNotApplicableDiff).
	ErrNotApplicableDiff error = &codedError{"archive: not applicable diff", CodeNotApplicableDiff}
)

// errorf wraps a sentinel with a formatted context message.
func errorf(sentinel error, format string, args ...any) error {
	return errors.Wrapf(sentinel, format, args...)
}
