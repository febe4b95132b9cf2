package kernel

import (
	"context"
	"encoding/binary"
	"math"
	"os"

	"github.com/pkg/errors"
)

// listBatch is how many LIST_DEV records one ioctl asks for, as walb-tools'
// list command does.
const listBatch = 32

// Controller talks to the control node /dev/walb/control: it creates,
// deletes and lists walb devices. The zero value uses the real node, ioctl
// and stat; tests set the fields.
type Controller struct {
	// Path of the control node; ControlPath if empty.
	Path string
	// Ioctl performs the ioctls; SysIoctl if nil.
	Ioctl IoctlFunc
	// Stat resolves device paths to device numbers; StatBlockDevice if nil.
	Stat StatFunc
}

// NewController returns a Controller for the real control node.
func NewController() *Controller { return &Controller{} }

func (c *Controller) node(flag int) node {
	n := node{path: c.Path, flag: flag, ioctl: c.Ioctl}
	if n.path == "" {
		n.path = ControlPath
	}
	if n.ioctl == nil {
		n.ioctl = SysIoctl
	}
	return n
}

func (c *Controller) stat(path string) (DevNum, error) {
	st := c.Stat
	if st == nil {
		st = StatBlockDevice
	}
	major, minor, err := st(path)
	if err != nil {
		return DevNum{}, err
	}
	return DevNum{major, minor}, nil
}

// control runs one command on the control node.
func (c *Controller) control(ctx context.Context, ctl *Ctl, in, out []byte) error {
	return c.node(os.O_RDWR).exchange(ctx, ReqControl, ctl, in, out)
}

// Version asks the driver for its version (wdevc get-version).
func (c *Controller) Version(ctx context.Context) (Version, error) {
	return c.node(os.O_RDONLY).version(ctx)
}

// GetMajor returns the block major number of walb devices.
func (c *Controller) GetMajor(ctx context.Context) (uint32, error) {
	ctl := Ctl{Command: CmdGetMajor}
	if err := c.control(ctx, &ctl, nil, nil); err != nil {
		return 0, err
	}
	return ctl.K2U.WMajor, nil
}

// NumOfDev returns the number of walb devices.
func (c *Controller) NumOfDev(ctx context.Context) (int, error) {
	ctl := Ctl{Command: CmdNumOfDev}
	if err := c.control(ctx, &ctl, nil, nil); err != nil {
		return 0, err
	}
	if ctl.ValInt < 0 {
		return 0, errors.Wrapf(ErrBadReply, "NUM_OF_DEV: negative count %d", ctl.ValInt)
	}
	return int(ctl.ValInt), nil
}

// ListDevRange returns up to limit walb devices whose minor is in
// [minor0, minor1), in minor order (one LIST_DEV ioctl).
func (c *Controller) ListDevRange(ctx context.Context, minor0, minor1 uint32, limit int) ([]DiskData, error) {
	if minor0 >= minor1 {
		return nil, errors.Wrapf(ErrInvalidArgument, "LIST_DEV: empty minor range [%d, %d)", minor0, minor1)
	}
	if limit <= 0 || limit > math.MaxInt32/DiskDataSize {
		return nil, errors.Wrapf(ErrInvalidArgument, "LIST_DEV: limit of %d records", limit)
	}
	in := make([]byte, 8)
	binary.LittleEndian.PutUint32(in[0:], minor0)
	binary.LittleEndian.PutUint32(in[4:], minor1)
	out := make([]byte, limit*DiskDataSize)
	ctl := Ctl{Command: CmdListDev}
	if err := c.control(ctx, &ctl, in, out); err != nil {
		return nil, err
	}
	n := int(ctl.ValInt)
	if n < 0 || n > limit {
		return nil, errors.Wrapf(ErrBadReply, "LIST_DEV: %d records for a buffer of %d", ctl.ValInt, limit)
	}
	recs := make([]DiskData, n)
	for i := range recs {
		d, err := UnmarshalDiskData(out[i*DiskDataSize : (i+1)*DiskDataSize])
		if err != nil {
			return nil, err
		}
		// The paging in ListDev relies on this order to terminate.
		if d.Minor < minor0 || d.Minor >= minor1 || (i > 0 && d.Minor <= recs[i-1].Minor) {
			return nil, errors.Wrapf(ErrBadReply, "LIST_DEV: record %d has minor %d, out of order or outside [%d, %d)", i, d.Minor, minor0, minor1)
		}
		recs[i] = d
	}
	return recs, nil
}

// ListDev returns every walb device in minor order (wdevc list). It pages
// through the minor space like walb-tools: the next request starts two past
// the last minor seen, because walb minors are even and the driver indexes
// devices by minor/2.
func (c *Controller) ListDev(ctx context.Context) ([]DiskData, error) {
	var all []DiskData
	start := uint32(0)
	for {
		recs, err := c.ListDevRange(ctx, start, math.MaxUint32, listBatch)
		if err != nil {
			return nil, err
		}
		all = append(all, recs...)
		if len(recs) < listBatch {
			return all, nil
		}
		last := recs[len(recs)-1].Minor
		if last >= math.MaxUint32-2 {
			return all, nil
		}
		start = last + 2
	}
}

// Started describes a walb device START_DEV created.
type Started struct {
	Name  string     // device name: the node is /dev/walb/Name
	Major uint32     // walb major
	Minor uint32     // walb minor (even)
	Param StartParam // the parameters as the driver echoed them
}

// Path is the device node of the started device.
func (s Started) Path() string { return DevDir + s.Name }

// StartDev creates a walb device on the log device ldev and the data device
// ddev, both given as paths of block device nodes (wdevc create-wdev). The
// log device must have been formatted (package walb formats it). The driver
// picks the minor.
func (c *Controller) StartDev(ctx context.Context, ldev, ddev string, p StartParam) (Started, error) {
	if err := p.Validate(); err != nil {
		return Started{}, err
	}
	l, err := c.stat(ldev)
	if err != nil {
		return Started{}, errors.Wrap(err, "kernel: log device")
	}
	d, err := c.stat(ddev)
	if err != nil {
		return Started{}, errors.Wrap(err, "kernel: data device")
	}
	if l == d {
		return Started{}, errors.Wrapf(ErrSameDevice, "%s and %s are both %d:%d", ldev, ddev, l.Major, l.Minor)
	}
	return c.StartDevNum(ctx, l, d, p)
}

// StartDevNum is StartDev with the devices given by number.
func (c *Controller) StartDevNum(ctx context.Context, ldev, ddev DevNum, p StartParam) (Started, error) {
	if err := p.Validate(); err != nil {
		return Started{}, err
	}
	in, err := p.Marshal()
	if err != nil {
		return Started{}, err
	}
	out := make([]byte, StartParamSize)
	ctl := Ctl{
		Command: CmdStartDev,
		U2K: CtlData{
			WMinor: DynamicMinor,
			LMajor: ldev.Major, LMinor: ldev.Minor,
			DMajor: ddev.Major, DMinor: ddev.Minor,
		},
	}
	if err := c.control(ctx, &ctl, in[:], out); err != nil {
		return Started{}, err
	}
	echo, err := UnmarshalStartParam(out)
	if err != nil {
		return Started{}, err
	}
	s := Started{Name: echo.Name, Major: ctl.K2U.WMajor, Minor: ctl.K2U.WMinor, Param: echo}
	if s.Name != "" {
		return s, nil
	}
	// The driver echoes the request, so an empty name stays empty even though
	// the driver chose one (the super block's, or minor/2). Ask for it.
	end := uint32(math.MaxUint32)
	if s.Minor < math.MaxUint32-2 {
		end = s.Minor + 2
	}
	recs, err := c.ListDevRange(ctx, s.Minor, end, 1)
	if err != nil {
		return s, errors.WithMessagef(err, "kernel: device %d:%d started, but listing its name failed", s.Major, s.Minor)
	}
	if len(recs) != 1 || recs[0].Minor != s.Minor {
		return s, errors.Wrapf(ErrBadReply, "device %d:%d started but is not listed", s.Major, s.Minor)
	}
	s.Name = recs[0].Name()
	return s, nil
}

// StopDev deletes the walb device whose node is wdev (wdevc delete-wdev).
// Without force the driver refuses while the device is open (ErrBusy,
// ErrDeviceOpen); with force it tears the device down anyway and destroys it
// once the last opener is gone.
func (c *Controller) StopDev(ctx context.Context, wdev string, force bool) error {
	w, err := c.stat(wdev)
	if err != nil {
		return errors.Wrap(err, "kernel: walb device")
	}
	return c.StopDevNum(ctx, w, force)
}

// StopDevNum is StopDev with the device given by number.
func (c *Controller) StopDevNum(ctx context.Context, wdev DevNum, force bool) error {
	ctl := Ctl{Command: CmdStopDev, U2K: CtlData{WMajor: wdev.Major, WMinor: wdev.Minor}}
	if force {
		ctl.ValInt = 1
	}
	return c.control(ctx, &ctl, nil, nil)
}
