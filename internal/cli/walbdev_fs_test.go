package cli

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/nbd"
)

// End-to-end test of walb-dev with real Linux clients: a filesystem made
// and used on the device through nbdfuse and a loop device, checked with
// e2fsck, and the device's log replayed onto its initial image. It needs
// root, /dev/fuse and the packages in .ci/apt-packages.txt (qemu-utils,
// nbdfuse, fuse3, e2fsprogs, mount); without them it skips on a developer
// machine and fails in CI.

func needFSTools(t *testing.T) {
	t.Helper()
	skip := func(format string, args ...any) {
		if os.Getenv("CI") != "" {
			t.Fatalf(format, args...)
		}
		t.Skipf(format, args...)
	}
	if os.Geteuid() != 0 {
		skip("needs root (loop devices, mount)")
	}
	for _, name := range []string{"nbdfuse", "fusermount3", "losetup", "mkfs.ext4", "e2fsck", "debugfs", "mount", "umount", "qemu-img"} {
		if _, err := exec.LookPath(name); err != nil {
			skip("%s not installed; apt-get install the packages in .ci/apt-packages.txt: %v", name, err)
		}
	}
	if _, err := os.Stat("/dev/fuse"); err != nil {
		skip("FUSE is not available: %v", err)
	}
	if _, err := os.Stat("/dev/loop-control"); err != nil {
		skip("loop devices are not available: %v", err)
	}
}

func sh(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	require.NoErrorf(t, err, "%s %s:\n%s", name, strings.Join(args, " "), out)
	return string(out)
}

func fileSHA(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	h := sha256.New()
	_, err = io.Copy(h, f)
	require.NoError(t, err)
	return hex.EncodeToString(h.Sum(nil))
}

type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuf) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuf) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestWalbDevFilesystemEndToEnd(t *testing.T) {
	needFSTools(t)
	dir := t.TempDir()
	const ddevSize = 64 << 20
	ldev, ddev := filepath.Join(dir, "vol0.ldev"), filepath.Join(dir, "vol0.ddev")
	sparseFile(t, ldev, 256<<20)
	sparseFile(t, ddev, ddevSize)
	// The data device's image at the start: all zeros.
	start := filepath.Join(dir, "start.img")
	sparseFile(t, start, ddevSize)
	require.Equal(t, fileSHA(t, start), fileSHA(t, ddev))

	// The walb-dev tool itself, in-process, serving NBD on a unix socket.
	nbdSock := filepath.Join(dir, "nbd.sock")
	ctlSock := filepath.Join(dir, "ctl.sock")
	daemonLog := filepath.Join(dir, "walb-dev.log")
	ctx, stop := context.WithCancel(context.Background())
	daemonDone := make(chan error, 1)
	go func() {
		var out, errb bytes.Buffer
		daemonDone <- WalbDev(ctx, []string{"-b", filepath.Join(dir, "base"), "-nbd", nbdSock, "-ctl", ctlSock, "-l", daemonLog}, &out, &errb)
	}()
	stopped := false
	t.Cleanup(func() {
		if !stopped {
			stop()
			<-daemonDone
		}
	})
	require.Eventually(t, func() bool { _, err := os.Stat(ctlSock); return err == nil }, time.Minute, 10*time.Millisecond)

	ok(t, "wdevc", "format-ldev", ldev, ddev, "-n", "vol0")
	w := func(args ...string) string { return ok(t, append([]string{"wdevc", "-s", ctlSock}, args...)...) }
	uri := "nbd+unix:///vol0?socket=" + nbdSock
	require.Equal(t, "name vol0\nnbd "+uri+"\n", w("create-wdev", ldev, ddev))

	// nbdfuse exposes the export as DIR/nbd.
	fuseDir := filepath.Join(dir, "fuse")
	require.NoError(t, os.Mkdir(fuseDir, 0o700))
	fuseOut := &syncBuf{}
	fuse := exec.Command("nbdfuse", fuseDir, uri)
	fuse.Stdout, fuse.Stderr = fuseOut, fuseOut
	require.NoError(t, fuse.Start())
	fuseDone := make(chan error, 1)
	go func() { fuseDone <- fuse.Wait() }()
	fuseMounted := true
	t.Cleanup(func() {
		if fuseMounted {
			_ = exec.Command("fusermount3", "-u", fuseDir).Run()
		}
		select {
		case <-fuseDone:
		case <-time.After(30 * time.Second):
			_ = fuse.Process.Kill()
			<-fuseDone
		}
	})
	image := filepath.Join(fuseDir, "nbd")
	for {
		if st, err := os.Stat(image); err == nil && st.Size() == ddevSize {
			break
		}
		select {
		case err := <-fuseDone:
			out := fuseOut.String()
			if strings.Contains(out, "fuse: device not found") || strings.Contains(out, "Operation not permitted") {
				if os.Getenv("CI") == "" {
					t.Skipf("FUSE mounts are not permitted here: %s", out)
				}
			}
			t.Fatalf("nbdfuse exited before mounting (%v):\n%s", err, out)
		case <-time.After(20 * time.Millisecond):
		}
	}

	loop := strings.TrimSpace(sh(t, "losetup", "--find", "--show", image))
	loopAttached := true
	t.Cleanup(func() {
		if loopAttached {
			_ = exec.Command("losetup", "-d", loop).Run()
		}
	})
	sh(t, "mkfs.ext4", "-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0", loop)
	mnt := filepath.Join(dir, "mnt")
	require.NoError(t, os.Mkdir(mnt, 0o700))
	sh(t, "mount", "-t", "ext4", loop, mnt)
	mounted := true
	t.Cleanup(func() {
		if mounted {
			_ = exec.Command("umount", "-l", mnt).Run()
		}
	})

	// A few MiB of files, each fsynced.
	want := map[string][]byte{}
	for i := range 6 {
		name := fmt.Sprintf("file%d", i)
		data := bytes.Repeat([]byte(fmt.Sprintf("walb-go file %d ", i)), (512<<10)/16+i*1000)
		f, err := os.Create(filepath.Join(mnt, name))
		require.NoError(t, err)
		_, err = f.Write(data)
		require.NoError(t, err)
		require.NoError(t, f.Sync())
		require.NoError(t, f.Close())
		want[name] = data
	}
	require.NoError(t, os.Remove(filepath.Join(mnt, "file5"))) // frees blocks: ext4 may discard them
	delete(want, "file5")

	sh(t, "umount", mnt)
	mounted = false
	sh(t, "losetup", "-d", loop)
	loopAttached = false
	sh(t, "fusermount3", "-u", fuseDir)
	fuseMounted = false
	select {
	case err := <-fuseDone:
		require.NoError(t, err, fuseOut.String())
	case <-time.After(time.Minute):
		t.Fatal("nbdfuse did not exit after fusermount3 -u")
	}
	fuseDone <- nil // for the cleanup

	// Flush, then everything written is permanent.
	c, err := nbd.Dial(context.Background(), "unix", nbdSock, nbd.ClientOptions{Export: "vol0"})
	require.NoError(t, err)
	require.NoError(t, c.Flush())
	require.NoError(t, c.Close())
	permanent := w("get-permanent-lsid", "vol0")
	require.Equal(t, permanent, w("get-completed-lsid", "vol0"))
	require.Equal(t, "0\n", w("get-oldest-lsid", "vol0"))
	require.Equal(t, "0\n", w("is-log-overflow", "vol0"))

	// The filesystem, read back through NBD, is clean and holds the files.
	current := filepath.Join(dir, "current.img")
	sh(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", uri, current)
	sh(t, "e2fsck", "-fn", current)
	for name, data := range want {
		dumped := filepath.Join(dir, "dump-"+name)
		sh(t, "debugfs", "-R", "dump /"+name+" "+dumped, current)
		got, err := os.ReadFile(dumped)
		require.NoError(t, err)
		require.True(t, bytes.Equal(data, got), "%s differs", name)
	}

	// The log from [oldest, permanent) applied to the start image gives the
	// device's current contents.
	wl := filepath.Join(dir, "vol0.wlog")
	w("cat-log", "vol0", "-o", wl)
	t.Logf("extracted log:\n%s", ok(t, "wlog-show", "-stat", wl))
	ok(t, "wlog-redo", "-z", start, "-i", wl)
	require.Equal(t, fileSHA(t, current), fileSHA(t, start), "redo of the extracted log differs from the device")

	// SIGTERM's path: the daemon stops gracefully and the data device then
	// holds the same image.
	stop()
	stopped = true
	require.NoError(t, <-daemonDone)
	require.Equal(t, fileSHA(t, current), fileSHA(t, ddev))
	_, err = os.Stat(ctlSock)
	require.True(t, os.IsNotExist(err), "control socket removed")
	logText, err := os.ReadFile(daemonLog)
	require.NoError(t, err)
	require.Contains(t, string(logText), "walb-dev stopped")
}
