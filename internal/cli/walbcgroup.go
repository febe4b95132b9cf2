package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/controller"
	"github.com/walb-go/walb/wdiff"
)

// Group mode: given the servers of a backup group (-storage, -proxy,
// -archive NAME=HOST:PORT,...), walbc runs the operations of walb-tools'
// Python controller (walblib.Controller, system.md §8.2) instead of one
// server command. Their names are the Python method names with dashes;
// servers are named by their layout names:
//
//	walbc -storage s0=h0:5000 -proxy p0=h1:5100 -archive a0=h2:5200,a1=h3:5200 \
//	    replicate a0 vol0 a1 -synchronizing
//
// Group commands are synchronous (they end when the operation is complete,
// as the controller's methods do) except replicate-once-nbk; on a terminal
// the long ones show the copy's progress.

// walbcGroupCommand is one group command. run parses the command's own
// arguments (positional server names and values, and its options) and
// runs it; its result is printed like a value.
type walbcGroupCommand struct {
	name, params, help string
	run                func(ctx context.Context, g *walbcGroup, args []string) (any, error)
}

// walbcGroup is one group-mode run.
type walbcGroup struct {
	*walbcEnv
	ctx          context.Context
	layout       controller.Layout
	ctl          *controller.Controller
	progress     bool   // show the progress line
	stopProgress func() // set once it shows
}

// walbcWatch is one storage or archive volume whose copy progress is
// shown.
type walbcWatch struct {
	label string
	s     controller.Server
	vol   string
}

var walbcGroupCommands []walbcGroupCommand

func init() {
	walbcGroupCommands = []walbcGroupCommand{
		{name: "full-backup", params: "SX VOL [-bulk SIZE] [-cmpr C] [-delay S]",
			help: "Full backup from storage SX to the primary archive; prints the first restorable gid.", run: groupBackup(false)},
		{name: "hash-backup", params: "SX VOL [-bulk SIZE] [-cmpr C] [-delay S]",
			help: "Hash backup from storage SX to the primary archive; prints the new restorable gid.", run: groupBackup(true)},
		{name: "go-standby", params: "SX VOL", help: "Bring VOL on storage SX to Standby from SyncReady or Target.", run: groupGoStandby},
		{name: "is-overflow", params: "SX VOL", help: "Print 1 if VOL's log overflowed on storage SX, else 0.", run: groupIsOverflow},
		{name: "is-wdiff-send-error", params: "PX VOL AX", help: "Print 1 if proxy PX gave up sending VOL to archive AX, else 0.", run: groupIsWdiffSendError},
		{name: "copy-archive-info", params: "PSRC VOL PDST", help: "Give proxy PDST the archive infos PSRC has for VOL, and start it.", run: groupCopyArchiveInfo},
		{name: "is-synchronizing", params: "AX VOL", help: "Print 1 if every proxy forwards VOL to archive AX, 0 if none does.", run: groupIsSynchronizing},
		{name: "start-synchronizing", params: "AX VOL [-cmpr C] [-delay S]", help: "Make every proxy forward VOL to archive AX.", run: groupStartSynchronizing},
		{name: "stop-synchronizing", params: "AX VOL", help: "Make every proxy stop forwarding VOL to archive AX (its queue is dropped).", run: groupStopSynchronizing},
		{name: "resize", params: "VOL SIZE [zeroclear]", help: "Grow VOL on every archive, then every storage (SIZE: whole MiB, k/m/g/t suffixes).", run: groupResize},
		{name: "replicate-once", params: "ASRC VOL ADST [-gid G] [-resync] [-dont-merge] [-cmpr C] [-max-merge SIZE] [-bulk SIZE]",
			help: "Replicate VOL from archive ASRC to ADST and wait; prints the gid.", run: groupReplicateOnce(true)},
		{name: "replicate-once-nbk", params: "ASRC VOL ADST [options of replicate-once]",
			help: "Start replicate-once and print the gid without waiting (see wait-for-replicated).", run: groupReplicateOnce(false)},
		{name: "wait-for-replicated", params: "ASRC VOL ADST GID", help: "Wait until the replication of VOL from ASRC to ADST has reached GID.", run: groupWaitForReplicated},
		{name: "replicate", params: "ASRC VOL ADST [-synchronizing] [options of replicate-once]",
			help: "replicate-once, then synchronize with -synchronizing; prints the gid.", run: groupReplicate},
		{name: "synchronize", params: "ASRC VOL ADST [-cmpr C] [-delay S] [-max-merge SIZE] [-bulk SIZE]",
			help: "Make ADST a synchronizing replica of VOL from ASRC (proxies stopped meanwhile); prints the gid.", run: groupSynchronize},
	}
}

func lookupWalbcGroup(name string) *walbcGroupCommand {
	for i := range walbcGroupCommands {
		if walbcGroupCommands[i].name == name {
			return &walbcGroupCommands[i]
		}
	}
	return nil
}

func walbcGroupHelp(w io.Writer) {
	fmt.Fprintln(w, "group commands (with -storage, -proxy, -archive; servers by name):")
	for _, c := range walbcGroupCommands {
		fmt.Fprintf(w, "  %-20s %s\n  %-20s   %s\n", c.name, c.params, "", c.help)
	}
}

// parseLayout builds the layout of -storage, -proxy and -archive, each a
// comma-separated list of NAME=HOST:PORT in order.
func parseLayout(storages, proxies, archives string) (controller.Layout, error) {
	var l controller.Layout
	for _, x := range []struct {
		opt, list string
		kind      controller.Kind
		dst       *[]controller.Server
	}{
		{"-storage", storages, controller.KindStorage, &l.Storages},
		{"-proxy", proxies, controller.KindProxy, &l.Proxies},
		{"-archive", archives, controller.KindArchive, &l.Archives},
	} {
		if x.list == "" {
			continue
		}
		for _, item := range strings.Split(x.list, ",") {
			name, addr, ok := strings.Cut(item, "=")
			if !ok || name == "" || addr == "" {
				return l, errors.Wrapf(ErrUsage, "%s %q: want NAME=HOST:PORT[,NAME=HOST:PORT...]", x.opt, item)
			}
			*x.dst = append(*x.dst, controller.Server{Name: name, Addr: addr, Kind: x.kind})
		}
	}
	if err := l.Validate(); err != nil {
		return l, errors.Wrap(ErrUsage, err.Error())
	}
	return l, nil
}

// runGroup runs a group command.
func (e *walbcEnv) runGroup(ctx context.Context, layout controller.Layout, cmd *walbcGroupCommand) error {
	ctl, err := controller.New(layout, &e.opts)
	if err != nil {
		return e.fail(err)
	}
	g := &walbcGroup{walbcEnv: e, ctx: ctx, layout: layout, ctl: ctl, progress: !e.json && walbcIsTTY(e.stdout)}
	v, err := cmd.run(ctx, g, e.args)
	if g.stopProgress != nil {
		g.stopProgress()
	}
	if err != nil {
		if errors.Is(err, ErrUsage) || errors.Is(err, ErrHelp) {
			return err
		}
		return e.fail(err)
	}
	if e.json {
		return e.printGroupJSON(v)
	}
	for _, l := range plainLines(v) {
		fmt.Fprintln(e.stdout, l)
	}
	return nil
}

// watchProgress shows, on a terminal, the progress of the volumes ws until
// the command ends.
func (g *walbcGroup) watchProgress(ws ...walbcWatch) {
	if !g.progress || g.stopProgress != nil {
		return
	}
	ctx, cancel := context.WithCancel(g.ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		g.showGroupProgress(ctx, ws)
	}()
	g.stopProgress = func() {
		cancel()
		wg.Wait()
	}
}

// showGroupProgress prints the progress of the volumes ws on one line
// until ctx ends.
func (g *walbcGroup) showGroupProgress(ctx context.Context, ws []walbcWatch) {
	t := time.NewTicker(walbcProgressInterval)
	defer t.Stop()
	shown := false
	defer func() {
		if shown {
			fmt.Fprint(g.stdout, "\r\033[K")
		}
	}()
	for {
		var parts []string
		for _, w := range ws {
			p, err := g.ctl.GetProgress(ctx, w.s, w.vol)
			if err != nil {
				continue
			}
			parts = append(parts, w.label+" "+p.String())
		}
		if len(parts) > 0 && ctx.Err() == nil {
			shown = true
			fmt.Fprintf(g.stdout, "\r\033[K%s %s: %s", g.cmd, ws[0].vol, strings.Join(parts, ", "))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (e *walbcEnv) printGroupJSON(v any) error {
	obj := map[string]any{"command": e.cmd, "args": e.args, "reply": "ok", "done": true}
	if e.args == nil {
		obj["args"] = []string{}
	}
	if v != nil {
		obj["value"] = v
	}
	return json.NewEncoder(e.stdout).Encode(obj)
}

// --- arguments -------------------------------------------------------------

// groupArgs parses a group command's arguments: the positional names and
// whatever options setup adds.
func (g *walbcGroup) groupArgs(args []string, help string, names []string, setup func(o *Options)) ([]string, error) {
	o := NewOptions("walbc "+g.cmd, help)
	vals := make([]string, len(names))
	for i, n := range names {
		o.Param(&vals[i], n, walbcParamHelp[n], false)
	}
	if setup != nil {
		setup(o)
	}
	if err := parse(o, args, g.stdout); err != nil {
		return nil, err
	}
	return vals, nil
}

// walbcParamHelp describes the positional parameters of group commands.
var walbcParamHelp = map[string]string{
	"SX": "a storage's name", "PX": "a proxy's name", "AX": "an archive's name", "VOL": "the volume",
	"ASRC": "the source archive's name", "ADST": "the destination archive's name",
	"PSRC": "the proxy to copy from", "PDST": "the proxy to copy to", "GID": "the gid to reach",
}

// server returns the layout's server called name, which must be of kind.
func (g *walbcGroup) server(name string, kind controller.Kind) (controller.Server, error) {
	s, ok := g.layout.Find(name)
	if !ok || s.Kind != kind {
		return controller.Server{}, errors.Wrapf(ErrUsage, "no %s named %q (give it with -%s NAME=HOST:PORT)", kind, name, kind)
	}
	return s, nil
}

// serverVol resolves "NAME VOL".
func (g *walbcGroup) serverVol(name, vol string, kind controller.Kind) (controller.Server, error) {
	s, err := g.server(name, kind)
	if err != nil {
		return s, err
	}
	return s, volArg([]string{vol})
}

// syncFlags are the options that make a controller.SyncOpt.
type syncFlags struct {
	cmpr, delay     string
	maxMerge, bulk  uint64
	withDelay, repl bool
}

func (f *syncFlags) add(o *Options, withDelay, repl bool) {
	f.withDelay, f.repl = withDelay, repl
	o.String(&f.cmpr, "cmpr", "TYPE:LEVEL:NCPU", "", "compression of the diffs sent (default snappy:0:1)")
	if withDelay {
		o.String(&f.delay, "delay", "SECONDS", "", "delay of each diff's send from the proxies (default 0)")
	}
	if repl {
		o.Size(&f.maxMerge, "max-merge", "SIZE", 0, "largest diff input merged into one transfer (default 1G)")
		o.Size(&f.bulk, "bulk", "SIZE", 0, "transfer bulk (default 256K)")
	}
}

// opt returns the SyncOpt the flags give, nil if none was given (the
// servers' defaults).
func (f *syncFlags) opt() (*controller.SyncOpt, error) {
	if f.cmpr == "" && f.delay == "" && f.maxMerge == 0 && f.bulk == 0 {
		return nil, nil
	}
	o := controller.DefaultSyncOpt()
	if f.cmpr != "" {
		c, err := wdiff.ParseCompression(f.cmpr)
		if err != nil {
			return nil, errors.Wrapf(ErrUsage, "-cmpr %q: %v", f.cmpr, err)
		}
		o.Compression = c
	}
	if f.delay != "" {
		d, err := strconv.ParseUint(f.delay, 10, 32)
		if err != nil {
			return nil, errors.Wrapf(ErrUsage, "-delay %q: want seconds", f.delay)
		}
		o.Delay = time.Duration(d) * time.Second
	}
	if f.maxMerge > 0 {
		o.MaxMergeSize = f.maxMerge
	}
	// The archive's default bulk, not walb-tools' SyncOpt's 64K, so that
	// giving another option does not change it.
	o.BulkSize = walbcReplBulk
	if f.bulk > 0 {
		o.BulkSize = f.bulk
	}
	if err := o.Validate(); err != nil {
		return nil, errors.Wrap(ErrUsage, err.Error())
	}
	return &o, nil
}

// walbcReplBulk is the archive's default replication bulk (system.md
// §5.6).
const walbcReplBulk = 256 << 10

// replFlags are the options of the replicate commands.
type replFlags struct {
	sync              syncFlags
	gid               string
	resync, dontMerge bool
}

func (f *replFlags) add(o *Options) {
	o.String(&f.gid, "gid", "GID", "", "replicate up to GID (default: the source's newest restorable snapshot)")
	o.Bool(&f.resync, "resync", "allow a resync (required when the archives' lineages differ)")
	o.Bool(&f.dontMerge, "dont-merge", "send the diffs one by one, unmerged")
	f.sync.add(o, false, true)
}

func (f *replFlags) opt() (*controller.ReplicateOptions, error) {
	o := &controller.ReplicateOptions{Resync: f.resync, DontMerge: f.dontMerge}
	if f.gid != "" {
		g, err := strconv.ParseUint(f.gid, 10, 64)
		if err != nil || g == 0 {
			return nil, errors.Wrapf(ErrUsage, "-gid %q: want a gid above 0", f.gid)
		}
		o.Gid = g
	}
	var err error
	o.Sync, err = f.sync.opt()
	return o, err
}

// --- commands --------------------------------------------------------------

func groupBackup(hash bool) func(ctx context.Context, g *walbcGroup, args []string) (any, error) {
	return func(ctx context.Context, g *walbcGroup, args []string) (any, error) {
		var sf syncFlags
		var bulk uint64
		v, err := g.groupArgs(args, "Back up VOL from storage SX to the primary archive.", []string{"SX", "VOL"}, func(o *Options) {
			o.Size(&bulk, "bulk", "SIZE", 0, "copy unit (default: the storage's, 256K; at most 4M)")
			sf.add(o, true, false)
		})
		if err != nil {
			return nil, err
		}
		sx, err := g.serverVol(v[0], v[1], controller.KindStorage)
		if err != nil {
			return nil, err
		}
		a0, err := g.layout.Primary()
		if err != nil {
			return nil, errors.Wrap(ErrUsage, err.Error())
		}
		opt := &controller.BackupOptions{BulkSize: bulk}
		if opt.Sync, err = sf.opt(); err != nil {
			return nil, err
		}
		g.watchProgress(walbcWatch{sx.Name, sx, v[1]}, walbcWatch{a0.Name, a0, v[1]})
		if hash {
			return g.ctl.HashBackup(ctx, sx, v[1], opt)
		}
		return g.ctl.FullBackup(ctx, sx, v[1], opt)
	}
}

func groupGoStandby(ctx context.Context, g *walbcGroup, args []string) (any, error) {
	v, err := g.groupArgs(args, "Bring VOL on storage SX to Standby.", []string{"SX", "VOL"}, nil)
	if err != nil {
		return nil, err
	}
	sx, err := g.serverVol(v[0], v[1], controller.KindStorage)
	if err != nil {
		return nil, err
	}
	return nil, g.ctl.GoStandby(ctx, sx, v[1])
}

func groupIsOverflow(ctx context.Context, g *walbcGroup, args []string) (any, error) {
	v, err := g.groupArgs(args, "Print 1 if VOL's log overflowed on storage SX.", []string{"SX", "VOL"}, nil)
	if err != nil {
		return nil, err
	}
	sx, err := g.serverVol(v[0], v[1], controller.KindStorage)
	if err != nil {
		return nil, err
	}
	return g.ctl.IsOverflow(ctx, sx, v[1])
}

func groupIsWdiffSendError(ctx context.Context, g *walbcGroup, args []string) (any, error) {
	v, err := g.groupArgs(args, "Print 1 if proxy PX gave up sending VOL to archive AX.", []string{"PX", "VOL", "AX"}, nil)
	if err != nil {
		return nil, err
	}
	px, err := g.serverVol(v[0], v[1], controller.KindProxy)
	if err != nil {
		return nil, err
	}
	ax, err := g.server(v[2], controller.KindArchive)
	if err != nil {
		return nil, err
	}
	return g.ctl.IsWdiffSendError(ctx, px, v[1], ax)
}

func groupCopyArchiveInfo(ctx context.Context, g *walbcGroup, args []string) (any, error) {
	v, err := g.groupArgs(args, "Copy proxy PSRC's archive infos of VOL to proxy PDST.", []string{"PSRC", "VOL", "PDST"}, nil)
	if err != nil {
		return nil, err
	}
	pSrc, err := g.serverVol(v[0], v[1], controller.KindProxy)
	if err != nil {
		return nil, err
	}
	pDst, err := g.server(v[2], controller.KindProxy)
	if err != nil {
		return nil, err
	}
	return nil, g.ctl.CopyArchiveInfo(ctx, pSrc, v[1], pDst)
}

func groupIsSynchronizing(ctx context.Context, g *walbcGroup, args []string) (any, error) {
	v, err := g.groupArgs(args, "Print 1 if every proxy forwards VOL to archive AX, 0 if none does.", []string{"AX", "VOL"}, nil)
	if err != nil {
		return nil, err
	}
	ax, err := g.serverVol(v[0], v[1], controller.KindArchive)
	if err != nil {
		return nil, err
	}
	return g.ctl.IsSynchronizing(ctx, ax, v[1])
}

func groupStartSynchronizing(ctx context.Context, g *walbcGroup, args []string) (any, error) {
	var sf syncFlags
	v, err := g.groupArgs(args, "Make every proxy forward VOL to archive AX.", []string{"AX", "VOL"}, func(o *Options) { sf.add(o, true, false) })
	if err != nil {
		return nil, err
	}
	ax, err := g.serverVol(v[0], v[1], controller.KindArchive)
	if err != nil {
		return nil, err
	}
	opt, err := sf.opt()
	if err != nil {
		return nil, err
	}
	return nil, g.ctl.StartSynchronizing(ctx, ax, v[1], opt)
}

func groupStopSynchronizing(ctx context.Context, g *walbcGroup, args []string) (any, error) {
	v, err := g.groupArgs(args, "Make every proxy stop forwarding VOL to archive AX.", []string{"AX", "VOL"}, nil)
	if err != nil {
		return nil, err
	}
	ax, err := g.serverVol(v[0], v[1], controller.KindArchive)
	if err != nil {
		return nil, err
	}
	return nil, g.ctl.StopSynchronizing(ctx, ax, v[1])
}

func groupResize(ctx context.Context, g *walbcGroup, args []string) (any, error) {
	var zc string
	o := NewOptions("walbc resize", "Grow VOL on every archive, then every storage.")
	var vol, size string
	o.Param(&vol, "VOL", "", false)
	o.Param(&size, "SIZE", "whole MiB, with a k/m/g/t/p suffix (bytes without)", false)
	o.Param(&zc, "zeroclear", "zero-fill the new area on the archives", true)
	if err := parse(o, args, g.stdout); err != nil {
		return nil, err
	}
	if err := volArg([]string{vol}); err != nil {
		return nil, err
	}
	if zc != "" && zc != "zeroclear" {
		return nil, errors.Wrapf(ErrUsage, "%q: want zeroclear", zc)
	}
	n, err := parseSizeP(size)
	if err != nil {
		return nil, err
	}
	if n == 0 || n%(1<<20) != 0 {
		return nil, errors.Wrapf(ErrUsage, "size %q: want a positive whole number of MiB", size)
	}
	return nil, g.ctl.Resize(ctx, vol, n>>20, zc != "")
}

// replPair resolves "ASRC VOL ADST" and, with watch, shows both archives'
// progress.
func (g *walbcGroup) replPair(v []string, watch bool) (src, dst controller.Server, err error) {
	if src, err = g.serverVol(v[0], v[1], controller.KindArchive); err != nil {
		return src, dst, err
	}
	if dst, err = g.server(v[2], controller.KindArchive); err != nil {
		return src, dst, err
	}
	if watch {
		g.watchProgress(walbcWatch{src.Name, src, v[1]}, walbcWatch{dst.Name, dst, v[1]})
	}
	return src, dst, nil
}

func groupReplicateOnce(wait bool) func(ctx context.Context, g *walbcGroup, args []string) (any, error) {
	return func(ctx context.Context, g *walbcGroup, args []string) (any, error) {
		var rf replFlags
		v, err := g.groupArgs(args, "Replicate VOL from archive ASRC to archive ADST.", []string{"ASRC", "VOL", "ADST"}, rf.add)
		if err != nil {
			return nil, err
		}
		opt, err := rf.opt()
		if err != nil {
			return nil, err
		}
		src, dst, err := g.replPair(v, wait)
		if err != nil {
			return nil, err
		}
		if !wait {
			return g.ctl.ReplicateOnceNB(ctx, src, v[1], dst, opt)
		}
		return g.ctl.ReplicateOnce(ctx, src, v[1], dst, opt)
	}
}

func groupWaitForReplicated(ctx context.Context, g *walbcGroup, args []string) (any, error) {
	v, err := g.groupArgs(args, "Wait until the replication of VOL from ASRC to ADST has reached GID.", []string{"ASRC", "VOL", "ADST", "GID"}, nil)
	if err != nil {
		return nil, err
	}
	gid, err := strconv.ParseUint(v[3], 10, 64)
	if err != nil {
		return nil, errors.Wrapf(ErrUsage, "%q is not a number", v[3])
	}
	src, dst, err := g.replPair(v, true)
	if err != nil {
		return nil, err
	}
	return nil, g.ctl.WaitForReplicated(ctx, src, v[1], dst, gid)
}

func groupReplicate(ctx context.Context, g *walbcGroup, args []string) (any, error) {
	var rf replFlags
	var syncing bool
	v, err := g.groupArgs(args, "Replicate VOL from archive ASRC to archive ADST, and synchronize it with -synchronizing.",
		[]string{"ASRC", "VOL", "ADST"}, func(o *Options) {
			o.Bool(&syncing, "synchronizing", "then make ADST synchronizing (synchronize)")
			rf.add(o)
		})
	if err != nil {
		return nil, err
	}
	opt, err := rf.opt()
	if err != nil {
		return nil, err
	}
	src, dst, err := g.replPair(v, true)
	if err != nil {
		return nil, err
	}
	return g.ctl.Replicate(ctx, src, v[1], dst, syncing, opt)
}

func groupSynchronize(ctx context.Context, g *walbcGroup, args []string) (any, error) {
	var sf syncFlags
	v, err := g.groupArgs(args, "Make archive ADST a synchronizing replica of VOL from archive ASRC.",
		[]string{"ASRC", "VOL", "ADST"}, func(o *Options) { sf.add(o, true, true) })
	if err != nil {
		return nil, err
	}
	opt, err := sf.opt()
	if err != nil {
		return nil, err
	}
	src, dst, err := g.replPair(v, true)
	if err != nil {
		return nil, err
	}
	return g.ctl.Synchronize(ctx, src, v[1], dst, opt)
}
