package nbd_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"

	"github.com/walb-go/walb/nbd"
)

// Example serves a copy-on-write view of a read-only base and reads back a
// client's write, leaving the base untouched.
func Example() {
	ctx := context.Background()
	base := nbd.NewMemoryBackend(1 << 20)
	if _, err := base.WriteAt([]byte("snapshot data"), 0); err != nil {
		panic(err)
	}
	view, err := nbd.NewCopyOnWrite(nbd.ReadOnly(base), "", 0)
	if err != nil {
		panic(err)
	}
	defer view.Close()

	srv := nbd.NewServer(nbd.Options{Logger: slog.New(slog.DiscardHandler), DefaultExport: "snap"})
	if err := srv.AddExport("snap", view, false, "writable view of a snapshot"); err != nil {
		panic(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	go func() { _ = srv.Serve(ctx, l) }()
	defer func() { _ = srv.Shutdown(ctx) }()

	// Any NBD client works here, e.g. qemu-img info nbd://127.0.0.1:PORT/snap.
	c, err := nbd.Dial(ctx, "tcp", l.Addr().String(), nbd.ClientOptions{Export: "snap"})
	if err != nil {
		panic(err)
	}
	defer c.Close()
	if _, err := c.WriteAt([]byte("SNAPSHOT"), 0); err != nil {
		panic(err)
	}
	got := make([]byte, 13)
	if _, err := c.ReadAt(got, 0); err != nil {
		panic(err)
	}
	orig := make([]byte, 13)
	if _, err := base.ReadAt(orig, 0); err != nil {
		panic(err)
	}
	fmt.Printf("export: %s\nbase:   %s\nflags:  %v\n", got, orig, c.Flags())
	// Output:
	// export: SNAPSHOT data
	// base:   snapshot data
	// flags:  HAS_FLAGS|SEND_FLUSH|SEND_FUA|SEND_TRIM|SEND_WRITE_ZEROES|CAN_MULTI_CONN
}

// ExampleListExports lists a server's exports, as nbdinfo --list does.
func ExampleListExports() {
	srv := nbd.NewServer(nbd.Options{Logger: slog.New(slog.DiscardHandler)})
	_ = srv.AddExport("vol0", nbd.NewMemoryBackend(4096), true, "volume 0, gid 12")
	_ = srv.AddExport("vol1", nbd.NewMemoryBackend(4096), true, "volume 1, gid 7")
	client, server := net.Pipe()
	go func() { _ = srv.ServeConn(context.Background(), server) }()
	list, err := nbd.ListExports(context.Background(), client, nil)
	if err != nil {
		panic(err)
	}
	for _, e := range list {
		fmt.Printf("%s: %s\n", e.Name, e.Description)
	}
	// Output:
	// vol0: volume 0, gid 12
	// vol1: volume 1, gid 7
}
