package cli

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/devhost"
	"github.com/walb-go/walb/nbd"
	"github.com/walb-go/walb/walb/kernel"
)

// tool runs one command line in-process and returns its exit code, stdout
// and stderr.
func tool(t *testing.T, line ...string) (int, string, string) {
	t.Helper()
	f, ok := Tools[line[0]]
	require.True(t, ok, "no tool %s", line[0])
	var out, errb bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	code := Run(ctx, line[0], f, line[1:], &out, &errb)
	return code, out.String(), errb.String()
}

// ok runs a command line that must succeed and returns its stdout.
func ok(t *testing.T, line ...string) string {
	t.Helper()
	code, out, errs := tool(t, line...)
	require.Equal(t, 0, code, "%s: %s", strings.Join(line, " "), errs)
	return out
}

// fails runs a command line that must exit with code and returns stderr.
func fails(t *testing.T, code int, line ...string) string {
	t.Helper()
	got, _, errs := tool(t, line...)
	require.Equal(t, code, got, "%s: %s", strings.Join(line, " "), errs)
	return errs
}

func sparseFile(t *testing.T, path string, size int64) {
	t.Helper()
	require.NoError(t, os.WriteFile(path, nil, 0o600))
	require.NoError(t, os.Truncate(path, size))
}

func startTestDaemon(t *testing.T) (*devhost.Daemon, string) {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "ctl.sock")
	d, err := devhost.StartDaemon(context.Background(), devhost.Config{
		BaseDir: t.TempDir(), NBDAddr: "127.0.0.1:0", ControlSocket: sock,
		Logger: slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn})),
	})
	require.NoError(t, err)
	t.Cleanup(func() { _ = d.Shutdown(context.Background()) })
	return d, sock
}

func num(t *testing.T, s string) uint64 {
	t.Helper()
	v, err := strconv.ParseUint(strings.TrimSpace(s), 10, 64)
	require.NoError(t, err, "%q", s)
	return v
}

func TestWdevcAgainstDaemon(t *testing.T) {
	d, sock := startTestDaemon(t)
	dir := t.TempDir()
	ldev, ddev := filepath.Join(dir, "vol0.ldev"), filepath.Join(dir, "vol0.ddev")
	sparseFile(t, ldev, 16<<20)
	sparseFile(t, ddev, 4<<20)

	out := ok(t, "wdevc", "format-ldev", ldev, ddev, "-n", "vol0")
	require.Contains(t, out, "name: vol0\n")
	require.Contains(t, out, "pbs: 512\n")
	require.Contains(t, out, "deviceSize: 8192\n")
	fails(t, 1, "wdevc", "format-ldev", ldev, ldev)

	w := func(args ...string) string { return ok(t, append([]string{"wdevc", "-s", sock}, args...)...) }
	addr := d.NBDAddr().String()
	require.Equal(t, "name vol0\nnbd nbd://"+addr+"/vol0\n", w("create-wdev", ldev, ddev, "-maxl", "64"))
	require.Contains(t, fails(t, 1, "wdevc", "format-ldev", ldev, ddev), "in use", "a running device's log")
	require.Equal(t, "vol0\n", w("list"))
	require.Equal(t, "vol0 running 8192 nbd://"+addr+"/vol0 "+ldev+" "+ddev+"\n", w("list", "-l"))
	// Options may also follow the command; WDEV may be /dev/walb/NAME.
	require.Equal(t, "0\n", ok(t, "wdevc", "get-oldest-lsid", "/dev/walb/vol0", "-s", sock))

	c, err := nbd.Dial(context.Background(), "tcp", addr, nbd.ClientOptions{Export: "vol0"})
	require.NoError(t, err)
	defer c.Close()
	data := bytes.Repeat([]byte("walb-go!"), 64<<10)
	_, err = c.WriteAt(data, 4096)
	require.NoError(t, err)
	require.NoError(t, c.Trim(1<<20, 64<<10))
	require.NoError(t, c.Flush())
	permanent := num(t, w("get-permanent-lsid", "vol0"))
	require.Greater(t, permanent, uint64(1024))
	require.Equal(t, permanent, num(t, w("get-completed-lsid", "vol0")))
	require.LessOrEqual(t, num(t, w("get-written-lsid", "vol0")), permanent)
	require.GreaterOrEqual(t, num(t, w("get-log-usage", "vol0")), permanent)
	require.EqualValues(t, 16<<20/512-10, num(t, w("get-log-capacity", "vol0")))
	require.Equal(t, "0\n", w("is-log-overflow", "vol0"))
	require.Equal(t, "1\n", w("is-flush-capable", "vol0"))
	lsids, err := kernel.ParseLsids(strings.NewReader(w("get-lsids", "vol0")))
	require.NoError(t, err, "get-lsids prints the sysfs format")
	require.NoError(t, lsids.Check())
	require.Equal(t, permanent, lsids.Permanent)
	require.Equal(t, permanent, lsids.Latest)
	require.Zero(t, lsids.Oldest)
	require.False(t, lsids.HasSubmitted)

	// cat-log to a file and to stdout; its redo on zeros is the device.
	wl := filepath.Join(dir, "vol0.wlog")
	require.Empty(t, w("cat-log", "vol0", "-o", wl))
	stdoutLog := w("cat-log", "vol0")
	fileLog, err := os.ReadFile(wl)
	require.NoError(t, err)
	require.True(t, bytes.Equal(fileLog, []byte(stdoutLog)))
	img := filepath.Join(dir, "zero.img")
	sparseFile(t, img, 4<<20)
	ok(t, "wlog-redo", "-z", img, "-i", wl)
	dev := make([]byte, 4<<20)
	_, err = c.ReadAt(dev, 0)
	require.NoError(t, err)
	imgData, err := os.ReadFile(img)
	require.NoError(t, err)
	require.True(t, bytes.Equal(dev, imgData), "wlog-redo -z of cat-log differs from the device")
	require.Contains(t, fails(t, 1, "wdevc", "-s", sock, "cat-log", "vol0", "-b", "7", "-e", "3"), "invalid")

	// Freeze and the states it forbids; is-flozen is walb-tools' spelling.
	w("freeze", "vol0", "30")
	require.Equal(t, "1\n", w("is-flozen", "vol0"))
	require.Contains(t, fails(t, 1, "wdevc", "-s", sock, "reset-wal", "vol0"), "frozen")
	require.Contains(t, fails(t, 1, "wdevc", "-s", sock, "delete-wdev", "vol0"), "frozen")
	w("melt", "vol0")
	require.Equal(t, "0\n", w("is-frozen", "vol0"))

	w("set-checkpoint-interval", "vol0", "2500")
	require.Equal(t, "2500\n", w("get-checkpoint-interval", "vol0"))
	w("force-checkpoint", "vol0")
	require.Contains(t, fails(t, 1, "wdevc", "-s", sock, "set-oldest-lsid", "vol0", "3"), "invalid")
	require.Contains(t, fails(t, 1, "wdevc", "-s", sock, "get-oldest-lsid", "nope"), "no such device")
	require.Contains(t, fails(t, 1, "wdevc", "-s", sock, "resize", "vol0", "1k"), "shrinking")

	// The log image can be read with cat-log once no device runs on it,
	// and gives the same wlog for the same range.
	w("delete-wdev", "vol0")
	require.Empty(t, w("list"))
	imgLog := ok(t, "wdevc", "cat-log", ldev, "-e", strconv.FormatUint(permanent, 10))
	require.True(t, bytes.Equal(fileLog, []byte(imgLog)), "cat-log of the image differs from the running device's")

	// clear-wal releases everything permanent.
	w("create-wdev", ldev, ddev, "-n", "vol0")
	w("clear-wal", "vol0", "60")
	require.Equal(t, permanent, num(t, w("get-oldest-lsid", "vol0")))
	w("reset-wal", "vol0")
	require.Equal(t, "0\n", w("get-permanent-lsid", "vol0"))
	w("resize", "vol0")
}

func TestWdevcUsage(t *testing.T) {
	out := ok(t, "wdevc", "help")
	for _, cmd := range []string{"format-ldev", "create-wdev", "delete-wdev", "list", "get-oldest-lsid", "set-oldest-lsid",
		"get-written-lsid", "get-permanent-lsid", "get-completed-lsid", "freeze", "melt", "reset-wal", "resize",
		"is-log-overflow", "get-log-usage", "get-log-capacity", "get-lsids", "cat-log"} {
		require.Contains(t, out, "\n  "+cmd+" ", cmd)
	}
	require.Contains(t, ok(t, "wdevc", "help", "create-wdev"), "-maxl")
	require.Contains(t, ok(t, "wdevc", "cat-log", "-h"), "-o WLOG_PATH")
	ok(t, "wdevc", "-h")
	for _, bad := range [][]string{
		{"wdevc"}, {"wdevc", "dance"}, {"wdevc", "get-oldest-lsid"}, {"wdevc", "set-oldest-lsid", "v", "x"},
		{"wdevc", "freeze", "v", "-1"}, {"wdevc", "-q", "list"}, {"wdevc", "-s"}, {"wdevc", "create-wdev", "a", "b", "-maxl", "x"},
		{"wdevc", "help", "dance"}, {"wdevc", "cat-log", "v", "-b", "x"},
	} {
		fails(t, 2, bad...)
	}
	require.Contains(t, fails(t, 1, "wdevc", "-s", filepath.Join(t.TempDir(), "none.sock"), "list"), "connect to walb-dev")
}

// Without -s, wdevc talks to the kernel driver when its control node
// exists and the daemon's socket does not; -kernel forces it.
func TestWdevcModeSelection(t *testing.T) {
	dir := t.TempDir()
	oldSock, oldCtl, oldNew := wdevcSocket, wdevcKernelControl, newKernelController
	t.Cleanup(func() { wdevcSocket, wdevcKernelControl, newKernelController = oldSock, oldCtl, oldNew })
	wdevcSocket = filepath.Join(dir, "absent.sock")
	wdevcKernelControl = filepath.Join(dir, "control")

	// Stand-in for the kernel driver: any Controller will do, here a host
	// of userspace devices.
	h, err := devhost.OpenHost(context.Background(), filepath.Join(dir, "base"), devhost.HostOptions{
		Logger: slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))})
	require.NoError(t, err)
	defer h.Close()
	kernelCalls := 0
	newKernelController = func() devhost.Controller { kernelCalls++; return h }
	ldev, ddev := filepath.Join(dir, "l"), filepath.Join(dir, "d")
	sparseFile(t, ldev, 4<<20)
	sparseFile(t, ddev, 1<<20)
	ok(t, "wdevc", "format-ldev", ldev, ddev, "-n", "k0")

	// No control node: the daemon, which is not there.
	require.Contains(t, fails(t, 1, "wdevc", "list"), "connect to walb-dev")
	require.Zero(t, kernelCalls)

	require.NoError(t, os.WriteFile(wdevcKernelControl, nil, 0o600))
	require.Equal(t, "name k0\nmajor 0\nminor 0\n", ok(t, "wdevc", "create-wdev", ldev, ddev))
	require.Equal(t, "0 0 walb/k0\n", ok(t, "wdevc", "list"), "walb-tools' list format")
	require.Equal(t, 2, kernelCalls)

	// A daemon socket takes precedence, unless -kernel.
	_, sock := startTestDaemon(t)
	wdevcSocket = sock
	require.Empty(t, ok(t, "wdevc", "list"))
	require.Equal(t, "0 0 walb/k0\n", ok(t, "wdevc", "-kernel", "list"))
	require.Equal(t, "0 0 walb/k0\n", ok(t, "wdevc", "list", "-kernel"))
}
