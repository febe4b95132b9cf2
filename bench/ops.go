package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/signal"
	"runtime/pprof"
	"strconv"
	"syscall"
	"time"

	"github.com/pkg/errors"
	"golang.org/x/sys/unix"

	"github.com/walb-go/walb/internal/cli"
)

// childOp runs one measured operation and returns how long its core took.
type childOp func(ctx context.Context, args []string) (time.Duration, error)

var childOps = map[string]childOp{
	"memmove": opMemmove, // BYTES
	"write":   opWrite,   // PATH BYTES
	"read":    opRead,    // PATH
	"tool":    opTool,    // TOOL ARGS... (a walb tool, as cmd/ runs it)
}

// childMain is the child side of runChild: NAME [-cpuprofile FILE] ARGS...
// It prints the operation's duration on a line starting with innerPrefix.
func childMain(args []string) int {
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "bench -op: missing operation")
		return 2
	}
	op, ok := childOps[args[0]]
	if !ok {
		fmt.Fprintf(os.Stderr, "bench -op: unknown operation %q\n", args[0])
		return 2
	}
	fs := flag.NewFlagSet("bench -op "+args[0], flag.ContinueOnError)
	profile := fs.String("cpuprofile", "", "write a CPU profile of the operation to this file")
	if err := fs.Parse(args[1:]); err != nil {
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if *profile != "" {
		f, err := os.Create(*profile)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}
	d, err := op(ctx, fs.Args())
	if *profile != "" {
		pprof.StopCPUProfile()
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench -op %s: %v\n", args[0], err)
		return 1
	}
	fmt.Printf("%s%d\n", innerPrefix, d.Nanoseconds())
	return 0
}

func wantArgs(args []string, n int, usage string) error {
	if len(args) != n {
		return errors.Errorf("want arguments %s, got %q", usage, args)
	}
	return nil
}

// memmoveBuf is larger than any CPU cache, so the copy runs at memory speed.
const memmoveBuf = 32 << 20

func opMemmove(_ context.Context, args []string) (time.Duration, error) {
	if err := wantArgs(args, 1, "BYTES"); err != nil {
		return 0, err
	}
	n, err := strconv.ParseInt(args[0], 10, 64)
	if err != nil || n <= 0 {
		return 0, errors.Errorf("bad byte count %q", args[0])
	}
	src, dst := make([]byte, memmoveBuf), make([]byte, memmoveBuf)
	fillRandom(src)
	copy(dst, src) // fault both buffers in before the clock starts
	start := time.Now()
	for left := n; left > 0; left -= memmoveBuf {
		k := min(left, memmoveBuf)
		copy(dst[:k], src[:k])
	}
	return time.Since(start), nil
}

// ioChunk is the size of each write and read call of the raw file baselines.
const ioChunk = 1 << 20

func opWrite(_ context.Context, args []string) (time.Duration, error) {
	if err := wantArgs(args, 2, "PATH BYTES"); err != nil {
		return 0, err
	}
	n, err := strconv.ParseInt(args[1], 10, 64)
	if err != nil || n <= 0 {
		return 0, errors.Errorf("bad byte count %q", args[1])
	}
	buf := make([]byte, ioChunk)
	fillRandom(buf)
	start := time.Now()
	f, err := os.OpenFile(args[0], os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	for left := n; left > 0; left -= ioChunk {
		if _, err := f.Write(buf[:min(left, ioChunk)]); err != nil {
			return 0, err
		}
	}
	if err := unix.Fdatasync(int(f.Fd())); err != nil {
		return 0, errors.Wrap(err, "fdatasync")
	}
	if err := f.Close(); err != nil {
		return 0, err
	}
	return time.Since(start), nil
}

func opRead(_ context.Context, args []string) (time.Duration, error) {
	if err := wantArgs(args, 1, "PATH"); err != nil {
		return 0, err
	}
	buf := make([]byte, ioChunk)
	start := time.Now()
	f, err := os.Open(args[0])
	if err != nil {
		return 0, err
	}
	defer f.Close()
	for {
		_, err := f.Read(buf)
		if err == io.EOF {
			break
		}
		if err != nil {
			return 0, err
		}
	}
	return time.Since(start), nil
}

func opTool(ctx context.Context, args []string) (time.Duration, error) {
	if len(args) == 0 {
		return 0, errors.New("want arguments TOOL ARGS...")
	}
	tool, ok := cli.Tools[args[0]]
	if !ok {
		return 0, errors.Errorf("unknown tool %q", args[0])
	}
	start := time.Now()
	err := tool(ctx, args[1:], os.Stdout, os.Stderr)
	return time.Since(start), errors.WithMessage(err, args[0])
}

func fillRandom(b []byte) {
	_, _ = rand.NewChaCha8([32]byte{1}).Read(b) // never fails
}
