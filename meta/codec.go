package meta

import (
	"bytes"
	"encoding/binary"
	"io"

	"github.com/pkg/errors"
)

// intKind is the declared C++ type of a variable-length integer. The encoding
// of a value depends on it: u32 0xFFFFFFFF is one byte (FF, as int8 -1
// converts back to it) while u64 0xFFFFFFFF needs five.
type intKind struct {
	bits   int
	signed bool
}

var (
	kindU32 = intKind{32, false}
	kindI32 = intKind{32, true}
	kindU64 = intKind{64, false}
	kindI64 = intKind{64, true}
)

// normalize reduces v modulo 2^bits and extends it back to 64 bits the way
// the kind would (sign or zero extension). Values of a kind are always kept
// in this form, so "converts back unchanged" is plain equality.
func normalize(v uint64, k intKind) uint64 {
	if k.bits == 64 {
		return v
	}
	mask := uint64(1)<<k.bits - 1
	v &= mask
	if k.signed && v&(uint64(1)<<(k.bits-1)) != 0 {
		v |= ^mask
	}
	return v
}

// survives reports whether x, a normalized value of kind k, is unchanged by
// a round trip through an integer of the given width and signedness.
func survives(x uint64, k intKind, bits int, signed bool) bool {
	return normalize(normalize(x, intKind{bits, signed}), k) == x
}

// appendVarint appends the cybozu encoding of x (normalized for k). The rule
// order is the serializer's: int8, uint8, uint16/int16, uint32/int32, 8 bytes.
func appendVarint(dst []byte, x uint64, k intKind) []byte {
	switch {
	case survives(x, k, 8, true):
		b := byte(x)
		if b >= 0x80 && b <= 0x87 {
			dst = append(dst, 0x84)
		}
		return append(dst, b)
	case survives(x, k, 8, false):
		return append(dst, 0x80, byte(x))
	case survives(x, k, 16, false):
		return binary.LittleEndian.AppendUint16(append(dst, 0x81), uint16(x))
	case survives(x, k, 16, true):
		return binary.LittleEndian.AppendUint16(append(dst, 0x85), uint16(x))
	case survives(x, k, 32, false):
		return binary.LittleEndian.AppendUint32(append(dst, 0x82), uint32(x))
	case survives(x, k, 32, true):
		return binary.LittleEndian.AppendUint32(append(dst, 0x86), uint32(x))
	default:
		return binary.LittleEndian.AppendUint64(append(dst, 0x83), x)
	}
}

// varintPayload returns the payload size for a header byte and whether the
// payload is sign-extended; size 0 means the header is the value itself.
func varintPayload(h byte) (size int, signed bool) {
	switch h {
	case 0x80, 0x81, 0x82, 0x83:
		return 1 << (h - 0x80), false
	case 0x84, 0x85, 0x86, 0x87:
		return 1 << (h - 0x84), true
	}
	return 0, true
}

// Maximum encoded sizes, for callers that size buffers.
const (
	// MaxVarintLen is the longest variable-length integer (header + 8 bytes).
	MaxVarintLen = 9
	// UUIDSize is the size of a serialized UUID (16 raw bytes, no length).
	UUIDSize = 16
)

// Encodable is a value with a cybozu serialized form.
type Encodable interface {
	EncodeTo(e *Encoder) error
}

// Decodable is a value that can be read back from its cybozu serialized form.
type Decodable interface {
	DecodeFrom(d *Decoder) error
}

// Encoder writes cybozu-serialized values to an io.Writer. It issues one
// small Write per value, so wrap sockets and files in a bufio.Writer. After
// the first write error every method returns that same error.
type Encoder struct {
	w   io.Writer
	n   int64
	err error
	buf [MaxVarintLen]byte
}

// NewEncoder returns an Encoder writing to w.
func NewEncoder(w io.Writer) *Encoder { return &Encoder{w: w} }

// Err returns the first error met, if any.
func (e *Encoder) Err() error { return e.err }

// Len returns the number of bytes written so far.
func (e *Encoder) Len() int64 { return e.n }

func (e *Encoder) write(b []byte) error {
	if e.err != nil {
		return e.err
	}
	n, err := e.w.Write(b)
	e.n += int64(n)
	if err == nil && n != len(b) {
		err = io.ErrShortWrite
	}
	if err != nil {
		e.err = errors.Wrapf(err, "meta: write at offset %d", e.n)
	}
	return e.err
}

// Raw writes b as is, with no length prefix (fixed-size fields, hashes).
func (e *Encoder) Raw(b []byte) error { return e.write(b) }

// Bool writes one byte, 0 or 1.
func (e *Encoder) Bool(v bool) error {
	e.buf[0] = 0
	if v {
		e.buf[0] = 1
	}
	return e.write(e.buf[:1])
}

// U8 writes one byte.
func (e *Encoder) U8(v uint8) error {
	e.buf[0] = v
	return e.write(e.buf[:1])
}

// U16 writes two bytes, little-endian (preambles, ports).
func (e *Encoder) U16(v uint16) error {
	binary.LittleEndian.PutUint16(e.buf[:], v)
	return e.write(e.buf[:2])
}

// U32 writes a variable-length unsigned 32-bit integer (C++ unsigned int).
func (e *Encoder) U32(v uint32) error {
	return e.write(appendVarint(e.buf[:0], uint64(v), kindU32))
}

// I32 writes a variable-length signed 32-bit integer (C++ int).
func (e *Encoder) I32(v int32) error {
	return e.write(appendVarint(e.buf[:0], uint64(int64(v)), kindI32))
}

// U64 writes a variable-length unsigned 64-bit integer (uint64_t, size_t).
func (e *Encoder) U64(v uint64) error {
	return e.write(appendVarint(e.buf[:0], v, kindU64))
}

// I64 writes a variable-length signed 64-bit integer (int64_t, long).
func (e *Encoder) I64(v int64) error {
	return e.write(appendVarint(e.buf[:0], uint64(v), kindI64))
}

// Bytes writes a length (as size_t) followed by b.
func (e *Encoder) Bytes(b []byte) error {
	if err := e.U64(uint64(len(b))); err != nil {
		return err
	}
	return e.write(b)
}

// String writes a length (as size_t) followed by the bytes of s.
func (e *Encoder) String(s string) error {
	if err := e.U64(uint64(len(s))); err != nil {
		return err
	}
	return e.write([]byte(s))
}

// Strings writes a count followed by each string (std::vector<std::string>).
func (e *Encoder) Strings(v []string) error {
	if err := e.U64(uint64(len(v))); err != nil {
		return err
	}
	for _, s := range v {
		if err := e.String(s); err != nil {
			return err
		}
	}
	return nil
}

// UUID writes 16 raw bytes.
func (e *Encoder) UUID(u [UUIDSize]byte) error { return e.write(u[:]) }

// Value writes v's serialized form.
func (e *Encoder) Value(v Encodable) error {
	if e.err != nil {
		return e.err
	}
	if err := v.EncodeTo(e); err != nil {
		if e.err == nil {
			return err
		}
		return e.err
	}
	return e.err
}

// Decoder reads cybozu-serialized values from an io.Reader. It never reads
// past the value asked for, so it can share a stream with other readers.
// After the first error every method returns that same error.
type Decoder struct {
	r   io.Reader
	off int64
	err error
	buf [16]byte
}

// NewDecoder returns a Decoder reading from r.
func NewDecoder(r io.Reader) *Decoder { return &Decoder{r: r} }

// Err returns the first error met, if any.
func (d *Decoder) Err() error { return d.err }

// Offset returns the number of bytes consumed so far.
func (d *Decoder) Offset() int64 { return d.off }

// fail records err as the sticky error and returns it.
func (d *Decoder) fail(err error) error {
	if d.err == nil {
		d.err = err
	}
	return d.err
}

// readFull fills p, turning a short read into a truncatedError.
func (d *Decoder) readFull(p []byte, what string) error {
	if d.err != nil {
		return d.err
	}
	n, err := io.ReadFull(d.r, p)
	start := d.off
	d.off += int64(n)
	if err == nil {
		return nil
	}
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return d.fail(&truncatedError{what: what, off: start, cause: err})
	}
	return d.fail(errors.Wrapf(err, "meta: read %s at offset %d", what, start))
}

// Raw fills p with the next len(p) bytes.
func (d *Decoder) Raw(p []byte) error { return d.readFull(p, "raw bytes") }

// Bool reads one byte that must be 0 or 1.
func (d *Decoder) Bool() (bool, error) {
	if err := d.readFull(d.buf[:1], "bool"); err != nil {
		return false, err
	}
	switch d.buf[0] {
	case 0:
		return false, nil
	case 1:
		return true, nil
	}
	return false, d.fail(errors.Wrapf(ErrBadBool, "byte 0x%02x at offset %d", d.buf[0], d.off-1))
}

// U8 reads one byte.
func (d *Decoder) U8() (uint8, error) {
	if err := d.readFull(d.buf[:1], "u8"); err != nil {
		return 0, err
	}
	return d.buf[0], nil
}

// U16 reads two bytes, little-endian.
func (d *Decoder) U16() (uint16, error) {
	if err := d.readFull(d.buf[:2], "u16"); err != nil {
		return 0, err
	}
	return binary.LittleEndian.Uint16(d.buf[:2]), nil
}

// varint reads one variable-length integer of kind k and returns it
// normalized. It rejects 8-byte forms for 32-bit kinds and any encoding that
// is not the canonical one for the decoded value.
func (d *Decoder) varint(k intKind) (uint64, error) {
	start := d.off
	if err := d.readFull(d.buf[:1], "integer header"); err != nil {
		return 0, err
	}
	h := d.buf[0]
	size, signed := varintPayload(h)
	var v uint64
	if size == 0 {
		v = uint64(int64(int8(h)))
	} else {
		if size == 8 && k.bits == 32 {
			return 0, d.fail(errors.Wrapf(ErrIntRange, "header 0x%02x at offset %d", h, start))
		}
		if err := d.readFull(d.buf[1:1+size], "integer payload"); err != nil {
			return 0, err
		}
		p := d.buf[1 : 1+size]
		switch size {
		case 1:
			v = uint64(p[0])
		case 2:
			v = uint64(binary.LittleEndian.Uint16(p))
		case 4:
			v = uint64(binary.LittleEndian.Uint32(p))
		case 8:
			v = binary.LittleEndian.Uint64(p)
		}
		if signed {
			v = normalize(v, intKind{size * 8, true})
		}
	}
	x := normalize(v, k)
	var canon [MaxVarintLen]byte
	if !bytes.Equal(appendVarint(canon[:0], x, k), d.buf[:1+size]) {
		return 0, d.fail(errors.Wrapf(ErrOverlong, "% x at offset %d", d.buf[:1+size], start))
	}
	return x, nil
}

// U32 reads a variable-length unsigned 32-bit integer.
func (d *Decoder) U32() (uint32, error) {
	v, err := d.varint(kindU32)
	return uint32(v), err
}

// I32 reads a variable-length signed 32-bit integer.
func (d *Decoder) I32() (int32, error) {
	v, err := d.varint(kindI32)
	return int32(v), err
}

// U64 reads a variable-length unsigned 64-bit integer.
func (d *Decoder) U64() (uint64, error) { return d.varint(kindU64) }

// I64 reads a variable-length signed 64-bit integer.
func (d *Decoder) I64() (int64, error) {
	v, err := d.varint(kindI64)
	return int64(v), err
}

// chunkSize bounds each allocation step of Bytes, so a hostile length prefix
// costs memory only as fast as real bytes arrive.
const chunkSize = 64 << 10

// length reads a size_t prefix and checks it against max.
func (d *Decoder) length(max int, what string) (int, error) {
	start := d.off
	n, err := d.U64()
	if err != nil {
		return 0, err
	}
	if max < 0 || n > uint64(max) {
		return 0, d.fail(errors.Wrapf(ErrTooLong, "%s %d over limit %d at offset %d", what, n, max, start))
	}
	return int(n), nil
}

// Bytes reads a length-prefixed byte string of at most max bytes.
func (d *Decoder) Bytes(max int) ([]byte, error) {
	n, err := d.length(max, "length")
	if err != nil {
		return nil, err
	}
	out := make([]byte, 0, min(n, chunkSize))
	for len(out) < n {
		step := min(n-len(out), chunkSize)
		out = append(out, make([]byte, step)...)
		if err := d.readFull(out[len(out)-step:], "byte string"); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// String reads a length-prefixed string of at most max bytes.
func (d *Decoder) String(max int) (string, error) {
	b, err := d.Bytes(max)
	return string(b), err
}

// Strings reads a string vector of at most maxCount strings of at most
// maxLen bytes each.
func (d *Decoder) Strings(maxCount, maxLen int) ([]string, error) {
	n, err := d.length(maxCount, "count")
	if err != nil {
		return nil, err
	}
	v := make([]string, 0, min(n, 1024))
	for range n {
		s, err := d.String(maxLen)
		if err != nil {
			return nil, err
		}
		v = append(v, s)
	}
	return v, nil
}

// UUID reads 16 raw bytes.
func (d *Decoder) UUID() ([UUIDSize]byte, error) {
	var u [UUIDSize]byte
	err := d.readFull(u[:], "uuid")
	return u, err
}

// Value reads v's serialized form.
func (d *Decoder) Value(v Decodable) error {
	if d.err != nil {
		return d.err
	}
	if err := v.DecodeFrom(d); err != nil {
		return d.fail(err)
	}
	return d.err
}

// Marshal returns the serialized form of v.
func Marshal(v Encodable) ([]byte, error) {
	var b bytes.Buffer
	if err := NewEncoder(&b).Value(v); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

// Unmarshal decodes v from b, which must hold exactly one value.
func Unmarshal(b []byte, v Decodable) error {
	r := bytes.NewReader(b)
	d := NewDecoder(r)
	if err := d.Value(v); err != nil {
		return err
	}
	if r.Len() != 0 {
		return errors.Wrapf(ErrTrailingData, "%d bytes after offset %d", r.Len(), d.Offset())
	}
	return nil
}
