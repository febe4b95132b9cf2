// Command walb-storage is the storage server of a WalB backup group: it
// watches WalB devices, assigns gids to snapshots, sends the devices' logs
// to the proxies and runs full backups to the primary archive. The devices
// are those of a walb-dev daemon (package devhost), reached through its
// control socket (-devhost). See package storage, or run it with -h.
package main

import (
	"context"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/archive"
	"github.com/walb-go/walb/devhost"
	"github.com/walb-go/walb/internal/cli"
	"github.com/walb-go/walb/proxy"
	"github.com/walb-go/walb/server"
	"github.com/walb-go/walb/storage"
	"github.com/walb-go/walb/wdiff"
	"github.com/walb-go/walb/wire"
)

func main() { cli.Main(run) }

// flags are the command line, as strings until checked.
type flags struct {
	port, base, log, id, archive, proxies, devhost    string
	maxconn, fg, bg, wl, snapintvl                    string
	delay, maxdelay, timeout, fst, tsdintvl, syncCmpr string
	kaidle, kaintvl, kacnt                            string
	debug, ka                                         bool
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var f flags
	o := cli.NewOptions("walb-storage", "Storage server: send WalB device logs to proxies, full backups to the archive.")
	o.String(&f.port, "p", "PORT", "5000", "listen port, or HOST:PORT, or unix:/PATH")
	o.String(&f.base, "b", "BASE_DIR", "", "base directory of the volumes (required)")
	o.String(&f.log, "l", "LOG", "-", "log file ('-' = stderr; a relative path is under BASE_DIR)")
	o.String(&f.id, "id", "ID", "", "server id (default: the host name)")
	o.String(&f.archive, "archive", "HOST:PORT", "", "primary archive (required)")
	o.String(&f.proxies, "proxy", "HOST:PORT,...", "", "proxies, highest priority first (required)")
	o.String(&f.devhost, "devhost", "SOCKET", devhost.DefaultControlSocket, "control socket of the walb-dev daemon hosting the devices")
	o.String(&f.maxconn, "maxconn", "N", "10", "max concurrent connections")
	o.String(&f.fg, "fg", "N", "2", "max foreground tasks (backups)")
	o.String(&f.bg, "bg", "N", "1", "background workers (wlog transfers)")
	o.String(&f.wl, "wl", "MiB", "128", "max wlog size sent at once, MiB")
	o.String(&f.snapintvl, "snapintvl", "SEC", "10", "implicit snapshot interval, seconds")
	o.String(&f.delay, "delay", "SEC", "1", "first retry delay of a failed transfer, seconds")
	o.String(&f.maxdelay, "maxdelay", "SEC", "300", "max retry delay, seconds")
	o.String(&f.timeout, "to", "SEC", "10", "socket timeout, seconds")
	o.String(&f.fst, "fst", "BPS", "0", "full scan throttle, bytes per second (0 = unlimited)")
	o.String(&f.tsdintvl, "tsdintvl", "SEC", "60", "ts-delta interval, seconds")
	o.String(&f.syncCmpr, "sync-cmpr", "TYPE:LEVEL:NCPU", "snappy:0:1", "compression of full backup bulks")
	o.Bool(&f.debug, "debug", "debug logs")
	o.Bool(&f.ka, "ka", "enable TCP keepalive")
	o.String(&f.kaidle, "kaidle", "SEC", "1800", "keepalive idle time, seconds (max 86400)")
	o.String(&f.kaintvl, "kaintvl", "SEC", "60", "keepalive interval, seconds (max 3600)")
	o.String(&f.kacnt, "kacnt", "N", "10", "keepalive probes (max 100)")
	if err := o.Parse(args); err != nil {
		if errors.Is(err, cli.ErrHelp) {
			o.Usage(stdout)
		}
		return err
	}
	scfg, cfg, closeLog, closeDevs, err := configure(f, stderr)
	if err != nil {
		return err
	}
	defer closeLog()
	defer closeDevs()
	s, err := storage.NewServer(scfg, cfg)
	if err != nil {
		return err
	}
	return s.Run(ctx)
}

// configure checks the flags and builds the server and storage configs.
func configure(f flags, stderr io.Writer) (server.Config, storage.Config, func(), func(), error) {
	var scfg server.Config
	var cfg storage.Config
	nop := func() {}
	fail := func(format string, a ...any) (server.Config, storage.Config, func(), func(), error) {
		return scfg, cfg, nop, nop, errors.Wrapf(cli.ErrUsage, format, a...)
	}
	num := func(name, v string, lo, hi int64) (int64, error) {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < lo || n > hi {
			return 0, errors.Wrapf(cli.ErrUsage, "-%s %q: want an integer in [%d, %d]", name, v, lo, hi)
		}
		return n, nil
	}
	var n [13]int64
	specs := []struct {
		name, v string
		lo, hi  int64
	}{
		{"maxconn", f.maxconn, 1, 1 << 16}, {"fg", f.fg, 1, 1 << 16}, {"bg", f.bg, 1, 1 << 16},
		{"wl", f.wl, 1, 1 << 20}, {"snapintvl", f.snapintvl, 1, 86400 * 365},
		{"delay", f.delay, 1, 86400}, {"maxdelay", f.maxdelay, 1, 86400}, {"to", f.timeout, 1, 86400},
		{"fst", f.fst, 0, 1 << 50}, {"tsdintvl", f.tsdintvl, 1, 86400 * 365},
		{"kaidle", f.kaidle, 1, 86400}, {"kaintvl", f.kaintvl, 1, 3600}, {"kacnt", f.kacnt, 1, 100},
	}
	for i, sp := range specs {
		v, err := num(sp.name, sp.v, sp.lo, sp.hi)
		if err != nil {
			return scfg, cfg, nop, nop, err
		}
		n[i] = v
	}
	maxconn, fg, bg, wl, snapintvl, delay, maxdelay, to, fst, tsdintvl, kaidle, kaintvl, kacnt :=
		n[0], n[1], n[2], n[3], n[4], n[5], n[6], n[7], n[8], n[9], n[10], n[11], n[12]
	if f.base == "" {
		return fail("-b BASE_DIR is required")
	}
	if f.archive == "" {
		return fail("-archive HOST:PORT is required")
	}
	if f.proxies == "" {
		return fail("-proxy HOST:PORT[,HOST:PORT...] is required")
	}
	var proxies []string
	for _, p := range strings.Split(f.proxies, ",") {
		if _, _, err := net.SplitHostPort(p); err != nil {
			return fail("-proxy: %q is not HOST:PORT", p)
		}
		proxies = append(proxies, p)
	}
	if _, _, err := net.SplitHostPort(f.archive); err != nil {
		return fail("-archive: %q is not HOST:PORT", f.archive)
	}
	addr := f.port
	if !strings.Contains(addr, ":") {
		if _, err := num("p", addr, 1, 65535); err != nil {
			return scfg, cfg, nop, nop, err
		}
		addr = ":" + addr
	}
	cmpr, err := wdiff.ParseCompression(f.syncCmpr)
	if err != nil {
		return fail("-sync-cmpr: %v", err)
	}
	maxdelay = max(maxdelay, delay) // walb-tools raises maxdelay to delay

	logw, closeLog, err := openLog(f.log, f.base, stderr)
	if err != nil {
		return scfg, cfg, nop, nop, err
	}
	level := slog.LevelInfo
	if f.debug {
		level = slog.LevelDebug
	}
	logger := slog.New(server.NewLogHandler(logw, level))

	wopts := &wire.Options{IOTimeout: time.Duration(to) * time.Second}
	if f.ka {
		wopts.KeepAlive = &net.KeepAliveConfig{Enable: true, Idle: time.Duration(kaidle) * time.Second,
			Interval: time.Duration(kaintvl) * time.Second, Count: int(kacnt)}
	}
	id := f.id
	if id == "" {
		if id, err = os.Hostname(); err != nil {
			closeLog()
			return scfg, cfg, nop, nop, errors.Wrap(err, "walb-storage: -id defaults to the host name")
		}
	}
	devs := storage.NewDevhostDevices(devhost.NewClient(f.devhost))
	scfg = server.Config{ID: id, Addr: addr, MaxConns: int(maxconn), Wire: wopts, Logger: logger}
	cfg = storage.Config{
		BaseDir: f.base, ID: id, Archive: f.archive, Proxies: proxies, Devices: devs,
		ProxyClient:      storage.WireProxies{Client: &proxy.Client{ID: id, Wire: wopts}},
		ArchiveClient:    storage.WireArchive{Options: archive.FullSyncOptions{ClientOptions: archive.ClientOptions{ClientID: id, Wire: wopts}, Compression: &cmpr}},
		MaxWlogSendBytes: uint64(wl) << 20, SnapshotInterval: time.Duration(snapintvl) * time.Second,
		MaxBackground: int(bg), MaxForeground: int(fg),
		RetryMin: time.Duration(delay) * time.Second, RetryMax: time.Duration(maxdelay) * time.Second,
		FullScanBps: uint64(fst), TsDeltaInterval: time.Duration(tsdintvl) * time.Second,
	}
	return scfg, cfg, closeLog, func() { devs.Close() }, nil
}

// openLog opens the log file: "-" is stderr, a relative path is under the
// base directory.
func openLog(path, base string, stderr io.Writer) (io.Writer, func(), error) {
	if path == "-" {
		return stderr, func() {}, nil
	}
	if !filepath.IsAbs(path) {
		path = filepath.Join(base, path)
	}
	fh, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o644)
	if err != nil {
		return nil, nil, errors.Wrap(err, "walb-storage: log file")
	}
	return fh, func() { fh.Close() }, nil
}
