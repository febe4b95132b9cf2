package proxy

// The wlog-transfer protocol (storage -> proxy), on package wire (system.md
// §6.5 gives walb-tools' version; this one keeps its steps):
//
//	C: Hello "wlog-transfer" [VOL, UUID (32 hex), PBS, SALT, SIZE_LB, MAX_LOG_SIZE_PB]
//	S: Reply accept | error (wrong-state, stopping, too-many-tasks, bad-request, ...)
//	C: stream of Chunk frames, then End (an error Reply aborts it)
//	C: Value MetaDiff (clean)
//	S: Ack once the diff is durable and queued (Dummy frames meanwhile)
//	   | error Reply
//
// The chunks carry the logpacks as a byte stream: each pack's header block
// followed by its data blocks, exactly as on the log device, packs in lsid
// order. Chunk boundaries are free; the sender cuts the stream into pieces
// of at most MaxWlogChunk bytes and compresses each one with snappy when
// that makes it smaller. A chunk payload is
//
//	offset  size  field
//	------  ----  -----------------------------------------------
//	0       1     codec: 0 raw, 2 snappy (wdiff codec numbers)
//	1       4     original size n, u32 little-endian (1..MaxWlogChunk)
//	5       ...   n raw bytes, or a snappy block of n bytes
//
// The wire frames are CRC-checked; the logpacks carry their own WalB
// checksums, which the proxy verifies.

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"io"
	"os"
	"strconv"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/server"
	"github.com/walb-go/walb/wdiff"
	"github.com/walb-go/walb/wire"
	"github.com/walb-go/walb/wlog"
)

// MaxWlogChunk bounds the original size of one wlog-transfer chunk.
const MaxWlogChunk = 4 << 20

// wlogPiece is the piece size the sender cuts the stream into.
const wlogPiece = 1 << 20

const chunkHeader = 5

// wlogArgs returns the Hello arguments of a wlog-transfer.
func wlogArgs(vol string, h WlogHeader) []string {
	return []string{vol, h.UUID.String(), strconv.FormatUint(uint64(h.PBS), 10), strconv.FormatUint(uint64(h.Salt), 10),
		strconv.FormatUint(h.SizeLb, 10), strconv.FormatUint(h.MaxLogSizePb, 10)}
}

// parseWlogArgs is the inverse of wlogArgs.
func parseWlogArgs(args []string) (string, WlogHeader, error) {
	var h WlogHeader
	if err := nargs(args, 6, 6, "wlog-transfer VOL UUID PBS SALT SIZE_LB MAX_LOG_SIZE_PB"); err != nil {
		return "", h, err
	}
	u, err := hex.DecodeString(args[1])
	if err != nil || len(u) != len(h.UUID) {
		return "", h, errors.Wrapf(server.ErrBadArgs, "wlog-transfer: uuid %q", args[1])
	}
	copy(h.UUID[:], u)
	var nums [4]uint64
	for i, bits := range []int{32, 32, 64, 64} {
		if nums[i], err = strconv.ParseUint(args[2+i], 10, bits); err != nil {
			return "", h, errors.Wrapf(server.ErrBadArgs, "wlog-transfer: argument %d %q", 2+i, args[2+i])
		}
	}
	h.PBS, h.Salt, h.SizeLb, h.MaxLogSizePb = uint32(nums[0]), uint32(nums[1]), nums[2], nums[3]
	return args[0], h, nil
}

// handleWlogTransfer serves one wlog transfer (system.md §4.4).
func (s *Server) handleWlogTransfer(ctx context.Context, c *wire.Conn, args []string) error {
	vol, hdr, err := parseWlogArgs(args)
	if err != nil {
		return err
	}
	r, err := s.p.BeginReceive(ctx, vol, hdr)
	if err != nil {
		return err
	}
	defer r.Abort()
	if err := c.SendAccept(ctx); err != nil {
		return err
	}
	rctx := r.Context() // canceled by a force stop as well
	if err := r.ReadPacks(&chunkReader{sr: c.NewStreamReader(rctx)}); err != nil {
		return err
	}
	var d meta.Diff
	if err := c.RecvValue(rctx, &d); err != nil {
		return err
	}
	stop := c.KeepAlive(rctx, 0) // fsyncs may outlast the client's timeout
	d, err = r.Commit(d)
	stop()
	if err != nil {
		return err
	}
	server.LoggerFrom(ctx).Debug("wlog-transfer done", "vol", vol, "diff", d.String(), "size", d.DataSize)
	return c.SendAck(ctx)
}

// chunkReader turns the chunks of a wlog-transfer stream back into the
// logpack byte stream; io.EOF comes only from the sender's End.
type chunkReader struct {
	sr  *wire.StreamReader
	cur []byte
	buf []byte
}

func (r *chunkReader) Read(p []byte) (int, error) {
	for len(r.cur) == 0 {
		chunk, err := r.sr.Next()
		if err != nil {
			return 0, err
		}
		if r.cur, err = r.decode(chunk); err != nil {
			return 0, err
		}
	}
	n := copy(p, r.cur)
	r.cur = r.cur[n:]
	return n, nil
}

func (r *chunkReader) decode(chunk []byte) ([]byte, error) {
	if len(chunk) < chunkHeader {
		return nil, errors.Wrapf(ErrBadStream, "wlog chunk of %d bytes", len(chunk))
	}
	codec := wdiff.Codec(chunk[0])
	n := binary.LittleEndian.Uint32(chunk[1:])
	body := chunk[chunkHeader:]
	if n == 0 || n > MaxWlogChunk {
		return nil, errors.Wrapf(ErrBadStream, "wlog chunk of %d bytes, want 1..%d", n, MaxWlogChunk)
	}
	switch codec {
	case wdiff.CodecNone:
		if uint32(len(body)) != n {
			return nil, errors.Wrapf(ErrBadStream, "raw wlog chunk of %d bytes announces %d", len(body), n)
		}
		// The stream reader's buffer is reused at the next frame only.
		return body, nil
	case wdiff.CodecSnappy:
		out, err := wdiff.Decompress(r.buf[:0], body, codec, int(n))
		if err != nil {
			return nil, errors.Wrapf(ErrBadStream, "wlog chunk: %v", err)
		}
		r.buf = out[:0]
		return out, nil
	}
	return nil, errors.Wrapf(ErrBadStream, "wlog chunk codec %d", codec)
}

// Client reaches proxies: the storage's side of wlog-transfer, and the
// host-type check of its heartbeat.
type Client struct {
	// ID names this client in the proxy's logs (default: the host name).
	ID string
	// Wire sets timeouts, TLS and frame limits (nil: defaults).
	Wire *wire.Options
}

func (cl *Client) id() string {
	if cl != nil && cl.ID != "" {
		return cl.ID
	}
	if h, err := os.Hostname(); err == nil {
		return h
	}
	return "walb-go"
}

func (cl *Client) opts() *wire.Options {
	if cl == nil {
		return nil
	}
	return cl.Wire
}

// HostType asks the server at addr for its host type ("proxy" for a proxy).
func (cl *Client) HostType(ctx context.Context, addr string) (string, error) {
	c, err := wire.Dial(ctx, addr, cl.id(), server.CmdGet, cl.opts(), server.GetHostType)
	if err != nil {
		return "", err
	}
	defer c.Close()
	if err := c.ExpectOK(ctx); err != nil {
		return "", err
	}
	return c.RecvString(ctx)
}

// WlogSession is an accepted wlog transfer, client side: send the packs,
// then Commit. It is not safe for concurrent use.
type WlogSession struct {
	c      *wire.Conn
	w      *wire.StreamWriter
	salt   uint32
	ctx    context.Context // bounds the stream; canceled by a call's ctx
	cancel context.CancelFunc
	hdr    []byte
	comp   []byte // compression output, reused
	frame  []byte // chunk payload, reused
	err    error
	done   bool
}

// OpenWlog starts a wlog transfer of vol to the proxy at addr and returns
// once the proxy has accepted it. A refusal is a *wire.RemoteError
// (wire.ErrWrongState, wire.ErrStopping, wire.ErrTooManyTasks, ...).
func (cl *Client) OpenWlog(ctx context.Context, addr, vol string, h WlogHeader) (*WlogSession, error) {
	if err := h.Validate(); err != nil {
		return nil, err
	}
	c, err := wire.Dial(ctx, addr, cl.id(), CmdWlogTransfer, cl.opts(), wlogArgs(vol, h)...)
	if err != nil {
		return nil, err
	}
	if err := c.ExpectAccept(ctx); err != nil {
		c.Close()
		return nil, err
	}
	s := &WlogSession{c: c, salt: h.Salt, hdr: make([]byte, h.PBS)}
	s.ctx, s.cancel = context.WithCancel(context.WithoutCancel(ctx))
	piece := min(wlogPiece, c.PeerMaxFrame()-chunkHeader)
	s.w = c.NewStreamWriter(s.ctx, piece+chunkHeader)
	return s, nil
}

// during makes ctx's cancellation abort the session while a call runs.
func (s *WlogSession) during(ctx context.Context) func() bool {
	return context.AfterFunc(ctx, s.cancel)
}

// SendPack sends one logpack: its header (encoded with the transfer's
// salt) and its data blocks (h.TotalIOSize PBs, padding included, as on
// the ring).
func (s *WlogSession) SendPack(ctx context.Context, h *wlog.PackHeader, data []byte) error {
	if len(data) != h.DataSize() {
		return errors.Wrapf(wlog.ErrInvalid, "logpack lsid %d: %d data bytes, want %d", h.LogpackLsid, len(data), h.DataSize())
	}
	if len(s.hdr) != int(h.PBS) {
		return errors.Wrapf(wlog.ErrInvalid, "logpack lsid %d: block size %d, transfer's %d", h.LogpackLsid, h.PBS, len(s.hdr))
	}
	h.MarshalTo(s.hdr, s.salt)
	if err := s.write(ctx, s.hdr); err != nil {
		return err
	}
	return s.write(ctx, data)
}

// Write sends raw logpack bytes (header blocks and data blocks, in order);
// it lets a caller stream logpacks it already holds encoded.
func (s *WlogSession) Write(p []byte) (int, error) {
	if err := s.write(s.ctx, p); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (s *WlogSession) write(ctx context.Context, p []byte) error {
	if s.err != nil {
		return s.err
	}
	if s.done {
		return errors.Wrap(wire.ErrStreamDone, "proxy: wlog session")
	}
	defer s.during(ctx)()
	step := s.w.ChunkSize() - chunkHeader
	for len(p) > 0 {
		n := min(len(p), step)
		if err := s.sendChunk(p[:n]); err != nil {
			s.err = err
			return err
		}
		p = p[n:]
	}
	return nil
}

func (s *WlogSession) sendChunk(raw []byte) error {
	out, codec, err := wdiff.Compress(s.comp, raw, wdiff.CodecSnappy, 0)
	if err != nil {
		return err
	}
	if codec != wdiff.CodecNone {
		s.comp = out[:0]
	}
	s.frame = append(s.frame[:0], byte(codec), 0, 0, 0, 0)
	binary.LittleEndian.PutUint32(s.frame[1:], uint32(len(raw)))
	s.frame = append(s.frame, out...)
	return s.w.Send(s.frame)
}

// Commit ends the stream, sends the diff the packs make (clean) and waits
// for the proxy's ACK, which comes once the diff is durable: a nil error is
// the ACK. The connection is closed either way.
func (s *WlogSession) Commit(ctx context.Context, d meta.Diff) error {
	if s.done {
		return errors.Wrap(wire.ErrStreamDone, "proxy: wlog session")
	}
	s.done = true
	defer s.close()
	if s.err != nil {
		return s.err
	}
	defer s.during(ctx)()
	if err := s.w.Close(); err != nil {
		return err
	}
	if err := s.c.SendValue(s.ctx, d); err != nil {
		return err
	}
	return s.c.RecvAck(s.ctx)
}

// Abort ends the transfer without committing: the proxy discards what it
// received. It does nothing after Commit.
func (s *WlogSession) Abort(cause error) {
	if s.done {
		return
	}
	s.done = true
	if cause == nil {
		cause = errors.New("wlog transfer aborted by the sender")
	}
	if s.err == nil {
		_ = s.w.Abort(cause)
	}
	s.close()
}

func (s *WlogSession) close() {
	s.cancel()
	_ = s.c.Close()
}

// SendWlog runs a whole wlog transfer: packs is the stream of logpacks
// (header block and data blocks of each, in lsid order, as ReadPacks takes
// them), d the clean diff they make. It returns nil once the proxy has
// acknowledged the diff.
func (cl *Client) SendWlog(ctx context.Context, addr, vol string, h WlogHeader, packs io.Reader, d meta.Diff) error {
	s, err := cl.OpenWlog(ctx, addr, vol, h)
	if err != nil {
		return err
	}
	buf := make([]byte, wlogPiece)
	for {
		n, rerr := io.ReadFull(packs, buf)
		if n > 0 {
			if err := s.write(ctx, buf[:n]); err != nil {
				s.Abort(err)
				return err
			}
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			s.Abort(rerr)
			return errors.Wrap(rerr, "proxy: read logpacks")
		}
	}
	return s.Commit(ctx, d)
}

// SendWlog is Client.SendWlog with the default client.
func SendWlog(ctx context.Context, addr, vol string, h WlogHeader, packs io.Reader, d meta.Diff) error {
	return (*Client)(nil).SendWlog(ctx, addr, vol, h, packs, d)
}
