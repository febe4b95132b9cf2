package wdiff

import "github.com/pkg/errors"

// Sentinel errors. Every error returned by this package wraps one of them
// with context (usually the byte offset of the structure that failed), so
// callers test with errors.Is.
var (
	// ErrChecksum reports a structure or data block whose WalB checksum does
	// not match.
	ErrChecksum = errors.New("wdiff: checksum mismatch")
	// ErrTruncated reports input that ends inside a structure or its data.
	ErrTruncated = errors.New("wdiff: truncated input")
	// ErrCorrupt reports a structurally invalid file or compressed block.
	ErrCorrupt = errors.New("wdiff: corrupt data")
	// ErrUnknownCodec reports a compression code or name walb-tools does not
	// define.
	ErrUnknownCodec = errors.New("wdiff: unknown compression codec")
	// ErrUnsorted reports records that are not in ascending address order or
	// that overlap, in a file being read or in calls to a writer.
	ErrUnsorted = errors.New("wdiff: records not sorted or overlapping")
	// ErrVersion reports a file header whose version is not 2.
	ErrVersion = errors.New("wdiff: unsupported version")
	// ErrType reports a file of the other layout than the reader expects,
	// or an unknown layout code.
	ErrType = errors.New("wdiff: unexpected file type")
	// ErrInvalid reports an invalid argument passed to a writer or codec.
	ErrInvalid = errors.New("wdiff: invalid argument")
	// ErrClosed reports use of a writer after Close, or of an indexed writer
	// phase that has already ended.
	ErrClosed = errors.New("wdiff: writer closed")
)
