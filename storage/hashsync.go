package storage

import (
	"context"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/hashsync"
	"github.com/walb-go/walb/meta"
)

// HashBackup brings the primary archive's latest image up to the device by
// sending only the chunks that differ (hash-bkp; SyncReady -> HashSync ->
// Stopped -> Target; system.md §3.7, §6.5 dirty-hash-sync2). It recovers a
// volume whose log overflowed, and makes a storage the target of a volume
// the archive already holds (a former standby).
//
//  1. the archive accepts and names its latest snapshot From (Accepted is
//     called);
//  2. the device's log is reset with gidB = From.GidE + 1 and its new
//     uuid sent;
//  3. the volume is monitored: logs written meanwhile flow to the proxies;
//  4. the archive hashes its image at From chunk by chunk (BulkSize), the
//     storage reads and hashes the same chunks of the device (throttled by
//     SetFullScanBps) and sends those that differ (package hashsync);
//  5. an explicit snapshot gidE is taken and the archive told that the
//     diff From -> |gidB,gidE| it made is complete; the logs from gidB make
//     it clean at gidE;
//  6. on the archive's ACK the volume becomes Target.
//
// Any failure, and a force stop, rolls the volume back to SyncReady with
// monitoring stopped, and the archive keeps what it had (spec e13); the
// backup must then be run again.
func (s *Storage) HashBackup(ctx context.Context, vol string, opt BackupOptions) error {
	return s.runBackup(ctx, CmdHashBkp, StateHashSync, vol, opt, func(ctx context.Context, req SyncRequest) (archiveSync, error) {
		sess, err := s.cfg.ArchiveClient.OpenHashSync(ctx, s.cfg.Archive, req)
		if err != nil {
			return nil, err
		}
		from := sess.From()
		if err := from.Validate(); err != nil || from.GidE >= meta.InvalidGid-1 {
			sess.Abort(err)
			return nil, errors.Wrapf(ErrBadArchiveSnap, "the archive's latest snapshot is %s", from)
		}
		return &hashSync{HashSyncSession: sess}, nil
	})
}

// hashSync is a hash sync as the backup flow drives it.
type hashSync struct {
	HashSyncSession
	stats hashsync.Stats
}

// firstGid: the log restarts right after the archive's latest snapshot.
func (h *hashSync) firstGid() uint64 { return h.From().GidE + 1 }

func (h *hashSync) copyImage(ctx context.Context, src *imageReader) error {
	st, err := h.SendDiff(ctx, src, func(st hashsync.Stats) { src.run.compared.Store(uint64(st.Offset)) })
	h.stats = st
	return err
}

func (h *hashSync) logAttrs() []any {
	return []any{"from", h.From().String(), "scanned", h.stats.Scanned, "diff_chunks", h.stats.DiffChunks,
		"diff_bytes", h.stats.DiffBytes, "sent_bytes", h.stats.StoredBytes}
}
