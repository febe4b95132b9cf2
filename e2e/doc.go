// Package e2e holds the end-to-end acceptance tests of walb-go: the real
// binaries, built once by TestMain (go build ./cmd/...), run as separate
// processes on 127.0.0.1 the way an operator starts them, and are driven
// with the command-line tools (wdevc, walbc) and, for waits, package
// controller. The package has no API; it is only tests.
//
// # What runs
//
//	process       started as
//	------------  ------------------------------------------------------------
//	walb-dev      walb-dev -b DIR -nbd 127.0.0.1:PORT -ctl SOCK -l LOG
//	walb-archive  walb-archive -p 127.0.0.1:PORT -b DIR -l LOG -id a0 -nbd ...
//	walb-proxy    walb-proxy -p 127.0.0.1:PORT -b DIR -l LOG -id p0 ...
//	walb-storage  walb-storage -p 127.0.0.1:PORT -b DIR -l LOG -id s0
//	                           -archive A0 -proxy P0 -devhost SOCK ...
//
// The duplicated layout (dupcluster_test.go) runs several of each: every
// storage host has its own walb-dev and WalB device (the tests write the
// same data to every device, so the replicas stay equal), the storages
// get -proxy P0,P1 (priority order) and -archive A0 (the primary), and
// a1 is a secondary archive. The group's operations (go-standby,
// hash-backup, replicate-once, synchronize, stop-synchronizing,
// is-synchronizing, is-overflow) run with walbc's group mode:
//
//	walbc -storage s0=H:P,s1=H:P -proxy p0=H:P,p1=H:P -archive a0=H:P,a1=H:P \
//	    hash-backup s1 vol0 -bulk 64k
//
// The WalB device lives on two sparse files (log and data device),
// formatted with wdevc format-ldev and registered with wdevc create-wdev
// (its checkpoint interval set to 200 ms with wdevc after every start of
// the daemon: the log is released only up to the last checkpoint); the
// tests write to it over NBD with qemu-io (pattern, random-data, zero
// writes and discards; the archive runs with -discard zero), read it back
// with the nbd package's client, and compare sha256 sums of the device at
// each snapshot with the images the archive restores.
//
// # Tests
//
//	test               acceptance
//	-----------------  --------------------------------------------------------
//	TestBackupFlow     init, full-bkp during writes, 10 snapshots between write
//	                   bursts, each restored bit-exact; apply, merge, restore
//	                   again (system.md §10 n1, n2, n5, n6)
//	TestKillRestart    SIGKILL of a random server at a random moment of a
//	                   backup, transfer, apply, merge or restore, restart, go
//	                   on; every snapshot restores bit-exact and the archive's
//	                   diff chain has no gap or overlap (system.md §7)
//	TestBadInput       wrong-state commands, unknown volumes, bad names and
//	                   gids, garbage and oversized frames on every port: a
//	                   clear error, the server still serves, nothing changed
//	TestFullBackupAfterDeviceDaemonRestart
//	                   the first full-bkp after walb-dev restarts works
//	TestDuplicatedLayout
//	                   s0, s1, p0, p1, a0, a1: full backup from s0, target
//	                   moved to s1 (go_standby s0, hash_backup s1), p0
//	                   SIGKILLed (logs go through p1, back to p0 when it
//	                   returns), replicate a0 -> a1 once, synchronizing
//	                   mode and its end; every snapshot restores bit-exact
//	                   on both archives (§10 n1-n3, n7, n10, n12, e1)
//	TestOverflowRecovery
//	                   a 4 MiB log overflows while both proxies are down:
//	                   is-overflow 1, Stopped, snapshot refused with a clear
//	                   error; reset-vol + hash-bkp recover; snapshots before
//	                   and after restore bit-exact (§10 e4, e10)
//	TestReplicationLinkCut
//	                   a1 in a network namespace; its link cut during a
//	                   full, a diff and a hash replication, restored, the
//	                   replication retried: a1's state per §10 e14, e16,
//	                   e15, every gid it lists restores bit-exact
//	TestHashBackupLinkCut
//	                   a0 in a network namespace; its link cut during a
//	                   hash backup under writes: the storage back to
//	                   SyncReady, a0 Archived with its restorable list
//	                   unchanged, the retry completes (§10 e13)
//
// # Network namespaces
//
// The link-cut tests (netns_test.go) make one host of the group a Linux
// network namespace: ip netns add, a veth pair with a random 10.x.y.z/30
// (one end moved into the namespace), and the host's servers started
// with ip netns exec NS BINARY ... listening on the inner address. The
// link is cut with ip link set VETH down and restored with up; while an
// operation is to be cut the link is rate limited with tc's tbf (netem is
// not needed), so that the cut falls in its middle, and the servers run
// with -to 3 so that a hung connection fails in seconds. Each namespace
// is named walb-e2e-PID-RANDOM-N and is deleted when its test ends, after
// the processes still in it are killed. These tests need root and
// iproute2 (ip, tc): without them they are skipped, or fail when CI is
// set.
//
// # Running
//
//	go test ./e2e/                         # the normal suite
//	WALB_TEST_SOAK=1 go test ./e2e/ -run TestKillRestart -timeout 1h
//	WALB_E2E_TRIALS=100 go test ./e2e/ -run TestKillRestart
//	WALB_E2E_RACE_BINS=1 go test -race ./e2e/   # binaries built with -race too
//	WALB_E2E_SEED=12345 go test ./e2e/     # replay the random choices
//	WALB_E2E_KEEP=1 go test ./e2e/         # keep the work directory
//
// The tests need qemu-io (qemu-utils) and are skipped without it, unless
// the environment variable CI is set, where a missing tool is a failure.
// -short skips the package. When a test fails, the tail of every server's
// log file is written to the test log; a panic or a data race on a
// server's stderr fails the test.
package e2e
