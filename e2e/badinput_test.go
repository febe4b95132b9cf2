package e2e

import (
	"bufio"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/pkg/errors"
	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/controller"
	"github.com/walb-go/walb/devhost"
	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/nbd"
	"github.com/walb-go/walb/wire"
)

// TestBadInput is acceptance 3 against the real processes: wrong-state
// commands, unknown volumes, bad volume names, out-of-range gids, and
// peers sending garbage, corrupted or oversized frames. Each must get a
// clear error (the right wire code and a message naming the problem), the
// server must go on serving, and nothing may change: the state of every
// server (fingerprint) is the same before and after each case.
func TestBadInput(t *testing.T) {
	requireTools(t, allBins...)
	t.Parallel()
	c := newCluster(t)
	c.setup()
	c.mustWalbcWait(c.s0, "full-bkp", volume)
	rng := rand.New(rand.NewPCG(testSeed(t), 3))
	if err := c.writeBurst(c.ctx(), rng, 10); err != nil {
		t.Fatal(err)
	}
	snap := c.takeSnapshot()
	require.NoError(t, c.ctl.WaitForRestorable(c.ctx(), c.a0, volume, snap.gid))
	c.checkDrained(snap.gid)
	// A second volume left in SyncReady on the archive and Clear
	// elsewhere, for the wrong-state cases.
	c.mustWalbc(c.a0, "init-vol", "vol1")

	t.Run("WrongState", func(t *testing.T) { c.badWrongState(t) })
	t.Run("UnknownVolume", func(t *testing.T) { c.badUnknownVolume(t) })
	t.Run("BadNames", func(t *testing.T) { c.badNames(t) })
	t.Run("BadGids", func(t *testing.T) { c.badGids(t, snap) })
	t.Run("Walbc", func(t *testing.T) { c.badWalbc(t) })
	t.Run("Stop", func(t *testing.T) { c.badStops(t) })
	t.Run("Handshake", func(t *testing.T) { c.badHandshake(t) })
	t.Run("WdiffTransfer", func(t *testing.T) { c.badWdiffTransfer(t) })
	t.Run("WlogTransfer", func(t *testing.T) { c.badWlogTransfer(t) })
	t.Run("DeviceDaemon", func(t *testing.T) { c.badDeviceDaemon(t) })

	// Everything still works: a new snapshot flows through and restores.
	if err := c.writeBurst(c.ctx(), rng, 10); err != nil {
		t.Fatal(err)
	}
	last := c.takeSnapshot()
	require.NoError(t, c.ctl.WaitForRestorable(c.ctx(), c.a0, volume, last.gid))
	c.verifyRestore(snap, false)
	c.verifyRestore(last, false)
}

// fingerprint is what the servers say about their volumes; a rejected
// command must leave it unchanged. It is taken when the group is idle,
// through the controller's client and the device daemon's client in this
// process (hundreds of walbc processes would only be slower).
func (c *cluster) fingerprint(t testing.TB) []string {
	t.Helper()
	ctx := c.ctx()
	var fp []string
	q := func(s controller.Server, target string, args ...string) {
		v, err := c.ctl.Client(s).Get(ctx, target, args...)
		out := fmt.Sprint(v)
		if err != nil {
			out = "ERROR " + firstLine(err)
		}
		fp = append(fp, fmt.Sprintf("%s get %s %s: %s", s.Name, target, strings.Join(args, " "), out))
	}
	for _, s := range []controller.Server{c.s0, c.p0, c.a0} {
		q(s, "vol")
	}
	for _, v := range []string{volume, "vol1"} {
		q(c.s0, "state", v)
		q(c.p0, "state", v)
		q(c.a0, "state", v)
	}
	q(c.s0, "latest-snap", volume)
	q(c.s0, "uuid", volume)
	q(c.p0, "proxy-diff", volume)
	q(c.p0, "proxy-diff", volume, c.a0.Name)
	q(c.a0, "base", volume)
	q(c.a0, "diff", volume)
	q(c.a0, "restorable", volume, "all")
	q(c.a0, "restored", volume)
	q(c.a0, "latest-snap", volume)
	q(c.a0, "archive-uuid", volume)
	q(c.a0, "vol-size", volume)
	infos, err := c.ctl.GetArchiveInfoList(ctx, c.p0, volume)
	fp = append(fp, fmt.Sprintf("p0 archive-info list: %v %v", infos, err))
	dc := devhost.NewClient(c.devSock)
	list, err := dc.List(ctx)
	fp = append(fp, fmt.Sprintf("dev list: %+v %v", list, err))
	oldest, err1 := dc.OldestLsid(ctx, volume)
	perm, err2 := dc.PermanentLsid(ctx, volume)
	fp = append(fp, fmt.Sprintf("dev lsids: oldest %d (%v), permanent %d (%v)", oldest, err1, perm, err2))
	sha, err := c.deviceSHA(ctx)
	if err != nil {
		t.Fatal(err)
	}
	fp = append(fp, "dev image: "+sha)
	for _, p := range c.procs() {
		if !p.running() {
			t.Fatalf("%s is not running", p.name)
		}
	}
	// Nothing may appear next to the servers' directories (a name like
	// ../x must never reach the file system).
	entries, err := os.ReadDir(c.dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	fp = append(fp, "work dir: "+strings.Join(names, " "))
	return fp
}

// unchanged runs fn and checks the fingerprint did not change.
func (c *cluster) unchanged(t *testing.T, fn func()) {
	t.Helper()
	before := c.fingerprint(t)
	fn()
	after := c.fingerprint(t)
	require.Equal(t, before, after, "a refused command changed the servers' state")
}

// call runs one command on s with the controller's client, which checks
// nothing itself, so the server sees exactly these arguments.
func (c *cluster) call(s controller.Server, cmd string, args ...string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cl := controller.NewClient(s.Addr, &controller.Options{ClientID: "e2e-bad", Retries: -1})
	resp, err := cl.Do(ctx, controller.Request{Command: cmd, Args: args, Value: controller.NoValue})
	if err == nil {
		return fmt.Errorf("%s %s %q: answered %s, want an error", s.Name, cmd, args, resp.Reply)
	}
	return err
}

// badCase is a command that must be refused with code, its message
// containing want.
type badCase struct {
	s    controller.Server
	cmd  string
	args []string
	code wire.Code
	want string
}

func (c *cluster) runBad(t *testing.T, cases []badCase) {
	t.Helper()
	c.unchanged(t, func() {
		for _, bc := range cases {
			err := c.call(bc.s, bc.cmd, bc.args...)
			what := fmt.Sprintf("%s: %s %q", bc.s.Name, bc.cmd, bc.args)
			var re *wire.RemoteError
			if !errors.As(err, &re) {
				t.Errorf("%s: want a %s error reply, got %v", what, bc.code, err)
				continue
			}
			if !errors.Is(err, bc.code) {
				t.Errorf("%s: code %q, want %q (%v)", what, re.Code, bc.code, err)
			}
			if !strings.Contains(strings.ToLower(re.Msg), strings.ToLower(bc.want)) {
				t.Errorf("%s: message %q does not say %q", what, re.Msg, bc.want)
			}
		}
	})
}

func (c *cluster) badWrongState(t *testing.T) {
	s0, p0, a0 := c.s0, c.p0, c.a0
	c.runBad(t, []badCase{
		// Storage vol0 is Target.
		{s0, "init-vol", []string{volume, volume}, wire.ErrWrongState, "Target"},
		{s0, "clear-vol", []string{volume}, wire.ErrWrongState, "Target"},
		{s0, "reset-vol", []string{volume}, wire.ErrWrongState, "Target"},
		{s0, "full-bkp", []string{volume}, wire.ErrWrongState, "Target"},
		{s0, "start", []string{volume, "target"}, wire.ErrWrongState, "Target"},
		{s0, "start", []string{volume, "standby"}, wire.ErrWrongState, "Target"},
		// Proxy vol0 is Started.
		{p0, "clear-vol", []string{volume}, wire.ErrWrongState, "Started"},
		{p0, "start", []string{volume}, wire.ErrWrongState, "Started"},
		{p0, "archive-info", []string{"delete", volume, a0.Name}, wire.ErrWrongState, "Started"},
		{p0, "archive-info", []string{"update", volume, a0.Name, a0.Addr}, wire.ErrWrongState, "Started"},
		// Archive vol0 is Archived, vol1 SyncReady.
		{a0, "init-vol", []string{volume}, wire.ErrWrongState, "Archived"},
		{a0, "clear-vol", []string{volume}, wire.ErrWrongState, "Archived"},
		{a0, "reset-vol", []string{volume}, wire.ErrWrongState, "Archived"},
		{a0, "start", []string{volume}, wire.ErrWrongState, "Archived"},
		{a0, "restore", []string{"vol1", "0"}, wire.ErrWrongState, "SyncReady"},
		{a0, "apply", []string{"vol1", "0"}, wire.ErrWrongState, "SyncReady"},
		{a0, "merge", []string{"vol1", "0", "gid", "5"}, wire.ErrWrongState, "SyncReady"},
		{a0, "start", []string{"vol1"}, wire.ErrWrongState, "SyncReady"},
		{a0, "disable-snapshot", []string{"vol1", "1"}, wire.ErrWrongState, "SyncReady"},
		// Modes a server does not have.
		{s0, "stop", []string{volume, "empty"}, wire.ErrBadRequest, "empty"},
		{a0, "stop", []string{volume, "empty"}, wire.ErrBadRequest, "empty"},
	})
}

func (c *cluster) badUnknownVolume(t *testing.T) {
	s0, p0, a0 := c.s0, c.p0, c.a0
	const v = "nosuch"
	c.runBad(t, []badCase{
		{s0, "snapshot", []string{v}, wire.ErrNotFound, v},
		{s0, "start", []string{v, "target"}, wire.ErrNotFound, v},
		{s0, "stop", []string{v}, wire.ErrNotFound, v},
		{s0, "full-bkp", []string{v}, wire.ErrNotFound, v},
		{s0, "clear-vol", []string{v}, wire.ErrNotFound, v},
		{s0, "reset-vol", []string{v}, wire.ErrNotFound, v},
		{s0, "init-vol", []string{v, "nosuchdev"}, wire.ErrNotFound, "nosuchdev"},
		{s0, "init-vol", []string{v, volume}, wire.ErrExists, volume}, // the device belongs to vol0
		{p0, "start", []string{v}, wire.ErrWrongState, v},
		{p0, "clear-vol", []string{v}, wire.ErrWrongState, v},
		{p0, "archive-info", []string{"delete", v, a0.Name}, wire.ErrWrongState, v},
		{p0, "archive-info", []string{"get", volume, "nosuch-archive"}, wire.ErrNotFound, "nosuch-archive"},
		{a0, "restore", []string{v, "1"}, wire.ErrWrongState, v},
		{a0, "apply", []string{v, "1"}, wire.ErrWrongState, v},
		{a0, "merge", []string{v, "1", "gid", "3"}, wire.ErrWrongState, v},
		{a0, "del-restored", []string{v, "1"}, wire.ErrWrongState, v},
		{a0, "start", []string{v}, wire.ErrWrongState, v},
		{a0, "stop", []string{v}, wire.ErrWrongState, v},
		{a0, "clear-vol", []string{v}, wire.ErrWrongState, v},
		{a0, "gc-diff", []string{v}, wire.ErrWrongState, v},
		{a0, "resize", []string{v, "32m"}, wire.ErrWrongState, v},
		{a0, "disable-snapshot", []string{v, "1"}, wire.ErrWrongState, v},
		// Unknown commands and get targets.
		{s0, "no-such-command", nil, wire.ErrUnknownCommand, "no-such-command"},
		{p0, "get", []string{"no-such-target"}, wire.ErrBadRequest, "no-such-target"},
		{a0, "get", []string{"no-such-target"}, wire.ErrBadRequest, "no-such-target"},
	})
}

// badVolumeNames are refused by every server before anything else.
var badVolumeNames = []struct{ name, want string }{
	{"../x", "volume name"},
	{"", "empty"},
	{strings.Repeat("v", 65), "65 bytes"},
	{"a/b", "volume name"},
	{"x y", "volume name"},
	{"vol\x00", "volume name"},
	{".", "volume name"},
	{"vol_0", "volume name"},
}

func (c *cluster) badNames(t *testing.T) {
	var cases []badCase
	for _, bn := range badVolumeNames {
		n := bn.name
		for _, cmd := range [][]string{
			{"init-vol", n, volume}, {"clear-vol", n}, {"start", n, "target"}, {"stop", n},
			{"snapshot", n}, {"full-bkp", n}, {"reset-vol", n}, {"get", "state", n}, {"status", n},
		} {
			cases = append(cases, badCase{c.s0, cmd[0], cmd[1:], wire.ErrBadRequest, bn.want})
		}
		for _, cmd := range [][]string{
			{"archive-info", "add", n, c.a0.Name, c.a0.Addr}, {"archive-info", "add", volume, n, c.a0.Addr},
			{"start", n}, {"stop", n}, {"clear-vol", n}, {"get", "state", n}, {"get", "proxy-diff", n},
		} {
			cases = append(cases, badCase{c.p0, cmd[0], cmd[1:], wire.ErrBadRequest, bn.want})
		}
		for _, cmd := range [][]string{
			{"init-vol", n}, {"clear-vol", n}, {"restore", n, "1"}, {"apply", n, "1"}, {"merge", n, "1", "gid", "2"},
			{"del-restored", n, "1"}, {"resize", n, "32m"}, {"gc-diff", n}, {"get", "state", n}, {"get", "restorable", n},
			{"get", "restored-path", n, "1"}, {"status", n},
		} {
			cases = append(cases, badCase{c.a0, cmd[0], cmd[1:], wire.ErrBadRequest, bn.want})
		}
	}
	c.runBad(t, cases)
	// The device daemon refuses bad device names too, and registers
	// nothing.
	c.unchanged(t, func() {
		ldev, ddev := filepath.Join(c.dir, "ldev.img"), filepath.Join(c.dir, "ddev.img")
		for _, n := range []string{"../x", "a/b", strings.Repeat("d", 300), "-x", "control"} {
			out, err := c.wdevc("create-wdev", ldev, ddev, "-n", n)
			if err == nil {
				t.Errorf("wdevc create-wdev -n %q succeeded: %s", n, out)
			}
		}
	})
}

func (c *cluster) badGids(t *testing.T, snap snapshot) {
	a0 := c.a0
	future := fmt.Sprint(snap.gid + 1000)
	var cases []badCase
	for _, g := range []string{"18446744073709551616", "-1", "1e3", "0x10", "abc", " 1"} {
		cases = append(cases,
			badCase{a0, "restore", []string{volume, g}, wire.ErrBadRequest, "gid"},
			badCase{a0, "apply", []string{volume, g}, wire.ErrBadRequest, "gid"},
			badCase{a0, "del-restored", []string{volume, g}, wire.ErrBadRequest, "gid"},
			badCase{a0, "merge", []string{volume, g, "gid", "5"}, wire.ErrBadRequest, "gid"},
			badCase{a0, "merge", []string{volume, "0", "gid", g}, wire.ErrBadRequest, g},
			badCase{a0, "disable-snapshot", []string{volume, g}, wire.ErrBadRequest, "gid"},
			badCase{c.s0, "reset-vol", []string{volume, g}, wire.ErrBadRequest, "gid"},
		)
	}
	cases = append(cases,
		// Well-formed but out of the volume's range.
		badCase{a0, "restore", []string{volume, future}, wire.ErrBadRequest, "not restorable"},
		badCase{a0, "merge", []string{volume, future, "gid", fmt.Sprint(snap.gid + 2000)}, wire.ErrBadRequest, "no mergeable diffs"},
		badCase{a0, "del-restored", []string{volume, fmt.Sprint(snap.gid)}, wire.ErrNotFound, fmt.Sprint(snap.gid)},
		badCase{a0, "disable-snapshot", []string{volume, future}, wire.ErrNotFound, future},
		badCase{a0, "merge", []string{volume, "0", "size", "0"}, wire.ErrBadRequest, "size"},
		badCase{a0, "merge", []string{volume, "0", "bogus", "5"}, wire.ErrBadRequest, "merge"},
		badCase{a0, "get", []string{"restored-path", volume, future}, wire.ErrNotFound, future},
		badCase{a0, "resize", []string{volume, "1k"}, wire.ErrBadRequest, "size"},
		badCase{a0, "resize", []string{volume, "513"}, wire.ErrBadRequest, "size"},
		badCase{c.s0, "full-bkp", []string{volume, "1g"}, wire.ErrBadRequest, "bulk"},
	)
	c.runBad(t, cases)

	// The controller (and so walbc's callers in Go) checks what the
	// archive itself takes: an apply to a gid that ends no diff would
	// apply everything up to it (walb-tools' semantics), so the SDK
	// refuses it.
	c.unchanged(t, func() {
		ctx := c.ctx()
		err := c.ctl.Apply(ctx, a0, volume, snap.gid+1000)
		require.ErrorIs(t, err, controller.ErrBadGid)
		err = c.ctl.Merge(ctx, a0, volume, snap.gid+1000, snap.gid+2000)
		require.ErrorIs(t, err, controller.ErrBadGid)
		_, err = c.ctl.Restore(ctx, a0, volume, snap.gid+1000)
		require.ErrorIs(t, err, wire.ErrBadRequest)
	})
}

// badStops: stop replies accept before it looks at the volume (as
// walb-tools' stop does), so a stop that cannot happen is reported by
// walbc -wait, which waits for its end, and changes nothing.
func (c *cluster) badStops(t *testing.T) {
	c.unchanged(t, func() {
		for _, tc := range []struct {
			s   controller.Server
			vol string
		}{{c.a0, "vol1"}, {c.p0, "nosuch"}, {c.a0, "nosuch"}, {c.s0, "nosuch"}} {
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			out, err := c.walbcCtx(ctx, tc.s, true, "stop", tc.vol)
			cancel()
			if err == nil {
				t.Errorf("walbc -wait stop %s on %s succeeded: %s", tc.vol, tc.s.Name, out)
				continue
			}
			if !strings.Contains(err.Error(), tc.vol) {
				t.Errorf("walbc -wait stop %s on %s: the error does not name the volume: %v", tc.vol, tc.s.Name, err)
			}
			t.Logf("stop %s on %s: %v", tc.vol, tc.s.Name, firstLine(err))
		}
	})
}

// badWalbc checks that walbc itself refuses bad arguments before sending
// anything, with a usage error and a non-zero exit status.
func (c *cluster) badWalbc(t *testing.T) {
	c.unchanged(t, func() {
		for _, args := range [][]string{
			{"init-vol", "../x"}, {"init-vol", ""}, {"snapshot", strings.Repeat("v", 65)},
			{"restore", volume, "-1"}, {"restore", volume, "18446744073709551616"}, {"restore", volume},
			{"merge", volume, "1", "bogus", "2"}, {"stop", volume, "sideways"}, {"no-such-command"},
		} {
			for _, s := range []controller.Server{c.s0, c.p0, c.a0} {
				out, err := c.walbc(s, args...)
				if err == nil {
					t.Errorf("walbc %q on %s succeeded: %s", args, s.Name, out)
					continue
				}
				if !strings.Contains(err.Error(), "walbc") {
					t.Errorf("walbc %q: unclear error %v", args, err)
				}
			}
		}
	})
}

// anyCode in a rawCase accepts any error code (the message decides).
const anyCode = "*"

// Raw wire bytes, built by hand so that they can be wrong.
var wirePreamble = []byte{'W', 'A', 'L', 'B', 'G', 'O', 1, 0}

// helloPayload is a Hello frame's payload for cmd with args.
func helloPayload(cmd string, args ...string) []byte {
	p := binary.LittleEndian.AppendUint32(nil, wire.DefaultMaxFrame)
	p = binary.LittleEndian.AppendUint16(p, 7)
	p = append(p, "e2e-raw"...)
	p = binary.LittleEndian.AppendUint16(p, uint16(len(cmd)))
	p = append(p, cmd...)
	p = binary.LittleEndian.AppendUint32(p, uint32(len(args)))
	for _, a := range args {
		p = binary.LittleEndian.AppendUint32(p, uint32(len(a)))
		p = append(p, a...)
	}
	return p
}

// rawReply reads what a server sends until it closes the connection and
// decodes its first reply: the Welcome's status (when the handshake
// failed) or the first Reply frame after an ok Welcome. It fails if the
// server keeps the connection open for 20 s.
func rawReply(conn net.Conn) (code, msg string, err error) {
	_ = conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	br := bufio.NewReader(conn)
	pre := make([]byte, 8)
	if _, err := io.ReadFull(br, pre); err != nil {
		return "", "", fmt.Errorf("no preamble from the server: %w", err)
	}
	if string(pre[:6]) != "WALBGO" {
		return "", "", fmt.Errorf("server preamble % x", pre)
	}
	fr := wire.NewFrameReader(br, wire.DefaultMaxFrame)
	welcome := true
	for {
		typ, p, err := fr.Next()
		if err != nil {
			return "", "", fmt.Errorf("reading the server's frames: %w", err)
		}
		switch {
		case welcome && typ == wire.FrameWelcome:
			welcome = false
			if len(p) < 8 {
				return "", "", fmt.Errorf("short welcome")
			}
			n := int(binary.LittleEndian.Uint16(p[6:]))
			if len(p) < 8+n+1 {
				return "", "", fmt.Errorf("short welcome")
			}
			if k, c, m := decodeReply(p[8+n:]); k != 0 {
				return c, m, nil
			}
		case typ == wire.FrameReply:
			k, c, m := decodeReply(p)
			if k != 2 {
				return "", "", fmt.Errorf("reply kind %d, want an error", k)
			}
			return c, m, nil
		case typ == wire.FrameDummy:
		default:
			return "", "", fmt.Errorf("unexpected %s frame", typ)
		}
	}
}

func decodeReply(p []byte) (kind byte, code, msg string) {
	if len(p) == 0 {
		return 255, "", ""
	}
	kind = p[0]
	if kind == 2 && len(p) >= 2 && len(p) >= 2+int(p[1]) {
		code, msg = string(p[2:2+int(p[1])]), string(p[2+int(p[1]):])
	}
	return kind, code, msg
}

// rawCase sends bytes to a server port and expects an error reply whose
// code is code and whose message contains want, then the connection's end.
type rawCase struct {
	name       string
	send       []byte
	code, want string
}

func (c *cluster) sendRaw(t *testing.T, addr string, rc rawCase) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_ = conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	// The server may close as soon as it has seen enough: a write error
	// here is fine, the reply is what counts.
	_, _ = conn.Write(rc.send)
	code, msg, err := rawReply(conn)
	if err != nil {
		t.Errorf("%s to %s: %v", rc.name, addr, err)
		return
	}
	if code != rc.code || !strings.Contains(strings.ToLower(msg), strings.ToLower(rc.want)) {
		t.Errorf("%s to %s: error %q %q, want code %q and a message with %q", rc.name, addr, code, msg, rc.code, rc.want)
	}
	// And then the server closes.
	_ = conn.SetReadDeadline(time.Now().Add(20 * time.Second))
	if _, err := io.Copy(io.Discard, conn); err != nil {
		t.Errorf("%s to %s: the server did not close the connection: %v", rc.name, addr, err)
	}
}

func (c *cluster) badHandshake(t *testing.T) {
	garbage := make([]byte, 4096)
	for i := range garbage {
		garbage[i] = byte(i*7 + 3)
	}
	hello := wire.AppendFrame(nil, wire.FrameHello, helloPayload("get", "state", volume))
	badCRC := slices.Clone(hello)
	badCRC[len(badCRC)-1] ^= 0xff
	huge := []byte{byte(wire.FrameHello), 0xff, 0xff, 0xff, 0x7f} // 2 GiB Hello, no payload
	bigHello := []byte{byte(wire.FrameHello), 0x01, 0x00, 0x01, 0x00}
	notHello := wire.AppendFrame(nil, wire.FrameString, []byte("state"))
	cases := []rawCase{
		{"garbage", garbage, string(wire.ErrProtocol), "bad magic"},
		{"http request", []byte("GET / HTTP/1.0\r\n\r\n"), string(wire.ErrProtocol), "bad magic"},
		{"hello with a bad checksum", append(slices.Clone(wirePreamble), badCRC...), string(wire.ErrProtocol), "checksum"},
		{"2 GiB hello", append(slices.Clone(wirePreamble), huge...), string(wire.ErrProtocol), "too large"},
		{"64 KiB + 1 hello", append(slices.Clone(wirePreamble), bigHello...), string(wire.ErrProtocol), "too large"},
		{"string frame instead of hello", append(slices.Clone(wirePreamble), notHello...), string(wire.ErrProtocol), "hello"},
		{"unknown frame type", append(slices.Clone(wirePreamble), wire.AppendFrame(nil, 0x7e, nil)...), string(wire.ErrProtocol), "frame"},
		{"hello of garbage", append(slices.Clone(wirePreamble), wire.AppendFrame(nil, wire.FrameHello, garbage[:100])...), string(wire.ErrProtocol), "hello"},
		{"version 0", append([]byte("WALBGO\x00\x00"), hello...), string(wire.ErrVersionMismatch), "version"},
		{"unknown command", append(slices.Clone(wirePreamble), wire.AppendFrame(nil, wire.FrameHello, helloPayload("rm", "-rf", "/"))...),
			string(wire.ErrUnknownCommand), "rm"},
	}
	c.unchanged(t, func() {
		for _, s := range []controller.Server{c.s0, c.p0, c.a0} {
			for _, rc := range cases {
				c.sendRaw(t, s.Addr, rc)
			}
			// A client that connects and says nothing, or half a frame,
			// then goes away, costs nothing either.
			for _, b := range [][]byte{nil, wirePreamble[:3], append(slices.Clone(wirePreamble), hello[:9]...)} {
				conn, err := net.Dial("tcp", s.Addr)
				require.NoError(t, err)
				_, _ = conn.Write(b)
				conn.Close()
			}
			// The server still answers.
			out, err := c.walbc(s, "get", "host-type")
			require.NoError(t, err)
			require.Equal(t, s.Kind.String(), strings.TrimSpace(out))
		}
	})
}

// badWdiffTransfer offers the archive diffs that are wrong, or a stream
// that breaks: each is refused or aborted, the transfer's transient state
// rolls back and no diff file is added.
func (c *cluster) badWdiffTransfer(t *testing.T) {
	uuid := strings.TrimSpace(c.mustWalbc(c.a0, "get", "uuid", volume))
	size := strings.TrimSpace(c.mustWalbc(c.a0, "get", "vol-size", volume))
	ls, err := c.ctl.GetLatestSnap(c.ctx(), c.a0, volume)
	require.NoError(t, err)
	require.Len(t, ls, 1)
	latest := ls[0].Gid
	diff := func(b, e uint64) []byte {
		d := meta.Diff{SnapB: meta.Snap{GidB: b, GidE: b}, SnapE: meta.Snap{GidB: e, GidE: e}, Timestamp: time.Now()}
		enc, err := meta.Marshal(d)
		require.NoError(t, err)
		return wire.AppendFrame(nil, wire.FrameValue, enc)
	}
	offer := func(args []string, rest ...[]byte) []byte {
		b := append(slices.Clone(wirePreamble), wire.AppendFrame(nil, wire.FrameHello, helloPayload("wdiff-transfer", args...))...)
		for _, r := range rest {
			b = append(b, r...)
		}
		return b
	}
	good := []string{volume, "proxy", uuid, size}
	oversized := []byte{byte(wire.FrameChunk), 0x00, 0x00, 0x00, 0x40} // 1 GiB chunk announced
	cases := []rawCase{
		{"diff not after the latest", offer(good, diff(latest+5, latest+6)), string(wire.ErrTooNewDiff), ""},
		{"diff already there", offer(good, diff(0, latest)), string(wire.ErrTooOldDiff), ""},
		{"other device", offer([]string{volume, "proxy", strings.Repeat("ab", 16), size}, diff(latest, latest+1)), string(wire.ErrDifferentUUID), ""},
		// system.md §5.9: a volume that is not Archived (here Clear) gets
		// an error before archive-not-found is considered.
		{"unknown volume", offer([]string{"nosuch", "proxy", uuid, size}, diff(latest, latest+1)), string(wire.ErrWrongState), "nosuch"},
		{"bad uuid", offer([]string{volume, "proxy", "zz", size}, diff(latest, latest+1)), string(wire.ErrBadRequest), "uuid"},
		{"bad sender", offer([]string{volume, "storage", uuid, size}, diff(latest, latest+1)), string(wire.ErrBadRequest), "sender"},
		{"garbage instead of the diff", offer(good, wire.AppendFrame(nil, wire.FrameValue, []byte("garbage"))), anyCode, "preamble"},
		{"oversized frame instead of the diff", offer(good, oversized), string(wire.ErrProtocol), "too large"},
		{"truncated stream", offer(good, diff(latest, latest+1), wire.AppendFrame(nil, wire.FrameChunk, []byte("not a pack")),
			wire.AppendFrame(nil, wire.FrameEnd, nil)), "", ""},
		{"oversized pack", offer(good, diff(latest, latest+1), oversized), "", ""},
		{"pack with a bad checksum", offer(good, diff(latest, latest+1), corruptPack()), "", ""},
	}
	c.unchanged(t, func() {
		for _, rc := range cases {
			c.sendWdiff(t, rc)
		}
	})
}

// corruptPack is a frame carrying a 4 KiB pack header of random bytes.
func corruptPack() []byte {
	p := make([]byte, 4096)
	for i := range p {
		p[i] = byte(i * 31)
	}
	return wire.AppendFrame(nil, wire.FrameChunk, p)
}

// sendWdiff runs a wdiff-transfer case. A refusal comes in the first
// reply; a stream that breaks after accept gets an error reply after it.
func (c *cluster) sendWdiff(t *testing.T, rc rawCase) {
	t.Helper()
	conn, err := net.DialTimeout("tcp", c.a0.Addr, 5*time.Second)
	require.NoError(t, err)
	defer conn.Close()
	_ = conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	_, _ = conn.Write(rc.send)
	kinds, code, msg, err := rawExchange(conn)
	if err != nil {
		t.Errorf("wdiff-transfer %s: %v", rc.name, err)
		return
	}
	if rc.code == anyCode {
		if code == "" || !strings.Contains(strings.ToLower(msg), strings.ToLower(rc.want)) {
			t.Errorf("wdiff-transfer %s: replies %v, error %q %q; want an error with %q", rc.name, kinds, code, msg, rc.want)
		}
		return
	}
	if rc.code == "" {
		// Accepted, then aborted by the broken stream.
		if len(kinds) < 2 || kinds[0] != "accept" || code == "" {
			t.Errorf("wdiff-transfer %s: replies %v, error %q %q; want accept then an error", rc.name, kinds, code, msg)
		}
		return
	}
	if code != rc.code || !strings.Contains(strings.ToLower(msg), strings.ToLower(rc.want)) {
		t.Errorf("wdiff-transfer %s: replies %v, error %q %q; want code %q with %q", rc.name, kinds, code, msg, rc.code, rc.want)
	}
}

// rawExchange reads replies until the server closes: it returns the reply
// kinds seen and the error of the last error reply.
func rawExchange(conn net.Conn) (kinds []string, code, msg string, err error) {
	_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
	br := bufio.NewReader(conn)
	pre := make([]byte, 8)
	if _, err := io.ReadFull(br, pre); err != nil {
		return nil, "", "", fmt.Errorf("no preamble: %w", err)
	}
	fr := wire.NewFrameReader(br, wire.DefaultMaxFrame)
	for {
		typ, p, err := fr.Next()
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, wire.ErrPeerClosed) || strings.Contains(err.Error(), "reset") {
				return kinds, code, msg, nil
			}
			return kinds, code, msg, err
		}
		var k byte
		switch typ {
		case wire.FrameWelcome:
			if len(p) < 8 {
				return kinds, code, msg, fmt.Errorf("short welcome")
			}
			n := int(binary.LittleEndian.Uint16(p[6:]))
			k, code, msg = decodeReply(p[8+n:])
			if k == 0 {
				continue
			}
		case wire.FrameReply:
			var c2, m2 string
			k, c2, m2 = decodeReply(p)
			if k == 2 {
				code, msg = c2, m2
			}
		case wire.FrameDummy, wire.FrameAck:
			continue
		default:
			return kinds, code, msg, fmt.Errorf("unexpected %s frame", typ)
		}
		kinds = append(kinds, []string{"ok", "accept", "error"}[min(int(k), 2)])
	}
}

// badWlogTransfer offers the proxy wlog transfers that are wrong or break:
// each is refused or aborted, the proxy's volume returns to Started and
// no diff is queued.
func (c *cluster) badWlogTransfer(t *testing.T) {
	uuid := strings.TrimSpace(c.mustWalbc(c.s0, "get", "uuid", volume))
	size := strings.TrimSpace(c.mustWalbc(c.a0, "get", "vol-size", volume))
	offer := func(args []string, rest ...[]byte) []byte {
		b := append(slices.Clone(wirePreamble), wire.AppendFrame(nil, wire.FrameHello, helloPayload("wlog-transfer", args...))...)
		for _, r := range rest {
			b = append(b, r...)
		}
		return b
	}
	good := []string{volume, uuid, "512", "0", size, "65536"}
	chunk := func(b []byte) []byte { return wire.AppendFrame(nil, wire.FrameChunk, b) }
	cases := []rawCase{
		{"unknown volume", offer([]string{"nosuch", uuid, "512", "0", size, "65536"}), string(wire.ErrWrongState), "nosuch"},
		{"bad pbs", offer([]string{volume, uuid, "513", "0", size, "65536"}), string(wire.ErrBadRequest), "physical block size"},
		{"bad uuid", offer([]string{volume, "xyz", "512", "0", size, "65536"}), string(wire.ErrBadRequest), "uuid"},
		{"missing arguments", offer([]string{volume, uuid}), string(wire.ErrBadRequest), "wlog-transfer"},
		{"garbage chunk", offer(good, chunk([]byte("garbage!garbage!"))), "", ""},
		{"chunk announcing 1 GiB", offer(good, []byte{byte(wire.FrameChunk), 0, 0, 0, 0x40}), "", ""},
		{"raw chunk of a bad logpack", offer(good, chunk(append([]byte{0, 0, 16, 0, 0}, make([]byte, 4096)...))), "", ""},
		{"end without a diff, then garbage", offer(good, wire.AppendFrame(nil, wire.FrameEnd, nil), wire.AppendFrame(nil, wire.FrameValue, []byte{1, 2, 3})), "", ""},
	}
	c.unchanged(t, func() {
		for _, rc := range cases {
			conn, err := net.DialTimeout("tcp", c.p0.Addr, 5*time.Second)
			require.NoError(t, err)
			_ = conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
			_, _ = conn.Write(rc.send)
			kinds, code, msg, err := rawExchange(conn)
			conn.Close()
			switch {
			case err != nil:
				t.Errorf("wlog-transfer %s: %v", rc.name, err)
			case rc.code == "" && (len(kinds) < 2 || kinds[0] != "accept" || code == ""):
				t.Errorf("wlog-transfer %s: replies %v, error %q %q; want accept then an error", rc.name, kinds, code, msg)
			case rc.code != "" && (code != rc.code || !strings.Contains(strings.ToLower(msg), strings.ToLower(rc.want))):
				t.Errorf("wlog-transfer %s: replies %v, error %q %q; want code %q with %q", rc.name, kinds, code, msg, rc.code, rc.want)
			}
		}
		// The transient WlogRecv state must be gone before the
		// fingerprint is taken again.
		c.waitState(t, c.p0, "Started")
	})
}

// waitState waits (10 s at most) until vol0 is in state st on s.
func (c *cluster) waitState(t *testing.T, s controller.Server, st string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got, err := c.ctl.GetState(c.ctx(), s, volume)
		if err == nil && got == st {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %s is %q (%v), want %s", s.Name, volume, got, err, st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// badDeviceDaemon sends the device daemon's control socket malformed and
// oversized requests, and its NBD port garbage: clear errors, the daemon
// still serves, the device is unchanged.
func (c *cluster) badDeviceDaemon(t *testing.T) {
	c.unchanged(t, func() {
		for _, tc := range []struct {
			name, line, code string
		}{
			{"not json", "hello\n", "bad-request"},
			{"wrong version", `{"v":2,"op":"list"}` + "\n", "version"},
			{"unknown op", `{"v":1,"op":"format-everything"}` + "\n", "bad-request"},
			{"unknown field", `{"v":1,"op":"list","x":1}` + "\n", "bad-request"},
			{"bad name", `{"v":1,"op":"create-wdev","name":"../x","log_device":"/nonexistent/l","data_device":"/nonexistent/d"}` + "\n", "invalid"},
			{"name that cannot exist", `{"v":1,"op":"delete-wdev","name":"../x"}` + "\n", "not-found"},
			{"unknown device", `{"v":1,"op":"reset-wal","name":"nosuch"}` + "\n", "not-found"},
			{"oversized line", `{"v":1,"op":"list","name":"` + strings.Repeat("x", 70<<10) + "\"}\n", "too-large"},
			{"lsid out of range", `{"v":1,"op":"set-oldest-lsid","name":"` + volume + `","lsid":18446744073709551615}` + "\n", "invalid"},
		} {
			conn, err := net.Dial("unix", c.devSock)
			require.NoError(t, err)
			_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
			_, _ = conn.Write([]byte(tc.line))
			line, err := bufio.NewReader(conn).ReadString('\n')
			conn.Close()
			if err != nil {
				t.Errorf("control socket, %s: no answer: %v", tc.name, err)
				continue
			}
			if !strings.Contains(line, `"ok":false`) || !strings.Contains(line, `"code":"`+tc.code+`"`) {
				t.Errorf("control socket, %s: answer %s, want code %s", tc.name, strings.TrimSpace(line), tc.code)
			}
		}
		// NBD: garbage is dropped; an option over 64 KiB is answered
		// NBD_REP_ERR_TOO_BIG and the negotiation goes on.
		conn, err := net.Dial("tcp", c.nbdAddr)
		require.NoError(t, err)
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
		_, _ = conn.Write([]byte("garbage garbage garbage"))
		_, err = io.Copy(io.Discard, conn)
		conn.Close()
		if err != nil {
			t.Errorf("NBD garbage: the daemon did not close the connection: %v", err)
		}
		c.nbdOversizedOption(t)
		ctx := c.ctx()
		cl, err := nbd.Dial(ctx, "tcp", c.nbdAddr, nbd.ClientOptions{Export: "nosuch"})
		if err == nil {
			cl.Close()
			t.Errorf("NBD export nosuch: connected")
		}
	})
}

// nbdOversizedOption negotiates with the device daemon's NBD server by
// hand and sends an NBD_OPT_GO carrying 70 KiB: the server must skip it
// and answer NBD_REP_ERR_TOO_BIG, then still take NBD_OPT_ABORT.
func (c *cluster) nbdOversizedOption(t *testing.T) {
	const (
		optMagic     = "IHAVEOPT"
		replyMagic   = 0x3e889045565a9
		optGo        = 7
		optAbort     = 2
		repAck       = 1
		repErrTooBig = 1<<31 | 9
	)
	conn, err := net.Dial("tcp", c.nbdAddr)
	require.NoError(t, err)
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(20 * time.Second))
	greet := make([]byte, 18)
	_, err = io.ReadFull(conn, greet)
	require.NoError(t, err)
	require.Equal(t, "NBDMAGICIHAVEOPT", string(greet[:16]))
	msg := binary.BigEndian.AppendUint32(nil, 3) // fixed newstyle, no zeroes
	msg = append(msg, optMagic...)
	msg = binary.BigEndian.AppendUint32(msg, optGo)
	msg = binary.BigEndian.AppendUint32(msg, 70<<10)
	msg = append(msg, make([]byte, 70<<10)...)
	_, err = conn.Write(msg)
	require.NoError(t, err)
	reply := func() (opt, typ uint32) {
		h := make([]byte, 20)
		_, err := io.ReadFull(conn, h)
		require.NoError(t, err)
		require.EqualValues(t, replyMagic, binary.BigEndian.Uint64(h))
		n := binary.BigEndian.Uint32(h[16:])
		_, err = io.CopyN(io.Discard, conn, int64(n))
		require.NoError(t, err)
		return binary.BigEndian.Uint32(h[8:]), binary.BigEndian.Uint32(h[12:])
	}
	opt, typ := reply()
	require.EqualValues(t, optGo, opt)
	require.EqualValues(t, uint32(repErrTooBig), typ, "reply to a 70 KiB option")
	abort := append([]byte(optMagic), binary.BigEndian.AppendUint32(binary.BigEndian.AppendUint32(nil, optAbort), 0)...)
	_, err = conn.Write(abort)
	require.NoError(t, err)
	opt, typ = reply()
	require.EqualValues(t, optAbort, opt)
	require.EqualValues(t, repAck, typ)
}
