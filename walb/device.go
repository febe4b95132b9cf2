package walb

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/checksum"
	"github.com/walb-go/walb/wlog"
)

// Options configures a Device. The zero value gives the defaults, which
// follow walb-tools' create-wdev where it has one.
type Options struct {
	// PBS is the physical block size to read the super sector with. 0
	// takes it from the block devices, or from the super sector for files.
	PBS uint32
	// MaxLogpackKB caps the size of one logpack, header included
	// (default 1024). A single IO larger than the cap gets a pack of its own.
	MaxLogpackKB uint32
	// MaxIOSize is the largest IO put in one log record, in bytes (default
	// 1 MiB); larger writes are split. It is rounded down to a whole PB.
	MaxIOSize int
	// MaxPendingMB bounds the memory held by writes that are logged but not
	// yet on the data device (default 64). Writers wait above it until the
	// pending data falls below MinPendingMB (default half of it), or
	// nothing is pending.
	MaxPendingMB, MinPendingMB uint32
	// LogFlushInterval and LogFlushIntervalMB bound how long and how much
	// log may stay unflushed when nobody asks for a flush (defaults 100 ms
	// and 4 MiB). Data reaches the data device only after its log is
	// flushed, so they also bound how far the data device lags.
	LogFlushInterval   time.Duration
	LogFlushIntervalMB uint32
	// CheckpointInterval is the period of super sector syncs (default 10 s;
	// negative disables periodic checkpoints).
	CheckpointInterval time.Duration
	// GroupCommitDelay, when positive, makes the log writer wait that long
	// for more writes when fewer than GroupCommitDepth are queued. Without
	// it, writes queued while a pack is being written form the next pack.
	GroupCommitDelay time.Duration
	GroupCommitDepth int
	// Logger receives the device's log messages (default slog.Default()).
	Logger *slog.Logger
}

func (o Options) withDefaults() (Options, error) {
	if o.MaxLogpackKB == 0 {
		o.MaxLogpackKB = 1024
	}
	if o.MaxIOSize == 0 {
		o.MaxIOSize = 1 << 20
	}
	if o.MaxPendingMB == 0 {
		o.MaxPendingMB = 64
	}
	if o.MinPendingMB == 0 {
		o.MinPendingMB = o.MaxPendingMB / 2
	}
	if o.LogFlushInterval == 0 {
		o.LogFlushInterval = 100 * time.Millisecond
	}
	if o.LogFlushIntervalMB == 0 {
		o.LogFlushIntervalMB = 4
	}
	if o.CheckpointInterval == 0 {
		o.CheckpointInterval = 10 * time.Second
	}
	if o.CheckpointInterval < 0 {
		o.CheckpointInterval = 0
	}
	if o.GroupCommitDepth == 0 {
		o.GroupCommitDepth = 32
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	switch {
	case o.MaxIOSize < LBS || o.MaxIOSize > wlog.MaxNormalIOSize*LBS:
		return o, errors.Wrapf(ErrInvalid, "max IO size %d bytes", o.MaxIOSize)
	case o.MinPendingMB >= o.MaxPendingMB:
		return o, errors.Wrapf(ErrInvalid, "min pending %d MiB must be below max pending %d MiB", o.MinPendingMB, o.MaxPendingMB)
	case o.CheckpointInterval > maxCheckpointInterval:
		return o, errors.Wrapf(ErrInvalid, "checkpoint interval %v", o.CheckpointInterval)
	}
	return o, nil
}

const (
	maxCheckpointInterval = 24 * time.Hour
	maxFreezeTimeout      = 24 * time.Hour
	maxDiscardLB          = 1 << 31 // per discard record (the field is 32 bits)
)

// Lsids are the device's log positions (formats.md §5.2), in PBs:
// Oldest <= PrevWritten <= Written <= Permanent <= Flush <= Completed <= Latest.
type Lsids struct {
	Latest      uint64 // where the next logpack will be created
	Completed   uint64 // every pack below is written to the log device
	Flush       uint64 // a log flush in progress covers every pack below
	Permanent   uint64 // every pack below is durable in the log: the extraction limit
	Written     uint64 // every pack below is also written to the data device
	PrevWritten uint64 // the written lsid of the super sector on disk
	Oldest      uint64 // packs below may be overwritten
}

// String renders l like the driver's sysfs attribute walb/lsids.
func (l Lsids) String() string {
	return fmt.Sprintf("latest %d\ncompleted %d\nflush %d\npermanent %d\nwritten %d\nprev_written %d\noldest %d\n",
		l.Latest, l.Completed, l.Flush, l.Permanent, l.Written, l.PrevWritten, l.Oldest)
}

// writeReq is one log record's worth of a write, trim or zeroing.
type writeReq struct {
	discard bool
	fua     bool
	off     uint64 // LB
	nLB     uint64
	pio     *pendingIO
	logData []byte // the record's PBs as written to the log
	csum    uint32
	salt    uint32 // salt csum was computed with
	cost    int64  // bytes counted in pendingBytes
	end     uint64 // lsid after the record's pack, once logged
	done    chan error
}

// packWork is a logpack on its way through the pipeline.
type packWork struct {
	hdr  *wlog.PackHeader
	hbuf []byte
	reqs []*writeReq // in record order, padding records left out
}

// failure is the sticky error of a failed device.
type failure struct{ cause error }

func (f *failure) Error() string        { return ErrFailed.Error() + ": " + f.cause.Error() }
func (f *failure) Is(target error) bool { return target == ErrFailed }
func (f *failure) Unwrap() error        { return f.cause }

// Device is a WalB device served in userspace: a data device whose every
// write is first logged on a log device in the WalB ring-buffer format.
// Its methods are safe for concurrent use. See the package documentation
// for the write path and its durability rules.
type Device struct {
	opts       Options
	log        *slog.Logger
	ldev, ddev Storage
	pbs        uint32
	ddevLB     uint64

	// Derived from the ring size; replaced only by ResetWAL, under mu.
	maxPackPB uint64
	maxIOLB   atomic.Uint64 // read by writers without mu
	groupPB   uint64
	flushPB   uint64

	maxPending, minPending int64

	sizeLB atomic.Uint64
	ov     *overlay

	adminMu sync.Mutex // serializes ResetWAL, Resize, SetOldestLsid, Close
	cpMu    sync.Mutex // serializes super sector writes
	closeMu sync.RWMutex
	closed  bool // under closeMu

	mu          sync.Mutex
	cond        *sync.Cond
	super       Super
	ring        ring
	generation  uint64 // bumped by ResetWAL
	lsids       Lsids
	overflow    bool
	err         error
	closing     bool
	frozen      bool
	meltGen     uint64
	meltTimer   *time.Timer
	holds       int // internal freezes (ResetWAL, Close)
	queue       []*writeReq
	inflight    int
	applyQ      []*packWork
	fuaWait     []*writeReq
	pending     int64
	throttled   bool
	flushUrgent bool
	cpInterval  time.Duration

	writeKick, flushKick, applyKick, cpKick chan struct{}
	quit                                    chan struct{}
	wg                                      sync.WaitGroup
}

// Open opens the walb device made of the log device at ldevPath and the
// data device at ddevPath (regular files or block devices), runs crash
// recovery and starts serving IO.
func Open(ctx context.Context, ldevPath, ddevPath string, opts Options) (*Device, error) {
	ldev, err := OpenFile(ldevPath, false)
	if err != nil {
		return nil, err
	}
	ddev, err := OpenFile(ddevPath, false)
	if err != nil {
		ldev.Close()
		return nil, err
	}
	d, err := OpenStorage(ctx, ldev, ddev, opts)
	if err != nil {
		ldev.Close()
		ddev.Close()
		return nil, err
	}
	return d, nil
}

// OpenStorage is Open over storages. On success the device owns them and
// closes them on Close; on failure the caller still owns them.
//
// Recovery (formats.md §5.1, §5.2): the logpacks from the super sector's
// written lsid on are re-applied to the data device up to the first invalid
// one; a pack damaged after its first record is cut there and its header
// rewritten. Then every lsid but oldest is set to the end of the log and
// the super sector is synced.
func OpenStorage(ctx context.Context, ldev, ddev Storage, opts Options) (*Device, error) {
	opts, err := opts.withDefaults()
	if err != nil {
		return nil, err
	}
	pbs, err := devicePBS(ldev, ddev, opts.PBS)
	if err != nil {
		return nil, err
	}
	s, err := ReadSuper(ldev, pbs)
	if err != nil {
		return nil, err
	}
	lsize, err := ldev.Size()
	if err != nil {
		return nil, err
	}
	if lsize < s.MinLogDeviceSize() {
		return nil, errors.Wrapf(ErrCorrupt, "log device of %d bytes is smaller than its layout (%d bytes)", lsize, s.MinLogDeviceSize())
	}
	dsize, err := ddev.Size()
	if err != nil {
		return nil, err
	}
	if uint64(dsize)/LBS < s.DeviceSize {
		return nil, errors.Wrapf(ErrInvalid, "data device of %d LB is smaller than the device size %d LB", dsize/LBS, s.DeviceSize)
	}
	if s.RingBufferSize < 8 {
		return nil, errors.Wrapf(ErrInvalid, "ring buffer of %d PBs is too small", s.RingBufferSize)
	}
	d := &Device{
		opts:       opts,
		log:        opts.Logger.With("vol", s.Name),
		ldev:       ldev,
		ddev:       ddev,
		pbs:        s.PBS,
		ddevLB:     uint64(dsize) / LBS,
		maxPending: int64(opts.MaxPendingMB) << 20,
		minPending: int64(opts.MinPendingMB) << 20,
		ov:         newOverlay(),
		super:      *s,
		ring:       newRing(ldev, s),
		cpInterval: opts.CheckpointInterval,
		writeKick:  make(chan struct{}, 1),
		flushKick:  make(chan struct{}, 1),
		applyKick:  make(chan struct{}, 1),
		cpKick:     make(chan struct{}, 1),
		quit:       make(chan struct{}),
	}
	d.cond = sync.NewCond(&d.mu)
	d.sizeLB.Store(s.DeviceSize)
	d.configureRing()
	if err := d.recover(ctx); err != nil {
		return nil, err
	}
	d.wg.Add(4)
	go d.writeLoop()
	go d.flushLoop()
	go d.applyLoop()
	go d.checkpointLoop()
	return d, nil
}

// configureRing derives the size limits from the ring size. Every pack
// fits in half the ring, so that the log writer can always make room by
// waiting for older packs to be applied.
func (d *Device) configureRing() {
	pbs := uint64(d.pbs)
	lbPerPB := pbs / LBS
	ringPB := d.super.RingBufferSize
	ioPB := min(uint64(d.opts.MaxIOSize)/pbs, wlog.MaxNormalIOSize/lbPerPB, max(ringPB/4, 1))
	d.maxIOLB.Store(max(ioPB, 1) * lbPerPB)
	d.maxPackPB = min(uint64(d.opts.MaxLogpackKB)<<10/pbs, wlog.MaxTotalIOSize+1, ringPB/2)
	d.maxPackPB = max(d.maxPackPB, ioPB+1)
	d.groupPB = max(min(ringPB/2, (64<<20)/pbs), d.maxPackPB)
	d.flushPB = max(uint64(d.opts.LogFlushIntervalMB)<<20/pbs, 1)
}

// recover redoes the log from the written lsid (formats.md §5.1).
func (d *Device) recover(ctx context.Context) error {
	s := d.super
	rg := d.ring
	hbuf := make([]byte, d.pbs)
	var data []byte
	lsid := s.WrittenLsid
	rewrote := false
	nPacks := 0
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		h, truncated, why, err := rg.readPack(lsid, s.Salt, hbuf, &data)
		if err != nil {
			return err
		}
		if h == nil {
			d.log.Debug("walb: redo ends", "lsid", lsid, "reason", why)
			break
		}
		if h.NextLsid()-s.WrittenLsid > s.RingBufferSize {
			d.log.Warn("walb: redo stops: the log would exceed the ring", "lsid", lsid)
			break
		}
		if truncated {
			d.log.Warn("walb: redo truncates a damaged logpack", "lsid", lsid, "records", len(h.Records), "reason", why)
			h.MarshalTo(hbuf, s.Salt)
			if _, err := d.ldev.WriteAt(hbuf, rg.offset(lsid)); err != nil {
				return errors.Wrapf(err, "walb: rewrite truncated logpack at lsid %d", lsid)
			}
			rewrote = true
		}
		if err := d.redoPack(h, data); err != nil {
			return err
		}
		nPacks++
		lsid = h.NextLsid()
		if truncated {
			break
		}
	}
	if err := d.ddev.Sync(); err != nil {
		return err
	}
	if rewrote {
		if err := d.ldev.Sync(); err != nil {
			return err
		}
	}
	d.lsids = Lsids{Latest: lsid, Completed: lsid, Flush: lsid, Permanent: lsid, Written: lsid, PrevWritten: s.WrittenLsid, Oldest: s.OldestLsid}
	if nPacks > 0 {
		d.log.Info("walb: redo done", "lsid", s.WrittenLsid, "end", lsid, "packs", nPacks)
	}
	// The driver rewrites the super sector at start and reads it back, to
	// know early that the log device is writable.
	if err := d.checkpoint(true); err != nil {
		return err
	}
	back, err := ReadSuper(d.ldev, d.pbs)
	if err != nil {
		return errors.WithMessage(err, "walb: read back the super sector")
	}
	if back.WrittenLsid != lsid || back.UUID != s.UUID {
		return errors.Wrap(ErrCorrupt, "walb: the super sector did not read back as written")
	}
	if lsid-s.OldestLsid > s.RingBufferSize || (s.OldestLsid < lsid && !d.validPackAt(s.OldestLsid)) {
		d.overflow = true
		d.log.Warn("walb: log overflow: the log from the oldest lsid is lost; reset-wal is required", "lsid", s.OldestLsid)
	}
	return nil
}

// redoPack applies a logpack read from the log to the data device.
func (d *Device) redoPack(h *wlog.PackHeader, data []byte) error {
	for i := range h.Records {
		r := &h.Records[i]
		if r.IsPadding() {
			continue
		}
		if r.Offset+uint64(r.IOSize) > d.ddevLB {
			return errors.Wrapf(ErrCorrupt, "logpack lsid %d record %d: IO [%d, +%d) LB beyond the data device (%d LB)",
				h.LogpackLsid, i, r.Offset, r.IOSize, d.ddevLB)
		}
		off, n := int64(r.Offset)*LBS, int64(r.IOSize)*LBS
		if r.IsDiscard() {
			if err := zeroRange(d.ddev, off, n); err != nil {
				return err
			}
			continue
		}
		b := (int64(r.LsidLocal) - 1) * int64(d.pbs)
		if _, err := d.ddev.WriteAt(data[b:b+n], off); err != nil {
			return errors.Wrapf(err, "walb: redo lsid %d", r.Lsid)
		}
	}
	return nil
}

// validPackAt reports whether the PB at lsid holds a valid logpack header
// for lsid.
func (d *Device) validPackAt(lsid uint64) bool {
	d.mu.Lock()
	rg, salt := d.ring, d.super.Salt
	d.mu.Unlock()
	h, _, err := rg.packHeaderAt(lsid, salt, make([]byte, d.pbs))
	return err == nil && h != nil
}

func kick(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// failLocked puts the device in the failed state: queued writes fail, and
// so will every later write.
func (d *Device) failLocked(err error) {
	if d.err == nil {
		d.err = &failure{cause: err}
		d.log.Error("walb: device failed; writes are refused until it is reopened", "err", err.Error())
	}
	for _, r := range d.queue {
		d.pending -= r.cost
		r.done <- d.err
	}
	d.queue = nil
	for _, r := range d.fuaWait {
		r.done <- d.err
	}
	d.fuaWait = nil
	d.cond.Broadcast()
}

func (d *Device) fail(err error) {
	d.mu.Lock()
	d.failLocked(err)
	d.mu.Unlock()
}

// waitLocked waits on the condition variable until cond() is false or ctx
// is done; d.mu is held.
func (d *Device) waitLocked(ctx context.Context, cond func() bool) error {
	if !cond() {
		return nil
	}
	stop := context.AfterFunc(ctx, func() {
		d.mu.Lock()
		d.cond.Broadcast()
		d.mu.Unlock()
	})
	defer stop()
	for cond() {
		if err := ctx.Err(); err != nil {
			return err
		}
		d.cond.Wait()
	}
	return nil
}

// Size returns the device size in bytes.
func (d *Device) Size() int64 { return int64(d.sizeLB.Load()) * LBS }

// PBS returns the physical block size.
func (d *Device) PBS() uint32 { return d.pbs }

// CanMultiConn reports that one flush covers the writes of every
// connection: the device has a single log.
func (d *Device) CanMultiConn() bool { return true }

// Super returns a copy of the device's super sector as it would be written
// now.
func (d *Device) Super() Super {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := d.super
	s.OldestLsid, s.WrittenLsid = d.lsids.Oldest, d.lsids.PrevWritten
	return s
}

// UUID returns the log uuid.
func (d *Device) UUID() wlog.UUID {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.super.UUID
}

// Salt returns the log checksum salt.
func (d *Device) Salt() uint32 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.super.Salt
}

// Name returns the device name stored in the super sector.
func (d *Device) Name() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.super.Name
}

// Lsids returns the current lsids.
func (d *Device) Lsids() Lsids {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.lsids
}

// LogUsage returns latest - oldest, in PBs.
func (d *Device) LogUsage() uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.lsids.Latest - d.lsids.Oldest
}

// LogCapacity returns the ring buffer size, in PBs.
func (d *Device) LogCapacity() uint64 {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.super.RingBufferSize
}

// IsLogOverflow reports whether the ring buffer overflowed: the log from the
// oldest lsid was overwritten before it was extracted. It stays set until
// ResetWAL. Writes keep working meanwhile; only the log is lost.
func (d *Device) IsLogOverflow() bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.overflow
}

// Err returns the error that made the device fail, or nil.
func (d *Device) Err() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.err
}

func (d *Device) checkRange(off, n int64) error {
	switch {
	case off%LBS != 0 || n%LBS != 0:
		return errors.Wrapf(ErrInvalid, "IO [%d, +%d) is not aligned to %d bytes", off, n, LBS)
	case off < 0 || n < 0 || off > d.Size() || n > d.Size()-off:
		return errors.Wrapf(ErrInvalid, "IO [%d, +%d) is out of range (device size %d bytes)", off, n, d.Size())
	}
	return nil
}

// ReadAt reads len(p) bytes at off. Both must be multiples of 512. It sees
// every write acknowledged before it was called.
func (d *Device) ReadAt(p []byte, off int64) (int, error) {
	if err := d.checkRange(off, int64(len(p))); err != nil {
		return 0, err
	}
	d.closeMu.RLock()
	defer d.closeMu.RUnlock()
	if d.closed {
		return 0, ErrClosed
	}
	if len(p) == 0 {
		return 0, nil
	}
	// Collect first, read second: an IO that leaves the overlay in between
	// was written to the data device before it left.
	var stack [16]*pendingIO
	ios := d.ov.collect(uint64(off)/LBS, uint64(len(p))/LBS, stack[:0])
	n, err := d.ddev.ReadAt(p, off)
	if err == io.EOF && n == len(p) {
		err = nil
	}
	if err != nil {
		for _, io := range ios {
			io.release()
		}
		return n, errors.Wrapf(err, "walb: read data device at %d", off)
	}
	applyOverlay(p, uint64(off)/LBS, ios)
	return len(p), nil
}

// WriteAt writes p at off (multiples of 512). It returns once the write is
// in the log (OS cache is enough) and visible to reads; Flush makes it
// durable.
func (d *Device) WriteAt(p []byte, off int64) (int, error) {
	if err := d.WriteContext(context.Background(), p, off, false); err != nil {
		return 0, err
	}
	return len(p), nil
}

// WriteAtFUA writes p at off and returns once the write is durable.
func (d *Device) WriteAtFUA(p []byte, off int64) (int, error) {
	if err := d.WriteContext(context.Background(), p, off, true); err != nil {
		return 0, err
	}
	return len(p), nil
}

// WriteContext writes p at off, durably before it returns if fua is set.
// Writes larger than the maximum IO size are split into several records.
// ctx bounds the wait for room in the pending buffer and for the
// acknowledgement; a write whose wait was cancelled may still be logged.
func (d *Device) WriteContext(ctx context.Context, p []byte, off int64, fua bool) error {
	if err := d.checkRange(off, int64(len(p))); err != nil {
		return err
	}
	maxLB := d.maxIOLB.Load()
	reqs := make([]*writeReq, 0, (uint64(len(p))/LBS+maxLB-1)/maxLB)
	start := uint64(off) / LBS
	for done := uint64(0); done < uint64(len(p))/LBS; {
		n := min(uint64(len(p))/LBS-done, maxLB)
		r := &writeReq{fua: fua, off: start + done, nLB: n}
		r.cost = int64(wlog.PBsFor(d.pbs, n) * uint64(d.pbs))
		src := p[done*LBS : (done+n)*LBS]
		if err := d.enqueue(ctx, r, func(r *writeReq) { d.fillData(r, src) }); err != nil {
			return d.waitAll(ctx, reqs, err)
		}
		reqs = append(reqs, r)
		done += n
	}
	return d.waitAll(ctx, reqs, nil)
}

// fillData copies src into a pooled buffer padded to a whole PB and
// checksums it.
func (d *Device) fillData(r *writeReq, src []byte) {
	buf := getBuf(int(r.cost))
	b := *buf
	n := copy(b, src)
	clear(b[n:])
	r.pio = &pendingIO{off: r.off, nLB: r.nLB, data: b[:n], buf: buf}
	r.logData = b
	r.csum = checksum.Sum(b[:n], r.salt)
}

// Trim discards [off, off+length): the range is logged as discard records
// and reads as zeros afterwards (see the package documentation).
func (d *Device) Trim(off, length int64) error {
	return d.TrimContext(context.Background(), off, length)
}

// TrimContext is Trim with a context.
func (d *Device) TrimContext(ctx context.Context, off, length int64) error {
	if err := d.checkRange(off, length); err != nil {
		return err
	}
	var reqs []*writeReq
	start := uint64(off) / LBS
	for done := uint64(0); done < uint64(length)/LBS; {
		n := min(uint64(length)/LBS-done, maxDiscardLB)
		r := &writeReq{discard: true, off: start + done, nLB: n}
		if err := d.enqueue(ctx, r, func(r *writeReq) {
			r.pio = &pendingIO{off: r.off, nLB: r.nLB}
		}); err != nil {
			return d.waitAll(ctx, reqs, err)
		}
		reqs = append(reqs, r)
		done += n
	}
	return d.waitAll(ctx, reqs, nil)
}

// WriteZeroes zeroes [off, off+length). With mayTrim the range is logged
// as discards (which read as zeros); without it, as normal writes of zeros,
// so that the blocks stay allocated on the data device.
func (d *Device) WriteZeroes(off, length int64, mayTrim bool) error {
	return d.WriteZeroesContext(context.Background(), off, length, mayTrim)
}

// WriteZeroesContext is WriteZeroes with a context.
func (d *Device) WriteZeroesContext(ctx context.Context, off, length int64, mayTrim bool) error {
	if mayTrim {
		return d.TrimContext(ctx, off, length)
	}
	if err := d.checkRange(off, length); err != nil {
		return err
	}
	var reqs []*writeReq
	start := uint64(off) / LBS
	maxLB := min(d.maxIOLB.Load(), uint64(len(zeroBlock))/LBS)
	for done := uint64(0); done < uint64(length)/LBS; {
		n := min(uint64(length)/LBS-done, maxLB)
		r := &writeReq{off: start + done, nLB: n}
		r.cost = int64(wlog.PBsFor(d.pbs, n) * uint64(d.pbs))
		if err := d.enqueue(ctx, r, func(r *writeReq) {
			r.logData = zeroBlock[:r.cost]
			r.pio = &pendingIO{off: r.off, nLB: r.nLB, data: zeroBlock[:r.nLB*LBS]}
			r.csum = checksum.Sum(r.pio.data, r.salt)
		}); err != nil {
			return d.waitAll(ctx, reqs, err)
		}
		reqs = append(reqs, r)
		done += n
	}
	return d.waitAll(ctx, reqs, nil)
}

// enqueue waits for room in the pending buffer, reserves it, prepares the
// request outside the lock and queues it for the log writer.
func (d *Device) enqueue(ctx context.Context, r *writeReq, prepare func(*writeReq)) error {
	d.mu.Lock()
	err := d.waitLocked(ctx, func() bool {
		if d.err != nil || d.closing || !d.throttled {
			return false
		}
		d.flushUrgent = true
		kick(d.flushKick)
		kick(d.applyKick)
		return true
	})
	switch {
	case d.closing:
		err = ErrClosed
	case d.err != nil:
		err = d.err
	}
	if err != nil {
		d.mu.Unlock()
		return err
	}
	d.pending += r.cost
	if d.pending >= d.maxPending {
		d.throttled = true
	}
	r.salt = d.super.Salt
	d.mu.Unlock()

	r.done = make(chan error, 1)
	prepare(r)

	d.mu.Lock()
	if d.closing || d.err != nil {
		err := d.err
		if err == nil {
			err = ErrClosed
		}
		d.releasePendingLocked(r.cost)
		d.mu.Unlock()
		if r.pio.buf != nil {
			putBuf(r.pio.buf)
		}
		return err
	}
	d.queue = append(d.queue, r)
	d.mu.Unlock()
	kick(d.writeKick)
	return nil
}

func (d *Device) releasePendingLocked(n int64) {
	d.pending -= n
	if d.throttled && (d.pending < d.minPending || d.pending == 0) {
		d.throttled = false
		d.cond.Broadcast()
	}
}

// waitAll waits for every request of one call and returns the first error.
func (d *Device) waitAll(ctx context.Context, reqs []*writeReq, err error) error {
	for _, r := range reqs {
		select {
		case e := <-r.done:
			if err == nil {
				err = e
			}
		case <-ctx.Done():
			if err == nil {
				err = ctx.Err()
			}
			return err
		}
	}
	return err
}

// Flush makes every write acknowledged before it durable: it syncs the log
// device up to the completed lsid. The data device is synced later, by
// checkpoints; recovery replays the log up to there.
func (d *Device) Flush() error { return d.FlushContext(context.Background()) }

// FlushContext is Flush with a context.
func (d *Device) FlushContext(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.err != nil {
		return d.err
	}
	target, gen := d.lsids.Completed, d.generation
	err := d.waitLocked(ctx, func() bool {
		if d.err != nil || d.generation != gen || d.lsids.Permanent >= target {
			return false
		}
		d.flushUrgent = true
		kick(d.flushKick)
		return true
	})
	if d.err != nil {
		return d.err
	}
	return err
}

// TakeCheckpoint syncs the super sector now (a no-op if the written lsid
// has not moved since the last one).
func (d *Device) TakeCheckpoint() error { return d.checkpoint(false) }

// CheckpointInterval returns the period of checkpoints (0: disabled).
func (d *Device) CheckpointInterval() time.Duration {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.cpInterval
}

// SetCheckpointInterval sets the period of checkpoints; 0 disables them.
// The driver's limit, 24 hours, applies.
func (d *Device) SetCheckpointInterval(iv time.Duration) error {
	if iv < 0 || iv > maxCheckpointInterval {
		return errors.Wrapf(ErrInvalid, "checkpoint interval %v", iv)
	}
	d.mu.Lock()
	d.cpInterval = iv
	d.mu.Unlock()
	kick(d.cpKick)
	return nil
}
