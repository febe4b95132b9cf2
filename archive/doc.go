// Package archive is the archive server of walb-go (walb-tools'
// walb-archive, system.md §5): per volume it keeps one full base image and
// a chain of wdiffs, takes full backups from storages and diffs from
// proxies, and restores, applies, merges and garbage-collects them. It is
// built in two layers:
//
//   - Engine, the volume engine, runs every command without any network:
//     states, preconditions, metadata files, images, diff files and crash
//     recovery. Tests and tools drive it directly.
//   - Server puts package server's framework (connections, handshake,
//     common commands, -fg, shutdown) around an Engine, with one handler
//     per command and the two protocols the archive serves:
//     ProtoFullSync (fullsync.go), ProtoHashSync (hashsync.go) and
//     ProtoWdiffTransfer (wdifftransfer.go). Their client sides are
//     exported for the storage (DialFullSync, SendFullSync, DialHashSync)
//     and the proxy (SendWdiff, which returns a WdiffReply to switch on).
//     Archives replicate to each other with ProtoReplSync (replicate.go),
//     whose client side is the replicate command (Engine.Replicate).
//
// # Directory layout
//
// Metadata lives in the base directory (-b), images in an imagestore.Store
// (walb-tools' volume group):
//
//	path                       content
//	-------------------------  ----------------------------------------------
//	BASE/VOL/state             steady state: SyncReady, Archived or Stopped
//	BASE/VOL/uuid              the source device's uuid (16 bytes)
//	BASE/VOL/archive_uuid      lineage identity, new at every full backup
//	BASE/VOL/base              the base image's meta.State (<|B|> or
//	                           <|B|-->|E|> while applying)
//	BASE/VOL/*.wdiff           sorted wdiffs named by meta.FileName
//	BASE/VOL/full_repl_state   resume point of a full replication
//	                           (FullReplState), while one is unfinished
//	BASE/VOL/tmpXXXXXX         a wdiff or metadata file being written, or
//	                           the merged diffs of a virtual image (overlay)
//	BASE/.init-VOL-*           a volume directory being created
//	BASE/.clear-VOL-*          a volume directory being deleted
//	image wb_VOL               the base image
//	image wr_VOL_GID           a restored image, exported over NBD as VOL/GID
//	image (temporary) wv_VOL   a virtual image: a clone read by hash backup
//	                           or bhash, never committed, removed on close
//
// Every metadata file is written atomically with an integrity trailer
// (meta.Save: temporary file, fsync, rename, fsync of the directory); a
// volume that does not exist has no directory (state Clear).
//
// # States
//
// The state table (Table, system.md §5.1); transient states are held while
// a command runs and are never persisted, so a crash returns the volume to
// the state it came from:
//
//	from       via (transient)    to         command
//	---------  -----------------  ---------  -------------------------------
//	Clear      InitVol            SyncReady  init-vol
//	SyncReady  ClearVol           Clear      clear-vol
//	Stopped    ClearVol           Clear      clear-vol
//	SyncReady  FullSync           Archived   full backup, full replication
//	SyncReady  Resync             Archived   resync (replication)
//	Archived   HashSync           Archived   hash backup
//	Archived   WdiffRecv          Archived   wdiff transfer
//	Archived   ReplSyncAsServer   Archived   replication server
//	Archived   Stop               Stopped    stop
//	Stopped    Start              Archived   start
//	Stopped    ResetVol           SyncReady  reset-vol
//	SyncReady  ResetVol           SyncReady  reset-vol
//
// Actions (Merge, Apply, Restore, ReplSyncAsClient, Resize) run beside the
// state and are counted per volume. Preconditions holds the precondition
// table (states allowed, actions that must not run); a refused command
// returns ErrWrongState, ErrActionRunning or ErrStopping and changes
// nothing. A stop marks the volume stopping (no new work), waits up to
// StopWait for running work (force cancels it), then goes to Stopped.
//
// # Crash safety
//
// Full backup: the bulks go into the base image while the persisted state
// stays SyncReady; the base state, the uuids and finally Archived are
// written only after the image is synced. A crash leaves SyncReady: rerun
// the backup.
//
// Wdiff transfer: the stream goes to a temporary file (every checksum
// verified, every record decompressed, fdatasync every -fi bytes), which is
// fsynced and renamed under its wdiff name before it is registered and
// acknowledged. A crash leaves the temporary file, deleted at start; an
// acknowledged diff is durable.
//
// Restore: the base is cloned to a temporary image (reflink where the store
// can), the restore list is applied to it (merged on the fly, -maxopen
// files per pass), and the clone is committed as wr_VOL_GID. The base and
// the diffs are only read, and the diffs a restore reads stay on disk until
// it ends even if an apply or merge drops them meanwhile. A crash leaves a
// temporary image, deleted at start.
//
// Apply: per pass, the applying state <B-->E> is persisted, the diffs are
// written, <E> is persisted, and the diffs the base has passed are
// deleted. In place (walb-tools' way) a crash leaves an image between B and
// E; with a clone (ApplyClone, or ApplyAuto on a reflink store) the base is
// replaced atomically and is B or E. Either way the minimum list, applied
// again, completes it, because applying is idempotent: restores include it
// meanwhile, and ResumeApplies (run by Server at start) or the next apply
// finishes the apply. Nothing is applied twice to any effect.
//
// Merge: the merged diff is written to a temporary file, fsynced, renamed
// and registered, then the sources are deleted. A crash between leaves
// both; the gc at start deletes the sources, which are off the chain.
//
// Hash backup (hashsyncrecv.go): the image at the latest snapshot is a
// virtual image (below); the differing chunks go to a temporary file in
// the volume directory, fsynced and renamed under the name of the dirty
// diff latest -> |gidB,gidE| only when the storage's snapshot arrives,
// then registered, then the uuid is saved, then the ACK goes out. A
// failure or a crash before the rename leaves the volume Archived with
// its diffs, and a temporary file and image that the next start deletes;
// a crash between the rename and the uuid leaves the diff under the old
// uuid, and the storage, which got no ACK, reruns the backup from it.
//
// Virtual images (virtual.go, overlay.go; system.md §5.5 virtual full
// scan): the image at a snapshot, clean or dirty, that hash backup, bhash
// and replication read; the base is never written. Where the store can
// reflink, the base is cloned to a temporary image, the diffs that reach
// the snapshot are applied to the clone, and the clone is removed on
// Close; applies and merges may run meanwhile. Where it cannot, nothing is
// copied: the base is read in place and the diffs' records are laid over
// each read (an overlay; the diffs of each apply pass merged into one
// temporary sorted wdiff in the volume directory, removed on Close, as
// apply and restore would write them under the discard mode), holding off
// base writers (apply, resize) until Close.
//
// Replication (replicate.go, replclient.go, replserver.go, replhash.go;
// system.md §5.6, ProtoReplSync): `replicate` runs on the source as the
// ReplSyncAsClient action; the target never persists a transient state.
// A full copy (FULL) writes the source's base image under FullSync while
// the state file says SyncReady; the source's archive uuid is saved
// first and full_repl_state (the source's base state and the blocks
// known durable) at every fdatasync and when the copy breaks off, so the
// next FULL of the same lineage and base resumes there, even after a
// restart; the base state, the uuids and Archived are written last. A
// resync (RESYNC) first drops the target's restored images and diffs and
// persists SyncReady, then patches the base image in place by hash sync
// and writes the state, the uuids and Archived last: a cut leaves
// SyncReady, and the retry resyncs or copies again. A compared diff
// (HASH) and a diff (DIFF) go to a temporary file under ReplSyncAsServer
// and are renamed and registered before the source gets its ACK; a cut
// leaves the target Archived with the diffs it had, at the gid of the
// last step acknowledged. DIFF merges the source's diffs on the fly but
// never across an explicit snapshot (a non-mergeable diff), so every
// explicit snapshot of the source is one on the target too; the diffs
// inside a received diff's range are then removed (gcRange).
//
// Recovery at start (Open): temporary images and files are deleted, the
// leftovers of an interrupted init-vol or clear-vol are removed, states,
// uuids and bases are loaded, the wdiffs re-indexed from their names, an
// active volume must have its base image, diffs off the chain are deleted,
// and restored images are registered and exported again.
//
// # Differences from walb-tools
//
// Images are files in an imagestore.Store instead of LVM volumes; there
// are no cold snapshots (thin mode). Hash
// backup compares chunks with a seeded XXH3 (package hashsync) instead of
// murmurhash3 seeded with the start time, and the archive's bhash uses
// the bhash tool's SipHash, per chunk on request. `get restored-path` and `get restored-export` replace
// `get volume-group`. The wire protocol is walb-go's (package wire), not
// walb-tools'.
package archive
