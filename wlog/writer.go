package wlog

import (
	"io"

	"github.com/pkg/errors"
)

// Writer writes a wlog file: the header, then packs in lsid order, then the
// end block on Close.
type Writer struct {
	w      io.Writer
	hdr    FileHeader
	lsid   uint64
	block  []byte
	err    error
	closed bool
}

// NewWriter writes the file header h to w.
func NewWriter(w io.Writer, h FileHeader) (*Writer, error) {
	if err := h.Validate(); err != nil {
		return nil, err
	}
	if _, err := w.Write(h.Marshal()); err != nil {
		return nil, errors.Wrap(err, "wlog: write header")
	}
	return &Writer{w: w, hdr: h, lsid: h.BeginLsid, block: make([]byte, h.PBS)}, nil
}

// Header returns the file header.
func (w *Writer) Header() FileHeader { return w.hdr }

// NextLsid returns the lsid the next pack must have.
func (w *Writer) NextLsid() uint64 { return w.lsid }

// WritePack appends one logpack. data holds the pack's data blocks
// (h.TotalIOSize PBs). The header is re-encoded with the file's salt.
func (w *Writer) WritePack(h *PackHeader, data []byte) error {
	if w.err != nil {
		return w.err
	}
	switch {
	case w.closed:
		return errors.Wrap(ErrInvalid, "write after close")
	case h.PBS != w.hdr.PBS:
		return errors.Wrapf(ErrInvalid, "pack block size %d, file %d", h.PBS, w.hdr.PBS)
	case h.LogpackLsid != w.lsid:
		return errors.Wrapf(ErrInvalid, "pack lsid %d, expected %d", h.LogpackLsid, w.lsid)
	case len(h.Records) == 0:
		return errors.Wrapf(ErrInvalid, "pack lsid %d has no records", h.LogpackLsid)
	case len(data) != h.DataSize():
		return errors.Wrapf(ErrInvalid, "pack lsid %d: %d data bytes, want %d", h.LogpackLsid, len(data), h.DataSize())
	}
	h.MarshalTo(w.block, w.hdr.Salt)
	if _, err := w.w.Write(w.block); err != nil {
		w.err = errors.Wrap(err, "wlog: write pack header")
		return w.err
	}
	if _, err := w.w.Write(data); err != nil {
		w.err = errors.Wrap(err, "wlog: write pack data")
		return w.err
	}
	w.lsid = h.NextLsid()
	return nil
}

// Close writes the end block. It does not close the underlying writer.
func (w *Writer) Close() error {
	if w.err != nil || w.closed {
		return w.err
	}
	w.closed = true
	if _, err := w.w.Write(MarshalEndBlock(w.hdr.PBS, w.hdr.Salt)); err != nil {
		w.err = errors.Wrap(err, "wlog: write end block")
	}
	return w.err
}
