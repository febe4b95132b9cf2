package archive

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"time"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/imagestore"
	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/server"
)

// StopWait bounds how long stop waits for running actions and transfers
// to end (walb-tools: 60 s).
const StopWait = 60 * time.Second

// StopMode is stop's option: graceful lets running actions finish, force
// cancels them. walb-tools' "empty" is for proxies only.
type StopMode = server.StopMode

// Stop modes.
const (
	StopGraceful = server.StopGraceful
	StopForce    = server.StopForce
)

// ParseStopMode parses "", "graceful" or "force".
func ParseStopMode(s string) (StopMode, error) {
	return server.ParseStopMode(s, StopGraceful, StopForce)
}

func randomSuffix() string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// InitVol creates vol (Clear -> InitVol -> SyncReady): a directory with
// zero uuids, the default base and the SyncReady state. The directory is
// built under a temporary name and renamed into place, so a crash leaves
// either no volume or a complete one.
func (e *Engine) InitVol(ctx context.Context, vol string) error {
	tx, err := e.vols.Begin(ctx, vol, StateInitVol, guard(CmdInitVol))
	if err != nil {
		return err
	}
	defer tx.Rollback()
	dir := filepath.Join(e.cfg.BaseDir, vol)
	if _, err := os.Lstat(dir); err == nil {
		return errorf(ErrExists, "volume %s: directory %s exists", vol, dir)
	}
	tmp := filepath.Join(e.cfg.BaseDir, initDirPrefix+vol+"-"+randomSuffix())
	if err := os.Mkdir(tmp, 0o755); err != nil {
		return errors.Wrapf(err, "archive: init-vol %s", vol)
	}
	ok := false
	defer func() {
		if !ok {
			_ = os.RemoveAll(tmp)
		}
	}()
	if err := writeInitialMetadata(tmp); err != nil {
		return errors.Wrapf(err, "archive: init-vol %s", vol)
	}
	if err := os.Rename(tmp, dir); err != nil {
		return errors.Wrapf(err, "archive: init-vol %s", vol)
	}
	ok = true
	if err := meta.SyncDir(e.cfg.BaseDir); err != nil {
		return errors.Wrapf(err, "archive: init-vol %s", vol)
	}
	e.mu.Lock()
	e.volumes[vol] = newVolume(vol, dir)
	e.mu.Unlock()
	if err := tx.Commit(StateSyncReady); err != nil {
		return err
	}
	e.logv(vol).Info("init-vol done")
	return nil
}

// removeImages deletes the restored images (withdrawing their exports) and
// the base image of v.
func (e *Engine) removeImages(ctx context.Context, v *volume) error {
	for _, g := range v.restoredGids() {
		if err := e.deleteRestored(ctx, v, g); err != nil {
			return err
		}
	}
	if err := e.cfg.Images.Remove(ctx, baseImageName(v.name)); err != nil && !errors.Is(err, imagestore.ErrNotFound) {
		return errors.Wrapf(err, "archive: volume %s: remove base image", v.name)
	}
	v.mu.Lock()
	v.sizeLB = 0
	v.mu.Unlock()
	return nil
}

// ClearVol deletes vol (SyncReady or Stopped -> ClearVol -> Clear): its
// images first, then its directory, which is renamed out of the way before
// it is removed. A crash before the rename leaves the volume in its state
// with fewer images (run clear-vol again); after it, the next start
// removes the leftover.
func (e *Engine) ClearVol(ctx context.Context, vol string) error {
	tx, v, err := e.beginOn(ctx, vol, StateClearVol, CmdClearVol)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if err := e.removeImages(ctx, v); err != nil {
		return err
	}
	trash := filepath.Join(e.cfg.BaseDir, clearDirPrefix+vol+"-"+randomSuffix())
	if err := os.Rename(v.dir, trash); err != nil {
		return errors.Wrapf(err, "archive: clear-vol %s", vol)
	}
	if err := meta.SyncDir(e.cfg.BaseDir); err != nil {
		return errors.Wrapf(err, "archive: clear-vol %s", vol)
	}
	e.mu.Lock()
	delete(e.volumes, vol)
	e.mu.Unlock()
	if err := os.RemoveAll(trash); err != nil {
		e.logv(vol).Warn("removing the cleared directory; the next start retries", "dir", trash, "err", err)
	}
	if err := tx.Commit(StateClear); err != nil {
		return err
	}
	e.logv(vol).Info("clear-vol done")
	return nil
}

// ResetVol returns vol to its initial SyncReady content (Stopped or
// SyncReady -> ResetVol -> SyncReady): images, diffs and uuids are
// dropped, the base is reset, and the SyncReady state is written last, so
// a crash midway leaves the previous state with part of the cleanup done
// (run reset-vol again).
func (e *Engine) ResetVol(ctx context.Context, vol string) error {
	tx, v, err := e.beginOn(ctx, vol, StateResetVol, CmdResetVol)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if err := e.removeImages(ctx, v); err != nil {
		return err
	}
	all := v.diffs.All()
	v.removeDiffs(all)
	if err := writeInitialMetadata(v.dir); err != nil {
		return errors.Wrapf(err, "archive: reset-vol %s", vol)
	}
	v.mu.Lock()
	v.base = meta.DefaultState()
	v.uuid, v.archiveUUID = meta.UUID{}, meta.UUID{}
	v.mu.Unlock()
	if err := tx.Commit(StateSyncReady); err != nil {
		return err
	}
	e.logv(vol).Info("reset-vol done", "diffs", len(all))
	return nil
}

// Start makes a Stopped volume take diffs again (Stopped -> Start ->
// Archived). The base image must exist.
func (e *Engine) Start(ctx context.Context, vol string) error {
	tx, v, err := e.beginOn(ctx, vol, StateStart, CmdStart)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	v.mu.Lock()
	size := v.sizeLB
	v.mu.Unlock()
	if size == 0 {
		return errorf(ErrNoBaseImage, "start %s", vol)
	}
	if err := e.commitState(tx, v, StateArchived); err != nil {
		return err
	}
	e.logv(vol).Info("start done")
	return nil
}

// Stop stops vol (Archived -> Stop -> Stopped). It marks the volume as
// stopping, so that no new action or transfer starts, waits up to StopWait
// for a steady state with nothing running (with StopForce, running
// actions and transfers are cancelled first), then changes the state.
// walb-tools replies accept before waiting; the server does the same by
// running Stop in the background.
func (e *Engine) Stop(ctx context.Context, vol string, mode StopMode) error {
	if _, err := e.volume(vol); err != nil {
		if errors.Is(err, ErrNotFound) {
			return errorf(ErrWrongState, "stop %s: volume is %s", vol, StateClear)
		}
		return err
	}
	st := server.Stopping
	if mode == StopForce {
		st = server.ForceStopping
	}
	end, err := e.vols.BeginStop(vol, st)
	if err != nil {
		return err
	}
	defer end()
	return e.stopLocked(ctx, vol, mode)
}

func (e *Engine) stopLocked(ctx context.Context, vol string, mode StopMode) error {
	v, err := e.volume(vol)
	if err != nil {
		return err
	}
	if mode == StopForce {
		v.cancelActions()
	}
	wctx, cancel := context.WithTimeout(ctx, StopWait)
	defer cancel()
	if err := e.vols.WaitFor(wctx, vol, server.Guard{Steady: true, Idle: true}); err != nil {
		return errors.WithMessagef(err, "archive: stop %s", vol)
	}
	g := guard(CmdStop)
	g.NotStopping = false // the stop state is ours
	g.Idle = true
	tx, err := e.vols.Begin(ctx, vol, StateStop, g)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if err := e.commitState(tx, v, StateStopped); err != nil {
		return err
	}
	e.logv(vol).Info("stop done", "mode", mode)
	return nil
}

// PrepareStop validates a stop before the server replies accept: the
// volume must exist and no stop may be in progress. It returns the function
// that runs the stop (in the background) holding the stop state.
func (e *Engine) PrepareStop(vol string, mode StopMode) (run func(ctx context.Context) error, err error) {
	if _, err := e.volume(vol); err != nil {
		if errors.Is(err, ErrNotFound) {
			return nil, errorf(ErrWrongState, "stop %s: volume is %s", vol, StateClear)
		}
		return nil, err
	}
	st := server.Stopping
	if mode == StopForce {
		st = server.ForceStopping
	}
	end, err := e.vols.BeginStop(vol, st)
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context) error {
		defer end()
		return e.stopLocked(ctx, vol, mode)
	}, nil
}
