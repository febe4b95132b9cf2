package nbd

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// Integration tests against real Debian clients (packages listed in
// .ci/apt-nbd.txt). Missing binaries skip the test on a developer machine
// and fail it in CI, which must never pass by skipping.

func requireTool(t *testing.T, name string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s not installed (see .ci/apt-nbd.txt): %v", name, err)
		}
		t.Skipf("%s not installed; apt-get install the packages in .ci/apt-nbd.txt to run this test", name)
	}
	return path
}

// run runs a client command with a timeout and returns its combined output,
// failing the test on a non-zero exit.
func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := runErr(t, name, args...)
	require.NoErrorf(t, err, "%s %s:\n%s", name, strings.Join(args, " "), out)
	return out
}

func runErr(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	path := requireTool(t, name)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, path, args...)
	cmd.Env = append(os.Environ(), "LIBNBD_DEBUG=0")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// syncBuffer collects a running command's output for error messages.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func nbdURI(addr, export string) string {
	return fmt.Sprintf("nbd://%s/%s", addr, export)
}

func TestQemuIO(t *testing.T) {
	requireTool(t, "qemu-io")
	mem := NewMemoryBackend(8 << 20)
	copy(mem.data[6<<20:], bytes.Repeat([]byte{0x77}, 1<<20))
	_, addr := startServer(t, Options{}, testExport{name: "disk", backend: mem})
	out := run(t, "qemu-io", "-f", "raw", nbdURI(addr, "disk"),
		"-c", "write -P 0xab 0 1M",
		"-c", "read -P 0xab 0 1M",
		"-c", "write -f -P 0xcd 1M 64k", // FUA
		"-c", "read -P 0xcd 1M 64k",
		"-c", "aio_write -P 0x11 2M 256k",
		"-c", "aio_write -P 0x22 3M 256k",
		"-c", "aio_flush",
		"-c", "read -P 0x11 2M 256k",
		"-c", "read -P 0x22 3M 256k",
		"-c", "write -z 6M 512k", // WRITE_ZEROES
		"-c", "read -P 0 6M 512k",
		"-c", "read -P 0x77 6656k 512k",
		"-c", "discard 4M 1M", // TRIM
		"-c", "flush",
		"-c", "write -P 0x33 8191k 1k", // last KiB of the export
		"-c", "read -P 0x33 8191k 1k",
	)
	require.NotContains(t, out, "Pattern verification failed")
	require.NotContains(t, out, "error")

	data := mem.Bytes()
	require.Equal(t, bytes.Repeat([]byte{0xab}, 1<<20), data[:1<<20])
	require.Equal(t, bytes.Repeat([]byte{0xcd}, 64<<10), data[1<<20:1<<20+64<<10])
	require.Equal(t, bytes.Repeat([]byte{0x11}, 256<<10), data[2<<20:2<<20+256<<10])
	require.Equal(t, bytes.Repeat([]byte{0x22}, 256<<10), data[3<<20:3<<20+256<<10])
	require.Equal(t, make([]byte, 512<<10), data[6<<20:6<<20+512<<10])
	require.Equal(t, bytes.Repeat([]byte{0x77}, 512<<10), data[6<<20+512<<10:7<<20])
	require.Equal(t, make([]byte, 1<<20), data[4<<20:5<<20], "MemoryBackend zeroes trimmed ranges")
	require.Equal(t, bytes.Repeat([]byte{0x33}, 1024), data[8<<20-1024:])

	// A pattern that does not match must be detected, or the checks above
	// prove nothing.
	out, _ = runErr(t, "qemu-io", "-f", "raw", nbdURI(addr, "disk"), "-c", "read -P 0x99 0 4k")
	require.Contains(t, out, "Pattern verification failed")
}

func TestQemuIOReadOnlyAndErrors(t *testing.T) {
	requireTool(t, "qemu-io")
	mem := NewMemoryBackend(1 << 20)
	_, addr := startServer(t, Options{}, testExport{name: "ro", backend: mem, readOnly: true})
	out, err := runErr(t, "qemu-io", "-f", "raw", nbdURI(addr, "ro"), "-c", "write -P 0xab 0 4k")
	require.Error(t, err, "qemu must refuse to open a read-only export for writing:\n%s", out)
	require.Contains(t, out, "Permission denied", "qemu sees NBD_FLAG_READ_ONLY")

	out = run(t, "qemu-io", "-r", "-f", "raw", nbdURI(addr, "ro"), "-c", "read -P 0 0 1M")
	require.NotContains(t, out, "Pattern verification failed")

	out, err = runErr(t, "qemu-io", "-f", "raw", nbdURI(addr, "missing"), "-c", "read 0 4k")
	require.Error(t, err)
	require.Contains(t, out, `export "missing" is not available`, "qemu shows the server's message")
}

func TestQemuImg(t *testing.T) {
	requireTool(t, "qemu-img")
	const size = 6<<20 + 4096
	mem := NewMemoryBackend(size)
	src := randomBytes(21, size)
	clear(src[1<<20 : 3<<20]) // a zero run qemu-img may send as WRITE_ZEROES
	_, addr := startServer(t, Options{}, testExport{name: "disk", backend: mem, desc: "qemu-img target"})
	dir := t.TempDir()

	out := run(t, "qemu-img", "info", "--output=json", nbdURI(addr, "disk"))
	var info struct {
		VirtualSize int64  `json:"virtual-size"`
		Format      string `json:"format"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &info), out)
	require.Equal(t, int64(size), info.VirtualSize)
	require.Equal(t, "raw", info.Format)

	// File -> export.
	srcPath := filepath.Join(dir, "src.raw")
	require.NoError(t, os.WriteFile(srcPath, src, 0o600))
	_, err := mem.WriteAt(bytes.Repeat([]byte{0xff}, 2<<20), 1<<20) // must be zeroed by the copy
	require.NoError(t, err)
	run(t, "qemu-img", "convert", "-n", "-f", "raw", "-O", "raw", srcPath, nbdURI(addr, "disk"))
	require.True(t, bytes.Equal(src, mem.Bytes()), "export differs from the source after qemu-img convert")

	// Export -> file, then compare with cmp.
	dstPath := filepath.Join(dir, "dst.raw")
	run(t, "qemu-img", "convert", "-f", "raw", "-O", "raw", nbdURI(addr, "disk"), dstPath)
	run(t, "cmp", srcPath, dstPath)

	// Export -> qcow2 -> compare through qemu-img compare.
	qcowPath := filepath.Join(dir, "dst.qcow2")
	run(t, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", nbdURI(addr, "disk"), qcowPath)
	run(t, "qemu-img", "compare", "-f", "raw", "-F", "qcow2", nbdURI(addr, "disk"), qcowPath)
}

func TestQemuIOUnixSocket(t *testing.T) {
	requireTool(t, "qemu-io")
	sock := filepath.Join(t.TempDir(), "nbd.sock")
	l, err := net.Listen("unix", sock)
	require.NoError(t, err)
	srv := NewServer(Options{Logger: testLogger(t)})
	mem := NewMemoryBackend(1 << 20)
	require.NoError(t, srv.AddExport("u", mem, false, ""))
	go func() { _ = srv.Serve(context.Background(), l) }()
	t.Cleanup(func() { require.NoError(t, srv.Shutdown(context.Background())) })

	out := run(t, "qemu-io", "-f", "raw", "nbd+unix:///u?socket="+sock,
		"-c", "write -P 0x42 4k 4k", "-c", "read -P 0x42 4k 4k")
	require.NotContains(t, out, "Pattern verification failed")
	require.Equal(t, bytes.Repeat([]byte{0x42}, 4096), mem.Bytes()[4096:8192])
}

func TestNbdinfo(t *testing.T) {
	requireTool(t, "nbdinfo")
	_, addr := startServer(t, Options{MaxRequestSize: 16 << 20},
		testExport{name: "disk", backend: NewMemoryBackend(5 << 20), desc: "a writable disk"},
		testExport{name: "ro", backend: plainBackend{NewMemoryBackend(1 << 20)}, readOnly: true})

	out := run(t, "nbdinfo", "--json", nbdURI(addr, "disk"))
	var info struct {
		Protocol string `json:"protocol"`
		Exports  []struct {
			Name         string `json:"export-name"`
			Description  string `json:"description"`
			Size         int64  `json:"export-size"`
			ReadOnly     bool   `json:"is_read_only"`
			CanFlush     bool   `json:"can_flush"`
			CanFUA       bool   `json:"can_fua"`
			CanTrim      bool   `json:"can_trim"`
			CanZero      bool   `json:"can_zero"`
			CanMultiConn bool   `json:"can_multi_conn"`
			BlockMin     uint32 `json:"block_size_minimum"`
			BlockPref    uint32 `json:"block_size_preferred"`
			BlockMax     uint32 `json:"block_size_maximum"`
		} `json:"exports"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &info), out)
	require.Equal(t, "newstyle-fixed", info.Protocol)
	require.Len(t, info.Exports, 1)
	e := info.Exports[0]
	require.Equal(t, "disk", e.Name)
	require.Equal(t, "a writable disk", e.Description)
	require.Equal(t, int64(5<<20), e.Size)
	require.False(t, e.ReadOnly)
	require.True(t, e.CanFlush)
	require.True(t, e.CanFUA)
	require.True(t, e.CanTrim)
	require.True(t, e.CanZero)
	require.True(t, e.CanMultiConn)
	require.Equal(t, [3]uint32{1, 4096, 16 << 20}, [3]uint32{e.BlockMin, e.BlockPref, e.BlockMax})

	out = run(t, "nbdinfo", "--json", nbdURI(addr, "ro"))
	require.NoError(t, json.Unmarshal([]byte(out), &info), out)
	e = info.Exports[0]
	require.True(t, e.ReadOnly)
	require.False(t, e.CanFlush)
	require.False(t, e.CanFUA)
	require.False(t, e.CanTrim)
	require.False(t, e.CanZero)
	require.False(t, e.CanMultiConn)

	out = run(t, "nbdinfo", "--size", nbdURI(addr, "disk"))
	require.Equal(t, "5242880", strings.TrimSpace(out))

	out = run(t, "nbdinfo", "--list", "--json", "nbd://"+addr)
	require.NoError(t, json.Unmarshal([]byte(out), &info), out)
	var names []string
	for _, e := range info.Exports {
		names = append(names, e.Name)
	}
	require.Equal(t, []string{"disk", "ro"}, names)

	out, err := runErr(t, "nbdinfo", nbdURI(addr, "missing"))
	require.Error(t, err, out)
}

func TestNbdcopy(t *testing.T) {
	requireTool(t, "nbdcopy")
	const size = 9<<20 + 512
	mem := NewMemoryBackend(size)
	_, addr := startServer(t, Options{}, testExport{name: "disk", backend: mem})
	dir := t.TempDir()
	src := randomBytes(31, size)
	clear(src[2<<20 : 4<<20])
	srcPath := filepath.Join(dir, "src.raw")
	require.NoError(t, os.WriteFile(srcPath, src, 0o600))

	// nbdcopy uses several connections since the export allows multi-conn.
	run(t, "nbdcopy", "--connections=4", "--requests=16", srcPath, nbdURI(addr, "disk"))
	require.True(t, bytes.Equal(src, mem.Bytes()), "export differs from the source after nbdcopy")

	dstPath := filepath.Join(dir, "dst.raw")
	run(t, "nbdcopy", nbdURI(addr, "disk"), dstPath)
	run(t, "cmp", srcPath, dstPath)

	// Export to export through the same server.
	mem2 := NewMemoryBackend(size)
	_, addr2 := startServer(t, Options{}, testExport{name: "copy", backend: mem2})
	run(t, "nbdcopy", nbdURI(addr, "disk"), nbdURI(addr2, "copy"))
	require.True(t, bytes.Equal(src, mem2.Bytes()))
}

func TestNbdcopyFileBackendAndCopyOnWrite(t *testing.T) {
	requireTool(t, "nbdcopy")
	const size = 4 << 20
	dir := t.TempDir()
	basePath := filepath.Join(dir, "base.img")
	baseData := randomBytes(41, size)
	require.NoError(t, os.WriteFile(basePath, baseData, 0o600))
	base, err := OpenFileBackend(basePath, true)
	require.NoError(t, err)
	defer base.Close()
	cow, err := NewCopyOnWrite(ReadOnly(base), dir, 0)
	require.NoError(t, err)
	defer cow.Close()
	_, addr := startServer(t, Options{}, testExport{name: "snap", backend: cow})

	newData := randomBytes(42, size)
	newPath := filepath.Join(dir, "new.raw")
	require.NoError(t, os.WriteFile(newPath, newData, 0o600))
	run(t, "nbdcopy", newPath, nbdURI(addr, "snap"))
	outPath := filepath.Join(dir, "out.raw")
	run(t, "nbdcopy", nbdURI(addr, "snap"), outPath)
	run(t, "cmp", newPath, outPath)
	onDisk, err := os.ReadFile(basePath)
	require.NoError(t, err)
	require.True(t, bytes.Equal(baseData, onDisk), "the base file must not change")
}

func TestNbdfuse(t *testing.T) {
	requireTool(t, "nbdfuse")
	requireTool(t, "fusermount3")
	if _, err := os.Stat("/dev/fuse"); err != nil {
		// A container without FUSE is an environment limit, not a missing
		// package.
		t.Skipf("FUSE is not available here: %v", err)
	}
	mem := NewMemoryBackend(2 << 20)
	copy(mem.data[4096:], "visible through FUSE")
	_, addr := startServer(t, Options{}, testExport{name: "disk", backend: mem})
	mnt := t.TempDir()

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nbdfuse", filepath.Join(mnt, "disk"), nbdURI(addr, "disk"))
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	require.NoError(t, cmd.Start())
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	file := filepath.Join(mnt, "disk")
	// Wait for the mount: the file appears with the export's size.
	for {
		if st, err := os.Stat(file); err == nil && st.Size() == mem.Size() {
			break
		}
		select {
		case err := <-exited:
			if strings.Contains(out.String(), "fuse: device not found") || strings.Contains(out.String(), "Operation not permitted") {
				t.Skipf("FUSE mounts are not permitted here: %s", out.String())
			}
			t.Fatalf("nbdfuse exited before mounting (%v):\n%s", err, out.String())
		case <-time.After(20 * time.Millisecond):
		}
	}
	t.Cleanup(func() {
		_, _ = exec.Command("fusermount3", "-u", mnt).CombinedOutput()
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
		}
	})

	f, err := os.OpenFile(file, os.O_RDWR, 0)
	require.NoError(t, err)
	got := make([]byte, 20)
	_, err = f.ReadAt(got, 4096)
	require.NoError(t, err)
	require.Equal(t, []byte("visible through FUSE"), got)
	_, err = f.WriteAt([]byte("written through FUSE"), 1<<20)
	require.NoError(t, err)
	require.NoError(t, f.Sync())
	require.NoError(t, f.Close())
	require.Equal(t, []byte("written through FUSE"), mem.Bytes()[1<<20:1<<20+20])
}

// TestTLSWithRealClients checks STARTTLS against GnuTLS-based clients
// (qemu-img and nbdinfo), not only against Go's own TLS client.
func TestTLSWithRealClients(t *testing.T) {
	requireTool(t, "qemu-img")
	requireTool(t, "nbdinfo")
	serverTLS, _ := testTLSConfigs(t)
	certDir := t.TempDir()
	cert := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: serverTLS.Certificates[0].Certificate[0]})
	_, err := x509.ParseCertificate(serverTLS.Certificates[0].Certificate[0])
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(certDir, "ca-cert.pem"), cert, 0o600))

	mem := NewMemoryBackend(3 << 20)
	_, addr := startServer(t, Options{TLS: serverTLS, RequireTLS: true}, testExport{name: "secure", backend: mem})
	host, port, err := net.SplitHostPort(addr)
	require.NoError(t, err)

	out := run(t, "qemu-img", "info", "--output=json",
		"--object", "tls-creds-x509,id=tls0,endpoint=client,dir="+certDir,
		"--image-opts", fmt.Sprintf("driver=nbd,host=%s,port=%s,export=secure,tls-creds=tls0", host, port))
	require.Contains(t, out, `"virtual-size": 3145728`)

	out = run(t, "nbdinfo", "--size", fmt.Sprintf("nbds://%s/secure?tls-certificates=%s", addr, certDir))
	require.Equal(t, "3145728", strings.TrimSpace(out))

	// Without TLS the server refuses.
	out, err = runErr(t, "nbdinfo", nbdURI(addr, "secure"))
	require.Error(t, err, out)
}

// TestClientAgainstNbdkit checks the Go client against an independent
// server implementation: nbdkit's memory plugin.
func TestClientAgainstNbdkit(t *testing.T) {
	nbdkit := requireTool(t, "nbdkit")
	sock := filepath.Join(t.TempDir(), "nbdkit.sock")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, nbdkit, "--foreground", "--exit-with-parent", "--unix", sock,
		"--exportname", "mem", "memory", "size=4M")
	var out syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	require.NoError(t, cmd.Start())
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
	})
	var c *Client
	for c == nil {
		if _, err := os.Stat(sock); err == nil {
			var err error
			c, err = Dial(ctx, "unix", sock, ClientOptions{Export: "mem"})
			require.NoError(t, err, out.String())
			break
		}
		select {
		case err := <-exited:
			t.Fatalf("nbdkit exited (%v):\n%s", err, out.String())
		case <-time.After(10 * time.Millisecond):
		}
	}
	defer c.Close()

	require.Equal(t, int64(4<<20), c.Size())
	flags := c.Flags()
	for _, f := range []TransmissionFlags{FlagHasFlags, FlagSendFlush, FlagSendFUA, FlagSendTrim, FlagSendWriteZeroes} {
		require.NotZero(t, flags&f, "nbdkit memory advertises %v (got %v)", f, flags)
	}
	data := randomBytes(51, 3<<20)
	_, err := c.WriteAt(data, 1000)
	require.NoError(t, err)
	_, err = c.WriteAtFUA([]byte("fua"), 0)
	require.NoError(t, err)
	require.NoError(t, c.WriteZeroes(1<<20, 4096, false))
	clear(data[1<<20-1000 : 1<<20-1000+4096])
	require.NoError(t, c.Flush())
	got := make([]byte, len(data))
	_, err = c.ReadAt(got, 1000)
	require.NoError(t, err)
	require.True(t, bytes.Equal(data, got), "data read back from nbdkit differs")
	require.NoError(t, c.Trim(2<<20, 1<<20))
	_, err = c.ReadAt(make([]byte, 512), 4<<20-256)
	require.ErrorIs(t, err, io.EOF)

	conn, err := net.Dial("unix", sock)
	require.NoError(t, err)
	info, err := QueryExport(ctx, conn, ClientOptions{Export: "mem"})
	require.NoError(t, err)
	require.Equal(t, int64(4<<20), info.Size)
}
