package devhost

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/nbd"
	"github.com/walb-go/walb/walb"
)

// Defaults of the walb-dev daemon.
const (
	DefaultBaseDir       = "/var/lib/walb-dev"
	DefaultNBDAddr       = "127.0.0.1:10809"
	DefaultControlSocket = "/run/walb-dev.sock"
	// DefaultShutdownTimeout bounds the graceful part of a shutdown: NBD
	// requests in flight get this long to finish.
	DefaultShutdownTimeout = 30 * time.Second
)

// Config configures a walb-dev daemon.
type Config struct {
	// BaseDir holds the registry (DefaultBaseDir if empty).
	BaseDir string
	// NBDAddr is where exports are served: host:port for TCP (port 0 picks
	// one), or a path (anything containing '/') for a unix socket.
	// DefaultNBDAddr if empty.
	NBDAddr string
	// ControlSocket is the path of the control socket
	// (DefaultControlSocket if empty).
	ControlSocket string
	// TLSCert and TLSKey, when both set, make TLS mandatory on the NBD
	// port (clients must use NBD_OPT_STARTTLS, e.g. nbds:// URIs).
	TLSCert, TLSKey string
	// Logger receives every log; nil means slog.Default().
	Logger *slog.Logger
	// Device is the template of every device's walb.Options.
	Device walb.Options
	// DrainTimeout is HostOptions.DrainTimeout.
	DrainTimeout time.Duration
	// ShutdownTimeout bounds the graceful NBD shutdown
	// (DefaultShutdownTimeout if zero).
	ShutdownTimeout time.Duration
}

// Daemon is a running walb-dev: a Host whose devices are exported by an NBD
// server and controlled through a ControlServer.
type Daemon struct {
	cfg     Config
	log     *slog.Logger
	host    *Host
	nbd     *nbd.Server
	nbdL    net.Listener
	ctl     *ControlServer
	ctlL    net.Listener
	ctlPath string
	wg      sync.WaitGroup
	once    sync.Once
	err     error
}

// StartDaemon opens the host, listens on the NBD address and the control
// socket and serves both in the background until Shutdown.
func StartDaemon(ctx context.Context, cfg Config) (*Daemon, error) {
	if cfg.BaseDir == "" {
		cfg.BaseDir = DefaultBaseDir
	}
	if cfg.NBDAddr == "" {
		cfg.NBDAddr = DefaultNBDAddr
	}
	if cfg.ControlSocket == "" {
		cfg.ControlSocket = DefaultControlSocket
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.ShutdownTimeout <= 0 {
		cfg.ShutdownTimeout = DefaultShutdownTimeout
	}
	d := &Daemon{cfg: cfg, log: cfg.Logger, ctlPath: cfg.ControlSocket}

	nopts := nbd.Options{Logger: cfg.Logger}
	if cfg.TLSCert != "" || cfg.TLSKey != "" {
		if cfg.TLSCert == "" || cfg.TLSKey == "" {
			return nil, errors.Wrap(ErrInvalid, "TLS needs both a certificate and a key")
		}
		cert, err := tls.LoadX509KeyPair(cfg.TLSCert, cfg.TLSKey)
		if err != nil {
			return nil, errors.Wrapf(ErrInvalid, "TLS key pair: %v", err)
		}
		nopts.TLS = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		nopts.RequireTLS = true
	}
	d.nbd = nbd.NewServer(nopts)

	network := "tcp"
	if strings.Contains(cfg.NBDAddr, "/") {
		network = "unix"
		// A stale socket of a crashed daemon is in the way; a live one
		// makes Listen fail below.
		if fi, err := os.Lstat(cfg.NBDAddr); err == nil && fi.Mode()&os.ModeSocket != 0 {
			if c, err := net.DialTimeout("unix", cfg.NBDAddr, time.Second); err == nil {
				c.Close()
				return nil, errors.Wrapf(ErrBusy, "an NBD server is listening on %s", cfg.NBDAddr)
			}
			_ = os.Remove(cfg.NBDAddr)
		}
	}
	var err error
	if d.nbdL, err = (&net.ListenConfig{}).Listen(ctx, network, cfg.NBDAddr); err != nil {
		return nil, errors.Wrapf(ErrBusy, "NBD listen on %s: %v", cfg.NBDAddr, err)
	}

	d.host, err = OpenHost(ctx, cfg.BaseDir, HostOptions{
		Logger: cfg.Logger, NBD: d.nbd, ExportURI: d.exportURI, Device: cfg.Device, DrainTimeout: cfg.DrainTimeout,
	})
	if err != nil {
		d.nbdL.Close()
		return nil, err
	}
	if d.ctlL, err = ListenControl(cfg.ControlSocket); err != nil {
		d.nbdL.Close()
		d.host.Close()
		return nil, err
	}
	d.ctl = NewControlServer(d.host, cfg.Logger)

	d.wg.Add(2)
	go func() {
		defer d.wg.Done()
		if err := d.nbd.Serve(context.Background(), d.nbdL); err != nil && !errors.Is(err, nbd.ErrServerClosed) {
			d.log.Error("devhost: NBD server stopped", "err", err.Error())
		}
	}()
	go func() {
		defer d.wg.Done()
		if err := d.ctl.Serve(context.Background(), d.ctlL); err != nil && !errors.Is(err, ErrShutdown) {
			d.log.Error("devhost: control server stopped", "err", err.Error())
		}
	}()
	d.log.Info("devhost: walb-dev serving", "base", d.host.BaseDir(), "nbd", d.nbdL.Addr().String(),
		"control", cfg.ControlSocket, "tls", nopts.TLS != nil)
	return d, nil
}

// exportURI is the URI clients use for the export of a device.
func (d *Daemon) exportURI(name string) string {
	scheme := "nbd"
	if d.cfg.TLSCert != "" {
		scheme = "nbds"
	}
	a := d.nbdL.Addr()
	if a.Network() == "unix" {
		// '/' is allowed in a query; keeping it makes the URI readable.
		sock := strings.ReplaceAll(url.QueryEscape(a.String()), "%2F", "/")
		return fmt.Sprintf("%s+unix:///%s?socket=%s", scheme, url.PathEscape(name), sock)
	}
	return fmt.Sprintf("%s://%s/%s", scheme, a.String(), url.PathEscape(name))
}

// NBDAddr returns the address the NBD server listens on.
func (d *Daemon) NBDAddr() net.Addr { return d.nbdL.Addr() }

// ControlSocket returns the path of the control socket.
func (d *Daemon) ControlSocket() string { return d.ctlPath }

// Host returns the daemon's host.
func (d *Daemon) Host() *Host { return d.host }

// Shutdown stops the daemon gracefully: the control socket closes (requests
// in progress are cancelled), frozen devices are melted, the NBD server
// stops accepting and lets the requests it already read finish (at most ShutdownTimeout, or until ctx
// ends), then every device is closed with a final checkpoint. It returns
// the first error; later calls return the same.
func (d *Daemon) Shutdown(ctx context.Context) error {
	d.once.Do(func() {
		d.ctl.Shutdown()
		os.Remove(d.ctlPath)
		d.host.MeltAll()
		sctx, cancel := context.WithTimeout(ctx, d.cfg.ShutdownTimeout)
		defer cancel()
		if err := d.nbd.Shutdown(sctx); err != nil {
			d.log.Warn("devhost: NBD connections closed before their requests finished", "err", err.Error())
		}
		d.wg.Wait()
		if d.nbdL.Addr().Network() == "unix" {
			os.Remove(d.nbdL.Addr().String())
		}
		d.err = d.host.Close()
		if d.err == nil {
			d.log.Info("devhost: walb-dev stopped")
		}
	})
	return d.err
}

// Run runs a daemon until ctx ends (the walb-dev command cancels it on
// SIGTERM and SIGINT), then shuts it down gracefully.
func Run(ctx context.Context, cfg Config) error {
	d, err := StartDaemon(ctx, cfg)
	if err != nil {
		return err
	}
	<-ctx.Done()
	d.log.Info("devhost: shutting down", "cause", context.Cause(ctx))
	return d.Shutdown(context.Background())
}
