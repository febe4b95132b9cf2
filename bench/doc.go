// Command bench measures the SDK against the machine's own limits:
//
//	go run ./bench                       # every suite at the default sizes
//	go run ./bench -quick                # smaller sizes
//	go run ./bench -suites convert,apply -count 5 -cpuprofile /tmp/prof
//	go run ./bench -suites device,nbd -devsweep "flushmb=64 pendingmb=256,flushmb=64"
//
// # Suites
//
// baselines, convert, merge, apply (the wdiff tools): it generates
// deterministic wlogs of -size (two workloads: random 4 KiB writes and
// mostly sequential 4-64 KiB writes, about half compressible), then times
// wlog-to-wdiff (none, snappy, zstd), wdiff-merge of four snappy wdiffs
// and wdiff-redo onto a sparse image, next to memmove and raw file
// write/read baselines, and checks the results against the C++
// walb-tools targets. Counted bytes: convert = the input wlog file; merge
// = io_blocks*512 of the inputs' normal records; apply = io_blocks*512 of
// the wdiff's normal records; baselines = bytes moved. Every rate is also
// given as a ratio to the raw file write of the same run.
//
// device: walb.Device writes against raw writes to the same files. A data
// device file of -device bytes and a log device file of -ldev bytes are
// zero-filled and synced first (so every write overwrites allocated
// blocks, as on a block device). Every run writes -devsize bytes in one
// of two patterns: seq 1M (1 MiB writes from offset 0, one at a time) and
// rand 4K x32 (4 KiB writes at uniformly random aligned offsets over the
// data device, from 32 goroutines). Raw runs pwrite to the data device
// file and come in two lines: durable (one fdatasync at the end) and page
// cache (no sync at all). Device runs format the log, open the device,
// write through WriteAt and end with Flush, which makes every write
// durable in the log; the data device is synced by checkpoints, so the
// Close that follows (apply, checkpoint) is timed apart and not counted.
// Counted bytes are the data the caller wrote (headers and the second copy
// are the device's cost); rand lines also give IOPS. Each device line
// gives its ratio to both raw lines, and the targets compare with the
// durable one (seq >= 45%, rand IOPS >= 40%). The suite then repeats the
// device runs with each option set of -devsweep (walb.Options
// LogFlushIntervalMB, LogFlushInterval, MaxPendingMB, MaxLogpackKB,
// GroupCommitDelay, GroupCommitDepth), one option at a time by default,
// and with the best value of every option that gained 3% or more
// combined; it prints the best set and the option that made the
// difference. After every sequential device run the data device is read
// back and checked.
//
// nbd: qemu-img convert copies -nbdsize bytes of random data into an
// export (-n -T writeback -t writeback, so it ends with NBD_CMD_FLUSH) and
// out of it into a local file (-t unsafe, so the local disk is not
// timed), over TCP on 127.0.0.1. Three servers export the same data file:
// qemu-nbd (-f raw --persistent --cache=writeback), our nbd.Server with
// nbd.FileBackend, and our nbd.Server with a walb.Device over the file and
// a -ldev log file; the difference between the last two is the WAL's cost,
// between the first two the server's own. The data file is zero-filled
// before every write run, and every copy is compared with its source.
// Counted bytes are the image; the time is qemu-img's wall time, from its
// start to its exit. Our servers count the requests qemu-img sends (sizes,
// flushes, concurrency). The target: the walb.Device export reaches 50%
// of qemu-nbd both ways. The suite is skipped, saying so, when qemu-img or
// qemu-nbd is missing.
//
// rpo: an embedded group (package group) on loopback; a steady 50 MB/s
// writer, snapshots, and the time from each snapshot to its gid being
// restorable; full-bkp of a 1 GiB device against reading it raw.
//
// hashbkp: an embedded group with two archives and a -hashsize device
// (2 GiB) of random data; the archives' images on a loop-mounted XFS with
// reflink when root (as an archive would be deployed), else in the work
// directory. Every step starts with an empty page cache (drop_caches when
// root, else fadvise on the files): in service neither the device nor the
// archive's image is cached, here both were just written. Baselines: the
// device read raw by 4 readers of 1 MiB (the queue depth the comparison
// keeps), and the device and a0's base image read raw at once (the I/O any
// comparison on one machine must do: on two hosts the sides read in
// parallel from different disks). Then full-bkp (timed), and -count rounds
// (default 1) of: go-standby, 1% of the 256 KiB chunks rewritten (their
// logs dropped by the standby, as after an overflow or a target switch),
// both baselines read again, and hash-bkp until its gid is restorable. The
// baselines are read right before each hash backup because the disk's
// speed drifts from minute to minute on a VM; the report gives each
// round's ratios and their median (goal >= 80% of the raw read), and the
// bytes the storage sent to the archive, counted by a TCP relay between
// them, against the bytes changed (goal <= 1.05x, the hashes the archive
// sends back given apart). Finally replicate-once a0 -> a1 (a full
// replication of the base plus the diffs) against full-bkp.
//
// -plainfs keeps the images in the work directory (no reflink: virtual
// images are overlays). -imagesdir DIR puts the images (their XFS backing
// file) in DIR, e.g. on another disk as on a separate archive host, so that
// the two sides of the comparison do not share one disk; /dev/shm models
// an archive disk faster than the device's. WALB_BENCH_LOG=1 prints the
// servers' logs, WALB_BENCH_HASHPROF=FILE writes a CPU profile of the
// first hash backup.
//
// # Method
//
// Each measured operation runs in a child process: the bench binary
// re-executed with the hidden first argument -op (see childMain). The
// parent times the child's whole life (exec included, a few ms) and reads
// its peak RSS (ru_maxrss) and CPU time from wait4's rusage, so every
// figure belongs to that one operation. Tools run through internal/cli,
// the very code of cmd/, with its fsync of outputs. The device and nbd
// suites time the operation by the child's own clock instead (opening and
// closing devices and servers excluded) and have the child report further
// figures (phase times, the rusage of the server and of qemu-img, request
// counts) in a stats file. Before every run the harness syncs and pauses
// (-settle), so that writeback of earlier steps does not run into it.
//
// MB/s is 1e6 bytes per second of counted bytes.
//
// All files live in a fresh directory under -dir, removed at the end
// unless -keep.
package main
