// Package group runs a whole WalB backup group inside one Go program: a
// device host with userspace WalB devices, storage, proxy and archive
// servers on 127.0.0.1, and a controller wired to them. It is for
// programs that embed continuous block backup, for tests, and for trying
// the system out without installing anything.
//
// What runs is what a deployment runs, only in one process: the servers
// are the real storage, proxy and archive servers of this module, talking
// package wire over TCP on loopback ports the OS picks, and the devices
// are walb.Device values writing real log and data files. Nothing is
// faked, so whatever works here works between hosts.
//
// # Embedding
//
//	g, err := group.Start(ctx, group.Config{}) // temp dir, s0 + p0 + a0
//	if err != nil { ... }
//	defer g.Close(ctx)
//
//	v, err := g.AddVolume(ctx, "vol0", group.VolumeOptions{Size: 64 << 20})
//	dev := v.Device()                      // io.ReaderAt, io.WriterAt, Flush...
//	gid, err := v.FullBackup(ctx)          // the first restorable snapshot
//
//	dev.WriteAt(data, 1<<20)               // logged, then sent to the archive
//	gid, err = v.Snapshot(ctx)             // restorable once it returns
//	img, err := v.Restore(ctx, gid)        // img.Path: the image as of gid
//	err = v.Apply(ctx, gid)                // fold older diffs into the base
//
//	err = v.GoStandby(ctx)                 // stop backing up; the log is dropped
//	gid, err = v.HashBackup(ctx)           // back again: only changed chunks travel
//	gid, err = v.ReplicateTo(ctx, g.Layout().Archives[1]) // with Config.Archives: 2
//
// Example (example_test.go) is the runnable version, and
// examples/embedded a program built on it. Volume's backup methods are
// the controller's, aimed at the volume's storage and the primary archive;
// Controller gives the whole SDK (controller.Controller) for the rest:
// merges, stops, resets, archive infos, synchronizing replication
// (Synchronize), queries.
//
// Other programs can use the group too: each device is a read-write NBD
// export (Volume.NBDURI, e.g. nbd://127.0.0.1:40123/vol0, for qemu-io,
// nbdcopy, nbdfuse, nbd-client), each restored image a read-only one on
// its archive's NBD server (RestoredURI), and the servers answer walbc and
// any controller.Controller built on Layout.
//
// # What Start starts
//
// In order: an NBD server for the devices, the devices already in the
// directory (crash recovery runs as they open), the archives (each with
// an image store and an NBD server for restored images), the proxies and
// the storages, each server on 127.0.0.1. Storages get a0 as their
// primary archive and every proxy, in order; the controller gets the
// layout. Start returns once every server answers. Close stops them in
// the reverse order, gracefully: NBD clients' in-flight requests, wlog
// transfers, diff sends and restores finish first.
//
// Ports are chosen by the OS at the first start and kept in
// DIR/addrs.json; later starts on the directory take them again, because
// proxies keep each archive's address in their archive infos and NBD URIs
// may have been handed out. A port another program took meanwhile is
// replaced by a new one, and the proxies' archive infos are pointed at it.
//
// Archives after a0 run and are in the layout, but only a0 receives full
// backups: this module has no replication between archives yet, so a
// secondary archive can hold a volume only once a program gives it a
// base by other means.
//
// # Directory layout
//
//	path                         content
//	---------------------------  ---------------------------------------------
//	DIR/lock                     flock(2)ed while a group runs on DIR
//	DIR/addrs.json               the servers' addresses, for the next start
//	DIR/devices/sN/VOL/log       the log device of VOL (sparse file)
//	DIR/devices/sN/VOL/data      the data device of VOL (sparse file)
//	DIR/devices/sN/.new-VOL-*    a device being created (removed at Start)
//	DIR/devices/sN/.del-VOL-*    a device being deleted (removed at Start)
//	DIR/sN, DIR/pN, DIR/aN       the base directories of the servers
//	IMAGES/aN                    the image store of archive aN; IMAGES is
//	                             Config.ImageDir, or DIR/images
//
// A device directory appears whole, by a rename, once its log device is
// formatted. The storage knows a device as /dev/walb/VOL (DevicePath), a
// name the group resolves to the open device. Start on a directory a
// previous group left (closed or crashed) reopens its devices and the
// servers recover their volumes, so backups go on where they stopped. A
// device that cannot be opened fails Start with an error naming its
// directory: move it aside to start without it.
//
// # Defaults
//
// The zero Config gives one server of each kind, snappy compression, no
// TLS, NBD on, and no logs (Logger nil discards them). The timings are
// made for loopback: the controller polls every 20 ms, retries back off
// from 20 ms to 1 s, storages look for new logs every 10 ms and devices
// checkpoint every 100 ms. The zero VolumeOptions make a 64 MiB device
// with a 16 MiB log and 4 KiB blocks.
//
// The log of a device must hold what is written before the storage has
// sent it to a proxy and released it; past that the log overflows, and
// the volume needs a new full backup. The group lets the storage release
// the log as soon as a proxy acknowledged it (a device normally allows it
// only up to its last checkpoint), and Volume.Snapshot flushes the device
// so that the storage sends at once; a burst of writes larger than the
// log between two transfers still overflows it, as with the kernel
// driver. Size LogSize for the largest burst. The hooks (StorageHook, ProxyHook,
// ArchiveHook) reach every other server option.
//
// With Config.TLS every wire connection and NBD export runs over TLS 1.3.
// Without certificates of its own the group makes a throwaway CA for
// 127.0.0.1; ClientTLS and CACertPEM give clients what they need.
package group
