package proxy

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/wire"
)

// The crash test runs a storage, the proxy and two archives in a child
// process, kills it with SIGKILL at random moments (inside receives, sends,
// fsyncs, renames...) and restarts it, then lets it finish: the archives
// must end at the last gid with exactly the image the storage wrote (no
// wlog lost), having refused only duplicates (too-old-diff).

const (
	crashEnvDir    = "WALB_PROXY_CRASH_DIR"
	crashEnvFinish = "WALB_PROXY_CRASH_FINISH"
)

// durableArchive is an ArchiveClient that keeps its volumes on disk like a
// real archive: each accepted diff is fsynced under a sequence number, then
// the state (sequence, latest snapshot) is replaced atomically. A file
// beyond the state's sequence is a leftover of a crash and does not count.
type durableArchive struct {
	root string
	mu   sync.Mutex
}

type archiveState struct {
	seq  uint64
	snap meta.Snap
}

func (a *durableArchive) dir(addr, vol string) string {
	return filepath.Join(a.root, strings.ReplaceAll(addr, ":", "_"), vol)
}

func (a *durableArchive) state(dir string) (archiveState, error) {
	b, err := os.ReadFile(filepath.Join(dir, "state"))
	if os.IsNotExist(err) {
		return archiveState{snap: meta.CleanSnap(0)}, nil
	}
	if err != nil {
		return archiveState{}, err
	}
	var st archiveState
	_, err = fmt.Sscanf(string(b), "%d %d %d", &st.seq, &st.snap.GidB, &st.snap.GidE)
	return st, err
}

func (a *durableArchive) SendWdiff(ctx context.Context, req WdiffRequest, r io.Reader) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	dir := a.dir(req.Addr, req.Vol)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	st, err := a.state(dir)
	if err != nil {
		return err
	}
	switch meta.RelationOf(st.snap, req.Diff) {
	case meta.TooOld:
		return remote(wire.ErrTooOldDiff)
	case meta.TooNew:
		return remote(wire.ErrTooNewDiff)
	}
	tmp, err := meta.CreateTemp(dir, 0o644)
	if err != nil {
		return err
	}
	defer tmp.Abort()
	var buf bytes.Buffer
	if _, err := io.Copy(io.MultiWriter(tmp, &buf), r); err != nil {
		return err
	}
	if err := checkSorted(buf.Bytes()); err != nil {
		return err
	}
	next := archiveState{seq: st.seq + 1}
	if next.snap, err = st.snap.Apply(req.Diff); err != nil {
		return err
	}
	if err := tmp.Commit(filepath.Join(dir, fmt.Sprintf("%06d.wdiff", next.seq))); err != nil {
		return err
	}
	return meta.WriteFileAtomic(filepath.Join(dir, "state"),
		fmt.Appendf(nil, "%d %d %d", next.seq, next.snap.GidB, next.snap.GidE), 0o644)
}

// transferPacks regenerates the logpacks of the storage's k-th transfer,
// applying its writes to img.
func transferPacks(t testing.TB, k uint64, img []byte) ([]byte, WlogHeader) {
	g := newWlogGen(512)
	g.img = img
	g.lsid = k << 20
	return g.packs(t, rand.New(rand.NewPCG(k, 77)), 1+int(k%4)), g.header()
}

// transferDiff is the storage's k-th diff; every seventh starts at an
// explicit snapshot.
func transferDiff(k uint64) meta.Diff { return testDiff(k, k%7 != 0) }

var crashArchives = []string{"a0", "a1"}

// TestCrashChild is the child process; it runs only under TestCrashRestart.
func TestCrashChild(t *testing.T) {
	dir := os.Getenv(crashEnvDir)
	if dir == "" {
		t.Skip("run by TestCrashRestart")
	}
	ctx := context.Background()
	arch := &durableArchive{root: filepath.Join(dir, "archives")}
	base := filepath.Join(dir, "proxy")
	require.NoError(t, os.MkdirAll(base, 0o755))
	p, err := Open(ctx, Config{
		BaseDir: base, Archive: arch, Delay: 2 * time.Millisecond, MaxDelay: 10 * time.Millisecond,
		MaxWdiffSendFiles: 4, MaxBackground: 2, Logger: testLogger(), StartStopped: true,
	})
	require.NoError(t, err)
	defer p.Close()
	p.exceptionRetry = 5 * time.Millisecond
	// A kill may have cut the setup short: (re)write every archive info.
	for i, a := range crashArchives {
		require.NoError(t, p.AddArchiveInfo(ctx, "v0", a, ArchiveInfo{Host: "archive-" + a, Port: uint16(i + 1), Compression: DefaultCompression}, true))
	}
	require.NoError(t, p.Start(ctx, "v0"))
	// The storage: "done" moves only after the proxy's ACK.
	donePath := filepath.Join(dir, "done")
	done := uint64(0)
	if b, err := os.ReadFile(donePath); err == nil {
		done, err = strconv.ParseUint(string(b), 10, 64)
		require.NoError(t, err)
	}
	// Until killed, the storage keeps writing; the final run sends one
	// more transfer than acknowledged, the one a kill may have cut, so
	// the archives must end exactly there.
	last := uint64(1 << 40)
	if os.Getenv(crashEnvFinish) != "" {
		last = done + 1
	}
	scratch := make([]byte, testVolSizeLb*512)
	for k := done + 1; k <= last; k++ {
		packs, hdr := transferPacks(t, k, scratch)
		_, err := receive(ctx, p, "v0", hdr, bytes.NewReader(packs), transferDiff(k))
		require.NoError(t, err, "transfer %d", k)
		require.NoError(t, meta.WriteFileAtomic(donePath, []byte(strconv.FormatUint(k, 10)), 0o644))
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		n := 0
		for _, a := range crashArchives {
			n += queued(t, p, "v0", a)
		}
		if n == 0 {
			break
		}
		require.True(t, time.Now().Before(deadline), "queues did not drain")
		time.Sleep(5 * time.Millisecond)
	}
	fmt.Printf("CHILD-DONE %d\n", last)
}

func TestCrashRestart(t *testing.T) {
	if os.Getenv(crashEnvDir) != "" {
		t.Skip("child")
	}
	trials := 20
	if os.Getenv("WALB_TEST_SOAK") != "" {
		trials = 200
	}
	dir := t.TempDir()
	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	run := func(kill time.Duration) (string, error) {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrashChild$", "-test.count=1", "-test.timeout=120s")
		cmd.Env = append(os.Environ(), crashEnvDir+"="+dir)
		if kill == 0 {
			cmd.Env = append(cmd.Env, crashEnvFinish+"=1")
		}
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		require.NoError(t, cmd.Start())
		if kill > 0 {
			timer := time.AfterFunc(kill, func() { _ = cmd.Process.Signal(syscall.SIGKILL) })
			defer timer.Stop()
		}
		err := cmd.Wait()
		return out.String(), err
	}
	for i := range trials {
		kill := time.Duration(10+rng.IntN(240)) * time.Millisecond
		out, err := run(kill)
		ee, ok := err.(*exec.ExitError)
		require.True(t, ok && ee.Sys().(syscall.WaitStatus).Signaled(), "trial %d: the child must die by the kill: %v\n%s", i, err, out)
	}
	doneBefore, _ := os.ReadFile(filepath.Join(dir, "done"))
	out, err := run(0)
	require.NoError(t, err, "final run:\n%s", out)
	var crashTransfers uint64
	_, err = fmt.Sscanf(out[strings.Index(out, "CHILD-DONE"):], "CHILD-DONE %d", &crashTransfers)
	require.NoError(t, err, out)
	t.Logf("%d trials killed; %s transfers acknowledged before the final run, %d after", trials, doneBefore, crashTransfers)

	// The archives hold exactly what the storage wrote.
	want := make([]byte, testVolSizeLb*512)
	for k := uint64(1); k <= crashTransfers; k++ {
		transferPacks(t, k, want)
	}
	arch := &durableArchive{root: filepath.Join(dir, "archives")}
	for i, a := range crashArchives {
		adir := arch.dir(fmt.Sprintf("archive-%s:%d", a, i+1), "v0")
		st, err := arch.state(adir)
		require.NoError(t, err)
		require.Equal(t, meta.CleanSnap(crashTransfers), st.snap, "archive %s", a)
		var files [][]byte
		for s := uint64(1); s <= st.seq; s++ {
			b, err := os.ReadFile(filepath.Join(adir, fmt.Sprintf("%06d.wdiff", s)))
			require.NoError(t, err)
			files = append(files, b)
		}
		require.Equal(t, want, applyAll(t, files), "archive %s image", a)
	}
	// And the proxy is clean: nothing left to send, no temporary file.
	base := filepath.Join(dir, "proxy", "v0")
	require.Empty(t, dirNames(t, filepath.Join(base, "received")))
	for _, a := range crashArchives {
		require.Empty(t, dirNames(t, filepath.Join(base, "sendto", a)))
	}
}
