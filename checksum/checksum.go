package checksum

import "encoding/binary"

// Add folds b into the running word sum s and returns the new sum. A final
// group of 1–3 bytes is zero-padded to a whole word, so every call except the
// last in a sequence must pass a multiple of 4 bytes.
func Add(s uint32, b []byte) uint32 {
	// Summing 64-bit little-endian loads and folding the halves at the end is
	// the same modulo 2^32 as summing each 32-bit word, with half the loads.
	var acc uint64
	n := len(b) &^ 31
	for i := 0; i < n; i += 32 {
		q := b[i : i+32 : i+32]
		v0 := binary.LittleEndian.Uint64(q[0:])
		v1 := binary.LittleEndian.Uint64(q[8:])
		v2 := binary.LittleEndian.Uint64(q[16:])
		v3 := binary.LittleEndian.Uint64(q[24:])
		acc += (v0 & 0xffffffff) + (v0 >> 32) + (v1 & 0xffffffff) + (v1 >> 32) +
			(v2 & 0xffffffff) + (v2 >> 32) + (v3 & 0xffffffff) + (v3 >> 32)
	}
	for ; n+4 <= len(b); n += 4 {
		acc += uint64(binary.LittleEndian.Uint32(b[n:]))
	}
	if rest := len(b) - n; rest > 0 {
		var w [4]byte
		copy(w[:], b[n:])
		acc += uint64(binary.LittleEndian.Uint32(w[:]))
	}
	return s + uint32(acc)
}

// Finish turns a running sum into the checksum value.
func Finish(s uint32) uint32 { return -s }

// Sum returns the WalB checksum of b with the given salt.
func Sum(b []byte, salt uint32) uint32 { return Finish(Add(salt, b)) }

// Valid reports whether b, which holds its own checksum computed with salt,
// is intact.
func Valid(b []byte, salt uint32) bool { return Sum(b, salt) == 0 }

// Store computes the checksum of b with the 4-byte field at off zeroed and
// writes it there, little-endian.
func Store(b []byte, off int, salt uint32) {
	binary.LittleEndian.PutUint32(b[off:], 0)
	binary.LittleEndian.PutUint32(b[off:], Sum(b, salt))
}
