package devhost

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"testing/iotest"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/walb"
	"github.com/walb-go/walb/wlog"
)

// rawConn speaks the control protocol by hand.
type rawConn struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func dialRaw(t *testing.T, path string) *rawConn {
	t.Helper()
	c, err := net.Dial("unix", path)
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	require.NoError(t, c.SetDeadline(time.Now().Add(time.Minute)))
	return &rawConn{t: t, c: c, br: bufio.NewReader(c)}
}

func (r *rawConn) send(line string) {
	r.t.Helper()
	_, err := io.WriteString(r.c, line+"\n")
	require.NoError(r.t, err)
}

func (r *rawConn) recv() map[string]any {
	r.t.Helper()
	line, err := r.br.ReadBytes('\n')
	require.NoError(r.t, err)
	var m map[string]any
	require.NoError(r.t, json.Unmarshal(line, &m), "%s", line)
	require.EqualValues(r.t, ProtocolVersion, m["v"])
	return m
}

func (r *rawConn) expectCode(line, code string) map[string]any {
	r.t.Helper()
	r.send(line)
	m := r.recv()
	require.Equal(r.t, false, m["ok"], line)
	require.Equal(r.t, code, m["code"], "%s -> %v", line, m)
	require.NotEmpty(r.t, m["error"])
	return m
}

func TestControlProtocolErrors(t *testing.T) {
	d := startDaemon(t, t.TempDir())
	ctx := testCtx(t)
	ldev, ddev := deviceFiles(t, t.TempDir(), "vol0", 4<<20, 4<<20)
	_, err := d.client.CreateWdev(ctx, ldev, ddev, CreateOptions{})
	require.NoError(t, err)

	r := dialRaw(t, d.cfg.ControlSocket)
	tests := []struct{ line, code string }{
		{`not json`, codeBadRequest},
		{`{"v":1,"op":"get-oldest-lsid","name":"vol0"} {"v":1}`, codeBadRequest},
		{`{"v":1,"op":"dance"}`, codeBadRequest},
		{`{"v":1,"op":"get-oldest-lsid"}`, codeBadRequest},                              // missing name
		{`{"v":1,"op":"get-oldest-lsid","name":"vol0","lsid":3}`, codeBadRequest},       // field the op does not take
		{`{"v":1,"op":"get-oldest-lsid","name":"vol0","colour":"red"}`, codeBadRequest}, // unknown field
		{`{"v":1,"op":"set-oldest-lsid","name":"vol0"}`, codeBadRequest},                // missing lsid
		{`{"v":1,"op":"set-oldest-lsid","name":"vol0","lsid":-1}`, codeBadRequest},      // not a u64
		{`{"v":1,"op":"set-oldest-lsid","name":"vol0","lsid":18446744073709551616}`, codeBadRequest},
		{`{"v":2,"op":"list"}`, codeVersion},
		{`{"op":"list"}`, codeVersion},
		{`{"v":1,"op":"get-oldest-lsid","name":"nope"}`, codeNotFound},
		{`{"v":1,"op":"set-oldest-lsid","name":"vol0","lsid":7}`, codeInvalid},
		{`{"v":1,"op":"create-wdev","log_device":"` + ldev + `","data_device":"` + ddev + `"}`, codeExists},
		{`{"v":1,"op":"create-wdev","name":"x y","log_device":"/a","data_device":"/b"}`, codeInvalid},
		{`{"v":1,"op":"resize","name":"vol0","size_lb":8}`, codeInvalid},
		{`{"v":1,"op":"freeze","name":"vol0","timeout_ms":18446744073709551615}`, codeInvalid},
		{`{"v":1,"op":"cat-log","name":"vol0","begin":5,"end":1}`, codeInvalid},
		{`{"v":1,"op":"get-lsids"}`, codeBadRequest},                   // missing name
		{`{"v":1,"op":"info","name":"vol0","lsid":1}`, codeBadRequest}, // field the op does not take
		{`{"v":1,"op":"get-lsids","name":"nope"}`, codeNotFound},
		{`{"v":1,"op":"info","name":"nope"}`, codeNotFound},
	}
	for _, tc := range tests {
		r.expectCode(tc.line, tc.code)
	}

	// The connection survives errors and carries several requests.
	r.send(`{"v":1,"op":"get-oldest-lsid","name":"vol0"}`)
	m := r.recv()
	require.Equal(t, true, m["ok"])
	require.EqualValues(t, 0, m["value"])
	// get-lsids sends every indicator under its sysfs name, zeros
	// included; info sends the uuid as hex text.
	r.send(`{"v":1,"op":"get-lsids","name":"vol0"}`)
	m = r.recv()
	require.Equal(t, true, m["ok"])
	lsids := m["lsids"].(map[string]any)
	require.Len(t, lsids, 7)
	for _, k := range []string{"latest", "completed", "flush", "permanent", "written", "prev_written", "oldest"} {
		require.Contains(t, lsids, k)
	}
	r.send(`{"v":1,"op":"info","name":"vol0"}`)
	m = r.recv()
	info := m["info"].(map[string]any)
	require.Equal(t, "vol0", info["name"])
	require.Regexp(t, `^[0-9a-f]{32}$`, info["uuid"])
	require.EqualValues(t, 512, info["pbs"])
	require.Equal(t, false, info["frozen"])
	r.send(`{"v":1,"op":"freeze","name":"vol0"}`)
	require.Equal(t, true, r.recv()["ok"])
	r.expectCode(`{"v":1,"op":"reset-wal","name":"vol0"}`, codeState)
	r.expectCode(`{"v":1,"op":"delete-wdev","name":"vol0"}`, codeState)
	r.send(`{"v":1,"op":"is-frozen","name":"vol0"}`)
	require.Equal(t, true, r.recv()["bool"])
	r.send(`{"v":1,"op":"melt","name":"vol0"}`)
	require.Equal(t, true, r.recv()["ok"])
	r.send(`{"v":1,"op":"list"}`)
	m = r.recv()
	devs := m["devices"].([]any)
	require.Len(t, devs, 1)
	require.Equal(t, "vol0", devs[0].(map[string]any)["name"])

	// A line over the limit is refused and ends the connection.
	big := `{"v":1,"op":"list","name":"` + strings.Repeat("x", MaxRequestSize) + `"}`
	_, _ = io.WriteString(r.c, big+"\n") // the daemon may close before reading it all
	m = r.recv()
	require.Equal(t, codeTooLarge, m["code"])
	_, err = r.br.ReadByte()
	require.ErrorIs(t, err, io.EOF)
}

func TestControlSocketPermissionsAndStaleness(t *testing.T) {
	d := startDaemon(t, t.TempDir())
	fi, err := os.Lstat(d.cfg.ControlSocket)
	require.NoError(t, err)
	require.NotZero(t, fi.Mode()&os.ModeSocket)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	ents, err := os.ReadDir(filepath.Dir(d.cfg.ControlSocket))
	require.NoError(t, err)
	require.Len(t, ents, 1, "the temporary socket name was renamed away")

	// A live socket is not taken over.
	_, err = ListenControl(d.cfg.ControlSocket)
	require.ErrorIs(t, err, ErrBusy)
	// A stale one is.
	require.NoError(t, d.Shutdown(testCtx(t)))
	stale := filepath.Join(t.TempDir(), "stale.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	require.NoError(t, err)
	l.SetUnlinkOnClose(false)
	require.NoError(t, l.Close())
	l2, err := ListenControl(stale)
	require.NoError(t, err)
	require.NoError(t, l2.Close())
	// Anything else in the way is refused.
	notSock := filepath.Join(t.TempDir(), "file")
	require.NoError(t, os.WriteFile(notSock, nil, 0o600))
	_, err = ListenControl(notSock)
	require.ErrorIs(t, err, ErrBusy)

	// After shutdown the socket is gone and clients get a clear error.
	_, err = os.Stat(d.cfg.ControlSocket)
	require.True(t, os.IsNotExist(err))
	_, err = d.client.List(testCtx(t))
	require.ErrorIs(t, err, ErrFailed)
	require.Contains(t, err.Error(), "connect to walb-dev")
}

// The frame stream of cat-log and the line reader must cope with short
// reads, and reject broken input.
func TestFramesAndLines(t *testing.T) {
	data := randomBytes(3, maxFrame+12345) // two frames
	var stream bytes.Buffer
	fw := newFrameWriter(&stream)
	for off := 0; off < len(data); off += 7777 {
		_, err := fw.Write(data[off:min(off+7777, len(data))])
		require.NoError(t, err)
	}
	require.NoError(t, fw.Close())
	stream.WriteString(`{"v":1,"ok":true,"value":9}` + "\n")
	for name, wrap := range map[string]func(io.Reader) io.Reader{
		"plain": func(r io.Reader) io.Reader { return r }, "one-byte": iotest.OneByteReader,
		"half": iotest.HalfReader, "data-err": iotest.DataErrReader,
	} {
		t.Run(name, func(t *testing.T) {
			br := bufio.NewReaderSize(wrap(bytes.NewReader(stream.Bytes())), 16)
			var got bytes.Buffer
			require.NoError(t, copyFrames(&got, br))
			require.True(t, bytes.Equal(data, got.Bytes()))
			var resp Response
			require.NoError(t, readResponse(br, &resp))
			require.EqualValues(t, 9, *resp.Value)
		})
	}
	// Truncation anywhere is a protocol error.
	for _, n := range []int{0, 2, 4, 5000, stream.Len() - len(`{"v":1,"ok":true,"value":9}`+"\n") - 2} {
		err := copyFrames(io.Discard, bytes.NewReader(stream.Bytes()[:n]))
		require.ErrorIs(t, err, ErrProtocol, "cut at %d", n)
	}
	require.ErrorIs(t, copyFrames(io.Discard, bytes.NewReader([]byte{0x00, 0x20, 0x00, 0x01})), ErrProtocol, "frame over 1 MiB")

	br := bufio.NewReaderSize(iotest.OneByteReader(strings.NewReader("abc\ndef")), 16)
	line, err := readLine(br, 10)
	require.NoError(t, err)
	require.Equal(t, "abc\n", string(line))
	_, err = readLine(br, 10)
	require.ErrorIs(t, err, io.ErrUnexpectedEOF)
	_, err = readLine(bufio.NewReaderSize(strings.NewReader(strings.Repeat("x", 100)+"\n"), 16), 50)
	require.ErrorIs(t, err, ErrTooLarge)
	_, err = readLine(bufio.NewReader(strings.NewReader("")), 10)
	require.ErrorIs(t, err, io.EOF)
}

// Every operation of the table is dispatched, and the error codes map to
// the sentinels both ways.
func TestOpsTableAndCodes(t *testing.T) {
	require.Len(t, ops, 23)
	for code, s := range codeSentinels {
		require.Equal(t, code, codeOf(s), code)
		require.ErrorIs(t, decodeError(code, "x"), s)
	}
	require.ErrorIs(t, decodeError("from-the-future", "x"), ErrFailed)
}

// DeviceStatus travels with its uuid as hex text and is decoded as
// strictly as the rest of the protocol.
func TestDeviceStatusJSON(t *testing.T) {
	st := DeviceStatus{Name: "vol0", UUID: wlog.UUID{0xde, 0xad, 15: 0x01}, Salt: 0xdeadbeef, PBS: 4096,
		SizeLB: 1 << 40, LogCapacityPB: 12345, Overflow: true}
	b, err := json.Marshal(st)
	require.NoError(t, err)
	require.JSONEq(t, `{"name":"vol0","uuid":"dead0000000000000000000000000001","salt":3735928559,"pbs":4096,`+
		`"size_lb":1099511627776,"log_capacity_pb":12345,"overflow":true,"frozen":false}`, string(b))
	var back DeviceStatus
	require.NoError(t, json.Unmarshal(b, &back))
	require.Equal(t, st, back)

	for _, bad := range []string{
		`{"name":"vol0","uuid":"dead","salt":0,"pbs":512,"size_lb":0,"log_capacity_pb":0,"overflow":false,"frozen":false}`,
		`{"name":"vol0","salt":0,"pbs":512}`, // no uuid
		`{"name":"vol0","uuid":"dead0000000000000000000000000001","colour":"red"}`,
		`{"name":"vol0","uuid":[222,173,0,0,0,0,0,0,0,0,0,0,0,0,0,1]}`,
	} {
		require.Error(t, json.Unmarshal([]byte(bad), &back), bad)
	}
}

// The client refuses answers that lack what the operation promises, and
// reports an operation an older daemon does not know as ErrBadRequest.
func TestClientChecksNewAnswers(t *testing.T) {
	ctx := testCtx(t)
	sock := filepath.Join(t.TempDir(), "fake.sock")
	l, err := net.Listen("unix", sock)
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	answers := make(chan string, 1)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			br := bufio.NewReader(c)
			if _, err := br.ReadString('\n'); err == nil {
				_, _ = io.WriteString(c, <-answers+"\n")
			}
			c.Close()
		}
	}()
	c := NewClient(sock)
	tests := []struct {
		name, answer string
		call         func() error
		want         error
	}{
		{"lsids missing", `{"v":1,"ok":true}`, func() error { _, err := c.Lsids(ctx, "v"); return err }, ErrProtocol},
		{"lsids unknown key", `{"v":1,"ok":true,"lsids":{"latest":1,"submitted":1}}`, func() error { _, err := c.Lsids(ctx, "v"); return err }, ErrProtocol},
		{"info missing", `{"v":1,"ok":true}`, func() error { _, err := c.Info(ctx, "v"); return err }, ErrProtocol},
		{"info bad uuid", `{"v":1,"ok":true,"info":{"name":"v","uuid":"xyz"}}`, func() error { _, err := c.Info(ctx, "v"); return err }, ErrProtocol},
		{"old daemon", `{"v":1,"ok":false,"code":"bad-request","error":"unknown operation \"get-lsids\""}`,
			func() error { _, err := c.Lsids(ctx, "v"); return err }, ErrBadRequest},
	}
	for _, tc := range tests {
		answers <- tc.answer
		require.ErrorIs(t, tc.call(), tc.want, tc.name)
	}
	answers <- `{"v":1,"ok":true,"lsids":{"latest":9,"completed":8,"flush":7,"permanent":6,"written":5,"prev_written":4,"oldest":3}}`
	got, err := c.Lsids(ctx, "v")
	require.NoError(t, err)
	require.Equal(t, walb.Lsids{Latest: 9, Completed: 8, Flush: 7, Permanent: 6, Written: 5, PrevWritten: 4, Oldest: 3}, got)
}

func BenchmarkCatLogFrames(b *testing.B) {
	chunk := randomBytes(4, 256<<10)
	const total = 64 << 20
	b.SetBytes(total)
	for b.Loop() {
		pr, pw := io.Pipe()
		go func() {
			fw := newFrameWriter(pw)
			for n := 0; n < total; n += len(chunk) {
				if _, err := fw.Write(chunk); err != nil {
					pw.CloseWithError(err)
					return
				}
			}
			pw.CloseWithError(fw.Close())
		}()
		if err := copyFrames(io.Discard, bufio.NewReaderSize(pr, 64<<10)); err != nil {
			b.Fatal(err)
		}
	}
}

// peerEnv makes the test binary, re-executed as another user, send one
// request to the socket it names and print the answer.
const peerEnv = "WALB_DEVHOST_TEST_PEER"

func TestPeerChildProcess(t *testing.T) {
	sock := os.Getenv(peerEnv)
	if sock == "" {
		t.Skip("helper process of TestControlRefusesOtherUsers")
	}
	c, err := net.Dial("unix", sock)
	require.NoError(t, err)
	defer c.Close()
	_, err = io.WriteString(c, `{"v":1,"op":"list"}`+"\n")
	require.NoError(t, err)
	line, err := bufio.NewReader(c).ReadString('\n')
	require.NoError(t, err)
	os.Stdout.WriteString("ANSWER " + line)
}

// Only root and the daemon's user may use the socket: its mode keeps others
// out, and SO_PEERCRED is checked as well, here with the mode opened up.
func TestControlRefusesOtherUsers(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a process as another user")
	}
	// A directory and a copy of the test binary that user nobody can reach.
	dir, err := os.MkdirTemp("", "devhost-peer")
	require.NoError(t, err)
	t.Cleanup(func() { os.RemoveAll(dir) })
	require.NoError(t, os.Chmod(dir, 0o755))
	exe, err := os.Executable()
	require.NoError(t, err)
	bin, err := os.ReadFile(exe)
	require.NoError(t, err)
	peerExe := filepath.Join(dir, "devhost.test")
	require.NoError(t, os.WriteFile(peerExe, bin, 0o755))

	sock := filepath.Join(dir, "ctl.sock")
	l, err := ListenControl(sock)
	require.NoError(t, err)
	h, err := OpenHost(testCtx(t), t.TempDir(), HostOptions{Logger: testLogger(t)})
	require.NoError(t, err)
	defer h.Close()
	srv := NewControlServer(h, testLogger(t))
	go func() { _ = srv.Serve(testCtx(t), l) }()
	defer srv.Shutdown()

	runAs := func() string {
		cmd := exec.Command(peerExe, "-test.run=^TestPeerChildProcess$")
		cmd.Env = append(os.Environ(), peerEnv+"="+sock)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, _ := cmd.CombinedOutput()
		return string(out)
	}
	out := runAs()
	require.Contains(t, out, "permission denied", "mode 0600 keeps other users out:\n%s", out)
	require.NotContains(t, out, "ANSWER")

	require.NoError(t, os.Chmod(sock, 0o666))
	out = runAs()
	require.Contains(t, out, `ANSWER {"v":1,"ok":false,"code":"denied"`, out)
	require.Contains(t, out, "uid 65534 may not use this daemon")
}
