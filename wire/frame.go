package wire

import (
	"bufio"
	"encoding/binary"
	"hash/crc32"
	"io"
	"unicode/utf8"

	"github.com/pkg/errors"
)

// Protocol constants.
const (
	// Version is the protocol version this package speaks.
	Version uint16 = 1
	// MinVersion is the oldest client version this package's servers accept.
	MinVersion uint16 = 1

	// PreambleSize is the size of the preamble each side sends first.
	PreambleSize = 8
	// HeaderSize is the size of a frame header (type and payload length).
	HeaderSize = 5
	// TrailerSize is the size of the CRC-32C that follows each payload.
	TrailerSize = 4
	// FrameOverhead is the number of bytes a frame adds to its payload.
	FrameOverhead = HeaderSize + TrailerSize

	// DefaultMaxFrame is the default limit on a frame's payload (16 MiB).
	DefaultMaxFrame = 16 << 20
	// MinMaxFrame is the smallest MaxFrame a peer may announce: every
	// handshake and reply frame of a well-behaved peer fits in it.
	MinMaxFrame = 64 << 10
	// MaxMaxFrame is the largest MaxFrame accepted (1 GiB).
	MaxMaxFrame = 1 << 30
)

// magic opens every preamble: "WALBGO".
var magic = [6]byte{'W', 'A', 'L', 'B', 'G', 'O'}

// FrameType is the first byte of a frame.
type FrameType byte

// Frame types. The values are part of the protocol (doc.go).
const (
	FrameHello   FrameType = 0x01 // client handshake
	FrameWelcome FrameType = 0x02 // server handshake answer
	FrameReply   FrameType = 0x10 // ok / accept / error
	FrameAck     FrameType = 0x11 // "committed", empty payload
	FrameDummy   FrameType = 0x12 // keepalive, ignored by receivers
	FrameString  FrameType = 0x20
	FrameStrings FrameType = 0x21
	FrameU64     FrameType = 0x22
	FrameBool    FrameType = 0x23
	FrameBytes   FrameType = 0x24
	FrameValue   FrameType = 0x25 // a cybozu-serialized record (package meta)
	FrameChunk   FrameType = 0x30 // one chunk of a bulk stream
	FrameEnd     FrameType = 0x31 // end of a bulk stream, empty payload
)

// String returns the frame type's name.
func (t FrameType) String() string {
	switch t {
	case FrameHello:
		return "hello"
	case FrameWelcome:
		return "welcome"
	case FrameReply:
		return "reply"
	case FrameAck:
		return "ack"
	case FrameDummy:
		return "dummy"
	case FrameString:
		return "string"
	case FrameStrings:
		return "strings"
	case FrameU64:
		return "u64"
	case FrameBool:
		return "bool"
	case FrameBytes:
		return "bytes"
	case FrameValue:
		return "value"
	case FrameChunk:
		return "chunk"
	case FrameEnd:
		return "end"
	}
	return "unknown"
}

// known reports whether t is a frame type of this version.
func (t FrameType) known() bool { return t.String() != "unknown" }

// fixedSize returns the exact payload size of types that have one, or -1.
func (t FrameType) fixedSize() int {
	switch t {
	case FrameAck, FrameDummy, FrameEnd:
		return 0
	case FrameU64:
		return 8
	case FrameBool:
		return 1
	}
	return -1
}

// castagnoli is the CRC-32C table; the standard library uses the CPU's
// crc32 instruction with it where available.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// frameCRC returns the CRC-32C of a frame's header and payload.
func frameCRC(hdr, payload []byte) uint32 {
	return crc32.Update(crc32.Update(0, castagnoli, hdr), castagnoli, payload)
}

// putHeader fills a frame header.
func putHeader(hdr []byte, t FrameType, n int) {
	hdr[0] = byte(t)
	binary.LittleEndian.PutUint32(hdr[1:5], uint32(n))
}

// AppendFrame appends one complete frame (header, payload, CRC) to dst. It
// is what Conn writes; tests and tools use it to build raw streams.
func AppendFrame(dst []byte, t FrameType, payload []byte) []byte {
	var hdr [HeaderSize]byte
	putHeader(hdr[:], t, len(payload))
	dst = append(dst, hdr[:]...)
	dst = append(dst, payload...)
	return binary.LittleEndian.AppendUint32(dst, frameCRC(hdr[:], payload))
}

// growStep bounds each allocation step of a payload buffer, so a header
// announcing a large payload costs memory only as fast as bytes arrive.
const growStep = 1 << 20

// FrameReader reads and verifies frames from a byte stream. It is the
// decoder under Conn, exported for tools and fuzzing. The payload it
// returns is valid until the next call. After an error every call returns
// that error.
type FrameReader struct {
	r    *bufio.Reader
	max  int
	buf  []byte
	hdr  [HeaderSize]byte
	tail [TrailerSize]byte
	off  int64
	err  error
}

// NewFrameReader returns a FrameReader that refuses payloads over maxFrame.
func NewFrameReader(r io.Reader, maxFrame int) *FrameReader {
	br, ok := r.(*bufio.Reader)
	if !ok {
		br = bufio.NewReaderSize(r, 64<<10)
	}
	return &FrameReader{r: br, max: maxFrame}
}

// Offset returns the number of bytes consumed by complete frames.
func (fr *FrameReader) Offset() int64 { return fr.off }

// Next reads one frame, including Dummy frames (Conn skips those). A clean
// end of input at a frame boundary is io.EOF; anything else that goes wrong
// is one of ErrTruncated, ErrBadFrame, ErrFrameTooLarge, ErrChecksum or the
// reader's own error, wrapped with the offset.
func (fr *FrameReader) Next() (FrameType, []byte, error) {
	if fr.err != nil {
		return 0, nil, fr.err
	}
	t, p, err := fr.next()
	if err != nil {
		fr.err = err
		return 0, nil, err
	}
	return t, p, nil
}

func (fr *FrameReader) next() (FrameType, []byte, error) {
	start := fr.off
	n, err := io.ReadFull(fr.r, fr.hdr[:])
	if err != nil {
		if err == io.EOF {
			return 0, nil, io.EOF
		}
		return 0, nil, fr.readErr(err, "frame header", start, n)
	}
	t := FrameType(fr.hdr[0])
	size := int64(binary.LittleEndian.Uint32(fr.hdr[1:5]))
	if !t.known() {
		return 0, nil, errors.Wrapf(ErrBadFrame, "unknown frame type 0x%02x at offset %d", byte(t), start)
	}
	if size > int64(fr.max) {
		return 0, nil, errors.Wrapf(ErrFrameTooLarge, "%s frame of %d bytes over limit %d at offset %d", t, size, fr.max, start)
	}
	if fs := t.fixedSize(); fs >= 0 && size != int64(fs) {
		return 0, nil, errors.Wrapf(ErrBadFrame, "%s frame of %d bytes, want %d, at offset %d", t, size, fs, start)
	}
	p, err := fr.readPayload(int(size))
	if err != nil {
		return 0, nil, fr.readErr(err, t.String()+" payload", start, HeaderSize+len(p))
	}
	if n, err := io.ReadFull(fr.r, fr.tail[:]); err != nil {
		return 0, nil, fr.readErr(err, t.String()+" checksum", start, HeaderSize+len(p)+n)
	}
	got := binary.LittleEndian.Uint32(fr.tail[:])
	if want := frameCRC(fr.hdr[:], p); got != want {
		return 0, nil, errors.Wrapf(ErrChecksum, "%s frame of %d bytes at offset %d: crc %08x, computed %08x", t, size, start, got, want)
	}
	fr.off += FrameOverhead + size
	return t, p, nil
}

// readPayload reads n bytes into the reusable buffer, growing it in steps
// of at most growStep as data arrives.
func (fr *FrameReader) readPayload(n int) ([]byte, error) {
	if cap(fr.buf) >= n {
		p := fr.buf[:n]
		m, err := io.ReadFull(fr.r, p)
		return p[:m], err
	}
	p := fr.buf[:0]
	for len(p) < n {
		if len(p) == cap(p) {
			nc := min(max(n, 4<<10), max(2*cap(p), growStep))
			q := make([]byte, len(p), nc)
			copy(q, p)
			p = q
			fr.buf = q
		}
		m, err := io.ReadFull(fr.r, p[len(p):min(n, cap(p))])
		p = p[:len(p)+m]
		if err != nil {
			return p, err
		}
	}
	return p, nil
}

// readErr turns a short read into ErrTruncated and keeps other errors.
func (fr *FrameReader) readErr(err error, what string, start int64, got int) error {
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return errors.Wrapf(ErrTruncated, "%s at offset %d (%d bytes of the frame read)", what, start, got)
	}
	return errors.Wrapf(err, "wire: read %s at offset %d", what, start)
}

// Payload encodings shared by several frame types.

// appendString16 appends a u16 length and s.
func appendString16(dst []byte, s string) []byte {
	dst = binary.LittleEndian.AppendUint16(dst, uint16(len(s)))
	return append(dst, s...)
}

// appendStrings appends a u32 count and each string as a u32 length and its
// bytes.
func appendStrings(dst []byte, v []string) []byte {
	dst = binary.LittleEndian.AppendUint32(dst, uint32(len(v)))
	for _, s := range v {
		dst = binary.LittleEndian.AppendUint32(dst, uint32(len(s)))
		dst = append(dst, s...)
	}
	return dst
}

// stringsSize returns the encoded size of appendStrings(nil, v).
func stringsSize(v []string) int {
	n := 4
	for _, s := range v {
		n += 4 + len(s)
	}
	return n
}

// payloadDecoder reads fields from one payload and fails on overruns.
type payloadDecoder struct {
	p   []byte
	off int
	err error
	ctx string
}

func (d *payloadDecoder) fail(format string, args ...any) {
	if d.err == nil {
		d.err = errors.Wrapf(ErrBadFrame, "%s: "+format, append([]any{d.ctx}, args...)...)
	}
}

func (d *payloadDecoder) take(n int, what string) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || n > len(d.p)-d.off {
		d.fail("%s of %d bytes overruns the payload at offset %d (%d bytes left)", what, n, d.off, len(d.p)-d.off)
		return nil
	}
	b := d.p[d.off : d.off+n]
	d.off += n
	return b
}

func (d *payloadDecoder) u8(what string) byte {
	b := d.take(1, what)
	if b == nil {
		return 0
	}
	return b[0]
}

func (d *payloadDecoder) u16(what string) uint16 {
	b := d.take(2, what)
	if b == nil {
		return 0
	}
	return binary.LittleEndian.Uint16(b)
}

func (d *payloadDecoder) u32(what string) uint32 {
	b := d.take(4, what)
	if b == nil {
		return 0
	}
	return binary.LittleEndian.Uint32(b)
}

func (d *payloadDecoder) string16(what string) string {
	n := int(d.u16(what + " length"))
	return string(d.take(n, what))
}

func (d *payloadDecoder) strings(what string) []string {
	n := d.u32(what + " count")
	if d.err != nil {
		return nil
	}
	// Each string needs at least its 4-byte length, which bounds the
	// allocation by the payload size.
	if uint64(n)*4 > uint64(len(d.p)-d.off) {
		d.fail("%s count %d does not fit in %d bytes", what, n, len(d.p)-d.off)
		return nil
	}
	v := make([]string, 0, n)
	for i := range int(n) {
		l := d.u32(what + " length")
		if d.err != nil {
			return nil
		}
		if uint64(l) > uint64(len(d.p)-d.off) {
			d.fail("%s %d length %d overruns the payload", what, i, l)
			return nil
		}
		v = append(v, string(d.take(int(l), what)))
	}
	return v
}

func (d *payloadDecoder) rest() []byte {
	if d.err != nil {
		return nil
	}
	b := d.p[d.off:]
	d.off = len(d.p)
	return b
}

func (d *payloadDecoder) end() error {
	if d.err == nil && d.off != len(d.p) {
		d.fail("%d trailing bytes", len(d.p)-d.off)
	}
	return d.err
}

// Reply kinds (first byte of a Reply payload and of a Welcome status).
const (
	kindOK     byte = 0
	kindAccept byte = 1
	kindError  byte = 2
)

// maxMsgLen bounds an error text so that an error reply always fits in
// MinMaxFrame.
const maxMsgLen = 32 << 10

// appendReply appends a Reply payload.
func appendReply(dst []byte, kind byte, code Code, msg string) []byte {
	dst = append(dst, kind)
	if kind != kindError {
		return dst
	}
	if code == "" {
		code = ErrFailed
	}
	if len(code) > maxCodeLen {
		code = code[:maxCodeLen]
	}
	msg = truncateUTF8(msg, maxMsgLen)
	dst = append(dst, byte(len(code)))
	dst = append(dst, code...)
	return append(dst, msg...)
}

// decodeReply decodes the reply at the decoder's position: kind, and for
// errors the *RemoteError.
func decodeReply(d *payloadDecoder) (byte, *RemoteError) {
	kind := d.u8("reply kind")
	switch kind {
	case kindOK, kindAccept:
		return kind, nil
	case kindError:
		n := int(d.u8("code length"))
		code := Code(d.take(n, "code"))
		msg := string(d.rest())
		if d.err != nil {
			return kind, nil
		}
		if code == "" {
			code = ErrFailed
		}
		return kind, &RemoteError{Code: code, Msg: msg}
	}
	if d.err == nil {
		d.fail("unknown reply kind %d", kind)
	}
	return kind, nil
}

// truncateUTF8 cuts s to at most n bytes without splitting a rune.
func truncateUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}
