package storage

import (
	"context"
	"io"
	"time"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/server"
	"github.com/walb-go/walb/walb"
)

// FullBackupOptions configures FullBackup.
type FullBackupOptions struct {
	// BulkSize is the size of one read and one bulk sent, in bytes: a
	// multiple of 512 up to MaxBulkSize (default DefaultBulkSize).
	BulkSize uint64
	// Accepted, if set, is called once the archive has accepted the backup.
	// walb-tools replies "accept" to the controller at that point and the
	// backup goes on in the background.
	Accepted func()
}

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
func (s *Storage) FullBackup(ctx context.Context, vol string, opt FullBackupOptions) (err error) {
	bulk := opt.BulkSize
	if bulk == 0 {
		bulk = DefaultBulkSize
	}
	if bulk%walb.LBS != 0 || bulk > MaxBulkSize {
		return errors.Wrapf(server.ErrBadArgs, "full-bkp %s: bulk size %d (a multiple of %d up to %d)", vol, bulk, walb.LBS, MaxBulkSize)
	}
	if s.cfg.ArchiveClient == nil || s.cfg.Archive == "" {
		return errors.Wrapf(server.ErrBadArgs, "full-bkp %s: no archive configured", vol)
	}
	v, err := s.volume(vol)
	if err != nil {
		return err
	}
	release, err := s.foreground()
	if err != nil {
		return err
	}
	defer release()
	tx, err := s.states.Begin(ctx, vol, StateFullSync, server.Guard{States: CommandStates["full-bkp"], NotStopping: true, Idle: true})
	if err != nil {
		return err
	}
	defer tx.Rollback()
	dev, err := s.device(ctx, v)
	if err != nil {
		return err
	}
	info, err := dev.Info(ctx)
	if err != nil {
		return err
	}
	start := s.now()
	req := FullSyncRequest{Vol: vol, SizeLB: info.SizeLB, Time: start, BulkLB: bulk / walb.LBS}
	sess, err := s.cfg.ArchiveClient.OpenFullSync(ctx, s.cfg.Archive, req)
	if err != nil {
		return errors.WithMessagef(err, "full-bkp %s: archive %s", vol, s.cfg.Archive)
	}
	committed := false
	defer func() {
		if !committed {
			sess.Abort(err)
			s.stopMonitoring(v)
		}
	}()
	if opt.Accepted != nil {
		opt.Accepted()
	}
	s.log.Info("full backup started", "vol", vol, "peer", s.cfg.Archive, "size_lb", info.SizeLB, "bulk", bulk)

	v.mu.Lock()
	err = s.resetLocked(ctx, v, dev, 0)
	uuid := v.uuid
	v.mu.Unlock()
	if err != nil {
		return errors.WithMessagef(err, "full-bkp %s", vol)
	}
	if err := sess.Begin(ctx, uuid); err != nil {
		return errors.WithMessagef(err, "full-bkp %s: archive %s", vol, s.cfg.Archive)
	}
	s.startMonitoring(v)
	src := &imageReader{ctx: ctx, s: s, vol: vol, dev: dev, size: int64(info.SizeLB * walb.LBS)}
	if err := sess.SendImage(ctx, src); err != nil {
		return errors.WithMessagef(err, "full-bkp %s: copy the image", vol)
	}
	v.mu.Lock()
	var gidE uint64
	l, err := dev.Lsids(ctx)
	if err == nil {
		gidE, err = s.takeSnapshotLocked(ctx, v, dev, l.Latest, false)
	}
	v.mu.Unlock()
	if err != nil {
		return errors.WithMessagef(err, "full-bkp %s: final snapshot", vol)
	}
	s.tasks.Push(vol)
	snap := meta.Snap{GidB: 0, GidE: gidE}
	if err := sess.Commit(ctx, snap); err != nil {
		return errors.WithMessagef(err, "full-bkp %s: archive %s", vol, s.cfg.Archive)
	}
	committed = true
	if err := tx.Commit(StateStopped); err != nil {
		return err
	}
	if err := s.becomeTarget(ctx, v); err != nil {
		return errors.WithMessagef(err, "full-bkp %s: the archive holds %s but the volume stays Stopped", vol, snap)
	}
	s.log.Info("full backup done", "vol", vol, "peer", s.cfg.Archive, "snap", snap.String(),
		"dur", s.cfg.Now().Sub(start).Round(time.Second))
	return nil
}

// becomeTarget moves a volume that finished a backup from Stopped to
// Target, keeping the monitoring the backup started. If another command
// took the volume meanwhile, monitoring stops and that command's state
// stands; if Target cannot be persisted, the volume is left Stopped
// (persisted) and not monitored.
func (s *Storage) becomeTarget(ctx context.Context, v *volume) error {
	tx, err := s.states.Begin(ctx, v.name, StateStartTarget, server.Guard{States: []string{StateStopped}})
	if err != nil {
		s.stopMonitoring(v)
		return err
	}
	defer tx.Rollback()
	v.mu.Lock()
	err = v.saveState(StateTarget)
	v.mu.Unlock()
	if err == nil {
		return tx.Commit(StateTarget)
	}
	s.stopMonitoring(v)
	v.mu.Lock()
	if serr := v.saveState(StateStopped); serr != nil {
		s.log.Error("cannot persist Stopped", "vol", v.name, "err", serr)
	}
	v.mu.Unlock()
	return err
}

// imageReader is the device image as the archive client reads it: reads
// are paced to the full-scan rate (which may change on the fly) and fail
// once the volume is force stopped. The client reads sequentially; it is
// not safe for concurrent use.
type imageReader struct {
	ctx  context.Context
	s    *Storage
	vol  string
	dev  Device
	size int64
	pace pacer
}

// ReadAt implements io.ReaderAt.
func (r *imageReader) ReadAt(p []byte, off int64) (int, error) {
	if r.s.states.StopState(r.vol) == server.ForceStopping {
		return 0, errors.Wrapf(ErrForceStopped, "image read at byte %d of %d", off, r.size)
	}
	if off < 0 || off >= r.size {
		return 0, io.EOF
	}
	want := min(int64(len(p)), r.size-off)
	n, err := r.dev.ReadAt(r.ctx, p[:want], off)
	if err != nil {
		return n, errors.WithMessagef(err, "read the device at byte %d", off)
	}
	if n < len(p) {
		err = io.EOF
	}
	if perr := r.pace.wait(r.ctx, uint64(n), r.s.fullScanBps.Load(), r.s.cfg.Now); perr != nil {
		return n, perr
	}
	return n, err
}

// pacer keeps a byte stream at or below a rate that may change on the fly
// (set-full-scan-bps); a change restarts the accounting.
type pacer struct {
	bps   uint64
	start time.Time
	bytes uint64
}

func (p *pacer) wait(ctx context.Context, n, bps uint64, now func() time.Time) error {
	if bps != p.bps {
		p.bps, p.start, p.bytes = bps, now(), 0
	}
	if bps == 0 {
		return nil
	}
	p.bytes += n
	due := p.start.Add(time.Duration(float64(p.bytes) / float64(bps) * float64(time.Second)))
	d := due.Sub(now())
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
