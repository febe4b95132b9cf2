package wire

import (
	"bytes"
	"encoding/binary"
	"io"
	"testing"

	"github.com/pkg/errors"
)

// frameSeeds are well-formed and damaged streams for the fuzz targets.
func frameSeeds() [][]byte {
	good := encodeFrames(sampleFrames()[:7])
	bad := bytes.Clone(good)
	bad[len(bad)/2] ^= 0x10
	return [][]byte{
		nil,
		good,
		bad,
		AppendFrame(nil, FrameHello, helloPayload(DefaultMaxFrame, "ctl", "get", "state", "v0")),
		AppendFrame(nil, FrameReply, appendReply(nil, kindError, ErrTooNewDiff, "too new")),
		binary.LittleEndian.AppendUint32([]byte{byte(FrameChunk)}, 1<<30),
		{0x99, 0, 0, 0, 0, 0, 0, 0, 0},
	}
}

// FuzzFrameReader checks that the frame decoder never panics, never returns
// a payload over its limit, reports only its documented errors, and that
// every frame it accepts re-encodes to exactly the bytes it consumed.
func FuzzFrameReader(f *testing.F) {
	for _, s := range frameSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		const max = 1 << 16
		fr := NewFrameReader(bytes.NewReader(in), max)
		var re []byte
		for {
			typ, p, err := fr.Next()
			if err != nil {
				if err != io.EOF && !errors.Is(err, ErrTruncated) && !errors.Is(err, ErrBadFrame) &&
					!errors.Is(err, ErrFrameTooLarge) && !errors.Is(err, ErrChecksum) {
					t.Fatalf("undocumented error %v", err)
				}
				break
			}
			if len(p) > max {
				t.Fatalf("payload of %d bytes over the limit", len(p))
			}
			re = AppendFrame(re, typ, p)
			if typ == FrameReply {
				d := payloadDecoder{p: p, ctx: "fuzz"}
				decodeReply(&d)
				_ = d.end()
			}
			if typ == FrameStrings {
				d := payloadDecoder{p: p, ctx: "fuzz"}
				v := d.strings("s")
				if d.end() == nil && !bytes.Equal(appendStrings(nil, v), p) {
					t.Fatalf("strings do not re-encode")
				}
			}
		}
		if int64(len(re)) != fr.Offset() || !bytes.Equal(re, in[:len(re)]) {
			t.Fatalf("accepted frames do not re-encode to the consumed bytes")
		}
	})
}

// FuzzHandshakePayloads checks the Hello and Welcome decoders: no panic,
// and what decodes re-encodes to a prefix of the input.
func FuzzHandshakePayloads(f *testing.F) {
	f.Add(helloPayload(DefaultMaxFrame, "ctl", "get", "state", "v0"))
	f.Add(welcomePayload(1, DefaultMaxFrame, "srv"))
	f.Add([]byte{})
	f.Add([]byte{0, 0, 1, 0, 0xff, 0xff})
	f.Fuzz(func(t *testing.T, p []byte) {
		if h, err := decodeHello(p); err == nil {
			enc := helloPayload(h.maxFrame, h.clientID, h.command, h.args...)
			if !bytes.HasPrefix(p, enc) {
				t.Fatalf("hello does not re-encode")
			}
		} else if !errors.Is(err, ErrBadFrame) {
			t.Fatalf("undocumented error %v", err)
		}
		if w, err := decodeWelcome(p); err == nil && w.status == nil {
			enc := welcomePayload(w.version, w.maxFrame, w.serverID)
			if !bytes.HasPrefix(p, enc) {
				t.Fatalf("welcome does not re-encode")
			}
		} else if err != nil && !errors.Is(err, ErrBadFrame) {
			t.Fatalf("undocumented error %v", err)
		}
	})
}
