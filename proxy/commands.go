package proxy

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/server"
)

// StopMode is how stop ends a volume's Started state (system.md §4.6):
// graceful waits for running sends and receives to finish, force aborts
// them, empty refuses new wlogs and keeps sending until every queue is
// empty.
type StopMode = server.StopMode

// Stop modes.
const (
	StopGraceful = server.StopGraceful
	StopForce    = server.StopForce
	StopEmpty    = server.StopEmpty
)

// ParseStopMode parses graceful, force or empty; "" is graceful.
func ParseStopMode(s string) (StopMode, error) {
	return server.ParseStopMode(s, StopGraceful, StopForce, StopEmpty)
}

func validateNames(vol, archive string) error {
	if err := server.ValidateVolumeName(vol); err != nil {
		return err
	}
	if archive != "" {
		return ValidateArchiveName(archive)
	}
	return nil
}

// beginOn enters the transient state via on an existing volume under g
// and returns the transaction with the volume; on error nothing is held.
func (p *Proxy) beginOn(ctx context.Context, vol, via string, g server.Guard) (*server.StateTxn, *volume, error) {
	tx, err := p.vols.Begin(ctx, vol, via, g)
	if err != nil {
		return nil, nil, err
	}
	v, err := p.mustVolume(vol)
	if err != nil {
		tx.Rollback()
		return nil, nil, err
	}
	return tx, v, nil
}

// AddArchiveInfo registers archive for vol (archive-info add), or replaces
// its info (update). The volume must be Clear or Stopped with no send
// running; from Clear the volume directory is created. add fails with
// ErrArchiveExists if the archive is known. A new archive's queue starts
// empty: it receives the diffs made from later wlogs.
func (p *Proxy) AddArchiveInfo(ctx context.Context, vol, archive string, info ArchiveInfo, update bool) error {
	if err := validateNames(vol, archive); err != nil {
		return err
	}
	if err := ValidateArchiveName(archive); err != nil {
		return err
	}
	if err := info.Validate(); err != nil {
		return err
	}
	tx, err := p.vols.Begin(ctx, vol, StateAddArchiveInfo, guardAddArchiveInfo)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	v := p.volume(vol)
	created := false
	if v == nil {
		d := volDir(filepath.Join(p.cfg.BaseDir, vol))
		if err := createVolDir(d); err != nil {
			return err
		}
		created = true
		v = &volume{name: vol, dir: d, archives: map[string]*archiveQueue{}, transfers: map[*context.CancelFunc]struct{}{}}
		v.received, _ = meta.NewDiffSet()
	}
	if err := p.addArchive(v, archive, info, update); err != nil {
		if created {
			if rerr := removeVolDir(v.dir); rerr != nil {
				p.log.ErrorContext(ctx, "removing the volume directory after a failed add", "vol", vol, "err", rerr)
			}
		}
		return err
	}
	if created {
		p.mu.Lock()
		p.volumes[vol] = v
		p.mu.Unlock()
	}
	p.log.InfoContext(ctx, "archive info set", "vol", vol, "archive", archive, "info", info.String(), "update", update)
	return tx.Commit(StateStopped)
}

// addArchive writes the archive info; the <archive>.archive file is the
// commit point, written after its queue directory exists.
func (p *Proxy) addArchive(v *volume, name string, info ArchiveInfo, update bool) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	a := v.archives[name]
	if a != nil && !update {
		return errors.Wrapf(ErrArchiveExists, "volume %s archive %s", v.name, name)
	}
	if a == nil {
		dir := v.dir.sendtoDir(name)
		// A leftover queue without archive info belongs to a deleted
		// archive; it must not reappear.
		if err := os.RemoveAll(dir); err != nil {
			return errors.Wrap(err, "proxy: archive queue directory")
		}
		if err := os.Mkdir(dir, dirPerm); err != nil {
			return errors.Wrap(err, "proxy: archive queue directory")
		}
		if err := meta.SyncDir(v.dir.sendtoRoot()); err != nil {
			return err
		}
	}
	if err := saveArchiveInfo(v.dir, name, info); err != nil {
		return err
	}
	if a == nil {
		set, _ := meta.NewDiffSet()
		v.archives[name] = &archiveQueue{name: name, info: info, diffs: set}
	} else {
		a.info = info
	}
	return nil
}

// DeleteArchiveInfo removes archive from vol with its queue (archive-info
// delete). The volume must be Stopped with no send running; deleting the
// last archive clears the volume.
func (p *Proxy) DeleteArchiveInfo(ctx context.Context, vol, archive string) error {
	if err := validateNames(vol, archive); err != nil {
		return err
	}
	if err := ValidateArchiveName(archive); err != nil {
		return err
	}
	tx, v, err := p.beginOn(ctx, vol, StateDeleteArchiveInfo, guardDeleteArchiveInfo)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	last, err := p.deleteArchive(v, archive)
	if err != nil {
		return err
	}
	p.tasks.Remove(taskKey(vol, archive))
	p.log.InfoContext(ctx, "archive info deleted", "vol", vol, "archive", archive)
	if !last {
		return tx.Commit(StateStopped)
	}
	if err := p.clearVolume(v); err != nil {
		return err
	}
	return tx.Commit(StateClear)
}

// deleteArchive removes the archive info file (the commit point) and then
// the queue; recovery removes a queue left without its info.
func (p *Proxy) deleteArchive(v *volume, name string) (last bool, err error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.archives[name] == nil {
		return false, errors.Wrapf(ErrNoArchive, "volume %s archive %s", v.name, name)
	}
	if err := os.Remove(v.dir.archivePath(name)); err != nil && !os.IsNotExist(err) {
		return false, errors.Wrap(err, "proxy: delete archive info")
	}
	if err := meta.SyncDir(string(v.dir)); err != nil {
		return false, err
	}
	delete(v.archives, name)
	if err := os.RemoveAll(v.dir.sendtoDir(name)); err != nil {
		return false, errors.Wrap(err, "proxy: delete archive queue")
	}
	if err := meta.SyncDir(v.dir.sendtoRoot()); err != nil {
		return false, err
	}
	return len(v.archives) == 0, nil
}

// clearVolume removes the volume directory and forgets the volume.
func (p *Proxy) clearVolume(v *volume) error {
	if err := removeVolDir(v.dir); err != nil {
		return err
	}
	p.mu.Lock()
	delete(p.volumes, v.name)
	p.mu.Unlock()
	p.removeTasks(v.name)
	return nil
}

// ClearVol deletes a Stopped volume with all its diffs (clear-vol).
func (p *Proxy) ClearVol(ctx context.Context, vol string) error {
	if err := validateNames(vol, ""); err != nil {
		return err
	}
	tx, v, err := p.beginOn(ctx, vol, StateClearVol, guardClearVol)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if err := p.clearVolume(v); err != nil {
		return err
	}
	p.log.InfoContext(ctx, "volume cleared", "vol", vol)
	return tx.Commit(StateClear)
}

// Start moves a Stopped volume to Started (start): it finishes the hard
// links of whatever is still in received/ (which must end up empty),
// deletes temporary files, clears the send-error flags and queues a send to
// every archive.
func (p *Proxy) Start(ctx context.Context, vol string) error {
	if err := validateNames(vol, ""); err != nil {
		return err
	}
	tx, v, err := p.beginOn(ctx, vol, StateStart, guardStart)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	if err := p.distributeReceived(v); err != nil {
		return err
	}
	dirs := []string{v.dir.receivedDir()}
	for _, a := range v.archiveNames() {
		dirs = append(dirs, v.dir.sendtoDir(a))
	}
	for _, dir := range dirs {
		gone, err := meta.CleanTemps(dir)
		if err != nil {
			return err
		}
		if len(gone) > 0 {
			p.log.InfoContext(ctx, "temporary files removed", "vol", vol, "dir", dir, "n", len(gone))
		}
	}
	if n := v.received.Len(); n > 0 {
		return errors.Wrapf(ErrNotEmpty, "volume %s: %d diff(s) left in received/", vol, n)
	}
	if err := tx.Commit(StateStarted); err != nil {
		return err
	}
	p.kickVolume(v, "")
	p.log.InfoContext(ctx, "volume started", "vol", vol)
	return nil
}

// Stop moves a Started volume to Stopped (stop VOL MODE). The network
// handler replies accept first and then calls Stop, which blocks: graceful
// and force wait (at most Config.StopTimeout) for the receive and sends to
// end, force aborting them; empty refuses new wlogs, keeps sending until
// received/ and every queue are empty, and rolls back to Started on
// timeout. Queued sends of the volume are dropped.
func (p *Proxy) Stop(ctx context.Context, vol string, mode StopMode) error {
	if err := validateNames(vol, ""); err != nil {
		return err
	}
	if mode == StopEmpty {
		return p.stopEmpty(ctx, vol)
	}
	ss := server.Stopping
	if mode == StopForce {
		ss = server.ForceStopping
	}
	endStop, err := p.vols.BeginStop(vol, ss)
	if err != nil {
		return err
	}
	defer endStop()
	if v := p.volume(vol); v != nil && mode == StopForce {
		v.cancelTransfers()
	}
	wctx, cancel := context.WithTimeout(ctx, p.cfg.StopTimeout)
	defer cancel()
	for {
		if err := p.vols.WaitFor(wctx, vol, server.Guard{Steady: true, Idle: true}); err != nil {
			return errors.Wrapf(ErrTimeout, "stop %s: %v", vol, err)
		}
		tx, err := p.vols.Begin(ctx, vol, StateStop, server.Guard{States: []string{StateStarted}, Idle: true})
		if errors.Is(err, server.ErrActionRunning) {
			continue // a send slipped in between; wait for it too
		}
		if err != nil {
			return err
		}
		p.removeTasks(vol)
		p.log.InfoContext(ctx, "volume stopped", "vol", vol, "mode", mode.String())
		return tx.Commit(StateStopped)
	}
}

// emptyPoll is how often stop empty looks at the queues.
const emptyPoll = 50 * time.Millisecond

func (p *Proxy) stopEmpty(ctx context.Context, vol string) error {
	endStop, err := p.vols.BeginStop(vol, server.WaitingForEmpty)
	if err != nil {
		return err
	}
	defer endStop()
	wctx, cancel := context.WithTimeout(ctx, p.cfg.StopTimeout)
	defer cancel()
	if err := p.vols.WaitFor(wctx, vol, server.Guard{Steady: true}); err != nil {
		return errors.Wrapf(ErrTimeout, "stop empty %s: %v", vol, err)
	}
	tx, err := p.vols.Begin(ctx, vol, StateWaitForEmpty, server.Guard{States: []string{StateStarted}})
	if err != nil {
		return err
	}
	v, err := p.mustVolume(vol)
	if err != nil {
		tx.Rollback()
		return err
	}
	idle := func() bool {
		for _, a := range v.archiveNames() {
			if p.vols.NumAction(vol, actionName(a)) > 0 {
				return false
			}
		}
		return true
	}
	tick := time.NewTicker(emptyPoll)
	defer tick.Stop()
	for {
		if v.isEmpty() && idle() {
			p.removeTasks(vol)
			// A send that was already running when the tasks were
			// removed may still be finishing; check once more.
			if v.isEmpty() && idle() {
				p.log.InfoContext(ctx, "volume emptied and stopped", "vol", vol)
				return tx.Commit(StateStopped)
			}
		}
		for _, a := range v.archiveNames() {
			p.tasks.Push(taskKey(vol, a))
		}
		select {
		case <-tick.C:
		case <-wctx.Done():
			tx.Rollback()
			p.kickVolume(v, "")
			return errors.Wrapf(ErrTimeout, "stop empty %s: queues not empty after %s", vol, p.cfg.StopTimeout)
		}
	}
}

// removeTasks drops the queued sends of vol.
func (p *Proxy) removeTasks(vol string) {
	p.tasks.RemoveFunc(func(key string) bool {
		v, _, ok := parseTaskKey(key)
		return ok && v == vol
	})
}

// Kick clears send-error flags and backoffs and sends now (kick [VOL
// [ARCHIVE]]): every Started volume without arguments; a Started volume,
// or one archive of it, otherwise.
func (p *Proxy) Kick(ctx context.Context, vol, archive string) error {
	if vol == "" {
		if archive != "" {
			return errors.Wrap(server.ErrBadArgs, "kick: archive without volume")
		}
		p.mu.Lock()
		vols := make([]*volume, 0, len(p.volumes))
		for _, v := range p.volumes {
			vols = append(vols, v)
		}
		p.mu.Unlock()
		for _, v := range vols {
			if p.vols.State(v.name) == StateStarted {
				p.kickVolume(v, "")
			}
		}
		return nil
	}
	if err := validateNames(vol, archive); err != nil {
		return err
	}
	if err := p.vols.Check(vol, guardKick); err != nil {
		return err
	}
	v, err := p.mustVolume(vol)
	if err != nil {
		return err
	}
	if archive != "" && v.archive(archive) == nil {
		return errors.Wrapf(ErrNoArchive, "volume %s archive %s", vol, archive)
	}
	p.kickVolume(v, archive)
	p.log.InfoContext(ctx, "kicked", "vol", vol, "archive", archive)
	return nil
}

// kickVolume clears the flags and backoffs of one archive (or all, for "")
// and queues their sends now.
func (p *Proxy) kickVolume(v *volume, archive string) {
	v.mu.Lock()
	var keys []string
	for name, a := range v.archives {
		if archive != "" && name != archive {
			continue
		}
		a.sendError, a.backoff, a.notBefore = false, 0, time.Time{}
		keys = append(keys, taskKey(v.name, name))
	}
	v.mu.Unlock()
	slices.Sort(keys)
	for _, k := range keys {
		p.tasks.Push(k)
	}
}

// Resize rewrites the volume size (resize VOL SIZE, for tests); Stopped only.
func (p *Proxy) Resize(ctx context.Context, vol string, sizeLb uint64) error {
	if err := validateNames(vol, ""); err != nil {
		return err
	}
	if err := p.vols.Check(vol, guardResize); err != nil {
		return err
	}
	v, err := p.mustVolume(vol)
	if err != nil {
		return err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := saveSize(v.dir, sizeLb); err != nil {
		return err
	}
	old := v.sizeLb
	v.sizeLb = sizeLb
	p.log.InfoContext(ctx, "volume resized", "vol", vol, "oldSizeLb", old, "sizeLb", sizeLb)
	return nil
}
