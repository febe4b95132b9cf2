package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/nbd"
	"github.com/walb-go/walb/walb"
)

// The nbd suite's child operation serves one export and copies through it
// with qemu-img; the measured time is qemu-img's life.

func init() {
	childOps["nbd"] = opNBD // SERVER DIRECTION LOCAL DATA LDEV STATS
}

// NBD servers of the suite.
const (
	serverQemu = "qemu-nbd" // qemu-nbd serving the raw data file
	serverFile = "go-file"  // nbd.Server with an nbd.FileBackend on the data file
	serverWalb = "go-walb"  // nbd.Server with a walb.Device over the data file and a log file
)

const exportName = "bench"

// qemuImgArgs are the qemu-img command lines. Writing into the export,
// -t writeback makes qemu-img send NBD_CMD_FLUSH before it exits, so the
// copy ends durable on every server. Reading from the export, the local
// copy is written with -t unsafe (no fdatasync), so that the export's read
// path is what is timed, not the local disk. Sources are read through the
// page cache (-T writeback).
func qemuImgArgs(direction, local, url string) ([]string, error) {
	switch direction {
	case "write":
		return []string{"convert", "-n", "-f", "raw", "-O", "raw", "-T", "writeback", "-t", "writeback", local, url}, nil
	case "read":
		return []string{"convert", "-f", "raw", "-O", "raw", "-T", "writeback", "-t", "unsafe", url, local}, nil
	}
	return nil, errors.Errorf("unknown direction %q (want write or read)", direction)
}

// qemuNBDArgs serve the raw file path on 127.0.0.1:port.
func qemuNBDArgs(port, path string) []string {
	return []string{"-f", "raw", "--persistent", "--cache=writeback", "-b", "127.0.0.1", "-p", port, "-x", exportName, path}
}

// opNBD serves DATA with SERVER, runs qemu-img to copy LOCAL into the
// export (DIRECTION write) or the export into LOCAL (read), and stops the
// server. It reports qemu-img's wall time and, in STATS, the CPU time and
// peak RSS of the server and of qemu-img, and our servers' request counts.
func opNBD(ctx context.Context, args []string) (time.Duration, error) {
	if err := wantArgs(args, 6, "SERVER DIRECTION LOCAL DATA LDEV STATS"); err != nil {
		return 0, err
	}
	server, direction, local, data, ldev, stats := args[0], args[1], args[2], args[3], args[4], args[5]
	st := childStats{}
	var (
		url  string
		stop func() error
	)
	switch server {
	case serverQemu:
		q, addr, err := startQemuNBD(ctx, data)
		if err != nil {
			return 0, err
		}
		url = "nbd://" + addr + "/" + exportName
		stop = func() error {
			_ = q.cmd.Process.Signal(syscall.SIGTERM)
			<-q.exited
			st.addProcUsage("server_", q.cmd.ProcessState)
			return nil
		}
	case serverFile, serverWalb:
		var (
			backend countedBackend
			closer  func() error
		)
		if server == serverFile {
			fb, err := nbd.OpenFileBackend(data, false)
			if err != nil {
				return 0, err
			}
			backend, closer = newCountedBackend(fb), fb.Close
		} else {
			dev, err := walb.Open(ctx, ldev, data, walb.Options{Logger: childLogger()})
			if err != nil {
				return 0, err
			}
			backend, closer = newCountedBackend(dev), dev.Close
		}
		srv := nbd.NewServer(nbd.Options{Logger: childLogger()})
		if err := srv.AddExport(exportName, backend, false, "bench"); err != nil {
			closer()
			return 0, err
		}
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			closer()
			return 0, errors.Wrap(err, "listen")
		}
		served := make(chan error, 1)
		go func() { served <- srv.Serve(ctx, l) }()
		url = "nbd://" + l.Addr().String() + "/" + exportName
		stop = func() error {
			err := srv.Shutdown(ctx)
			if e := <-served; err == nil && !errors.Is(e, nbd.ErrServerClosed) {
				err = e
			}
			start := time.Now()
			if e := closer(); err == nil {
				err = e
			}
			st["close_ns"] = int64(time.Since(start))
			backend.addTo(st)
			if e := st.addSelfUsage("server_"); err == nil {
				err = e
			}
			return err
		}
	default:
		return 0, errors.Errorf("unknown server %q", server)
	}

	qargs, err := qemuImgArgs(direction, local, url)
	if err != nil {
		stop()
		return 0, err
	}
	cmd := exec.CommandContext(ctx, "qemu-img", qargs...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	watch := startCPUWatch()
	start := time.Now()
	runErr := cmd.Run()
	d := time.Since(start)
	if cmd.ProcessState != nil {
		st.addProcUsage("client_", cmd.ProcessState)
	}
	// qemu-nbd's own CPU time is known once it has exited, below.
	others, othersOK := watch.others(st.dur("client_cpu_ns"))
	stopErr := stop()
	if othersOK {
		if server == serverQemu {
			others = max(0, others-st.dur("server_cpu_ns"))
		}
		st["others_cpu_ns"] = int64(others)
	}
	if runErr != nil {
		return 0, errors.Wrapf(runErr, "qemu-img %s: %s", strings.Join(qargs, " "), strings.TrimSpace(out.String()))
	}
	if stopErr != nil {
		return 0, stopErr
	}
	return d, st.appendTo(stats)
}

type qemuNBD struct {
	cmd    *exec.Cmd
	exited chan struct{} // closed when cmd has been waited for
}

// startQemuNBD starts qemu-nbd on a free loopback port and waits until it
// accepts connections. The port is found by binding and releasing it, so
// another process may take it first: qemu-nbd then exits and the next
// port is tried.
func startQemuNBD(ctx context.Context, data string) (*qemuNBD, string, error) {
	var lastErr error
	for range 5 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, "", errors.Wrap(err, "find a free port")
		}
		addr := l.Addr().String()
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		cmd := exec.CommandContext(ctx, "qemu-nbd", qemuNBDArgs(strconv.Itoa(port), data)...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			return nil, "", errors.Wrap(err, "start qemu-nbd")
		}
		q := &qemuNBD{cmd: cmd, exited: make(chan struct{})}
		go func() {
			_ = cmd.Wait()
			close(q.exited)
		}()
		deadline := time.Now().Add(10 * time.Second)
		for {
			c, err := net.DialTimeout("tcp", addr, time.Second)
			if err == nil {
				c.Close()
				return q, addr, nil
			}
			select {
			case <-q.exited:
				lastErr = errors.Errorf("qemu-nbd exited: %s", strings.TrimSpace(stderr.String()))
			case <-time.After(10 * time.Millisecond):
				if time.Now().Before(deadline) {
					continue
				}
				_ = cmd.Process.Kill()
				<-q.exited
				return nil, "", errors.Errorf("qemu-nbd did not listen on %s within 10 s: %s", addr, strings.TrimSpace(stderr.String()))
			}
			break
		}
	}
	return nil, "", lastErr
}

// fullBackend is what both of our exports implement.
type fullBackend interface {
	nbd.Backend
	nbd.Flusher
	nbd.FUAWriter
	nbd.Trimmer
	nbd.ZeroWriter
	nbd.MultiConner
}

// countedBackend passes every request to its backend and counts them, so
// the report can show what qemu-img asked for.
type countedBackend struct {
	b fullBackend
	c *requestCounts
}

type requestCounts struct {
	reads, readBytes, writes, writeBytes atomic.Int64
	flushes, fuas, trims, zeroes         atomic.Int64
	inFlight, maxInFlight                atomic.Int64
}

func newCountedBackend(b fullBackend) countedBackend {
	return countedBackend{b: b, c: &requestCounts{}}
}

func (cb countedBackend) enter() {
	n := cb.c.inFlight.Add(1)
	for {
		m := cb.c.maxInFlight.Load()
		if n <= m || cb.c.maxInFlight.CompareAndSwap(m, n) {
			return
		}
	}
}

func (cb countedBackend) leave() { cb.c.inFlight.Add(-1) }

func (cb countedBackend) Size() int64 { return cb.b.Size() }

func (cb countedBackend) ReadAt(p []byte, off int64) (int, error) {
	cb.enter()
	defer cb.leave()
	cb.c.reads.Add(1)
	cb.c.readBytes.Add(int64(len(p)))
	return cb.b.ReadAt(p, off)
}

func (cb countedBackend) WriteAt(p []byte, off int64) (int, error) {
	cb.enter()
	defer cb.leave()
	cb.c.writes.Add(1)
	cb.c.writeBytes.Add(int64(len(p)))
	return cb.b.WriteAt(p, off)
}

func (cb countedBackend) WriteAtFUA(p []byte, off int64) (int, error) {
	cb.enter()
	defer cb.leave()
	cb.c.fuas.Add(1)
	cb.c.writeBytes.Add(int64(len(p)))
	return cb.b.WriteAtFUA(p, off)
}

func (cb countedBackend) Flush() error {
	cb.c.flushes.Add(1)
	return cb.b.Flush()
}

func (cb countedBackend) Trim(off, length int64) error {
	cb.c.trims.Add(1)
	return cb.b.Trim(off, length)
}

func (cb countedBackend) WriteZeroes(off, length int64, mayTrim bool) error {
	cb.c.zeroes.Add(1)
	return cb.b.WriteZeroes(off, length, mayTrim)
}

func (cb countedBackend) CanMultiConn() bool { return cb.b.CanMultiConn() }

func (cb countedBackend) addTo(st childStats) {
	c := cb.c
	for k, v := range map[string]*atomic.Int64{
		"req_reads": &c.reads, "req_read_bytes": &c.readBytes, "req_writes": &c.writes, "req_write_bytes": &c.writeBytes,
		"req_flushes": &c.flushes, "req_fuas": &c.fuas, "req_trims": &c.trims, "req_zeroes": &c.zeroes,
		"req_max_in_flight": &c.maxInFlight,
	} {
		st[k] = v.Load()
	}
}

// requestSummary describes our server's request counts, or "" for qemu-nbd.
func requestSummary(st childStats) string {
	if _, ok := st["req_reads"]; !ok {
		return ""
	}
	var parts []string
	add := func(n int64, what string, bytes int64) {
		if n == 0 {
			return
		}
		s := fmt.Sprintf("%d %s", n, what)
		if bytes > 0 {
			s += " of " + requestSize(bytes/n)
		}
		parts = append(parts, s)
	}
	add(st["req_reads"], "reads", st["req_read_bytes"])
	add(st["req_writes"]+st["req_fuas"], "writes", st["req_write_bytes"])
	add(st["req_fuas"], "FUA", 0)
	add(st["req_flushes"], "flushes", 0)
	add(st["req_zeroes"], "write-zeroes", 0)
	add(st["req_trims"], "trims", 0)
	return fmt.Sprintf("requests: %s; up to %d in flight", strings.Join(parts, ", "), st["req_max_in_flight"])
}

// toolVersion is the first line of `name --version`, or "" if it fails.
func toolVersion(name string) string {
	out, err := exec.Command(name, "--version").Output()
	if err != nil {
		return ""
	}
	line, _, _ := strings.Cut(string(out), "\n")
	return strings.TrimSpace(line)
}

// needTools reports the first of names missing from PATH.
func needTools(names ...string) error {
	for _, n := range names {
		if _, err := exec.LookPath(n); err != nil {
			return errors.Errorf("%s not found in PATH", n)
		}
	}
	return nil
}

// requestSize formats an average request size.
func requestSize(n int64) string {
	if n < 1<<20 {
		return fmt.Sprintf("%.0f KiB", float64(n)/1024)
	}
	return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
}
