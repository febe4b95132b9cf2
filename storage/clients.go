package storage

import (
	"context"
	"io"
	"time"

	"github.com/walb-go/walb/hashsync"
	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/wlog"
)

// The storage is a client of three protocols: wlog-transfer to a proxy,
// and dirty-full-sync and dirty-hash-sync to the primary archive
// (system.md §6.5). Their wire side
// belongs to the proxy and archive packages; the storage drives them
// through these interfaces, so it runs against the real servers or, in
// tests, against recorders.

// WlogHeader opens a wlog transfer: which volume and log the packs come
// from, and the most log the transfer may carry (the proxy checks its disk
// space against it).
type WlogHeader struct {
	Vol          string
	UUID         meta.UUID
	PBS          uint32
	Salt         uint32
	SizeLB       uint64
	MaxLogSizePB uint64
	// BeginLsid is the lsid of the first pack (informative).
	BeginLsid uint64
}

// WlogSession is an accepted wlog transfer.
type WlogSession interface {
	// SendPack streams one logpack: its header and its data blocks
	// (h.TotalIOSize PBs, padding included as on the ring).
	SendPack(ctx context.Context, h *wlog.PackHeader, data []byte) error
	// Commit ends the stream, sends the diff the packs make and waits for
	// the proxy's ACK, which it sends once the diff is durable. A nil error
	// is the ACK.
	Commit(ctx context.Context, d meta.Diff) error
	// Abort ends the transfer without committing anything. It is a no-op
	// after Commit.
	Abort(cause error)
}

// ProxyClient reaches proxies.
type ProxyClient interface {
	// HostType asks the server at addr for its host type; the heartbeat
	// considers a proxy available when it answers "proxy".
	HostType(ctx context.Context, addr string) (string, error)
	// OpenWlog starts a wlog transfer to the proxy at addr and returns once
	// the proxy accepted it; a refusal is an error.
	OpenWlog(ctx context.Context, addr string, h WlogHeader) (WlogSession, error)
}

// SyncRequest opens a backup on the archive: a full sync into its base
// image or a hash sync against its latest image.
type SyncRequest struct {
	Vol    string
	SizeLB uint64
	// Time stamps the result (the backup's start time, §2.8): the base
	// image of a full sync, the diff of a hash sync.
	Time time.Time
	// BulkLB is the unit of the copy: the bulk of a full sync, the
	// compared chunk of a hash sync.
	BulkLB uint64
}

// SyncSession is what the two kinds of backup session share: the start
// after the WAL reset and the commit of the snapshot the copy ends at.
type SyncSession interface {
	// Begin sends the uuid of the device's fresh log (reset just before)
	// and waits for the archive's ACK (it has prepared the image).
	Begin(ctx context.Context, uuid meta.UUID) error
	// Commit sends the snapshot the copy is, and waits for the archive's
	// ACK (image or diff and metadata durable).
	Commit(ctx context.Context, snap meta.Snap) error
	// Abort ends the backup without committing; the archive keeps what it
	// had. No-op after Commit.
	Abort(cause error)
}

// FullSyncSession is a full backup the archive accepted
// (dirty-full-sync).
type FullSyncSession interface {
	SyncSession
	// SendImage reads the image [0, SizeLB) from src in bulks of BulkLB, in
	// address order, sends them (all-zero bulks as markers, the others
	// compressed) and waits until the archive has written and synced them.
	// src paces the reads and fails them on a force stop.
	SendImage(ctx context.Context, src io.ReaderAt) error
}

// HashSyncSession is a hash backup the archive accepted (dirty-hash-sync).
type HashSyncSession interface {
	SyncSession
	// From is the archive's latest snapshot: the image the device is
	// compared with. The storage resets its log with gidB = From().GidE+1.
	From() meta.Snap
	// SendDiff runs the data side of the comparison (package hashsync):
	// the archive streams the hashes of its image's chunks of BulkLB, and
	// the chunks of src [0, SizeLB) that differ are sent. src is read on
	// several goroutines at once; it paces the reads and fails them on a
	// force stop. progress, if set, is called as the compared prefix grows.
	// It returns once the archive has received every differing chunk.
	SendDiff(ctx context.Context, src io.ReaderAt, progress func(hashsync.Stats)) (hashsync.Stats, error)
}

// ArchiveClient reaches the primary archive. Each Open returns once the
// archive accepted the backup; a refusal is an error, relayed to the
// controller.
type ArchiveClient interface {
	// OpenFullSync starts a full backup (full-bkp).
	OpenFullSync(ctx context.Context, addr string, req SyncRequest) (FullSyncSession, error)
	// OpenHashSync starts a hash backup (hash-bkp).
	OpenHashSync(ctx context.Context, addr string, req SyncRequest) (HashSyncSession, error)
}

// SnapshotInfo is a volume's latest snapshot on one server, for ts-delta.
type SnapshotInfo struct {
	Vol       string
	Gid       uint64
	Lsid      uint64 // storage only
	Timestamp time.Time
}

// LatestSnapGatherer is implemented by archive clients that can answer
// gather-latest-snap: the archive's latest snapshot of each volume. The
// storage then keeps ts-delta (gid and time lag behind the archive).
type LatestSnapGatherer interface {
	GatherLatestSnap(ctx context.Context, addr string, vols []string) ([]SnapshotInfo, error)
}
