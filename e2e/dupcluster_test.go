package e2e

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"log/slog"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/walb-go/walb/controller"
	"github.com/walb-go/walb/devhost"
)

// dupOptions shapes a duplicated backup group (system.md §10: storages
// holding replicas of one volume, proxies by priority, a primary archive
// and secondaries).
type dupOptions struct {
	storages, proxies, archives int // s0.., p0.., a0.. (a0 is the primary)
	logMiB                      int // each device's log (0: logMiB)
	devMiB                      int // each device's data (0: devMiB)
	// ns runs the named servers (a0, a1, p0...) inside a network
	// namespace: another host, reached over a veth link the test can cut.
	ns map[string]*netns
	// timeout is every server's socket timeout -to in seconds (0: the
	// servers' default, 10 s); the link-cut tests shorten it so that a
	// hung connection fails within the test's time.
	timeout int
}

// dupServer is one server process of the group.
type dupServer struct {
	controller.Server
	p   *proc
	ns  *netns // nil: on 127.0.0.1 in the test's namespace
	nbd string // archives: NBD address of the restored images
}

// dupStorage is a storage host: the storage server and its own device
// daemon holding the volume's replica (a WalB device named after the
// volume).
type dupStorage struct {
	dupServer
	dev        *proc
	devSock    string // walb-dev control socket
	nbdAddr    string // walb-dev NBD address
	ldev, ddev string // log and data device files
}

// nbdURI is the device's NBD export.
func (s *dupStorage) nbdURI() string { return fmt.Sprintf("nbd://%s/%s", s.nbdAddr, volume) }

// dupCluster is a duplicated backup group of real processes. Every
// storage host has its own device daemon and device; the tests write the
// same data to every device (as walb-tools' scenario tests write to both
// replicas), so that any storage can become the target by a hash backup.
type dupCluster struct {
	steps
	dir      string
	opt      dupOptions
	devSize  int64
	s        []*dupStorage
	p, a     []*dupServer
	ctl      *controller.Controller
	patterns []string
}

// procs lists every process, servers first (storages, proxies, archives),
// device daemons last.
func (dc *dupCluster) procs() []*proc {
	var ps []*proc
	for _, s := range dc.s {
		ps = append(ps, s.p)
	}
	for _, s := range append(append([]*dupServer{}, dc.p...), dc.a...) {
		ps = append(ps, s.p)
	}
	for _, s := range dc.s {
		ps = append(ps, s.dev)
	}
	return ps
}

// servers returns the controller.Server of each of ss.
func servers(ss []*dupServer) []controller.Server {
	var out []controller.Server
	for _, s := range ss {
		out = append(out, s.Server)
	}
	return out
}

// newDupCluster starts the device daemons, creates one WalB device per
// storage host (the same initial data on each), then starts the archives,
// the proxies and the storages in walb-tools' order, the storages with
// -archive a0 and -proxy p0,p1,... At the end of the test every process
// is stopped; on failure the end of every log goes to the test log.
func newDupCluster(t testing.TB, opt dupOptions) *dupCluster {
	t.Helper()
	if opt.logMiB == 0 {
		opt.logMiB = logMiB
	}
	if opt.devMiB == 0 {
		opt.devMiB = devMiB
	}
	dir, err := os.MkdirTemp(workRoot, "d")
	if err != nil {
		t.Fatal(err)
	}
	dc := &dupCluster{steps: steps{t}, dir: dir, opt: opt, devSize: int64(opt.devMiB) << 20}
	t.Cleanup(func() {
		for _, p := range dc.procs() {
			if p != nil {
				p.stop(10 * time.Second)
			}
		}
		checkOutputs(t, dc.procs())
		if t.Failed() {
			dumpLogs(t, dc.procs(), dc.dir)
		}
	})
	for i := 0; i < 3; i++ {
		p := filepath.Join(dir, fmt.Sprintf("pattern%d", i))
		b := make([]byte, maxWriteLen)
		_, _ = rand.Read(b)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		dc.patterns = append(dc.patterns, p)
	}

	mk := func(prefix string, i int, kind controller.Kind) *dupServer {
		name := fmt.Sprintf("%s%d", prefix, i)
		host := "127.0.0.1"
		ns := opt.ns[name]
		if ns != nil {
			host = ns.nsIP
		}
		// A port free on 127.0.0.1 is free in a fresh namespace too.
		s := &dupServer{Server: controller.Server{Name: name, Addr: fmt.Sprintf("%s:%d", host, freePort(t)), Kind: kind}, ns: ns}
		if kind == controller.KindArchive {
			s.nbd = fmt.Sprintf("%s:%d", host, freePort(t))
		}
		return s
	}
	for i := 0; i < opt.archives; i++ {
		dc.a = append(dc.a, mk("a", i, controller.KindArchive))
	}
	for i := 0; i < opt.proxies; i++ {
		dc.p = append(dc.p, mk("p", i, controller.KindProxy))
	}
	seed := make([]byte, dc.devSize/2)
	_, _ = rand.Read(seed)
	for i := 0; i < opt.storages; i++ {
		s := &dupStorage{dupServer: *mk("s", i, controller.KindStorage)}
		dc.s = append(dc.s, s)
		dc.startDevice(s, seed)
	}

	var proxyAddrs []string
	for _, p := range dc.p {
		proxyAddrs = append(proxyAddrs, p.Addr)
	}
	common := func() []string {
		if opt.timeout > 0 {
			return []string{"-to", strconv.Itoa(opt.timeout)}
		}
		return nil
	}
	for _, a := range dc.a {
		a.p = dc.server(a, binArchive, append(common(), "-nbd", a.nbd, "-discard", "zero", "-fi", "1m")...)
	}
	for _, p := range dc.p {
		p.p = dc.server(p, binProxy, append(common(), "-delay", "1", "-maxdelay", "2", "-wd", "4")...)
	}
	for _, s := range dc.s {
		s.p = dc.server(&s.dupServer, binStorage, append(common(), "-archive", dc.a[0].Addr,
			"-proxy", strings.Join(proxyAddrs, ","), "-devhost", s.devSock,
			"-wl", "1", "-snapintvl", "1", "-delay", "1", "-maxdelay", "2")...)
	}
	for _, a := range dc.a {
		a.p.start(t)
	}
	for _, p := range dc.p {
		p.p.start(t)
	}
	for _, s := range dc.s {
		s.p.start(t)
	}
	layout := controller.Layout{Proxies: servers(dc.p), Archives: servers(dc.a)}
	for _, s := range dc.s {
		layout.Storages = append(layout.Storages, s.Server)
	}
	dc.ctl, err = controller.New(layout, &controller.Options{ClientID: "e2e", PollInterval: 20 * time.Millisecond,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	return dc
}

// server describes a walb server process with the common flags -p, -b,
// -l, -id; a server of a namespace runs inside it (ip netns exec).
func (dc *dupCluster) server(s *dupServer, binary string, extra ...string) *proc {
	base := mkdir(dc.t, dc.dir, s.Name)
	logPath := filepath.Join(dc.dir, s.Name+".log")
	p := &proc{name: s.Name, bin: bin(binary), logPath: logPath, outPath: filepath.Join(dc.dir, s.Name+".out"),
		args: append([]string{"-p", s.Addr, "-b", base, "-l", logPath, "-id", s.Name}, extra...)}
	if s.ns != nil {
		p.bin, p.args = s.ns.wrap(p.bin, p.args)
	}
	srv := s.Server
	p.ready = func(ctx context.Context) error {
		ht, err := controller.NewClient(srv.Addr, &controller.Options{ClientID: "e2e", Retries: -1}).GetString(ctx, "host-type")
		if err == nil && ht != srv.Kind.String() {
			err = fmt.Errorf("%s answers host-type %q", srv.Addr, ht)
		}
		return err
	}
	return p
}

// startDevice starts storage host s's device daemon and creates its WalB
// device on two sparse files, the data device starting with seed (every
// replica starts equal) followed by a hole.
func (dc *dupCluster) startDevice(s *dupStorage, seed []byte) {
	t := dc.t
	name := s.Name + "dev"
	s.devSock = filepath.Join(dc.dir, name+".sock")
	s.nbdAddr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	s.dev = &proc{name: name, bin: bin(binWalbDev), logPath: filepath.Join(dc.dir, name+".log"), outPath: filepath.Join(dc.dir, name+".out"),
		args: []string{"-b", mkdir(t, dc.dir, name), "-nbd", s.nbdAddr, "-ctl", s.devSock, "-l", filepath.Join(dc.dir, name+".log")}}
	sock := s.devSock
	s.dev.ready = func(ctx context.Context) error {
		_, err := devhost.NewClient(sock).List(ctx)
		return err
	}
	s.dev.start(t)
	s.ldev, s.ddev = filepath.Join(dc.dir, s.Name+"-ldev.img"), filepath.Join(dc.dir, s.Name+"-ddev.img")
	for _, f := range []struct {
		path string
		size int64
	}{{s.ldev, int64(dc.opt.logMiB) << 20}, {s.ddev, dc.devSize}} {
		if err := os.WriteFile(f.path, nil, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := os.Truncate(f.path, f.size); err != nil {
			t.Fatal(err)
		}
	}
	f, err := os.OpenFile(s.ddev, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt(seed, 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	dc.mustWdevc(s, "format-ldev", s.ldev, s.ddev, "-n", volume)
	out := dc.mustWdevc(s, "create-wdev", s.ldev, s.ddev, "-n", volume)
	if want := "nbd " + s.nbdURI(); !strings.Contains(out, want) {
		t.Fatalf("%s: create-wdev printed %q, want a line %q", name, out, want)
	}
	s.dev.started = func() error { return dc.setCheckpointInterval(s) }
	if err := dc.setCheckpointInterval(s); err != nil {
		t.Fatal(err)
	}
}

// setCheckpointInterval sets the device's checkpoint interval (not
// persisted by the daemon: set again after every start).
func (dc *dupCluster) setCheckpointInterval(s *dupStorage) error {
	_, err := dc.wdevc(s, "set-checkpoint-interval", volume, fmt.Sprint(checkpointMs))
	return err
}

// wdevc runs wdevc against storage host s's device daemon.
func (dc *dupCluster) wdevc(s *dupStorage, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	return run(ctx, bin(binWdevc), append([]string{args[0], "-s", s.devSock}, args[1:]...)...)
}

func (dc *dupCluster) mustWdevc(s *dupStorage, args ...string) string {
	dc.t.Helper()
	out, err := dc.wdevc(s, args...)
	if err != nil {
		dc.t.Fatal(err)
	}
	return strings.TrimSpace(out)
}

// state returns vol's state on s.
func (dc *dupCluster) state(s controller.Server) string {
	dc.t.Helper()
	return dc.mustWalbc(s, "get", "state", volume)
}

// requireState fails unless vol is in state want on s.
func (dc *dupCluster) requireState(s controller.Server, want string) {
	dc.t.Helper()
	st := dc.state(s)
	// An Archived volume may be receiving a wdiff from a proxy at this very
	// moment (WdiffRecv, transient, Archived on disk).
	if st == want || want == "Archived" && st == "WdiffRecv" {
		return
	}
	dc.t.Fatalf("%s: volume %s is %s, want %s", s.Name, volume, st, want)
}

// waitState waits (at most a minute) until vol on s is in state want.
func (dc *dupCluster) waitState(s controller.Server, want string) {
	dc.t.Helper()
	deadline := time.Now().Add(time.Minute)
	last := ""
	for {
		st, err := dc.walbc(s, "get", "state", volume)
		if err == nil && st == want {
			return
		}
		if err != nil {
			st = err.Error()
		}
		if st != last {
			dc.t.Logf("  %s: %s (waiting for %s)", s.Name, firstLineStr(st), want)
			last = st
		}
		if time.Now().After(deadline) {
			dc.t.Fatalf("%s: volume %s still %s after a minute, want %s", s.Name, volume, st, want)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func firstLineStr(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i] + " ..."
	}
	return s
}

// initStorages makes the volume known to every storage, each on its own
// device: s0 stays SyncReady (the first full backup's source), the others
// become Standby replicas.
func (dc *dupCluster) initStorages() {
	for i, s := range dc.s {
		dc.mustWalbc(s.Server, "init-vol", volume, volume)
		if i > 0 {
			dc.mustWalbc(s.Server, "start", volume, "standby")
			dc.waitState(s.Server, "Standby")
		}
	}
}

// kickAll makes every storage and proxy retry at once.
func (dc *dupCluster) kickAll() {
	for _, s := range dc.s {
		if s.p.running() {
			_, _ = dc.walbc(s.Server, "kick")
		}
	}
	for _, p := range dc.p {
		if p.p.running() {
			_, _ = dc.walbc(p.Server, "kick")
		}
	}
}

// writeBurst runs the same n random operations on every replica (one
// qemu-io process per device, in parallel): the devices stay identical.
func (dc *dupCluster) writeBurst(ctx context.Context, rng *mrand.Rand, n int) error {
	ops := burstOps(rng, dc.devSize, dc.patterns, n)
	errs := make([]error, len(dc.s))
	var wg sync.WaitGroup
	for i, s := range dc.s {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := runQemuIO(ctx, qemuIOArgs(s.nbdURI(), ops)); err != nil {
				errs[i] = fmt.Errorf("%s: %v", s.Name, err)
			}
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	return nil
}

// writeMiB writes at least mib MiB to every replica in bursts.
func (dc *dupCluster) writeMiB(rng *mrand.Rand, mib int) {
	dc.t.Helper()
	// A burst writes maxWriteLen/2 bytes per operation on average.
	ops := mib << 20 / (maxWriteLen / 2)
	for ops > 0 {
		n := min(ops, 32)
		if err := dc.writeBurst(dc.ctx(), rng, n); err != nil {
			dc.t.Fatal(err)
		}
		ops -= n
	}
}

// startWriter writes bursts to every replica in the background.
func (dc *dupCluster) startWriter(seed uint64) *writer {
	return startBurstWriter(mrand.New(mrand.NewPCG(seed, 0x78)), dc.writeBurst)
}

// deviceSHA returns the sha256 of the image every replica holds: they
// must all be equal.
func (dc *dupCluster) deviceSHA() string {
	dc.t.Helper()
	var first string
	for i, s := range dc.s {
		sha, err := nbdSHA(dc.ctx(), s.nbdAddr, volume, dc.devSize)
		if err != nil {
			dc.t.Fatalf("%s: %v", s.Name, err)
		}
		if i == 0 {
			first = sha
		} else if sha != first {
			dc.t.Fatalf("the replicas differ: %s has sha256 %s, %s has %s", dc.s[0].Name, first, s.Name, sha)
		}
	}
	return first
}

// snapshot takes an explicit snapshot on storage sx with walbc and
// captures the image at it (nothing writes meanwhile).
func (dc *dupCluster) snapshot(sx controller.Server) snapshot {
	dc.t.Helper()
	gid := gidOut(dc.t, dc.mustWalbc(sx, "snapshot", volume))
	return snapshot{gid: gid, sha: dc.deviceSHA(), at: time.Now()}
}

// waitRestorable waits (at most a minute) until gid is restorable on ax,
// kicking the storages and proxies every second so that no retry backoff
// delays the test.
func (dc *dupCluster) waitRestorable(ax controller.Server, gid uint64) {
	dc.t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		err := dc.ctl.WaitForRestorable(ctx, ax, volume, gid)
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			dc.t.Fatalf("%s: gid %d not restorable after a minute: %v", ax.Name, gid, err)
		}
		dc.kickAll()
	}
}

// verifyRestore restores s on ax with walbc -wait, hashes the image at the
// path the archive reports, compares it with the image at the snapshot,
// and deletes it.
func (dc *dupCluster) verifyRestore(ax controller.Server, s snapshot) {
	dc.t.Helper()
	g := fmt.Sprint(s.gid)
	dc.mustWalbcWait(ax, "restore", volume, g)
	path := dc.mustWalbc(ax, "get", "restored-path", volume, g)
	sha, err := fileSHA(path, dc.devSize)
	if err != nil {
		dc.t.Fatal(err)
	}
	if sha != s.sha {
		dc.t.Fatalf("%s: gid %d: restored image %s has sha256 %s, the device had %s at the snapshot", ax.Name, s.gid, path, sha, s.sha)
	}
	dc.mustWalbc(ax, "del-restored", volume, g)
}

// restorable returns ax's restorable gids (explicit ones; all with all).
func (dc *dupCluster) restorable(ax controller.Server, all bool) []uint64 {
	dc.t.Helper()
	gids, err := dc.ctl.GetRestorableGids(dc.ctx(), ax, volume, all)
	if err != nil {
		dc.t.Fatal(err)
	}
	return gids
}

// checkRestorable checks that nothing corrupt is restorable on ax: every
// explicit snapshot it lists is one the test took (or the end of a
// backup it captured), and restores to exactly the image captured then.
// It returns the gids it checked.
func (dc *dupCluster) checkRestorable(ax controller.Server, known []snapshot) []uint64 {
	dc.t.Helper()
	byGid := map[uint64]snapshot{}
	for _, s := range known {
		byGid[s.gid] = s
	}
	gids := dc.restorable(ax, false)
	for _, g := range gids {
		s, ok := byGid[g]
		if !ok {
			dc.t.Fatalf("%s lists gid %d as restorable, a snapshot the test never took (known %v, listed %v)", ax.Name, g, snapGids(known), gids)
		}
		dc.verifyRestore(ax, s)
	}
	return gids
}

// snapGids lists the gids of snaps.
func snapGids(snaps []snapshot) []uint64 {
	var g []uint64
	for _, s := range snaps {
		g = append(g, s.gid)
	}
	return g
}

// fullBackup runs a full backup of the volume from sx with nothing
// writing, through the controller (PrepareBackup: the primary archive is
// initialized and synchronizing on every proxy; then full-bkp and the
// wait), and returns its first restorable snapshot with the image then.
func (dc *dupCluster) fullBackup(sx controller.Server) snapshot {
	dc.t.Helper()
	gid, err := dc.ctl.FullBackup(dc.ctx(), sx, volume, &controller.BackupOptions{BulkSize: 64 << 10})
	if err != nil {
		dc.t.Fatalf("full backup from %s: %v", sx.Name, err)
	}
	dc.requireState(sx, "Target")
	dc.requireState(dc.a[0].Server, "Archived")
	return snapshot{gid: gid, sha: dc.deviceSHA(), at: time.Now()}
}

// proxySentGid returns the highest end gid of the wdiffs proxy px's log
// says it sent to an archive (its msg="wdiff sent" ... gid=N lines), or 0:
// which proxy carried a snapshot's logs shows only there.
func proxySentGid(px *dupServer) uint64 {
	b, err := os.ReadFile(px.p.logPath)
	if err != nil {
		return 0
	}
	var top uint64
	for _, l := range strings.Split(string(b), "\n") {
		if !strings.Contains(l, `msg="wdiff sent"`) {
			continue
		}
		for _, f := range strings.Fields(l) {
			if v, ok := strings.CutPrefix(f, "gid="); ok {
				if g, err := strconv.ParseUint(v, 10, 64); err == nil {
					top = max(top, g)
				}
			}
		}
	}
	return top
}

// waitProxyAvailable waits (at most 30 s, kicking) until storage sx's
// status says proxy px is available again (its heartbeat saw it answer).
func (dc *dupCluster) waitProxyAvailable(sx controller.Server, px *dupServer) {
	dc.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		out, err := dc.walbc(sx, "status")
		if err == nil {
			for _, l := range strings.Split(out, "\n") {
				if strings.Contains(l, "addr:"+px.Addr+"\t") && strings.Contains(l, "available:true") {
					return
				}
			}
		}
		if time.Now().After(deadline) {
			dc.t.Fatalf("%s does not see %s available after 30 s: %v\n%s", sx.Name, px.Name, err, out)
		}
		dc.kickAll()
		time.Sleep(100 * time.Millisecond)
	}
}

// waitQueueEmpty waits (at most d, kicking) until proxy px holds no wdiff
// for archive ax, and reports whether it came to that.
func (dc *dupCluster) waitQueueEmpty(px *dupServer, ax controller.Server, d time.Duration) bool {
	dc.t.Helper()
	deadline := time.Now().Add(d)
	for {
		q, err := dc.walbc(px.Server, "get", "proxy-diff", volume, ax.Name)
		if err == nil && q == "" {
			return true
		}
		if time.Now().After(deadline) {
			dc.t.Logf("  %s still holds wdiffs for %s after %v: %q %v", px.Name, ax.Name, d, firstLineStr(q), err)
			return false
		}
		dc.kickAll()
		time.Sleep(100 * time.Millisecond)
	}
}

// groupArgs are walbc's group-mode options naming every server of the
// group (-storage, -proxy, -archive NAME=HOST:PORT,...): with them walbc
// runs the Python controller's operations (go-standby, hash-backup,
// replicate-once, synchronize, ...) instead of one server command.
func (dc *dupCluster) groupArgs() []string {
	list := func(ss []controller.Server) string {
		var items []string
		for _, s := range ss {
			items = append(items, s.Name+"="+s.Addr)
		}
		return strings.Join(items, ",")
	}
	var st []controller.Server
	for _, s := range dc.s {
		st = append(st, s.Server)
	}
	return []string{"-id", "e2e", "-storage", list(st), "-proxy", list(servers(dc.p)), "-archive", list(servers(dc.a))}
}

// walbcGroup runs a walbc group command and returns its trimmed output.
func (dc *dupCluster) walbcGroup(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := run(ctx, bin(binWalbc), append(dc.groupArgs(), args...)...)
	return strings.TrimSpace(out), err
}

func (dc *dupCluster) mustWalbcGroup(args ...string) string {
	dc.t.Helper()
	out, err := dc.walbcGroup(args...)
	if err != nil {
		dc.t.Fatal(err)
	}
	return out
}

// waitProxySent waits (at most 10 s) until proxy px's log says it sent
// the wdiffs up to gid: the archive may list the snapshot a moment before
// the proxy logs the end of the send.
func (dc *dupCluster) waitProxySent(px *dupServer, gid uint64, what string) {
	dc.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := proxySentGid(px)
		if got >= gid {
			return
		}
		if time.Now().After(deadline) {
			dc.t.Fatalf("%s: %s's log shows wdiffs sent up to gid %d, not %d", what, px.Name, got, gid)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
