// Command bench measures the wdiff tools against the machine's own limits:
//
//	go run ./bench                       # 768 MiB per workload, every suite
//	go run ./bench -quick                # 64 MiB
//	go run ./bench -suites convert,apply -count 5 -cpuprofile /tmp/prof
//
// It generates deterministic wlogs (two workloads: random 4 KiB writes and
// mostly sequential 4-64 KiB writes, about half compressible), then times
// wlog-to-wdiff (none, snappy, zstd), wdiff-merge of four snappy wdiffs
// and wdiff-redo onto a sparse image, next to memmove and raw file
// write/read baselines, and checks the results against the C++
// walb-tools targets.
//
// # Method
//
// Each measured operation runs in a child process: the bench binary
// re-executed with the hidden first argument -op (see childMain). The
// parent times the child's whole life (exec included, a few ms) and reads
// its peak RSS (ru_maxrss) and CPU time from wait4's rusage, so every
// figure belongs to that one operation. Tools run through internal/cli,
// the very code of cmd/, with its fsync of outputs.
//
// MB/s is 1e6 bytes per second of counted bytes: the input wlog file for
// convert, the uncompressed bytes (io_blocks*512) of the inputs' normal
// records for merge and of the wdiff's normal records for apply. Every
// rate is also given as a ratio to the raw file write measured in the same
// run, which makes runs on different disks comparable.
//
// All files live in a fresh directory under -dir, removed at the end
// unless -keep.
package main
