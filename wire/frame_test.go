package wire

import (
	"bytes"
	"encoding/binary"
	"io"
	"testing"
	"testing/iotest"

	"github.com/pkg/errors"
	"github.com/stretchr/testify/require"
)

type testFrame struct {
	t FrameType
	p []byte
}

func sampleFrames() []testFrame {
	big := make([]byte, 200<<10)
	for i := range big {
		big[i] = byte(i * 7)
	}
	return []testFrame{
		{FrameString, []byte("hello")},
		{FrameStrings, appendStrings(nil, []string{"a", "", "bc"})},
		{FrameU64, binary.LittleEndian.AppendUint64(nil, 1<<63+5)},
		{FrameBool, []byte{1}},
		{FrameAck, nil},
		{FrameDummy, nil},
		{FrameReply, appendReply(nil, kindError, ErrWrongState, "vol x is Clear")},
		{FrameChunk, big},
		{FrameChunk, nil},
		{FrameEnd, nil},
		{FrameBytes, []byte{0, 1, 2, 3}},
	}
}

func encodeFrames(fs []testFrame) []byte {
	var b []byte
	for _, f := range fs {
		b = AppendFrame(b, f.t, f.p)
	}
	return b
}

// readAll reads frames until an error and returns copies of them.
func readAll(r io.Reader, max int) ([]testFrame, error) {
	fr := NewFrameReader(r, max)
	var out []testFrame
	for {
		t, p, err := fr.Next()
		if err != nil {
			return out, err
		}
		out = append(out, testFrame{t, append([]byte(nil), p...)})
	}
}

func TestFrameRoundTrip(t *testing.T) {
	fs := sampleFrames()
	raw := encodeFrames(fs)
	readers := map[string]func(io.Reader) io.Reader{
		"plain":   func(r io.Reader) io.Reader { return r },
		"onebyte": iotest.OneByteReader,
		"half":    iotest.HalfReader,
		"dataerr": iotest.DataErrReader,
	}
	for name, wrap := range readers {
		t.Run(name, func(t *testing.T) {
			got, err := readAll(wrap(bytes.NewReader(raw)), DefaultMaxFrame)
			require.ErrorIs(t, err, io.EOF)
			require.Len(t, got, len(fs))
			for i := range fs {
				require.Equal(t, fs[i].t, got[i].t, "frame %d", i)
				require.Equal(t, len(fs[i].p), len(got[i].p), "frame %d", i)
				require.True(t, bytes.Equal(fs[i].p, got[i].p), "frame %d", i)
			}
		})
	}
}

func TestFrameReaderOffset(t *testing.T) {
	raw := encodeFrames(sampleFrames())
	fr := NewFrameReader(bytes.NewReader(raw), DefaultMaxFrame)
	for {
		if _, _, err := fr.Next(); err != nil {
			break
		}
	}
	require.Equal(t, int64(len(raw)), fr.Offset())
}

func TestFrameErrors(t *testing.T) {
	good := AppendFrame(nil, FrameString, []byte("payload"))
	flip := func(i int) []byte {
		b := bytes.Clone(good)
		b[i] ^= 0x40
		return b
	}
	hdr := func(t byte, n uint32) []byte {
		return binary.LittleEndian.AppendUint32([]byte{t}, n)
	}
	tests := []struct {
		name string
		in   []byte
		max  int
		want error
	}{
		{"unknown type", AppendFrame(nil, FrameType(0x7f), nil), DefaultMaxFrame, ErrBadFrame},
		{"type zero", AppendFrame(nil, FrameType(0), nil), DefaultMaxFrame, ErrBadFrame},
		{"oversized", hdr(byte(FrameChunk), DefaultMaxFrame+1), DefaultMaxFrame, ErrFrameTooLarge},
		{"oversized 4 GiB", hdr(byte(FrameChunk), 0xffffffff), DefaultMaxFrame, ErrFrameTooLarge},
		{"over small max", AppendFrame(nil, FrameChunk, make([]byte, 100)), 99, ErrFrameTooLarge},
		{"u64 short", AppendFrame(nil, FrameU64, make([]byte, 7)), DefaultMaxFrame, ErrBadFrame},
		{"bool long", AppendFrame(nil, FrameBool, []byte{1, 0}), DefaultMaxFrame, ErrBadFrame},
		{"ack with payload", AppendFrame(nil, FrameAck, []byte{1}), DefaultMaxFrame, ErrBadFrame},
		{"crc flipped", flip(len(good) - 1), DefaultMaxFrame, ErrChecksum},
		{"payload flipped", flip(HeaderSize + 2), DefaultMaxFrame, ErrChecksum},
		{"type flipped to other known type", func() []byte {
			b := bytes.Clone(good)
			b[0] = byte(FrameBytes)
			return b
		}(), DefaultMaxFrame, ErrChecksum},
		{"length grown", func() []byte {
			b := bytes.Clone(good)
			b[1]++
			return append(b, 0, 0, 0, 0, 0)
		}(), DefaultMaxFrame, ErrChecksum},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fr := NewFrameReader(bytes.NewReader(tc.in), tc.max)
			_, _, err := fr.Next()
			require.ErrorIs(t, err, tc.want)
			// Sticky.
			_, _, err2 := fr.Next()
			require.Equal(t, err, err2)
			require.Equal(t, int64(0), fr.Offset())
		})
	}
}

func TestFrameTruncatedEverywhere(t *testing.T) {
	raw := AppendFrame(nil, FrameString, []byte("0123456789"))
	for cut := 1; cut < len(raw); cut++ {
		_, err := readAll(bytes.NewReader(raw[:cut]), DefaultMaxFrame)
		require.ErrorIs(t, err, ErrTruncated, "cut at %d", cut)
	}
	_, err := readAll(bytes.NewReader(nil), DefaultMaxFrame)
	require.Equal(t, io.EOF, err)
}

// failAfter serves its data and then fails the test if read again: the
// frame reader must not read a payload whose header is already refused.
type failAfter struct {
	t    *testing.T
	data []byte
}

func (f *failAfter) Read(p []byte) (int, error) {
	if len(f.data) == 0 {
		f.t.Fatal("reader read past the refused header")
	}
	n := copy(p, f.data)
	f.data = f.data[n:]
	return n, nil
}

func TestOversizedHeaderReadsNoPayload(t *testing.T) {
	hdr := binary.LittleEndian.AppendUint32([]byte{byte(FrameChunk)}, 1<<30)
	fr := NewFrameReader(iotest.OneByteReader(&failAfter{t: t, data: hdr}), DefaultMaxFrame)
	_, _, err := fr.Next()
	require.ErrorIs(t, err, ErrFrameTooLarge)
	require.Contains(t, err.Error(), "1073741824")
}

func TestPayloadBufferGrowsWithData(t *testing.T) {
	// A header announcing 16 MiB followed by 10 bytes must not allocate
	// 16 MiB.
	in := binary.LittleEndian.AppendUint32([]byte{byte(FrameChunk)}, DefaultMaxFrame)
	in = append(in, make([]byte, 10)...)
	fr := NewFrameReader(bytes.NewReader(in), DefaultMaxFrame)
	_, _, err := fr.Next()
	require.ErrorIs(t, err, ErrTruncated)
	require.LessOrEqual(t, cap(fr.buf), growStep)
}

func TestPayloadBufferReused(t *testing.T) {
	raw := encodeFrames([]testFrame{{FrameChunk, make([]byte, 3<<20)}, {FrameChunk, make([]byte, 1<<20)}, {FrameChunk, make([]byte, 3<<20)}})
	fr := NewFrameReader(bytes.NewReader(raw), DefaultMaxFrame)
	_, p1, err := fr.Next()
	require.NoError(t, err)
	require.Len(t, p1, 3<<20)
	c := cap(fr.buf)
	for range 2 {
		_, _, err = fr.Next()
		require.NoError(t, err)
		require.Equal(t, c, cap(fr.buf))
	}
}

func TestStringsDecoding(t *testing.T) {
	for _, v := range [][]string{{}, {""}, {"a"}, {"x", "", "yz", string(make([]byte, 1000))}} {
		d := payloadDecoder{p: appendStrings(nil, v), ctx: "t"}
		got := d.strings("s")
		require.NoError(t, d.end())
		require.Equal(t, v, got)
	}
	bad := [][]byte{
		{},
		{1, 0, 0},
		{1, 0, 0, 0},                   // count 1, no length
		{1, 0, 0, 0, 5, 0, 0, 0, 'a'},  // length overruns
		{0xff, 0xff, 0xff, 0xff, 0, 0}, // huge count
		{0, 0, 0, 0, 9},                // trailing byte
		{1, 0, 0, 0, 0xff, 0xff, 0xff, 0xff},
	}
	for _, b := range bad {
		d := payloadDecoder{p: b, ctx: "t"}
		d.strings("s")
		require.ErrorIs(t, d.end(), ErrBadFrame, "% x", b)
	}
}

func TestReplyEncoding(t *testing.T) {
	for _, k := range []byte{kindOK, kindAccept} {
		d := payloadDecoder{p: appendReply(nil, k, "", ""), ctx: "t"}
		kind, re := decodeReply(&d)
		require.NoError(t, d.end())
		require.Nil(t, re)
		require.Equal(t, k, kind)
	}
	d := payloadDecoder{p: appendReply(nil, kindError, ErrTooOldDiff, "old"), ctx: "t"}
	_, re := decodeReply(&d)
	require.NoError(t, d.end())
	require.Equal(t, &RemoteError{Code: ErrTooOldDiff, Msg: "old"}, re)

	// An empty code decodes as ErrFailed; a long message is cut on a rune
	// boundary.
	long := string(bytes.Repeat([]byte("é"), maxMsgLen))
	p := appendReply(nil, kindError, "", long)
	d = payloadDecoder{p: p, ctx: "t"}
	_, re = decodeReply(&d)
	require.Equal(t, ErrFailed, re.Code)
	require.LessOrEqual(t, len(re.Msg), maxMsgLen)
	require.Equal(t, 0, len(re.Msg)%2)

	for _, b := range [][]byte{{}, {3}, {2}, {2, 5, 'a'}} {
		d := payloadDecoder{p: b, ctx: "t"}
		decodeReply(&d)
		require.ErrorIs(t, d.end(), ErrBadFrame, "% x", b)
	}
	// ok with trailing bytes is refused inside an exchange.
	d = payloadDecoder{p: []byte{0, 1}, ctx: "t"}
	decodeReply(&d)
	require.ErrorIs(t, d.end(), ErrBadFrame)
}

// TestDocExample pins the Hello example of doc.go.
func TestDocExample(t *testing.T) {
	want := []byte{
		0x57, 0x41, 0x4C, 0x42, 0x47, 0x4F, 0x01, 0x00,
		0x01, 0x21, 0x00, 0x00, 0x00,
		0x00, 0x00, 0x00, 0x01, 0x03, 0x00, 0x63, 0x74, 0x6C, 0x03, 0x00, 0x67, 0x65, 0x74,
		0x02, 0x00, 0x00, 0x00, 0x05, 0x00, 0x00, 0x00, 0x73, 0x74, 0x61, 0x74, 0x65,
		0x02, 0x00, 0x00, 0x00, 0x76, 0x30,
		0x67, 0x6E, 0x8B, 0x18,
	}
	got := AppendFrame(appendPreamble(nil, 1), FrameHello, helloPayload(16<<20, "ctl", "get", "state", "v0"))
	require.Equal(t, want, got)
	h, err := decodeHello(got[PreambleSize+HeaderSize : len(got)-TrailerSize])
	require.NoError(t, err)
	require.Equal(t, helloMsg{maxFrame: 16 << 20, clientID: "ctl", command: "get", args: []string{"state", "v0"}}, h)
}

func TestHelloWelcomeDecoding(t *testing.T) {
	// Later versions may append fields: ignored.
	p := append(helloPayload(MinMaxFrame, "a", "b", "c"), 1, 2, 3)
	h, err := decodeHello(p)
	require.NoError(t, err)
	require.Equal(t, []string{"c"}, h.args)
	_, err = decodeHello(helloPayload(MinMaxFrame, "a", ""))
	require.ErrorIs(t, err, ErrBadFrame)
	for cut := range len(helloPayload(MinMaxFrame, "a", "b", "c")) {
		_, err := decodeHello(helloPayload(MinMaxFrame, "a", "b", "c")[:cut])
		require.ErrorIs(t, err, ErrBadFrame, "cut %d", cut)
	}

	w := binary.LittleEndian.AppendUint16(nil, 1)
	w = binary.LittleEndian.AppendUint32(w, MinMaxFrame)
	w = appendString16(w, "srv")
	ok := appendReply(bytes.Clone(w), kindOK, "", "")
	m, err := decodeWelcome(append(ok, 9, 9))
	require.NoError(t, err)
	require.Nil(t, m.status)
	require.Equal(t, "srv", m.serverID)
	m, err = decodeWelcome(appendReply(bytes.Clone(w), kindError, ErrUnknownCommand, "no such command"))
	require.NoError(t, err)
	require.ErrorIs(t, m.status, ErrUnknownCommand)
	_, err = decodeWelcome(appendReply(bytes.Clone(w), kindAccept, "", ""))
	require.ErrorIs(t, err, ErrBadFrame)
}

func TestCodeOf(t *testing.T) {
	type coded struct{ error }
	tests := []struct {
		err  error
		want Code
	}{
		{nil, ""},
		{errors.New("x"), ErrFailed},
		{ErrWrongState, ErrWrongState},
		{errors.Wrapf(ErrNotFound, "vol %s", "v"), ErrNotFound},
		{errors.Wrap(&RemoteError{Code: ErrTooOldDiff, Msg: "m"}, "relay"), ErrTooOldDiff},
		{errors.Wrap(ErrChecksum, "x"), ErrProtocol},
		{errors.Wrap(ErrFrameTooLarge, "x"), ErrProtocol},
		{errors.Wrap(errContextCanceled(), "x"), ErrCanceled},
		{&timeoutError{op: "x"}, ErrDeadline},
		// The outermost code wins.
		{errors.Wrap(ErrWrongState, ErrNotFound.Error()), ErrWrongState},
		{errors.WithMessage(errors.Wrap(ErrStopping, "inner"), "outer"), ErrStopping},
	}
	for _, tc := range tests {
		require.Equal(t, tc.want, CodeOf(tc.err), "%v", tc.err)
	}
	re := &RemoteError{Code: ErrWrongState, Msg: "vol v: state Clear"}
	require.ErrorIs(t, re, ErrWrongState)
	require.ErrorIs(t, re, ErrRemote)
	require.NotErrorIs(t, re, ErrNotFound)
	require.Equal(t, "wire: remote: vol v: state Clear", re.Error())
}
