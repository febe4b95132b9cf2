package proxy

import (
	"context"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/server"
	"github.com/walb-go/walb/wdiff"
)

// Defaults of Config, walb-tools' option defaults (system.md §9).
const (
	DefaultMaxWdiffSendSize  = 128 << 20 // -wd 128 (MiB)
	DefaultMaxWdiffSendFiles = 1000      // -wn
	DefaultDelay             = time.Second
	DefaultMaxDelay          = 300 * time.Second
	DefaultRetryTimeout      = 1800 * time.Second
	DefaultStopTimeout       = 60 * time.Second
	DefaultMaxForeground     = 2
	DefaultMaxBackground     = 1
	// exceptionRetry is how soon a send that failed locally or on the
	// network (rather than with an archive's reply) is tried again.
	exceptionRetry = time.Second
	// maxListRetries bounds the rebuilds of a send list whose files vanish.
	maxListRetries = 10
)

// Config configures a Proxy. Zero fields take the defaults above.
type Config struct {
	// BaseDir holds one directory per volume (-b). It must exist.
	BaseDir string
	// Archive sends wdiffs to archive servers. Required.
	Archive ArchiveClient
	// MaxWdiffSendSize (-wd, bytes) and MaxWdiffSendFiles (-wn) bound the
	// diffs merged into one transfer; the first diff is always sent.
	MaxWdiffSendSize  uint64
	MaxWdiffSendFiles int
	// Delay and MaxDelay are the retry backoff after an archive asked to
	// wait (-delay, -maxdelay); it doubles from Delay up to MaxDelay.
	Delay, MaxDelay time.Duration
	// RetryTimeout (-rto): a send that keeps failing is given up (send
	// error) once no wlog has arrived for this long.
	RetryTimeout time.Duration
	// StopTimeout bounds how long stop waits for the volume to become
	// idle (or empty); walb-tools waits 60 s.
	StopTimeout time.Duration
	// StartStopped leaves every volume Stopped at recovery (-stop) instead
	// of starting it.
	StartStopped bool
	// ReceiveCompression compresses the indexed wdiffs made from received
	// wlogs (default snappy, as walb-tools).
	ReceiveCompression *wdiff.Compression
	// Foreground takes a foreground slot for a wlog transfer (-fg); the
	// network server passes server.Server.Foreground. If nil, the proxy
	// keeps its own limit of MaxForeground.
	Foreground    func() (release func(), err error)
	MaxForeground int
	// Tasks is the queue that runs the sends (RunTask); the network server
	// passes server.Server.Tasks. If nil, the proxy runs its own queue
	// with MaxBackground workers (-bg).
	Tasks         *server.TaskQueue
	MaxBackground int
	// Logger receives the logs (default slog.Default()).
	Logger *slog.Logger
}

// Proxy is the proxy's volume manager: it turns wlog transfers into wdiff
// files, queues them per archive, and sends them (system.md §4). It does no
// networking itself: Server drives it from connections, and tests drive it
// directly. All methods are safe for concurrent use.
type Proxy struct {
	cfg   Config
	log   *slog.Logger
	vols  *server.Volumes
	tasks *server.TaskQueue

	ownTasks   bool
	taskCancel context.CancelFunc
	// exceptionRetry is how soon a send that failed locally or on the
	// network is tried again; tests shorten it.
	exceptionRetry time.Duration

	fg *server.Slots

	mu      sync.Mutex
	volumes map[string]*volume
	closed  bool
}

// volume is the in-memory image of one volume directory; it exists exactly
// while the volume is not Clear.
type volume struct {
	name string
	dir  volDir

	mu           sync.Mutex // guards the fields below and the files of the queues
	sizeLb       uint64
	received     *meta.DiffSet
	archives     map[string]*archiveQueue
	lastWlogRecv time.Time
	transfers    map[*context.CancelFunc]struct{}
}

// archiveQueue is one archive info of a volume and its queue sendto/<name>/.
type archiveQueue struct {
	name      string
	info      ArchiveInfo
	diffs     *meta.DiffSet
	sendError bool      // SEND_ERROR: retries stopped until kick, new wlog or start
	lastSent  time.Time // last accepted transfer
	backoff   time.Duration
	notBefore time.Time // no send before this (backoff), unless kicked
}

// New returns a proxy for cfg without touching the disk; call Recover (or
// use Open) before anything else.
func New(cfg Config) (*Proxy, error) {
	if cfg.BaseDir == "" {
		return nil, errors.Wrap(server.ErrBadArgs, "proxy: no base directory")
	}
	if cfg.Archive == nil {
		return nil, errors.Wrap(server.ErrBadArgs, "proxy: no archive client")
	}
	if cfg.MaxWdiffSendSize == 0 {
		cfg.MaxWdiffSendSize = DefaultMaxWdiffSendSize
	}
	if cfg.MaxWdiffSendFiles <= 0 {
		cfg.MaxWdiffSendFiles = DefaultMaxWdiffSendFiles
	}
	if cfg.Delay <= 0 {
		cfg.Delay = DefaultDelay
	}
	if cfg.MaxDelay <= 0 {
		cfg.MaxDelay = DefaultMaxDelay
	}
	cfg.MaxDelay = max(cfg.MaxDelay, cfg.Delay)
	if cfg.RetryTimeout <= 0 {
		cfg.RetryTimeout = DefaultRetryTimeout
	}
	if cfg.StopTimeout <= 0 {
		cfg.StopTimeout = DefaultStopTimeout
	}
	if cfg.ReceiveCompression == nil {
		c := DefaultCompression
		cfg.ReceiveCompression = &c
	}
	if err := cfg.ReceiveCompression.Validate(); err != nil {
		return nil, errors.Wrapf(server.ErrBadArgs, "proxy: receive compression: %v", err)
	}
	if cfg.MaxForeground <= 0 {
		cfg.MaxForeground = DefaultMaxForeground
	}
	if cfg.MaxBackground <= 0 {
		cfg.MaxBackground = DefaultMaxBackground
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	p := &Proxy{cfg: cfg, log: cfg.Logger, fg: server.NewSlots(cfg.MaxForeground), volumes: map[string]*volume{}, exceptionRetry: exceptionRetry}
	p.vols = server.NewVolumes(States, cfg.Logger)
	if cfg.Tasks != nil {
		p.tasks = cfg.Tasks
	} else {
		p.ownTasks = true
		p.tasks = server.NewTaskQueue(p.RunTask, server.TaskOptions{
			Workers: cfg.MaxBackground, RetryMin: cfg.Delay, RetryMax: cfg.MaxDelay, Logger: cfg.Logger,
		})
	}
	return p, nil
}

// Open is New, Recover and, when the proxy runs its own task queue,
// starting it: a proxy ready to receive and send.
func Open(ctx context.Context, cfg Config) (*Proxy, error) {
	p, err := New(cfg)
	if err != nil {
		return nil, err
	}
	if err := p.Recover(ctx); err != nil {
		return nil, err
	}
	if p.ownTasks {
		tctx, cancel := context.WithCancel(context.Background())
		p.taskCancel = cancel
		p.tasks.Start(tctx)
	}
	return p, nil
}

// Close stops the proxy's own task queue, aborting running sends. With a
// shared queue (Config.Tasks) its owner stops it. Files stay as they are:
// everything on disk is consistent at any instant.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	vols := slices.Collect(maps.Values(p.volumes))
	p.mu.Unlock()
	for _, v := range vols {
		v.cancelTransfers()
	}
	if p.ownTasks {
		if p.taskCancel != nil {
			p.taskCancel()
		}
		p.tasks.Stop()
	}
	return nil
}

// Volumes returns the registry of volume states and actions.
func (p *Proxy) Volumes() *server.Volumes { return p.vols }

// Recover loads every volume directory of the base directory (system.md §7):
// removes what interrupted clears and deletions left, re-indexes the archive
// infos, received/ and each sendto/<archive>/ from the file names, loads
// each volume as Stopped, then starts it unless Config.StartStopped. A
// volume whose metadata cannot be read fails Recover, naming the file: the
// proxy does not run with part of its queues silently missing.
func (p *Proxy) Recover(ctx context.Context) error {
	st, err := os.Stat(p.cfg.BaseDir)
	if err != nil {
		return errors.Wrap(err, "proxy: base directory")
	}
	if !st.IsDir() {
		return errors.Errorf("proxy: base directory %s is not a directory", p.cfg.BaseDir)
	}
	names, err := volumeNames(p.cfg.BaseDir)
	if err != nil {
		return err
	}
	for _, name := range names {
		v, err := p.loadVolume(name)
		if err != nil {
			return errors.WithMessagef(err, "proxy: recover volume %s", name)
		}
		if v == nil {
			continue
		}
		p.mu.Lock()
		p.volumes[name] = v
		p.mu.Unlock()
		if err := p.vols.Set(name, StateStopped); err != nil {
			return err
		}
		p.log.InfoContext(ctx, "volume loaded", "vol", name, "archives", strings.Join(v.archiveNames(), ","),
			"received", v.received.Len(), "queued", v.queuedCount())
	}
	if p.cfg.StartStopped {
		return nil
	}
	for _, name := range names {
		if p.vols.State(name) != StateStopped {
			continue
		}
		if err := p.Start(ctx, name); err != nil {
			p.log.ErrorContext(ctx, "start at recovery failed", "vol", name, "err", err)
		}
	}
	return nil
}

// loadVolume reads one volume directory. It returns nil for a directory
// without any archive info, after removing it: that is what an interrupted
// archive-info add (from Clear), delete of the last archive or clear-vol
// leaves, and none of them wants the volume kept.
func (p *Proxy) loadVolume(name string) (*volume, error) {
	d := volDir(filepath.Join(p.cfg.BaseDir, name))
	archives, err := archiveNames(d)
	if err != nil {
		return nil, err
	}
	if len(archives) == 0 {
		p.log.Warn("removing a volume directory without archive info (interrupted add, delete or clear)", "vol", name)
		return nil, removeVolDir(d)
	}
	v := &volume{name: name, dir: d, archives: map[string]*archiveQueue{}, transfers: map[*context.CancelFunc]struct{}{}}
	if v.sizeLb, err = loadSize(d); err != nil {
		return nil, err
	}
	for _, sub := range []string{d.receivedDir(), d.sendtoRoot()} {
		if err := os.MkdirAll(sub, dirPerm); err != nil {
			return nil, errors.Wrap(err, "proxy: volume directory")
		}
	}
	if v.received, err = p.loadDiffDir(name, d.receivedDir()); err != nil {
		return nil, err
	}
	for _, a := range archives {
		info, err := loadArchiveInfo(d, a)
		if err != nil {
			return nil, err
		}
		if err := os.MkdirAll(d.sendtoDir(a), dirPerm); err != nil {
			return nil, errors.Wrap(err, "proxy: archive queue directory")
		}
		set, err := p.loadDiffDir(name, d.sendtoDir(a))
		if err != nil {
			return nil, err
		}
		v.archives[a] = &archiveQueue{name: a, info: info, diffs: set}
	}
	// A sendto/<archive>/ without its archive info is the rest of an
	// interrupted archive-info delete.
	ents, err := os.ReadDir(d.sendtoRoot())
	if err != nil {
		return nil, errors.Wrap(err, "proxy: list sendto")
	}
	for _, e := range ents {
		if _, ok := v.archives[e.Name()]; ok {
			continue
		}
		p.log.Warn("removing the queue of a deleted archive", "vol", name, "archive", e.Name())
		if err := os.RemoveAll(filepath.Join(d.sendtoRoot(), e.Name())); err != nil {
			return nil, errors.Wrap(err, "proxy: remove stale queue")
		}
	}
	return v, nil
}

// loadDiffDir indexes the wdiffs of dir. Files that do not parse are logged
// and left alone; they are never sent.
func (p *Proxy) loadDiffDir(vol, dir string) (*meta.DiffSet, error) {
	set, bad, err := meta.LoadDir(dir)
	if err != nil {
		return nil, err
	}
	for _, b := range bad {
		p.log.Warn("ignoring a file that is not a valid wdiff name", "vol", vol, "dir", dir, "file", b.Name, "err", b.Err)
	}
	return set, nil
}

// volume returns vol's entry, or nil when the volume is Clear.
func (p *Proxy) volume(vol string) *volume {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.volumes[vol]
}

// mustVolume returns vol's entry or a wrong-state error.
func (p *Proxy) mustVolume(vol string) (*volume, error) {
	if v := p.volume(vol); v != nil {
		return v, nil
	}
	return nil, errors.Wrapf(server.ErrWrongState, "volume %s is %s", vol, StateClear)
}

func (p *Proxy) isClosed() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.closed
}

// foreground takes a -fg slot.
func (p *Proxy) foreground() (func(), error) {
	if p.cfg.Foreground != nil {
		return p.cfg.Foreground()
	}
	return p.fg.Take()
}

// taskKey names the send task of (vol, archive); neither name can hold a
// space.
func taskKey(vol, archive string) string { return vol + " " + archive }

func parseTaskKey(key string) (vol, archive string, ok bool) {
	vol, archive, ok = strings.Cut(key, " ")
	return vol, archive, ok && vol != "" && archive != ""
}

// archiveNames returns the sorted archive names.
func (v *volume) archiveNames() []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return slices.Sorted(maps.Keys(v.archives))
}

func (v *volume) archive(name string) *archiveQueue {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.archives[name]
}

// queuedCount returns the number of diffs queued for all archives.
func (v *volume) queuedCount() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	n := 0
	for _, a := range v.archives {
		n += a.diffs.Len()
	}
	return n
}

// isEmpty reports whether received/ and every queue are empty.
func (v *volume) isEmpty() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.received.Len() > 0 {
		return false
	}
	for _, a := range v.archives {
		if a.diffs.Len() > 0 {
			return false
		}
	}
	return true
}

// track registers the cancel function of a running transfer so that a force
// stop aborts it; the returned function unregisters it.
func (v *volume) track(cancel context.CancelFunc) func() {
	v.mu.Lock()
	defer v.mu.Unlock()
	key := &cancel
	v.transfers[key] = struct{}{}
	return func() {
		v.mu.Lock()
		defer v.mu.Unlock()
		delete(v.transfers, key)
	}
}

// cancelTransfers aborts every running transfer of the volume.
func (v *volume) cancelTransfers() {
	v.mu.Lock()
	defer v.mu.Unlock()
	for c := range v.transfers {
		(*c)()
	}
}
