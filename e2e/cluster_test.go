package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/walb-go/walb/controller"
	"github.com/walb-go/walb/devhost"
)

// Sizes of the test volume: small enough to hash and restore in
// milliseconds, big enough for transfers to be cut (-wl 1) and for
// several bulks per full backup.
const (
	devMiB = 16 // data device
	logMiB = 64 // log device: room for every burst while a server is down
	// checkpointMs is the device's checkpoint interval: the log can only
	// be released up to the last checkpoint, and the default 10 s lets
	// the tests' write rate fill the log first.
	checkpointMs = 200
	volume       = "vol0"
)

// cluster is one backup group of real processes on 127.0.0.1: a device
// daemon with one WalB device, an archive, a proxy and a storage.
type cluster struct {
	steps
	dir string

	dev, a0p, p0p, s0p *proc
	devSock            string // walb-dev control socket
	nbdAddr            string // walb-dev NBD address
	archNBD            string // walb-archive NBD address (restored images)

	s0, p0, a0 controller.Server
	ctl        *controller.Controller
	devSize    int64
	patterns   []string // random files qemu-io writes from (write -s)
}

// procs lists the servers, device daemon first.
func (c *cluster) procs() []*proc { return []*proc{c.dev, c.a0p, c.p0p, c.s0p} }

// newCluster starts walb-dev, walb-archive, walb-proxy and walb-storage
// (in the order walb-tools prescribes: archives, proxies, storages) and
// creates the WalB device. On failure the end of every log goes to the
// test log; at the end the processes are stopped.
func newCluster(t testing.TB) *cluster {
	t.Helper()
	dir, err := os.MkdirTemp(workRoot, "c")
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{steps: steps{t}, dir: dir, devSize: devMiB << 20}
	t.Cleanup(func() {
		for _, p := range c.procs() {
			if p != nil {
				p.stop(10 * time.Second)
			}
		}
		c.checkOutputs()
		if t.Failed() {
			c.dumpLogs()
		}
	})

	// Device daemon.
	c.devSock = filepath.Join(dir, "dev.sock")
	c.nbdAddr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	devBase := mkdir(t, dir, "dev")
	c.dev = &proc{name: "dev", bin: bin(binWalbDev), logPath: filepath.Join(dir, "dev.log"), outPath: filepath.Join(dir, "dev.out"),
		args: []string{"-b", devBase, "-nbd", c.nbdAddr, "-ctl", c.devSock, "-l", filepath.Join(dir, "dev.log")}}
	c.dev.ready = func(ctx context.Context) error {
		_, err := devhost.NewClient(c.devSock).List(ctx)
		return err
	}
	c.dev.start(t)

	// Archive, proxy, storage.
	addr := func() string { return fmt.Sprintf("127.0.0.1:%d", freePort(t)) }
	c.a0 = controller.Server{Name: "a0", Addr: addr(), Kind: controller.KindArchive}
	c.p0 = controller.Server{Name: "p0", Addr: addr(), Kind: controller.KindProxy}
	c.s0 = controller.Server{Name: "s0", Addr: addr(), Kind: controller.KindStorage}
	c.archNBD = addr()
	c.a0p = c.server(c.a0, binArchive, "-nbd", c.archNBD, "-discard", "zero", "-fi", "1m")
	c.p0p = c.server(c.p0, binProxy, "-delay", "1", "-maxdelay", "2", "-wd", "4")
	c.s0p = c.server(c.s0, binStorage, "-archive", c.a0.Addr, "-proxy", c.p0.Addr, "-devhost", c.devSock,
		"-wl", "1", "-snapintvl", "1", "-delay", "1", "-maxdelay", "2")
	for _, p := range []*proc{c.a0p, c.p0p, c.s0p} {
		p.start(t)
	}
	c.ctl, err = controller.New(controller.Layout{
		Storages: []controller.Server{c.s0}, Proxies: []controller.Server{c.p0}, Archives: []controller.Server{c.a0},
	}, &controller.Options{ClientID: "e2e", PollInterval: 20 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	c.createDevice()
	for i := 0; i < 3; i++ {
		p := filepath.Join(dir, fmt.Sprintf("pattern%d", i))
		b := make([]byte, maxWriteLen)
		_, _ = rand.Read(b)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		c.patterns = append(c.patterns, p)
	}
	return c
}

// server describes a walb server process with the common flags -p, -b,
// -l, -id.
func (c *cluster) server(s controller.Server, binary string, extra ...string) *proc {
	base := mkdir(c.t, c.dir, s.Name)
	logPath := filepath.Join(c.dir, s.Name+".log")
	p := &proc{name: s.Name, bin: bin(binary), logPath: logPath, outPath: filepath.Join(c.dir, s.Name+".out"),
		args: append([]string{"-p", s.Addr, "-b", base, "-l", logPath, "-id", s.Name}, extra...)}
	p.ready = func(ctx context.Context) error {
		ht, err := controller.NewClient(s.Addr, &controller.Options{ClientID: "e2e", Retries: -1}).GetString(ctx, "host-type")
		if err == nil && ht != s.Kind.String() {
			err = fmt.Errorf("%s answers host-type %q", s.Addr, ht)
		}
		return err
	}
	return p
}

// createDevice makes the log and data devices as sparse files, puts random
// data in the first half of the data device (the rest stays a hole, so the
// full backup sends both kinds of bulk), and registers the WalB device
// with wdevc format-ldev and create-wdev.
func (c *cluster) createDevice() {
	t := c.t
	ldev, ddev := filepath.Join(c.dir, "ldev.img"), filepath.Join(c.dir, "ddev.img")
	for _, f := range []struct {
		path string
		size int64
	}{{ldev, logMiB << 20}, {ddev, c.devSize}} {
		if err := os.WriteFile(f.path, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(f.path, f.size); err != nil {
			t.Fatal(err)
		}
	}
	f, err := os.OpenFile(ddev, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	seed := make([]byte, c.devSize/2)
	_, _ = rand.Read(seed)
	if _, err := f.WriteAt(seed, 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	c.mustWdevc("format-ldev", ldev, ddev, "-n", volume)
	out := c.mustWdevc("create-wdev", ldev, ddev, "-n", volume)
	want := fmt.Sprintf("nbd nbd://%s/%s", c.nbdAddr, volume)
	if !strings.Contains(out, want) {
		t.Fatalf("create-wdev printed %q, want a line %q", out, want)
	}
	// The interval is not persisted (as with the kernel driver): set it
	// again whenever the daemon restarts.
	c.dev.started = c.setCheckpointInterval
	if err := c.setCheckpointInterval(); err != nil {
		t.Fatal(err)
	}
}

func (c *cluster) setCheckpointInterval() error {
	if _, err := c.wdevc("set-checkpoint-interval", volume, fmt.Sprint(checkpointMs)); err != nil {
		return err
	}
	out, err := c.wdevc("get-checkpoint-interval", volume)
	if err == nil && strings.TrimSpace(out) != fmt.Sprint(checkpointMs) {
		err = fmt.Errorf("get-checkpoint-interval printed %q after set-checkpoint-interval %d", out, checkpointMs)
	}
	return err
}

// nbdURI is the device's NBD export, as create-wdev printed it.
func (c *cluster) nbdURI() string { return fmt.Sprintf("nbd://%s/%s", c.nbdAddr, volume) }

// run runs a command line with a deadline and returns its stdout; the
// error carries stderr.
func run(ctx context.Context, name string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		msg := fmt.Sprintf("%s %s: %v: %s", filepath.Base(name), strings.Join(args, " "), err, strings.TrimSpace(errb.String()))
		if o := strings.TrimSpace(out.String()); o != "" {
			msg += " (stdout: " + o + ")"
		}
		return out.String(), errors.New(msg)
	}
	return out.String(), nil
}

// wdevc runs wdevc against the cluster's device daemon.
func (c *cluster) wdevc(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return run(ctx, bin(binWdevc), append([]string{args[0], "-s", c.devSock}, args[1:]...)...)
}

func (c *cluster) mustWdevc(args ...string) string {
	c.t.Helper()
	out, err := c.wdevc(args...)
	if err != nil {
		c.t.Fatal(err)
	}
	return out
}

// walbc runs walbc against server s, with -wait for the long commands when
// wait is set, and returns its output.
func (c *cluster) walbcCtx(ctx context.Context, s controller.Server, wait bool, args ...string) (string, error) {
	return runWalbc(ctx, s, wait, args...)
}

// runWalbc runs walbc against server s (with -wait when wait is set) and
// returns its output.
func runWalbc(ctx context.Context, s controller.Server, wait bool, args ...string) (string, error) {
	host, port, err := net.SplitHostPort(s.Addr)
	if err != nil {
		return "", err
	}
	a := []string{"-a", host, "-p", port, "-id", "e2e"}
	if wait {
		a = append(a, "-wait")
	}
	return run(ctx, bin(binWalbc), append(a, args...)...)
}

// steps runs walbc and bounds the steps of a test; both clusters embed it.
type steps struct {
	t testing.TB
}

// walbc runs walbc against s and returns its trimmed output.
func (st steps) walbc(s controller.Server, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := runWalbc(ctx, s, false, args...)
	return strings.TrimSpace(out), err
}

func (st steps) mustWalbc(s controller.Server, args ...string) string {
	st.t.Helper()
	out, err := st.walbc(s, args...)
	if err != nil {
		st.t.Fatal(err)
	}
	return out
}

// mustWalbcWait runs a long command with walbc -wait.
func (st steps) mustWalbcWait(s controller.Server, args ...string) string {
	st.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := runWalbc(ctx, s, true, args...)
	if err != nil {
		st.t.Fatal(err)
	}
	return strings.TrimSpace(out)
}

// ctx returns a context bounding one step of a test: a hang fails the
// step, with the logs, instead of the whole test binary.
func (st steps) ctx() context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	st.t.Cleanup(cancel)
	return ctx
}

// checkOutputs fails the test if a server panicked or, when built with
// -race (WALB_E2E_RACE_BINS=1), reported a data race: both go to its
// stderr, which the test keeps in the .out file.
func (c *cluster) checkOutputs() { checkOutputs(c.t, c.procs()) }

// checkOutputs fails t if one of procs panicked or reported a data race.
func checkOutputs(t testing.TB, procs []*proc) {
	for _, p := range procs {
		if p == nil {
			continue
		}
		b, err := os.ReadFile(p.outPath)
		if err != nil {
			continue
		}
		out := string(b)
		for _, bad := range []string{"WARNING: DATA RACE", "panic:", "fatal error:"} {
			if i := strings.Index(out, bad); i >= 0 {
				t.Errorf("%s wrote %q on its stderr (%s):\n%s", p.name, bad, p.outPath, out[i:min(len(out), i+6000)])
			}
		}
	}
}

// dumpLogs writes the end of every server's log to the test log.
func (c *cluster) dumpLogs() { dumpLogs(c.t, c.procs(), c.dir) }

// dumpLogs writes the end of the logs of procs to the test log.
func dumpLogs(t testing.TB, procs []*proc, dir string) {
	for _, p := range procs {
		if p != nil {
			t.Logf("\n%s", p.tail(12<<10))
		}
	}
	t.Logf("work directory: %s (kept with WALB_E2E_KEEP=1)", dir)
}

// setup brings the volume to the point where backups can start, with
// walbc as an operator would: init-vol on the storage and the archive,
// the archive registered on the proxy (synchronizing), and the proxy's
// volume started.
func (c *cluster) setup() {
	c.mustWalbc(c.s0, "init-vol", volume, volume)
	c.mustWalbc(c.a0, "init-vol", volume)
	c.mustWalbc(c.p0, "archive-info", "add", volume, c.a0.Name, c.a0.Addr)
	c.mustWalbc(c.p0, "start", volume)
	for _, s := range []controller.Server{c.s0, c.a0} {
		if st := c.mustWalbc(s, "get", "state", volume); st != "SyncReady" {
			c.t.Fatalf("%s: state %q after init-vol, want SyncReady", s.Name, st)
		}
	}
	if st := c.mustWalbc(c.p0, "get", "state", volume); st != "Started" {
		c.t.Fatalf("p0: state %q after start, want Started", st)
	}
}

// gidOut parses walbc's one-number output.
func gidOut(t testing.TB, out string) uint64 {
	t.Helper()
	g, err := strconv.ParseUint(strings.TrimSpace(out), 10, 64)
	if err != nil {
		t.Fatalf("walbc printed %q, want a gid", out)
	}
	return g
}

// trimOut trims a command's output.
func trimOut(s string) string { return strings.TrimSpace(s) }

// firstLine returns the first line of an error (server errors carry
// stack traces in the logs, not here, but walbc may print several lines).
func firstLine(err error) string {
	s := err.Error()
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i] + " ..."
	}
	if len(s) > 400 {
		s = s[:200] + " ... " + s[len(s)-200:]
	}
	return s
}
