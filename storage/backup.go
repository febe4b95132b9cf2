package storage

import (
	"context"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/server"
	"github.com/walb-go/walb/walb"
)

// The flow full-bkp and hash-bkp share (system.md §3.7): the archive
// accepts, the log is reset at the backup's first gid, the volume is
// monitored, the device is copied, an explicit snapshot ends the copy, the
// archive commits, and the volume becomes Target. Only the first gid and
// the copy differ: the whole image for full-bkp (fullsync.go), the chunks
// that differ from the archive's latest image for hash-bkp (hashsync.go).

// BackupOptions configures FullBackup and HashBackup.
type BackupOptions struct {
	// BulkSize is the unit of the copy in bytes: the size of one read and
	// of one bulk sent (full-bkp), or of one compared chunk (hash-bkp). A
	// multiple of 512 up to MaxBulkSize (default DefaultBulkSize).
	BulkSize uint64
	// Accepted, if set, is called once the archive has accepted the backup.
	// walb-tools replies "accept" to the controller at that point and the
	// backup goes on in the background.
	Accepted func()
}

// BackupProgress is how far a running backup is.
type BackupProgress struct {
	// Command is CmdFullBkp or CmdHashBkp.
	Command string
	// Started is when the backup began.
	Started time.Time
	// SizeBytes is the device size, ReadBytes how much of it has been read.
	SizeBytes, ReadBytes uint64
	// ComparedBytes (hash-bkp) is the prefix of the device compared with
	// the archive's image and whose differing chunks were sent; it lags
	// ReadBytes by the chunks in flight.
	ComparedBytes uint64
}

// DoneBytes is the part of the device a backup has dealt with: read and
// sent (full-bkp) or compared and sent (hash-bkp).
func (p BackupProgress) DoneBytes() uint64 {
	if p.Command == CmdHashBkp {
		return p.ComparedBytes
	}
	return p.ReadBytes
}

// backupRun is a running backup as the device reader, the copy and the
// queries see it.
type backupRun struct {
	cmd      string
	started  time.Time
	size     uint64
	read     atomic.Uint64
	compared atomic.Uint64
}

// archiveSync is an accepted sync of either kind, as the shared flow
// drives it.
type archiveSync interface {
	SyncSession
	// firstGid is the gid the device's log restarts at (gidB).
	firstGid() uint64
	// copyImage sends the device image as the archive asks for it,
	// updating src.run's progress.
	copyImage(ctx context.Context, src *imageReader) error
	// logAttrs describes the finished copy for the log.
	logAttrs() []any
}

// runBackup runs the shared flow of a backup command cmd through the
// transient state via; open asks the archive to accept the sync.
func (s *Storage) runBackup(ctx context.Context, cmd, via, vol string, opt BackupOptions,
	open func(ctx context.Context, req SyncRequest) (archiveSync, error)) (err error) {
	bulk := opt.BulkSize
	if bulk == 0 {
		bulk = DefaultBulkSize
	}
	if bulk%walb.LBS != 0 || bulk > MaxBulkSize {
		return errors.Wrapf(server.ErrBadArgs, "%s %s: bulk size %d (a multiple of %d up to %d)", cmd, vol, bulk, walb.LBS, MaxBulkSize)
	}
	if s.cfg.ArchiveClient == nil || s.cfg.Archive == "" {
		return errors.Wrapf(server.ErrBadArgs, "%s %s: no archive configured", cmd, vol)
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
	tx, err := s.states.Begin(ctx, vol, via, server.Guard{States: CommandStates[cmd], NotStopping: true, Idle: true})
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
	req := SyncRequest{Vol: vol, SizeLB: info.SizeLB, Time: start, BulkLB: bulk / walb.LBS}
	sess, err := open(ctx, req)
	if err != nil {
		return errors.WithMessagef(err, "%s %s: archive %s", cmd, vol, s.cfg.Archive)
	}
	committed := false
	run := &backupRun{cmd: cmd, started: s.cfg.Now(), size: info.SizeLB * walb.LBS}
	v.backup.Store(run)
	defer func() {
		v.backup.Store(nil)
		if !committed {
			sess.Abort(err)
			s.stopMonitoring(v)
		}
	}()
	if opt.Accepted != nil {
		opt.Accepted()
	}
	gidB := sess.firstGid()
	s.log.Info("backup started", "cmd", cmd, "vol", vol, "peer", s.cfg.Archive, "gid", gidB, "size_lb", info.SizeLB, "bulk", bulk)

	v.mu.Lock()
	err = s.resetLocked(ctx, v, dev, gidB)
	uuid := v.uuid
	v.mu.Unlock()
	if err != nil {
		return errors.WithMessagef(err, "%s %s", cmd, vol)
	}
	if err := sess.Begin(ctx, uuid); err != nil {
		return errors.WithMessagef(err, "%s %s: archive %s", cmd, vol, s.cfg.Archive)
	}
	s.startMonitoring(v)
	src := &imageReader{ctx: ctx, s: s, vol: vol, dev: dev, size: int64(run.size), run: run}
	if err := sess.copyImage(ctx, src); err != nil {
		return errors.WithMessagef(err, "%s %s: copy the image", cmd, vol)
	}
	v.mu.Lock()
	var gidE uint64
	l, err := dev.Lsids(ctx)
	if err == nil {
		gidE, err = s.takeSnapshotLocked(ctx, v, dev, l.Latest, false)
	}
	v.mu.Unlock()
	if err != nil {
		return errors.WithMessagef(err, "%s %s: final snapshot", cmd, vol)
	}
	s.tasks.Push(vol)
	snap := meta.Snap{GidB: gidB, GidE: gidE}
	if err := sess.Commit(ctx, snap); err != nil {
		return errors.WithMessagef(err, "%s %s: archive %s", cmd, vol, s.cfg.Archive)
	}
	committed = true
	if err := tx.Commit(StateStopped); err != nil {
		return err
	}
	if err := s.becomeTarget(ctx, v); err != nil {
		return errors.WithMessagef(err, "%s %s: the archive holds %s but the volume stays Stopped", cmd, vol, snap)
	}
	attrs := append([]any{"cmd", cmd, "vol", vol, "peer", s.cfg.Archive, "snap", snap.String(),
		"dur", s.cfg.Now().Sub(run.started).Round(time.Millisecond)}, sess.logAttrs()...)
	s.log.Info("backup done", attrs...)
	return nil
}

// BackupProgress returns the progress of the backup running on vol; ok is
// false when none runs.
func (s *Storage) BackupProgress(vol string) (p BackupProgress, ok bool) {
	v, err := s.volume(vol)
	if err != nil {
		return p, false
	}
	run := v.backup.Load()
	if run == nil {
		return p, false
	}
	return BackupProgress{Command: run.cmd, Started: run.started, SizeBytes: run.size,
		ReadBytes: min(run.read.Load(), run.size), ComparedBytes: run.compared.Load()}, true
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

// imageReader is the device image as an archive client reads it: reads
// are paced to the full-scan rate (which may change on the fly), counted
// for the backup's progress, and fail once the volume is force stopped.
// It is safe for concurrent use: the hash comparison reads chunks on
// several goroutines.
type imageReader struct {
	ctx  context.Context
	s    *Storage
	vol  string
	dev  Device
	size int64
	run  *backupRun
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
	r.run.read.Add(uint64(n))
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

// pacer keeps a byte stream, read by one goroutine or several, at or below
// a rate that may change on the fly (set-full-scan-bps); a change restarts
// the accounting.
type pacer struct {
	mu    sync.Mutex
	bps   uint64
	start time.Time
	bytes uint64
}

func (p *pacer) wait(ctx context.Context, n, bps uint64, now func() time.Time) error {
	p.mu.Lock()
	if bps != p.bps {
		p.bps, p.start, p.bytes = bps, now(), 0
	}
	if bps == 0 {
		p.mu.Unlock()
		return nil
	}
	p.bytes += n
	due := p.start.Add(time.Duration(float64(p.bytes) / float64(bps) * float64(time.Second)))
	d := due.Sub(now())
	p.mu.Unlock()
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
