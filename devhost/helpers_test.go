package devhost

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/nbd"
	"github.com/walb-go/walb/walb"
)

func testLogger(t testing.TB) *slog.Logger {
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
}

func testCtx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// deviceFiles creates a sparse log device and data device in dir and
// formats the log device with name (which may be empty).
func deviceFiles(t testing.TB, dir, name string, ldevSize, ddevSize int64) (ldev, ddev string) {
	t.Helper()
	ldev = filepath.Join(dir, name+".ldev")
	ddev = filepath.Join(dir, name+".ddev")
	require.NoError(t, os.WriteFile(ldev, nil, 0o600))
	require.NoError(t, os.Truncate(ldev, ldevSize))
	require.NoError(t, os.WriteFile(ddev, nil, 0o600))
	require.NoError(t, os.Truncate(ddev, ddevSize))
	_, err := walb.FormatLogDevice(ldev, ddev, walb.FormatOptions{Name: name})
	require.NoError(t, err)
	return ldev, ddev
}

// testDaemon is an in-process daemon on a port-0 NBD listener.
type testDaemon struct {
	*Daemon
	cfg    Config
	client *Client
}

func startDaemon(t testing.TB, base string) *testDaemon {
	t.Helper()
	cfg := Config{
		BaseDir:       base,
		NBDAddr:       "127.0.0.1:0",
		ControlSocket: filepath.Join(t.TempDir(), "ctl.sock"),
		Logger:        testLogger(t),
	}
	d, err := StartDaemon(testCtx(t), cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = d.Shutdown(context.Background()) })
	return &testDaemon{Daemon: d, cfg: cfg, client: NewClient(cfg.ControlSocket)}
}

func (d *testDaemon) addr() string { return d.NBDAddr().String() }

// dial connects the Go NBD client to the export name.
func (d *testDaemon) dial(t testing.TB, name string) *nbd.Client {
	t.Helper()
	return dialNBD(t, d.addr(), name)
}

func dialNBD(t testing.TB, addr, name string) *nbd.Client {
	t.Helper()
	c, err := nbd.Dial(testCtx(t), "tcp", addr, nbd.ClientOptions{Export: name})
	require.NoError(t, err)
	t.Cleanup(func() { c.Close() })
	return c
}

func randomBytes(seed uint64, n int) []byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(r.Uint32())
	}
	return b
}

func sha256Of(t testing.TB, r io.Reader) string {
	t.Helper()
	h := sha256.New()
	_, err := io.Copy(h, r)
	require.NoError(t, err)
	return hex.EncodeToString(h.Sum(nil))
}

func sha256File(t testing.TB, path string) string {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	return sha256Of(t, f)
}

// readAll reads a whole export through the Go client.
func readAll(t testing.TB, c *nbd.Client) []byte {
	t.Helper()
	b := make([]byte, c.Size())
	_, err := c.ReadAt(b, 0)
	require.NoError(t, err)
	return b
}

func requireZero(t testing.TB, b []byte) {
	t.Helper()
	require.True(t, bytes.Equal(b, make([]byte, len(b))), "expected zeros")
}
