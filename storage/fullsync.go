package storage

import "context"

// FullBackup copies the whole device to the primary archive while writes
// go on (full-bkp; SyncReady -> FullSync -> Stopped -> Target; system.md
// §3.7):
//
//  1. the archive accepts (Accepted is called);
//  2. the device's log is reset with gid 0 and its new uuid sent;
//  3. the volume is monitored: logs written meanwhile flow to the proxies;
//  4. the device is read in bulks (throttled by SetFullScanBps) and sent;
//  5. an explicit snapshot gidE is taken and the archive told that its
//     image is the dirty snapshot |0,gidE|, which the logs from gid 0 make
//     clean at gidE;
//  6. on the archive's ACK the volume becomes Target.
//
// Any failure, and a force stop between bulks, rolls the volume back to
// SyncReady with monitoring stopped; the backup must then be run again.
func (s *Storage) FullBackup(ctx context.Context, vol string, opt BackupOptions) error {
	return s.runBackup(ctx, CmdFullBkp, StateFullSync, vol, opt, func(ctx context.Context, req SyncRequest) (archiveSync, error) {
		sess, err := s.cfg.ArchiveClient.OpenFullSync(ctx, s.cfg.Archive, req)
		if err != nil {
			return nil, err
		}
		return fullSync{sess}, nil
	})
}

// fullSync is a full sync as the backup flow drives it.
type fullSync struct{ FullSyncSession }

// firstGid: a full image restarts the gids at 0.
func (fullSync) firstGid() uint64 { return 0 }

func (f fullSync) copyImage(ctx context.Context, src *imageReader) error {
	return f.SendImage(ctx, src)
}

func (fullSync) logAttrs() []any { return nil }
