package storage

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/pkg/errors"
)

// Heartbeat timing defaults (system.md §3.8).
const (
	// DefaultHeartbeatInterval is how often the heartbeat loop checks one
	// proxy.
	DefaultHeartbeatInterval = time.Second
	// DefaultProxyCheckAge is how old a proxy's last check must be to check
	// it again.
	DefaultProxyCheckAge = 10 * time.Second
	// DefaultHeartbeatTimeout bounds one check (get host-type).
	DefaultHeartbeatTimeout = 3 * time.Second
)

// heartbeat is the heartbeat's timing.
type heartbeat struct {
	interval, age, timeout time.Duration
}

// proxyInfo is what the heartbeat knows of one proxy.
type proxyInfo struct {
	addr      string
	available bool
	checked   time.Time
	lastErr   string
}

// proxyList is the storage's proxies in priority order with their
// availability. A transfer goes to the first available proxy that accepts
// it; the heartbeat marks proxies available or not, so a recovered proxy of
// higher priority is preferred again once a check finds it back.
type proxyList struct {
	client ProxyClient
	log    *slog.Logger
	now    func() time.Time
	hb     heartbeat

	mu   sync.Mutex
	list []proxyInfo
	wake chan struct{} // a check is wanted at once (kick)
}

func newProxyList(addrs []string, client ProxyClient, log *slog.Logger, now func() time.Time, hb heartbeat) *proxyList {
	p := &proxyList{client: client, log: log, now: now, hb: hb, wake: make(chan struct{}, 1)}
	t := now().Add(-hb.age)
	for _, a := range addrs {
		// Like walb-tools, a proxy is presumed available until a check
		// says otherwise, and is due for its first check at once.
		p.list = append(p.list, proxyInfo{addr: a, available: true, checked: t})
	}
	return p
}

// available returns the available proxies in priority order.
func (p *proxyList) available() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var v []string
	for _, pi := range p.list {
		if pi.available {
			v = append(v, pi.addr)
		}
	}
	return v
}

// checkOne checks the proxy whose last check is the oldest (the first in
// priority order on ties), if it is at least the check age old. It reports
// whether it checked one.
func (p *proxyList) checkOne(ctx context.Context) bool {
	p.mu.Lock()
	target := -1
	due := p.now().Add(-p.hb.age)
	for i, pi := range p.list {
		if pi.checked.After(due) {
			continue
		}
		if target < 0 || pi.checked.Before(p.list[target].checked) {
			target = i
		}
	}
	if target < 0 {
		p.mu.Unlock()
		return false
	}
	addr := p.list[target].addr
	p.mu.Unlock()

	cctx, cancel := context.WithTimeout(ctx, p.hb.timeout)
	typ, err := p.client.HostType(cctx, addr)
	cancel()
	ok := err == nil && typ == "proxy"
	var why string
	switch {
	case err != nil:
		why = err.Error()
	case !ok:
		why = fmt.Sprintf("host type %q", typ)
	}
	if ctx.Err() != nil {
		return false // shutting down: the answer means nothing
	}

	p.mu.Lock()
	defer p.mu.Unlock()
	for i := range p.list {
		if p.list[i].addr != addr {
			continue
		}
		if p.list[i].available != ok {
			p.log.Info("proxy availability changed", "peer", addr, "available", ok, "why", why)
		}
		p.list[i].available, p.list[i].checked, p.list[i].lastErr = ok, p.now(), why
	}
	return true
}

// kick makes every proxy due for a check and, when none is available,
// asks the heartbeat loop to check one at once.
func (p *proxyList) kick() {
	p.mu.Lock()
	none := true
	for i := range p.list {
		p.list[i].checked = time.Time{}
		none = none && !p.list[i].available
	}
	p.mu.Unlock()
	if none {
		select {
		case p.wake <- struct{}{}:
		default:
		}
	}
}

// loop runs the heartbeat until ctx is done.
func (p *proxyList) loop(ctx context.Context) {
	t := time.NewTicker(p.hb.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-p.wake:
		}
		p.checkOne(ctx)
	}
}

// open starts a wlog transfer with the first available proxy that accepts
// it. It returns the session and the proxy's address.
func (p *proxyList) open(ctx context.Context, h WlogHeader) (WlogSession, string, error) {
	addrs := p.available()
	var errs []string
	for _, addr := range addrs {
		s, err := p.client.OpenWlog(ctx, addr, h)
		if err == nil {
			return s, addr, nil
		}
		if ctx.Err() != nil {
			return nil, "", ctx.Err()
		}
		p.log.Warn("proxy refused wlog transfer", "vol", h.Vol, "peer", addr, "err", err)
		errs = append(errs, addr+": "+err.Error())
	}
	if len(addrs) == 0 {
		return nil, "", errors.Wrapf(ErrNoProxy, "volume %s: none of %d proxies is available", h.Vol, len(p.list))
	}
	return nil, "", errors.Wrapf(ErrNoProxy, "volume %s: %v", h.Vol, errs)
}

// status describes the proxies, one line each.
func (p *proxyList) status() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	now := p.now()
	v := make([]string, 0, len(p.list))
	for i, pi := range p.list {
		next := pi.checked.Add(p.hb.age).Sub(now).Truncate(time.Millisecond)
		if pi.checked.IsZero() || next < 0 {
			next = 0
		}
		line := fmt.Sprintf("proxy\tpriority:%d\taddr:%s\tavailable:%t\tnextCheck:%s", i, pi.addr, pi.available, next)
		if pi.lastErr != "" {
			line += "\tlastError:" + pi.lastErr
		}
		v = append(v, line)
	}
	return v
}
