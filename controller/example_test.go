package controller

import (
	"context"
	"fmt"
	"time"
)

// exampleLayout stands in for a real backup group: it starts fake servers
// on 127.0.0.1 and returns their layout (in production the layout lists the
// addresses of running walb-storage, walb-proxy and walb-archive servers).
func exampleLayout() (Layout, func()) {
	g, err := newFakeGroup(1, 2, 1)
	if err != nil {
		panic(err)
	}
	return g.layout, g.close
}

// The life of a volume: put it under backup, take snapshots, restore one.
func Example() {
	layout, stop := exampleLayout()
	defer stop()
	// A layout is the backup group's servers: storages, proxies in
	// priority order, archives with the primary first. Here:
	//   s0 (storage), p0 and p1 (proxies), a0 (archive)
	s0, a0 := layout.Storages[0], layout.Archives[0]

	ctl, err := New(layout, &Options{ClientID: "example", Logger: quietLogger, PollInterval: 10 * time.Millisecond})
	if err != nil {
		panic(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	// Register the WalB device with the storage; it starts as Standby.
	if err := ctl.InitStorage(ctx, s0, "vol0", "/dev/walb/vol0"); err != nil {
		panic(err)
	}
	// Copy the whole device to the primary archive; logs written meanwhile
	// follow through the proxies. The result is the first snapshot the
	// archive can restore.
	gid, err := ctl.FullBackup(ctx, s0, "vol0", nil)
	if err != nil {
		panic(err)
	}
	fmt.Println("full backup restorable at gid", gid)

	// Snapshots wait until the listed archives can restore them.
	for i := 0; i < 2; i++ {
		gid, err = ctl.Snapshot(ctx, s0, "vol0", []Server{a0})
		if err != nil {
			panic(err)
		}
		fmt.Println("snapshot", gid)
	}
	rs, err := ctl.GetRestorable(ctx, a0, "vol0", false)
	if err != nil {
		panic(err)
	}
	for _, r := range rs {
		fmt.Println("restorable", r.Gid, "explicit", r.Explicit)
	}

	// Materialize a snapshot as an image on the archive's host.
	img, err := ctl.Restore(ctx, a0, "vol0", 2)
	if err != nil {
		panic(err)
	}
	fmt.Println("restored", img.Gid, "at", img.Path)
	if err := ctl.DelRestored(ctx, a0, "vol0", 2); err != nil {
		panic(err)
	}

	// Fold the older diffs into the base image.
	if err := ctl.Apply(ctx, a0, "vol0", 2); err != nil {
		panic(err)
	}
	base, err := ctl.GetBase(ctx, a0, "vol0")
	if err != nil {
		panic(err)
	}
	fmt.Println("base", base)
	// Output:
	// full backup restorable at gid 1
	// snapshot 2
	// snapshot 3
	// restorable 1 explicit true
	// restorable 2 explicit true
	// restorable 3 explicit true
	// restored 2 at /var/walb/a0/restored/2.img
	// base <|2|>
}

// Waits run under the caller's context: its deadline is the timeout, and
// the error says what was awaited.
func ExampleController_WaitForRestorable() {
	layout, stop := exampleLayout()
	defer stop()
	ctl, err := New(layout, &Options{Logger: quietLogger, PollInterval: 10 * time.Millisecond})
	if err != nil {
		panic(err)
	}
	s0, a0 := layout.Storages[0], layout.Archives[0]
	ctx := context.Background()
	if err := ctl.InitStorage(ctx, s0, "vol0", "/dev/walb/vol0"); err != nil {
		panic(err)
	}
	if _, err := ctl.FullBackup(ctx, s0, "vol0", nil); err != nil {
		panic(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancel()
	err = ctl.WaitForRestorable(wctx, a0, "vol0", 42)
	fmt.Println(err != nil && wctx.Err() == context.DeadlineExceeded)
	// Output:
	// true
}
