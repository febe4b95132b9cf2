// Package storage is the storage server of a WalB backup group (system.md
// §3): the first hop of continuous backup, storage -> proxy -> archive. For
// each volume it watches a WalB device, assigns generation ids (gids) to
// snapshots, extracts the device's write log (wlogs) and sends it to the
// first available proxy, and runs full and hash backups of the device
// straight to the primary archive. It keeps walb-tools' semantics; its wire protocol is
// this module's (package wire).
//
// Storage is the engine: commands are its methods (InitVol, StartVol,
// Snapshot, FullBackup, ...) and Run drives the background work. Server
// serves it over the network with package server, and Client calls it; the
// controller SDK uses Client. An embedding program (the in-process backup
// group) may use Storage directly with its devices in a DeviceMap:
//
//	devs := storage.NewDeviceMap()
//	devs.AddWalb("vol0-dev", dev) // a *walb.Device opened in this process
//	st, err := storage.New(storage.Config{BaseDir: dir, Devices: devs,
//		Archive: "a0:5000", ArchiveClient: storage.WireArchive{},
//		Proxies: []string{"p0:5000"}, ProxyClient: storage.WireProxies{}})
//	err = st.Recover(ctx)
//	go st.Run(ctx)
//	err = st.InitVol(ctx, "vol0", "vol0-dev")
//	err = st.FullBackup(ctx, "vol0", storage.BackupOptions{})
//	gid, err := st.Snapshot(ctx, "vol0")
//
// # Devices
//
// The storage reaches a device through the small Device interface: lsids,
// set-oldest-lsid, overflow, identity (uuid, salt, pbs, size), a logpack
// reader, image reads, reset-wal and resize. WalbDevice adapts an
// in-process userspace device (*walb.Device); DevhostDevices reaches the
// devices of a walb-dev daemon (package devhost) by name, through its
// control socket and NBD export. A volume's `path` file names its device
// for the DeviceResolver; a device belongs to at most one volume.
//
// # Volume directory <base>/<vol>/
//
//	file   content (cybozu serialization + integrity trailer, meta.SaveFunc)
//	-----  -------------------------------------------------------------------
//	state  string: SyncReady, Stopped, Target or Standby
//	path   string: the device the volume is bound to
//	uuid   16 bytes: the log's uuid, copied at every WAL reset
//	done   LsidGid: wlogs below done.lsid are acknowledged by a proxy;
//	       (-1, -1) until the first reset
//	queue  queue file (meta.Queue) of LsidGid snapshot records not yet
//	       transferred, newest at the front, synced on every change
//
// Metadata files are replaced atomically (temporary file, fsync, rename,
// directory fsync). init-vol builds the whole directory under
// .tmp-init-<vol> and renames it into place; clear-vol renames it to
// .tmp-clear-<vol> before deleting it; Recover removes such leftovers, so a
// crash leaves a volume whole or absent. The lsids live in the device.
//
// # States
//
// The state table (Table; system.md §3.1):
//
//	Clear     -> InitVol      -> SyncReady   init-vol VOL WDEV
//	SyncReady -> ClearVol     -> Clear       clear-vol
//	SyncReady -> StartStandby -> Standby     start VOL standby
//	Standby   -> StopStandby  -> SyncReady   stop
//	SyncReady -> FullSync     -> Stopped     full-bkp (then StartTarget -> Target)
//	SyncReady -> HashSync     -> Stopped     hash-bkp (then StartTarget -> Target)
//	Stopped   -> Reset        -> SyncReady   reset-vol VOL [GID]
//	Stopped   -> StartTarget  -> Target      start VOL target
//	Target    -> StopTarget   -> Stopped     stop
//
// Only the four steady states besides Clear are persisted; a failed command
// rolls back to where it started. snapshot needs Target or Stopped, resize
// any of the four (CommandStates lists every command's states). WlogSend
// runs in Target, FullSync and HashSync; WlogRemove in Standby. A stop
// waits (at most StopTimeout) for the volume to be idle; a force stop
// aborts a running transfer or backup at its next pack or bulk.
//
// # Snapshots and gids (§3.3)
//
// A snapshot is a record (lsid, gid) pushed durably onto the queue: the lsid
// is the device's latest lsid, so every write acknowledged before it is in
// the snapshot. Its gid is pre.gid + 1 + (lsid - pre.lsid) / maxSendPB,
// where pre is the newest record (or done) and maxSendPB the maximum send
// size (-wl) in PBs: the gap leaves a gid for every piece a long range is
// cut into. Explicit snapshots (the snapshot command, the end of a backup)
// start non-mergeable diffs; the implicit ones the extraction takes start
// mergeable diffs. Snapshots are refused while the log is overflowed.
//
// # Extraction (§3.4, §3.5)
//
// A monitored volume gets a task when its device's latest lsid moves, on a
// snapshot, on kick and on retry; -bg workers run the tasks, one per volume
// at a time. Each run:
//
//  1. releases the log up to min(done.lsid, prev_written);
//  2. does nothing more unless durable logs lie past done or snapshots are
//     queued (it looks again later while logs are not durable yet);
//  3. drops queue records at or before done, and takes an implicit
//     snapshot at latest if the queue is empty or its newest record is
//     below latest and at least -snapintvl old;
//  4. picks the end record: from the oldest record, advance over implicit
//     records while the next is within maxSendPB of done and durable,
//     never past an explicit one; the limit is that record's lsid, or
//     done.lsid + maxSendPB when sooner (a cut at the intermediate gid
//     done.gid+1), except that a first record with gid done.gid+1 is sent
//     whole;
//  5. waits (100 ms to 1 s, shorter as the backlog grows) until the limit
//     is durable;
//  6. streams every logpack of [done.lsid, limit) that ends by the limit
//     to the first available proxy that accepts, then the diff
//     |done.gid| -> |recE.gid| (or |done.gid+1| when cut), with recE's
//     timestamp and done's mergeability;
//  7. on the proxy's ACK, checks done and the queue did not change, saves
//     done (recE, or the intermediate record), pops the consumed records,
//     releases the log, and runs again at once if records remain.
//
// done moves only after the ACK and the log is released only below done,
// so a crash anywhere resends logs but never loses them; a resend after a
// lost ACK starts at a point the archive already reached, which it
// tolerates (too-old-diff, or an applicable overlap). Failures retry after
// -delay, doubling up to -maxdelay. An overflowed Target is moved to
// Stopped; the recovery is a hash-bkp. A Standby only releases its log.
//
// # Standby and overflow (§3.6)
//
// A Standby volume (a replica that is not the target) is monitored only to
// free its log: each run erases the log up to prev_written (WlogRemove);
// nothing is sent. When a Target's log ring overwrites logs not yet sent
// (the proxies were unreachable too long), the logs needed are lost: the
// next run moves the volume to Stopped and stops monitoring it; get
// is-overflow answers true; snapshot and start target fail with the
// overflow code; start standby resets the log first (gid 0). The recovery
// is reset-vol (Stopped -> SyncReady), then hash-bkp.
//
// # Proxies
//
// The proxies are tried in priority order, skipping those the heartbeat
// found unavailable: every second the proxy whose last check is the oldest,
// if at least 10 s old, is asked get host-type (3 s timeout) and is
// available iff it answers "proxy". A recovered higher-priority proxy is
// thus preferred again within a check period; kick makes every proxy due
// (and checks one at once when none is available).
//
// # Full and hash backups (§3.7)
//
// full-bkp VOL [BULK] and hash-bkp VOL [BULK] share one flow (backup.go):
// the archive accepts (the reply to the controller is accept, a refusal is
// relayed as the error), the log is reset at the backup's first gid gidB
// and its uuid sent, the volume is monitored (logs written meanwhile flow
// to the proxies), the device is copied with its reads paced by -fst /
// set-full-scan-bps, an explicit snapshot gidE is taken and the archive
// told it holds |gidB,gidE|, which the logs from gidB make clean at gidE;
// on the archive's ACK the volume is Target. They differ in gidB and the
// copy:
//
//	full-bkp  gidB 0                   every bulk of the image is sent
//	hash-bkp  gidB = From.GidE + 1     the archive sends the hashes of its
//	          (From: the archive's     image at From chunk by chunk; only
//	          latest snapshot)         the chunks that differ are sent
//	                                   (package hashsync)
//
// hash-bkp is how a volume whose log overflowed recovers (reset-vol, then
// hash-bkp) and how a standby becomes the target of a volume the archive
// already holds. A failure, and a force stop, leave SyncReady and
// unmonitored, and the archive as it was; the backup must be rerun.
// BackupProgress (get progress VOL, status VOL) tells how far a running
// backup is.
//
// # Protocols
//
// The storage is a client of three protocols, behind ProxyClient and
// ArchiveClient: wlog-transfer to a proxy (WireProxies, package proxy's
// client: header, logpacks, diff, ACK), and dirty-full-sync (uuid, bulks,
// snapshot, ACKs) and dirty-hash-sync (From, uuid, hash and data streams,
// snapshot, ACKs) to the archive (WireArchive, package archive's clients).
// It serves these commands (Server; replies ok unless noted):
//
//	init-vol VOL WDEV            clear-vol VOL
//	reset-vol VOL [GID]          start VOL [target|standby]
//	stop VOL [graceful|force]    accept, then stops
//	snapshot VOL                 ok, gid
//	full-bkp VOL [BULK]          accept once the archive accepted
//	hash-bkp VOL [BULK]          accept once the archive accepted
//	resize VOL SIZE              set-full-scan-bps BPS
//	kick, status [VOL], shutdown, sleep, version, handler-stat (package server)
//	get state VOL | vol | is-overflow VOL | log-usage [VOL] |
//	    latest-snap [VOL] | uuid VOL | ts-delta | progress VOL |
//	    host-type | pid | handler-stat
//
// Refusals carry a wire code: wrong-state for a command the volume's state
// does not allow, overflow (CodeOverflow) for snapshot and start target on
// an overflowed log, not-found for an unknown volume, and the archive's own
// code for a backup it refused.
package storage
