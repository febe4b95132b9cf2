package e2e

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/walb-go/walb/nbd"
)

// maxWriteLen bounds one qemu-io write.
const maxWriteLen = 256 << 10

// burstArgs builds a qemu-io command line of n random operations on the
// device export, ended by a flush: mostly pattern writes (-P, a random
// byte, so that overlapping writes are told apart), writes of random data
// (-s, from the cluster's pattern files), zero writes (-z, logged as
// zeros) and discards (logged as DISCARD records; the archive runs with
// -discard zero, so they restore as the zeros the device reads).
// Offsets and lengths are multiples of 512 bytes.
func (c *cluster) burstArgs(rng *rand.Rand, n int) []string {
	return qemuIOArgs(c.nbdURI(), burstOps(rng, c.devSize, c.patterns, n))
}

// burstOps returns n random qemu-io operations (each a -c argument) on a
// device of devSize bytes, writing random data from the patterns files.
func burstOps(rng *rand.Rand, devSize int64, patterns []string, n int) []string {
	var ops []string
	for i := 0; i < n; i++ {
		length := (1 + rng.Int64N(maxWriteLen/512)) * 512
		off := rng.Int64N((devSize-length)/512+1) * 512
		var op string
		switch r := rng.IntN(100); {
		case r < 60:
			op = fmt.Sprintf("write -q -P 0x%02x %d %d", rng.IntN(256), off, length)
		case r < 85:
			op = fmt.Sprintf("write -q -s %s %d %d", patterns[rng.IntN(len(patterns))], off, length)
		case r < 95:
			op = fmt.Sprintf("write -q -z %d %d", off, length)
		default:
			op = fmt.Sprintf("discard -q %d %d", off, length)
		}
		ops = append(ops, op)
	}
	return ops
}

// qemuIOArgs is the qemu-io command line running ops on the NBD export
// uri, ended by a flush.
func qemuIOArgs(uri string, ops []string) []string {
	args := []string{"-f", "raw", uri}
	for _, op := range ops {
		args = append(args, "-c", op)
	}
	return append(args, "-c", "flush")
}

// writeBurst runs one qemu-io process doing n random operations through
// NBD. qemu-io reports failed operations on its output, so any output is
// an error.
func (c *cluster) writeBurst(ctx context.Context, rng *rand.Rand, n int) error {
	return runQemuIO(ctx, c.burstArgs(rng, n))
}

// runQemuIO runs qemu-io with args; any output (a failed operation) is an
// error.
func runQemuIO(ctx context.Context, args []string) error {
	out, err := run(ctx, qemuIOBin, args...)
	if err != nil {
		return err
	}
	if s := strings.TrimSpace(out); s != "" {
		return fmt.Errorf("qemu-io: %s", s)
	}
	return nil
}

// writer runs write bursts in the background until stopped.
type writer struct {
	stop   chan struct{}
	wg     sync.WaitGroup
	bursts atomic.Int64
	err    error
}

// startWriter starts bursts of 8 operations, back to back.
func (c *cluster) startWriter(seed uint64) *writer {
	return startBurstWriter(rand.New(rand.NewPCG(seed, 0x77)), c.writeBurst)
}

// startBurstWriter runs burst (8 operations each) back to back on its own
// goroutine until finish.
func startBurstWriter(rng *rand.Rand, burst func(context.Context, *rand.Rand, int) error) *writer {
	w := &writer{stop: make(chan struct{})}
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		for {
			select {
			case <-w.stop:
				return
			default:
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			err := burst(ctx, rng, 8)
			cancel()
			if err != nil {
				w.err = err
				return
			}
			w.bursts.Add(1)
		}
	}()
	return w
}

// finish stops the writer after its current burst and returns the first
// error. The burst is let finish (never killed): a write still in flight
// inside the device daemon when a snapshot is taken would make the image
// read afterwards differ from the snapshot.
func (w *writer) finish() error {
	close(w.stop)
	w.wg.Wait()
	return w.err
}

// deviceSHA reads the whole device through its NBD export (after the
// writers flushed) and returns its sha256.
func (c *cluster) deviceSHA(ctx context.Context) (string, error) {
	return nbdSHA(ctx, c.nbdAddr, volume, c.devSize)
}

// nbdSHA reads the whole export of size bytes and returns its sha256.
func nbdSHA(ctx context.Context, addr, export string, size int64) (string, error) {
	cl, err := nbd.Dial(ctx, "tcp", addr, nbd.ClientOptions{Export: export})
	if err != nil {
		return "", err
	}
	defer cl.Close()
	if cl.Size() != size {
		return "", fmt.Errorf("device export %s is %d bytes, want %d", export, cl.Size(), size)
	}
	return shaOf(io.NewSectionReader(cl, 0, size))
}

// fileSHA hashes the first size bytes of a file, which must have them.
func fileSHA(path string, size int64) (string, error) {
	f, err := os.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return "", err
	}
	if st.Size() < size {
		return "", fmt.Errorf("%s is %d bytes, want at least %d", path, st.Size(), size)
	}
	return shaOf(io.NewSectionReader(f, 0, size))
}

func shaOf(r io.Reader) (string, error) {
	h := sha256.New()
	buf := make([]byte, 1<<20)
	if _, err := io.CopyBuffer(h, r, buf); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// snapshot is a snapshot taken by a test and the device image at it.
type snapshot struct {
	gid uint64
	sha string
	at  time.Time
}
