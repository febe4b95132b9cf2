package storage

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/pkg/errors"
	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/hashsync"
	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/walb"
	"github.com/walb-go/walb/wlog"
)

// Crash tests: a child process runs the storage on a real userspace device
// with writes and snapshots going on, and is SIGKILLed at a random moment;
// then the next child starts on the same files. The proxy is a recorder
// that commits each transfer to a directory before it acknowledges it, as
// the real proxy does (system.md §4.4 step 7), so an ACK lost in the kill
// is visible as a resend. At the end a child sends everything and shuts
// down cleanly, and the parent checks that the committed transfers form one
// chain from the full backup (a resend only as the first transfer of a
// run) whose redo over the backup's image is the device's image.

const (
	envCrashChild = "WALB_STORAGE_CRASH_CHILD"
	envCrashDir   = "WALB_STORAGE_CRASH_DIR"
	envCrashRun   = "WALB_STORAGE_CRASH_RUN"
)

// fileProxy is a ProxyClient whose transfers are committed as files
// (seq.json) in dir, tagged with the run number of the process.
type fileProxy struct {
	dir string
	run int
	mu  sync.Mutex
}

func (p *fileProxy) HostType(context.Context, string) (string, error) { return "proxy", nil }

func (p *fileProxy) OpenWlog(_ context.Context, addr string, h WlogHeader) (WlogSession, error) {
	return &fileWlogSession{p: p, s: fakeWlogSession{f: newFakeProxies(), addr: addr, h: h, lsid: h.BeginLsid}}, nil
}

type fileWlogSession struct {
	p *fileProxy
	s fakeWlogSession
}

// fileRec is a committed transfer on disk.
type fileRec struct {
	Run int
	transferRec
}

func (s *fileWlogSession) SendPack(ctx context.Context, h *wlog.PackHeader, data []byte) error {
	return s.s.SendPack(ctx, h, data)
}

func (s *fileWlogSession) Commit(ctx context.Context, d meta.Diff) error {
	if err := s.s.Commit(ctx, d); err != nil {
		return err
	}
	tr := s.s.f.transfers()[0]
	p := s.p
	p.mu.Lock()
	defer p.mu.Unlock()
	ents, err := os.ReadDir(p.dir)
	if err != nil {
		return err
	}
	n := 0
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".json") {
			n++
		}
	}
	tr.Seq = n
	b, err := json.Marshal(fileRec{Run: p.run, transferRec: tr})
	if err != nil {
		return err
	}
	tmp := filepath.Join(p.dir, fmt.Sprintf("tmp-%08d", n))
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	// The rename is the commit; the ACK is the return.
	return os.Rename(tmp, filepath.Join(p.dir, fmt.Sprintf("%08d.json", n)))
}

func (s *fileWlogSession) Abort(cause error) { s.s.Abort(cause) }

func loadFileRecs(t testing.TB, dir string) []fileRec {
	t.Helper()
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	var names []string
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".json") {
			names = append(names, e.Name())
		}
	}
	sort.Strings(names)
	recs := make([]fileRec, 0, len(names))
	for i, n := range names {
		b, err := os.ReadFile(filepath.Join(dir, n))
		require.NoError(t, err)
		var r fileRec
		require.NoError(t, json.Unmarshal(b, &r))
		require.Equal(t, i, r.Seq)
		recs = append(recs, r)
	}
	return recs
}

// crashLayout is the files shared by the parent and the children.
type crashLayout struct {
	root  string
	dev   devFiles
	base  string // storage base directory
	proxy string // committed transfers
	image string // the full backup's base image
}

func newCrashLayout(root string) crashLayout {
	return crashLayout{
		root:  root,
		dev:   devFiles{ldev: filepath.Join(root, "ldev"), ddev: filepath.Join(root, "ddev")},
		base:  filepath.Join(root, "base"),
		proxy: filepath.Join(root, "proxy"),
		image: filepath.Join(root, "base-image"),
	}
}

// crashStorage opens the device and a running storage on the layout.
func crashStorage(t testing.TB, l crashLayout, run int, archive ArchiveClient) (*walb.Device, *Storage, func()) {
	t.Helper()
	dev := openDevice(t, l.dev)
	devs := NewDeviceMap()
	devs.AddWalb("d0", dev)
	st, err := New(Config{
		BaseDir: l.base, ID: "s0", Archive: "a0", Proxies: []string{"p0"},
		Devices: devs, ProxyClient: &fileProxy{dir: l.proxy, run: run}, ArchiveClient: archive,
		MaxWlogSendBytes: 48 << 10, SnapshotInterval: 20 * time.Millisecond,
		RetryMin: 10 * time.Millisecond, RetryMax: 50 * time.Millisecond,
		MonitorInterval: 5 * time.Millisecond, Logger: testLogger(),
	})
	require.NoError(t, err)
	require.NoError(t, st.Recover(context.Background()))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		st.Run(ctx)
	}()
	return dev, st, func() {
		cancel()
		<-done
		require.NoError(t, st.Close())
		require.NoError(t, dev.Close())
	}
}

// slowArchive is an archive that accepts a full or hash backup and reads
// the device slowly, so that a child is killed in the middle of it. Its
// image, for a hash backup, is all zeros.
type slowArchive struct{}

func (slowArchive) OpenHashSync(ctx context.Context, addr string, req SyncRequest) (HashSyncSession, error) {
	a := &fakeArchive{image: make([]byte, req.SizeLB*walb.LBS)}
	s, err := a.OpenHashSync(ctx, addr, req)
	if err != nil {
		return nil, err
	}
	return slowHashSession{s}, nil
}

type slowHashSession struct{ HashSyncSession }

func (s slowHashSession) SendDiff(ctx context.Context, src io.ReaderAt, progress func(hashsync.Stats)) (hashsync.Stats, error) {
	return s.HashSyncSession.SendDiff(ctx, slowReader{src}, progress)
}

func (slowArchive) OpenFullSync(ctx context.Context, addr string, req SyncRequest) (FullSyncSession, error) {
	s, err := (&fakeArchive{}).OpenFullSync(ctx, addr, req)
	return slowSession{s}, err
}

type slowSession struct{ FullSyncSession }

func (s slowSession) SendImage(ctx context.Context, src io.ReaderAt) error {
	return s.FullSyncSession.SendImage(ctx, slowReader{src})
}

type slowReader struct{ io.ReaderAt }

func (r slowReader) ReadAt(p []byte, off int64) (int, error) {
	time.Sleep(20 * time.Millisecond)
	return r.ReaderAt.ReadAt(p, off)
}

// TestCrashChild is the child process; it does nothing in a normal run.
func TestCrashChild(t *testing.T) {
	mode := os.Getenv(envCrashChild)
	if mode == "" {
		t.Skip("crash test child")
	}
	l := newCrashLayout(os.Getenv(envCrashDir))
	run, err := strconv.Atoi(os.Getenv(envCrashRun))
	require.NoError(t, err)
	dev, st, closeAll := crashStorage(t, l, run, slowArchive{})
	ctx := context.Background()
	switch mode {
	case "fullbkp":
		// Killed during the copy.
		err := st.FullBackup(ctx, "v", BackupOptions{BulkSize: 8 << 10})
		t.Fatalf("full backup returned (%v); it should have been killed", err)
	case "hashbkp":
		// Killed during the comparison.
		err := st.HashBackup(ctx, "v", BackupOptions{BulkSize: 8 << 10})
		t.Fatalf("hash backup returned (%v); it should have been killed", err)
	case "work":
		require.Equal(t, StateTarget, st.State("v"))
		w := startWriter(dev, uint64(run)*7919)
		rng := rand.New(rand.NewPCG(uint64(run), 2))
		deadline := time.Now().Add(20 * time.Second)
		for time.Now().Before(deadline) {
			time.Sleep(time.Duration(5+rng.IntN(30)) * time.Millisecond)
			if _, err := st.Snapshot(ctx, "v"); err != nil {
				t.Fatalf("snapshot: %v", err)
			}
		}
		w.finish(t)
		t.Fatal("the work child should have been killed")
	case "final":
		require.Equal(t, StateTarget, st.State("v"))
		gid, err := st.Snapshot(ctx, "v")
		require.NoError(t, err)
		waitFor(t, "everything sent", 60*time.Second, func() bool {
			done, q, err := st.Done("v")
			return err == nil && done.Gid >= gid && len(q) == 0 && done.Lsid == dev.Lsids().Permanent
		})
		closeAll()
		fmt.Printf("FINAL-GID %d\n", gid)
	}
}

// runChild starts a child in mode; if killAfter > 0 it is SIGKILLed then.
func runChild(t *testing.T, l crashLayout, mode string, run int, killAfter time.Duration) string {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.v", "-test.count=1")
	cmd.Env = append(os.Environ(), envCrashChild+"="+mode, envCrashDir+"="+l.root, envCrashRun+"="+strconv.Itoa(run))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	require.NoError(t, cmd.Start())
	waited := make(chan error, 1)
	go func() { waited <- cmd.Wait() }()
	if killAfter > 0 {
		select {
		case err := <-waited:
			t.Fatalf("child %d (%s) exited before the kill: %v\n%s", run, mode, err, out.String())
		case <-time.After(killAfter):
		}
		require.NoError(t, cmd.Process.Signal(syscall.SIGKILL))
		err := <-waited
		var ee *exec.ExitError
		require.True(t, errors.As(err, &ee), "child %d: %v\n%s", run, err, out.String())
		return out.String()
	}
	select {
	case err := <-waited:
		require.NoError(t, err, "child %d (%s)\n%s", run, mode, out.String())
	case <-time.After(90 * time.Second):
		cmd.Process.Kill()
		t.Fatalf("child %d (%s) hangs\n%s", run, mode, out.String())
	}
	return out.String()
}

func TestCrashRecovery(t *testing.T) {
	if testing.Short() {
		t.Skip("crash trials")
	}
	trials := 20
	if os.Getenv("WALB_TEST_SOAK") != "" {
		trials = 200
	}
	l := newCrashLayout(t.TempDir())
	require.NoError(t, os.Mkdir(l.base, 0o755))
	require.NoError(t, os.Mkdir(l.proxy, 0o755))
	makeDevice(t, l.root, 1<<20, 8<<20, true)
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 3))

	// A volume, and a full backup killed in the middle: the volume is
	// SyncReady again after the restart.
	func() {
		_, st, closeAll := crashStorage(t, l, 0, &fakeArchive{})
		defer closeAll()
		require.NoError(t, st.InitVol(context.Background(), "v", "d0"))
	}()
	runChild(t, l, "fullbkp", 1, time.Duration(150+rng.IntN(200))*time.Millisecond)
	// The same for a hash backup (spec §7: transient states are not
	// persisted).
	func() {
		_, st, closeAll := crashStorage(t, l, 1, &fakeArchive{})
		defer closeAll()
		require.Equal(t, StateSyncReady, st.State("v"), "an interrupted full backup leaves SyncReady")
	}()
	runChild(t, l, "hashbkp", 1, time.Duration(150+rng.IntN(200))*time.Millisecond)

	// The backup, rerun to completion in this process.
	archive := &fakeArchive{}
	func() {
		_, st, closeAll := crashStorage(t, l, 2, archive)
		defer closeAll()
		require.Equal(t, StateSyncReady, st.State("v"), "an interrupted backup leaves SyncReady")
		require.NoError(t, st.FullBackup(context.Background(), "v", BackupOptions{BulkSize: 64 << 10}))
		require.Equal(t, StateTarget, st.State("v"))
	}()
	require.NoError(t, os.WriteFile(l.image, archive.image, 0o644))

	for i := range trials {
		run := 3 + i
		runChild(t, l, "work", run, time.Duration(30+rng.IntN(400))*time.Millisecond)
	}
	out := runChild(t, l, "final", 3+trials, 0)
	require.Contains(t, out, "FINAL-GID")

	recs := loadFileRecs(t, l.proxy)
	trs := make([]transferRec, len(recs))
	for i, r := range recs {
		trs[i] = r.transferRec
	}
	firstOfRun := func(i int) bool { return i == 0 || recs[i].Run != recs[i-1].Run }
	img, _ := checkChain(t, archive.image, 0, 0, trs, firstOfRun)
	final, err := os.ReadFile(l.dev.ddev)
	require.NoError(t, err)
	require.True(t, bytes.Equal(final[:len(img)], img), "the redo of the committed transfers over the base image is the device image")
	resends := 0
	for i := range trs {
		if i > 0 && trs[i].BeginLsid < trs[i-1].EndLsid {
			resends++
		}
	}
	t.Logf("%d trials, %d transfers over %d runs, %d resends after a lost ACK", trials, len(trs), trials+3, resends)
}
