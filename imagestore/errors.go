package imagestore

import "github.com/pkg/errors"

// Sentinel errors. Errors returned by this package wrap one of these, or an
// OS or context error, so callers test with errors.Is.
var (
	// ErrInvalidName means an image name is empty, too long, or has a
	// character outside the safe set (see ValidName).
	ErrInvalidName = errors.New("imagestore: invalid image name")
	// ErrNotFound means the named image does not exist.
	ErrNotFound = errors.New("imagestore: image not found")
	// ErrExist means an image of that name already exists where a new one
	// was to be made.
	ErrExist = errors.New("imagestore: image already exists")
	// ErrShrink means a resize asked for a size below the current one;
	// images only grow, as walb-tools' resize does.
	ErrShrink = errors.New("imagestore: cannot shrink an image")
	// ErrOutOfRange means a write or punch reaches past the image size, or
	// an offset or size is negative.
	ErrOutOfRange = errors.New("imagestore: range outside the image")
	// ErrReadOnly means a write or punch on an image opened read-only.
	ErrReadOnly = errors.New("imagestore: image opened read-only")
	// ErrFinished means Commit or Abort on a pending image that was already
	// committed or aborted.
	ErrFinished = errors.New("imagestore: pending image already committed or aborted")
	// ErrNotDir means the store path is not a directory.
	ErrNotDir = errors.New("imagestore: not a directory")
)
