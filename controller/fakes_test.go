package controller

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/server"
	"github.com/walb-go/walb/wire"
)

// This file builds a fake backup group: storage, proxy and archive servers
// made with package server that answer the commands of system.md §3–5 with
// the replies and value types of the real servers (storage/server.go,
// proxy/server.go, archive/commands.go and get.go), over TCP on 127.0.0.1.
// Their state changes go through the transient states and end a step
// later, in the background, so that the controller's waits are exercised;
// snapshots flow from the Target storage to the archives registered on the
// proxies, and the archives keep their diffs in a meta.DiffSet, so that the
// restorable list, the applicable chain, apply and merge follow the real
// metadata rules.

var quietLogger = slog.New(slog.NewTextHandler(io.Discard, nil))

// fakeStep is how long a background state change takes.
const fakeStep = 15 * time.Millisecond

type fakeGroup struct {
	mu       sync.Mutex
	bg       sync.WaitGroup
	cancel   context.CancelFunc
	runs     []chan error
	servers  map[string]*fakeServer // by name
	order    []*fakeServer
	layout   Layout
	clock    time.Time
	uuidSeq  int
	closed   bool
	storages map[string]*fakeStorage
	proxies  map[string]*fakeProxy
	archives map[string]*fakeArchive
}

// fakeServer is what every fake has: its framework server, the commands it
// received, and errors to inject.
type fakeServer struct {
	g    *fakeGroup
	name string
	kind Kind
	srv  *server.Server
	log  []string          // "cmd arg..." of every command received
	fail map[string]error  // command ("get TARGET", "CMD SUB") -> error to answer
	hold map[string]func() // command -> run before answering (blocking tests)
	over map[string]fakeHandler
}

type fakeHandler func(c *wire.Conn, ctx context.Context, args []string) error

// handleOverride replaces the handler of cmd (a server's handlers cannot be
// registered twice).
func (f *fakeServer) handleOverride(cmd string, h fakeHandler) {
	f.g.mu.Lock()
	defer f.g.mu.Unlock()
	f.over[cmd] = h
}

func (f *fakeServer) Recover(context.Context) error { return nil }

// Kick implements server.Kicker so kicks are recorded.
func (f *fakeServer) Kick(_ context.Context, args []string) error {
	f.g.mu.Lock()
	defer f.g.mu.Unlock()
	f.log = append(f.log, strings.TrimSpace("kick "+strings.Join(args, " ")))
	return f.fail["kick"]
}

// Status implements server.StatusReporter.
func (f *fakeServer) Status(_ context.Context, args []string) ([]string, error) {
	f.g.mu.Lock()
	defer f.g.mu.Unlock()
	f.log = append(f.log, strings.TrimSpace("status "+strings.Join(args, " ")))
	if len(args) == 0 {
		return []string{"fake\t" + f.name}, nil
	}
	if f.kind == KindStorage {
		return []string{"volume\t" + args[0], "sizeLb 2048"}, nil
	}
	return []string{"volume\t" + args[0]}, nil
}

// handle registers a command whose handler runs under the group lock.
func (f *fakeServer) handle(cmd string, h fakeHandler) {
	f.srv.Handle(cmd, func(ctx context.Context, c *wire.Conn, args []string) error {
		f.g.mu.Lock()
		f.log = append(f.log, strings.TrimSpace(cmd+" "+strings.Join(args, " ")))
		err := f.fail[cmd]
		if err == nil && len(args) > 0 {
			err = f.fail[cmd+" "+args[0]] // a subcommand: "archive-info add"
		}
		hold := f.hold[cmd]
		f.g.mu.Unlock()
		if hold != nil {
			hold()
		}
		if err != nil {
			return err
		}
		f.g.mu.Lock()
		defer f.g.mu.Unlock()
		if o := f.over[cmd]; o != nil {
			return o(c, ctx, args)
		}
		return h(c, ctx, args)
	})
}

// get registers a get target answered under the group lock.
func (f *fakeServer) get(target string, h func(args []string) (any, error)) {
	f.srv.HandleGet(target, func(_ context.Context, args []string) (any, error) {
		f.g.mu.Lock()
		defer f.g.mu.Unlock()
		f.log = append(f.log, strings.TrimSpace("get "+target+" "+strings.Join(args, " ")))
		if err := f.fail["get "+target]; err != nil {
			return nil, err
		}
		return h(args)
	})
}

// commands returns the commands received so far and forgets them.
func (f *fakeServer) commands() []string {
	f.g.mu.Lock()
	defer f.g.mu.Unlock()
	out := f.log
	f.log = nil
	return out
}

// nonGets filters commands() to what changes state.
func (f *fakeServer) actions() []string {
	var out []string
	for _, c := range f.commands() {
		if !strings.HasPrefix(c, "get ") && !strings.HasPrefix(c, "status") &&
			!strings.HasPrefix(c, "archive-info list") && !strings.HasPrefix(c, "archive-info get") {
			out = append(out, c)
		}
	}
	return out
}

func (f *fakeServer) setFail(cmd string, err error) {
	f.g.mu.Lock()
	defer f.g.mu.Unlock()
	if err == nil {
		delete(f.fail, cmd)
		return
	}
	f.fail[cmd] = err
}

// later runs fn under the group lock after a step, unless the group is
// closing.
func (g *fakeGroup) later(fn func()) {
	g.bg.Add(1)
	go func() {
		defer g.bg.Done()
		time.Sleep(fakeStep)
		g.mu.Lock()
		defer g.mu.Unlock()
		if !g.closed {
			fn()
		}
	}()
}

// now is the fakes' clock: one second per call, so timestamps differ.
func (g *fakeGroup) now() time.Time {
	g.clock = g.clock.Add(time.Second)
	return g.clock
}

func (g *fakeGroup) addServer(name string, kind Kind) *fakeServer {
	srv, err := server.New(server.Config{ID: name, Addr: "127.0.0.1:0", HostType: kind.String(), Version: "fake", Logger: quietLogger})
	if err != nil {
		panic(err)
	}
	f := &fakeServer{g: g, name: name, kind: kind, srv: srv, fail: map[string]error{}, hold: map[string]func(){}, over: map[string]fakeHandler{}}
	g.servers[name] = f
	g.order = append(g.order, f)
	return f
}

// start listens and runs every server, and fills the layout.
func (g *fakeGroup) start() error {
	ctx, cancel := context.WithCancel(context.Background())
	g.cancel = cancel
	for _, f := range g.order {
		if err := f.srv.Listen(); err != nil {
			cancel()
			return err
		}
		s := Server{Name: f.name, Addr: f.srv.Addr().String(), Kind: f.kind}
		switch f.kind {
		case KindStorage:
			g.layout.Storages = append(g.layout.Storages, s)
		case KindProxy:
			g.layout.Proxies = append(g.layout.Proxies, s)
		case KindArchive:
			g.layout.Archives = append(g.layout.Archives, s)
		}
		done := make(chan error, 1)
		g.runs = append(g.runs, done)
		go func(f *fakeServer) { done <- f.srv.Run(ctx, f) }(f)
	}
	return nil
}

// close shuts every server down and waits for the background changes.
func (g *fakeGroup) close() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
	g.cancel()
	for _, d := range g.runs {
		<-d
	}
	g.bg.Wait()
}

// newFakeGroup starts nStorage storages s0.., nProxy proxies p0.. and
// nArchive archives a0...
func newFakeGroup(nStorage, nProxy, nArchive int) (*fakeGroup, error) {
	g := &fakeGroup{
		servers:  map[string]*fakeServer{},
		clock:    time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC),
		storages: map[string]*fakeStorage{},
		proxies:  map[string]*fakeProxy{},
		archives: map[string]*fakeArchive{},
	}
	for i := 0; i < nStorage; i++ {
		newFakeStorage(g, fmt.Sprintf("s%d", i))
	}
	for i := 0; i < nProxy; i++ {
		newFakeProxy(g, fmt.Sprintf("p%d", i))
	}
	for i := 0; i < nArchive; i++ {
		newFakeArchive(g, fmt.Sprintf("a%d", i))
	}
	if err := g.start(); err != nil {
		return nil, err
	}
	return g, nil
}

func wrongState(who, vol, st string) error {
	return errors.Wrapf(server.ErrWrongState, "%s: volume %s is %s", who, vol, st)
}

func nargs(args []string, lo, hi int, usage string) error {
	if len(args) < lo || len(args) > hi {
		return errors.Wrapf(server.ErrBadArgs, "usage: %s", usage)
	}
	if len(args) > 0 {
		return server.ValidateVolumeName(args[0])
	}
	return nil
}

func parseGid(s string) (uint64, error) {
	g, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return 0, errors.Wrapf(server.ErrBadArgs, "gid %q", s)
	}
	return g, nil
}

// --- storage ---------------------------------------------------------------

// fakeVol is what the fake servers' volume records share: a state.
type fakeVol interface{ volState() string }

// volStateIn returns vol's state in vols, Clear if it has no record.
func volStateIn[V fakeVol](vols map[string]V, vol string) string {
	if v, ok := vols[vol]; ok {
		return v.volState()
	}
	return StateClear
}

// needVol returns vol's record if its state is one of states, else the
// wrong-state error server would reply.
func needVol[V fakeVol](server string, vols map[string]V, vol string, states ...string) (V, error) {
	st := volStateIn(vols, vol)
	if !slices.Contains(states, st) {
		var none V
		return none, wrongState(server, vol, st)
	}
	return vols[vol], nil
}

type fsVol struct {
	state    string
	wdev     string
	gid      uint64 // latest gid taken
	overflow bool
	progress uint64 // get progress: LB done by a running backup
}

type fakeStorage struct {
	*fakeServer
	vols map[string]*fsVol
}

func (v *fsVol) volState() string { return v.state }

func (s *fakeStorage) state(vol string) string { return volStateIn(s.vols, vol) }

func (s *fakeStorage) need(vol string, states ...string) (*fsVol, error) {
	return needVol(s.name, s.vols, vol, states...)
}

func newFakeStorage(g *fakeGroup, name string) *fakeStorage {
	s := &fakeStorage{fakeServer: g.addServer(name, KindStorage), vols: map[string]*fsVol{}}
	g.storages[name] = s
	s.handle("init-vol", func(c *wire.Conn, ctx context.Context, a []string) error {
		if err := nargs(a, 2, 2, "init-vol VOL WDEV"); err != nil {
			return err
		}
		if _, err := s.need(a[0], StateClear); err != nil {
			return err
		}
		s.vols[a[0]] = &fsVol{state: StateSyncReady, wdev: a[1]}
		return c.SendOK(ctx)
	})
	s.handle("clear-vol", func(c *wire.Conn, ctx context.Context, a []string) error {
		if err := nargs(a, 1, 1, "clear-vol VOL"); err != nil {
			return err
		}
		if _, err := s.need(a[0], StateSyncReady); err != nil {
			return err
		}
		delete(s.vols, a[0])
		return c.SendOK(ctx)
	})
	s.handle("reset-vol", func(c *wire.Conn, ctx context.Context, a []string) error {
		if err := nargs(a, 1, 2, "reset-vol VOL [GID]"); err != nil {
			return err
		}
		v, err := s.need(a[0], StateStopped)
		if err != nil {
			return err
		}
		v.state, v.gid, v.overflow = StateSyncReady, 0, false
		return c.SendOK(ctx)
	})
	s.handle("start", func(c *wire.Conn, ctx context.Context, a []string) error {
		if err := nargs(a, 1, 2, "start VOL [target|standby]"); err != nil {
			return err
		}
		mode := "target"
		if len(a) == 2 {
			mode = a[1]
		}
		from, via, to := StateStopped, "StartTarget", StateTarget
		switch mode {
		case "target":
		case "standby":
			from, via, to = StateSyncReady, "StartStandby", StateStandby
		default:
			return errors.Wrapf(server.ErrBadArgs, "start mode %q", mode)
		}
		v, err := s.need(a[0], from)
		if err != nil {
			return err
		}
		v.state = via
		g.later(func() { v.state = to })
		return c.SendOK(ctx)
	})
	s.handle("stop", func(c *wire.Conn, ctx context.Context, a []string) error {
		if err := nargs(a, 1, 2, "stop VOL [graceful|force]"); err != nil {
			return err
		}
		if len(a) == 2 && a[1] != "graceful" && a[1] != "force" {
			return errors.Wrapf(server.ErrBadArgs, "stop: mode %q (a storage takes graceful or force)", a[1])
		}
		v, err := s.need(a[0], StateTarget, StateStandby)
		if err != nil {
			return err
		}
		via, to := "StopTarget", StateStopped
		if v.state == StateStandby {
			via, to = "StopStandby", StateSyncReady
		}
		v.state = via
		g.later(func() { v.state = to })
		return c.SendAccept(ctx)
	})
	s.handle("snapshot", func(c *wire.Conn, ctx context.Context, a []string) error {
		if err := nargs(a, 1, 1, "snapshot VOL"); err != nil {
			return err
		}
		v, err := s.need(a[0], StateTarget, StateStopped)
		if err != nil {
			return err
		}
		prev := v.gid
		v.gid++
		gid := v.gid
		if v.state == StateTarget {
			ts := g.now()
			g.later(func() {
				g.deliver(a[0], meta.Diff{SnapB: meta.CleanSnap(prev), SnapE: meta.CleanSnap(gid), Timestamp: ts})
			})
		}
		if err := c.SendOK(ctx); err != nil {
			return err
		}
		return c.SendU64(ctx, gid)
	})
	for _, cmd := range []string{"full-bkp", "hash-bkp"} {
		s.handle(cmd, func(c *wire.Conn, ctx context.Context, a []string) error {
			if err := nargs(a, 1, 2, cmd+" VOL [BULK]"); err != nil {
				return err
			}
			v, err := s.need(a[0], StateSyncReady)
			if err != nil {
				return err
			}
			ax := g.archives[g.layout.Archives[0].Name]
			want := StateSyncReady
			if cmd == "hash-bkp" {
				want = StateArchived
			}
			av, err := ax.need(a[0], want)
			if err != nil {
				return err // the archive's refusal, relayed
			}
			via := "FullSync"
			if cmd == "hash-bkp" {
				via = "HashSync"
			}
			v.state, av.state = via, via
			vol := a[0]
			ts := g.now()
			g.later(func() {
				if cmd == "full-bkp" {
					// The image copied while gid 0..1 were written.
					av.base = meta.NewState(meta.Snap{GidB: 0, GidE: 1}, ts)
					av.sizeLB = 1 << 11
					g.uuidSeq++
					av.archiveUUID = fmt.Sprintf("%032x", g.uuidSeq)
					v.gid = 1
				} else {
					latest := av.diffs.LatestSnap(av.base)
					v.gid = latest.GidE + 2
					av.diffs.Add(meta.Diff{SnapB: latest, SnapE: meta.Snap{GidB: latest.GidE + 1, GidE: v.gid}, Timestamp: ts})
				}
				av.state = StateArchived
				v.state = StateStopped
				g.later(func() {
					v.state = "StartTarget"
					g.later(func() {
						v.state = StateTarget
						b := v.gid - 1
						if cmd == "full-bkp" {
							b = 0
						}
						g.deliver(vol, meta.Diff{SnapB: meta.CleanSnap(b), SnapE: meta.CleanSnap(v.gid), Timestamp: g.now()})
					})
				})
			})
			return c.SendAccept(ctx)
		})
	}
	s.handle("resize", func(c *wire.Conn, ctx context.Context, a []string) error {
		if err := nargs(a, 2, 2, "resize VOL SIZE"); err != nil {
			return err
		}
		if _, err := s.need(a[0], StateSyncReady, StateStopped, StateTarget, StateStandby); err != nil {
			return err
		}
		return c.SendOK(ctx)
	})
	s.handle("set-full-scan-bps", func(c *wire.Conn, ctx context.Context, a []string) error {
		return c.SendOK(ctx)
	})
	s.get("state", func(a []string) (any, error) { return s.state(a[0]), nil })
	s.get("vol", func(a []string) (any, error) {
		names := []string{}
		for n := range s.vols {
			names = append(names, n)
		}
		sort.Strings(names)
		return names, nil
	})
	s.get("is-overflow", func(a []string) (any, error) {
		v, err := s.need(a[0], StateSyncReady, StateStopped, StateTarget, StateStandby)
		if err != nil {
			return nil, err
		}
		return v.overflow, nil
	})
	s.get("uuid", func(a []string) (any, error) { return "00112233445566778899aabbccddeeff", nil })
	s.get("progress", func(a []string) (any, error) {
		v, err := s.need(a[0], StateSyncReady, StateStopped, StateTarget, StateStandby, "FullSync", "HashSync")
		if err != nil {
			return nil, err
		}
		return v.progress, nil
	})
	s.get("log-usage", func(a []string) (any, error) {
		return []string{"name:" + a[0] + "\tusage_pb:10\tcapacity_pb:2048\tpbs:4096"}, nil
	})
	s.get("latest-snap", func(a []string) (any, error) {
		v, err := s.need(a[0], StateTarget)
		if err != nil {
			return nil, err
		}
		return []string{fmt.Sprintf("name:%s\tkind:storage\tgid:%d\tlsid:%d\ttimestamp:%s", a[0], v.gid, v.gid*8,
			meta.FormatPrettyTime(g.clock))}, nil
	})
	return s
}

// --- proxy -----------------------------------------------------------------

type fpVol struct {
	state     string
	infos     map[string]string // archive -> "ADDR CMPR DELAY"
	sendError map[string]bool
}

type fakeProxy struct {
	*fakeServer
	vols map[string]*fpVol
}

func (v *fpVol) volState() string { return v.state }

func (p *fakeProxy) state(vol string) string { return volStateIn(p.vols, vol) }

func (p *fakeProxy) need(vol string, states ...string) (*fpVol, error) {
	return needVol(p.name, p.vols, vol, states...)
}

func newFakeProxy(g *fakeGroup, name string) *fakeProxy {
	p := &fakeProxy{fakeServer: g.addServer(name, KindProxy), vols: map[string]*fpVol{}}
	g.proxies[name] = p
	p.handle("archive-info", func(c *wire.Conn, ctx context.Context, a []string) error {
		if len(a) < 2 {
			return errors.Wrap(server.ErrBadArgs, "archive-info SUB VOL ...")
		}
		sub, vol := a[0], a[1]
		switch sub {
		case "add", "update":
			if len(a) < 4 || len(a) > 6 {
				return errors.Wrap(server.ErrBadArgs, "archive-info add|update VOL NAME ADDR [CMPR [DELAY]]")
			}
			v, err := p.need(vol, StateClear, StateStopped)
			if err != nil {
				return err
			}
			if v == nil {
				v = &fpVol{state: StateStopped, infos: map[string]string{}, sendError: map[string]bool{}}
				p.vols[vol] = v
			}
			if _, ok := v.infos[a[2]]; ok && sub == "add" {
				return errors.Wrapf(wire.ErrExists, "archive %s exists", a[2])
			}
			info := []string{a[3], "snappy:0:1", "0"}
			copy(info[1:], a[4:])
			v.infos[a[2]] = strings.Join(info, " ")
			return c.SendOK(ctx)
		case "delete":
			v, err := p.need(vol, StateStopped)
			if err != nil {
				return err
			}
			if _, ok := v.infos[a[2]]; !ok {
				return errors.Wrapf(wire.ErrNotFound, "no archive %s", a[2])
			}
			delete(v.infos, a[2])
			if len(v.infos) == 0 {
				delete(p.vols, vol)
			}
			return c.SendOK(ctx)
		case "get":
			v := p.vols[vol]
			if v == nil || v.infos[a[2]] == "" {
				return errors.Wrapf(wire.ErrNotFound, "no archive %s", a[2])
			}
			if err := c.SendOK(ctx); err != nil {
				return err
			}
			return c.SendString(ctx, v.infos[a[2]])
		case "list":
			names := []string{}
			if v := p.vols[vol]; v != nil {
				for n := range v.infos {
					names = append(names, n)
				}
			}
			sort.Strings(names)
			if err := c.SendOK(ctx); err != nil {
				return err
			}
			return c.SendStrings(ctx, names)
		}
		return errors.Wrapf(server.ErrBadArgs, "archive-info: unknown subcommand %q", sub)
	})
	p.handle("start", func(c *wire.Conn, ctx context.Context, a []string) error {
		if err := nargs(a, 1, 1, "start VOL"); err != nil {
			return err
		}
		v, err := p.need(a[0], StateStopped)
		if err != nil {
			return err
		}
		v.state = "Start"
		g.later(func() { v.state = StateStarted })
		return c.SendOK(ctx)
	})
	p.handle("stop", func(c *wire.Conn, ctx context.Context, a []string) error {
		if err := nargs(a, 1, 2, "stop VOL [graceful|force|empty]"); err != nil {
			return err
		}
		v, err := p.need(a[0], StateStarted)
		if err != nil {
			return err
		}
		v.state = "Stop"
		if len(a) == 2 && a[1] == string(StopEmpty) {
			v.state = "WaitForEmpty"
		}
		g.later(func() { v.state = StateStopped })
		return c.SendAccept(ctx)
	})
	p.handle("clear-vol", func(c *wire.Conn, ctx context.Context, a []string) error {
		if _, err := p.need(a[0], StateStopped); err != nil {
			return err
		}
		delete(p.vols, a[0])
		return c.SendOK(ctx)
	})
	p.get("state", func(a []string) (any, error) { return p.state(a[0]), nil })
	p.get("is-wdiff-send-error", func(a []string) (any, error) {
		v := p.vols[a[0]]
		if v == nil || v.infos[a[1]] == "" {
			return nil, errors.Wrapf(wire.ErrNotFound, "no archive %s", a[1])
		}
		return v.sendError[a[1]], nil
	})
	p.get("latest-snap", func(a []string) (any, error) {
		return []string{"name:" + a[0] + "\tkind:proxy\tarchive:a0\tgid:\ttimestamp:"}, nil
	})
	return p
}

// deliver hands a diff of vol from the Target storage to every active
// archive some started proxy forwards vol to, after a step (the proxy's
// send).
func (g *fakeGroup) deliver(vol string, d meta.Diff) {
	targets := map[string]bool{}
	for _, p := range g.proxies {
		if v := p.vols[vol]; v != nil && v.state == StateStarted {
			for name := range v.infos {
				targets[name] = true
			}
		}
	}
	g.later(func() {
		for name := range targets {
			a := g.archives[name]
			if v := a.vols[vol]; v != nil && v.state == StateArchived {
				if err := v.diffs.Add(d); err != nil {
					panic(err)
				}
			}
		}
	})
}

// --- archive ---------------------------------------------------------------

type faVol struct {
	state       string
	archiveUUID string // zero until a full backup or replication
	base        meta.State
	diffs       *meta.DiffSet
	restored    map[uint64]bool
	cold        map[uint64]bool
	sizeLB      uint64
	progress    uint64 // get progress
	actions     map[string]int
	failNext    string // action whose next run ends without result
}

type fakeArchive struct {
	*fakeServer
	vols   map[string]*faVol
	export bool
}

func (v *faVol) volState() string { return v.state }

func (a *fakeArchive) state(vol string) string { return volStateIn(a.vols, vol) }

func (a *fakeArchive) need(vol string, states ...string) (*faVol, error) {
	return needVol(a.name, a.vols, vol, states...)
}

const zeroUUID = "00000000000000000000000000000000"

// replicate runs replicate VOL gid GID ADDR [DORESYNC DONTMERGE [CMPR
// MAXMERGE BULK]] as the real archive does, at the metadata level: accept
// with the ReplSyncAsClient action counted, the destination (found by its
// address) in ReplSyncAsServer or FullSync meanwhile, and, a step later,
// the destination holding the source's base, lineage and chain up to GID.
// A destination of another lineage without DORESYNC, an unknown address
// or failNext end the action without a result, as a failure after accept
// does.
func (a *fakeArchive) replicate(c *wire.Conn, ctx context.Context, args []string) error {
	if err := nargs(args, 4, 9, "replicate VOL gid|size N ADDR:PORT [DORESYNC DONTMERGE [CMPR MAXMERGE BULK]]"); err != nil {
		return err
	}
	if len(args) != 4 && len(args) != 6 && len(args) != 9 {
		return errors.Wrap(server.ErrBadArgs, "replicate: optional arguments come as DORESYNC DONTMERGE [CMPR MAXMERGE BULK]")
	}
	if args[1] != "gid" {
		return errors.Wrap(server.ErrBadArgs, "the fake replicates by gid only")
	}
	gid, err := parseGid(args[2])
	if err != nil {
		return err
	}
	vol := args[0]
	v, err := a.need(vol, archiveActive...)
	if err != nil {
		return err
	}
	if v.actions[ActionReplSyncAsClient] > 0 {
		return errors.Wrap(wire.ErrActionRunning, "ReplSyncAsClient")
	}
	resync := len(args) > 4 && args[4] == "1"
	fail := v.failNext == ActionReplSyncAsClient
	if fail {
		v.failNext = ""
	}
	var dv *faVol
	for _, s := range a.g.layout.Archives {
		if s.Addr == args[3] {
			dv = a.g.archives[s.Name].vols[vol]
		}
	}
	switch {
	case dv == nil || (dv.state != StateSyncReady && dv.state != StateArchived):
		fail = true
	case dv.state == StateArchived && dv.archiveUUID != v.archiveUUID && !resync:
		fail = true // resync is required but not allowed
	}
	v.actions[ActionReplSyncAsClient]++
	var from string
	if dv != nil && !fail {
		from = dv.state
		dv.state = "ReplSyncAsServer"
		if from == StateSyncReady {
			dv.state = "FullSync"
		}
	}
	a.g.later(func() {
		if !fail {
			set, err := meta.NewDiffSet(v.diffs.ChainToGid(v.base.SnapB, gid)...)
			if err != nil {
				panic(err)
			}
			dv.base, dv.diffs, dv.sizeLB, dv.archiveUUID = v.base, set, v.sizeLB, v.archiveUUID
			dv.state = StateArchived
		}
		v.actions[ActionReplSyncAsClient]--
	})
	return c.SendAccept(ctx)
}

// longAction runs an action's work a step after the accept.
func (a *fakeArchive) longAction(c *wire.Conn, ctx context.Context, v *faVol, action string, work func()) error {
	v.actions[action]++
	fail := v.failNext == action
	if fail {
		v.failNext = ""
	}
	a.g.later(func() {
		if !fail {
			work()
		}
		v.actions[action]--
	})
	return c.SendAccept(ctx)
}

func newFakeArchive(g *fakeGroup, name string) *fakeArchive {
	a := &fakeArchive{fakeServer: g.addServer(name, KindArchive), vols: map[string]*faVol{}}
	g.archives[name] = a
	active := archiveActive
	a.handle("init-vol", func(c *wire.Conn, ctx context.Context, args []string) error {
		if err := nargs(args, 1, 1, "init-vol VOL"); err != nil {
			return err
		}
		if _, err := a.need(args[0], StateClear); err != nil {
			return err
		}
		set, _ := meta.NewDiffSet()
		a.vols[args[0]] = &faVol{state: StateSyncReady, archiveUUID: zeroUUID, base: meta.DefaultState(), diffs: set,
			restored: map[uint64]bool{}, cold: map[uint64]bool{}, actions: map[string]int{}}
		return c.SendOK(ctx)
	})
	a.handle("clear-vol", func(c *wire.Conn, ctx context.Context, args []string) error {
		if _, err := a.need(args[0], StateSyncReady, StateStopped); err != nil {
			return err
		}
		delete(a.vols, args[0])
		return c.SendOK(ctx)
	})
	a.handle("reset-vol", func(c *wire.Conn, ctx context.Context, args []string) error {
		v, err := a.need(args[0], StateSyncReady, StateStopped)
		if err != nil {
			return err
		}
		set, _ := meta.NewDiffSet()
		v.state, v.base, v.diffs, v.archiveUUID, v.sizeLB = StateSyncReady, meta.DefaultState(), set, zeroUUID, 0
		return c.SendOK(ctx)
	})
	a.handle("start", func(c *wire.Conn, ctx context.Context, args []string) error {
		v, err := a.need(args[0], StateStopped)
		if err != nil {
			return err
		}
		v.state = "Start"
		g.later(func() { v.state = StateArchived })
		return c.SendOK(ctx)
	})
	a.handle("stop", func(c *wire.Conn, ctx context.Context, args []string) error {
		if len(args) == 2 && args[1] == "empty" {
			return errors.Wrap(server.ErrBadArgs, "stop mode empty is for proxies")
		}
		v, err := a.need(args[0], StateArchived)
		if err != nil {
			return err
		}
		v.state = "Stop"
		g.later(func() { v.state = StateStopped })
		return c.SendAccept(ctx)
	})
	a.handle("restore", func(c *wire.Conn, ctx context.Context, args []string) error {
		if err := nargs(args, 2, 2, "restore VOL GID"); err != nil {
			return err
		}
		gid, err := parseGid(args[1])
		if err != nil {
			return err
		}
		v, err := a.need(args[0], active...)
		if err != nil {
			return err
		}
		if v.restored[gid] {
			return errors.Wrapf(wire.ErrExists, "gid %d is already restored", gid)
		}
		if !v.diffs.IsRestorable(v.base, gid) {
			return errors.Wrapf(wire.ErrBadRequest, "gid %d is not restorable", gid)
		}
		return a.longAction(c, ctx, v, ActionRestore, func() { v.restored[gid] = true })
	})
	a.handle("del-restored", func(c *wire.Conn, ctx context.Context, args []string) error {
		gid, err := parseGid(args[1])
		if err != nil {
			return err
		}
		v, err := a.need(args[0], append(slices.Clone(active), StateStopped)...)
		if err != nil {
			return err
		}
		if !v.restored[gid] {
			return errors.Wrapf(wire.ErrNotFound, "gid %d is not restored", gid)
		}
		delete(v.restored, gid)
		return c.SendOK(ctx)
	})
	a.handle("del-cold", func(c *wire.Conn, ctx context.Context, args []string) error {
		gid, err := parseGid(args[1])
		if err != nil {
			return err
		}
		v, err := a.need(args[0], append(slices.Clone(active), StateStopped)...)
		if err != nil {
			return err
		}
		if !v.cold[gid] {
			return errors.Wrapf(wire.ErrNotFound, "gid %d is not cold", gid)
		}
		delete(v.cold, gid)
		return c.SendOK(ctx)
	})
	a.handle("apply", func(c *wire.Conn, ctx context.Context, args []string) error {
		gid, err := parseGid(args[1])
		if err != nil {
			return err
		}
		v, err := a.need(args[0], active...)
		if err != nil {
			return err
		}
		return a.longAction(c, ctx, v, ActionApply, func() {
			chain := v.diffs.ChainToGid(v.base.SnapB, gid)
			st, err := v.base.EndApplying(chain)
			if err != nil {
				panic(err)
			}
			v.base = st
			v.diffs.EraseBeforeGid(st.SnapB.GidB)
		})
	})
	a.handle("merge", func(c *wire.Conn, ctx context.Context, args []string) error {
		if err := nargs(args, 4, 4, "merge VOL GIDB gid GIDE"); err != nil {
			return err
		}
		gidB, err := parseGid(args[1])
		if err != nil {
			return err
		}
		gidE, err := parseGid(args[3])
		if err != nil || args[2] != "gid" {
			return errors.Wrap(server.ErrBadArgs, "merge VOL GIDB gid GIDE")
		}
		v, err := a.need(args[0], active...)
		if err != nil {
			return err
		}
		list, err := v.diffs.MergeListByGid(gidB, gidE)
		if err != nil {
			return errors.Wrap(wire.ErrBadRequest, err.Error())
		}
		return a.longAction(c, ctx, v, ActionMerge, func() {
			m, err := meta.MergeAll(list)
			if err != nil {
				panic(err)
			}
			v.diffs.RemoveAll(list)
			if err := v.diffs.Add(m); err != nil {
				panic(err)
			}
		})
	})
	a.handle("gc-diff", func(c *wire.Conn, ctx context.Context, args []string) error {
		v, err := a.need(args[0], append(slices.Clone(active), StateStopped)...)
		if err != nil {
			return err
		}
		gone := v.diffs.Gc(v.base.SnapB)
		if err := c.SendOK(ctx); err != nil {
			return err
		}
		return c.SendU64(ctx, uint64(len(gone)))
	})
	a.handle("resize", func(c *wire.Conn, ctx context.Context, args []string) error {
		if err := nargs(args, 2, 3, "resize VOL SIZE [zeroclear]"); err != nil {
			return err
		}
		v, err := a.need(args[0], archiveAcceptForResize...)
		if err != nil {
			return err
		}
		var lb uint64
		if mb, ok := strings.CutSuffix(args[1], "m"); ok {
			n, err := strconv.ParseUint(mb, 10, 64)
			if err != nil {
				return errors.Wrap(server.ErrBadArgs, "size")
			}
			lb = n << 11
		} else {
			n, err := strconv.ParseUint(args[1], 10, 64)
			if err != nil || n%512 != 0 {
				return errors.Wrap(server.ErrBadArgs, "size")
			}
			lb = n / 512
		}
		if lb < v.sizeLB {
			return errors.Wrap(wire.ErrBadRequest, "cannot shrink")
		}
		v.sizeLB = lb
		return c.SendOK(ctx)
	})
	for _, cmd := range []string{"enable-snapshot", "disable-snapshot"} {
		a.handle(cmd, func(c *wire.Conn, ctx context.Context, args []string) error {
			v, err := a.need(args[0], active...)
			if err != nil {
				return err
			}
			for _, s := range args[1:] {
				gid, err := parseGid(s)
				if err != nil {
					return err
				}
				if _, err := v.diffs.SetMergeable(gid, cmd == "disable-snapshot"); err != nil {
					return errors.Wrap(wire.ErrNotFound, err.Error())
				}
			}
			return c.SendOK(ctx)
		})
	}
	a.get("state", func(args []string) (any, error) { return a.state(args[0]), nil })
	a.get("vol", func(args []string) (any, error) {
		names := []string{}
		for n := range a.vols {
			names = append(names, n)
		}
		sort.Strings(names)
		return names, nil
	})
	withVol := func(target string, h func(v *faVol, args []string) (any, error)) {
		a.get(target, func(args []string) (any, error) {
			if len(args) == 0 {
				return nil, errors.Wrapf(server.ErrBadArgs, "get %s VOL", target)
			}
			v := a.vols[args[0]]
			if v == nil {
				return nil, errors.Wrapf(wire.ErrNotFound, "volume %s", args[0])
			}
			return h(v, args[1:])
		})
	}
	listing := func(ds []meta.Diff) []string {
		out := []string{}
		for _, d := range ds {
			out = append(out, d.Listing())
		}
		return out
	}
	gidArg := func(args []string, i int, def uint64) uint64 {
		if len(args) > i {
			g, _ := strconv.ParseUint(args[i], 10, 64)
			return g
		}
		return def
	}
	withVol("diff", func(v *faVol, args []string) (any, error) {
		return listing(v.diffs.Range(gidArg(args, 0, 0), gidArg(args, 1, LatestGid))), nil
	})
	withVol("applicable-diff", func(v *faVol, args []string) (any, error) {
		return listing(v.diffs.ChainToGid(v.base.SnapB, gidArg(args, 0, LatestGid))), nil
	})
	withVol("num-diff", func(v *faVol, args []string) (any, error) {
		n, _ := v.diffs.Stats(gidArg(args, 0, 0), gidArg(args, 1, LatestGid))
		return uint64(n), nil
	})
	withVol("total-diff-size", func(v *faVol, args []string) (any, error) {
		_, b := v.diffs.Stats(gidArg(args, 0, 0), gidArg(args, 1, LatestGid))
		return b, nil
	})
	withVol("exists-diff", func(v *faVol, args []string) (any, error) {
		d := meta.Diff{SnapB: meta.Snap{GidB: gidArg(args, 0, 0), GidE: gidArg(args, 1, 0)},
			SnapE: meta.Snap{GidB: gidArg(args, 2, 0), GidE: gidArg(args, 3, 0)}}
		return v.diffs.Exists(d), nil
	})
	withVol("restored", func(v *faVol, args []string) (any, error) {
		gids := []uint64{}
		for g := range v.restored {
			gids = append(gids, g)
		}
		slices.Sort(gids)
		out := []string{}
		for _, g := range gids {
			out = append(out, strconv.FormatUint(g, 10))
		}
		return out, nil
	})
	withVol("cold", func(v *faVol, args []string) (any, error) {
		out := []string{}
		for _, g := range slices.Sorted(maps.Keys(v.cold)) {
			out = append(out, strconv.FormatUint(g, 10))
		}
		return out, nil
	})
	withVol("restorable", func(v *faVol, args []string) (any, error) {
		out := []string{}
		if !IsArchiveActive(v.state) {
			return out, nil
		}
		for _, p := range v.diffs.RestorePoints(v.base, len(args) == 1 && args[0] == "all") {
			out = append(out, p.String())
		}
		return out, nil
	})
	withVol("base", func(v *faVol, args []string) (any, error) { return v.base.StringTs(), nil })
	withVol("meta-snap", func(v *faVol, args []string) (any, error) {
		return v.diffs.LatestSnap(v.base).String(), nil
	})
	withVol("vol-size", func(v *faVol, args []string) (any, error) { return v.sizeLB, nil })
	withVol("progress", func(v *faVol, args []string) (any, error) { return v.progress, nil })
	withVol("num-action", func(v *faVol, args []string) (any, error) { return uint64(v.actions[args[0]]), nil })
	withVol("uuid", func(v *faVol, args []string) (any, error) { return "00112233445566778899aabbccddeeff", nil })
	withVol("archive-uuid", func(v *faVol, args []string) (any, error) {
		if !IsArchiveActive(v.state) {
			return nil, errors.Wrapf(server.ErrWrongState, "%s: archive-uuid of a volume in state %s", a.name, v.state)
		}
		return v.archiveUUID, nil
	})
	withVol("exists-base-image", func(v *faVol, args []string) (any, error) { return v.sizeLB > 0, nil })
	withVol("restored-path", func(v *faVol, args []string) (any, error) {
		g := gidArg(args, 0, 0)
		if !v.restored[g] {
			return nil, errors.Wrapf(wire.ErrNotFound, "gid %d not restored", g)
		}
		return fmt.Sprintf("/var/walb/%s/restored/%d.img", a.name, g), nil
	})
	withVol("restored-export", func(v *faVol, args []string) (any, error) {
		g := gidArg(args, 0, 0)
		if !a.export || !v.restored[g] {
			return nil, errors.Wrap(wire.ErrNotFound, "no NBD server")
		}
		return fmt.Sprintf("vol/%d", g), nil
	})
	a.get("volume-group", func([]string) (any, error) { return "vg0", nil })
	a.handle("replicate", func(c *wire.Conn, ctx context.Context, args []string) error {
		return a.replicate(c, ctx, args)
	})
	a.handle("bhash", func(c *wire.Conn, ctx context.Context, args []string) error {
		if err := nargs(args, 2, 4, "bhash VOL GID [BULK [SIZE]]"); err != nil {
			return err
		}
		gid, err := parseGid(args[1])
		if err != nil {
			return err
		}
		v, err := a.need(args[0], append(slices.Clone(active), StateStopped)...)
		if err != nil {
			return err
		}
		if !v.diffs.IsRestorable(v.base, gid) {
			return errors.Wrapf(wire.ErrBadRequest, "gid %d is not restorable", gid)
		}
		if err := c.SendOK(ctx); err != nil {
			return err
		}
		// One line per bulk in the real server; the fake's image is one
		// bulk whose hash stands for the volume's lineage and gid.
		return c.SendStrings(ctx, []string{fmt.Sprintf("%s%016x", v.archiveUUID[16:], gid)})
	})
	a.get("all-actions", func(args []string) (any, error) {
		out := []string{}
		for _, n := range slices.Sorted(maps.Keys(a.vols)) {
			v := a.vols[n]
			out = append(out, fmt.Sprintf("%s Merge %d --- Apply %d 2024-05-01T12:00:00", n, v.actions[ActionMerge], v.actions[ActionApply]))
		}
		return out, nil
	})
	return a
}
