package devhost

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// childEnv carries the configuration of a daemon run in a child process.
const childEnv = "WALB_DEVHOST_TEST_CHILD"

type childSpec struct {
	Base, Control, Ready string
}

// TestDaemonChildProcess is not a test: it is the daemon that
// TestDaemonSurvivesSIGKILL runs in a child process (the test binary
// re-executed) and kills.
func TestDaemonChildProcess(t *testing.T) {
	raw := os.Getenv(childEnv)
	if raw == "" {
		t.Skip("helper process of TestDaemonSurvivesSIGKILL")
	}
	var spec childSpec
	require.NoError(t, json.Unmarshal([]byte(raw), &spec))
	d, err := StartDaemon(context.Background(), Config{
		BaseDir: spec.Base, NBDAddr: "127.0.0.1:0", ControlSocket: spec.Control, Logger: testLogger(t),
	})
	require.NoError(t, err)
	tmp := spec.Ready + ".tmp"
	require.NoError(t, os.WriteFile(tmp, []byte(d.NBDAddr().String()), 0o600))
	require.NoError(t, os.Rename(tmp, spec.Ready))
	select {} // until SIGKILL
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startChildDaemon runs the daemon in a re-executed test binary and returns
// its NBD address, the process, its output and a channel closed when it
// has exited.
func startChildDaemon(t *testing.T, spec childSpec) (string, *exec.Cmd, *lockedBuffer, <-chan struct{}) {
	t.Helper()
	exe, err := os.Executable()
	require.NoError(t, err)
	raw, err := json.Marshal(spec)
	require.NoError(t, err)
	cmd := exec.Command(exe, "-test.run=^TestDaemonChildProcess$", "-test.v")
	cmd.Env = append(os.Environ(), childEnv+"="+string(raw))
	out := &lockedBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	require.NoError(t, cmd.Start())
	done := make(chan struct{})
	var waitErr error
	go func() {
		waitErr = cmd.Wait()
		close(done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
	})
	deadline := time.After(time.Minute)
	for {
		if b, err := os.ReadFile(spec.Ready); err == nil {
			return string(b), cmd, out, done
		}
		select {
		case <-done:
			t.Fatalf("child daemon exited (%v):\n%s", waitErr, out.String())
		case <-deadline:
			t.Fatalf("child daemon did not start:\n%s", out.String())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// Kill the daemon without any shutdown: every write acknowledged and
// flushed before the kill is there after a restart, and the log extracted
// after recovery still reproduces the device.
func TestDaemonSurvivesSIGKILL(t *testing.T) {
	ctx := testCtx(t)
	base, dir := t.TempDir(), t.TempDir()
	ldev, ddev := deviceFiles(t, dir, "vol0", 16<<20, 8<<20)
	spec := childSpec{Base: base, Control: filepath.Join(t.TempDir(), "ctl.sock"), Ready: filepath.Join(dir, "ready")}
	addr, cmd, out, exited := startChildDaemon(t, spec)
	client := NewClient(spec.Control)
	_, err := client.CreateWdev(ctx, ldev, ddev, CreateOptions{})
	require.NoError(t, err, out.String())

	c := dialNBD(t, addr, "vol0")
	want := make([]byte, 8<<20)
	for i := range 64 {
		b := randomBytes(uint64(100+i), 16<<10)
		off := int64(i) * 96 << 10
		if i%8 == 0 {
			_, err = c.WriteAtFUA(b, off)
		} else {
			_, err = c.WriteAt(b, off)
		}
		require.NoError(t, err)
		copy(want[off:], b)
	}
	require.NoError(t, c.Trim(7<<20, 128<<10))
	clear(want[7<<20 : 7<<20+128<<10])
	require.NoError(t, c.Flush())
	// Writes after the last flush may or may not survive; they go where
	// nothing checked lies.
	_, err = c.WriteAt(randomBytes(999, 64<<10), 7<<20+512<<10)
	require.NoError(t, err)

	require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
	_ = c.Close()
	select {
	case <-exited:
	case <-time.After(time.Minute):
		t.Fatal("the child daemon survived SIGKILL")
	}

	// The registry, the base lock and the device locks were released with
	// the process; a new daemon recovers the device from its log.
	d := startDaemon(t, base)
	list, err := d.client.List(ctx)
	require.NoError(t, err)
	require.Len(t, list, 1)
	require.Equal(t, StateRunning, list[0].State)
	got := readAll(t, d.dial(t, "vol0"))
	require.True(t, bytes.Equal(want[:7<<20+512<<10], got[:7<<20+512<<10]), "flushed data lost")
	require.True(t, bytes.Equal(want[7<<20+576<<10:], got[7<<20+576<<10:]), "flushed data lost")
	checkLogReproducesDevice(t, d, "vol0")
}
