package hashsync

import (
	"bufio"
	"encoding/binary"
	"hash/crc32"
	"io"
	"strconv"

	"github.com/pkg/errors"
)

// Layout constants of the streams (see the package documentation).
const (
	headerSize     = 48
	msgHeaderSize  = 8
	msgTrailerSize = 4
	recordFixed    = 20 // fixed part of a Record body
	maxErrorText   = 4096
	streamBufSize  = 64 << 10
)

// Message types.
const (
	msgHashes     = 0x01
	msgHashEnd    = 0x02
	msgRecord     = 0x10
	msgCheckpoint = 0x11
	msgDataEnd    = 0x12
	msgError      = 0x7f
)

var (
	hashMagic  = [4]byte{'W', 'H', 'S', 'H'}
	dataMagic  = [4]byte{'W', 'H', 'S', 'D'}
	castagnoli = crc32.MakeTable(crc32.Castagnoli)
)

func msgName(t byte) string {
	switch t {
	case msgHashes:
		return "Hashes"
	case msgHashEnd:
		return "HashEnd"
	case msgRecord:
		return "Record"
	case msgCheckpoint:
		return "Checkpoint"
	case msgDataEnd:
		return "DataEnd"
	case msgError:
		return "Error"
	}
	return "type 0x" + strconv.FormatUint(uint64(t), 16)
}

// encodeHeader returns the stream header announcing s.
func encodeHeader(magic [4]byte, s Session, bulk int) [headerSize]byte {
	var b [headerSize]byte
	copy(b[0:4], magic[:])
	binary.LittleEndian.PutUint16(b[4:], Version)
	b[6] = HashXXH3
	binary.LittleEndian.PutUint32(b[8:], uint32(s.ChunkSize))
	binary.LittleEndian.PutUint32(b[12:], uint32(bulk))
	binary.LittleEndian.PutUint64(b[16:], s.Seed)
	binary.LittleEndian.PutUint64(b[24:], uint64(s.Start))
	binary.LittleEndian.PutUint64(b[32:], uint64(s.End))
	binary.LittleEndian.PutUint32(b[44:], crc32.Checksum(b[:44], castagnoli))
	return b
}

// decodeHeader checks a stream header and returns the session and bulk
// size it announces.
func decodeHeader(b []byte, magic [4]byte) (Session, int, error) {
	var s Session
	if [4]byte(b[0:4]) != magic {
		return s, 0, errors.Wrapf(ErrCorrupt, "stream header: magic %q, want %q", b[0:4], magic[:])
	}
	if got, want := binary.LittleEndian.Uint32(b[44:]), crc32.Checksum(b[:44], castagnoli); got != want {
		return s, 0, errors.Wrapf(ErrCorrupt, "stream header: crc %08x, want %08x", got, want)
	}
	if v := binary.LittleEndian.Uint16(b[4:]); v != Version {
		return s, 0, errors.Wrapf(ErrSession, "stream header: version %d, this side speaks %d", v, Version)
	}
	if b[6] != HashXXH3 {
		return s, 0, errors.Wrapf(ErrSession, "stream header: hash algorithm %d unknown", b[6])
	}
	start, end := binary.LittleEndian.Uint64(b[24:]), binary.LittleEndian.Uint64(b[32:])
	if start > 1<<62 || end > 1<<62 {
		return s, 0, errors.Wrapf(ErrProtocol, "stream header: range [%d, %d) too large", start, end)
	}
	s = Session{
		ChunkSize: int(binary.LittleEndian.Uint32(b[8:])),
		Seed:      binary.LittleEndian.Uint64(b[16:]),
		Start:     int64(start),
		End:       int64(end),
	}
	if err := s.validate(); err != nil {
		return s, 0, errors.Wrapf(ErrProtocol, "stream header: %v", err)
	}
	bulk := int(binary.LittleEndian.Uint32(b[12:]))
	if bulk > MaxBulkChunks {
		return s, 0, errors.Wrapf(ErrProtocol, "stream header: %d hashes per message, at most %d", bulk, MaxBulkChunks)
	}
	return s, bulk, nil
}

// countWriter counts the bytes written through it.
type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// msgWriter frames messages onto a stream. It is not safe for concurrent
// use; its error is sticky.
type msgWriter struct {
	cw  countWriter
	bw  *bufio.Writer
	hdr [msgHeaderSize + recordFixed]byte
	err error
}

func newMsgWriter(w io.Writer) *msgWriter {
	m := &msgWriter{cw: countWriter{w: w}}
	m.bw = bufio.NewWriterSize(&m.cw, streamBufSize)
	return m
}

// written returns the bytes handed to the underlying writer so far.
func (m *msgWriter) written() int64 { return m.cw.n }

func (m *msgWriter) raw(b []byte) error {
	if m.err == nil {
		_, m.err = m.bw.Write(b)
	}
	return m.err
}

// msg writes one message whose body is fixed followed by data.
func (m *msgWriter) msg(t byte, fixed, data []byte) error {
	if m.err != nil {
		return m.err
	}
	h := m.hdr[:msgHeaderSize]
	h[0], h[1], h[2], h[3] = t, 0, 0, 0
	binary.LittleEndian.PutUint32(h[4:], uint32(len(fixed)+len(data)))
	crc := crc32.Update(crc32.Update(crc32.Checksum(h, castagnoli), castagnoli, fixed), castagnoli, data)
	var tail [msgTrailerSize]byte
	binary.LittleEndian.PutUint32(tail[:], crc)
	for _, b := range [][]byte{h, fixed, data, tail[:]} {
		if len(b) > 0 {
			if _, err := m.bw.Write(b); err != nil {
				m.err = err
				return err
			}
		}
	}
	return nil
}

// u64s writes a message whose body is the given little-endian u64 values.
func (m *msgWriter) u64s(t byte, v ...uint64) error {
	var b [24]byte
	for i, x := range v {
		binary.LittleEndian.PutUint64(b[8*i:], x)
	}
	return m.msg(t, b[:8*len(v)], nil)
}

func (m *msgWriter) flush() error {
	if m.err == nil {
		m.err = m.bw.Flush()
	}
	return m.err
}

// abort tells the peer why this side gives up, as far as the stream still
// works. Failures of the stream itself are not reported on it.
func (m *msgWriter) abort(cause error) {
	if m.err != nil {
		return
	}
	text := cause.Error()
	if len(text) > maxErrorText {
		text = text[:maxErrorText]
	}
	if m.msg(msgError, []byte(text), nil) == nil {
		_ = m.flush()
	}
}

// msgReader reads the messages of a stream.
type msgReader struct {
	br  *bufio.Reader
	off int64 // stream offset of the next byte
	buf []byte
	max int // largest accepted body
	hdr [msgHeaderSize]byte
}

func newMsgReader(r io.Reader) *msgReader {
	return &msgReader{br: bufio.NewReaderSize(r, streamBufSize), max: 64}
}

// read fills b, reporting the end of input as ErrTruncated.
func (m *msgReader) read(b []byte, what string) error {
	n, err := io.ReadFull(m.br, b)
	m.off += int64(n)
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return errors.Wrapf(ErrTruncated, "%s at stream offset %d: got %d of %d bytes", what, m.off-int64(n), n, len(b))
	}
	if err != nil {
		return errors.WithMessagef(err, "hashsync: read %s at stream offset %d", what, m.off-int64(n))
	}
	return nil
}

// header reads and checks the stream header. A peer that fails before it
// can write its header sends an Error message instead (no magic starts
// with its type byte).
func (m *msgReader) header(magic [4]byte) (Session, int, error) {
	if p, err := m.br.Peek(1); err == nil && p[0] == msgError {
		_, _, err := m.next()
		if err == nil {
			err = errors.Wrap(ErrCorrupt, "stream header expected")
		}
		return Session{}, 0, err
	}
	var b [headerSize]byte
	if err := m.read(b[:], "stream header"); err != nil {
		return Session{}, 0, err
	}
	return decodeHeader(b[:], magic)
}

// next returns the next message. The body is valid until the next call.
// An Error message is returned as an error wrapping ErrRemote.
func (m *msgReader) next() (byte, []byte, error) {
	start := m.off
	if err := m.read(m.hdr[:], "message header"); err != nil {
		return 0, nil, err
	}
	t := m.hdr[0]
	n := binary.LittleEndian.Uint32(m.hdr[4:])
	if m.hdr[1]|m.hdr[2]|m.hdr[3] != 0 {
		return 0, nil, errors.Wrapf(ErrCorrupt, "message at stream offset %d: reserved bytes %x", start, m.hdr[1:4])
	}
	limit := m.max
	if t == msgError {
		limit = maxErrorText
	}
	if uint64(n) > uint64(limit) {
		return 0, nil, errors.Wrapf(ErrCorrupt, "%s message at stream offset %d: %d body bytes, at most %d", msgName(t), start, n, limit)
	}
	if cap(m.buf) < int(n)+msgTrailerSize {
		m.buf = make([]byte, int(n)+msgTrailerSize)
	}
	b := m.buf[:int(n)+msgTrailerSize]
	if err := m.read(b, msgName(t)+" message"); err != nil {
		return 0, nil, err
	}
	body := b[:n]
	crc := crc32.Update(crc32.Checksum(m.hdr[:], castagnoli), castagnoli, body)
	if got := binary.LittleEndian.Uint32(b[n:]); got != crc {
		return 0, nil, errors.Wrapf(ErrCorrupt, "%s message at stream offset %d: crc %08x, want %08x", msgName(t), start, got, crc)
	}
	if t == msgError {
		// Quoted: the text comes from the peer and ends up in logs.
		return 0, nil, errors.Wrapf(ErrRemote, "peer: %q", body)
	}
	return t, body, nil
}

// u64s decodes a body of exactly len(dst) u64 values.
func u64s(t byte, body []byte, dst ...*uint64) error {
	if len(body) != 8*len(dst) {
		return errors.Wrapf(ErrCorrupt, "%s message: %d body bytes, want %d", msgName(t), len(body), 8*len(dst))
	}
	for i, p := range dst {
		*p = binary.LittleEndian.Uint64(body[8*i:])
	}
	return nil
}
