package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// walbcGroupFakes is a backup group of walbc fakes: s0, p0, a0 and a1.
type walbcGroupFakes struct {
	s0, p0, a0, a1 *walbcFake
	layout         []string
}

func startWalbcGroup(t *testing.T) *walbcGroupFakes {
	g := &walbcGroupFakes{
		s0: startWalbcFake(t, "storage"), p0: startWalbcFake(t, "proxy"),
		a0: startWalbcFake(t, "archive"), a1: startWalbcFake(t, "archive"),
	}
	g.layout = []string{"-storage", "s0=" + g.s0.addr, "-proxy", "p0=" + g.p0.addr, "-archive", "a0=" + g.a0.addr + ",a1=" + g.a1.addr}
	return g
}

// run runs walbc in group mode with options opts before the layout.
func (g *walbcGroupFakes) run(t *testing.T, opts []string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	all := append(append(append([]string{"-id", "test"}, opts...), g.layout...), args...)
	code = Run(ctx, "walbc", Walbc, all, &out, &errb)
	return code, out.String(), errb.String()
}

func TestWalbcGroupReplicate(t *testing.T) {
	g := startWalbcGroup(t)
	for _, tc := range []struct {
		args []string
		out  string
		sent string // the replicate a0 got
	}{
		{[]string{"replicate-once", "a0", "vol0", "a1"}, "3\n", "replicate vol0 gid 3 " + g.a1.addr + " 0 0"},
		{[]string{"replicate-once", "a0", "vol0", "a1", "-gid", "5", "-dont-merge", "-cmpr", "zstd:3:1", "-max-merge", "512M", "-bulk", "256K"},
			"5\n", "replicate vol0 gid 5 " + g.a1.addr + " 0 1 zstd:3:1 512M 256K"},
		{[]string{"replicate-once", "-resync", "a0", "vol0", "a1", "-bulk", "128K"}, "3\n", "replicate vol0 gid 3 " + g.a1.addr + " 1 0 snappy:0:1 1G 128K"},
		{[]string{"replicate", "a0", "vol0", "a1"}, "3\n", "replicate vol0 gid 3 " + g.a1.addr + " 0 0"},
	} {
		code, out, errs := g.run(t, nil, tc.args...)
		require.Equal(t, 0, code, "%v: %s", tc.args, errs)
		require.Equal(t, tc.out, out, tc.args)
		require.Contains(t, g.a0.commands(), tc.sent, tc.args)
		require.Empty(t, g.a1.commands(), "a1 is Archived of the same lineage and size: nothing to change")
	}

	// Not waiting, then waiting.
	code, out, errs := g.run(t, nil, "replicate-once-nbk", "a0", "vol0", "a1", "-gid", "5")
	require.Equal(t, 0, code, errs)
	require.Equal(t, "5\n", out)
	g.a0.mu.Lock()
	require.Equal(t, 1, g.a0.actions["ReplSyncAsClient"], "replicate-once-nbk returns while it runs")
	g.a0.mu.Unlock()
	code, out, errs = g.run(t, nil, "wait-for-replicated", "a0", "vol0", "a1", "5")
	require.Equal(t, 0, code, errs)
	require.Empty(t, out)
	g.a0.mu.Lock()
	require.Equal(t, 0, g.a0.actions["ReplSyncAsClient"])
	g.a0.mu.Unlock()

	// A gid a1 never reaches, and one a0 does not have.
	code, _, errs = g.run(t, nil, "wait-for-replicated", "a0", "vol0", "a1", "9")
	require.Equal(t, 1, code)
	require.Contains(t, errs, "ended without reaching gid 9")
	g.a0.commands()
	code, _, errs = g.run(t, nil, "replicate-once", "a0", "vol0", "a1", "-gid", "6")
	require.Equal(t, 1, code)
	require.Contains(t, errs, "newer than its newest clean snapshot 5")
	for _, c := range g.a0.commands() {
		require.False(t, strings.HasPrefix(c, "replicate"), c)
	}

	// JSON, success and failure.
	code, out, errs = g.run(t, []string{"-o", "json"}, "replicate-once", "a0", "vol0", "a1")
	require.Equal(t, 0, code, errs)
	require.JSONEq(t, `{"command":"replicate-once","args":["a0","vol0","a1"],"reply":"ok","value":3,"done":true}`, out)
	code, out, _ = g.run(t, []string{"-o", "json"}, "replicate-once", "a0", "vol0", "a1", "-gid", "6")
	require.Equal(t, 1, code)
	var obj map[string]any
	require.NoError(t, json.Unmarshal([]byte(out), &obj), out)
	require.Equal(t, "error", obj["reply"])
	require.Contains(t, obj["error"], "newest clean snapshot")
	require.NotContains(t, obj, "server")

	// On a terminal, both archives' progress shows while it runs.
	defer func(f func(io.Writer) bool, d time.Duration) { walbcIsTTY, walbcProgressInterval = f, d }(walbcIsTTY, walbcProgressInterval)
	walbcIsTTY = func(io.Writer) bool { return true }
	walbcProgressInterval = 5 * time.Millisecond
	code, out, errs = g.run(t, nil, "replicate-once", "a0", "vol0", "a1")
	require.Equal(t, 0, code, errs)
	require.Regexp(t, `replicate-once vol0: a0 Archived +\d+\.\d% \(\d+ / 2048 LB\), a1 Archived +0\.0% \(0 / 2048 LB\)`, out)
	require.True(t, strings.HasSuffix(out, "\r\033[K3\n"), "%q", out)
	// A command that does not wait shows nothing.
	code, out, errs = g.run(t, nil, "replicate-once-nbk", "a0", "vol0", "a1")
	require.Equal(t, 0, code, errs)
	require.Equal(t, "3\n", out)
}

func TestWalbcGroupQueries(t *testing.T) {
	g := startWalbcGroup(t)
	for _, tc := range []struct {
		args []string
		out  string
	}{
		{[]string{"is-overflow", "s0", "vol0"}, "0\n"},
		{[]string{"is-wdiff-send-error", "p0", "vol0", "a1"}, "1\n"},
		{[]string{"is-wdiff-send-error", "p0", "vol0", "a0"}, "0\n"},
		// The fake proxy lists a0 and a1 for every volume.
		{[]string{"is-synchronizing", "a1", "vol0"}, "1\n"},
	} {
		code, out, errs := g.run(t, nil, tc.args...)
		require.Equal(t, 0, code, "%v: %s", tc.args, errs)
		require.Equal(t, tc.out, out, tc.args)
	}
	code, out, errs := g.run(t, []string{"-o", "json"}, "is-overflow", "s0", "vol0")
	require.Equal(t, 0, code, errs)
	require.JSONEq(t, `{"command":"is-overflow","args":["s0","vol0"],"reply":"ok","value":false,"done":true}`, out)
}

func TestWalbcGroupBadInput(t *testing.T) {
	g := startWalbcGroup(t)
	for _, tc := range []struct {
		opts []string
		args []string
		msg  string
	}{
		{nil, []string{"replicate-once", "a0", "vol0", "a9"}, `no archive named "a9"`},
		{nil, []string{"replicate-once", "s0", "vol0", "a1"}, `no archive named "s0"`},
		{nil, []string{"replicate-once", "a0", "vol/0", "a1"}, `volume "vol/0"`},
		{nil, []string{"replicate-once", "a0", "vol0"}, "missing ADST"},
		{nil, []string{"replicate-once", "a0", "vol0", "a1", "x"}, `unexpected argument "x"`},
		{nil, []string{"replicate-once", "a0", "vol0", "a1", "-gid", "0"}, `-gid "0"`},
		{nil, []string{"replicate-once", "a0", "vol0", "a1", "-gid", "x"}, `-gid "x"`},
		{nil, []string{"replicate-once", "a0", "vol0", "a1", "-cmpr", "lz9"}, `-cmpr "lz9"`},
		{nil, []string{"replicate-once", "a0", "vol0", "a1", "-bulk", "1q"}, `bad size "1q"`},
		{nil, []string{"replicate-once", "a0", "vol0", "a1", "-frob"}, "unknown option -frob"},
		{nil, []string{"synchronize", "a0", "vol0", "a1", "-delay", "soon"}, `-delay "soon"`},
		{nil, []string{"wait-for-replicated", "a0", "vol0", "a1", "g"}, `"g" is not a number`},
		{nil, []string{"is-wdiff-send-error", "p0", "vol0", "p0"}, `no archive named "p0"`},
		{nil, []string{"go-standby", "a0", "vol0"}, `no storage named "a0"`},
		{nil, []string{"resize", "vol0", "1000k"}, "whole number of MiB"},
		{nil, []string{"resize", "vol0", "0"}, "whole number of MiB"},
		{nil, []string{"resize", "vol0", "4m", "zero"}, `"zero": want zeroclear`},
		{nil, []string{"resize", "vol0", "4m", "zeroclear", "x"}, `unexpected argument "x"`},
		{nil, []string{"status"}, "status is a server command"},
		{nil, []string{"frobnicate"}, `unknown group command "frobnicate"`},
		{nil, []string{"copy-archive-info", "p0", "vol0", ""}, "empty argument"},
		{[]string{"-a", "h", "-p", "1"}, []string{"is-overflow", "s0", "vol0"}, "-a and -p name one server"},
		{[]string{"-archive", "a2"}, []string{"is-overflow", "s0", "vol0"}, "want NAME=HOST:PORT"},
		{[]string{"-proxy", "a0=h:1"}, []string{"is-overflow", "s0", "vol0"}, `two servers are named "a0"`},
		{[]string{"-o", "yaml"}, []string{"is-overflow", "s0", "vol0"}, `-o "yaml"`},
	} {
		// opts come after the layout: a later -proxy or -archive replaces
		// the layout's.
		var out, errb bytes.Buffer
		all := append(append(append([]string{"-id", "test"}, g.layout...), tc.opts...), tc.args...)
		code := Run(context.Background(), "walbc", Walbc, all, &out, &errb)
		require.Equal(t, 2, code, "%v %v: %s", tc.opts, tc.args, errb.String())
		require.Contains(t, errb.String(), tc.msg, tc.args)
	}
	for _, f := range []*walbcFake{g.s0, g.p0, g.a0, g.a1} {
		require.Empty(t, f.commands(), "usage errors send nothing")
	}

	// A group command without the group.
	var out, errb bytes.Buffer
	code := Run(context.Background(), "walbc", Walbc, []string{"-p", "1", "replicate-once", "a0", "vol0", "a1"}, &out, &errb)
	require.Equal(t, 2, code)
	require.Contains(t, errb.String(), "replicate-once is a group command")

	// Help lists both.
	out.Reset()
	require.Equal(t, 0, Run(context.Background(), "walbc", Walbc, []string{"help"}, &out, io.Discard))
	for _, c := range []string{"hash-bkp", "replicate-once", "synchronize", "stop-synchronizing", "wait-for-replicated", "go-standby"} {
		require.Contains(t, out.String(), c)
	}
	out.Reset()
	code = Run(context.Background(), "walbc", Walbc, append(append([]string{}, g.layout...), "replicate-once", "-h"), &out, io.Discard)
	require.Equal(t, 0, code)
	require.Contains(t, out.String(), "usage: walbc replicate-once [options] ASRC VOL ADST")
	require.Contains(t, out.String(), "-dont-merge")
}

func TestWalbcServerReplicateAndBHash(t *testing.T) {
	a0, a1 := startWalbcFake(t, "archive"), startWalbcFake(t, "archive")
	code, out, errs := runWalbc(t, a0.addr, "bhash", "vol0", "3", "64K")
	require.Equal(t, 0, code, errs)
	require.Equal(t, "0000000000000000\t00112233\n0000000000000080\t44556677\n", out)
	require.Equal(t, []string{"bhash vol0 3 64K"}, a0.commands())

	// -wait by gid checks the target at the address given.
	code, out, errs = runWalbc(t, a0.addr, "-wait", "replicate", "vol0", "gid", "5", a1.addr)
	require.Equal(t, 0, code, errs)
	require.Equal(t, "accept\ndone\n", out)
	code, out, errs = runWalbc(t, a0.addr, "-wait", "replicate", "vol0", "gid", "7", a1.addr, "0", "1")
	require.Equal(t, 1, code)
	require.Equal(t, "accept\n", out)
	require.Contains(t, errs, "without reaching gid 7")
	// By size, the action's end is all there is to wait for.
	code, out, errs = runWalbc(t, a0.addr, "-wait", "replicate", "vol0", "size", "0", "unix:/nowhere")
	require.Equal(t, 0, code, errs)
	require.Equal(t, "accept\ndone\n", out)
	require.Equal(t, []string{"replicate vol0 gid 5 " + a1.addr, "replicate vol0 gid 7 " + a1.addr + " 0 1",
		"replicate vol0 size 0 unix:/nowhere"}, a0.commands())
}

func TestWalbcBackupProgress(t *testing.T) {
	a0, s0 := startWalbcFake(t, "archive"), startWalbcFake(t, "storage")
	s0.mu.Lock()
	s0.archive, s0.progress = a0.addr, 1024
	s0.mu.Unlock()
	a0.mu.Lock()
	a0.progress = 1536
	a0.mu.Unlock()
	defer func(f func(io.Writer) bool, d time.Duration) { walbcIsTTY, walbcProgressInterval = f, d }(walbcIsTTY, walbcProgressInterval)
	walbcIsTTY = func(io.Writer) bool { return true }
	walbcProgressInterval = 5 * time.Millisecond
	// The storage counts what it has read, over its device's size.
	code, out, errs := runWalbc(t, s0.addr, "-wait", "hash-bkp", "vol0")
	require.Equal(t, 0, code, errs)
	require.Contains(t, out, "hash-bkp vol0: HashSync  25.0% (1024 / 4096 LB)")
	require.True(t, strings.HasSuffix(out, "\r\033[Kdone\n"), "%q", out)

	// A storage that does not: its archive's count.
	s0.mu.Lock()
	s0.noProgress = true
	s0.mu.Unlock()
	code, out, errs = runWalbc(t, s0.addr, "-wait", "hash-bkp", "vol0")
	require.Equal(t, 0, code, errs)
	require.Contains(t, out, "hash-bkp vol0: Archived  75.0% (1536 / 2048 LB)")
}
