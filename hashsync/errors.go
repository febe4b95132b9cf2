package hashsync

import "github.com/pkg/errors"

// Sentinel errors. Every error this package returns wraps one of them (or a
// context, I/O or wdiff error) with context, so callers test with errors.Is.
var (
	// ErrInvalid reports an invalid argument or option.
	ErrInvalid = errors.New("hashsync: invalid argument")
	// ErrCorrupt reports a stream that fails its checksums or framing: bad
	// magic, unknown message type, impossible length, CRC mismatch.
	ErrCorrupt = errors.New("hashsync: corrupt stream")
	// ErrTruncated reports a stream that ends inside a message or before its
	// end message.
	ErrTruncated = errors.New("hashsync: truncated stream")
	// ErrProtocol reports well-formed messages that break the protocol:
	// out of order, outside the session range, wrong counts.
	ErrProtocol = errors.New("hashsync: protocol violation")
	// ErrSession reports a peer whose session parameters (version, hash
	// algorithm, chunk size, seed, range) differ from the expected ones.
	ErrSession = errors.New("hashsync: session mismatch")
	// ErrShortImage reports an image that ends before the session range.
	ErrShortImage = errors.New("hashsync: image shorter than the session range")
	// ErrRemote reports an error message sent by the peer; the error text
	// carries the peer's message.
	ErrRemote = errors.New("hashsync: peer failed")
)
