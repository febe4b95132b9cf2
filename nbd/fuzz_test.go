package nbd

import (
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/pkg/errors"
)

// fuzzHandshake is what a well-behaved client sends to reach transmission
// on export "d": fixed newstyle with no zeroes, then NBD_OPT_GO.
func fuzzHandshake() []byte {
	b := binary.BigEndian.AppendUint32(nil, clientFlagFixedNewstyle|clientFlagNoZeroes)
	b = binary.BigEndian.AppendUint64(b, magicOpts)
	b = binary.BigEndian.AppendUint32(b, optGo)
	data := infoGoData("d", infoBlockSize)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

func fuzzRequest(flags, typ uint16, off uint64, length uint32, payload []byte) []byte {
	b := make([]byte, requestHeaderSize)
	encodeRequest(b, request{flags: flags, typ: typ, handle: off ^ 0x55, offset: off, length: length})
	return append(b, payload...)
}

func fuzzOption(opt uint32, data []byte) []byte {
	b := binary.BigEndian.AppendUint64(nil, magicOpts)
	b = binary.BigEndian.AppendUint32(b, opt)
	b = binary.BigEndian.AppendUint32(b, uint32(len(data)))
	return append(b, data...)
}

// FuzzServerConn feeds arbitrary bytes to a server connection, either from
// the first byte of the handshake or after a valid handshake, and checks the
// server neither panics nor hangs: it must finish the connection once the
// client side closes.
func FuzzServerConn(f *testing.F) {
	flags := binary.BigEndian.AppendUint32(nil, clientFlagFixedNewstyle)
	f.Add(false, []byte{})
	f.Add(false, fuzzHandshake())
	f.Add(false, append(append([]byte{}, flags...), fuzzOption(optList, nil)...))
	f.Add(false, append(append([]byte{}, flags...), fuzzOption(optInfo, infoGoData("d", infoName, infoDescription))...))
	f.Add(false, append(append([]byte{}, flags...), fuzzOption(optExportName, []byte("ro"))...))
	f.Add(false, append(append([]byte{}, flags...), fuzzOption(optStartTLS, nil)...))
	f.Add(false, append(append([]byte{}, flags...), fuzzOption(optAbort, nil)...))
	f.Add(false, append(append([]byte{}, flags...), fuzzOption(optGo, []byte{0xff, 0xff, 0xff, 0xff, 0, 0})...))
	var tx []byte
	tx = append(tx, fuzzRequest(0, cmdWrite, 4096, 8, []byte("abcdefgh"))...)
	tx = append(tx, fuzzRequest(0, cmdRead, 4096, 8, nil)...)
	tx = append(tx, fuzzRequest(cmdFlagFUA, cmdWrite, 0, 4, []byte("fua!"))...)
	tx = append(tx, fuzzRequest(0, cmdFlush, 0, 0, nil)...)
	tx = append(tx, fuzzRequest(0, cmdTrim, 0, 8192, nil)...)
	tx = append(tx, fuzzRequest(cmdFlagNoHole, cmdWriteZeroes, 100, 300, nil)...)
	f.Add(true, tx)
	f.Add(true, append(append([]byte{}, tx...), fuzzRequest(0, cmdDisc, 0, 0, nil)...))
	f.Add(true, fuzzRequest(0, cmdRead, 1<<40, 1<<20, nil))
	f.Add(true, fuzzRequest(0, cmdWrite, 0, 1<<26, nil))
	f.Add(true, fuzzRequest(0, 77, 0, 0, nil))
	f.Add(true, []byte("GET / HTTP/1.1\r\n\r\n"))

	logger := slog.New(slog.DiscardHandler)
	f.Fuzz(func(t *testing.T, afterHandshake bool, data []byte) {
		srv := NewServer(Options{Logger: logger, MaxRequestSize: 64 << 10, HandshakeTimeout: 10 * time.Second})
		if err := srv.AddExport("d", NewMemoryBackend(256<<10), false, "fuzz"); err != nil {
			t.Fatal(err)
		}
		if err := srv.AddExport("ro", NewMemoryBackend(4096), true, ""); err != nil {
			t.Fatal(err)
		}
		client, server := net.Pipe()
		defer client.Close()
		// Deadlines turn a server that stops reading into a failure.
		_ = client.SetDeadline(time.Now().Add(10 * time.Second))
		done := make(chan struct{})
		go func() {
			defer close(done)
			_ = srv.ServeConn(context.Background(), server)
		}()
		drained := make(chan struct{})
		go func() {
			defer close(drained)
			_, _ = io.Copy(io.Discard, client)
		}()
		input := data
		if afterHandshake {
			input = append(fuzzHandshake(), data...)
		}
		if _, err := client.Write(input); err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatal("server stopped reading input without closing the connection")
			}
		}
		_ = client.Close()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("server did not finish the connection after the client closed")
		}
		<-drained
	})
}
