// Package controller is the front door of the walb-go SDK: it drives a
// backup group of storage, proxy and archive servers the way walb-tools'
// Python controller (walblib.Controller) does, over package wire, with
// typed results. The walbc command (internal/cli) is built on it: with -a
// and -p it sends one command to one server, with -storage, -proxy and
// -archive it runs these methods on a backup group (walbc help).
//
// # A backup group
//
// A Layout names the servers of one backup group, each a Server{Name,
// Addr, Kind}:
//
//	walb-tools (Python)                     controller (Go)
//	--------------------------------------  --------------------------------
//	ServerConnectionParam(name, addr,       Server{Name, Addr: "addr:port",
//	                      port, kind)              Kind: KindStorage...}
//	ServerLayout(storageL, proxyL,          Layout{Storages, Proxies,
//	             archiveL)                         Archives}
//	proxyL order = storage's priority       Proxies order, the same
//	archiveL[0] = primary archive           Archives[0] = primary (Primary)
//	sLayout.get_all()                       Layout.All()
//	get_server_params: -archive, -proxy     Layout.StorageArgs()
//	Controller(walbcPath, sLayout)          New(layout, *Options)
//	run_ctl(s, args)                        Controller.Client(s).Do(ctx, Request)
//
// Server.Name is the server's identity in the group: proxies file a
// volume's diffs under the archive's Name (archive-info add VOL NAME
// ADDR), so the archives' names must stay stable. Storages are started
// with -archive set to the primary's address and -proxy to the proxies'
// addresses in order (StorageArgs); the controller does not start servers.
//
// # Using it
//
//	ctl, err := controller.New(layout, &controller.Options{ClientID: "ops"})
//	err = ctl.InitStorage(ctx, s0, "vol0", "/dev/walb/vol0") // Standby
//	gid, err := ctl.FullBackup(ctx, s0, "vol0", nil)         // restorable gid
//	gid, err = ctl.Snapshot(ctx, s0, "vol0", []controller.Server{a0})
//	img, err := ctl.Restore(ctx, a0, "vol0", gid)            // img.Path, img.Export
//	err = ctl.Apply(ctx, a0, "vol0", gid)                    // fold into the base
//
// Example (example_test.go) runs this against servers on 127.0.0.1.
//
// Every method takes a context first and is synchronous: it sends its
// commands, then polls the servers (get state, get num-action, get
// restorable...) every Options.PollInterval (0.3 s, as walb-tools) until
// the operation is complete, because the servers answer long commands with
// accept and report their end only in their logs. The context bounds
// everything: its deadline is the timeout (walb-tools' timeoutS), and a
// wait that ends with it returns an error wrapping context.DeadlineExceeded
// that says what was awaited and what was last seen. Waits for mere state
// changes (start, stop, standby, reset, deletions, resize) are also bounded
// by Options.ShortTimeout (100 s, walb-tools' SHORT_TIMEOUT_SEC). Methods
// ending in NB (FullBackupNB, HashBackupNB, SnapshotNB, RestoreNB,
// ApplyNB, MergeNB, StopNB, ReplicateOnceNB) return once the server
// accepted; the Wait methods (WaitForBackup, WaitForRestorable,
// WaitForRestored, WaitForApplied, WaitForMerged, WaitForReplicated,
// WaitForStopped, WaitForStateChange, WaitForNoAction) finish them.
// GetProgress reports how far the copy of a running full or hash backup or
// replication has come on an archive.
//
// The methods follow walb-tools' controller (system.md §8.2):
//
//	queries     HostType, CheckKinds, AliveServers, GetState, GetStateAll,
//	            VerifyState, GetVolList, Status, GetUUID, GetArchiveUUID,
//	            IsOverflow, IsWdiffSendError, GetLogUsage, GetLatestSnap,
//	            GetVolSizeLB, GetProgressLB, GetNumDiff, GetTotalDiffSize,
//	            GetNumAction, GetAllActions, GetBase, GetMetaState,
//	            GetMetaSnap, GetDiffList, GetApplicableDiffList, ExistsDiff,
//	            GetRestorable, GetRestorableGids, GetLatestClean,
//	            GetRestored, GetCold, GetRestoredPath, GetRestoredExport,
//	            GetTsDelta, ExistsBaseImage, GetProgress, BlockHash
//	lifecycle   InitVol, InitStorage, GoStandby, ClearVol, Reset, Start,
//	            Stop, StopNB, Shutdown, ShutdownList, ShutdownAll, Kick,
//	            KickAll, KickStorageAll, KickProxyAll, SetFullScanBps
//	proxies     GetArchiveInfoList, GetArchiveInfo, UpdateArchiveInfo,
//	            AddArchiveToProxy, DelArchiveFromProxy, CopyArchiveInfo,
//	            IsSynchronizing, StartSynchronizing, StopSynchronizing
//	backup      PrepareBackup, FullBackup, HashBackup, Snapshot (and NB)
//	archive     Restore, RestoredImage, DelRestored, DelCold, Apply, Merge,
//	            EnableSnapshot, DisableSnapshot, GcDiff, ResizeArchive,
//	            ResizeStorage, Resize
//	replication ReplicateOnce (and NB, WaitForReplicated), Replicate,
//	            Synchronize (then StopSynchronizing to end it)
//
// Replication copies a volume between archives (system.md §5.6):
// ReplicateOnce(ctx, a0, vol, a1, opt) inits a Clear destination, refuses
// a destination of another lineage unless opt.Resync (ErrUUIDMismatch),
// grows it to the source's size and replicates up to opt.Gid (default: the
// source's newest restorable snapshot). Synchronize (§5.7) makes the
// destination a synchronizing replica: the proxies are stopped once empty,
// get an archive info for it, and start again after a last replication.
//
// Results are typed: snapshots, diffs and base states are package meta's
// Snap, Diff and State; restorable snapshots are RestorableGid (gid, time,
// explicit); latest-snap, log-usage, all-actions and archive-info answers
// have their own types. The parsers (ParseDiffLine, ParseRestorable,
// ParseLatestSnap...) read walb-tools' text forms and are exported for
// tools that hold such text.
//
// # Errors
//
// A server's refusal comes back as a *wire.RemoteError; test it with
// errors.Is against the wire codes: wire.ErrWrongState, wire.ErrNotFound,
// wire.ErrActionRunning, wire.ErrTooManyTasks, wire.ErrBadRequest... (the
// servers' own sentinels, such as server.ErrWrongState, match their code
// on the server side only: on the client only the code travels). Errors
// found by the controller are this package's sentinels: ErrWrongKind,
// ErrBadState (a volume in a state the operation cannot start from),
// ErrNotReached (a long operation ended without its result), ErrBadGid,
// ErrMixedSync, ErrUUIDMismatch, ErrBadValue, ErrBadArgs, ErrBadLayout.
// Every error names the server and the command.
//
// # Transport
//
// Each command is one connection (wire.Dial), as with walbc. Options.Wire
// sets TLS, the per-frame I/O timeout (walbc -to) and keepalive.
// Options.Retries (walbc -retry, default 2, 100 ms apart) retries status
// and get, never a command that changes something, and only after a
// transport failure, not after an error reply. The Client type is the
// single-server layer: Do runs any command (Request names the value type
// that follows ok; get targets' types are in GetTargetType, and unknown
// targets are probed).
package controller
