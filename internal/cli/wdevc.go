package cli

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/pkg/errors"
	"golang.org/x/sys/unix"

	"github.com/walb-go/walb/devhost"
	"github.com/walb-go/walb/walb"
	"github.com/walb-go/walb/walb/kernel"
)

// wdevcSocket is the default daemon socket; wdevcKernelControl is the node
// whose presence selects kernel mode when that socket does not exist;
// newKernelController builds the kernel-mode controller. Tests replace
// them.
var (
	wdevcSocket         = devhost.DefaultControlSocket
	wdevcKernelControl  = kernel.ControlPath
	newKernelController = func() devhost.Controller { return devhost.NewKernelController() }
)

// wdevcEnv is what every wdevc command gets: the output streams and the
// mode options (-s, -kernel), which may come before or after the command.
type wdevcEnv struct {
	stdout, stderr io.Writer
	socket         string
	socketSet      bool
	kernel         bool
	isKernel       bool // the mode chosen by controller()
}

// modeOptions registers -s and -kernel on a command's option set.
func (e *wdevcEnv) modeOptions(o *Options) {
	o.opts = append(o.opts, &option{name: "s", arg: "SOCKET", kind: kindString, def: devhost.DefaultControlSocket,
		help: "control socket of the walb-dev daemon",
		set:  func(v string) error { e.socket, e.socketSet = v, true; return nil }})
	o.Bool(&e.kernel, "kernel", "control devices of the WalB kernel driver (/dev/walb) instead of walb-dev")
}

// controller picks the mode: -kernel, else the daemon if -s was given or
// its socket exists, else the kernel driver if its control node exists,
// else the daemon (whose absence the first call then reports).
func (e *wdevcEnv) controller() devhost.Controller {
	switch {
	case e.kernel:
	case e.socketSet:
		return devhost.NewClient(e.socket)
	default:
		if _, err := os.Stat(e.socket); err == nil {
			return devhost.NewClient(e.socket)
		}
		if _, err := os.Stat(wdevcKernelControl); err != nil {
			return devhost.NewClient(e.socket)
		}
	}
	e.isKernel = true
	return newKernelController()
}

// wdevcCommand is one wdevc command.
type wdevcCommand struct {
	name, params, help string
	run                func(ctx context.Context, e *wdevcEnv, args []string) error
}

var wdevcCommands []wdevcCommand

func init() {
	wdevcCommands = []wdevcCommand{
		{"format-ldev", "LDEV DDEV", "Format a log device (works without the daemon).", wdevcFormatLdev},
		{"create-wdev", "LDEV DDEV", "Create a walb device.", wdevcCreateWdev},
		{"delete-wdev", "WDEV", "Delete a walb device.", wdevcDeleteWdev},
		{"list", "", "List the walb devices.", wdevcList},
		{"set-checkpoint-interval", "WDEV INTERVAL_MS", "Set the checkpoint interval.", wdevcSetCheckpointInterval},
		{"get-checkpoint-interval", "WDEV", "Print the checkpoint interval [ms].", wdevcValue("get-checkpoint-interval", func(c devhost.Controller, ctx context.Context, n string) (uint64, error) {
			iv, err := c.CheckpointInterval(ctx, n)
			return uint64(iv / time.Millisecond), err
		})},
		{"force-checkpoint", "WDEV", "Take a checkpoint now.", wdevcAction("force-checkpoint", devhost.Controller.TakeCheckpoint)},
		{"set-oldest-lsid", "WDEV LSID", "Release the log below LSID.", wdevcSetOldestLsid},
		{"get-oldest-lsid", "WDEV", "Print the oldest lsid.", wdevcValue("get-oldest-lsid", devhost.Controller.OldestLsid)},
		{"get-written-lsid", "WDEV", "Print the written lsid.", wdevcValue("get-written-lsid", devhost.Controller.WrittenLsid)},
		{"get-permanent-lsid", "WDEV", "Print the permanent lsid.", wdevcValue("get-permanent-lsid", devhost.Controller.PermanentLsid)},
		{"get-completed-lsid", "WDEV", "Print the completed lsid.", wdevcValue("get-completed-lsid", devhost.Controller.CompletedLsid)},
		{"get-lsids", "WDEV", "Print every lsid at once, as the driver's sysfs walb/lsids.", wdevcGetLsids},
		{"get-log-usage", "WDEV", "Print the log usage [physical blocks].", wdevcValue("get-log-usage", devhost.Controller.LogUsage)},
		{"get-log-capacity", "WDEV", "Print the log capacity [physical blocks].", wdevcValue("get-log-capacity", devhost.Controller.LogCapacity)},
		{"is-flush-capable", "WDEV", "Print 1 if the device accepts flushes, else 0.", wdevcFlag("is-flush-capable", devhost.Controller.IsFlushCapable)},
		{"resize", "WDEV [SIZE_LB]", "Grow the device (default: to the data device size).", wdevcResize},
		{"reset-wal", "WDEV", "Clear the log: new uuid and salt, every lsid 0.", wdevcAction("reset-wal", devhost.Controller.ResetWAL)},
		{"is-log-overflow", "WDEV", "Print 1 if the log overflowed, else 0.", wdevcFlag("is-log-overflow", devhost.Controller.IsLogOverflow)},
		{"clear-wal", "WDEV [TIMEOUT_SEC]", "Release every permanent log once it is on the data device.", wdevcClearWal},
		{"freeze", "WDEV [TIMEOUT_SEC]", "Stop write processing (0: no timeout).", wdevcFreeze},
		{"melt", "WDEV", "Resume write processing.", wdevcAction("melt", devhost.Controller.Melt)},
		{"is-frozen", "WDEV", "Print 1 if the device is frozen, else 0 (alias is-flozen).", wdevcFlag("is-frozen", devhost.Controller.IsFrozen)},
		{"cat-log", "WDEV|LDEV_PATH", "Extract the log as a wlog file (like wlog-cat).", wdevcCatLog},
	}
}

func findWdevcCommand(name string) (wdevcCommand, bool) {
	if name == "is-flozen" { // walb-tools' spelling
		name = "is-frozen"
	}
	for _, c := range wdevcCommands {
		if c.name == name {
			return c, true
		}
	}
	return wdevcCommand{}, false
}

func wdevcUsage(w io.Writer) {
	fmt.Fprintf(w, "usage: wdevc [-s SOCKET] [-kernel] COMMAND ARGS... (wdevc help COMMAND for details)\n")
	fmt.Fprintf(w, "Control userspace walb devices of a walb-dev daemon, or WalB kernel devices.\n")
	fmt.Fprintf(w, "  %-22s %s\n", "-s SOCKET", "walb-dev control socket (default: "+devhost.DefaultControlSocket+")")
	fmt.Fprintf(w, "  %-22s %s\n", "-kernel", "use the WalB kernel driver (default when "+kernel.ControlPath+" exists and SOCKET does not)")
	fmt.Fprintf(w, "Commands (WDEV is a device name or /dev/walb/NAME):\n")
	for _, c := range wdevcCommands {
		fmt.Fprintf(w, "  %-24s %-18s %s\n", c.name, c.params, c.help)
	}
}

// Wdevc controls walb devices (wdevc): userspace devices through a walb-dev
// daemon, or kernel devices through ioctls, with walb-tools' command names
// and output.
func Wdevc(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	e := &wdevcEnv{stdout: stdout, stderr: stderr, socket: wdevcSocket}
	i := 0
	for ; i < len(args) && isOption(args[i]); i++ {
		switch strings.TrimLeft(args[i], "-") {
		case "h", "help":
			wdevcUsage(stdout)
			return ErrHelp
		case "kernel":
			e.kernel = true
		case "s":
			if i+1 >= len(args) {
				return errors.Wrap(ErrUsage, "option -s needs a value")
			}
			i++
			e.socket, e.socketSet = args[i], true
		default:
			return errors.Wrapf(ErrUsage, "unknown option %s", args[i])
		}
	}
	if i == len(args) {
		return errors.Wrap(ErrUsage, "no command")
	}
	name, rest := args[i], args[i+1:]
	if name == "help" {
		if len(rest) == 0 {
			wdevcUsage(stdout)
			return nil
		}
		c, ok := findWdevcCommand(rest[0])
		if !ok {
			return errors.Wrapf(ErrUsage, "unknown command %q", rest[0])
		}
		return c.run(ctx, e, []string{"-h"})
	}
	c, ok := findWdevcCommand(name)
	if !ok {
		return errors.Wrapf(ErrUsage, "unknown command %q", name)
	}
	return c.run(ctx, e, rest)
}

func wdevcOptions(e *wdevcEnv, cmd, desc string) *Options {
	o := NewOptions("wdevc "+cmd, desc)
	e.modeOptions(o)
	return o
}

// parseUint parses a decimal number of at most bits bits.
func parseUint(s, what string, bits int) (uint64, error) {
	v, err := strconv.ParseUint(s, 10, bits)
	if err != nil {
		return 0, errors.Wrapf(ErrUsage, "%s %q: want a number below 2^%d", what, s, bits)
	}
	return v, nil
}

// uint32Option adds an option taking a 32-bit number; 0 keeps the default.
func uint32Option(o *Options, p *uint32, name, arg, help string) {
	o.opts = append(o.opts, &option{name: name, arg: arg, help: help, kind: kindString,
		set: func(v string) error {
			n, err := parseUint(v, "-"+name, 32)
			*p = uint32(n)
			return err
		}})
}

func wdevcValue(cmd string, get func(devhost.Controller, context.Context, string) (uint64, error)) func(context.Context, *wdevcEnv, []string) error {
	return func(ctx context.Context, e *wdevcEnv, args []string) error {
		var wdev string
		o := wdevcOptions(e, cmd, "Print a value of the device.")
		o.Param(&wdev, "WDEV", "device name or /dev/walb/NAME", false)
		if err := parse(o, args, e.stdout); err != nil {
			return err
		}
		v, err := get(e.controller(), ctx, devhost.NameFromPath(wdev))
		if err != nil {
			return err
		}
		_, err = fmt.Fprintln(e.stdout, v)
		return err
	}
}

// wdevcGetLsids prints the lsids in the text of the driver's sysfs
// attribute walb/lsids, so that scripts parse one format for both kinds of
// device.
func wdevcGetLsids(ctx context.Context, e *wdevcEnv, args []string) error {
	var wdev string
	o := wdevcOptions(e, "get-lsids", "Print every lsid of the device, read at one instant, "+
		"in the format of the driver's sysfs attribute walb/lsids.")
	o.Param(&wdev, "WDEV", "device name or /dev/walb/NAME", false)
	if err := parse(o, args, e.stdout); err != nil {
		return err
	}
	l, err := e.controller().Lsids(ctx, devhost.NameFromPath(wdev))
	if err != nil {
		return err
	}
	s := kernel.LsidSet{Latest: l.Latest, Completed: l.Completed, Flush: l.Flush, Permanent: l.Permanent,
		Written: l.Written, PrevWritten: l.PrevWritten, Oldest: l.Oldest}
	_, err = io.WriteString(e.stdout, s.String())
	return err
}

func wdevcFlag(cmd string, get func(devhost.Controller, context.Context, string) (bool, error)) func(context.Context, *wdevcEnv, []string) error {
	return wdevcValue(cmd, func(c devhost.Controller, ctx context.Context, n string) (uint64, error) {
		b, err := get(c, ctx, n)
		if b {
			return 1, err
		}
		return 0, err
	})
}

func wdevcAction(cmd string, do func(devhost.Controller, context.Context, string) error) func(context.Context, *wdevcEnv, []string) error {
	return func(ctx context.Context, e *wdevcEnv, args []string) error {
		var wdev string
		o := wdevcOptions(e, cmd, "Operate on the device.")
		o.Param(&wdev, "WDEV", "device name or /dev/walb/NAME", false)
		if err := parse(o, args, e.stdout); err != nil {
			return err
		}
		return do(e.controller(), ctx, devhost.NameFromPath(wdev))
	}
}

func wdevcFormatLdev(ctx context.Context, e *wdevcEnv, args []string) error {
	var ldev, ddev, name string
	var pbs uint32
	var size uint64
	var noDiscard bool
	o := wdevcOptions(e, "format-ldev", "Format a log device for a data device (files or block devices). "+
		"The log device is discarded first (holes punched in a file) unless -nd.")
	o.Param(&ldev, "LDEV", "log device path", false)
	o.Param(&ddev, "DDEV", "data device path", false)
	o.String(&name, "n", "NAME", "", "device name stored in the super sector")
	uint32Option(o, &pbs, "pbs", "BYTES", "physical block size (default: the block device's, 512 for files)")
	o.Size(&size, "size", "LB", 0, "device size in logical blocks (default: the whole data device)")
	o.Bool(&noDiscard, "nd", "do not discard the log device")
	if err := parse(o, args, e.stdout); err != nil {
		return err
	}
	if name != "" {
		if err := devhost.ValidName(name); err != nil {
			return err
		}
	}
	if li, err1 := os.Stat(ldev); err1 == nil {
		if di, err2 := os.Stat(ddev); err2 == nil && os.SameFile(li, di) {
			return errors.Wrapf(devhost.ErrInvalid, "log device %s and data device %s are the same file", ldev, ddev)
		}
	}
	lf, err := devhost.OpenExclusive(ldev, "log device")
	if err != nil {
		return err
	}
	ls, err := walb.NewFileStorage(lf)
	if err != nil {
		lf.Close()
		return err
	}
	defer ls.Close()
	ds, err := walb.OpenFile(ddev, true)
	if err != nil {
		return err
	}
	defer ds.Close()
	if !noDiscard {
		if err := discardAll(lf, ls); err != nil {
			return err
		}
	}
	super, err := walb.Format(ls, ds, walb.FormatOptions{Name: name, PBS: pbs, DeviceSize: size})
	if err != nil {
		return err
	}
	if err := ls.Close(); err != nil {
		return err
	}
	_, err = fmt.Fprint(e.stdout, strings.TrimSuffix(super.String(), "\n")+"\n")
	return err
}

// discardAll drops the old content of a log device, as walb-tools does
// before formatting: BLKDISCARD on a block device, a punched hole over a
// file. Devices and file systems that cannot are left as they are.
func discardAll(f *os.File, st *walb.FileStorage) error {
	size, err := st.Size()
	if err != nil || size == 0 {
		return err
	}
	if st.IsBlockDevice() {
		r := [2]uint64{0, uint64(size)}
		err = ioctlDiscard(int(f.Fd()), &r)
	} else {
		err = unix.Fallocate(int(f.Fd()), unix.FALLOC_FL_PUNCH_HOLE|unix.FALLOC_FL_KEEP_SIZE, 0, size)
	}
	if err != nil && !errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.ENOTTY) && !errors.Is(err, unix.EINVAL) {
		return errors.Wrapf(err, "discard %s", f.Name())
	}
	return nil
}

func wdevcCreateWdev(ctx context.Context, e *wdevcEnv, args []string) error {
	var ldev, ddev string
	var co devhost.CreateOptions
	o := wdevcOptions(e, "create-wdev", "Create a walb device on a formatted log device and a data device. "+
		"Tuning options left out take the device's defaults (walb-dev's, or the driver's).")
	o.Param(&ldev, "LDEV", "log device path", false)
	o.Param(&ddev, "DDEV", "data device path", false)
	o.String(&co.Name, "n", "NAME", "", "device name (default: the name in the log device's super sector)")
	uint32Option(o, &co.MaxLogpackKB, "maxl", "KiB", "max logpack size [KiB]")
	uint32Option(o, &co.MaxPendingMB, "maxp", "MiB", "max pending size [MiB]")
	uint32Option(o, &co.MinPendingMB, "minp", "MiB", "min pending size [MiB]")
	uint32Option(o, &co.QueueStopTimeoutMs, "qp", "MS", "queue stopping period [ms] (kernel only)")
	uint32Option(o, &co.LogFlushIntervalMB, "fs", "MiB", "flush interval size [MiB]")
	uint32Option(o, &co.LogFlushIntervalMs, "fp", "MS", "flush interval period [ms]")
	uint32Option(o, &co.NPackBulk, "bp", "N", "number of packs in bulk (kernel only)")
	uint32Option(o, &co.NIOBulk, "bi", "N", "number of IOs in bulk (kernel only)")
	if err := parse(o, args, e.stdout); err != nil {
		return err
	}
	c := e.controller()
	di, err := c.CreateWdev(ctx, ldev, ddev, co)
	if err != nil {
		return err
	}
	if e.isKernel {
		_, err = fmt.Fprintf(e.stdout, "name %s\nmajor %d\nminor %d\n", di.Name, di.Major, di.Minor)
	} else {
		_, err = fmt.Fprintf(e.stdout, "name %s\nnbd %s\n", di.Name, di.URI)
	}
	return err
}

func wdevcDeleteWdev(ctx context.Context, e *wdevcEnv, args []string) error {
	var wdev string
	var force bool
	o := wdevcOptions(e, "delete-wdev", "Delete a walb device: its export is withdrawn, it is closed with a final checkpoint and unregistered.")
	o.Param(&wdev, "WDEV", "device name or /dev/walb/NAME", false)
	o.Bool(&force, "f", "delete even if frozen (walb-dev) or open (kernel)")
	if err := parse(o, args, e.stdout); err != nil {
		return err
	}
	return e.controller().DeleteWdev(ctx, devhost.NameFromPath(wdev), force)
}

func wdevcList(ctx context.Context, e *wdevcEnv, args []string) error {
	var long bool
	o := wdevcOptions(e, "list", "List the walb devices: walb-tools' \"MAJOR MINOR walb/NAME\" lines for kernel devices, "+
		"one name per line for walb-dev devices.")
	o.Bool(&long, "l", "walb-dev: also print state, size [LB], NBD URI, log and data devices, and the error if any")
	if err := parse(o, args, e.stdout); err != nil {
		return err
	}
	devs, err := e.controller().List(ctx)
	if err != nil {
		return err
	}
	bw := bufio.NewWriter(e.stdout)
	for _, d := range devs {
		switch {
		case e.isKernel:
			fmt.Fprintf(bw, "%d %d %s%s\n", d.Major, d.Minor, kernel.DirName+"/", d.Name)
		case long:
			uri := d.URI
			if uri == "" {
				uri = "-"
			}
			fmt.Fprintf(bw, "%s %s %d %s %s %s", d.Name, d.State, d.SizeLB, uri, d.LogDevice, d.DataDevice)
			if d.Error != "" {
				fmt.Fprintf(bw, " error: %s", d.Error)
			}
			fmt.Fprintln(bw)
		default:
			fmt.Fprintln(bw, d.Name)
		}
	}
	return bw.Flush()
}

func wdevcSetOldestLsid(ctx context.Context, e *wdevcEnv, args []string) error {
	var wdev, lsid string
	o := wdevcOptions(e, "set-oldest-lsid", "Release the log below LSID (after extracting it). LSID must be the written lsid "+
		"of the last checkpoint, or a logpack lsid between the oldest lsid and it.")
	o.Param(&wdev, "WDEV", "device name or /dev/walb/NAME", false)
	o.Param(&lsid, "LSID", "new oldest lsid", false)
	if err := parse(o, args, e.stdout); err != nil {
		return err
	}
	v, err := parseUint(lsid, "LSID", 64)
	if err != nil {
		return err
	}
	return e.controller().SetOldestLsid(ctx, devhost.NameFromPath(wdev), v)
}

func wdevcSetCheckpointInterval(ctx context.Context, e *wdevcEnv, args []string) error {
	var wdev, ms string
	o := wdevcOptions(e, "set-checkpoint-interval", "Set the checkpoint interval (0 disables checkpoints).")
	o.Param(&wdev, "WDEV", "device name or /dev/walb/NAME", false)
	o.Param(&ms, "INTERVAL_MS", "interval [ms], at most a day", false)
	if err := parse(o, args, e.stdout); err != nil {
		return err
	}
	v, err := parseUint(ms, "INTERVAL_MS", 32)
	if err != nil {
		return err
	}
	return e.controller().SetCheckpointInterval(ctx, devhost.NameFromPath(wdev), time.Duration(v)*time.Millisecond)
}

func wdevcResize(ctx context.Context, e *wdevcEnv, args []string) error {
	var wdev, size string
	o := wdevcOptions(e, "resize", "Grow the device; shrinking is refused. NBD clients see the new size when they reconnect.")
	o.Param(&wdev, "WDEV", "device name or /dev/walb/NAME", false)
	o.Param(&size, "SIZE_LB", "new size [logical blocks], K/M/G/T suffixes allowed (default: the data device size)", true)
	if err := parse(o, args, e.stdout); err != nil {
		return err
	}
	var lb uint64
	if size != "" {
		var err error
		if lb, err = ParseSize(size); err != nil {
			return err
		}
	}
	return e.controller().Resize(ctx, devhost.NameFromPath(wdev), lb)
}

func wdevcFreeze(ctx context.Context, e *wdevcEnv, args []string) error {
	var wdev, timeout string
	o := wdevcOptions(e, "freeze", "Stop write processing; writes wait until melt.")
	o.Param(&wdev, "WDEV", "device name or /dev/walb/NAME", false)
	o.Param(&timeout, "TIMEOUT_SEC", "melt automatically after this many seconds (0: never, the default)", true)
	if err := parse(o, args, e.stdout); err != nil {
		return err
	}
	var sec uint64
	if timeout != "" {
		var err error
		if sec, err = parseUint(timeout, "TIMEOUT_SEC", 32); err != nil {
			return err
		}
	}
	return e.controller().Freeze(ctx, devhost.NameFromPath(wdev), time.Duration(sec)*time.Second)
}

// wdevcPollInterval is how often clear-wal checks the written lsid.
const wdevcPollInterval = 100 * time.Millisecond

func wdevcClearWal(ctx context.Context, e *wdevcEnv, args []string) error {
	var wdev, timeout string
	o := wdevcOptions(e, "clear-wal", "Wait until the permanent log is on the data device, take a checkpoint and "+
		"release that log (set-oldest-lsid to the permanent lsid).")
	o.Param(&wdev, "WDEV", "device name or /dev/walb/NAME", false)
	o.Param(&timeout, "TIMEOUT_SEC", "give up after this many seconds (0: never, the default)", true)
	if err := parse(o, args, e.stdout); err != nil {
		return err
	}
	var sec uint64
	if timeout != "" {
		var err error
		if sec, err = parseUint(timeout, "TIMEOUT_SEC", 32); err != nil {
			return err
		}
	}
	if sec > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, time.Duration(sec)*time.Second)
		defer cancel()
	}
	c, name := e.controller(), devhost.NameFromPath(wdev)
	permanent, err := c.PermanentLsid(ctx, name)
	if err != nil {
		return err
	}
	for {
		written, err := c.WrittenLsid(ctx, name)
		if err != nil {
			return err
		}
		if written >= permanent {
			break
		}
		select {
		case <-ctx.Done():
			return errors.Wrapf(ctx.Err(), "clear-wal: written lsid %d did not reach %d", written, permanent)
		case <-time.After(wdevcPollInterval):
		}
	}
	if err := c.TakeCheckpoint(ctx, name); err != nil {
		return err
	}
	return c.SetOldestLsid(ctx, name, permanent)
}

func wdevcCatLog(ctx context.Context, e *wdevcEnv, args []string) error {
	var src, out, b, en string
	o := wdevcOptions(e, "cat-log", "Extract the log in [-b, -e) as a wlog file, like walb-tools' wlog-cat. "+
		"WDEV (a name, or /dev/walb/NAME) reads a running device: the range defaults to [oldest, permanent). "+
		"A path containing '/' elsewhere reads a log device image that no device runs on: the range defaults to "+
		"everything from the oldest lsid to the first invalid logpack.")
	o.Param(&src, "WDEV|LDEV_PATH", "device, or log device image (use ./FILE for a file in this directory)", false)
	o.String(&out, "o", "WLOG_PATH", "-", "output wlog ('-' for stdout)")
	o.String(&b, "b", "LSID", "", "begin lsid (default: the oldest lsid)")
	o.String(&en, "e", "LSID", "", "end lsid (default: the permanent lsid, or the end of the log)")
	if err := parse(o, args, e.stdout); err != nil {
		return err
	}
	begin, end := devhost.AutoLsid, devhost.AutoLsid
	var err error
	if b != "" {
		if begin, err = parseUint(b, "-b", 64); err != nil {
			return err
		}
	}
	if en != "" {
		if end, err = parseUint(en, "-e", 64); err != nil {
			return err
		}
	}
	var w io.Writer
	var commit func() error
	if out == "-" {
		bw := bufio.NewWriterSize(e.stdout, 1<<20)
		w, commit = bw, bw.Flush
	} else {
		f, err := createOutput(out)
		if err != nil {
			return err
		}
		defer f.abort()
		w, commit = f, f.commit
	}
	if strings.Contains(src, "/") && !strings.HasPrefix(src, kernel.DevDir) {
		err = catLogImage(ctx, src, begin, end, w)
	} else {
		_, err = e.controller().CatLog(ctx, devhost.NameFromPath(src), begin, end, w)
	}
	if err != nil {
		return err
	}
	return commit()
}

// catLogImage extracts the log of a log device image that no device runs
// on, read-only and under a shared lock (so a running walb-dev device is
// refused). As wlog-cat does, begin is raised to the oldest lsid.
func catLogImage(ctx context.Context, path string, begin, end uint64, w io.Writer) error {
	f, err := devhost.OpenShared(path, "log device")
	if err != nil {
		return err
	}
	st, err := walb.NewFileStorage(f)
	if err != nil {
		f.Close()
		return err
	}
	ld, err := walb.NewLogDevice(st, st.PhysicalBlockSize())
	if err != nil {
		st.Close()
		return errors.WithMessage(err, path)
	}
	defer ld.Close()
	if begin == devhost.AutoLsid {
		begin = 0
	}
	_, err = ld.ReadLog(ctx, begin, end, w)
	return err
}

func init() {
	Tools["wdevc"] = Wdevc
}
