package storage

import (
	"context"
	"io"
	"net/url"
	"strings"
	"sync"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/devhost"
	"github.com/walb-go/walb/nbd"
	"github.com/walb-go/walb/walb"
	"github.com/walb-go/walb/wlog"
)

// DevhostDevices resolves a volume's device path as the name of a device
// of a walb-dev daemon (package devhost), controlled through a
// devhost.Controller (devhost.NewClient(socket) for the daemon, or a
// *devhost.Host in the same process) and read through its NBD export.
//
// A device's Lsids is one get-lsids call, so the seven indicators come
// from one instant; Info is one info call (the log's uuid, salt and block
// size, the device size, the ring size). SetOldestLsid passes the lsid to
// the device unchanged: the storage releases at most prev_written
// (formats.md §5.3), and the device refuses anything else.
type DevhostDevices struct {
	Ctl devhost.Controller

	mu   sync.Mutex
	devs map[string]*devhostDevice
}

// NewDevhostDevices returns a resolver over ctl.
func NewDevhostDevices(ctl devhost.Controller) *DevhostDevices {
	return &DevhostDevices{Ctl: ctl, devs: map[string]*devhostDevice{}}
}

// Resolve implements DeviceResolver: the device must exist and run.
func (d *DevhostDevices) Resolve(ctx context.Context, name string) (Device, error) {
	if _, err := devhostInfo(ctx, d.Ctl, name); err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if dev, ok := d.devs[name]; ok {
		return dev, nil
	}
	dev := &devhostDevice{ctl: d.Ctl, name: name}
	d.devs[name] = dev
	return dev, nil
}

// Close closes the NBD connections opened for full backups.
func (d *DevhostDevices) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var first error
	for _, dev := range d.devs {
		if err := dev.closeNBD(); err != nil && first == nil {
			first = err
		}
	}
	return first
}

func devhostInfo(ctx context.Context, ctl devhost.Controller, name string) (devhost.DeviceInfo, error) {
	list, err := ctl.List(ctx)
	if err != nil {
		return devhost.DeviceInfo{}, errors.WithMessage(err, "storage: list devices")
	}
	for _, di := range list {
		if di.Name != name {
			continue
		}
		if di.State != devhost.StateRunning {
			return di, errors.Wrapf(ErrNoDevice, "device %s is %s: %s", name, di.State, di.Error)
		}
		return di, nil
	}
	return devhost.DeviceInfo{}, errors.Wrapf(ErrNoDevice, "no device %q on the device host", name)
}

type devhostDevice struct {
	ctl  devhost.Controller
	name string

	mu  sync.Mutex
	nbd *nbd.Client
}

// Lsids implements Device.
func (d *devhostDevice) Lsids(ctx context.Context) (walb.Lsids, error) {
	return d.ctl.Lsids(ctx, d.name)
}

// TakeCheckpoint implements Checkpointer.
func (d *devhostDevice) TakeCheckpoint(ctx context.Context) error {
	return d.ctl.TakeCheckpoint(ctx, d.name)
}

// SetOldestLsid implements Device.
func (d *devhostDevice) SetOldestLsid(ctx context.Context, lsid uint64) error {
	return d.ctl.SetOldestLsid(ctx, d.name, lsid)
}

// IsLogOverflow implements Device.
func (d *devhostDevice) IsLogOverflow(ctx context.Context) (bool, error) {
	return d.ctl.IsLogOverflow(ctx, d.name)
}

// Info implements Device.
func (d *devhostDevice) Info(ctx context.Context) (DeviceInfo, error) {
	st, err := d.ctl.Info(ctx, d.name)
	switch {
	case errors.Is(err, devhost.ErrNotFound), errors.Is(err, devhost.ErrState):
		// Gone or not open since Resolve: as Resolve would say now.
		return DeviceInfo{}, errors.Wrapf(ErrNoDevice, "device %s: %v", d.name, err)
	case err != nil:
		return DeviceInfo{}, errors.WithMessagef(err, "storage: info of device %s", d.name)
	}
	return DeviceInfo{UUID: st.UUID, Salt: st.Salt, PBS: st.PBS, SizeLB: st.SizeLB, LogCapacityPB: st.LogCapacityPB}, nil
}

// NewPackReader implements Device with an extraction streamed through a
// pipe.
func (d *devhostDevice) NewPackReader(ctx context.Context, begin, end uint64) (PackReader, error) {
	cctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	pr, pw := io.Pipe()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, err := d.ctl.CatLog(cctx, d.name, begin, end, pw)
		pw.CloseWithError(err)
	}()
	r := &pipePackReader{cancel: cancel, pr: pr, done: done}
	rd, err := wlog.NewReader(pr)
	if err != nil {
		r.Close()
		return nil, errors.WithMessagef(err, "storage: extract the log of %s", d.name)
	}
	r.r = rd
	return r, nil
}

type pipePackReader struct {
	cancel context.CancelFunc
	pr     *io.PipeReader
	done   chan struct{}
	r      *wlog.Reader
	buf    []byte
}

func (p *pipePackReader) Next(ctx context.Context) (*wlog.PackHeader, []byte, error) {
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	h, err := p.r.NextPack()
	if err != nil {
		return nil, nil, err
	}
	if p.buf, err = p.r.ReadPackData(p.buf); err != nil {
		return nil, nil, err
	}
	return h, p.buf, nil
}

func (p *pipePackReader) Close() error {
	p.cancel()
	p.pr.Close()
	<-p.done
	return nil
}

// ReadAt implements Device through the device's NBD export. The connection
// is kept between calls; when a read fails (the daemon restarted and the
// cached connection is dead) it is dropped and the read is tried once more
// on a fresh one. Reads are safe to repeat.
func (d *devhostDevice) ReadAt(ctx context.Context, p []byte, off int64) (int, error) {
	var n int
	var err error
	for try := 0; try < 2; try++ {
		var c *nbd.Client
		if c, err = d.nbdClient(ctx); err != nil {
			return 0, err
		}
		if n, err = c.ReadAt(p, off); err == nil {
			return n, nil
		}
		d.closeNBD()
		if ctx.Err() != nil {
			break
		}
	}
	return n, err
}

func (d *devhostDevice) nbdClient(ctx context.Context) (*nbd.Client, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.nbd != nil {
		return d.nbd, nil
	}
	di, err := devhostInfo(ctx, d.ctl, d.name)
	if err != nil {
		return nil, err
	}
	network, addr, export, err := parseNBDURI(di.URI)
	if err != nil {
		return nil, err
	}
	c, err := nbd.Dial(ctx, network, addr, nbd.ClientOptions{Export: export})
	if err != nil {
		return nil, errors.WithMessagef(err, "storage: open the NBD export of %s", d.name)
	}
	d.nbd = c
	return c, nil
}

func (d *devhostDevice) closeNBD() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.nbd == nil {
		return nil
	}
	err := d.nbd.Close()
	d.nbd = nil
	return err
}

// parseNBDURI parses nbd://HOST:PORT/EXPORT and
// nbd+unix:///EXPORT?socket=PATH (TLS exports are not supported here).
func parseNBDURI(s string) (network, addr, export string, err error) {
	u, err := url.Parse(s)
	if err != nil {
		return "", "", "", errors.Wrapf(ErrNoDevice, "NBD URI %q: %v", s, err)
	}
	export = strings.TrimPrefix(u.Path, "/")
	switch u.Scheme {
	case "nbd":
		return "tcp", u.Host, export, nil
	case "nbd+unix":
		if sock := u.Query().Get("socket"); sock != "" {
			return "unix", sock, export, nil
		}
	}
	return "", "", "", errors.Wrapf(ErrNoDevice, "NBD URI %q: want nbd://HOST:PORT/NAME or nbd+unix:///NAME?socket=PATH", s)
}

// ResetWAL implements Device.
func (d *devhostDevice) ResetWAL(ctx context.Context) error { return d.ctl.ResetWAL(ctx, d.name) }

// Resize implements Device. The NBD connection is reopened so that reads
// see the new size.
func (d *devhostDevice) Resize(ctx context.Context, sizeLB uint64) error {
	if err := d.ctl.Resize(ctx, d.name, sizeLB); err != nil {
		return err
	}
	return d.closeNBD()
}
