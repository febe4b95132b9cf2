package hashsync

import "fmt"

// Stats describes a session's progress or result. Both halves count the
// same things, so their final Stats agree.
type Stats struct {
	// Offset is the end of the compared prefix: every chunk below it has
	// been compared and, if it differed, sent (and, on the receiving end,
	// handed to the sink). A session resumed from Offset completes the
	// range.
	Offset int64
	// Chunks and Scanned count the chunks and bytes compared.
	Chunks, Scanned int64
	// DiffChunks and DiffBytes count the chunks that differed and their
	// size; ZeroChunks those of them sent as all-zero records (no data).
	DiffChunks, DiffBytes, ZeroChunks int64
	// StoredBytes is the record payload sent, after compression.
	StoredBytes int64
	// HashBytes and DataBytes are the sizes of the two streams so far,
	// headers and framing included.
	HashBytes, DataBytes int64
}

// String formats s on one line for logs.
func (s Stats) String() string {
	return fmt.Sprintf("offset %d chunks %d scanned %d diff %d (%d bytes, %d zero) stored %d hashStream %d dataStream %d",
		s.Offset, s.Chunks, s.Scanned, s.DiffChunks, s.DiffBytes, s.ZeroChunks, s.StoredBytes, s.HashBytes, s.DataBytes)
}
