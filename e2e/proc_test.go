package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// proc is one server process, started like an operator would start it and
// restartable with the very same command line.
type proc struct {
	name    string   // s0, p0, a0, dev
	bin     string   // path of the binary
	args    []string // its flags
	logPath string   // the -l log file
	outPath string   // stdout and stderr (panics, flag errors)
	ready   func(ctx context.Context) error
	// started, if set, runs after each start once the process is ready
	// (what an operator does after a reboot).
	started func() error

	mu      sync.Mutex
	cmd     *exec.Cmd
	done    chan struct{} // closed when the current process has exited
	exitErr error
	starts  int
	kills   int
}

// start runs the process and waits until ready answers (or the process
// dies, or 30 s pass).
func (p *proc) start(t testing.TB) {
	t.Helper()
	if err := p.startErr(); err != nil {
		t.Fatal(err)
	}
}

func (p *proc) startErr() error {
	out, err := os.OpenFile(p.outPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "=== start %d: %s %s\n", p.starts+1, p.bin, strings.Join(p.args, " "))
	cmd := exec.Command(p.bin, p.args...)
	cmd.Stdout, cmd.Stderr = out, out
	// The servers must not outlive the test binary, even if it dies.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		out.Close()
		return fmt.Errorf("%s: start: %v", p.name, err)
	}
	done := make(chan struct{})
	p.mu.Lock()
	p.cmd, p.done, p.exitErr = cmd, done, nil
	p.starts++
	p.mu.Unlock()
	go func() {
		err := cmd.Wait()
		out.Close()
		p.mu.Lock()
		p.exitErr = err
		p.mu.Unlock()
		close(done)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for {
		err := p.ready(ctx)
		if err == nil {
			if p.started != nil {
				if err := p.started(); err != nil {
					return fmt.Errorf("%s: after start: %v", p.name, err)
				}
			}
			return nil
		}
		select {
		case <-done:
			return fmt.Errorf("%s exited during startup (%v); output:\n%s", p.name, p.exitErr, tailFile(p.outPath, 4096))
		case <-ctx.Done():
			return fmt.Errorf("%s not ready after 30 s: %v", p.name, err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// running reports whether the process is alive.
func (p *proc) running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.done == nil {
		return false
	}
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// kill9 sends SIGKILL and waits for the process to be gone.
func (p *proc) kill9() {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.kills++
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-done
}

// stop sends SIGTERM (a forced shutdown for the servers, a graceful one for
// walb-dev) and waits, then SIGKILL after grace.
func (p *proc) stop(grace time.Duration) {
	p.mu.Lock()
	cmd, done := p.cmd, p.done
	p.mu.Unlock()
	if cmd == nil {
		return
	}
	select {
	case <-done:
		return
	default:
	}
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-done:
	case <-time.After(grace):
		_ = cmd.Process.Signal(syscall.SIGKILL)
		<-done
	}
}

// restart kills the process with SIGKILL and starts it again with the same
// flags.
func (p *proc) restart(t testing.TB) {
	t.Helper()
	p.kill9()
	p.start(t)
}

// tail returns the end of the log file and of the captured output.
func (p *proc) tail(n int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "----- %s: %s (started %d times, killed %d times)\n", p.name, p.logPath, p.starts, p.kills)
	b.WriteString(tailFile(p.logPath, n))
	fmt.Fprintf(&b, "----- %s: stdout/stderr %s\n", p.name, p.outPath)
	b.WriteString(tailFile(p.outPath, n/4))
	return b.String()
}

// tailFile returns the last n bytes of a file, from a line start.
func tailFile(path string, n int) string {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Sprintf("(%v)\n", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return fmt.Sprintf("(%v)\n", err)
	}
	off := max(st.Size()-int64(n), 0)
	b, err := io.ReadAll(io.NewSectionReader(f, off, st.Size()-off))
	if err != nil {
		return fmt.Sprintf("(%v)\n", err)
	}
	s := string(b)
	if off > 0 {
		if i := strings.IndexByte(s, '\n'); i >= 0 {
			s = s[i+1:]
		}
	}
	return s
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// mkdir creates dir/name and returns it.
func mkdir(t testing.TB, dir, name string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.MkdirAll(p, 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}
