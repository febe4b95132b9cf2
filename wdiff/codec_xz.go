package wdiff

import (
	"bytes"
	"encoding/binary"
	"hash/crc32"
	"sync"

	"github.com/pkg/errors"
	"github.com/ulikunitz/xz"
	"github.com/ulikunitz/xz/lzma"
)

// The lzma codec is a complete .xz stream made by liblzma's easy encoder.
// Decoding goes through ulikunitz/xz, but first walks the container here,
// for two reasons:
//
//   - memory: the decoder allocates whatever dictionary a block header asks
//     for (up to 4 GiB). walb-tools decodes with a 16 MiB memory limit, so a
//     dictionary that large is refused here before anything is allocated;
//   - speed: liblzma writes an 8 MiB dictionary size even for a 4 KiB
//     record, and allocating (and zeroing) 8 MiB per record would dominate.
//     A dictionary at least as large as the whole output is equivalent, so
//     the walk lowers the size in a private copy of the block headers.
//
// The walk also checks that the LZMA2 chunk sizes add up to exactly the
// record size, which bounds the decoding work.

const (
	xzHeaderLen = 12
	xzFooterLen = 12
	// xzMaxDict mirrors the reference decoder's 16 MiB memory limit, which
	// the dictionary plus a few KiB of state must fit in.
	xzMaxDict = 16<<20 - 1
	// xzMaxWriteDict keeps dictionaries we write decodable under that limit.
	xzMaxWriteDict = 8 << 20
	lzma2FilterID  = 0x21
)

var xzMagic = []byte{0xfd, '7', 'z', 'X', 'Z', 0}

// xz presets' dictionary sizes (liblzma), indexed by preset 0..9.
var xzPresetDict = [10]int{256 << 10, 1 << 20, 2 << 20, 4 << 20, 4 << 20, 8 << 20, 8 << 20, 16 << 20, 32 << 20, 64 << 20}

// lzma2DictSize decodes an LZMA2 dictionary-size property byte.
func lzma2DictSize(p byte) uint64 {
	if p >= 40 {
		return 0xffffffff
	}
	return uint64(2|p&1) << (p/2 + 11)
}

// lzma2DictProp returns the smallest property byte whose size is >= n.
func lzma2DictProp(n uint64) byte {
	for p := byte(0); p < 40; p++ {
		if lzma2DictSize(p) >= n {
			return p
		}
	}
	return 40
}

func xzCompress(dst, src []byte, level int) ([]byte, error) {
	if level == 0 {
		level = 6
	}
	dict := max(len(src), lzma.MinDictCap)
	dict = min(dict, xzPresetDict[level], xzMaxWriteDict)
	cfg := xz.WriterConfig{
		DictCap:  int(lzma2DictSize(lzma2DictProp(uint64(dict)))),
		CheckSum: xz.CRC64,
		// ulikunitz/xz's BinaryTree matcher writes streams its own decoder
		// rejects ("distance out of range"), so every level uses HashTable4;
		// the level only sets the dictionary size.
		Matcher: lzma.HashTable4,
	}
	out := appendWriter{b: dst}
	w, err := cfg.NewWriter(&out)
	if err != nil {
		return dst, err
	}
	if _, err := w.Write(src); err != nil {
		return dst, err
	}
	if err := w.Close(); err != nil {
		return dst, err
	}
	return out.b, nil
}

var xzBufs = sync.Pool{New: func() any { return new([]byte) }}

// xzDecompress decodes an lzma record into size bytes held in dst's array
// when its capacity suffices.
func xzDecompress(dst, src []byte, size int) ([]byte, error) {
	bp := xzBufs.Get().(*[]byte)
	defer xzBufs.Put(bp)
	prepared, err := xzPrepare((*bp)[:0], src, size)
	*bp = prepared[:0]
	if err == nil {
		if cap(dst) < size {
			dst = make([]byte, size)
		}
		var r *xz.Reader
		if r, err = (xz.ReaderConfig{DictCap: lzma.MinDictCap, SingleStream: true}).NewReader(bytes.NewReader(prepared)); err == nil {
			err = readExactlyToEnd(r, dst[:size])
		}
	}
	if err != nil {
		return nil, errors.Wrapf(ErrCorrupt, "%s data (%d bytes): %v", CodecLZMA, len(src), err)
	}
	return dst[:size], nil
}

// xzCheckLen is the length of the check field for each check type.
func xzCheckLen(t byte) (int, bool) {
	switch t {
	case 0x00:
		return 0, true
	case 0x01:
		return 4, true
	case 0x04:
		return 8, true
	case 0x0a:
		return 32, true
	}
	return 0, false // reserved types, or ones the decoder does not implement
}

// xzVarint reads an xz multibyte integer.
func xzVarint(b []byte) (uint64, int, bool) {
	var v uint64
	for i := 0; i < len(b) && i < 9; i++ {
		v |= uint64(b[i]&0x7f) << (7 * i)
		if b[i]&0x80 == 0 {
			if i > 0 && b[i] == 0 {
				return 0, 0, false // not the shortest encoding
			}
			return v, i + 1, true
		}
	}
	return 0, 0, false
}

// xzPrepare copies src into buf, validates the stream's block structure as
// described above, and lowers each block's dictionary size to what size
// bytes of output need.
func xzPrepare(buf, src []byte, size int) ([]byte, error) {
	if len(src) < xzHeaderLen+xzFooterLen {
		return buf, errors.New("xz stream too short")
	}
	if !bytes.Equal(src[:6], xzMagic) {
		return buf, errors.New("xz: bad magic")
	}
	if src[6] != 0 || crc32.ChecksumIEEE(src[6:8]) != binary.LittleEndian.Uint32(src[8:12]) {
		return buf, errors.New("xz: bad stream flags")
	}
	checkLen, ok := xzCheckLen(src[7])
	if !ok {
		return buf, errors.Errorf("xz: unsupported check type %#x", src[7])
	}
	out := append(buf, src...)
	wantProp := lzma2DictProp(uint64(max(size, lzma.MinDictCap)))
	var total uint64
	pos := xzHeaderLen
	for {
		if pos >= len(out) {
			return out, errors.New("xz: stream ends inside the blocks")
		}
		if out[pos] == 0 { // index indicator: the decoder checks the rest
			break
		}
		hlen := (int(out[pos]) + 1) * 4
		if pos+hlen > len(out) {
			return out, errors.New("xz: block header runs past the end")
		}
		hdr := out[pos : pos+hlen]
		if crc32.ChecksumIEEE(hdr[:hlen-4]) != binary.LittleEndian.Uint32(hdr[hlen-4:]) {
			return out, errors.New("xz: block header checksum mismatch")
		}
		flags := hdr[1]
		if flags&0x3c != 0 || flags&0x03 != 0 {
			return out, errors.New("xz: block must have exactly one filter and no reserved flags")
		}
		p := 2
		for _, bit := range []byte{0x40, 0x80} { // compressed, uncompressed size
			if flags&bit != 0 {
				_, n, ok := xzVarint(hdr[p : hlen-4])
				if !ok {
					return out, errors.New("xz: bad size field in block header")
				}
				p += n
			}
		}
		id, n, ok := xzVarint(hdr[p : hlen-4])
		if !ok || id != lzma2FilterID {
			return out, errors.New("xz: only the LZMA2 filter is supported")
		}
		p += n
		psize, n, ok := xzVarint(hdr[p : hlen-4])
		if !ok || psize != 1 || p+n >= hlen-4 {
			return out, errors.New("xz: bad LZMA2 filter properties")
		}
		p += n
		dict := lzma2DictSize(hdr[p])
		if hdr[p] > 40 || dict > xzMaxDict {
			return out, errors.Errorf("xz: dictionary of %d bytes exceeds the 16 MiB memory limit", dict)
		}
		if lzma2DictSize(wantProp) < dict {
			hdr[p] = wantProp
			binary.LittleEndian.PutUint32(hdr[hlen-4:], crc32.ChecksumIEEE(hdr[:hlen-4]))
		}
		// Walk the LZMA2 chunk headers to find the end of the block.
		q := pos + hlen
		for {
			if q >= len(out) {
				return out, errors.New("xz: LZMA2 data runs past the end")
			}
			c := out[q]
			q++
			var unpacked, packed int
			switch {
			case c == 0:
			case c == 1 || c == 2:
				if q+2 > len(out) {
					return out, errors.New("xz: LZMA2 chunk header runs past the end")
				}
				unpacked = int(binary.BigEndian.Uint16(out[q:])) + 1
				packed = unpacked
				q += 2
			case c >= 0x80:
				if q+4 > len(out) {
					return out, errors.New("xz: LZMA2 chunk header runs past the end")
				}
				unpacked = (int(c&0x1f)<<16 | int(binary.BigEndian.Uint16(out[q:]))) + 1
				packed = int(binary.BigEndian.Uint16(out[q+2:])) + 1
				q += 4
				if c >= 0xc0 {
					q++ // properties byte
				}
			default:
				return out, errors.Errorf("xz: invalid LZMA2 control byte %#x", c)
			}
			if c == 0 {
				break
			}
			total += uint64(unpacked)
			if total > uint64(size) {
				return out, errors.Errorf("xz: stream holds more than %d bytes", size)
			}
			q += packed
		}
		compressed := q - (pos + hlen)
		q += (4-compressed%4)%4 + checkLen
		if q > len(out) {
			return out, errors.New("xz: block runs past the end")
		}
		pos = q
	}
	if total != uint64(size) {
		return out, errors.Errorf("xz: stream holds %d bytes, want %d", total, size)
	}
	return out, nil
}
