package devhost

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Integration tests against real NBD clients from Debian (qemu-utils,
// libnbd-bin; listed in .ci/apt-packages.txt). A missing client skips the
// test on a developer machine and fails it in CI, which must never pass by
// skipping.

func requireTool(t testing.TB, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s not installed (see .ci/apt-packages.txt): %v", name, err)
		}
		t.Skipf("%s not installed; apt-get install the packages in .ci/apt-packages.txt to run this test", name)
	}
	return path
}

func runErr(t testing.TB, name string, args ...string) (string, error) {
	t.Helper()
	path := requireTool(t, name)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Env = append(os.Environ(), "LIBNBD_DEBUG=0")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := runErr(t, name, args...)
	require.NoErrorf(t, err, "%s %s:\n%s", name, strings.Join(args, " "), out)
	return out
}

// daemonWithDevice starts a daemon with one device on sparse files.
func daemonWithDevice(t *testing.T, name string, ldevSize, ddevSize int64) (*testDaemon, string, string) {
	t.Helper()
	d := startDaemon(t, t.TempDir())
	ldev, ddev := deviceFiles(t, t.TempDir(), name, ldevSize, ddevSize)
	_, err := d.client.CreateWdev(testCtx(t), ldev, ddev, CreateOptions{})
	require.NoError(t, err)
	return d, ldev, ddev
}

// checkLogReproducesDevice extracts [oldest, permanent) after a flush and
// checks that its redo on zeros (the device's image at format time) is
// what the device holds.
func checkLogReproducesDevice(t *testing.T, d *testDaemon, name string) {
	t.Helper()
	ctx := testCtx(t)
	c := d.dial(t, name)
	require.NoError(t, c.Flush())
	var wl bytes.Buffer
	end, err := d.client.CatLog(ctx, name, AutoLsid, AutoLsid, &wl)
	require.NoError(t, err)
	completed, err := d.client.CompletedLsid(ctx, name)
	require.NoError(t, err)
	require.Equal(t, completed, end, "the flush made every pack permanent")
	require.True(t, bytes.Equal(readAll(t, c), redoOnZero(t, wl.Bytes(), c.Size())), "log redo differs from the device")
}

func TestQemuIO(t *testing.T) {
	requireTool(t, "qemu-io")
	d, _, _ := daemonWithDevice(t, "vol0", 16<<20, 8<<20)
	uri := "nbd://" + d.addr() + "/vol0"
	out := run(t, "qemu-io", "-f", "raw", uri,
		"-c", "write -P 0xab 0 1M",
		"-c", "write -f -P 0xcd 1M 64k", // FUA
		"-c", "aio_write -P 0x11 2M 256k",
		"-c", "aio_write -P 0x22 3M 256k",
		"-c", "aio_flush",
		"-c", "write -P 0x77 6M 1M",
		"-c", "write -z 6M 512k", // WRITE_ZEROES (logged as zeros)
		"-c", "write -P 0x55 4M 1M",
		"-c", "discard 4M 512k", // TRIM (logged as a discard: reads as zeros)
		"-c", "flush",
		"-c", "write -P 0x33 8191k 1k", // the last KiB
	)
	require.NotContains(t, out, "error")

	// Read back in a separate process: the device, not qemu's cache.
	out = run(t, "qemu-io", "-r", "-f", "raw", uri,
		"-c", "read -P 0xab 0 1M",
		"-c", "read -P 0xcd 1M 64k",
		"-c", "read -P 0x11 2M 256k",
		"-c", "read -P 0x22 3M 256k",
		"-c", "read -P 0 4M 512k",
		"-c", "read -P 0x55 4608k 512k",
		"-c", "read -P 0 6M 512k",
		"-c", "read -P 0x77 6656k 512k",
		"-c", "read -P 0x33 8191k 1k",
	)
	require.NotContains(t, out, "Pattern verification failed")
	// A wrong pattern must be noticed, or the reads above prove nothing.
	out, _ = runErr(t, "qemu-io", "-r", "-f", "raw", uri, "-c", "read -P 0x99 0 4k")
	require.Contains(t, out, "Pattern verification failed")

	checkLogReproducesDevice(t, d, "vol0")
}

func TestQemuImgConvertAndCompare(t *testing.T) {
	requireTool(t, "qemu-img")
	const size = 6 << 20
	d, _, _ := daemonWithDevice(t, "vol0", 32<<20, size)
	uri := "nbd://" + d.addr() + "/vol0"
	dir := t.TempDir()
	src := randomBytes(5, size)
	clear(src[1<<20 : 3<<20]) // a zero run qemu-img may send as WRITE_ZEROES
	srcPath := filepath.Join(dir, "src.raw")
	require.NoError(t, os.WriteFile(srcPath, src, 0o600))

	out := run(t, "qemu-img", "info", "--output=json", uri)
	var info struct {
		VirtualSize int64 `json:"virtual-size"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &info), out)
	require.EqualValues(t, size, info.VirtualSize)

	// Dirty the zero run first: the convert must zero it.
	_, err := d.dial(t, "vol0").WriteAt(bytes.Repeat([]byte{0xff}, 2<<20), 1<<20)
	require.NoError(t, err)
	run(t, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", srcPath, uri)
	run(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", srcPath, uri)
	dst := filepath.Join(dir, "dst.raw")
	run(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", uri, dst)
	require.Equal(t, sha256File(t, srcPath), sha256File(t, dst))
	// compare notices a difference.
	src[size-1] ^= 1
	require.NoError(t, os.WriteFile(srcPath, src, 0o600))
	out, err = runErr(t, "qemu-img", "compare", "-f", "raw", "-F", "raw", srcPath, uri)
	require.Error(t, err, out)

	checkLogReproducesDevice(t, d, "vol0")
}

func TestNbdcopyAndNbdinfo(t *testing.T) {
	requireTool(t, "nbdcopy")
	requireTool(t, "nbdinfo")
	const size = 5 << 20
	d, _, _ := daemonWithDevice(t, "vol0", 32<<20, size)
	uri := "nbd://" + d.addr() + "/vol0"
	dir := t.TempDir()

	out := run(t, "nbdinfo", "--json", uri)
	var info struct {
		Exports []struct {
			Name         string `json:"export-name"`
			Size         int64  `json:"export-size"`
			Description  string `json:"description"`
			CanFlush     bool   `json:"can_flush"`
			CanFUA       bool   `json:"can_fua"`
			CanTrim      bool   `json:"can_trim"`
			CanZero      bool   `json:"can_zero"`
			CanMultiConn bool   `json:"can_multi_conn"`
			ReadOnly     bool   `json:"is_read_only"`
		} `json:"exports"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &info), out)
	require.Len(t, info.Exports, 1)
	e := info.Exports[0]
	require.Equal(t, "vol0", e.Name)
	require.EqualValues(t, size, e.Size)
	require.True(t, e.CanFlush && e.CanFUA && e.CanTrim && e.CanZero && e.CanMultiConn, "%+v", e)
	require.False(t, e.ReadOnly)
	require.Contains(t, e.Description, "walb device vol0")
	require.Contains(t, run(t, "nbdinfo", "--list", "nbd://"+d.addr()), "vol0")

	src := randomBytes(6, size)
	clear(src[2<<20 : 3<<20])
	srcPath := filepath.Join(dir, "src.raw")
	require.NoError(t, os.WriteFile(srcPath, src, 0o600))
	run(t, "nbdcopy", srcPath, uri) // several connections: CAN_MULTI_CONN
	dst := filepath.Join(dir, "dst.raw")
	run(t, "nbdcopy", uri, dst)
	require.Equal(t, sha256File(t, srcPath), sha256File(t, dst))

	checkLogReproducesDevice(t, d, "vol0")
}
