// Command walb-demo runs the SDK's demonstration on the embedded default:
// a WalB device in this process is written to, its log extracted at each
// snapshot, and every snapshot restored from base + diffs and verified.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"

	"github.com/walb-go/walb/internal/demo"
)

func main() {
	opt := demo.DefaultOptions
	flag.StringVar(&opt.Dir, "dir", "", "work directory (default: a temporary directory, removed afterwards)")
	flag.IntVar(&opt.Snapshots, "snapshots", opt.Snapshots, "snapshots to take and verify")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := demo.Run(ctx, os.Stdout, opt); err != nil {
		fmt.Fprintln(os.Stderr, "walb-demo:", err)
		os.Exit(1)
	}
}
