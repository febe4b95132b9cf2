package archive

import (
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"time"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/hashsync"
	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/server"
	"github.com/walb-go/walb/wdiff"
	"github.com/walb-go/walb/wire"
)

// ProtoHashSync is the hash-backup protocol (storage -> archive; system.md
// §3.7 and §6.5 dirty-hash-sync2, in our wire format):
//
//	C: Dial "dirty-hash-sync" VOL SIZE_LB CUR_TIME CHUNK
//	A: accept | error      (A: Archived, idle, not stopping, -fg ok, the
//	                        base at least SIZE_LB after -autoresize, else
//	                        smaller-lv-size; the volume enters HashSync)
//	A: Value  MetaSnap from (the latest snapshot, dirty allowed)
//	C: Bytes  uuid (16)    (the storage has reset its WAL with
//	                        gidB = from.gidE + 1)
//	A: Ack                 (the image at `from` is ready to compare)
//	A: hash stream, C: data stream, at once (package hashsync over two
//	   bulk streams: hashsync.WireHashSide / WireDataSide); the archive
//	   chooses the session: range [0, SIZE_LB*512), chunks of CHUNK bytes,
//	   a fresh random seed
//	C: Value  MetaSnap(gidB, gidE) (the snapshot taken after the scan)
//	A: Ack                 (the diff from -> |gidB,gidE| is durable,
//	                        the uuid saved, the volume Archived)
//
// CHUNK is the comparison unit in bytes (a multiple of 512 up to 4 MiB;
// walb-tools' bulk). CUR_TIME (unix seconds) stamps the diff. walb-tools
// seeds its murmurhash3 with CUR_TIME; our seed is drawn from crypto/rand
// for every session (see package hashsync). The stored diff is dirty and
// mergeable iff `from` is dirty; it becomes clean once the log diffs from
// |gidB| reach gidE. A failure at any point before the last Ack leaves the
// volume Archived with the diffs it had.
const ProtoHashSync = "dirty-hash-sync"

// CmdNameBHash is the archive's bhash command (system.md §5.5):
//
//	bhash VOL GID [BULK [SIZE]]  -> ok, Strings
//
// It hashes the image at the clean snapshot GID (a virtual image, so GID
// need not be restored) with walb-tools' bhash hash (hashsync.BHash:
// SipHash-2-4 with key 00..0f, 128-bit output), not the murmurhash3 that
// walb-tools' archive uses, so that the result compares with the bhash
// tool run on a device or a restored image. Without BULK the reply is one
// line, the hash of the whole scanned range (the tool's output without
// -chunk); with BULK (bytes, k/m/g suffixes, a multiple of 512) it is one
// line per BULK bytes, "ADDR<TAB>HASH" with ADDR the chunk's first block
// in 16 hex digits (the tool's -chunk output). SIZE bounds the bytes
// scanned (default: the whole image). The list must fit in one reply
// frame (about 300 000 lines with the default frame size): a larger BULK
// is asked for otherwise.
const CmdNameBHash = "bhash"

// DefaultHashChunkSize is the default comparison unit of a hash backup
// (walb-tools' default bulk, 256 KiB).
const DefaultHashChunkSize = hashsync.DefaultChunkSize

// registerHashSync installs the hash backup protocol (hash-bkp's archive
// side) and bhash.
func (s *Server) registerHashSync() {
	s.srv.Handle(ProtoHashSync, s.serveHashSync)
	s.srv.Handle(CmdNameBHash, s.cmdBHash)
}

// serveHashSync is the archive side of ProtoHashSync.
func (s *Server) serveHashSync(ctx context.Context, c *wire.Conn, args []string) error {
	a, err := parseSyncArgs(args, ProtoHashSync+" VOL SIZE_LB CUR_TIME CHUNK", "chunk")
	if err != nil {
		return err
	}
	vol, sizeLB, chunk := a.vol, a.sizeLB, a.unit
	if chunk == 0 || chunk > hashsync.MaxChunkSize || chunk%lbSize != 0 {
		return errors.Wrapf(server.ErrBadArgs, "chunk of %d bytes: want a multiple of 512 up to %d", chunk, hashsync.MaxChunkSize)
	}
	release, err := s.srv.Foreground()
	if err != nil {
		return err
	}
	defer release()
	r, err := s.e.BeginHashSync(ctx, vol, sizeLB)
	if err != nil {
		return err
	}
	defer r.Abort()
	if err := c.SendAccept(ctx); err != nil {
		return err
	}
	if err := c.SendValue(ctx, r.From()); err != nil {
		return err
	}
	uuid, err := recvUUID(r.Context(), c, "")
	if err != nil {
		return err
	}
	stop := c.KeepAlive(ctx, 0)
	err = r.Open(uuid)
	stop()
	if err != nil {
		return err
	}
	if err := c.SendAck(ctx); err != nil {
		return err
	}
	_, err = r.Receive(int(chunk), func(ctx context.Context, old io.ReaderAt, ses hashsync.Session, sink hashsync.Sink, opt hashsync.HashOptions) (hashsync.Stats, error) {
		return hashsync.WireHashSide(ctx, c, old, ses, sink, opt)
	})
	if err != nil {
		return err
	}
	return finishSync(ctx, r.Context(), c, func(snap meta.Snap) error { return r.Commit(snap, a.ts) })
}

// HashSyncOptions configure the client side of a hash backup.
type HashSyncOptions struct {
	ClientOptions
	// ChunkSize is the comparison unit in bytes (0: 256 KiB; a multiple
	// of 512 up to 4 MiB).
	ChunkSize uint32
	// Compression of the differing chunks (zero value: snappy, walb-tools'
	// -sync-cmpr default). Workers is ignored.
	Compression *wdiff.Compression
	// Timestamp stamps the diff (the backup's start time); zero means now.
	Timestamp time.Time
}

// HashSyncClient is the storage side of a running hash backup. Its steps
// follow the protocol: DialHashSync (accept and From), SendUUID, SendDiff,
// Finish.
type HashSyncClient struct {
	c      *wire.Conn
	from   meta.Snap
	sizeLB uint64
	chunk  int
	cmpr   wdiff.Compression
	sent   bool
	keep   func() // keeps the connection alive between SendDiff and Finish
}

// DialHashSync connects to the archive at addr and asks it to compare its
// latest image of vol with a device of sizeLB blocks. It returns once the
// archive has accepted (state Archived, idle, -fg ok) and sent the
// snapshot it compares against (From); a refusal is a *wire.RemoteError
// (wire.ErrWrongState, wire.ErrTooManyTasks, wire.ErrSmallerLvSize, ...).
func DialHashSync(ctx context.Context, addr, vol string, sizeLB uint64, opt HashSyncOptions) (*HashSyncClient, error) {
	chunk := int(opt.ChunkSize)
	if chunk == 0 {
		chunk = DefaultHashChunkSize
	}
	if chunk%lbSize != 0 || chunk > hashsync.MaxChunkSize {
		return nil, errors.Wrapf(ErrBadArgs, "archive: hash-sync: chunk of %d bytes: want a multiple of 512 up to %d", chunk, hashsync.MaxChunkSize)
	}
	cmpr, err := syncCompression(opt.Compression)
	if err != nil {
		return nil, err
	}
	c, err := dialSync(ctx, addr, opt.ClientOptions, ProtoHashSync, vol, sizeLB, opt.Timestamp, uint64(chunk))
	if err != nil {
		return nil, err
	}
	h := &HashSyncClient{c: c, sizeLB: sizeLB, chunk: chunk, cmpr: cmpr}
	if err := c.RecvValue(ctx, &h.from); err != nil {
		c.Close()
		return nil, err
	}
	return h, nil
}

// From is the archive's latest snapshot, which the device is compared
// against; the storage resets its WAL with gidB = From().GidE + 1.
func (h *HashSyncClient) From() meta.Snap { return h.from }

// SendUUID sends the device uuid (after the WAL reset) and waits for the
// archive's acknowledgement: it has prepared the image at From.
func (h *HashSyncClient) SendUUID(ctx context.Context, uuid meta.UUID) error {
	return sendSyncUUID(ctx, h.c, uuid)
}

// SendDiff runs the data side of the comparison (hashsync.WireDataSide):
// cur is the device, which may be written meanwhile; only the chunks that
// differ from the archive's image are sent. The client sets opt's
// Compression (from HashSyncOptions), ExpectEnd (the device size) and
// ExpectChunkSize; Workers, ReadLimit and Progress are the caller's. It
// may be called once. After it succeeds the connection is kept alive
// until Finish, while the storage takes its snapshot.
func (h *HashSyncClient) SendDiff(ctx context.Context, cur io.ReaderAt, opt hashsync.DataOptions) (hashsync.Stats, error) {
	if h.sent {
		return hashsync.Stats{}, errors.Wrap(ErrBadArgs, "archive: hash-sync: SendDiff called twice")
	}
	h.sent = true
	opt.Compression = h.cmpr
	opt.Compression.Workers = 0
	opt.ExpectEnd = int64(h.sizeLB * lbSize)
	opt.ExpectChunkSize = h.chunk
	st, err := hashsync.WireDataSide(ctx, h.c, cur, opt)
	if err != nil {
		return st, err
	}
	h.keep = h.c.KeepAlive(context.Background(), 0)
	return st, nil
}

// Finish sends the snapshot taken after the scan (gidB = From().GidE+1)
// and waits until the archive has stored, durably, the diff
// From -> snap and returned to Archived.
func (h *HashSyncClient) Finish(ctx context.Context, snap meta.Snap) error {
	h.stopKeepAlive()
	if err := h.c.SendValue(ctx, snap); err != nil {
		return err
	}
	return h.c.RecvAck(ctx)
}

func (h *HashSyncClient) stopKeepAlive() {
	if h.keep != nil {
		h.keep()
		h.keep = nil
	}
}

// Close closes the connection; an unfinished hash backup is abandoned and
// the archive volume stays as it was (Archived, same diffs).
func (h *HashSyncClient) Close() error {
	h.stopKeepAlive()
	return h.c.Close()
}

// BlockHash computes bhash over the image of vol at the clean snapshot
// |gid| (system.md §5.5): the image is virtual (the base with the restore
// list applied, in a reflink clone or as an overlay read on the fly; see
// openVirtual), so gid need not be restored. The volume must be active or Stopped, with no Apply, Merge or
// Resize running when it starts. emit gets each hash as hashsync.BHash
// gives it.
func (e *Engine) BlockHash(ctx context.Context, vol string, gid uint64, opt hashsync.BHashOptions,
	emit func(addr uint64, sum [hashsync.SipHash128Size]byte) error) error {
	v, err := e.checkedVolume(vol, CmdBlockHash)
	if err != nil {
		return err
	}
	ctx, done := v.actionContext(ctx)
	defer done()
	img, err := e.openVirtualGid(ctx, v, gid)
	if err != nil {
		return err
	}
	defer img.Close()
	if err := hashsync.BHash(ctx, img, img.Size(), opt, emit); err != nil {
		if errors.Is(err, hashsync.ErrInvalid) {
			return errorf(ErrBadArgs, "bhash %s %d: %v", vol, gid, err)
		}
		return errors.Wrapf(err, "archive: bhash %s %d", vol, gid)
	}
	return nil
}

// FormatBHash formats one bhash result as the bhash tool prints it: the
// hash alone for a whole range, "ADDR<TAB>HASH" (ADDR in 16 hex digits)
// for a chunk.
func FormatBHash(chunked bool, addr uint64, sum [hashsync.SipHash128Size]byte) string {
	if chunked {
		return fmt.Sprintf("%016x\t%s", addr, hex.EncodeToString(sum[:]))
	}
	return hex.EncodeToString(sum[:])
}

// bhashLineBytes is the size of a chunk line in a Strings frame (its
// length field included).
const bhashLineBytes = 4 + 16 + 1 + 2*hashsync.SipHash128Size

// cmdBHash is `bhash VOL GID [BULK [SIZE]]` (CmdNameBHash): ok, then the
// lines.
func (s *Server) cmdBHash(ctx context.Context, c *wire.Conn, args []string) error {
	if err := wantArgs(args, 2, 4, CmdNameBHash+" VOL GID [BULK [SIZE]]"); err != nil {
		return err
	}
	vol, err := volArg(args, 0)
	if err != nil {
		return err
	}
	gid, err := u64Arg(args, 1, "gid")
	if err != nil {
		return err
	}
	var bulk, size uint64
	if len(args) > 2 {
		if bulk, err = ParseSize(args[2]); err != nil {
			return err
		}
		if bulk == 0 || bulk%lbSize != 0 || bulk > 1<<40 {
			return errors.Wrapf(server.ErrBadArgs, "bhash: bulk of %d bytes: want a positive multiple of %d", bulk, lbSize)
		}
	}
	if len(args) > 3 {
		if size, err = ParseSize(args[3]); err != nil {
			return err
		}
		if size%lbSize != 0 {
			return errors.Wrapf(server.ErrBadArgs, "bhash: size %d is not a multiple of %d", size, lbSize)
		}
	}
	scan := size
	if scan == 0 {
		// Refused later with the state error if the volume has no base.
		if lb, err := s.e.VolSize(vol); err == nil {
			scan = lb * lbSize
		}
	}
	if bulk > 0 && scan > 0 {
		lines := (scan + bulk - 1) / bulk
		if limit := uint64(c.PeerMaxFrame()-4) / bhashLineBytes; lines > limit {
			return errors.Wrapf(server.ErrBadArgs, "bhash: %d hashes of %d bytes do not fit in a reply (at most %d): use a larger BULK", lines, bulk, limit)
		}
	}
	opt := hashsync.BHashOptions{IOSize: bhashIOSize(bulk, size), Size: int64(size), Chunk: int64(bulk)}
	release, err := s.srv.Foreground()
	if err != nil {
		return err
	}
	defer release()
	var lines []string
	stop := c.KeepAlive(ctx, 0)
	err = s.e.BlockHash(ctx, vol, gid, opt, func(addr uint64, sum [hashsync.SipHash128Size]byte) error {
		lines = append(lines, FormatBHash(bulk > 0, addr, sum))
		return nil
	})
	stop()
	if err != nil {
		return err
	}
	if err := c.SendOK(ctx); err != nil {
		return err
	}
	return c.SendStrings(ctx, lines)
}

// bhashIOSize picks the read size: the tool's 64 KiB where it divides the
// bulk and the size, else their common divisor (a multiple of 512). The
// hashes do not depend on it.
func bhashIOSize(bulk, size uint64) int64 {
	ios := uint64(hashsync.DefaultBHashIOSize)
	for _, v := range []uint64{bulk, size} {
		if v > 0 {
			ios = gcd(ios, v)
		}
	}
	return int64(ios)
}

func gcd(a, b uint64) uint64 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}
