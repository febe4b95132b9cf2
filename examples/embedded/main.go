// Command embedded is the smallest program that embeds WalB backup with
// package group: it starts a backup group in its own process, backs a
// volume up, snapshots it, overwrites the data and gets it back from the
// snapshot. With -serve it then keeps the group running for other
// programs (NBD clients, walbc, examples/orchestrator) until interrupted.
//
// Usage:
//
//	embedded [-dir DIR] [-size MiB] [-serve]
package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/walb-go/walb/group"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, nil); err != nil {
		fmt.Fprintln(os.Stderr, "embedded:", err)
		stop()
		os.Exit(1)
	}
}

// run is the program; ready, if not nil, receives the group once it
// serves (with -serve), for tests.
func run(ctx context.Context, args []string, out io.Writer, ready chan<- *group.Group) (err error) {
	fs := flag.NewFlagSet("embedded", flag.ContinueOnError)
	fs.SetOutput(out)
	dir := fs.String("dir", "", "group directory, kept for the next run (default: a temporary one)")
	sizeMiB := fs.Int64("size", 64, "device size in MiB")
	serve := fs.Bool("serve", false, "keep the group running until SIGINT or SIGTERM")
	if err := fs.Parse(args); err != nil {
		return err
	}

	g, err := group.Start(ctx, group.Config{Dir: *dir})
	if err != nil {
		return err
	}
	defer func() {
		// Close gets its own context: ctx may be canceled already (the
		// signal that ends -serve), and the shutdown must still be clean.
		cctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if cerr := g.Close(cctx); err == nil {
			err = cerr
		}
	}()

	v, err := g.Volume("vol0") // present when -dir resumes an earlier run
	if err != nil {
		if v, err = g.AddVolume(ctx, "vol0", group.VolumeOptions{Size: *sizeMiB << 20}); err != nil {
			return err
		}
		gid, err := v.FullBackup(ctx)
		if err != nil {
			return err
		}
		fmt.Fprintf(out, "volume vol0 (%d MiB) backed up: restorable at gid %d\n", *sizeMiB, gid)
	} else {
		fmt.Fprintf(out, "volume vol0 resumed from %s\n", g.Dir())
	}

	// The device is an io.ReaderAt and io.WriterAt; every write is logged
	// and flows to the archive.
	dev := v.Device()
	msg := []byte(fmt.Sprintf("hello from %s", time.Now().Format(time.RFC3339Nano)))
	block := make([]byte, 4096)
	copy(block, msg)
	if _, err := dev.WriteAt(block, 0); err != nil {
		return err
	}
	gid, err := v.Snapshot(ctx)
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "wrote %q, snapshot gid %d\n", msg, gid)
	if _, err := dev.WriteAt(make([]byte, 4096), 0); err != nil {
		return err
	}

	img, err := v.Restore(ctx, gid)
	if err != nil {
		return err
	}
	f, err := os.Open(img.Path)
	if err != nil {
		return err
	}
	got := make([]byte, len(msg))
	_, err = f.ReadAt(got, 0)
	f.Close()
	if err != nil {
		return err
	}
	if !bytes.Equal(got, msg) {
		return fmt.Errorf("restored gid %d holds %q, want %q", gid, got, msg)
	}
	fmt.Fprintf(out, "overwrote it; restored gid %d reads %q again\n", gid, got)
	if err := g.Controller().DelRestored(ctx, g.Primary(), "vol0", gid); err != nil {
		return err
	}

	if !*serve {
		return nil
	}
	l := g.Layout()
	var flags []string
	for _, s := range l.All() {
		flags = append(flags, fmt.Sprintf("-%s %s=%s", s.Kind, s.Name, s.Addr))
	}
	fmt.Fprintf(out, "serving until interrupted:\n  device  %s\n  servers %s\n",
		v.NBDURI(), strings.Join(flags, " "))
	if ready != nil {
		ready <- g
	}
	<-ctx.Done()
	fmt.Fprintln(out, "shutting down")
	return nil
}
