package storage

import (
	"context"
	"io"

	"github.com/walb-go/walb/archive"
	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/proxy"
)

// WireProxies is the ProxyClient of a storage on the network: the heartbeat
// and wlog-transfer of package proxy's client.
type WireProxies struct {
	Client *proxy.Client // nil: default client id and wire options
}

// HostType implements ProxyClient.
func (w WireProxies) HostType(ctx context.Context, addr string) (string, error) {
	return w.Client.HostType(ctx, addr)
}

// OpenWlog implements ProxyClient.
func (w WireProxies) OpenWlog(ctx context.Context, addr string, h WlogHeader) (WlogSession, error) {
	s, err := w.Client.OpenWlog(ctx, addr, h.Vol, proxy.WlogHeader{
		UUID: h.UUID, PBS: h.PBS, Salt: h.Salt, SizeLb: h.SizeLB, MaxLogSizePb: h.MaxLogSizePB,
	})
	if err != nil {
		return nil, err
	}
	return s, nil
}

// WireArchive is the ArchiveClient of a storage on the network: the
// dirty-full-sync client of package archive. Options carries the client
// id, the wire options and the bulk compression (-sync-cmpr); the bulk
// size and the timestamp come from each request.
type WireArchive struct {
	Options archive.FullSyncOptions
}

// OpenFullSync implements ArchiveClient.
func (w WireArchive) OpenFullSync(ctx context.Context, addr string, req FullSyncRequest) (FullSyncSession, error) {
	opt := w.Options
	opt.BulkLB = uint32(req.BulkLB)
	opt.Timestamp = req.Time
	f, err := archive.DialFullSync(ctx, addr, req.Vol, req.SizeLB, opt)
	if err != nil {
		return nil, err
	}
	return &archiveSession{f: f}, nil
}

type archiveSession struct {
	f    *archive.FullSyncClient
	done bool
}

func (a *archiveSession) Begin(ctx context.Context, uuid meta.UUID) error {
	return a.f.SendUUID(ctx, uuid)
}

func (a *archiveSession) SendImage(ctx context.Context, src io.ReaderAt) error {
	return a.f.SendImage(ctx, src)
}

func (a *archiveSession) Commit(ctx context.Context, snap meta.Snap) error {
	a.done = true
	defer a.f.Close()
	return a.f.Finish(ctx, snap)
}

func (a *archiveSession) Abort(error) {
	if !a.done {
		a.done = true
		a.f.Close()
	}
}
