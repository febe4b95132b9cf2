package cli

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pkg/errors"
	"golang.org/x/sys/unix"

	"github.com/walb-go/walb/controller"
	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/server"
	"github.com/walb-go/walb/wire"
)

// walbc sends one command to one walb server (system.md §9):
//
//	walbc -a HOST -p PORT [-to S] [-id ID] [-retry N] [-o text|json] [-wait] COMMAND ARGS...
//
// or, given a backup group's servers, runs a controller operation on them
// (group mode, walbcgroup.go):
//
//	walbc -storage NAME=HOST:PORT,... -proxy ... -archive ... [options] COMMAND ARGS...
//
// Its options come before the command; everything after the command is the
// command's arguments, checked here before anything is sent.

// walbcIsTTY reports whether w is a terminal; tests replace it.
var walbcIsTTY = func(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// walbcProgressInterval is the refresh period of the progress line.
var walbcProgressInterval = 500 * time.Millisecond

// walbcEnv is one walbc run: its options, client and output.
type walbcEnv struct {
	stdout, stderr io.Writer
	addr           string
	opts           controller.Options
	client         *controller.Client
	json           bool
	wait           bool
	cmd            string
	args           []string
}

// walbcCommand describes one command: its arguments, its reply and, for
// long commands, how -wait knows it is over.
type walbcCommand struct {
	name, params, help string
	min, max           int // argument counts; max < 0: unlimited
	reply              wire.Reply
	value              func(args []string) controller.ValueType
	optional           bool // the value may be missing (older servers)
	retry              bool // status and get
	check              func(args []string) error
	wait               walbcWaitFunc
	progress           bool // -wait shows get progress VOL
}

// walbcWaitFunc waits for the end of a long command on server s; prev is
// the volume's state before a stop.
type walbcWaitFunc func(ctx context.Context, c *controller.Controller, s controller.Server, e *walbcEnv, prev string) error

func valueOf(t controller.ValueType) func([]string) controller.ValueType {
	return func([]string) controller.ValueType { return t }
}

var walbcCommands []walbcCommand

func init() {
	none := valueOf(controller.NoValue)
	ok, accept := wire.ReplyOK, wire.ReplyAccept
	walbcCommands = []walbcCommand{
		{name: "status", params: "[VOL]", help: "Print the server's status, or a volume's.", max: 1, reply: ok,
			value: valueOf(controller.StringsValue), retry: true, check: optVolArg},
		{name: "get", params: "TARGET [ARGS...]", help: "Print a value (get targets: see system.md §3.8, §4.7, §5.10).", min: 1, max: -1, reply: ok,
			value: func(a []string) controller.ValueType { return controller.GetTargetType(a[0]) }, retry: true},
		{name: "version", help: "Print the server's version.", reply: ok, value: valueOf(controller.StringValue)},
		{name: "init-vol", params: "VOL [WDEV]", help: "Create a volume (a storage needs its WalB device).", min: 1, max: 2, reply: ok, value: none, check: volArg},
		{name: "clear-vol", params: "VOL", help: "Delete a volume.", min: 1, max: 1, reply: ok, value: none, check: volArg},
		{name: "reset-vol", params: "VOL [GID]", help: "Reset a volume to SyncReady.", min: 1, max: 2, reply: ok, value: none,
			check: all(volArg, gidArgs(1))},
		{name: "start", params: "VOL [target|standby]", help: "Start a volume.", min: 1, max: 2, reply: ok, value: none,
			check: all(volArg, wordArg(1, "target", "standby"))},
		{name: "stop", params: "VOL [graceful|force|empty]", help: "Stop a volume (empty: proxies only).", min: 1, max: 2, reply: accept, value: none,
			check: all(volArg, wordArg(1, "graceful", "force", "empty")), wait: waitStop},
		{name: "resize", params: "VOL SIZE [zeroclear]", help: "Grow a volume (SIZE in bytes, k/m/g/t/p suffixes).", min: 2, max: 3, reply: ok, value: none,
			check: all(volArg, sizeArg(1), wordArg(2, "zeroclear"))},
		{name: "full-bkp", params: "VOL [BULK]", help: "Full backup from a storage to its archive.", min: 1, max: 2, reply: accept, value: none,
			check: all(volArg, sizeArg(1)), wait: waitBackup, progress: true},
		{name: "hash-bkp", params: "VOL [BULK]", help: "Hash backup from a storage to its archive.", min: 1, max: 2, reply: accept, value: none,
			check: all(volArg, sizeArg(1)), wait: waitBackup, progress: true},
		{name: "snapshot", params: "VOL", help: "Take a snapshot; prints its gid.", min: 1, max: 1, reply: ok, value: valueOf(controller.U64Value), check: volArg},
		{name: "disable-snapshot", params: "VOL GID...", help: "Make snapshots implicit (mergeable).", min: 2, max: -1, reply: ok, value: none,
			check: all(volArg, gidArgs(1))},
		{name: "enable-snapshot", params: "VOL GID...", help: "Make snapshots explicit again.", min: 2, max: -1, reply: ok, value: none,
			check: all(volArg, gidArgs(1))},
		{name: "restore", params: "VOL GID", help: "Restore a snapshot on an archive.", min: 2, max: 2, reply: accept, value: none,
			check: all(volArg, gidArgs(1)), wait: waitRestore, progress: true},
		{name: "del-restored", params: "VOL GID", help: "Delete a restored image.", min: 2, max: 2, reply: ok, value: none, check: all(volArg, gidArgs(1))},
		{name: "del-cold", params: "VOL GID", help: "Delete a cold snapshot (thin mode).", min: 2, max: 2, reply: ok, value: none, check: all(volArg, gidArgs(1))},
		{name: "apply", params: "VOL GID", help: "Apply diffs up to GID into the base image.", min: 2, max: 2, reply: accept, value: none,
			check: all(volArg, gidArgs(1)), wait: waitApply, progress: true},
		{name: "merge", params: "VOL GIDB size MB | VOL GIDB gid GIDE", help: "Merge diffs.", min: 4, max: 4, reply: accept, value: none,
			check: all(volArg, numArg(1), wordArg(2, "size", "gid"), numArg(3)), wait: waitMerge, progress: true},
		{name: "gc-diff", params: "VOL", help: "Remove diffs off the base chain; prints how many.", min: 1, max: 1, reply: ok,
			value: valueOf(controller.U64Value), optional: true, check: volArg},
		{name: "replicate", params: "VOL gid|size N ADDR:PORT [DORESYNC DONTMERGE CMPR MAXMERGE BULK]", help: "Replicate to another archive (-wait: until it has reached gid N).",
			min: 4, max: 9, reply: accept, value: none, check: all(volArg, wordArg(1, "gid", "size"), numArg(2), hostPortArg(3)), wait: waitReplicate, progress: true},
		{name: "archive-info", params: "add|update VOL NAME ADDR:PORT [CMPR [DELAY]] | delete|get VOL NAME | list VOL",
			help: "Manage a proxy's archive infos.", min: 2, max: 6, reply: ok, value: archiveInfoValue, check: checkArchiveInfo},
		{name: "kick", params: "[VOL [ARCHIVE]]", help: "Retry delayed work now.", max: 2, reply: ok, value: none, check: optVolArg},
		{name: "set-full-scan-bps", params: "BPS", help: "Throttle backup reads (0: unlimited).", min: 1, max: 1, reply: ok, value: none, check: sizeArg(0)},
		{name: "bhash", params: "VOL GID [BULK [SIZE]]", help: "Print the block hash of a snapshot (with BULK: ADDR<TAB>HASH per bulk).", min: 2, max: 4, reply: ok,
			value: valueOf(controller.StringsValue), check: all(volArg, numArg(1), sizeArg(2), sizeArg(3))},
		{name: "exec", params: "ARGS...", help: "Run a command on the server's host (servers started with -allow-exec).", min: 1, max: -1, reply: ok,
			value: valueOf(controller.StringsValue)},
		{name: "shutdown", params: "[graceful|force]", help: "Shut the server down.", max: 1, reply: accept, value: none,
			check: wordArg(0, "graceful", "force"), wait: waitShutdown},
		{name: "sleep", params: "[SECONDS]", help: "Sleep on the server (tests).", max: 1, reply: ok, value: none},
		{name: "handler-stat", help: "Print per-command statistics and reset them.", reply: ok, value: valueOf(controller.StringsValue)},
	}
}

func lookupWalbc(name string) *walbcCommand {
	for i := range walbcCommands {
		if walbcCommands[i].name == name {
			return &walbcCommands[i]
		}
	}
	return nil
}

// --- argument checks -------------------------------------------------------

func all(checks ...func([]string) error) func([]string) error {
	return func(a []string) error {
		for _, c := range checks {
			if err := c(a); err != nil {
				return err
			}
		}
		return nil
	}
}

func volArg(a []string) error {
	if err := server.ValidateVolumeName(a[0]); err != nil {
		return errors.Wrapf(ErrUsage, "volume %q: 1 to 64 characters of [0-9A-Za-z-]", a[0])
	}
	return nil
}

func optVolArg(a []string) error {
	if len(a) == 0 {
		return nil
	}
	return volArg(a)
}

// gidArgs checks that every argument from i on is a gid.
func gidArgs(i int) func([]string) error {
	return func(a []string) error {
		for _, g := range a[min(i, len(a)):] {
			if _, err := strconv.ParseUint(g, 10, 64); err != nil {
				return errors.Wrapf(ErrUsage, "%q is not a number", g)
			}
		}
		return nil
	}
}

// numArg checks that argument i, if present, is a number.
func numArg(i int) func([]string) error {
	return func(a []string) error {
		if i >= len(a) {
			return nil
		}
		return gidArgs(0)(a[i : i+1])
	}
}

// hostPortArg checks that argument i, if present, is HOST:PORT or
// unix:PATH.
func hostPortArg(i int) func([]string) error {
	return func(a []string) error {
		if i >= len(a) {
			return nil
		}
		if p, ok := strings.CutPrefix(a[i], "unix:"); ok && p != "" {
			return nil
		}
		if _, _, err := net.SplitHostPort(a[i]); err != nil {
			return errors.Wrapf(ErrUsage, "address %q: want HOST:PORT or unix:PATH", a[i])
		}
		return nil
	}
}

// wordArg checks that argument i, if present, is one of words.
func wordArg(i int, words ...string) func([]string) error {
	return func(a []string) error {
		if i >= len(a) {
			return nil
		}
		for _, w := range words {
			if a[i] == w {
				return nil
			}
		}
		return errors.Wrapf(ErrUsage, "%q: want %s", a[i], strings.Join(words, " or "))
	}
}

// sizeArg checks that argument i, if present, is a size.
func sizeArg(i int) func([]string) error {
	return func(a []string) error {
		if i >= len(a) {
			return nil
		}
		_, err := parseSizeP(a[i])
		return err
	}
}

// parseSizeP is ParseSize with walb-tools' p (PiB) suffix too.
func parseSizeP(s string) (uint64, error) {
	if n := len(s); n > 1 && (s[n-1] == 'p' || s[n-1] == 'P') {
		v, err := strconv.ParseUint(s[:n-1], 10, 64)
		if err != nil || v > (^uint64(0))>>50 {
			return 0, errors.Wrapf(ErrUsage, "bad size %q", s)
		}
		return v << 50, nil
	}
	return ParseSize(s)
}

func archiveInfoValue(a []string) controller.ValueType {
	switch a[0] {
	case "get":
		return controller.StringValue
	case "list":
		return controller.StringsValue
	}
	return controller.NoValue
}

func checkArchiveInfo(a []string) error {
	n := map[string][2]int{"add": {4, 6}, "update": {4, 6}, "delete": {3, 3}, "get": {3, 3}, "list": {2, 2}}
	r, ok := n[a[0]]
	if !ok {
		return errors.Wrapf(ErrUsage, "archive-info %q: want add, update, delete, get or list", a[0])
	}
	if len(a) < r[0] || len(a) > r[1] {
		return errors.Wrapf(ErrUsage, "archive-info %s takes %d to %d arguments", a[0], r[0]-1, r[1]-1)
	}
	if err := volArg(a[1:]); err != nil {
		return err
	}
	if len(a) > 2 {
		if err := server.ValidateVolumeName(a[2]); err != nil {
			return errors.Wrapf(ErrUsage, "archive name %q: 1 to 64 characters of [0-9A-Za-z-]", a[2])
		}
	}
	if len(a) > 3 {
		if _, _, err := net.SplitHostPort(a[3]); err != nil {
			return errors.Wrapf(ErrUsage, "archive address %q: want HOST:PORT", a[3])
		}
	}
	if len(a) > 5 {
		if _, err := strconv.ParseUint(a[5], 10, 32); err != nil {
			return errors.Wrapf(ErrUsage, "delay %q: want seconds", a[5])
		}
	}
	return nil
}

// --- main ------------------------------------------------------------------

// Walbc is the walbc command: it sends one command to one server and prints
// the answer like walb-tools' walbc (values one per line), or as one JSON
// object with -o json; or, in group mode, runs a controller operation on a
// backup group. An error exits with status 1.
func Walbc(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	o := NewOptions("walbc", "Send one command to a walb storage, proxy or archive server, "+
		"or run a controller operation on a backup group (-storage, -proxy, -archive).")
	var host, port, to, id, retry, out, caFile, certFile, keyFile, tlsName string
	var storages, proxies, archives string
	var wait, debug, useTLS bool
	o.String(&host, "a", "HOST", "", "server host (or HOST:PORT, or unix:/path; default localhost)")
	o.String(&port, "p", "PORT", "", "server port")
	o.String(&to, "to", "SECONDS", "10", "I/O timeout of each message")
	o.String(&id, "id", "ID", "", "client id in the server's logs (default: host name)")
	o.String(&retry, "retry", "N", strconv.Itoa(controller.DefaultRetries), "retries of status and get after a connection failure")
	o.String(&out, "o", "FORMAT", "text", "output: text or json")
	o.Bool(&wait, "wait", "wait until a long command (full-bkp, restore, apply, merge, stop, ...) is done; shows progress on a terminal")
	o.Bool(&debug, "debug", "log each connection to stderr")
	o.Bool(&useTLS, "tls", "use TLS (the system's CAs unless -tls-ca)")
	o.String(&caFile, "tls-ca", "PEM", "", "CA certificates for the server's certificate (implies -tls)")
	o.String(&certFile, "tls-cert", "PEM", "", "client certificate (implies -tls)")
	o.String(&keyFile, "tls-key", "PEM", "", "client key")
	o.String(&tlsName, "tls-name", "NAME", "", "server name to verify (default: HOST)")
	o.String(&storages, "storage", "NAME=HOST:PORT,...", "", "group mode: the storages")
	o.String(&proxies, "proxy", "NAME=HOST:PORT,...", "", "group mode: the proxies, in priority order")
	o.String(&archives, "archive", "NAME=HOST:PORT,...", "", "group mode: the archives, the primary first")
	o.Param(new(string), "COMMAND", "the command; ARGS follow it (run walbc help)", false)

	// The options end at the command: what follows belongs to it.
	split := len(args)
	for i := 0; i < len(args); i++ {
		if !isOption(args[i]) || args[i] == "--" {
			split = i
			break
		}
		op := o.lookup(strings.TrimLeft(args[i], "-"))
		if op != nil && op.kind != kindBool {
			i++
		}
	}
	rest := args[split:]
	if len(rest) > 0 && rest[0] == "--" {
		rest = rest[1:]
	}
	head := args[:split:split]
	if len(rest) > 0 {
		head = append(head, rest[0])
	}
	if err := parse(o, head, stdout); err != nil {
		if errors.Is(err, ErrHelp) {
			walbcHelp(stdout)
		}
		return err
	}
	if rest[0] == "help" {
		o.Usage(stdout)
		walbcHelp(stdout)
		return nil
	}
	f := walbcFlags{to: to, id: id, retry: retry, out: out, caFile: caFile, certFile: certFile, keyFile: keyFile,
		tlsName: tlsName, debug: debug, useTLS: useTLS}
	if storages != "" || proxies != "" || archives != "" {
		return walbcGroupMain(ctx, f, host, port, storages, proxies, archives, rest, stdout, stderr)
	}
	cmd := lookupWalbc(rest[0])
	if cmd == nil {
		if lookupWalbcGroup(rest[0]) != nil {
			return errors.Wrapf(ErrUsage, "%s is a group command: give the servers with -storage, -proxy, -archive", rest[0])
		}
		return errors.Wrapf(ErrUsage, "unknown command %q (walbc help lists them)", rest[0])
	}
	cargs := rest[1:]
	if len(cargs) < cmd.min || (cmd.max >= 0 && len(cargs) > cmd.max) {
		return errors.Wrapf(ErrUsage, "usage: walbc %s %s", cmd.name, cmd.params)
	}
	for _, a := range cargs {
		if a == "" {
			return errors.Wrapf(ErrUsage, "%s: empty argument", cmd.name)
		}
	}
	if cmd.check != nil {
		if err := cmd.check(cargs); err != nil {
			return errors.WithMessagef(err, "%s", cmd.name)
		}
	}

	e := &walbcEnv{stdout: stdout, stderr: stderr, cmd: cmd.name, args: cargs, wait: wait}
	if err := f.apply(e); err != nil {
		return err
	}
	var err error
	if e.addr, err = walbcAddr(host, port); err != nil {
		return err
	}
	e.client = controller.NewClient(e.addr, &e.opts)
	return e.run(ctx, cmd)
}

// walbcFlags are the options both modes share.
type walbcFlags struct {
	to, id, retry, out, caFile, certFile, keyFile, tlsName string
	debug, useTLS                                          bool
}

// apply checks the options and sets e's output mode and controller
// options.
func (f walbcFlags) apply(e *walbcEnv) error {
	switch f.out {
	case "text":
	case "json":
		e.json = true
	default:
		return errors.Wrapf(ErrUsage, "-o %q: want text or json", f.out)
	}
	wo := &wire.Options{}
	secs, err := strconv.ParseFloat(f.to, 64)
	if err != nil || secs <= 0 || secs > 86400 {
		return errors.Wrapf(ErrUsage, "-to %q: want seconds in (0, 86400]", f.to)
	}
	wo.IOTimeout = time.Duration(secs * float64(time.Second))
	if f.useTLS || f.caFile != "" || f.certFile != "" {
		if wo.TLS, err = walbcTLS(f.caFile, f.certFile, f.keyFile, f.tlsName); err != nil {
			return err
		}
	}
	retries, err := strconv.Atoi(f.retry)
	if err != nil || retries < 0 {
		return errors.Wrapf(ErrUsage, "-retry %q: want a count", f.retry)
	}
	if retries == 0 {
		retries = -1 // none
	}
	id := f.id
	if id == "" {
		if id, err = os.Hostname(); err != nil || id == "" {
			id = "walbc"
		}
	}
	level := slog.LevelWarn
	if f.debug {
		level = slog.LevelDebug
	}
	e.opts = controller.Options{ClientID: id, Wire: wo, Retries: retries,
		Logger: slog.New(server.NewLogHandler(e.stderr, level))}
	return nil
}

// walbcGroupMain runs walbc in group mode: rest is the command and its
// arguments.
func walbcGroupMain(ctx context.Context, f walbcFlags, host, port, storages, proxies, archives string, rest []string,
	stdout, stderr io.Writer) error {
	if host != "" || port != "" {
		return errors.Wrap(ErrUsage, "-a and -p name one server; group commands take theirs from -storage, -proxy and -archive")
	}
	cmd := lookupWalbcGroup(rest[0])
	if cmd == nil {
		if lookupWalbc(rest[0]) != nil {
			return errors.Wrapf(ErrUsage, "%s is a server command: give the server with -a and -p", rest[0])
		}
		return errors.Wrapf(ErrUsage, "unknown group command %q (walbc help lists them)", rest[0])
	}
	layout, err := parseLayout(storages, proxies, archives)
	if err != nil {
		return err
	}
	for _, a := range rest[1:] {
		if a == "" {
			return errors.Wrapf(ErrUsage, "%s: empty argument", cmd.name)
		}
	}
	e := &walbcEnv{stdout: stdout, stderr: stderr, cmd: cmd.name, args: rest[1:]}
	if err := f.apply(e); err != nil {
		return err
	}
	return e.runGroup(ctx, layout, cmd)
}

func walbcAddr(host, port string) (string, error) {
	if host == "" {
		host = "localhost"
	}
	switch {
	case strings.HasPrefix(host, "unix:"):
		if port != "" {
			return "", errors.Wrap(ErrUsage, "-p does not go with a unix socket")
		}
		return host, nil
	case port == "":
		if _, _, err := net.SplitHostPort(host); err == nil {
			return host, nil
		}
		return "", errors.Wrap(ErrUsage, "-p PORT is required")
	}
	p, err := strconv.ParseUint(port, 10, 16)
	if err != nil || p == 0 {
		return "", errors.Wrapf(ErrUsage, "-p %q: want a port number", port)
	}
	return net.JoinHostPort(host, port), nil
}

func walbcTLS(caFile, certFile, keyFile, name string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: name}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, errors.Wrapf(ErrUsage, "-tls-ca %s: no certificate", caFile)
		}
		cfg.RootCAs = pool
	}
	if (certFile == "") != (keyFile == "") {
		return nil, errors.Wrap(ErrUsage, "-tls-cert and -tls-key go together")
	}
	if certFile != "" {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			return nil, err
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

func walbcHelp(w io.Writer) {
	fmt.Fprintln(w, "commands (with -a and -p):")
	for _, c := range walbcCommands {
		fmt.Fprintf(w, "  %-18s %s\n  %-18s   %s\n", c.name, c.params, "", c.help)
	}
	walbcGroupHelp(w)
}

// run sends the command, prints the answer and, with -wait, waits.
func (e *walbcEnv) run(ctx context.Context, cmd *walbcCommand) error {
	waiting := e.wait && cmd.wait != nil
	var prev string // the state before a stop
	var target controller.Server
	if waiting {
		var err error
		if target, err = e.server(ctx); err != nil {
			return e.fail(err)
		}
		if cmd.name == "stop" {
			if prev, err = e.client.GetString(ctx, "state", e.args[0]); err != nil {
				return e.fail(err)
			}
		}
	}
	req := controller.Request{Command: cmd.name, Args: e.args, Value: cmd.value(e.args), ValueOptional: cmd.optional, Retry: cmd.retry}
	resp, err := e.client.Do(ctx, req)
	if err != nil {
		return e.fail(err)
	}
	if resp.Reply != cmd.reply {
		return e.fail(errors.Wrapf(wire.ErrUnexpectedReply, "%s %s: got %s, want %s", e.addr, cmd.name, resp.Reply, cmd.reply))
	}
	if !waiting {
		if e.json {
			return e.printJSON(resp, false)
		}
		if resp.Reply == wire.ReplyAccept {
			fmt.Fprintln(e.stdout, resp.Reply)
			return nil
		}
		for _, l := range plainLines(resp.Value) {
			fmt.Fprintln(e.stdout, l)
		}
		return nil
	}
	if !e.json {
		fmt.Fprintln(e.stdout, resp.Reply)
	}
	c, err := controller.New(controller.Layout{}, &e.opts)
	if err != nil {
		return e.fail(err)
	}
	if cmd.progress && !e.json && walbcIsTTY(e.stdout) {
		pctx, stop := context.WithCancel(ctx)
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			e.showProgress(pctx, target)
		}()
		err = cmd.wait(ctx, c, target, e, prev)
		stop()
		wg.Wait()
	} else {
		err = cmd.wait(ctx, c, target, e, prev)
	}
	if err != nil {
		return e.fail(err)
	}
	if e.json {
		return e.printJSON(resp, true)
	}
	fmt.Fprintln(e.stdout, "done")
	return nil
}

// server learns the kind of the server (get host-type) for the waits.
func (e *walbcEnv) server(ctx context.Context) (controller.Server, error) {
	ht, err := e.client.GetString(ctx, "host-type")
	if err != nil {
		return controller.Server{}, err
	}
	k, err := controller.ParseKind(ht)
	if err != nil {
		return controller.Server{}, err
	}
	return controller.Server{Name: e.addr, Addr: e.addr, Kind: k}, nil
}

// fail prints a JSON error object in json mode and returns err.
func (e *walbcEnv) fail(err error) error {
	if e.json {
		obj := map[string]any{"command": e.cmd, "args": e.args, "reply": "error", "error": err.Error()}
		if e.addr != "" {
			obj["server"] = e.addr
		}
		var re *wire.RemoteError
		if errors.As(err, &re) {
			obj["code"] = string(re.Code)
			obj["message"] = re.Msg
		}
		_ = json.NewEncoder(e.stdout).Encode(obj)
	}
	return err
}

// plainLines renders a value as walb-tools' walbc prints it.
func plainLines(v any) []string {
	switch x := v.(type) {
	case nil:
		return nil
	case string:
		return []string{x}
	case []string:
		return x
	case uint64:
		return []string{strconv.FormatUint(x, 10)}
	case bool:
		if x {
			return []string{"1"}
		}
		return []string{"0"}
	case meta.State:
		return []string{x.StringTs()}
	case fmt.Stringer:
		return []string{x.String()}
	}
	return []string{fmt.Sprint(v)}
}

// --- -wait -----------------------------------------------------------------

// showProgress prints the progress of the command's copy (get progress
// VOL with the state and size, controller.GetProgress) on one line until
// ctx ends; a server without a progress shows nothing. A storage that does
// not count its backups has them counted by its archive.
func (e *walbcEnv) showProgress(ctx context.Context, s controller.Server) {
	vol := e.args[0]
	c, err := controller.New(controller.Layout{}, &e.opts)
	if err != nil {
		return
	}
	if s.Kind == controller.KindStorage {
		if _, err := e.client.GetU64(ctx, "progress", vol); errors.Is(err, wire.ErrRemote) {
			addr, err := e.storageArchive(ctx)
			if err != nil {
				return
			}
			s = controller.Server{Name: addr, Addr: addr, Kind: controller.KindArchive}
		}
	}
	t := time.NewTicker(walbcProgressInterval)
	defer t.Stop()
	shown := false
	defer func() {
		if shown {
			fmt.Fprint(e.stdout, "\r\033[K")
		}
	}()
	for {
		p, err := c.GetProgress(ctx, s, vol)
		if err != nil {
			if errors.Is(err, wire.ErrRemote) || errors.Is(err, controller.ErrWrongKind) {
				return // no progress here
			}
		} else if ctx.Err() == nil {
			shown = true
			fmt.Fprintf(e.stdout, "\r\033[K%s %s: %s", e.cmd, vol, p)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// storageArchive returns the address of the storage's archive, from the
// "host ADDR" line after "-----Archive-----" in its status.
func (e *walbcEnv) storageArchive(ctx context.Context) (string, error) {
	lines, err := e.client.Status(ctx)
	if err != nil {
		return "", err
	}
	for i, l := range lines {
		if l == "-----Archive-----" && i+1 < len(lines) {
			if addr, ok := strings.CutPrefix(lines[i+1], "host "); ok && addr != "" {
				return addr, nil
			}
		}
	}
	return "", errors.Wrapf(controller.ErrBadValue, "%s status: no archive", e.addr)
}

func gidOf(s string) uint64 {
	g, _ := strconv.ParseUint(s, 10, 64)
	return g
}

func waitStop(ctx context.Context, c *controller.Controller, s controller.Server, e *walbcEnv, prev string) error {
	return c.WaitForStopped(ctx, s, e.args[0], prev)
}

func waitBackup(ctx context.Context, c *controller.Controller, s controller.Server, e *walbcEnv, _ string) error {
	return c.WaitForBackup(ctx, s, e.args[0])
}

func waitRestore(ctx context.Context, c *controller.Controller, s controller.Server, e *walbcEnv, _ string) error {
	return c.WaitForRestored(ctx, s, e.args[0], gidOf(e.args[1]))
}

func waitApply(ctx context.Context, c *controller.Controller, s controller.Server, e *walbcEnv, _ string) error {
	return c.WaitForApplied(ctx, s, e.args[0], gidOf(e.args[1]))
}

func waitMerge(ctx context.Context, c *controller.Controller, s controller.Server, e *walbcEnv, _ string) error {
	if e.args[2] == "gid" {
		return c.WaitForMerged(ctx, s, e.args[0], gidOf(e.args[1]), gidOf(e.args[3]))
	}
	return c.WaitForNoAction(ctx, s, e.args[0], controller.ActionMerge)
}

// waitReplicate waits for the end of a replication; by gid, it also checks
// that the target (at the address the source was given) has reached it.
func waitReplicate(ctx context.Context, c *controller.Controller, s controller.Server, e *walbcEnv, _ string) error {
	if e.args[1] != "gid" {
		return c.WaitForNoAction(ctx, s, e.args[0], controller.ActionReplSyncAsClient)
	}
	dst := controller.Server{Name: e.args[3], Addr: e.args[3], Kind: controller.KindArchive}
	return c.WaitForReplicated(ctx, s, e.args[0], dst, gidOf(e.args[2]))
}

// waitShutdown waits until the server no longer answers.
func waitShutdown(ctx context.Context, _ *controller.Controller, _ controller.Server, e *walbcEnv, _ string) error {
	t := time.NewTicker(controller.DefaultPollInterval)
	defer t.Stop()
	for {
		req := controller.Request{Command: "get", Args: []string{"host-type"}, Value: controller.StringValue}
		if _, err := e.client.Do(ctx, req); err != nil {
			if ctx.Err() != nil {
				return errors.Wrap(ctx.Err(), "walbc: waiting for the shutdown")
			}
			return nil
		}
		select {
		case <-ctx.Done():
			return errors.Wrap(ctx.Err(), "walbc: waiting for the shutdown")
		case <-t.C:
		}
	}
}

// --- JSON ------------------------------------------------------------------

type jsonSnap struct {
	GidB uint64 `json:"gidB"`
	GidE uint64 `json:"gidE"`
}

func snapJSON(s meta.Snap) jsonSnap { return jsonSnap{s.GidB, s.GidE} }

// timeJSON is RFC 3339, or null for the unset time.
func timeJSON(t time.Time) *string {
	if t.IsZero() {
		return nil
	}
	s := t.UTC().Format(time.RFC3339)
	return &s
}

type jsonDiff struct {
	B         jsonSnap `json:"b"`
	E         jsonSnap `json:"e"`
	Mergeable bool     `json:"mergeable"`
	CompDiff  bool     `json:"compDiff"`
	Timestamp *string  `json:"timestamp"`
	DataSize  uint64   `json:"dataSize"`
}

func diffJSON(d meta.Diff) jsonDiff {
	return jsonDiff{snapJSON(d.SnapB), snapJSON(d.SnapE), d.Mergeable, d.CompDiff, timeJSON(d.Timestamp), d.DataSize}
}

type jsonState struct {
	B         jsonSnap  `json:"b"`
	E         *jsonSnap `json:"e,omitempty"`
	Applying  bool      `json:"applying"`
	Timestamp *string   `json:"timestamp"`
}

func stateJSON(st meta.State) jsonState {
	j := jsonState{B: snapJSON(st.SnapB), Applying: st.IsApplying, Timestamp: timeJSON(st.Timestamp)}
	if st.IsApplying {
		e := snapJSON(st.SnapE)
		j.E = &e
	}
	return j
}

// recordJSON converts the meta records a value frame may hold.
func recordJSON(v any) any {
	switch x := v.(type) {
	case meta.Snap:
		return snapJSON(x)
	case meta.Diff:
		return diffJSON(x)
	case meta.State:
		return stateJSON(x)
	case meta.LsidGid:
		return map[string]any{"lsid": x.Lsid, "gid": x.Gid, "mergeable": x.Mergeable, "timestamp": timeJSON(x.Timestamp)}
	}
	return v
}

func mapLines[T any](lines []string, parse func(string) (T, error), conv func(T) any) (any, error) {
	out := make([]any, 0, len(lines))
	for _, l := range lines {
		v, err := parse(l)
		if err != nil {
			return nil, err
		}
		out = append(out, conv(v))
	}
	return out, nil
}

// parsedJSON gives the structured form of the values walbc knows.
func parsedJSON(cmd string, args []string, v any) (any, error) {
	lines, _ := v.([]string)
	str, _ := v.(string)
	target := ""
	if cmd == "get" {
		target = args[0]
	}
	switch {
	case cmd == "archive-info" && args[0] == "get":
		a, err := controller.ParseArchiveInfo(str)
		if err != nil {
			return nil, err
		}
		return map[string]any{"addr": a.Addr, "compression": a.Compression.String(), "delaySec": int64(a.Delay / time.Second)}, nil
	case target == "restorable":
		return mapLines(lines, controller.ParseRestorable, func(r controller.RestorableGid) any {
			return map[string]any{"gid": r.Gid, "timestamp": timeJSON(r.Timestamp), "explicit": r.Explicit}
		})
	case target == "diff" || target == "applicable-diff" || target == "proxy-diff":
		return mapLines(lines, controller.ParseDiffLine, func(d meta.Diff) any { return diffJSON(d) })
	case target == "base" || target == "meta-state":
		st, err := meta.ParseState(str)
		if err != nil {
			return nil, err
		}
		return stateJSON(st), nil
	case target == "meta-snap":
		s, err := meta.ParseSnap(str)
		if err != nil {
			return nil, err
		}
		return snapJSON(s), nil
	case target == "restored" || target == "cold":
		return controller.ParseGids(lines)
	case target == "latest-snap":
		return mapLines(lines, controller.ParseLatestSnap, func(s controller.LatestSnap) any {
			m := map[string]any{"vol": s.Vol, "kind": s.Kind.String(), "timestamp": timeJSON(s.Timestamp)}
			if s.Archive != "" {
				m["archive"] = s.Archive
			}
			if s.HasGid {
				m["gid"] = s.Gid
			}
			if s.HasLsid {
				m["lsid"] = s.Lsid
			}
			return m
		})
	case target == "log-usage":
		return mapLines(lines, controller.ParseLogUsage, func(u controller.LogUsage) any {
			return map[string]any{"vol": u.Vol, "usagePb": u.UsagePB, "capacityPb": u.CapacityPB, "pbs": u.PBS}
		})
	case target == "all-actions":
		return mapLines(lines, controller.ParseAllActions, func(va controller.VolActions) any {
			acts := map[string]any{}
			for name, a := range va.Actions {
				acts[name] = map[string]any{"running": a.Running, "lastStart": timeJSON(a.LastStart)}
			}
			return map[string]any{"vol": va.Vol, "actions": acts}
		})
	case target == "ts-delta" || target == "base-all":
		return mapLines(lines, controller.ParseFields, func(m map[string]string) any { return m })
	}
	return nil, nil
}

func (e *walbcEnv) printJSON(resp controller.Response, done bool) error {
	obj := map[string]any{"server": e.addr, "command": e.cmd, "args": e.args, "reply": resp.Reply.String()}
	if e.args == nil {
		obj["args"] = []string{}
	}
	if resp.Value != nil {
		obj["value"] = recordJSON(resp.Value)
		p, err := parsedJSON(e.cmd, e.args, resp.Value)
		switch {
		case err != nil:
			obj["parseError"] = err.Error()
		case p != nil:
			obj["parsed"] = p
		}
	}
	if done {
		obj["done"] = true
	}
	enc := json.NewEncoder(e.stdout)
	return enc.Encode(obj)
}

func init() {
	Tools["walbc"] = Walbc
}
