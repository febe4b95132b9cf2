package group

import (
	"crypto/tls"
	"log/slog"
	"time"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/archive"
	"github.com/walb-go/walb/proxy"
	"github.com/walb-go/walb/server"
	"github.com/walb-go/walb/storage"
	"github.com/walb-go/walb/walb"
	"github.com/walb-go/walb/wdiff"
)

// Defaults of Config and VolumeOptions. The timings are shorter than the
// servers' own defaults (which walb-tools chose for hosts talking over a
// network) because every round trip of an embedded group is a loopback
// call in one process.
const (
	DefaultPollInterval      = 20 * time.Millisecond
	DefaultRetryMin          = 20 * time.Millisecond
	DefaultRetryMax          = time.Second
	DefaultMonitorInterval   = 10 * time.Millisecond
	DefaultHeartbeatInterval = 100 * time.Millisecond
	DefaultProxyCheckAge     = time.Second
	DefaultShutdownTimeout   = 30 * time.Second
	// DefaultCheckpointInterval is the devices' checkpoint period. A
	// storage can release the log only up to the last checkpoint, so with
	// walb's 10 s a log must hold 10 s of writes; embedded devices are
	// small and written in bursts, and a checkpoint costs two fdatasyncs.
	DefaultCheckpointInterval = 100 * time.Millisecond

	DefaultVolumeSize = 64 << 20
	DefaultMinLogSize = 16 << 20 // the default log size of small devices
	MinLogSize        = 4 << 20  // the smallest log size accepted
	DefaultPBS        = 4096
)

// Config configures a Group. The zero value starts one storage, one proxy
// and one archive in a temporary directory, on 127.0.0.1, without TLS,
// with snappy compression, NBD exports of the devices and restored images,
// and no logs.
type Config struct {
	// Dir holds everything the group writes (see the package
	// documentation for its layout). Empty means a new temporary
	// directory, removed by Close unless KeepDir is set. An existing
	// directory is reused: its devices are reopened (with crash recovery)
	// and the servers recover their volumes, so a group can be stopped and
	// started again.
	Dir     string
	KeepDir bool

	// Storages, Proxies and Archives are how many servers of each kind run
	// (0 means 1). They are named s0, s1..., p0..., a0...; a0 is the
	// primary archive, which full backups go to, and proxies are listed in
	// priority order.
	Storages, Proxies, Archives int

	// Compression is the codec of everything the group compresses: the
	// wdiffs the proxies make from wlogs, the diffs they send to archives
	// (the archive info BackupOptions sets), merged diffs, and the bulks of
	// full backups. Nil means wdiff.DefaultCompression (snappy), as
	// walb-tools.
	Compression *wdiff.Compression

	// ImageDir is the parent of the archives' image stores: archive aN
	// keeps its images in ImageDir/aN (created if needed). Empty means
	// Dir/images. Put it on XFS or btrfs for reflink clones.
	ImageDir string

	// Logger receives the logs of every server and device (keys vol, gid,
	// lsid, peer; each server's logger has "server" set to its name). Nil
	// discards them: an embedding program reports what it wants itself.
	Logger *slog.Logger

	// TLS runs every wire connection and NBD export of the group over TLS.
	// ServerTLS and ClientTLS are the configurations the servers listen
	// with and the clients (the servers' own clients of each other, the
	// controller, NBD clients) dial with; left nil, the group makes a
	// throwaway CA and a certificate for 127.0.0.1 (see CACertPEM).
	TLS                  bool
	ServerTLS, ClientTLS *tls.Config

	// NoNBD turns off the NBD servers: then devices are reached only
	// through Volume.Device and restored images only as files.
	NoNBD bool

	// Device is the template of every device's walb.Options (its Logger
	// defaults to the group's, its CheckpointInterval to
	// DefaultCheckpointInterval).
	Device walb.Options

	// PollInterval is the controller's polling period in its waits
	// (DefaultPollInterval).
	PollInterval time.Duration
	// RetryMin and RetryMax bound the background retry backoff of every
	// server (DefaultRetryMin, DefaultRetryMax).
	RetryMin, RetryMax time.Duration
	// ShutdownTimeout bounds each server's graceful shutdown in Close
	// before it is forced (DefaultShutdownTimeout); the context of Close
	// may cut it shorter.
	ShutdownTimeout time.Duration

	// StorageHook, ProxyHook and ArchiveHook, if set, adjust each server's
	// configuration after the group has filled it in and before the
	// server is built: the escape hatch for any option the group does not
	// set itself.
	StorageHook func(name string, scfg *server.Config, cfg *storage.Config)
	ProxyHook   func(name string, scfg *server.Config, cfg *proxy.Config)
	ArchiveHook func(name string, scfg *server.Config, cfg *archive.Config)
}

// withDefaults returns c with its zero fields filled and checks it.
func (c Config) withDefaults() (Config, error) {
	if c.Storages < 0 || c.Proxies < 0 || c.Archives < 0 {
		return c, errors.Wrapf(ErrConfig, "negative server count (storages %d, proxies %d, archives %d)",
			c.Storages, c.Proxies, c.Archives)
	}
	const maxServers = 100
	if c.Storages > maxServers || c.Proxies > maxServers || c.Archives > maxServers {
		return c, errors.Wrapf(ErrConfig, "at most %d servers of each kind", maxServers)
	}
	if c.Storages == 0 {
		c.Storages = 1
	}
	if c.Proxies == 0 {
		c.Proxies = 1
	}
	if c.Archives == 0 {
		c.Archives = 1
	}
	if c.Compression == nil {
		cmpr := wdiff.DefaultCompression
		c.Compression = &cmpr
	}
	if err := c.Compression.Validate(); err != nil {
		return c, errors.Wrapf(ErrConfig, "compression %s: %v", c.Compression, err)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Device.Logger == nil {
		c.Device.Logger = c.Logger
	}
	if c.Device.CheckpointInterval == 0 {
		c.Device.CheckpointInterval = DefaultCheckpointInterval
	}
	if c.PollInterval <= 0 {
		c.PollInterval = DefaultPollInterval
	}
	if c.RetryMin <= 0 {
		c.RetryMin = DefaultRetryMin
	}
	if c.RetryMax <= 0 {
		c.RetryMax = DefaultRetryMax
	}
	if c.RetryMax < c.RetryMin {
		return c, errors.Wrapf(ErrConfig, "RetryMax %v below RetryMin %v", c.RetryMax, c.RetryMin)
	}
	if c.ShutdownTimeout <= 0 {
		c.ShutdownTimeout = DefaultShutdownTimeout
	}
	if !c.TLS && (c.ServerTLS != nil || c.ClientTLS != nil) {
		return c, errors.Wrap(ErrConfig, "ServerTLS or ClientTLS set without TLS")
	}
	if c.TLS && (c.ServerTLS == nil) != (c.ClientTLS == nil) {
		return c, errors.Wrap(ErrConfig, "set both ServerTLS and ClientTLS, or neither")
	}
	return c, nil
}

// VolumeOptions configure a new volume (AddVolume). The zero value makes a
// 64 MiB device with a 16 MiB log and 4 KiB physical blocks on storage s0.
type VolumeOptions struct {
	// Size is the device size in bytes, a multiple of PBS and of 4096
	// (DefaultVolumeSize).
	Size int64
	// LogSize is the log device's size in bytes: the log ring holds the
	// writes not yet sent to a proxy, so it bounds how far the device may
	// run ahead of the backup before the log overflows (default a quarter
	// of Size, at least DefaultMinLogSize; at least MinLogSize). It is a
	// sparse file: only the ring's used part takes space.
	LogSize int64
	// PBS is the physical block size, 512 to 4096 (DefaultPBS).
	PBS uint32
	// Storage is the index of the storage the volume belongs to (s0 is 0).
	Storage int
}

func (o VolumeOptions) withDefaults(nStorages int) (VolumeOptions, error) {
	if o.Size == 0 {
		o.Size = DefaultVolumeSize
	}
	if o.PBS == 0 {
		o.PBS = DefaultPBS
	}
	switch o.PBS {
	case 512, 1024, 2048, 4096:
	default:
		return o, errors.Wrapf(ErrConfig, "physical block size %d: want 512, 1024, 2048 or 4096", o.PBS)
	}
	if o.Size < 0 || o.Size%4096 != 0 {
		return o, errors.Wrapf(ErrConfig, "device size %d: want a positive multiple of 4096", o.Size)
	}
	if o.LogSize == 0 {
		o.LogSize = max(o.Size/4, DefaultMinLogSize)
		o.LogSize -= o.LogSize % 4096
	}
	if o.LogSize < MinLogSize || o.LogSize%int64(o.PBS) != 0 {
		return o, errors.Wrapf(ErrConfig, "log size %d: want a multiple of %d of at least %d", o.LogSize, o.PBS, MinLogSize)
	}
	if o.Storage < 0 || o.Storage >= nStorages {
		return o, errors.Wrapf(ErrConfig, "storage index %d: the group has %d storages", o.Storage, nStorages)
	}
	return o, nil
}
