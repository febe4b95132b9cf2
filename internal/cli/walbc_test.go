package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pkg/errors"
	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/archive"
	"github.com/walb-go/walb/imagestore"
	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/server"
	"github.com/walb-go/walb/wire"
)

// walbcFake is a server answering like the walb-go servers: the value types
// of their get targets, ok / accept replies, error codes, and an archive
// volume whose restore and apply run in the background.
type walbcFake struct {
	mu       sync.Mutex
	addr     string
	state    string
	actions  map[string]int
	restored []string
	progress uint64
	received []string
	archive  string // a storage's archive address, in its status
	hostType string
	// noProgress makes get progress an unknown target (an older
	// storage).
	noProgress bool
}

func (f *walbcFake) Recover(context.Context) error { return nil }

// Status adds a storage's archive section and its volume's size, as the
// storage's status has.
func (f *walbcFake) Status(_ context.Context, args []string) ([]string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	switch {
	case f.hostType != "storage":
		return nil, nil
	case len(args) > 0:
		return []string{"state " + f.state, "sizeLb 4096"}, nil
	case f.archive == "":
		return nil, nil
	}
	return []string{"-----Archive-----", "host " + f.archive, "-----Proxy-----"}, nil
}

var walbcT0 = time.Date(2024, 5, 1, 12, 30, 45, 0, time.UTC)

func startWalbcFake(t *testing.T, hostType string) *walbcFake {
	t.Helper()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	srv, err := server.New(server.Config{ID: "fake", Addr: "127.0.0.1:0", HostType: hostType, Version: "fake 1.0", Logger: quiet})
	require.NoError(t, err)
	f := &walbcFake{state: "Archived", actions: map[string]int{}, restored: []string{}, hostType: hostType}
	if hostType == "storage" {
		f.state = "Target"
	}
	rec := func(cmd string, args []string) {
		f.received = append(f.received, strings.TrimSpace(cmd+" "+strings.Join(args, " ")))
	}
	get := func(target string, h func(args []string) (any, error)) {
		srv.HandleGet(target, func(_ context.Context, args []string) (any, error) {
			f.mu.Lock()
			defer f.mu.Unlock()
			return h(args)
		})
	}
	handle := func(cmd string, h func(ctx context.Context, c *wire.Conn, args []string) error) {
		srv.Handle(cmd, func(ctx context.Context, c *wire.Conn, args []string) error {
			f.mu.Lock()
			rec(cmd, args)
			f.mu.Unlock()
			return h(ctx, c, args)
		})
	}
	later := func(fn func()) {
		go func() {
			time.Sleep(30 * time.Millisecond)
			f.mu.Lock()
			defer f.mu.Unlock()
			fn()
		}()
	}
	get("state", func(a []string) (any, error) {
		if a[0] != "vol0" {
			return "Clear", nil
		}
		return f.state, nil
	})
	get("vol", func([]string) (any, error) { return []string{"vol0", "vol1"}, nil })
	get("vol-size", func([]string) (any, error) { return uint64(2048), nil })
	get("progress", func([]string) (any, error) {
		if f.noProgress {
			return nil, errors.Wrap(server.ErrBadArgs, "unknown get target \"progress\"")
		}
		return f.progress, nil
	})
	get("exists-base-image", func([]string) (any, error) { return true, nil })
	get("archive-uuid", func([]string) (any, error) { return "00112233445566778899aabbccddeeff", nil })
	get("is-wdiff-send-error", func(a []string) (any, error) { return a[1] == "a1", nil })
	get("is-overflow", func([]string) (any, error) { return false, nil })
	get("num-action", func(a []string) (any, error) { return uint64(f.actions[a[1]]), nil })
	get("restored", func([]string) (any, error) { return f.restored, nil })
	get("restorable", func(a []string) (any, error) {
		if a[0] == "vol9" {
			return []string{"nonsense"}, nil
		}
		if len(a) < 2 || a[1] != "all" {
			return []string{"3 2024-05-01T12:30:45 1"}, nil // the explicit ones
		}
		return []string{"3 2024-05-01T12:30:45 1", "5 2024-05-01T12:30:45 0"}, nil
	})
	get("base", func([]string) (any, error) { return meta.NewState(meta.CleanSnap(3), walbcT0).StringTs(), nil })
	get("diff", func([]string) (any, error) {
		d := meta.Diff{SnapB: meta.CleanSnap(3), SnapE: meta.CleanSnap(5), Mergeable: true, Timestamp: walbcT0, DataSize: 4096}
		return []string{d.Listing()}, nil
	})
	get("latest-snap", func([]string) (any, error) {
		return []string{"name:vol0\tkind:storage\tgid:5\tlsid:40\ttimestamp:2024-05-01T12:30:45"}, nil
	})
	get("x-record", func([]string) (any, error) { return meta.Snap{GidB: 2, GidE: 4}, nil })
	get("x-count", func([]string) (any, error) { return uint64(77), nil })
	handle("snapshot", func(ctx context.Context, c *wire.Conn, a []string) error {
		if err := c.SendOK(ctx); err != nil {
			return err
		}
		return c.SendU64(ctx, 6)
	})
	handle("init-vol", func(ctx context.Context, c *wire.Conn, a []string) error {
		if a[0] == "vol0" {
			return errors.Wrapf(server.ErrWrongState, "volume %s is %s", a[0], f.state)
		}
		return c.SendOK(ctx)
	})
	handle("gc-diff", func(ctx context.Context, c *wire.Conn, a []string) error { return c.SendOK(ctx) })
	handle("archive-info", func(ctx context.Context, c *wire.Conn, a []string) error {
		if err := c.SendOK(ctx); err != nil {
			return err
		}
		switch a[0] {
		case "get":
			return c.SendString(ctx, "a0.example:5002 zstd:3:1 10")
		case "list":
			return c.SendStrings(ctx, []string{"a0", "a1"})
		}
		return nil
	})
	long := func(action string, work func(a []string)) func(ctx context.Context, c *wire.Conn, a []string) error {
		return func(ctx context.Context, c *wire.Conn, a []string) error {
			f.mu.Lock()
			f.actions[action]++
			f.progress = 512
			f.mu.Unlock()
			later(func() {
				f.progress = 1024
				later(func() {
					work(a)
					f.actions[action]--
					f.progress = 0
				})
			})
			return c.SendAccept(ctx)
		}
	}
	handle("restore", long("Restore", func(a []string) {
		if a[1] != "99" { // gid 99 fails after accept
			f.restored = append(f.restored, a[1])
		}
	}))
	handle("replicate", long("ReplSyncAsClient", func([]string) {}))
	handle("hash-bkp", func(ctx context.Context, c *wire.Conn, a []string) error {
		f.mu.Lock()
		f.state = "HashSync"
		f.mu.Unlock()
		later(func() {
			f.state = "Stopped"
			later(func() { f.state = "Target" })
		})
		return c.SendAccept(ctx)
	})
	handle("bhash", func(ctx context.Context, c *wire.Conn, a []string) error {
		if err := c.SendOK(ctx); err != nil {
			return err
		}
		return c.SendStrings(ctx, []string{"0000000000000000\t00112233", "0000000000000080\t44556677"})
	})
	handle("stop", func(ctx context.Context, c *wire.Conn, a []string) error {
		f.mu.Lock()
		f.state = "StopTarget"
		f.mu.Unlock()
		later(func() { f.state = "Stopped" })
		return c.SendAccept(ctx)
	})
	require.NoError(t, srv.Listen())
	f.addr = srv.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Run(ctx, f) }()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	return f
}

func (f *walbcFake) commands() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := f.received
	f.received = nil
	return out
}

// walbc runs the tool with args after -a ADDR.
func runWalbc(t *testing.T, addr string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	all := append([]string{"-a", addr, "-id", "test"}, args...)
	code = Run(ctx, "walbc", Walbc, all, &out, &errb)
	return code, out.String(), errb.String()
}

func TestWalbcText(t *testing.T) {
	f := startWalbcFake(t, "archive")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"get", "state", "vol0"}, "Archived\n"},
		{[]string{"get", "vol"}, "vol0\nvol1\n"},
		{[]string{"get", "vol-size", "vol0"}, "2048\n"},
		{[]string{"get", "exists-base-image", "vol0"}, "1\n"},
		{[]string{"get", "is-overflow", "vol0"}, "0\n"},
		{[]string{"get", "host-type"}, "archive\n"},
		{[]string{"get", "restorable", "vol0", "all"}, "3 2024-05-01T12:30:45 1\n5 2024-05-01T12:30:45 0\n"},
		{[]string{"get", "base", "vol0"}, "<|3|>-20240501123045\n"},
		// Targets walbc does not know: the type is probed.
		{[]string{"get", "x-record"}, "|2,4|\n"},
		{[]string{"get", "x-count"}, "77\n"},
		{[]string{"version"}, "fake 1.0\n"},
		{[]string{"snapshot", "vol0"}, "6\n"},
		{[]string{"init-vol", "vol1"}, ""},
		{[]string{"gc-diff", "vol0"}, ""}, // ok without the count
		{[]string{"restore", "vol0", "3"}, "accept\n"},
		{[]string{"archive-info", "get", "vol0", "a0"}, "a0.example:5002 zstd:3:1 10\n"},
		{[]string{"archive-info", "list", "vol0"}, "a0\na1\n"},
		{[]string{"archive-info", "add", "vol0", "a2", "h:5000", "snappy:0:1", "5"}, ""},
	} {
		code, out, errs := runWalbc(t, f.addr[:strings.LastIndexByte(f.addr, ':')], append([]string{"-p", f.addr[strings.LastIndexByte(f.addr, ':')+1:]}, tc.args...)...)
		require.Equal(t, 0, code, "%v: %s", tc.args, errs)
		require.Equal(t, tc.want, out, tc.args)
	}
	cmds := f.commands()
	require.Contains(t, cmds, "restore vol0 3")
	require.Contains(t, cmds, "archive-info add vol0 a2 h:5000 snappy:0:1 5")
	// status: the framework's lines.
	code, out, _ := runWalbc(t, f.addr, "status")
	require.Equal(t, 0, code)
	require.Contains(t, out, "hostType:archive")
}

func TestWalbcErrorReply(t *testing.T) {
	f := startWalbcFake(t, "storage")
	code, out, errs := runWalbc(t, f.addr, "init-vol", "vol0", "/dev/x")
	require.Equal(t, 1, code)
	require.Empty(t, out)
	require.Contains(t, errs, "volume vol0 is Target")
	require.Contains(t, errs, f.addr+" init-vol vol0 /dev/x")

	code, out, errs = runWalbc(t, f.addr, "-o", "json", "init-vol", "vol0", "/dev/x")
	require.Equal(t, 1, code)
	var obj map[string]any
	require.NoError(t, json.Unmarshal([]byte(out), &obj), out)
	require.Equal(t, "error", obj["reply"])
	require.Equal(t, "wrong-state", obj["code"])
	require.Contains(t, obj["message"], "volume vol0 is Target")
	require.NotEmpty(t, errs)

	// A command the server does not have.
	code, _, errs = runWalbc(t, f.addr, "apply", "vol0", "3")
	require.Equal(t, 1, code)
	require.Contains(t, errs, "unknown command")
}

func TestWalbcJSON(t *testing.T) {
	f := startWalbcFake(t, "archive")
	run := func(args ...string) map[string]any {
		t.Helper()
		code, out, errs := runWalbc(t, f.addr, append([]string{"-o", "json"}, args...)...)
		require.Equal(t, 0, code, errs)
		var obj map[string]any
		require.NoError(t, json.Unmarshal([]byte(out), &obj), out)
		require.Equal(t, f.addr, obj["server"])
		require.Equal(t, args[0], obj["command"])
		return obj
	}
	obj := run("get", "restorable", "vol0", "all")
	require.Equal(t, "ok", obj["reply"])
	require.Equal(t, []any{"3 2024-05-01T12:30:45 1", "5 2024-05-01T12:30:45 0"}, obj["value"])
	require.Equal(t, []any{
		map[string]any{"gid": 3.0, "timestamp": "2024-05-01T12:30:45Z", "explicit": true},
		map[string]any{"gid": 5.0, "timestamp": "2024-05-01T12:30:45Z", "explicit": false},
	}, obj["parsed"])

	obj = run("get", "base", "vol0")
	require.Equal(t, map[string]any{"b": map[string]any{"gidB": 3.0, "gidE": 3.0}, "applying": false, "timestamp": "2024-05-01T12:30:45Z"}, obj["parsed"])
	obj = run("get", "diff", "vol0")
	require.Equal(t, []any{map[string]any{"b": map[string]any{"gidB": 3.0, "gidE": 3.0}, "e": map[string]any{"gidB": 5.0, "gidE": 5.0},
		"mergeable": true, "compDiff": false, "timestamp": "2024-05-01T12:30:45Z", "dataSize": 4096.0}}, obj["parsed"])
	obj = run("get", "latest-snap", "vol0")
	require.Equal(t, []any{map[string]any{"vol": "vol0", "kind": "storage", "gid": 5.0, "lsid": 40.0, "timestamp": "2024-05-01T12:30:45Z"}}, obj["parsed"])
	obj = run("get", "x-record")
	require.Equal(t, map[string]any{"gidB": 2.0, "gidE": 4.0}, obj["value"])
	obj = run("get", "vol-size", "vol0")
	require.Equal(t, 2048.0, obj["value"])
	require.Nil(t, obj["parsed"])
	obj = run("archive-info", "get", "vol0", "a0")
	require.Equal(t, map[string]any{"addr": "a0.example:5002", "compression": "zstd:3:1", "delaySec": 10.0}, obj["parsed"])
	obj = run("restore", "vol0", "3")
	require.Equal(t, "accept", obj["reply"])
	require.Nil(t, obj["value"])
	obj = run("get", "restorable", "vol9")
	require.Contains(t, obj["parseError"], "nonsense")
	require.Equal(t, []any{}, run("version")["args"])
}

func TestWalbcWait(t *testing.T) {
	f := startWalbcFake(t, "archive")
	code, out, errs := runWalbc(t, f.addr, "-wait", "restore", "vol0", "4")
	require.Equal(t, 0, code, errs)
	require.Equal(t, "accept\ndone\n", out)
	f.mu.Lock()
	require.Contains(t, f.restored, "4")
	f.mu.Unlock()

	// A restore that ends without its image fails.
	code, out, errs = runWalbc(t, f.addr, "-wait", "restore", "vol0", "99")
	require.Equal(t, 1, code)
	require.Equal(t, "accept\n", out)
	require.Contains(t, errs, "without reaching its goal")

	// JSON.
	code, out, errs = runWalbc(t, f.addr, "-wait", "-o", "json", "restore", "vol0", "7")
	require.Equal(t, 0, code, errs)
	var obj map[string]any
	require.NoError(t, json.Unmarshal([]byte(out), &obj), out)
	require.Equal(t, true, obj["done"])

	// On a terminal, the progress shows.
	defer func(f func(io.Writer) bool, d time.Duration) { walbcIsTTY, walbcProgressInterval = f, d }(walbcIsTTY, walbcProgressInterval)
	walbcIsTTY = func(io.Writer) bool { return true }
	walbcProgressInterval = 5 * time.Millisecond
	code, out, errs = runWalbc(t, f.addr, "-wait", "restore", "vol0", "8")
	require.Equal(t, 0, code, errs)
	require.Contains(t, out, "restore vol0: Archived  50.0% (1024 / 2048 LB)")
	require.True(t, strings.HasSuffix(out, "\r\033[Kdone\n"), "%q", out)

	// stop -wait on a storage waits for Stopped.
	s := startWalbcFake(t, "storage")
	code, out, errs = runWalbc(t, s.addr, "-wait", "stop", "vol0", "force")
	require.Equal(t, 0, code, errs)
	require.Equal(t, "accept\ndone\n", out)
	s.mu.Lock()
	require.Equal(t, "Stopped", s.state)
	s.mu.Unlock()

	// -wait on a command with nothing to wait for changes nothing.
	code, out, _ = runWalbc(t, s.addr, "-wait", "snapshot", "vol0")
	require.Equal(t, 0, code)
	require.Equal(t, "6\n", out)
}

func TestWalbcBadInput(t *testing.T) {
	for _, tc := range []struct {
		args []string
		msg  string
	}{
		{[]string{"-p", "5000"}, "missing COMMAND"},
		{[]string{"-p", "5000", "frobnicate"}, `unknown command "frobnicate"`},
		{[]string{"-p", "5000", "restore", "vol0"}, "usage: walbc restore VOL GID"},
		{[]string{"-p", "5000", "restore", "vol0", "1", "2"}, "usage: walbc restore VOL GID"},
		{[]string{"-p", "5000", "restore", "vol/0", "1"}, `volume "vol/0"`},
		{[]string{"-p", "5000", "restore", "vol0", "x"}, `"x" is not a number`},
		{[]string{"-p", "5000", "stop", "vol0", "now"}, `"now": want graceful or force or empty`},
		{[]string{"-p", "5000", "resize", "vol0", "12q"}, `bad size "12q"`},
		{[]string{"-p", "5000", "merge", "vol0", "1", "to", "3"}, `"to": want size or gid`},
		{[]string{"-p", "5000", "archive-info", "remove", "vol0", "a0"}, `archive-info "remove"`},
		{[]string{"-p", "5000", "archive-info", "add", "vol0", "a0"}, "archive-info add takes 3 to 5 arguments"},
		{[]string{"-p", "5000", "archive-info", "add", "vol0", "a0", "nohost"}, "want HOST:PORT"},
		{[]string{"-p", "5000", "get"}, "usage: walbc get TARGET"},
		{[]string{"-p", "5000", "shutdown", "now"}, `"now": want graceful or force`},
		{[]string{"-p", "5000", "-o", "xml", "status"}, `-o "xml"`},
		{[]string{"-p", "5000", "-to", "0", "status"}, `-to "0"`},
		{[]string{"-p", "5000", "-retry", "x", "status"}, `-retry "x"`},
		{[]string{"-p", "http", "status"}, `-p "http"`},
		{[]string{"status"}, "-p PORT is required"},
		{[]string{"-a", "unix:/tmp/s", "-p", "1", "status"}, "-p does not go with a unix socket"},
		{[]string{"-x", "status"}, "unknown option -x"},
		{[]string{"-p", "5000", "init-vol", "vol0", ""}, "empty argument"},
		{[]string{"-p", "5000", "-tls-cert", "c.pem", "status"}, "-tls-cert and -tls-key go together"},
	} {
		var out, errb bytes.Buffer
		code := Run(context.Background(), "walbc", Walbc, tc.args, &out, &errb)
		require.Equal(t, 2, code, "%v: %s", tc.args, errb.String())
		require.Contains(t, errb.String(), tc.msg, tc.args)
	}
	var out bytes.Buffer
	require.Equal(t, 0, Run(context.Background(), "walbc", Walbc, []string{"help"}, &out, io.Discard))
	require.Contains(t, out.String(), "full-bkp")
	require.Contains(t, out.String(), "archive-info")
	out.Reset()
	require.Equal(t, 0, Run(context.Background(), "walbc", Walbc, []string{"-h"}, &out, io.Discard))
	require.Contains(t, out.String(), "-retry N")
}

func TestWalbcRetry(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	var n atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			n.Add(1)
			c.Close()
		}
	}()
	for _, tc := range []struct {
		args []string
		want int32
	}{
		{[]string{"status"}, 3},
		{[]string{"-retry", "0", "status"}, 1},
		{[]string{"-retry", "5", "get", "state", "vol0"}, 6},
		{[]string{"-retry", "5", "snapshot", "vol0"}, 1},
	} {
		n.Store(0)
		code, _, _ := runWalbc(t, ln.Addr().String(), tc.args...)
		require.Equal(t, 1, code)
		require.Equal(t, tc.want, n.Load(), tc.args)
	}
}

// TestWalbcRealArchive runs walbc against the real archive server: the
// value types of its get targets are the ones walbc expects.
func TestWalbcRealArchive(t *testing.T) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	ctx := context.Background()
	dir := t.TempDir()
	require.NoError(t, os.Mkdir(filepath.Join(dir, "images"), 0o755))
	require.NoError(t, os.Mkdir(filepath.Join(dir, "base"), 0o755))
	store, err := imagestore.OpenDir(ctx, filepath.Join(dir, "images"), &imagestore.DirOptions{Logger: quiet})
	require.NoError(t, err)
	as, err := archive.NewServer(server.Config{ID: "a0", Addr: "127.0.0.1:0", Logger: quiet},
		archive.Config{BaseDir: filepath.Join(dir, "base"), Images: store, Logger: quiet})
	require.NoError(t, err)
	require.NoError(t, as.Listen())
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- as.Run(rctx) }()
	defer func() {
		cancel()
		<-done
	}()
	addr := as.Addr().String()
	for _, tc := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"get", "host-type"}, 0, "archive\n"},
		{[]string{"init-vol", "vol0"}, 0, ""},
		{[]string{"get", "state", "vol0"}, 0, "SyncReady\n"},
		{[]string{"get", "vol"}, 0, "vol0\n"},
		{[]string{"get", "restorable", "vol0"}, 0, ""},
		{[]string{"get", "num-diff", "vol0"}, 0, "0\n"},
		{[]string{"get", "total-diff-size", "vol0"}, 0, "0\n"},
		{[]string{"get", "exists-base-image", "vol0"}, 0, "0\n"},
		{[]string{"get", "restored", "vol0"}, 0, ""},
		{[]string{"get", "diff", "vol0"}, 0, ""},
		{[]string{"get", "progress", "vol0"}, 0, "0\n"},
		{[]string{"get", "num-action", "vol0", "Apply"}, 0, "0\n"},
		{[]string{"get", "all-actions"}, 0, ""},
		{[]string{"init-vol", "vol0"}, 1, ""},
		{[]string{"get", "no-such-target"}, 1, ""},
		{[]string{"stop", "vol0", "empty"}, 1, ""},
		{[]string{"clear-vol", "vol0"}, 0, ""},
		{[]string{"get", "state", "vol0"}, 0, "Clear\n"},
	} {
		code, out, errs := runWalbc(t, addr, tc.args...)
		require.Equal(t, tc.code, code, "%v: %s", tc.args, errs)
		if tc.code == 0 {
			require.Equal(t, tc.want, out, tc.args)
		}
	}
	code, out, _ := runWalbc(t, addr, "-o", "json", "get", "restorable", "vol0")
	require.Equal(t, 0, code)
	require.JSONEq(t, `{"server":"`+addr+`","command":"get","args":["restorable","vol0"],"reply":"ok","value":[],"parsed":[]}`, out)
}
