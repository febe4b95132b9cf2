package hashsync

import (
	"bufio"
	"encoding/binary"
	"io"
	"os"

	"github.com/pkg/errors"
	"github.com/walb-go/walb/wdiff"
)

// indexMemEntries is how many pending index records an IndexedSink keeps
// in memory before it spills them to a temporary file (2.5 MiB). Tests
// lower it.
var indexMemEntries = 64 << 10

const indexEntrySize = 40

type indexEntry struct {
	rec wdiff.Record
	img wdiff.Image
}

func (e *indexEntry) encode(b []byte) {
	binary.LittleEndian.PutUint64(b[0:], e.rec.Addr)
	binary.LittleEndian.PutUint32(b[8:], e.rec.Blocks)
	b[12], b[13], b[14], b[15] = byte(e.rec.Flags), byte(e.img.Codec), 0, 0
	binary.LittleEndian.PutUint64(b[16:], e.img.Offset)
	binary.LittleEndian.PutUint32(b[24:], e.img.Size)
	binary.LittleEndian.PutUint32(b[28:], e.img.Checksum)
	binary.LittleEndian.PutUint32(b[32:], e.img.OrigBlocks)
	binary.LittleEndian.PutUint32(b[36:], 0)
}

func (e *indexEntry) decode(b []byte) {
	e.rec = wdiff.Record{Addr: binary.LittleEndian.Uint64(b[0:]), Blocks: binary.LittleEndian.Uint32(b[8:]), Flags: wdiff.Flags(b[12])}
	e.img = wdiff.Image{Codec: wdiff.Codec(b[13]), Offset: binary.LittleEndian.Uint64(b[16:]), Size: binary.LittleEndian.Uint32(b[24:]),
		Checksum: binary.LittleEndian.Uint32(b[28:]), OrigBlocks: binary.LittleEndian.Uint32(b[32:])}
}

// IndexedSink writes the differing chunks of a session to an indexed wdiff.
// Each chunk's data is written as an image when it arrives; the index
// records, which the format places after all images, wait until Close. Up
// to 64Ki of them wait in memory, the rest in a temporary file in Dir, so
// memory stays bounded whatever the number of differing chunks.
type IndexedSink struct {
	// Dir is where the temporary file is created ("" means os.TempDir()).
	Dir string

	w       *wdiff.IndexedWriter
	mem     []indexEntry
	spill   *os.File
	spillW  *bufio.Writer
	err     error
	closed  bool
	started bool
	end     uint64 // end of the last record
}

// NewIndexedSink returns a sink writing to w. Close must be called to write
// the index; it also closes w.
func NewIndexedSink(w *wdiff.IndexedWriter) *IndexedSink {
	return &IndexedSink{w: w}
}

// WriteStored adds one record: its stored data becomes an image now, its
// index record is written by Close.
func (s *IndexedSink) WriteStored(rec wdiff.Record, st wdiff.Stored) error {
	if s.closed {
		return wdiff.ErrClosed
	}
	if s.err != nil {
		return s.err
	}
	if s.started && s.end > rec.Addr {
		s.err = errors.Wrapf(wdiff.ErrUnsorted, "record %d+%d after one ending at %d", rec.Addr, rec.Blocks, s.end)
		return s.err
	}
	e := indexEntry{rec: rec}
	if rec.IsNormal() {
		img, err := s.w.WriteStoredImage(st, rec.Blocks)
		if err != nil {
			s.err = err
			return err
		}
		e.img = img
	} else {
		// walb-tools keeps the data offset of the moment for these.
		e.img = wdiff.Image{Offset: s.w.Offset()}
	}
	s.started, s.end = true, rec.End()
	s.mem = append(s.mem, e)
	if len(s.mem) == indexMemEntries {
		s.err = s.spillMem()
	}
	return s.err
}

func (s *IndexedSink) spillMem() error {
	if s.spill == nil {
		f, err := os.CreateTemp(s.Dir, "hashsync-index-*")
		if err != nil {
			return errors.WithMessage(err, "hashsync: index spill file")
		}
		s.spill, s.spillW = f, bufio.NewWriterSize(f, 256<<10)
	}
	var b [indexEntrySize]byte
	for i := range s.mem {
		s.mem[i].encode(b[:])
		if _, err := s.spillW.Write(b[:]); err != nil {
			return errors.WithMessage(err, "hashsync: index spill file")
		}
	}
	s.mem = s.mem[:0]
	return nil
}

// Close writes the index records in address order, closes the indexed
// writer and removes the temporary file. Calling it again returns the first
// result.
func (s *IndexedSink) Close() error {
	if s.closed {
		return s.err
	}
	s.closed = true
	if s.spill != nil {
		defer func() {
			s.spill.Close()
			os.Remove(s.spill.Name())
		}()
	}
	if s.err != nil {
		return s.err
	}
	if s.spill != nil {
		s.err = s.replaySpill()
	}
	for i := 0; s.err == nil && i < len(s.mem); i++ {
		s.err = s.w.WriteIndex(s.mem[i].rec, s.mem[i].img, 0)
	}
	s.mem = nil
	if s.err == nil {
		s.err = s.w.Close()
	}
	return s.err
}

func (s *IndexedSink) replaySpill() error {
	if err := s.spillW.Flush(); err != nil {
		return errors.WithMessage(err, "hashsync: index spill file")
	}
	if _, err := s.spill.Seek(0, io.SeekStart); err != nil {
		return errors.WithMessage(err, "hashsync: index spill file")
	}
	br := bufio.NewReaderSize(s.spill, 256<<10)
	var b [indexEntrySize]byte
	for {
		if _, err := io.ReadFull(br, b[:]); err == io.EOF {
			return nil
		} else if err != nil {
			return errors.WithMessage(err, "hashsync: index spill file")
		}
		var e indexEntry
		e.decode(b[:])
		if err := s.w.WriteIndex(e.rec, e.img, 0); err != nil {
			return err
		}
	}
}
