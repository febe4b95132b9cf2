package group

import (
	"context"
	"os"
	"path/filepath"
	"time"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/archive"
	"github.com/walb-go/walb/controller"
	"github.com/walb-go/walb/imagestore"
	"github.com/walb-go/walb/proxy"
	"github.com/walb-go/walb/server"
	"github.com/walb-go/walb/storage"
)

// forceGrace bounds the wait for a server after its forced shutdown: the
// framework cancels every handler and task then, so only a stuck one keeps
// it longer, and Close must not hang on it.
const forceGrace = 10 * time.Second

// runner is one server goroutine: its Run, its end, and how to stop it.
type runner struct {
	name     string
	kind     controller.Kind
	addr     string
	shutdown func(server.ShutdownMode)
	done     chan struct{} // closed when Run returned; nil if never run
	err      error         // Run's result, valid after done
}

func (r *runner) started() bool { return r.done != nil }

func (r *runner) server() controller.Server {
	return controller.Server{Name: r.name, Addr: r.addr, Kind: r.kind}
}

// run starts fn (a server's Run) on ctx.
func (r *runner) run(ctx context.Context, fn func(context.Context) error) {
	r.done = make(chan struct{})
	go func() {
		defer close(r.done)
		r.err = fn(ctx)
	}()
}

// stop shuts the server down gracefully and forces it after timeout or
// when ctx ends.
func (r *runner) stop(ctx context.Context, timeout time.Duration) error {
	if !r.started() {
		return nil
	}
	r.shutdown(server.Graceful)
	t := time.NewTimer(timeout)
	defer t.Stop()
	var why string
	select {
	case <-r.done:
		return r.runErr()
	case <-ctx.Done():
		why = ctx.Err().Error()
	case <-t.C:
		why = "graceful shutdown timed out after " + timeout.String()
	}
	r.shutdown(server.Force)
	select {
	case <-r.done:
		return errors.Wrapf(ErrServer, "%s forced to stop (%s); run: %v", r.name, why, r.runErr())
	case <-time.After(forceGrace):
		return errors.Wrapf(ErrServer, "%s did not stop within %v of a forced shutdown (%s)", r.name, forceGrace, why)
	}
}

func (r *runner) runErr() error {
	if r.err == nil || errors.Is(r.err, context.Canceled) {
		return nil
	}
	return errors.Wrapf(r.err, "group: %s", r.name)
}

type storageNode struct {
	runner
	srv    *storage.Server
	devs   *storage.DeviceMap
	devDir string // DIR/devices/sN
}

type proxyNode struct {
	runner
	srv *proxy.Server
}

type archiveNode struct {
	runner
	srv *archive.Server
	nbd *nbdNode // nil with NoNBD
}

// baseDir makes the base directory of a server.
func (g *Group) baseDir(name string) (string, error) {
	d := filepath.Join(g.dir, name)
	if err := os.MkdirAll(d, 0o700); err != nil {
		return "", errors.Wrapf(err, "group: base directory of %s", name)
	}
	return d, nil
}

func (g *Group) serverConfig(name string) server.Config {
	return server.Config{
		ID:       name,
		Addr:     g.listenAddr(name),
		Wire:     g.serverWire,
		Logger:   g.log, // the framework adds "server" itself
		RetryMin: g.cfg.RetryMin,
		RetryMax: g.cfg.RetryMax,
	}
}

func (g *Group) startArchive(ctx context.Context, name string) (*archiveNode, error) {
	base, err := g.baseDir(name)
	if err != nil {
		return nil, err
	}
	imgParent := g.cfg.ImageDir
	if imgParent == "" {
		imgParent = filepath.Join(g.dir, "images")
	}
	imgDir := filepath.Join(imgParent, name)
	if err := os.MkdirAll(imgDir, 0o700); err != nil {
		return nil, errors.Wrapf(err, "group: image directory of %s", name)
	}
	logger := g.log.With("server", name)
	store, err := imagestore.OpenDir(ctx, imgDir, &imagestore.DirOptions{Logger: logger})
	if err != nil {
		return nil, errors.Wrapf(err, "group: image store of %s", name)
	}
	a := &archiveNode{runner: runner{name: name, kind: controller.KindArchive}}
	if !g.cfg.NoNBD {
		if a.nbd, err = g.startNBD(name); err != nil {
			return nil, err
		}
	}
	cmpr := *g.cfg.Compression
	ecfg := archive.Config{
		BaseDir: base,
		Images:  store,
		Logger:  logger,
		// The devices zero what is discarded; restores must too, or a
		// restored image would differ from the device it backs up.
		Discard:          archive.DiscardPassdown,
		MergeCompression: &cmpr,
		ClientWire:       g.clientWire,
	}
	if a.nbd != nil {
		ecfg.NBD = a.nbd.srv
	}
	scfg := g.serverConfig(name)
	if g.cfg.ArchiveHook != nil {
		g.cfg.ArchiveHook(name, &scfg, &ecfg)
	}
	srv, err := archive.NewServer(scfg, ecfg)
	if err != nil {
		return a, errors.Wrapf(err, "group: %s", name)
	}
	if err := srv.Listen(); err != nil {
		return a, errors.Wrapf(err, "group: %s listen", name)
	}
	a.srv, a.addr, a.shutdown = srv, srv.Addr().String(), srv.Shutdown
	a.run(g.runCtx, srv.Run)
	return a, nil
}

func (g *Group) startProxy(name string) (*proxyNode, error) {
	base, err := g.baseDir(name)
	if err != nil {
		return nil, err
	}
	cmpr := *g.cfg.Compression
	pcfg := proxy.Config{
		BaseDir:            base,
		Archive:            proxy.NewArchiveClient(archive.ClientOptions{ClientID: name, Wire: g.clientWire}),
		Delay:              g.cfg.RetryMin,
		MaxDelay:           g.cfg.RetryMax,
		ReceiveCompression: &cmpr,
		Logger:             g.log.With("server", name),
	}
	scfg := g.serverConfig(name)
	if g.cfg.ProxyHook != nil {
		g.cfg.ProxyHook(name, &scfg, &pcfg)
	}
	srv, err := proxy.NewServer(scfg, pcfg)
	if err != nil {
		return nil, errors.Wrapf(err, "group: %s", name)
	}
	if err := srv.Listen(); err != nil {
		return nil, errors.Wrapf(err, "group: %s listen", name)
	}
	p := &proxyNode{runner: runner{name: name, kind: controller.KindProxy, addr: srv.Addr().String(), shutdown: srv.Shutdown}, srv: srv}
	p.run(g.runCtx, srv.Run)
	return p, nil
}

func (g *Group) startStorage(s *storageNode) error {
	base, err := g.baseDir(s.name)
	if err != nil {
		return err
	}
	proxies := make([]string, len(g.proxies))
	for i, p := range g.proxies {
		proxies[i] = p.addr
	}
	cmpr := *g.cfg.Compression
	cfg := storage.Config{
		BaseDir:     base,
		ID:          s.name,
		Archive:     g.archives[0].addr,
		Proxies:     proxies,
		Devices:     s.devs,
		ProxyClient: storage.WireProxies{Client: &proxy.Client{ID: s.name, Wire: g.clientWire}},
		ArchiveClient: storage.WireArchive{Options: archive.FullSyncOptions{
			ClientOptions: archive.ClientOptions{ClientID: s.name, Wire: g.clientWire},
			Compression:   &cmpr,
		}},
		RetryMin:          g.cfg.RetryMin,
		RetryMax:          g.cfg.RetryMax,
		MonitorInterval:   DefaultMonitorInterval,
		HeartbeatInterval: DefaultHeartbeatInterval,
		ProxyCheckAge:     DefaultProxyCheckAge,
		Logger:            g.log.With("server", s.name),
	}
	scfg := g.serverConfig(s.name)
	if g.cfg.StorageHook != nil {
		g.cfg.StorageHook(s.name, &scfg, &cfg)
	}
	srv, err := storage.NewServer(scfg, cfg)
	if err != nil {
		return errors.Wrapf(err, "group: %s", s.name)
	}
	if err := srv.Server().Listen(); err != nil {
		return errors.Wrapf(err, "group: %s listen", s.name)
	}
	s.srv, s.addr, s.shutdown = srv, srv.Server().Addr().String(), srv.Server().Shutdown
	s.run(g.runCtx, srv.Run)
	return nil
}

// storageOf returns the node of storage index i.
func (g *Group) storageOf(i int) *storageNode { return g.storages[i] }
