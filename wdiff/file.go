package wdiff

import (
	"io"
	"os"

	"github.com/pkg/errors"
)

// Reader is what the readers of both layouts provide: records in address
// order with uncompressed data.
type Reader interface {
	// Header returns the file header.
	Header() FileHeader
	// Next returns the next record; its data is valid until the next call.
	// It returns io.EOF at the end.
	Next() (IO, error)
}

var (
	_ Reader = (*SortedReader)(nil)
	_ Reader = (*IndexedReader)(nil)
)

// NewReader reads the file header of the size-byte file r and returns the
// reader for its layout: a *SortedReader or an *IndexedReader.
func NewReader(r io.ReaderAt, size int64) (Reader, error) {
	var b [FileHeaderSize]byte
	if n, err := r.ReadAt(b[:], 0); n < len(b) {
		return nil, readErr(eofIfNil(err), "file header", 0, n, FileHeaderSize)
	}
	h, err := ParseFileHeader(b[:])
	if err != nil {
		return nil, err
	}
	if h.Type == TypeIndexed {
		return newIndexedReaderAfterHeader(r, size, h)
	}
	return newSortedReaderAfterHeader(io.NewSectionReader(r, FileHeaderSize, size-FileHeaderSize), h), nil
}

// File is an open wdiff file of either layout.
type File struct {
	Reader
	f *os.File
}

// Open opens a wdiff file and detects its layout from the header.
func Open(path string) (*File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, errors.Wrap(err, "wdiff: open")
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, errors.Wrap(err, "wdiff: stat")
	}
	r, err := NewReader(f, st.Size())
	if err != nil {
		f.Close()
		return nil, errors.WithMessagef(err, "wdiff: %s", path)
	}
	return &File{Reader: r, f: f}, nil
}

// Close closes the file.
func (f *File) Close() error { return f.f.Close() }

// Sorted returns the sorted-layout reader, or nil for an indexed file.
func (f *File) Sorted() *SortedReader {
	r, _ := f.Reader.(*SortedReader)
	return r
}

// Indexed returns the indexed-layout reader, or nil for a sorted file.
func (f *File) Indexed() *IndexedReader {
	r, _ := f.Reader.(*IndexedReader)
	return r
}
