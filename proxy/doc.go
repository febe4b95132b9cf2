// Package proxy is the walb proxy server (system.md §4): it receives the
// wlogs a storage extracts from its WalB devices, turns each transfer into
// one wdiff file, queues that file once per archive registered for the
// volume, and forwards the queues to the archives, merging consecutive
// mergeable diffs on the way. A file is deleted from a queue only after the
// archive has acknowledged it (or refused it for good), so the proxy is a
// durable buffer between storages and archives: an archive that is down or
// busy only makes the queues grow.
//
// Proxy is the volume manager and holds all the semantics; it does no
// networking and tests drive it directly. Server runs a Proxy on package
// server (handshakes, dispatch, -fg/-bg limits, shutdown) with a handler per
// command and the wlog-transfer protocol (wlogtransfer.go), whose client
// side (Client.OpenWlog, Client.SendWlog, SendWlog) the storage uses. The
// sends go through an ArchiveClient, the archive package's wdiff-transfer
// client in the daemon.
//
// # Volume directory
//
// Each volume has a directory <base>/<vol>; every small file in it is
// written atomically (temporary file, fsync, rename, fsync of the
// directory) in the cybozu serialized form with package meta's integrity
// trailer, so walb-tools reads it too:
//
//	path                     content
//	-----------------------  ------------------------------------------------
//	size                     u64: volume size in LB; grows when a transfer
//	                         announces a larger volume
//	<archive>.archive        archive info: string host, u16 port, u8 codec,
//	                         u8 level, u8 cpus, u32 send delay (seconds)
//	received/                wdiffs being received (tmpXXXXXX) and received
//	                         ones not yet linked into the queues
//	sendto/<archive>/        the archive's queue: hard links to the indexed
//	                         wdiffs still to send, named as meta.FileName
//
// Archive and volume names are 1–64 characters of [0-9A-Za-z-]. A file is
// in a queue exactly when its hard link exists in sendto/<archive>/; the
// queues share one inode per diff, which disappears with the last link.
//
// # States
//
// Clear, Stopped and Started are the steady states; the others (table in
// States) are transient, held while a command runs, and roll back when it
// fails:
//
//	Clear   -> AddArchiveInfo    -> Stopped     archive-info add|update
//	Stopped -> AddArchiveInfo    -> Stopped     archive-info add|update
//	Stopped -> DeleteArchiveInfo -> Stopped     archive-info delete
//	Stopped -> DeleteArchiveInfo -> Clear       ... of the last archive
//	Stopped -> ClearVol          -> Clear       clear-vol
//	Stopped -> Start             -> Started     start
//	Started -> Stop              -> Stopped     stop graceful|force
//	Started -> WaitForEmpty      -> Stopped     stop empty
//	Started -> WlogRecv          -> Started     wlog-transfer
//
// States are not persisted: at startup every volume directory loads as
// Stopped and is started, unless the daemon runs with -stop. Sends (one
// WdiffSend action per archive) run in Started, WlogRecv and WaitForEmpty.
//
// # Receiving (system.md §4.4)
//
// A transfer is accepted when the volume is Started and not stopping, a
// foreground slot (-fg) is free and the file system has the announced
// maximum log size free. The logpacks are framed as a wlog and converted
// by wdiff.ConvertWlogs into an indexed, snappy-compressed wdiff in a
// temporary file of received/: every checksum is verified, padding is
// dropped, discards become DISCARD records and all-zero writes ALLZERO
// records. With the diff (which must be clean) the file is fsynced and
// renamed into received/, hard-linked into every queue and removed from
// received/; a send per archive is queued after its delay; size and the
// last-wlog time are updated; the state returns to Started; and only then
// is the ACK sent. A lost ACK makes the storage resend the range: the new
// file replaces the queued copy, or the archive refuses it as too old.
//
// # Sending (system.md §2.10, §4.5)
//
// Each (volume, archive) has one task in the queue (-bg workers). A run
// takes the mergeable list from the oldest queued diff, at most -wd MiB and
// -wn files (the first diff always), cut where the wdiff header UUID
// changes; merges it with wdiff.Merge, recompressed with the archive info's
// compression; and offers it with wdiff-transfer. The reply decides:
//
//	reply                              reaction
//	---------------------------------  -----------------------------------------
//	accept (then ACK)                  delete the sent files, send again at once
//	too-old-diff, different-uuid       delete the sent files, send again at once
//	smaller-lv-size, archive-not-found send error: no retry until kick, a new
//	                                   wlog or start
//	too-new-diff, syncing              back off and retry, forever
//	stopped, wdiff-recv, other errors  back off and retry; send error once no
//	                                   wlog has arrived for -rto
//	no reply (network, local error)    retry after 1 s
//	unreadable queued file             send error (the log names the file)
//
// The backoff doubles from -delay to -maxdelay; while it runs, new wlogs do
// not hurry the archive, only kick does. A sent file is deleted only if it
// is still the very file that was sent (a resend may have replaced it).
//
// # Stopping
//
// stop graceful waits (at most 60 s) for the running receive and sends to
// end, force aborts them, and both drop the queued sends. stop empty
// refuses new wlogs and keeps sending until received/ and every queue are
// empty, then stops; after 60 s it rolls back to Started.
//
// # Crash recovery (system.md §7)
//
// A wdiff is final once renamed. At startup the proxy removes what
// interrupted operations left (a volume directory without archive info, a
// queue without its archive info, <vol>.clearing), re-indexes received/
// and the queues from the file names, loads the volumes as Stopped and
// starts them: start links whatever is still in received/ into the queues,
// deletes the temporary files and queues a send to every archive. Metadata
// that cannot be read stops the startup with an error naming the file.
//
// # Protocols
//
// Commands (package wire; "ok" and "accept" are reply kinds, errors carry a
// wire code):
//
//	command                                          reply
//	-----------------------------------------------  ------------------------------
//	archive-info add|update VOL NAME ADDR:PORT       ok
//	    [TYPE:LEVEL:NCPU [DELAY]]
//	archive-info delete VOL NAME                     ok
//	archive-info get VOL NAME                        ok, string "ADDR:PORT CMPR DELAY"
//	archive-info list VOL                            ok, strings
//	start VOL                                        ok
//	stop VOL [graceful|force|empty]                  accept (the stop goes on)
//	clear-vol VOL                                    ok
//	resize VOL SIZE                                  ok (SIZE in bytes, k/m/g/t/p)
//	kick [VOL [ARCHIVE]]                             ok
//	status [VOL]                                     ok, strings
//	get state VOL                                    ok, string
//	get vol                                          ok, strings
//	get is-wdiff-send-error VOL ARCHIVE              ok, bool
//	get latest-snap [VOL]                            ok, strings
//	get proxy-diff VOL [ARCHIVE]                     ok, strings
//	get host-type | pid | handler-stat               (package server)
//	wlog-transfer VOL UUID PBS SALT SIZE_LB          accept, then the exchange in
//	    MAX_LOG_SIZE_PB                              wlogtransfer.go
//
// wdiff-transfer (proxy -> archive) belongs to the archive package; the
// proxy offers volume, "proxy", the wdiff header UUID, its size and the
// merged diff, and on accept streams the sorted wdiff and waits for the
// ACK.
package proxy
