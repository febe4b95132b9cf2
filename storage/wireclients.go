package storage

import (
	"context"
	"io"

	"github.com/walb-go/walb/archive"
	"github.com/walb-go/walb/hashsync"
	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/proxy"
	"github.com/walb-go/walb/walb"
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
// dirty-full-sync and dirty-hash-sync clients of package archive. Options
// carries the client id, the wire options and the compression (-sync-cmpr)
// of both; the bulk (or chunk) size and the timestamp come from each
// request.
type WireArchive struct {
	Options archive.FullSyncOptions
}

// OpenFullSync implements ArchiveClient.
func (w WireArchive) OpenFullSync(ctx context.Context, addr string, req SyncRequest) (FullSyncSession, error) {
	opt := w.Options
	opt.BulkLB = uint32(req.BulkLB)
	opt.Timestamp = req.Time
	f, err := archive.DialFullSync(ctx, addr, req.Vol, req.SizeLB, opt)
	if err != nil {
		return nil, err
	}
	return &fullSyncSession{f: f, syncEnd: syncEnd{close: f.Close}}, nil
}

// OpenHashSync implements ArchiveClient.
func (w WireArchive) OpenHashSync(ctx context.Context, addr string, req SyncRequest) (HashSyncSession, error) {
	h, err := archive.DialHashSync(ctx, addr, req.Vol, req.SizeLB, archive.HashSyncOptions{
		ClientOptions: w.Options.ClientOptions,
		ChunkSize:     uint32(req.BulkLB * walb.LBS),
		Compression:   w.Options.Compression,
		Timestamp:     req.Time,
	})
	if err != nil {
		return nil, err
	}
	return &hashSyncSession{h: h, syncEnd: syncEnd{close: h.Close}}, nil
}

// syncEnd ends a sync's connection once: after the commit, or on abort.
type syncEnd struct {
	close func() error
	done  bool
}

func (e *syncEnd) commit(finish func() error) error {
	e.done = true
	defer e.close()
	return finish()
}

func (e *syncEnd) Abort(error) {
	if !e.done {
		e.done = true
		e.close()
	}
}

type fullSyncSession struct {
	f *archive.FullSyncClient
	syncEnd
}

func (a *fullSyncSession) Begin(ctx context.Context, uuid meta.UUID) error {
	return a.f.SendUUID(ctx, uuid)
}

func (a *fullSyncSession) SendImage(ctx context.Context, src io.ReaderAt) error {
	return a.f.SendImage(ctx, src)
}

func (a *fullSyncSession) Commit(ctx context.Context, snap meta.Snap) error {
	return a.commit(func() error { return a.f.Finish(ctx, snap) })
}

type hashSyncSession struct {
	h *archive.HashSyncClient
	syncEnd
}

func (a *hashSyncSession) From() meta.Snap { return a.h.From() }

func (a *hashSyncSession) Begin(ctx context.Context, uuid meta.UUID) error {
	return a.h.SendUUID(ctx, uuid)
}

// SendDiff reads with the client's default workers; src paces the reads
// (set-full-scan-bps may change during the scan, which a fixed ReadLimit
// could not follow).
func (a *hashSyncSession) SendDiff(ctx context.Context, src io.ReaderAt, progress func(hashsync.Stats)) (hashsync.Stats, error) {
	return a.h.SendDiff(ctx, src, hashsync.DataOptions{Progress: progress})
}

func (a *hashSyncSession) Commit(ctx context.Context, snap meta.Snap) error {
	return a.commit(func() error { return a.h.Finish(ctx, snap) })
}
