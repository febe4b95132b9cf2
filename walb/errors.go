package walb

import "github.com/pkg/errors"

// Sentinel errors. Returned errors wrap them with context (lsid, offset,
// path); test for them with errors.Is.
var (
	// ErrInvalid reports a bad argument: an unaligned or out-of-range IO, a
	// bad option, an lsid that may not be used.
	ErrInvalid = errors.New("walb: invalid argument")
	// ErrCorrupt reports on-disk data that breaks the format: a bad super
	// sector or a log that is damaged where it must be valid.
	ErrCorrupt = errors.New("walb: corrupt data")
	// ErrChecksum reports a super sector whose checksum does not match.
	ErrChecksum = errors.New("walb: checksum mismatch")
	// ErrClosed is returned by every operation on a closed device.
	ErrClosed = errors.New("walb: device closed")
	// ErrFailed is returned once the device has met an IO error on its log
	// or data device. The device then refuses writes (the driver's
	// read-only state); reads still work. Close and reopen to recover.
	ErrFailed = errors.New("walb: device failed")
	// ErrOverflow means the log needed by a reader was overwritten: the
	// ring buffer overflowed (see Device.IsLogOverflow).
	ErrOverflow = errors.New("walb: log overflow")
	// ErrReset means the log was reset (ResetWAL) while it was being read.
	ErrReset = errors.New("walb: log was reset")
)
