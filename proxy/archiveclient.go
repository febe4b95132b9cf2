package proxy

import (
	"context"
	"io"

	"github.com/walb-go/walb/archive"
	"github.com/walb-go/walb/meta"
)

// WdiffRequest describes one wdiff transfer from the proxy to an archive
// (system.md §6.5, wdiff-transfer).
type WdiffRequest struct {
	// Addr is the archive's host:port.
	Addr string
	// Vol is the volume.
	Vol string
	// UUID is the source device's UUID, from the wdiff headers; the
	// archive answers different-uuid when it is not the one it holds.
	UUID meta.UUID
	// SizeLb is the volume size the proxy knows; the archive answers
	// smaller-lv-size when its base is smaller.
	SizeLb uint64
	// Diff is the metadata of the (merged) diff.
	Diff meta.Diff
}

// ArchiveClient sends wdiffs to archive servers. The network
// implementation is the archive package's wdiff-transfer client; tests use
// fakes.
type ArchiveClient interface {
	// SendWdiff offers req to the archive. If the archive accepts, it
	// streams wdiff (a sorted wdiff file: file header, packs, end pack)
	// and waits for the archive's ACK; nil means the archive has made the
	// diff durable. Any other answer of the archive is returned as an
	// error matching its wire code (a *wire.RemoteError: wire.ErrTooOldDiff,
	// wire.ErrTooNewDiff, wire.ErrDifferentUUID, wire.ErrSmallerLvSize,
	// wire.ErrArchiveNotFound, wire.ErrVolStopped, wire.ErrSyncing,
	// wire.ErrWdiffRecv or another code); a failure to connect or to
	// transfer is any other error. When the archive refuses, wdiff is left
	// unread.
	SendWdiff(ctx context.Context, req WdiffRequest, wdiff io.Reader) error
}

// wireArchive is the daemon's ArchiveClient: the archive package's
// wdiff-transfer client, sending as a proxy.
type wireArchive struct {
	opt archive.ClientOptions
}

// NewArchiveClient returns the ArchiveClient that reaches archive servers
// over the network with archive.SendWdiff; opt names the client and sets
// the wire options.
func NewArchiveClient(opt archive.ClientOptions) ArchiveClient { return wireArchive{opt: opt} }

func (a wireArchive) SendWdiff(ctx context.Context, req WdiffRequest, wdiff io.Reader) error {
	_, err := archive.SendWdiff(ctx, req.Addr, req.Vol, archive.WdiffHeader{
		Sender: archive.SenderProxy, UUID: req.UUID, SizeLB: req.SizeLb, Diff: req.Diff,
	}, wdiff, a.opt)
	return err
}
