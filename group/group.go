package group

import (
	"context"
	"crypto/tls"
	stderrors "errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/pkg/errors"
	"golang.org/x/sys/unix"

	"github.com/walb-go/walb/archive"
	"github.com/walb-go/walb/controller"
	"github.com/walb-go/walb/nbd"
	"github.com/walb-go/walb/proxy"
	"github.com/walb-go/walb/storage"
	"github.com/walb-go/walb/wire"
)

// Group is a running backup group: device host, storages, proxies and
// archives inside this process. Its methods are safe for concurrent use.
type Group struct {
	cfg    Config
	dir    string
	ownDir bool
	lock   *os.File
	log    *slog.Logger

	prevAddrs  map[string]string // addresses of the previous run on dir
	tls        *groupTLS         // nil without TLS
	serverWire *wire.Options
	clientWire *wire.Options

	runCtx    context.Context
	cancelRun context.CancelFunc

	devNBD   *nbdNode // nil with NoNBD
	storages []*storageNode
	proxies  []*proxyNode
	archives []*archiveNode
	layout   controller.Layout
	ctl      *controller.Controller

	mu      sync.Mutex
	closed  bool
	vols    map[string]*Volume // nil value: being created or deleted
	opWG    sync.WaitGroup     // AddVolume and DeleteVolume in progress
	closing sync.Once
	closeE  error
}

// Start starts a backup group as cfg says and returns once every server
// answers. ctx bounds the start only; the group runs until Close. On
// failure everything started is stopped again.
func Start(ctx context.Context, cfg Config) (*Group, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	g := &Group{cfg: cfg, log: cfg.Logger, vols: make(map[string]*Volume)}
	g.runCtx, g.cancelRun = context.WithCancel(context.Background())
	if err := g.start(ctx); err != nil {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cfg.ShutdownTimeout)
		defer cancel()
		if cerr := g.Close(sctx); cerr != nil {
			g.log.Warn("group: cleanup after a failed start", "err", cerr.Error())
		}
		return nil, err
	}
	return g, nil
}

func (g *Group) start(ctx context.Context) error {
	if err := g.openDir(); err != nil {
		return err
	}
	g.loadAddrs()
	if g.cfg.TLS {
		if g.cfg.ServerTLS != nil {
			g.tls = &groupTLS{server: g.cfg.ServerTLS, client: g.cfg.ClientTLS}
		} else {
			t, err := newThrowawayTLS(time.Now())
			if err != nil {
				return err
			}
			g.tls = t
		}
		g.serverWire = &wire.Options{TLS: g.tls.server}
		g.clientWire = &wire.Options{TLS: g.tls.client}
	}
	if !g.cfg.NoNBD {
		n, err := g.startNBD("devices")
		if err != nil {
			return err
		}
		g.devNBD = n
	}
	for i := range g.cfg.Storages {
		g.storages = append(g.storages, &storageNode{
			runner: runner{name: fmt.Sprintf("s%d", i), kind: controller.KindStorage},
			devs:   storage.NewDeviceMap(),
			devDir: filepath.Join(g.dir, "devices", fmt.Sprintf("s%d", i)),
		})
	}
	// Devices first: a storage that recovers its volumes resolves them.
	if err := g.openDevices(ctx); err != nil {
		return err
	}
	for i := range g.cfg.Archives {
		a, err := g.startArchive(ctx, fmt.Sprintf("a%d", i))
		if a != nil {
			g.archives = append(g.archives, a) // so that Close stops its NBD server
		}
		if err != nil {
			return err
		}
		g.layout.Archives = append(g.layout.Archives, a.server())
	}
	for i := range g.cfg.Proxies {
		p, err := g.startProxy(fmt.Sprintf("p%d", i))
		if err != nil {
			return err
		}
		g.proxies = append(g.proxies, p)
		g.layout.Proxies = append(g.layout.Proxies, p.server())
	}
	for _, s := range g.storages {
		if err := g.startStorage(s); err != nil {
			return err
		}
		g.layout.Storages = append(g.layout.Storages, s.server())
	}
	ctl, err := controller.New(g.layout, &controller.Options{
		ClientID:     "group",
		Wire:         g.clientWire,
		Logger:       g.log.With("server", "controller"),
		PollInterval: g.cfg.PollInterval,
	})
	if err != nil {
		return err
	}
	g.ctl = ctl
	if err := g.waitReady(ctx); err != nil {
		return err
	}
	if err := g.repairArchiveInfos(ctx); err != nil {
		return err
	}
	return g.saveAddrs()
}

// openDir creates or opens the group directory and locks it, so that two
// groups never share devices or server directories.
func (g *Group) openDir() error {
	dir := g.cfg.Dir
	if dir == "" {
		d, err := os.MkdirTemp("", "walb-group-*")
		if err != nil {
			return errors.Wrap(err, "group: temporary directory")
		}
		dir, g.ownDir = d, !g.cfg.KeepDir
	} else if err := os.MkdirAll(dir, 0o700); err != nil {
		return errors.Wrap(err, "group: directory")
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return errors.Wrap(err, "group: directory")
	}
	g.dir = abs
	f, err := os.OpenFile(filepath.Join(abs, "lock"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return errors.Wrap(err, "group: lock file")
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		return errors.Wrapf(ErrConfig, "directory %s is used by another group (%v)", abs, err)
	}
	g.lock = f
	return nil
}

// waitReady waits until every server answers get host-type, which a
// server does only after it recovered its volumes. A server whose Run
// ended meanwhile fails the start with its error.
func (g *Group) waitReady(ctx context.Context) error {
	for _, r := range g.runners() {
		s := r.server()
		for {
			select {
			case <-r.done:
				return errors.Wrapf(ErrServer, "%s stopped during start: %v", s, r.err)
			default:
			}
			cctx, cancel := context.WithTimeout(ctx, time.Second)
			kind, err := g.ctl.HostType(cctx, s)
			cancel()
			if err == nil {
				if kind != s.Kind.String() {
					return errors.Wrapf(ErrServer, "%s answers host type %q", s, kind)
				}
				break
			}
			select {
			case <-ctx.Done():
				return errors.Wrapf(ctx.Err(), "group: waiting for %s (last error: %v)", s, err)
			case <-r.done:
			case <-time.After(5 * time.Millisecond):
			}
		}
	}
	return nil
}

// runners lists the servers in start order: archives, proxies, storages.
func (g *Group) runners() []*runner {
	var rs []*runner
	for _, a := range g.archives {
		rs = append(rs, &a.runner)
	}
	for _, p := range g.proxies {
		rs = append(rs, &p.runner)
	}
	for _, s := range g.storages {
		rs = append(rs, &s.runner)
	}
	return slices.DeleteFunc(rs, func(r *runner) bool { return !r.started() })
}

// Close shuts the group down gracefully, after the AddVolume and
// DeleteVolume calls in progress, in the reverse order of the start: the NBD server of the devices (in-flight requests finish), the
// storages (running transfers finish), the proxies, the archives and their
// NBD servers, and last the devices, with a final checkpoint each. A
// server that does not stop within ShutdownTimeout, or before ctx ends, is
// forced. The group directory is removed if Start made it. Close returns
// the first errors met; later calls return the same.
func (g *Group) Close(ctx context.Context) error {
	g.closing.Do(func() {
		g.mu.Lock()
		g.closed = true
		g.mu.Unlock()
		// Volume operations hold devices and talk to the servers: let
		// them end first (they fail fast once servers go away).
		g.opWG.Wait()
		g.closeE = g.shutdown(ctx)
	})
	return g.closeE
}

func (g *Group) shutdown(ctx context.Context) error {
	var errs []error
	if g.devNBD != nil {
		errs = append(errs, g.devNBD.stop(ctx))
	}
	for i := len(g.storages) - 1; i >= 0; i-- {
		errs = append(errs, g.storages[i].stop(ctx, g.cfg.ShutdownTimeout))
	}
	for i := len(g.proxies) - 1; i >= 0; i-- {
		errs = append(errs, g.proxies[i].stop(ctx, g.cfg.ShutdownTimeout))
	}
	for i := len(g.archives) - 1; i >= 0; i-- {
		a := g.archives[i]
		errs = append(errs, a.stop(ctx, g.cfg.ShutdownTimeout))
		if a.nbd != nil {
			errs = append(errs, a.nbd.stop(ctx))
		}
	}
	g.cancelRun()
	g.mu.Lock()
	vols := make([]*Volume, 0, len(g.vols))
	for _, v := range g.vols {
		if v != nil {
			vols = append(vols, v)
		}
	}
	g.mu.Unlock()
	for _, v := range vols {
		if err := v.dev.Close(); err != nil {
			errs = append(errs, errors.Wrapf(err, "group: close device %s", v.name))
		}
	}
	if g.lock != nil {
		errs = append(errs, g.lock.Close())
	}
	if g.ownDir && g.dir != "" {
		errs = append(errs, os.RemoveAll(g.dir))
	}
	return stderrors.Join(errs...)
}

// Dir returns the group directory.
func (g *Group) Dir() string { return g.dir }

// Controller returns the controller of the group's servers: the SDK's
// front door for everything the group's own methods do not wrap.
func (g *Group) Controller() *controller.Controller { return g.ctl }

// Layout returns the group's servers: storages s0..., proxies p0... in
// priority order, archives a0... with the primary first.
func (g *Group) Layout() controller.Layout { return g.ctl.Layout() }

// Primary returns the primary archive, a0.
func (g *Group) Primary() controller.Server { return g.layout.Archives[0] }

// SyncOpt returns the archive info the group's proxies use for its
// archives: the group's compression and no delay.
func (g *Group) SyncOpt() controller.SyncOpt {
	o := controller.DefaultSyncOpt()
	o.Compression = *g.cfg.Compression
	return o
}

// BackupOptions returns the options of full backups in this group, so that
// the archive info they set on the proxies carries the group's compression.
func (g *Group) BackupOptions() *controller.BackupOptions {
	o := g.SyncOpt()
	return &controller.BackupOptions{Sync: &o}
}

// ClientTLS returns the TLS configuration clients of the group must use
// (nil without TLS): for controller.Options.Wire, nbd.ClientOptions.TLS,
// or a program of its own.
func (g *Group) ClientTLS() *tls.Config {
	if g.tls == nil {
		return nil
	}
	return g.tls.client
}

// ClientWire returns the wire options clients of the group's servers need
// (nil without TLS).
func (g *Group) ClientWire() *wire.Options { return g.clientWire }

// CACertPEM returns the certificate of the CA the group made for its TLS
// (nil if TLS is off or the configuration was given), so that external
// tools (qemu, nbdinfo, another process) can trust the servers.
func (g *Group) CACertPEM() []byte {
	if g.tls == nil {
		return nil
	}
	return g.tls.caPEM
}

// DeviceNBDAddr returns the address of the NBD server that exports the
// devices ("" with NoNBD).
func (g *Group) DeviceNBDAddr() string {
	if g.devNBD == nil {
		return ""
	}
	return g.devNBD.addr.String()
}

// ArchiveNBDAddr returns the address of the NBD server on which archive ax
// exports its restored images ("" with NoNBD or for a server that is not
// an archive of the group).
func (g *Group) ArchiveNBDAddr(ax controller.Server) string {
	for _, a := range g.archives {
		if a.name == ax.Name && a.nbd != nil {
			return a.nbd.addr.String()
		}
	}
	return ""
}

// RestoredURI returns the NBD URI of a restored image of archive ax, to
// read it with qemu-img, nbdcopy or nbd.Dial ("" when ax has no NBD server
// or the image no export).
func (g *Group) RestoredURI(ax controller.Server, img controller.RestoredImage) string {
	addr := g.ArchiveNBDAddr(ax)
	if addr == "" || img.Export == "" {
		return ""
	}
	return g.nbdURI(addr, img.Export)
}

func (g *Group) nbdURI(addr, export string) string {
	scheme := "nbd"
	if g.tls != nil {
		scheme = "nbds"
	}
	return scheme + "://" + addr + "/" + export
}

// Storage returns the storage server named name (s0...), for programs that
// drive its engine directly; nil if there is none.
func (g *Group) Storage(name string) *storage.Server {
	for _, s := range g.storages {
		if s.name == name {
			return s.srv
		}
	}
	return nil
}

// Proxy returns the proxy server named name (p0...); nil if there is none.
func (g *Group) Proxy(name string) *proxy.Server {
	for _, p := range g.proxies {
		if p.name == name {
			return p.srv
		}
	}
	return nil
}

// Archive returns the archive server named name (a0...); nil if there is
// none. Its Engine is the archive's volume engine.
func (g *Group) Archive(name string) *archive.Server {
	for _, a := range g.archives {
		if a.name == name {
			return a.srv
		}
	}
	return nil
}

// Volumes returns the group's volumes, sorted by name.
func (g *Group) Volumes() []*Volume {
	g.mu.Lock()
	defer g.mu.Unlock()
	vs := make([]*Volume, 0, len(g.vols))
	for _, v := range g.vols {
		if v != nil {
			vs = append(vs, v)
		}
	}
	sort.Slice(vs, func(i, j int) bool { return vs[i].name < vs[j].name })
	return vs
}

// Volume returns the volume named name.
func (g *Group) Volume(name string) (*Volume, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.closed {
		return nil, ErrClosed
	}
	v := g.vols[name]
	if v == nil {
		return nil, errors.Wrapf(ErrNotFound, "volume %s", name)
	}
	return v, nil
}

// nbdNode is one NBD server of the group on 127.0.0.1.
type nbdNode struct {
	srv  *nbd.Server
	addr net.Addr
	done chan struct{}
	err  error
}

func (g *Group) startNBD(what string) (*nbdNode, error) {
	l, err := net.Listen("tcp", g.listenAddr(nbdName(what)))
	if err != nil {
		return nil, errors.Wrapf(err, "group: NBD listener for %s", what)
	}
	opts := nbd.Options{Logger: g.log.With("server", nbdName(what))}
	if g.tls != nil {
		opts.TLS, opts.RequireTLS = g.tls.server, true
	}
	n := &nbdNode{srv: nbd.NewServer(opts), addr: l.Addr(), done: make(chan struct{})}
	go func() {
		defer close(n.done)
		if err := n.srv.Serve(g.runCtx, l); err != nil && !errors.Is(err, nbd.ErrServerClosed) && g.runCtx.Err() == nil {
			n.err = err
			g.log.Error("group: NBD server stopped", "nbd", what, "err", err.Error())
		}
	}()
	return n, nil
}

func (n *nbdNode) stop(ctx context.Context) error {
	err := n.srv.Shutdown(ctx)
	<-n.done
	if err != nil {
		return errors.Wrap(err, "group: NBD shutdown")
	}
	return n.err
}
