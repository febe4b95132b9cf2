package archive

import (
	"context"
	"io"
	"strconv"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/server"
	"github.com/walb-go/walb/wire"
)

// ProtoWdiffTransfer is the diff transfer (proxy or archive -> archive;
// system.md §5.9 and §6.5 wdiff-transfer, in our wire format):
//
//	C: Dial "wdiff-transfer" VOL proxy|archive UUID(32 hex) SIZE_LB
//	C: Value MetaDiff
//	A: accept | stopped | syncing | wdiff-recv | wrong-state |
//	   archive-not-found | different-uuid | smaller-lv-size |
//	   too-old-diff | too-new-diff | not-applicable-diff | other error
//	C: stream: one sorted wdiff file (32-byte header, packs, end pack),
//	   cut into chunks at any byte; End
//	A: Ack   (the file is durable under its name and registered)
//
// The archive verifies every pack and record checksum and decompresses
// every record before it keeps the file; the file's header carries UUID.
const ProtoWdiffTransfer = "wdiff-transfer"

// serveWdiffTransfer is the archive side of ProtoWdiffTransfer.
func (s *Server) serveWdiffTransfer(ctx context.Context, c *wire.Conn, args []string) error {
	if err := wantArgs(args, 4, 4, ProtoWdiffTransfer+" VOL proxy|archive UUID SIZE_LB"); err != nil {
		return err
	}
	vol, err := volArg(args, 0)
	if err != nil {
		return err
	}
	sender := Sender(args[1])
	if sender != SenderProxy && sender != SenderArchive {
		return errors.Wrapf(server.ErrBadArgs, "sender %q: want proxy or archive", args[1])
	}
	uuid, err := meta.ParseUUID(args[2])
	if err != nil {
		return errors.Wrapf(server.ErrBadArgs, "uuid %q", args[2])
	}
	sizeLB, err := u64Arg(args, 3, "sizeLb")
	if err != nil {
		return err
	}
	var d meta.Diff
	if err := c.RecvValue(ctx, &d); err != nil {
		return err
	}
	release, err := s.srv.Foreground()
	if err != nil {
		return err
	}
	defer release()
	r, err := s.e.BeginWdiffRecv(ctx, vol, WdiffHeader{Sender: sender, UUID: uuid, SizeLB: sizeLB, Diff: d})
	if err != nil {
		server.LoggerFrom(ctx).Info("wdiff-transfer refused", "vol", vol, "diff", d.String(), "reply", wire.CodeOf(err))
		return err
	}
	defer r.Abort()
	if err := c.SendAccept(ctx); err != nil {
		return err
	}
	if err := r.receiveFrom(ctx, c); err != nil {
		return err
	}
	return c.SendAck(ctx)
}

// receiveFrom receives the wdiff stream that follows on c (read under the
// transfer's context, so that a force stop ends it) and commits the diff,
// keeping the connection alive while the commit syncs.
func (r *WdiffRecv) receiveFrom(ctx context.Context, c *wire.Conn) error {
	if err := r.Receive(c.NewStreamReader(r.ctx)); err != nil {
		return err
	}
	stop := c.KeepAlive(ctx, 0)
	err := r.Commit()
	stop()
	return err
}

// WdiffReply is the archive's answer to a wdiff transfer, for the proxy to
// switch on (system.md §4.5):
//
//	reply                          proxy reaction
//	ReplyAccept (err nil)          delete the sent files, send the next
//	ReplyTooOldDiff,
//	ReplyDifferentUUID             delete the files, retry at once
//	ReplySmallerLvSize,
//	ReplyArchiveNotFound           stop: send error until kick/new wlog
//	ReplyTooNewDiff, ReplySyncing  back off and retry, never give up
//	ReplyStopped, ReplyWdiffRecv,
//	ReplyNotApplicableDiff,
//	ReplyError                     back off and retry; give up after -rto
type WdiffReply int

// Replies.
const (
	ReplyAccept WdiffReply = iota
	ReplyStopped
	ReplySyncing
	ReplyWdiffRecv
	ReplyArchiveNotFound
	ReplyDifferentUUID
	ReplySmallerLvSize
	ReplyTooOldDiff
	ReplyTooNewDiff
	ReplyNotApplicableDiff
	ReplyError
)

var wdiffReplyCodes = []wire.Code{
	ReplyAccept:            "accept",
	ReplyStopped:           wire.ErrVolStopped,
	ReplySyncing:           wire.ErrSyncing,
	ReplyWdiffRecv:         wire.ErrWdiffRecv,
	ReplyArchiveNotFound:   wire.ErrArchiveNotFound,
	ReplyDifferentUUID:     wire.ErrDifferentUUID,
	ReplySmallerLvSize:     wire.ErrSmallerLvSize,
	ReplyTooOldDiff:        wire.ErrTooOldDiff,
	ReplyTooNewDiff:        wire.ErrTooNewDiff,
	ReplyNotApplicableDiff: CodeNotApplicableDiff,
	ReplyError:             wire.ErrFailed,
}

// String returns walb-tools' reply text (accept, too-old-diff, ...).
func (r WdiffReply) String() string {
	if r >= 0 && int(r) < len(wdiffReplyCodes) {
		return string(wdiffReplyCodes[r])
	}
	return "WdiffReply(" + strconv.Itoa(int(r)) + ")"
}

// WdiffReplyOf classifies an error reply of the archive (a
// *wire.RemoteError, or a local archive error with the same code) as a
// WdiffReply; nil is ReplyAccept and any other error ReplyError.
func WdiffReplyOf(err error) WdiffReply {
	if err == nil {
		return ReplyAccept
	}
	code := wire.CodeOf(err)
	for r, c := range wdiffReplyCodes {
		if r != int(ReplyAccept) && r != int(ReplyError) && c == code {
			return WdiffReply(r)
		}
	}
	return ReplyError
}

// ClientOptions configure a client of the archive.
type ClientOptions struct {
	// ClientID names the client in the archive's logs (default: the host
	// name).
	ClientID string
	// Wire sets timeouts, TLS and frame limits.
	Wire *wire.Options
}

// SendWdiff sends one diff of vol to the archive at addr: h describes it
// (h.Sender is SenderProxy for a proxy) and src yields the whole sorted
// wdiff file. The reply says what the archive decided; the diff is stored
// exactly when the reply is ReplyAccept and err is nil. A refusal returns
// its reply and the *wire.RemoteError; a failure after accept (the stream,
// the archive's checks, the connection) returns ReplyAccept with the
// error, and the diff is not stored: send it again later.
func SendWdiff(ctx context.Context, addr, vol string, h WdiffHeader, src io.Reader, opt ClientOptions) (WdiffReply, error) {
	c, err := wire.Dial(ctx, addr, clientID(opt.ClientID), ProtoWdiffTransfer, opt.Wire,
		vol, string(h.Sender), h.UUID.String(), strconv.FormatUint(h.SizeLB, 10))
	if err != nil {
		return WdiffReplyOf(err), err
	}
	defer c.Close()
	if err := c.SendValue(ctx, h.Diff); err != nil {
		return ReplyError, err
	}
	if err := c.ExpectAccept(ctx); err != nil {
		return WdiffReplyOf(err), err
	}
	sw := c.NewStreamWriter(ctx, 0)
	if _, err := sw.ReadFrom(src); err != nil {
		_ = sw.Abort(errors.Wrap(err, "wdiff-transfer client: read the diff"))
		return ReplyAccept, errors.Wrap(err, "archive: wdiff-transfer: send")
	}
	if err := sw.Close(); err != nil {
		return ReplyAccept, err
	}
	if err := c.RecvAck(ctx); err != nil {
		return ReplyAccept, err
	}
	return ReplyAccept, nil
}
