package storage

import (
	"context"
	"io"
	"time"

	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/wlog"
)

// The storage is a client of two protocols: wlog-transfer to a proxy and
// dirty-full-sync to the primary archive (system.md §6.5). Their wire side
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

// FullSyncRequest opens a full backup into the archive's base image.
type FullSyncRequest struct {
	Vol    string
	SizeLB uint64
	// Time stamps the base image (the backup's start time, §2.8).
	Time   time.Time
	BulkLB uint64
}

// FullSyncSession is a full backup the archive accepted.
type FullSyncSession interface {
	// Begin sends the uuid of the device's fresh log (reset just before)
	// and waits for the archive's ACK (it has prepared the base image).
	Begin(ctx context.Context, uuid meta.UUID) error
	// SendImage reads the image [0, SizeLB) from src in bulks of BulkLB, in
	// address order, sends them (all-zero bulks as markers, the others
	// compressed) and waits until the archive has written and synced them.
	// src paces the reads and fails them on a force stop.
	SendImage(ctx context.Context, src io.ReaderAt) error
	// Commit sends the snapshot the copied image is, and waits for the
	// archive's ACK (base image and metadata durable).
	Commit(ctx context.Context, snap meta.Snap) error
	// Abort ends the backup without committing. No-op after Commit.
	Abort(cause error)
}

// ArchiveClient reaches the primary archive.
type ArchiveClient interface {
	// OpenFullSync starts a full backup and returns once the archive
	// accepted it; a refusal is an error (relayed to the controller).
	OpenFullSync(ctx context.Context, addr string, req FullSyncRequest) (FullSyncSession, error)
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
