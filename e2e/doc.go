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
