package group

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/controller"
	"github.com/walb-go/walb/proxy"
)

// addrsFile keeps the addresses the group's servers listened on, so that a
// group started again on the same directory takes the same ports: proxies
// persist each archive's address in their archive infos, and NBD URIs
// handed out earlier keep working.
const addrsFile = "addrs.json"

const addrsVersion = 1

type addrsDoc struct {
	Version int               `json:"version"`
	Addrs   map[string]string `json:"addrs"` // server or NBD server name -> host:port
}

// loadAddrs reads the addresses of the previous run; a missing or
// unreadable file means none (the ports are then new, which the group
// repairs), never an error.
func (g *Group) loadAddrs() {
	g.prevAddrs = map[string]string{}
	b, err := os.ReadFile(filepath.Join(g.dir, addrsFile))
	if err != nil {
		return
	}
	var d addrsDoc
	if err := json.Unmarshal(b, &d); err != nil || d.Version != addrsVersion {
		g.log.Warn("group: ignoring the saved addresses", "file", addrsFile, "err", err)
		return
	}
	for k, v := range d.Addrs {
		if host, _, err := net.SplitHostPort(v); err == nil && host == "127.0.0.1" {
			g.prevAddrs[k] = v
		}
	}
}

// listenAddr returns the address a server named name should listen on:
// its previous one if that port is free, else 127.0.0.1:0. The probe
// leaves a short window in which another process could take the port;
// the server's own listen then fails and Start reports it.
func (g *Group) listenAddr(name string) string {
	if a, ok := g.prevAddrs[name]; ok {
		if l, err := net.Listen("tcp", a); err == nil {
			l.Close()
			return a
		}
		g.log.Warn("group: previous port taken, using a new one", "server", name, "addr", a)
	}
	return "127.0.0.1:0"
}

// saveAddrs writes the addresses in use atomically.
func (g *Group) saveAddrs() error {
	d := addrsDoc{Version: addrsVersion, Addrs: map[string]string{}}
	for _, r := range g.runners() {
		d.Addrs[r.name] = r.addr
	}
	if g.devNBD != nil {
		d.Addrs[nbdName("devices")] = g.devNBD.addr.String()
	}
	for _, a := range g.archives {
		if a.nbd != nil {
			d.Addrs[nbdName(a.name)] = a.nbd.addr.String()
		}
	}
	b, err := json.MarshalIndent(d, "", "  ")
	if err != nil {
		return errors.Wrap(err, "group: addresses")
	}
	f, err := os.CreateTemp(g.dir, addrsFile+".tmp*")
	if err != nil {
		return errors.Wrap(err, "group: addresses")
	}
	tmp := f.Name()
	_, err = f.Write(append(b, '\n'))
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, filepath.Join(g.dir, addrsFile))
	}
	if err != nil {
		os.Remove(tmp)
		return errors.Wrap(err, "group: save addresses")
	}
	return syncDir(g.dir)
}

func nbdName(what string) string { return "nbd-" + what }

// repairArchiveInfos points the proxies' archive infos at the archives'
// current addresses. It matters only when an archive could not get its
// previous port back: the proxies would otherwise keep sending to the old
// one. The archive info's compression and delay are kept.
func (g *Group) repairArchiveInfos(ctx context.Context) error {
	cur := map[string]controller.Server{}
	for _, a := range g.layout.Archives {
		if g.prevAddrs[a.Name] != a.Addr {
			cur[a.Name] = a
		}
	}
	if len(cur) == 0 {
		return nil
	}
	for _, p := range g.layout.Proxies {
		vols, err := g.ctl.GetVolList(ctx, p)
		if err != nil {
			return err
		}
		for _, vol := range vols {
			names, err := g.ctl.GetArchiveInfoList(ctx, p, vol)
			if err != nil {
				return err
			}
			for _, name := range names {
				ax, moved := cur[name]
				if !moved {
					continue
				}
				info, err := g.ctl.GetArchiveInfo(ctx, p, vol, ax)
				if err != nil {
					return err
				}
				if info.Addr == ax.Addr {
					continue
				}
				st, err := g.steadyProxyState(ctx, p, vol)
				if err != nil {
					return err
				}
				opt := info.SyncOpt()
				if err := g.ctl.AddArchiveToProxy(ctx, p, vol, ax, &opt, st == controller.StateStarted); err != nil {
					return errors.WithMessagef(err, "group: point %s's archive info of %s at %s", p.Name, vol, ax)
				}
				g.log.Info("group: archive info repaired", "server", p.Name, "vol", vol, "archive", name, "addr", ax.Addr)
			}
		}
	}
	return nil
}

// steadyProxyState waits until vol is in a steady state on proxy p (a
// wlog transfer holds it in WlogRecv for a moment) and returns it, so that
// a Started volume is started again after its archive info changed.
func (g *Group) steadyProxyState(ctx context.Context, p controller.Server, vol string) (string, error) {
	for {
		st, err := g.ctl.GetState(ctx, p, vol)
		if err != nil || proxy.States.IsSteady(st) {
			return st, err
		}
		select {
		case <-ctx.Done():
			return "", errors.Wrapf(ctx.Err(), "group: waiting for %s of %s to leave %s", vol, p, st)
		case <-time.After(g.cfg.PollInterval):
		}
	}
}
