package storage

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/server"
)

// Defaults of Config (walb-tools' walb-storage options, system.md §9).
const (
	DefaultMaxWlogSendBytes = 128 << 20 // -wl 128 MiB
	DefaultSnapshotInterval = 10 * time.Second
	DefaultMonitorInterval  = 100 * time.Millisecond
	DefaultTsDeltaInterval  = 60 * time.Second
	DefaultStopTimeout      = 60 * time.Second
	DefaultMaxForeground    = 2
	DefaultBulkSize         = 256 << 10
	MaxBulkSize             = 4 << 20
)

// Config configures a Storage. Zero fields take the defaults.
type Config struct {
	// BaseDir holds one directory per volume (-b). It must exist.
	BaseDir string
	// ID names this storage in logs and to its peers (-id).
	ID string
	// Archive is the primary archive's address (-archive).
	Archive string
	// Proxies are the proxies' addresses, highest priority first (-proxy).
	Proxies []string
	// Devices resolves a volume's device path to a Device.
	Devices DeviceResolver
	// ProxyClient and ArchiveClient reach the peers.
	ProxyClient   ProxyClient
	ArchiveClient ArchiveClient
	// MaxWlogSendBytes caps the log one transfer carries and spaces gids
	// (-wl, in MiB on the command line; default 128 MiB). At least one PB.
	MaxWlogSendBytes uint64
	// SnapshotInterval is the age after which the newest snapshot record
	// is followed by an implicit one (-snapintvl, default 10 s).
	SnapshotInterval time.Duration
	// MaxBackground is the number of extraction workers (-bg, default 1).
	MaxBackground int
	// MaxForeground bounds concurrent backups (-fg, default 2).
	MaxForeground int
	// RetryMin and RetryMax bound the retry backoff of a failed transfer
	// (-delay default 1 s, -maxdelay default 300 s).
	RetryMin, RetryMax time.Duration
	// FullScanBps throttles backup reads in bytes per second (-fst;
	// 0 = unlimited). SetFullScanBps changes it at run time.
	FullScanBps uint64
	// MonitorInterval is how often monitored devices are polled for new
	// logs (default 100 ms).
	MonitorInterval time.Duration
	// TsDeltaInterval is the period of gather-latest-snap with the archive
	// (-tsdintvl, default 60 s; the first run is 5 s after Run starts).
	TsDeltaInterval time.Duration
	// StopTimeout bounds how long stop waits for running work (60 s).
	StopTimeout time.Duration
	// HeartbeatInterval, ProxyCheckAge and HeartbeatTimeout time the proxy
	// heartbeat: every interval, the proxy whose last check is at least the
	// age old is asked its host type within the timeout (defaults 1 s,
	// 10 s, 3 s).
	HeartbeatInterval, ProxyCheckAge, HeartbeatTimeout time.Duration
	// Tasks, if set, is the queue that runs the extraction tasks through
	// RunTask (Server passes its framework's queue, which its Run starts
	// and stops). If nil, the Storage runs its own queue in Run.
	Tasks *server.TaskQueue
	// Foreground, if set, takes a foreground slot for a backup instead of
	// the Storage's own MaxForeground count (Server passes the network
	// server's, so that -fg bounds backups and transfers together).
	Foreground func() (release func(), err error)
	// Logger receives the logs (default slog.Default()).
	Logger *slog.Logger
	// Now is the clock (default time.Now); tests set it.
	Now func() time.Time
}

func (c Config) withDefaults() (Config, error) {
	if c.BaseDir == "" {
		return c, errors.Wrap(server.ErrBadArgs, "storage: no base directory")
	}
	if fi, err := os.Stat(c.BaseDir); err != nil || !fi.IsDir() {
		return c, errors.Wrapf(server.ErrBadArgs, "storage: base directory %s is not a directory (%v)", c.BaseDir, err)
	}
	if c.Devices == nil {
		return c, errors.Wrap(server.ErrBadArgs, "storage: no device resolver")
	}
	if len(c.Proxies) > 0 && c.ProxyClient == nil {
		return c, errors.Wrap(server.ErrBadArgs, "storage: proxies but no proxy client")
	}
	if c.Archive != "" && c.ArchiveClient == nil {
		return c, errors.Wrap(server.ErrBadArgs, "storage: an archive but no archive client")
	}
	if c.MaxWlogSendBytes == 0 {
		c.MaxWlogSendBytes = DefaultMaxWlogSendBytes
	}
	if c.SnapshotInterval <= 0 {
		c.SnapshotInterval = DefaultSnapshotInterval
	}
	if c.MaxBackground <= 0 {
		c.MaxBackground = 1
	}
	if c.MaxForeground <= 0 {
		c.MaxForeground = DefaultMaxForeground
	}
	if c.RetryMin <= 0 {
		c.RetryMin = time.Second
	}
	if c.RetryMax <= 0 {
		c.RetryMax = 300 * time.Second
	}
	c.RetryMax = max(c.RetryMax, c.RetryMin)
	if c.MonitorInterval <= 0 {
		c.MonitorInterval = DefaultMonitorInterval
	}
	if c.TsDeltaInterval <= 0 {
		c.TsDeltaInterval = DefaultTsDeltaInterval
	}
	if c.StopTimeout <= 0 {
		c.StopTimeout = DefaultStopTimeout
	}
	if c.HeartbeatInterval <= 0 {
		c.HeartbeatInterval = DefaultHeartbeatInterval
	}
	if c.ProxyCheckAge <= 0 {
		c.ProxyCheckAge = DefaultProxyCheckAge
	}
	if c.HeartbeatTimeout <= 0 {
		c.HeartbeatTimeout = DefaultHeartbeatTimeout
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c, nil
}

// Storage is the storage server's engine: it owns the volume directories
// under BaseDir, assigns gids to snapshots, extracts wlogs from the devices
// and sends them to the proxies, and runs full backups to the primary
// archive. Commands are its methods; Server serves them over the network,
// and an embedding program may call them directly. Run drives the
// background work. All methods are safe for concurrent use.
type Storage struct {
	cfg      Config
	log      *slog.Logger
	states   *server.Volumes
	tasks    *server.TaskQueue
	ownTasks bool // tasks is the Storage's own: Run starts and stops it
	proxies  *proxyList

	mu       sync.Mutex
	vols     map[string]*volume
	devUsers map[string]string // device path -> volume
	closed   bool

	monMu sync.Mutex // volume.monitored, volume.lastLatest

	fg *server.Slots

	fullScanBps atomic.Uint64
	running     atomic.Bool

	tsd tsDeltas
}

// New returns a Storage. Call Recover to load the volumes, then Run.
func New(cfg Config) (*Storage, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	log := cfg.Logger
	s := &Storage{
		fg:       server.NewSlots(cfg.MaxForeground),
		cfg:      cfg,
		log:      log,
		states:   server.NewVolumes(Table, log),
		vols:     map[string]*volume{},
		devUsers: map[string]string{},
	}
	s.tasks = cfg.Tasks
	if s.tasks == nil {
		s.tasks = server.NewTaskQueue(s.RunTask, server.TaskOptions{
			Workers: cfg.MaxBackground, RetryMin: cfg.RetryMin, RetryMax: cfg.RetryMax, Logger: log,
		})
		s.ownTasks = true
	}
	s.proxies = newProxyList(cfg.Proxies, cfg.ProxyClient, log, cfg.Now,
		heartbeat{interval: cfg.HeartbeatInterval, age: cfg.ProxyCheckAge, timeout: cfg.HeartbeatTimeout})
	s.fullScanBps.Store(cfg.FullScanBps)
	return s, nil
}

// Config returns the configuration in force.
func (s *Storage) Config() Config { return s.cfg }

func (s *Storage) now() time.Time { return time.Unix(s.cfg.Now().Unix(), 0) }

// Recover loads every volume directory under BaseDir: it removes what a
// crash left half-made, reloads the persisted states, and resumes
// monitoring of Target and Standby volumes (each gets a transfer task, so
// logs written while the storage was down are sent). A directory that does
// not load is logged and skipped; the volume then reads as Clear.
func (s *Storage) Recover(ctx context.Context) error {
	ents, err := os.ReadDir(s.cfg.BaseDir)
	if err != nil {
		return errors.Wrap(err, "storage: recover")
	}
	for _, e := range ents {
		name := e.Name()
		path := filepath.Join(s.cfg.BaseDir, name)
		if isTmpDir(name) {
			s.log.Warn("removing leftover of an interrupted init-vol or clear-vol", "path", path)
			if err := os.RemoveAll(path); err != nil {
				return errors.Wrap(err, "storage: recover")
			}
			continue
		}
		if !e.IsDir() || server.ValidateVolumeName(name) != nil {
			continue
		}
		if err := s.loadVolume(ctx, name, path); err != nil {
			s.log.Error("volume not loaded", "vol", name, "err", err)
		}
	}
	return nil
}

func (s *Storage) loadVolume(ctx context.Context, name, dir string) error {
	v, st, err := openVolumeDir(ctx, dir, name)
	if err != nil {
		return err
	}
	if rec := v.queue.Recovery(); !rec.Clean() {
		s.log.Warn("queue file repaired", "vol", name, "recovery", rec.String())
	}
	s.mu.Lock()
	if other, ok := s.devUsers[v.devPath]; ok {
		s.mu.Unlock()
		v.queue.Close()
		return errors.Wrapf(ErrDeviceInUse, "volume %s: device %s is also bound to %s", name, v.devPath, other)
	}
	s.vols[name] = v
	s.devUsers[v.devPath] = name
	s.mu.Unlock()
	if err := s.states.Set(name, st); err != nil {
		return err
	}
	s.log.Info("volume loaded", "vol", name, "state", st, "done", v.done.String(), "queued", v.queue.Len())
	if slices.Contains(monitorStates, st) {
		s.startMonitoring(v)
	}
	return nil
}

// Run runs the background work until ctx is done: the extraction tasks
// (-bg workers, unless Config.Tasks is someone else's queue), the log
// monitor, the proxy heartbeat and the ts-delta gatherer. Canceling ctx
// aborts running transfers; they are resent later.
func (s *Storage) Run(ctx context.Context) error {
	if !s.running.CompareAndSwap(false, true) {
		return errors.New("storage: Run called twice")
	}
	var wg sync.WaitGroup
	loop := func(f func(context.Context)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f(ctx)
		}()
	}
	if s.ownTasks {
		s.tasks.Start(ctx)
	}
	loop(s.monitorLoop)
	loop(s.proxies.loop)
	if g, ok := s.cfg.ArchiveClient.(LatestSnapGatherer); ok && s.cfg.Archive != "" {
		loop(func(ctx context.Context) { s.tsDeltaLoop(ctx, g) })
	}
	<-ctx.Done()
	if s.ownTasks {
		s.tasks.Stop()
	}
	wg.Wait()
	return nil
}

// Close releases the volumes' queue files. Run must have returned.
func (s *Storage) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	var first error
	for _, v := range s.vols {
		if err := v.queue.Close(); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// volume returns a loaded volume or ErrNotFound.
func (s *Storage) volume(vol string) (*volume, error) {
	if err := server.ValidateVolumeName(vol); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, errors.WithStack(ErrClosed)
	}
	v, ok := s.vols[vol]
	if !ok {
		return nil, errors.Wrapf(ErrNotFound, "volume %s", vol)
	}
	return v, nil
}

// device resolves the volume's device (once; it is kept). It takes only
// the volume's device lock, so the monitor never waits for a long metadata
// operation (a WAL reset) of another goroutine.
func (s *Storage) device(ctx context.Context, v *volume) (Device, error) {
	v.devMu.Lock()
	defer v.devMu.Unlock()
	if v.dev != nil {
		return v.dev, nil
	}
	d, err := s.cfg.Devices.Resolve(ctx, v.devPath)
	if err != nil {
		return nil, errors.WithMessagef(err, "volume %s", v.name)
	}
	v.dev = d
	return d, nil
}

// VolumeNames returns the volumes that exist (not Clear), sorted.
func (s *Storage) VolumeNames() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	names := make([]string, 0, len(s.vols))
	for n := range s.vols {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// State returns the volume's state (Clear for an unknown volume).
func (s *Storage) State(vol string) string { return s.states.State(vol) }

// Volumes exposes the state registry (states, actions, stop states) for
// status and tests.
func (s *Storage) Volumes() *server.Volumes { return s.states }

// Tasks exposes the extraction task queue (status; kick).
func (s *Storage) Tasks() *server.TaskQueue { return s.tasks }

// InitVol creates the volume directory of vol bound to the device at
// devPath (init-vol; Clear -> SyncReady). The device must resolve and must
// not be bound to another volume.
func (s *Storage) InitVol(ctx context.Context, vol, devPath string) error {
	if err := server.ValidateVolumeName(vol); err != nil {
		return err
	}
	if devPath == "" || len(devPath) > maxPathLen {
		return errors.Wrapf(server.ErrBadArgs, "init-vol %s: bad device path %q", vol, devPath)
	}
	tx, err := s.states.Begin(ctx, vol, StateInitVol, server.Guard{States: CommandStates["init-vol"], NotStopping: true})
	if err != nil {
		return err
	}
	defer tx.Rollback()
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return errors.WithStack(ErrClosed)
	}
	if other, ok := s.devUsers[devPath]; ok {
		s.mu.Unlock()
		return errors.Wrapf(ErrDeviceInUse, "init-vol %s: %s is bound to volume %s", vol, devPath, other)
	}
	s.devUsers[devPath] = vol // reserved while the directory is made
	s.mu.Unlock()
	unreserve := func() {
		s.mu.Lock()
		delete(s.devUsers, devPath)
		s.mu.Unlock()
	}
	dev, err := s.cfg.Devices.Resolve(ctx, devPath)
	if err != nil {
		unreserve()
		return errors.WithMessagef(err, "init-vol %s", vol)
	}
	v, err := createVolumeDir(ctx, s.cfg.BaseDir, vol, devPath, s.now())
	if err != nil {
		unreserve()
		return err
	}
	v.devMu.Lock()
	v.dev = dev
	v.devMu.Unlock()
	s.mu.Lock()
	s.vols[vol] = v
	s.mu.Unlock()
	s.log.Info("volume initialized", "vol", vol, "device", devPath)
	return tx.Commit(StateSyncReady)
}

// ClearVol deletes the volume directory (clear-vol; SyncReady -> Clear).
func (s *Storage) ClearVol(ctx context.Context, vol string) error {
	v, err := s.volume(vol)
	if err != nil {
		return err
	}
	tx, err := s.states.Begin(ctx, vol, StateClearVol, server.Guard{States: CommandStates["clear-vol"], NotStopping: true, Idle: true})
	if err != nil {
		return err
	}
	defer tx.Rollback()
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := removeVolumeDir(s.cfg.BaseDir, vol); err != nil {
		return err
	}
	v.queue.Close()
	s.mu.Lock()
	delete(s.vols, vol)
	delete(s.devUsers, v.devPath)
	s.mu.Unlock()
	s.log.Info("volume cleared", "vol", vol)
	return tx.Commit(StateClear)
}

// Mode is the role a started volume takes.
type Mode int

// Modes of StartVol.
const (
	// Target extracts wlogs and sends them to the proxies.
	Target Mode = iota
	// Standby discards wlogs (a replica that is not the target).
	Standby
)

// ParseMode parses "target" or "standby".
func ParseMode(s string) (Mode, error) {
	switch s {
	case "target":
		return Target, nil
	case "standby":
		return Standby, nil
	}
	return 0, errors.Wrapf(server.ErrBadArgs, "start mode %q (want target or standby)", s)
}

// String returns "target" or "standby".
func (m Mode) String() string {
	if m == Standby {
		return "standby"
	}
	return "target"
}

// StartVol starts monitoring (start VOL target|standby): Stopped -> Target,
// refused while the log is overflowed; or SyncReady -> Standby, resetting
// an overflowed log first (gid 0).
func (s *Storage) StartVol(ctx context.Context, vol string, mode Mode) error {
	v, err := s.volume(vol)
	if err != nil {
		return err
	}
	from, via, to := StateStopped, StateStartTarget, StateTarget
	if mode == Standby {
		from, via, to = StateSyncReady, StateStartStandby, StateStandby
	}
	tx, err := s.states.Begin(ctx, vol, via, server.Guard{States: []string{from}, NotStopping: true})
	if err != nil {
		return err
	}
	defer tx.Rollback()
	v.mu.Lock()
	err = s.startLocked(ctx, v, mode, from, to)
	v.mu.Unlock()
	if err != nil {
		return errors.WithMessagef(err, "start %s %s", vol, mode)
	}
	s.startMonitoring(v)
	return tx.Commit(to)
}

func (s *Storage) startLocked(ctx context.Context, v *volume, mode Mode, from, to string) error {
	if st, err := v.loadState(); err != nil {
		return err
	} else if st != from {
		return errors.Wrapf(server.ErrWrongState, "state file holds %s, not %s", st, from)
	}
	dev, err := s.device(ctx, v)
	if err != nil {
		return err
	}
	over, err := dev.IsLogOverflow(ctx)
	if err != nil {
		return err
	}
	if over {
		if mode == Target {
			return errors.Wrap(ErrOverflow, "the log overflowed: recover with hash-bkp")
		}
		s.log.Warn("log overflowed: resetting it before standby", "vol", v.name)
		if err := s.resetLocked(ctx, v, dev, 0); err != nil {
			return err
		}
	}
	return v.saveState(to)
}

// StopVol stops monitoring (stop VOL [graceful|force]): Target -> Stopped,
// Standby -> SyncReady. It first waits (at most StopTimeout) for a steady
// state with no running action; with force, a running transfer or backup
// aborts at its next pack or bulk. The server replies accept before
// calling it.
func (s *Storage) StopVol(ctx context.Context, vol string, force bool) error {
	v, err := s.volume(vol)
	if err != nil {
		return err
	}
	stop := server.Stopping
	if force {
		stop = server.ForceStopping
	}
	end, err := s.states.BeginStop(vol, stop)
	if err != nil {
		return err
	}
	defer end()
	wctx, cancel := context.WithTimeout(ctx, s.cfg.StopTimeout)
	err = s.states.WaitFor(wctx, vol, server.Guard{Steady: true, Idle: true})
	cancel()
	if err != nil {
		return errors.WithMessagef(err, "stop %s", vol)
	}
	var from, via, to string
	switch st := s.states.State(vol); st {
	case StateTarget:
		from, via, to = StateTarget, StateStopTarget, StateStopped
	case StateStandby:
		from, via, to = StateStandby, StateStopStandby, StateSyncReady
	default:
		return errors.Wrapf(server.ErrWrongState, "stop %s: volume is %s, not Target or Standby", vol, st)
	}
	tx, err := s.states.Begin(ctx, vol, via, server.Guard{States: []string{from}, Idle: true})
	if err != nil {
		return err
	}
	defer tx.Rollback()
	s.stopMonitoring(v)
	v.mu.Lock()
	err = v.saveState(to)
	v.mu.Unlock()
	if err != nil {
		s.startMonitoring(v)
		return err
	}
	s.log.Info("volume stopped", "vol", vol, "force", force)
	return tx.Commit(to)
}

// ResetVol resets the device's log and the volume's metadata (reset-vol
// VOL [gid]; Stopped -> SyncReady): the WAL is cleared (new uuid), done
// becomes (lsid 0, gid), the queue is emptied and the uuid saved.
func (s *Storage) ResetVol(ctx context.Context, vol string, gid uint64) error {
	v, err := s.volume(vol)
	if err != nil {
		return err
	}
	if gid == meta.InvalidGid {
		return errors.Wrapf(server.ErrBadArgs, "reset-vol %s: gid %d", vol, gid)
	}
	tx, err := s.states.Begin(ctx, vol, StateReset, server.Guard{States: CommandStates["reset-vol"], NotStopping: true, Idle: true})
	if err != nil {
		return err
	}
	defer tx.Rollback()
	v.mu.Lock()
	err = s.resetVolLocked(ctx, v, gid)
	v.mu.Unlock()
	if err != nil {
		return errors.WithMessagef(err, "reset-vol %s", vol)
	}
	return tx.Commit(StateSyncReady)
}

func (s *Storage) resetVolLocked(ctx context.Context, v *volume, gid uint64) error {
	dev, err := s.device(ctx, v)
	if err != nil {
		return err
	}
	if err := s.resetLocked(ctx, v, dev, gid); err != nil {
		return err
	}
	return v.saveState(StateSyncReady)
}

// resetLocked clears the device's log and restarts the volume's lsid/gid
// accounting at (0, gid) (system.md §3.6). The order is walb-tools': a
// crash in between leaves done or the queue stale, which the next reset or
// backup (required anyway) rewrites.
func (s *Storage) resetLocked(ctx context.Context, v *volume, dev Device, gid uint64) error {
	if err := dev.ResetWAL(ctx); err != nil {
		return errors.WithMessage(err, "reset the WAL")
	}
	info, err := dev.Info(ctx)
	if err != nil {
		return err
	}
	if err := v.saveDone(meta.LsidGid{Lsid: 0, Gid: gid, Timestamp: s.now()}); err != nil {
		return err
	}
	if err := v.queue.Clear(); err != nil {
		return errors.WithMessagef(err, "volume %s: clear queue", v.name)
	}
	if err := v.saveUUID(meta.UUID(info.UUID)); err != nil {
		return err
	}
	s.monMu.Lock()
	v.lastLatest = 0
	s.monMu.Unlock()
	s.log.Info("log reset", "vol", v.name, "gid", gid, "uuid", info.UUID.String())
	return nil
}

// Snapshot takes an explicit snapshot at the device's latest lsid
// (snapshot VOL; Target or Stopped) and returns its gid. A Target volume
// sends the logs up to it at once. It fails with ErrOverflow while the log
// is overflowed.
func (s *Storage) Snapshot(ctx context.Context, vol string) (uint64, error) {
	v, err := s.volume(vol)
	if err != nil {
		return 0, err
	}
	v.mu.Lock()
	gid, err := s.snapshotLocked(ctx, v)
	v.mu.Unlock()
	if err != nil {
		return 0, errors.WithMessagef(err, "snapshot %s", vol)
	}
	s.log.Info("snapshot taken", "vol", vol, "gid", gid)
	if s.isMonitored(v) {
		s.tasks.Push(vol)
	}
	return gid, nil
}

func (s *Storage) snapshotLocked(ctx context.Context, v *volume) (uint64, error) {
	// Checked under v.mu: a reset, which empties the queue, also takes it.
	if err := s.states.Check(v.name, server.Guard{States: CommandStates["snapshot"], NotStopping: true}); err != nil {
		return 0, err
	}
	dev, err := s.device(ctx, v)
	if err != nil {
		return 0, err
	}
	l, err := dev.Lsids(ctx)
	if err != nil {
		return 0, err
	}
	return s.takeSnapshotLocked(ctx, v, dev, l.Latest, false)
}

// takeSnapshotLocked pushes a snapshot record at lsid onto the queue,
// durably, and returns its gid (system.md §3.3).
func (s *Storage) takeSnapshotLocked(ctx context.Context, v *volume, dev Device, lsid uint64, mergeable bool) (uint64, error) {
	over, err := dev.IsLogOverflow(ctx)
	if err != nil {
		return 0, err
	}
	if over {
		return 0, errors.Wrap(ErrOverflow, "the log overflowed: recover with hash-bkp")
	}
	info, err := dev.Info(ctx)
	if err != nil {
		return 0, err
	}
	if meta.UUID(info.UUID) != v.uuid {
		return 0, errors.Wrapf(ErrLogMismatch, "device log uuid %s, volume uuid %s", info.UUID, v.uuid)
	}
	pre := v.done
	if front, err := v.queue.Front(); err == nil {
		pre = front
	} else if !errors.Is(err, meta.ErrQueueEmpty) {
		return 0, err
	}
	gid, err := snapshotGid(pre, lsid, maxSendPB(s.cfg.MaxWlogSendBytes, info.PBS))
	if err != nil {
		return 0, err
	}
	rec := meta.LsidGid{Lsid: lsid, Gid: gid, Mergeable: mergeable, Timestamp: s.now()}
	if err := v.queue.PushFront(rec); err != nil {
		return 0, errors.WithMessagef(err, "volume %s: queue snapshot", v.name)
	}
	s.log.Debug("snapshot record queued", "vol", v.name, "gid", gid, "lsid", lsid, "implicit", mergeable)
	return gid, nil
}

// Resize grows the device (resize VOL SIZE; SyncReady, Stopped, Target or
// Standby). sizeLB 0 means the data device's size. The data device must
// have been grown first.
func (s *Storage) Resize(ctx context.Context, vol string, sizeLB uint64) error {
	v, err := s.volume(vol)
	if err != nil {
		return err
	}
	if err := s.states.Check(vol, server.Guard{States: CommandStates["resize"], NotStopping: true}); err != nil {
		return err
	}
	dev, err := s.device(ctx, v)
	if err != nil {
		return err
	}
	info, err := dev.Info(ctx)
	if err != nil {
		return err
	}
	if sizeLB != 0 && sizeLB < info.SizeLB {
		return errors.Wrapf(ErrShrink, "resize %s from %d LB to %d LB", vol, info.SizeLB, sizeLB)
	}
	if err := dev.Resize(ctx, sizeLB); err != nil {
		return errors.WithMessagef(err, "resize %s", vol)
	}
	s.log.Info("volume resized", "vol", vol, "from_lb", info.SizeLB, "to_lb", sizeLB)
	return nil
}

// Kick makes every proxy due for a heartbeat (checking one at once if none
// is available) and runs the delayed tasks now (kick).
func (s *Storage) Kick() {
	s.proxies.kick()
	s.tasks.Kick()
}

// SetFullScanBps sets the backup read throttle in bytes per second
// (set-full-scan-bps; 0 = unlimited). Running backups follow at once.
func (s *Storage) SetFullScanBps(bps uint64) { s.fullScanBps.Store(bps) }

// FullScanBps returns the backup read throttle.
func (s *Storage) FullScanBps() uint64 { return s.fullScanBps.Load() }

// foreground takes one of the MaxForeground backup slots.
func (s *Storage) foreground() (release func(), err error) {
	if s.cfg.Foreground != nil {
		return s.cfg.Foreground()
	}
	return s.fg.Take()
}
