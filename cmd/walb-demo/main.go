// Command walb-demo runs the SDK's demonstration on the embedded default
// backup group: a WalB device, a storage, a proxy and two archives start
// in this process (temporary directory, loopback ports); the device is
// written in random bursts, backed up in full while being written,
// snapshotted between bursts; every snapshot is restored at the archive
// and checked against the device's sha256 at that snapshot; the older
// diffs are applied to the base and the newer snapshots restored and
// checked again; then the volume goes standby, is written, comes back by
// hash backup and is replicated to the second archive, both checked by
// restore. It exits 0 when every check passed, 1 with the reason
// otherwise.
//
// Usage:
//
//	walb-demo [-dir DIR] [-size MiB] [-log MiB] [-snapshots N] [-writes N] [-seed N] [-v]
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/walb-go/walb/internal/demo"
)

func main() {
	opt := demo.DefaultOptions
	fs := flag.NewFlagSet("walb-demo", flag.ExitOnError)
	fs.StringVar(&opt.Dir, "dir", "", "group directory, kept afterwards (default: a temporary directory, removed)")
	fs.IntVar(&opt.DeviceMiB, "size", opt.DeviceMiB, "device size in MiB")
	fs.IntVar(&opt.LogMiB, "log", opt.LogMiB, "log device size in MiB")
	fs.IntVar(&opt.Snapshots, "snapshots", opt.Snapshots, "bursts of writes, each followed by a snapshot (at least 2)")
	fs.IntVar(&opt.BurstWrites, "writes", opt.BurstWrites, "writes per burst")
	fs.Uint64Var(&opt.Seed, "seed", opt.Seed, "seed of the written data and offsets")
	verbose := fs.Bool("v", false, "print the servers' logs to stderr")
	_ = fs.Parse(os.Args[1:])
	if fs.NArg() != 0 {
		fs.Usage()
		os.Exit(2)
	}
	if *verbose {
		opt.Logger = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := demo.Run(ctx, os.Stdout, opt); err != nil {
		fmt.Fprintln(os.Stderr, "walb-demo: FAILED:", err)
		stop()
		os.Exit(1)
	}
}
