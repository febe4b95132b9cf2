package storage

import (
	"bytes"
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/pkg/errors"
	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/hashsync"
	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/walb"
	"github.com/walb-go/walb/wdiff"
	"github.com/walb-go/walb/wire"
	"github.com/walb-go/walb/wlog"
)

// testLogger discards logs unless WALB_TEST_LOG is set.
func testLogger() *slog.Logger {
	if os.Getenv("WALB_TEST_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// devFiles are the files of a userspace test device.
type devFiles struct {
	ldev, ddev string
}

// makeDevice formats a userspace walb device on temp files: a data device
// of ddevBytes (filled with random data when random is set) and a log
// device of ldevBytes.
func makeDevice(t testing.TB, dir string, ddevBytes, ldevBytes int64, random bool) devFiles {
	t.Helper()
	f := devFiles{ldev: filepath.Join(dir, "ldev"), ddev: filepath.Join(dir, "ddev")}
	data := make([]byte, ddevBytes)
	if random {
		_, err := rand.Read(data)
		require.NoError(t, err)
	}
	require.NoError(t, os.WriteFile(f.ddev, data, 0o644))
	require.NoError(t, os.WriteFile(f.ldev, nil, 0o644))
	require.NoError(t, os.Truncate(f.ldev, ldevBytes))
	_, err := walb.FormatLogDevice(f.ldev, f.ddev, walb.FormatOptions{PBS: 512, Name: "test"})
	require.NoError(t, err)
	return f
}

func openDevice(t testing.TB, f devFiles) *walb.Device {
	t.Helper()
	d, err := walb.Open(context.Background(), f.ldev, f.ddev, walb.Options{
		Logger:             testLogger(),
		CheckpointInterval: 50 * time.Millisecond,
		LogFlushInterval:   5 * time.Millisecond,
		MaxLogpackKB:       64,
	})
	require.NoError(t, err)
	return d
}

// transferRec is one wlog transfer a fake proxy committed.
type transferRec struct {
	Seq        int
	Proxy      string
	Vol        string
	Header     WlogHeader
	BeginLsid  uint64
	EndLsid    uint64
	Diff       meta.Diff
	Wlog       []byte // a wlog file of the packs (nil when empty)
	NumPacks   int
	AckDropped bool // committed, but the ACK was "lost"
}

// fakeProxies records wlog transfers for several proxy addresses. Each
// address can be down (connect fails) or refusing.
type fakeProxies struct {
	mu        sync.Mutex
	down      map[string]bool
	refuse    map[string]bool
	dropAcks  int // commit the next n transfers but fail their ACK
	failSends int // fail the next n transfers in the middle of the stream
	recs      []transferRec
	hostCalls map[string]int
}

func newFakeProxies() *fakeProxies {
	return &fakeProxies{down: map[string]bool{}, refuse: map[string]bool{}, hostCalls: map[string]int{}}
}

func (f *fakeProxies) setDown(addr string, down bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.down[addr] = down
}

func (f *fakeProxies) transfers() []transferRec {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]transferRec(nil), f.recs...)
}

func (f *fakeProxies) HostType(_ context.Context, addr string) (string, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hostCalls[addr]++
	if f.down[addr] {
		return "", errors.Errorf("fake: %s: connection refused", addr)
	}
	return "proxy", nil
}

func (f *fakeProxies) OpenWlog(_ context.Context, addr string, h WlogHeader) (WlogSession, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down[addr] {
		return nil, errors.Errorf("fake: %s: connection refused", addr)
	}
	if f.refuse[addr] {
		return nil, errors.Errorf("fake: %s: stopped", addr)
	}
	fail := false
	if f.failSends > 0 {
		f.failSends--
		fail = true
	}
	return &fakeWlogSession{f: f, addr: addr, h: h, lsid: h.BeginLsid, failMid: fail}, nil
}

type fakeWlogSession struct {
	f       *fakeProxies
	addr    string
	h       WlogHeader
	buf     bytes.Buffer
	w       *wlog.Writer
	lsid    uint64
	n       int
	failMid bool
	done    bool
}

func (s *fakeWlogSession) SendPack(_ context.Context, h *wlog.PackHeader, data []byte) error {
	if s.done {
		return errors.New("fake: send after end")
	}
	if s.failMid && s.n > 0 {
		return errors.New("fake: connection reset")
	}
	if h.LogpackLsid != s.lsid {
		return errors.Errorf("fake: pack lsid %d, want %d", h.LogpackLsid, s.lsid)
	}
	if h.NextLsid() > s.h.BeginLsid+s.h.MaxLogSizePB {
		return errors.Errorf("fake: pack [%d,%d) beyond the announced max %d", h.LogpackLsid, h.NextLsid(), s.h.MaxLogSizePB)
	}
	if err := wlog.VerifyPackData(h, data, s.h.Salt); err != nil {
		return err
	}
	if s.w == nil {
		w, err := wlog.NewWriter(&s.buf, wlog.FileHeader{Salt: s.h.Salt, PBS: s.h.PBS, UUID: wlog.UUID(s.h.UUID),
			BeginLsid: s.h.BeginLsid, EndLsid: s.h.BeginLsid + s.h.MaxLogSizePB})
		if err != nil {
			return err
		}
		s.w = w
	}
	if err := s.w.WritePack(h, data); err != nil {
		return err
	}
	s.lsid = h.NextLsid()
	s.n++
	return nil
}

func (s *fakeWlogSession) Commit(_ context.Context, d meta.Diff) error {
	if s.done {
		return errors.New("fake: commit after end")
	}
	s.done = true
	if err := d.Validate(); err != nil {
		return err
	}
	var wl []byte
	if s.w != nil {
		if err := s.w.Close(); err != nil {
			return err
		}
		wl = s.buf.Bytes()
	}
	f := s.f
	f.mu.Lock()
	defer f.mu.Unlock()
	rec := transferRec{Seq: len(f.recs), Proxy: s.addr, Vol: s.h.Vol, Header: s.h, BeginLsid: s.h.BeginLsid,
		EndLsid: s.lsid, Diff: d, Wlog: wl, NumPacks: s.n}
	if f.dropAcks > 0 {
		f.dropAcks--
		rec.AckDropped = true
	}
	f.recs = append(f.recs, rec)
	if rec.AckDropped {
		return errors.New("fake: connection lost before the ACK")
	}
	return nil
}

func (s *fakeWlogSession) Abort(error) { s.done = true }

// fakeArchive keeps one volume's image in memory. A full backup replaces
// it; a hash backup runs the real comparison (package hashsync, both halves
// over pipes) against it and applies the differing chunks; catchUp applies
// the proxies' transfers, as a real archive applies the diffs it receives.
type fakeArchive struct {
	mu      sync.Mutex
	refuse  bool
	failAt  int // fail SendBulk number failAt (1-based; 0 = never)
	image   []byte
	snap    meta.Snap
	uuid    meta.UUID
	started time.Time
	backups int

	// base and baseSnap are the image and snapshot the last backup
	// committed; image and snap move on from them in catchUp.
	base     []byte
	baseSnap meta.Snap

	hashCutAfter int64     // cut the hash backup's data stream after this many bytes (0: never)
	badFrom      bool      // name an invalid latest snapshot
	hashes       int       // committed hash backups
	hashFrom     meta.Snap // the From of the last committed hash backup
	hashStats    hashsync.Stats
}

func (a *fakeArchive) OpenFullSync(_ context.Context, _ string, req SyncRequest) (FullSyncSession, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.refuse {
		return nil, errors.New("fake archive: volume is not SyncReady")
	}
	return &fakeFullSync{a: a, req: req, img: make([]byte, 0, req.SizeLB*walb.LBS)}, nil
}

// commit records a backup's result.
func (a *fakeArchive) commit(img []byte, snap meta.Snap, uuid meta.UUID, ts time.Time) {
	a.image, a.snap, a.uuid, a.started = img, snap, uuid, ts
	a.base, a.baseSnap = append([]byte(nil), img...), snap
	a.backups++
}

// latest returns a copy of the archive's image and its snapshot.
func (a *fakeArchive) latest() ([]byte, meta.Snap) {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]byte(nil), a.image...), a.snap
}

// catchUp applies, on top of the last backup's image, the transfers of the
// log that backup started (its uuid), which must form one chain from
// (lsid 0, gidB). It returns the gid -> end lsid of every boundary.
func (a *fakeArchive) catchUp(t testing.TB, trs []transferRec) map[uint64]uint64 {
	t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	var mine []transferRec
	for _, tr := range trs {
		if tr.Header.UUID == a.uuid {
			mine = append(mine, tr)
		}
	}
	img, gids := checkChain(t, a.base, 0, a.baseSnap.GidB, mine, func(int) bool { return false })
	a.image = img
	g := a.baseSnap.GidB
	if len(mine) > 0 {
		g = mine[len(mine)-1].Diff.SnapE.GidB
	}
	a.snap = meta.Snap{GidB: g, GidE: max(g, a.baseSnap.GidE)}
	return gids
}

func (a *fakeArchive) OpenHashSync(_ context.Context, _ string, req SyncRequest) (HashSyncSession, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.refuse {
		return nil, errors.New("fake archive: volume is not Archived")
	}
	if uint64(len(a.image)) != req.SizeLB*walb.LBS {
		return nil, errors.Errorf("fake archive: image of %d bytes, device of %d", len(a.image), req.SizeLB*walb.LBS)
	}
	from := a.snap
	if a.badFrom {
		from = meta.Snap{GidB: 5, GidE: 3}
	}
	return &fakeHashSync{a: a, req: req, from: from, old: append([]byte(nil), a.image...)}, nil
}

type fakeHashSync struct {
	a     *fakeArchive
	req   SyncRequest
	from  meta.Snap
	old   []byte
	img   []byte
	uuid  meta.UUID
	stats hashsync.Stats
	began bool
	done  bool
}

func (s *fakeHashSync) From() meta.Snap { return s.from }

func (s *fakeHashSync) Begin(_ context.Context, uuid meta.UUID) error {
	s.uuid, s.began = uuid, true
	return nil
}

// SendDiff runs both halves of the comparison over two pipes: the hash
// side on the archive's image, the data side on src; differing chunks are
// applied to a copy of the image.
func (s *fakeHashSync) SendDiff(ctx context.Context, src io.ReaderAt, progress func(hashsync.Stats)) (hashsync.Stats, error) {
	if !s.began || s.done {
		return hashsync.Stats{}, errors.New("fake archive: diff out of order")
	}
	chunk, size := int(s.req.BulkLB*walb.LBS), int64(s.req.SizeLB*walb.LBS)
	s.img = append([]byte(nil), s.old...)
	hr, hw := io.Pipe() // hashes, archive -> storage
	dr, dw := io.Pipe() // data, storage -> archive
	s.a.mu.Lock()
	var data io.Writer = dw
	if s.a.hashCutAfter > 0 {
		data = &cutWriter{w: dw, left: s.a.hashCutAfter}
	}
	s.a.mu.Unlock()
	hashErr := make(chan error, 1)
	go func() {
		st, err := hashsync.RunHashSide(ctx, dr, hw, bytes.NewReader(s.old),
			hashsync.Session{ChunkSize: chunk, End: size}, memSink(s.img), hashsync.HashOptions{})
		s.stats = st
		hw.CloseWithError(closeErr(err))
		dr.CloseWithError(closeErr(err))
		hashErr <- err
	}()
	st, err := hashsync.SendDiff(ctx, hr, data, src, hashsync.DataOptions{
		Compression: wdiff.DefaultCompression, ExpectEnd: size, ExpectChunkSize: chunk, Progress: progress,
	})
	dw.CloseWithError(closeErr(err))
	hr.CloseWithError(closeErr(err))
	if herr := <-hashErr; err == nil && herr != nil {
		err = herr
	}
	return st, err
}

func closeErr(err error) error {
	if err == nil {
		return io.EOF
	}
	return err
}

func (s *fakeHashSync) Commit(_ context.Context, snap meta.Snap) error {
	if s.done || s.img == nil {
		return errors.New("fake archive: commit out of order")
	}
	s.done = true
	if snap.GidB != s.from.GidE+1 || snap.GidE <= snap.GidB {
		return errors.Errorf("fake archive: snapshot %s after %s", snap, s.from)
	}
	s.a.mu.Lock()
	defer s.a.mu.Unlock()
	s.a.commit(s.img, snap, s.uuid, s.req.Time)
	s.a.hashes++
	s.a.hashFrom, s.a.hashStats = s.from, s.stats
	return nil
}

func (s *fakeHashSync) Abort(error) { s.done = true }

// cutWriter fails once left bytes have gone through: a connection cut.
type cutWriter struct {
	w    io.Writer
	left int64
}

func (c *cutWriter) Write(p []byte) (int, error) {
	if int64(len(p)) > c.left {
		n, _ := c.w.Write(p[:c.left])
		c.left = 0
		return n, errors.New("fake archive: connection reset")
	}
	c.left -= int64(len(p))
	return c.w.Write(p)
}

// memSink applies the records of a hash comparison to an image.
type memSink []byte

func (m memSink) WriteStored(rec wdiff.Record, st wdiff.Stored) error {
	b := m[rec.Addr*walb.LBS : (rec.Addr+uint64(rec.Blocks))*walb.LBS]
	if !rec.IsNormal() {
		clear(b)
		return nil
	}
	out, err := wdiff.Decompress(nil, st.Data, st.Codec, len(b))
	if err != nil {
		return err
	}
	copy(b, out)
	return nil
}

type fakeFullSync struct {
	a     *fakeArchive
	req   SyncRequest
	uuid  meta.UUID
	img   []byte
	bulks int
	began bool
	done  bool
}

func (s *fakeFullSync) Begin(_ context.Context, uuid meta.UUID) error {
	s.uuid, s.began = uuid, true
	return nil
}

func (s *fakeFullSync) SendImage(_ context.Context, src io.ReaderAt) error {
	if !s.began || s.done {
		return errors.New("fake archive: image out of order")
	}
	bulk := make([]byte, s.req.BulkLB*walb.LBS)
	size := int64(s.req.SizeLB * walb.LBS)
	for off := int64(0); off < size; {
		b := bulk[:min(int64(len(bulk)), size-off)]
		if n, err := src.ReadAt(b, off); n < len(b) {
			return errors.Wrapf(err, "fake archive: read at %d", off)
		}
		s.bulks++
		s.a.mu.Lock()
		failAt := s.a.failAt
		s.a.mu.Unlock()
		if failAt > 0 && s.bulks == failAt {
			return errors.New("fake archive: connection reset")
		}
		s.img = append(s.img, b...)
		off += int64(len(b))
	}
	return nil
}

func (s *fakeFullSync) Commit(_ context.Context, snap meta.Snap) error {
	if s.done {
		return errors.New("fake archive: commit after end")
	}
	s.done = true
	if uint64(len(s.img)) != s.req.SizeLB*walb.LBS {
		return errors.Errorf("fake archive: image of %d bytes, want %d", len(s.img), s.req.SizeLB*walb.LBS)
	}
	if err := snap.Validate(); err != nil {
		return err
	}
	s.a.mu.Lock()
	defer s.a.mu.Unlock()
	s.a.commit(s.img, snap, s.uuid, s.req.Time)
	return nil
}

func (s *fakeFullSync) Abort(error) { s.done = true }

// memImage is an in-memory image for redo.
type memImage []byte

func (m memImage) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > int64(len(m)) {
		return 0, errors.Errorf("write [%d,+%d) beyond %d", off, len(p), len(m))
	}
	return copy(m[off:], p), nil
}

// redo applies a transfer's wlog to img.
func redo(t testing.TB, img []byte, tr transferRec) {
	t.Helper()
	if tr.Wlog == nil {
		return
	}
	r, err := wlog.NewReader(bytes.NewReader(tr.Wlog))
	require.NoError(t, err)
	_, err = wlog.Redo(context.Background(), r, memImage(img), wlog.RedoOptions{ZeroDiscard: true})
	require.NoError(t, err)
}

// chainState is the receiving side's view of a sequence of transfers.
type chainState struct {
	lsid, gid uint64
	// boundaries reached, (lsid, gid), so a resend after a lost ACK can be
	// recognized as starting at a point already reached. Several gids may
	// share an lsid (an explicit snapshot with no new log).
	seen map[[2]uint64]bool
}

// checkChain verifies that transfers (in commit order) form one chain from
// (lsid0, gid0): each either continues the chain exactly or is a resend
// that starts at a boundary already reached (allowed only right after a
// lost ACK or a restart, which isResend tells). It returns the image after
// applying them to base and the gid -> end lsid of every boundary.
func checkChain(t testing.TB, base []byte, lsid0, gid0 uint64, trs []transferRec, resendOK func(i int) bool) ([]byte, map[uint64]uint64) {
	t.Helper()
	img := append([]byte(nil), base...)
	st := chainState{lsid: lsid0, gid: gid0, seen: map[[2]uint64]bool{{lsid0, gid0}: true}}
	gidLsid := map[uint64]uint64{gid0: lsid0}
	for i, tr := range trs {
		d := tr.Diff
		require.True(t, d.IsClean(), "transfer %d: diff %s must be clean", i, d)
		require.Less(t, d.SnapB.GidB, d.SnapE.GidB, "transfer %d", i)
		require.LessOrEqual(t, tr.BeginLsid, tr.EndLsid, "transfer %d", i)
		if tr.BeginLsid == st.lsid && d.SnapB.GidB == st.gid {
			// continues the chain
		} else {
			require.True(t, st.seen[[2]uint64{tr.BeginLsid, d.SnapB.GidB}], "transfer %d (%s [%d,%d)) does not start at a reached point; chain at lsid %d gid %d",
				i, d, tr.BeginLsid, tr.EndLsid, st.lsid, st.gid)
			require.True(t, resendOK(i), "transfer %d (%s) resends lsid %d without a lost ACK or restart before it", i, d, tr.BeginLsid)
			if d.SnapE.GidB <= st.gid {
				// too old for the archive: it drops it.
				require.LessOrEqual(t, tr.EndLsid, st.lsid, "transfer %d", i)
				continue
			}
		}
		require.GreaterOrEqual(t, tr.EndLsid, st.lsid, "transfer %d", i)
		redo(t, img, tr)
		st.lsid, st.gid = tr.EndLsid, d.SnapE.GidB
		st.seen[[2]uint64{st.lsid, st.gid}] = true
		gidLsid[st.gid] = st.lsid
	}
	return img, gidLsid
}

// testEnv is a Storage on a temp base directory with fake peers.
type testEnv struct {
	t       testing.TB
	dir     string
	devs    *DeviceMap
	proxies *fakeProxies
	archive *fakeArchive
	st      *Storage
	cancel  context.CancelFunc
	runDone chan struct{}
}

type envOpts struct {
	proxies  []string
	maxSend  uint64
	snapIntv time.Duration
	mutate   func(*Config)
}

func newEnv(t testing.TB, o envOpts) *testEnv {
	t.Helper()
	e := &testEnv{t: t, dir: t.TempDir(), devs: NewDeviceMap(), proxies: newFakeProxies(), archive: &fakeArchive{}}
	require.NoError(t, os.Mkdir(filepath.Join(e.dir, "base"), 0o755))
	e.start(o)
	t.Cleanup(e.stop)
	return e
}

func (e *testEnv) start(o envOpts) {
	t := e.t
	if o.proxies == nil {
		o.proxies = []string{"p0"}
	}
	cfg := Config{
		BaseDir: filepath.Join(e.dir, "base"), ID: "s0", Archive: "a0", Proxies: o.proxies,
		Devices: e.devs, ProxyClient: e.proxies, ArchiveClient: e.archive,
		MaxWlogSendBytes: o.maxSend, SnapshotInterval: o.snapIntv,
		RetryMin: 20 * time.Millisecond, RetryMax: 100 * time.Millisecond,
		MonitorInterval: 10 * time.Millisecond, StopTimeout: 5 * time.Second,
		HeartbeatInterval: 10 * time.Millisecond, ProxyCheckAge: 50 * time.Millisecond,
		Logger: testLogger(),
	}
	if o.mutate != nil {
		o.mutate(&cfg)
	}
	st, err := New(cfg)
	require.NoError(t, err)
	require.NoError(t, st.Recover(context.Background()))
	ctx, cancel := context.WithCancel(context.Background())
	e.st, e.cancel, e.runDone = st, cancel, make(chan struct{})
	go func() {
		defer close(e.runDone)
		st.Run(ctx)
	}()
}

func (e *testEnv) stop() {
	if e.st == nil {
		return
	}
	e.cancel()
	<-e.runDone
	require.NoError(e.t, e.st.Close())
	e.st = nil
}

// restart simulates a storage restart on the same base directory.
func (e *testEnv) restart(o envOpts) {
	e.stop()
	e.start(o)
}

// addDevice creates, opens and registers a device as name.
func (e *testEnv) addDevice(name string, ddevBytes, ldevBytes int64, random bool) (*walb.Device, devFiles) {
	dir := filepath.Join(e.dir, "dev-"+name)
	require.NoError(e.t, os.MkdirAll(dir, 0o755))
	f := makeDevice(e.t, dir, ddevBytes, ldevBytes, random)
	d := openDevice(e.t, f)
	e.t.Cleanup(func() { d.Close() })
	e.devs.AddWalb(name, d)
	return d, f
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// waitSent waits until the volume's done record reaches gid and the device's
// log is fully extracted up to permanent.
func (e *testEnv) waitSent(vol string, gid uint64, dev *walb.Device) {
	e.t.Helper()
	waitFor(e.t, fmt.Sprintf("%s sent up to gid %d", vol, gid), 20*time.Second, func() bool {
		done, q, err := e.st.Done(vol)
		if err != nil {
			return false
		}
		return done.Gid >= gid && len(q) == 0 && done.Lsid == dev.Lsids().Permanent
	})
}

// readImage returns the whole device image.
func readImage(t testing.TB, d *walb.Device) []byte {
	t.Helper()
	b := make([]byte, d.Size())
	_, err := d.ReadAt(b, 0)
	require.NoError(t, err)
	return b
}

// sortedKeys returns the keys of m in order.
func sortedKeys(m map[uint64][]byte) []uint64 {
	v := make([]uint64, 0, len(m))
	for k := range m {
		v = append(v, k)
	}
	sort.Slice(v, func(i, j int) bool { return v[i] < v[j] })
	return v
}

// checkBackupStops checks, on volume "v" of e (SyncReady), that a force
// stop aborts a running backup (throttled so that it is caught in state
// via) and that a backup beyond -fg is refused; each leaves the volume
// SyncReady.
func checkBackupStops(t *testing.T, e *testEnv, via string, backup func(BackupOptions) error) {
	t.Helper()
	ctx := context.Background()
	e.st.SetFullScanBps(64 << 10) // 256 KiB in 4 s
	errc := make(chan error, 1)
	go func() { errc <- backup(BackupOptions{BulkSize: 16 << 10}) }()
	waitFor(t, "backup running", 5*time.Second, func() bool { return e.st.State("v") == via })
	stopErr := e.st.StopVol(ctx, "v", true)
	require.ErrorIs(t, <-errc, ErrForceStopped)
	require.ErrorIs(t, stopErr, wire.ErrWrongState, "the stop finds a SyncReady volume")
	require.Equal(t, StateSyncReady, e.st.State("v"))
	e.st.SetFullScanBps(0)

	var releases []func()
	for range e.st.cfg.MaxForeground {
		release, err := e.st.fg.Take()
		require.NoError(t, err)
		releases = append(releases, release)
	}
	require.ErrorIs(t, backup(BackupOptions{}), wire.ErrTooManyTasks)
	for _, release := range releases {
		release()
	}
	require.Equal(t, StateSyncReady, e.st.State("v"))
}

// overflowLog writes to the device (whose log is at most a few hundred KiB)
// until its log ring overwrites logs that were not released.
func overflowLog(t testing.TB, d *walb.Device) {
	t.Helper()
	buf := make([]byte, 32<<10)
	for i := 0; !d.IsLogOverflow(); i++ {
		require.Less(t, i, 100, "the log should have overflowed")
		for j := range buf {
			buf[j] = byte(i + j)
		}
		_, err := d.WriteAt(buf, int64(i%8)*int64(len(buf)))
		require.NoError(t, err)
	}
}
