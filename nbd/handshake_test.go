package nbd

import (
	"bytes"
	"encoding/binary"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func defaultExports() []testExport {
	return []testExport{
		{name: "disk", backend: NewMemoryBackend(1 << 20), desc: "scratch disk"},
		{name: "ro", backend: NewMemoryBackend(64 << 10), readOnly: true},
		{name: "", backend: NewMemoryBackend(4096), desc: "the unnamed export"},
	}
}

func TestGreetingAdvertisesFixedNewstyleAndNoZeroes(t *testing.T) {
	_, addr := startServer(t, Options{}, defaultExports()...)
	r := dialRaw(t, addr)
	require.Equal(t, handshakeFlagFixedNewstyle|handshakeFlagNoZeroes, r.greeting())
}

func TestUnknownClientFlagsCloseConnection(t *testing.T) {
	_, addr := startServer(t, Options{}, defaultExports()...)
	for _, flags := range []uint32{1 << 2, 1 << 31, clientFlagFixedNewstyle | 1<<5} {
		r := dialRaw(t, addr)
		r.greeting()
		r.clientFlags(flags)
		r.expectClosed()
	}
}

// TestExportName covers NBD_OPT_EXPORT_NAME with every client flag
// combination: the 124 zero bytes are sent unless NBD_FLAG_C_NO_ZEROES.
func TestExportName(t *testing.T) {
	mem := NewMemoryBackend(1 << 20)
	copy(mem.data[4096:], "hello")
	_, addr := startServer(t, Options{}, testExport{name: "disk", backend: mem})
	for _, tc := range []struct {
		name     string
		flags    uint32
		zeroPads bool
	}{
		{"oldstyle-newstyle client", 0, true},
		{"fixed", clientFlagFixedNewstyle, true},
		{"no zeroes", clientFlagNoZeroes, false},
		{"fixed no zeroes", clientFlagFixedNewstyle | clientFlagNoZeroes, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := dialRaw(t, addr)
			r.greeting()
			r.clientFlags(tc.flags)
			r.option(optExportName, []byte("disk"))
			b := r.read(10)
			require.Equal(t, uint64(1<<20), binary.BigEndian.Uint64(b[0:8]))
			flags := TransmissionFlags(binary.BigEndian.Uint16(b[8:10]))
			require.Equal(t, FlagHasFlags|FlagSendFlush|FlagSendFUA|FlagSendTrim|FlagSendWriteZeroes|FlagCanMultiConn, flags)
			if tc.zeroPads {
				require.Equal(t, make([]byte, 124), r.read(124))
			}
			// The next bytes must be the reply to a request, proving the
			// padding was exactly as long as announced.
			r.request(0, cmdRead, 7, 4096, 5, nil)
			r.expectReply(7, 0)
			require.Equal(t, []byte("hello"), r.read(5))
		})
	}
}

func TestExportNameUnknownClosesConnection(t *testing.T) {
	_, addr := startServer(t, Options{}, defaultExports()...)
	r := dialRaw(t, addr)
	r.start()
	r.option(optExportName, []byte("nope"))
	r.expectClosed()
}

func TestGoReturnsRequestedInformation(t *testing.T) {
	_, addr := startServer(t, Options{MaxRequestSize: 1 << 20}, defaultExports()...)
	for _, tc := range []struct {
		name      string
		export    string
		infos     []uint16
		wantName  string // "" means NBD_INFO_NAME not expected
		wantDesc  string
		wantBlock bool
	}{
		{name: "no requests", export: "disk"},
		{name: "all", export: "disk", infos: []uint16{infoName, infoDescription, infoBlockSize},
			wantName: "disk", wantDesc: "scratch disk", wantBlock: true},
		{name: "unknown info ignored", export: "disk", infos: []uint16{0x7777, infoBlockSize}, wantBlock: true},
		{name: "no description to send", export: "ro", infos: []uint16{infoDescription, infoName}, wantName: "ro"},
		{name: "default export", export: "", infos: []uint16{infoDescription}, wantDesc: "the unnamed export"},
	} {
		for _, opt := range []uint32{optInfo, optGo} {
			t.Run(tc.name+"/"+optionName(opt), func(t *testing.T) {
				r := dialRaw(t, addr)
				r.start()
				r.option(opt, infoGoData(tc.export, tc.infos...))
				infos, final := r.infoReplies(opt)
				require.Equal(t, repAck, final.typ)
				require.Len(t, infos[infoExport], 10)
				if tc.wantName != "" {
					require.Equal(t, tc.wantName, string(infos[infoName]))
				} else {
					require.NotContains(t, infos, infoName)
				}
				if tc.wantDesc != "" {
					require.Equal(t, tc.wantDesc, string(infos[infoDescription]))
				} else {
					require.NotContains(t, infos, infoDescription)
				}
				if tc.wantBlock {
					bs := infos[infoBlockSize]
					require.Len(t, bs, 12)
					require.Equal(t, uint32(1), binary.BigEndian.Uint32(bs[0:4]))
					require.Equal(t, uint32(4096), binary.BigEndian.Uint32(bs[4:8]))
					require.Equal(t, uint32(1<<20), binary.BigEndian.Uint32(bs[8:12]))
				} else {
					require.NotContains(t, infos, infoBlockSize)
				}
				if opt == optInfo {
					// Still negotiating: another option is answered.
					r.option(optList, nil)
					for r.optReply().typ != repAck {
					}
					return
				}
				// In transmission: a flush is answered with a simple reply.
				r.request(0, cmdFlush, 1, 0, 0, nil)
				r.expectReply(1, 0)
			})
		}
	}
}

func TestInfoThenGoAgree(t *testing.T) {
	_, addr := startServer(t, Options{}, defaultExports()...)
	r := dialRaw(t, addr)
	r.start()
	data := infoGoData("ro", infoBlockSize, infoName)
	r.option(optInfo, data)
	info, final := r.infoReplies(optInfo)
	require.Equal(t, repAck, final.typ)
	r.option(optGo, data)
	gone, final := r.infoReplies(optGo)
	require.Equal(t, repAck, final.typ)
	require.Equal(t, info, gone)
	flags := TransmissionFlags(binary.BigEndian.Uint16(info[infoExport][8:10]))
	require.Equal(t, FlagHasFlags|FlagReadOnly|FlagSendFlush|FlagCanMultiConn, flags)
}

func TestGoUnknownExportKeepsNegotiating(t *testing.T) {
	_, addr := startServer(t, Options{}, defaultExports()...)
	r := dialRaw(t, addr)
	r.start()
	for _, opt := range []uint32{optInfo, optGo} {
		r.option(opt, infoGoData("missing", infoName))
		rep := r.expectOptErr(opt, repErrUnknown)
		require.Contains(t, string(rep.data), "missing")
	}
	size, _ := r.goExport("disk")
	require.Equal(t, uint64(1<<20), size)
}

func TestNoDefaultExport(t *testing.T) {
	_, addr := startServer(t, Options{}, testExport{name: "disk", backend: NewMemoryBackend(4096)})
	r := dialRaw(t, addr)
	r.start()
	r.option(optGo, infoGoData(""))
	r.expectOptErr(optGo, repErrUnknown)
}

func TestConfiguredDefaultExport(t *testing.T) {
	_, addr := startServer(t, Options{DefaultExport: "disk"}, testExport{name: "disk", backend: NewMemoryBackend(8192)})
	r := dialRaw(t, addr)
	r.start()
	r.option(optGo, infoGoData("", infoName))
	infos, final := r.infoReplies(optGo)
	require.Equal(t, repAck, final.typ)
	require.Equal(t, "disk", string(infos[infoName]), "canonical name of the default export")
	require.Equal(t, uint64(8192), binary.BigEndian.Uint64(infos[infoExport][0:8]))
}

func TestGoMalformedData(t *testing.T) {
	_, addr := startServer(t, Options{}, defaultExports()...)
	name := binary.BigEndian.AppendUint32(nil, 4)
	name = append(name, "disk"...)
	for _, tc := range []struct {
		name string
		data []byte
	}{
		{"empty", nil},
		{"too short", []byte{0, 0, 0, 0, 0}},
		{"name length past end", append(binary.BigEndian.AppendUint32(nil, 100), "disk\x00\x00"...)},
		{"name length huge", append(binary.BigEndian.AppendUint32(nil, 0xffffffff), "disk\x00\x00"...)},
		{"count larger than data", append(append([]byte{}, name...), 0, 2, 0, 1)},
		{"trailing bytes", append(append([]byte{}, name...), 0, 1, 0, 1, 0xff)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := dialRaw(t, addr)
			r.start()
			for _, opt := range []uint32{optInfo, optGo} {
				r.option(opt, tc.data)
				r.expectOptErr(opt, repErrInvalid)
			}
			r.goExport("disk")
		})
	}
}

func TestList(t *testing.T) {
	_, addr := startServer(t, Options{}, defaultExports()...)
	r := dialRaw(t, addr)
	r.start()
	r.option(optList, nil)
	type entry struct{ name, desc string }
	var got []entry
	for {
		rep := r.optReply()
		require.Equal(t, optList, rep.opt)
		if rep.typ == repAck {
			require.Empty(t, rep.data)
			break
		}
		require.Equal(t, repServer, rep.typ)
		n := binary.BigEndian.Uint32(rep.data)
		got = append(got, entry{string(rep.data[4 : 4+n]), string(rep.data[4+n:])})
	}
	require.Equal(t, []entry{{"", "the unnamed export"}, {"disk", "scratch disk"}, {"ro", ""}}, got)

	r.option(optList, []byte("x"))
	r.expectOptErr(optList, repErrInvalid)
}

func TestAbort(t *testing.T) {
	_, addr := startServer(t, Options{}, defaultExports()...)
	r := dialRaw(t, addr)
	r.start()
	r.option(optAbort, []byte("ignored data"))
	rep := r.optReply()
	require.Equal(t, optAbort, rep.opt)
	require.Equal(t, repAck, rep.typ)
	r.expectClosed()
}

func TestUnsupportedOptions(t *testing.T) {
	_, addr := startServer(t, Options{}, defaultExports()...)
	r := dialRaw(t, addr)
	r.start()
	for _, opt := range []uint32{0, optPeekExport, optStartTLS, optStructuredReply, optListMetaContext,
		optSetMetaContext, optExtendedHeaders, 12, 0xdeadbeef} {
		r.option(opt, []byte("some data"))
		rep := r.expectOptErr(opt, repErrUnsup)
		require.NotEmpty(t, rep.data, "error replies carry a message")
	}
	r.goExport("disk")
}

func TestOversizedOption(t *testing.T) {
	_, addr := startServer(t, Options{}, defaultExports()...)
	r := dialRaw(t, addr)
	r.start()
	big := bytes.Repeat([]byte{0xaa}, 3*maxOptionLength)
	for _, opt := range []uint32{optGo, optList, 0x1234} {
		r.option(opt, big)
		r.expectOptErr(opt, repErrTooBig)
	}
	r.option(optGo, infoGoData("disk", infoName))
	_, final := r.infoReplies(optGo)
	require.Equal(t, repAck, final.typ)

	// EXPORT_NAME cannot be answered with an error.
	r2 := dialRaw(t, addr)
	r2.start()
	r2.option(optExportName, big)
	r2.expectClosed()
}

func TestBadOptionMagic(t *testing.T) {
	_, addr := startServer(t, Options{}, defaultExports()...)
	r := dialRaw(t, addr)
	r.start()
	b := binary.BigEndian.AppendUint64(nil, 0x1122334455667788)
	b = binary.BigEndian.AppendUint32(b, optList)
	b = binary.BigEndian.AppendUint32(b, 0)
	r.write(b)
	r.expectClosed()
}

func TestHandshakeTimeout(t *testing.T) {
	_, addr := startServer(t, Options{HandshakeTimeout: 50 * time.Millisecond}, defaultExports()...)
	r := dialRaw(t, addr)
	r.greeting()
	// The client never sends its flags; the server gives up on it.
	r.expectClosed()
}

func TestHandshakeDeadlineLiftedInTransmission(t *testing.T) {
	_, addr := startServer(t, Options{HandshakeTimeout: 200 * time.Millisecond}, defaultExports()...)
	c := dialClient(t, addr, ClientOptions{Export: "disk"})
	time.Sleep(400 * time.Millisecond)
	_, err := c.ReadAt(make([]byte, 512), 0)
	require.NoError(t, err, "an idle connection in transmission must stay open")
}
