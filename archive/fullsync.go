package archive

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"os"
	"strconv"
	"time"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/checksum"
	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/server"
	"github.com/walb-go/walb/wdiff"
	"github.com/walb-go/walb/wire"
)

// ProtoFullSync is the full-backup protocol (storage -> archive; system.md
// §6.5 dirty-full-sync3, in our wire format):
//
//	C: Dial "dirty-full-sync" VOL SIZE_LB CUR_TIME BULK_LB
//	A: accept | error      (A: SyncReady, idle, not stopping, -fg ok;
//	                        the volume enters FullSync, the base is made)
//	C: Bytes  uuid (16)    (the storage has reset its WAL: gidB = 0)
//	A: Ack
//	C: stream of bulks, in address order, one per Chunk frame; End
//	A: Ack                 (every block written and fdatasynced)
//	C: Value  MetaSnap     (the explicit snapshot taken after the copy)
//	A: Ack                 (base = <snap> stamped CUR_TIME, new
//	                        archive uuid, uuid, Archived)
//
// Bulk chunk (little-endian):
//
//	offset  size  field
//	------  ----  -------------------------------------------------------
//	0       1     kind: 0 all-zero bulk (no data follows), 1 data bulk
//	1       1     codec of the data (wdiff codes: 0 none, 2 snappy, ...)
//	2       2     reserved, 0
//	4       4     blocks the bulk covers (1..BULK_LB)
//	8       4     WalB checksum (salt 0) of the uncompressed data; 0 for
//	              an all-zero bulk
//	12      n     the data as stored (compressed only when smaller)
//
// A failure at any point leaves the volume SyncReady; the backup is rerun.
const ProtoFullSync = "dirty-full-sync"

// Limits of the full-sync protocol.
const (
	// MaxBulkLB is the largest bulk (4 MiB, walb-tools' maximum).
	MaxBulkLB = 8192
	// DefaultBulkLB is the storage's default bulk (256 KiB).
	DefaultBulkLB  = 512
	bulkHeaderSize = 12
)

const (
	bulkZero byte = 0
	bulkData byte = 1
)

// serveFullSync is the archive side of ProtoFullSync.
func (s *Server) serveFullSync(ctx context.Context, c *wire.Conn, args []string) error {
	a, err := parseSyncArgs(args, ProtoFullSync+" VOL SIZE_LB CUR_TIME BULK_LB", "bulkLb")
	if err != nil {
		return err
	}
	vol, sizeLB, bulkLB := a.vol, a.sizeLB, a.unit
	if bulkLB == 0 || bulkLB > MaxBulkLB {
		return errors.Wrapf(server.ErrBadArgs, "bulk of %d LB (1..%d)", bulkLB, MaxBulkLB)
	}
	release, err := s.srv.Foreground()
	if err != nil {
		return err
	}
	defer release()
	f, err := s.e.BeginFullSync(ctx, vol, sizeLB)
	if err != nil {
		return err
	}
	defer f.Abort()
	// A full backup from a storage overwrites the base: the resume point of
	// an unfinished full replication no longer describes it, and a later
	// replication must start again from block 0.
	if err := f.v.removeFullReplState(); err != nil {
		return errors.Wrapf(err, "archive: full-sync %s: remove %s", vol, fullReplStateFileName)
	}
	if err := c.SendAccept(ctx); err != nil {
		return err
	}
	uuid, err := recvUUID(ctx, c, "")
	if err != nil {
		return err
	}
	if err := c.SendAck(ctx); err != nil {
		return err
	}
	if err := recvBulks(f, c.NewStreamReader(f.Context()), bulkLB); err != nil {
		return err
	}
	stop := c.KeepAlive(ctx, 0)
	err = f.Flush()
	stop()
	if err != nil {
		return err
	}
	if err := c.SendAck(ctx); err != nil {
		return err
	}
	return finishSync(ctx, f.Context(), c, func(snap meta.Snap) error { return f.Commit(snap, a.ts, uuid) })
}

// syncArgs are the arguments of the storage-to-archive syncs
// (ProtoFullSync, ProtoHashSync): VOL SIZE_LB CUR_TIME UNIT, where UNIT is
// the protocol's transfer unit (the bulk, the chunk), range-checked by the
// caller.
type syncArgs struct {
	vol    string
	sizeLB uint64
	ts     time.Time // CUR_TIME, which stamps what the sync stores
	unit   uint64
}

// parseSyncArgs parses and checks the arguments of a storage-to-archive
// sync; usage is the protocol's usage line, unitName UNIT's name in
// errors. Every error wraps server.ErrBadArgs (or the volume name's).
func parseSyncArgs(args []string, usage, unitName string) (syncArgs, error) {
	var a syncArgs
	if err := wantArgs(args, 4, 4, usage); err != nil {
		return a, err
	}
	var err error
	if a.vol, err = volArg(args, 0); err != nil {
		return a, err
	}
	if a.sizeLB, err = u64Arg(args, 1, "sizeLb"); err != nil {
		return a, err
	}
	curTime, err := u64Arg(args, 2, "curTime")
	if err != nil {
		return a, err
	}
	if curTime > uint64(meta.MaxTimestamp.Unix()) {
		return a, errors.Wrapf(server.ErrBadArgs, "curTime %d", curTime)
	}
	a.ts = time.Unix(int64(curTime), 0).UTC()
	if a.unit, err = u64Arg(args, 3, unitName); err != nil {
		return a, err
	}
	return a, nil
}

// finishSync is the last exchange of a storage-to-archive sync: it
// receives the snapshot the storage took (on actx, the receiver's action
// context, so that a force stop ends the wait), runs commit with it while
// keeping the connection alive, and acknowledges.
func finishSync(ctx, actx context.Context, c *wire.Conn, commit func(meta.Snap) error) error {
	var snap meta.Snap
	if err := c.RecvValue(actx, &snap); err != nil {
		return err
	}
	stop := c.KeepAlive(ctx, 0)
	err := commit(snap)
	stop()
	if err != nil {
		return err
	}
	return c.SendAck(ctx)
}

// recvBulks writes the bulk stream into f.
func recvBulks(f *FullSyncRecv, sr *wire.StreamReader, bulkLB uint64) error {
	return readBulks(sr, bulkLB, func(b bulk) error {
		if b.zero {
			return f.WriteZeros(b.nLB)
		}
		_, err := f.Write(b.data)
		return err
	})
}

// readBulks decodes the bulk stream of sr (bulks of at most bulkLB
// blocks) and hands each bulk to write, until the stream's end. A bulk's
// data is only valid during its call: the buffer is reused.
func readBulks(sr *wire.StreamReader, bulkLB uint64, write func(bulk) error) error {
	var buf []byte
	for {
		chunk, err := sr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		var b bulk
		if b, buf, err = decodeBulk(chunk, bulkLB, buf[:0]); err != nil {
			return err
		}
		if err := write(b); err != nil {
			return err
		}
	}
}

// bulk is a decoded full-sync bulk.
type bulk struct {
	zero bool
	nLB  uint64
	data []byte // nLB blocks, uncompressed; nil for a zero bulk
}

// decodeBulk parses and verifies one bulk chunk of at most bulkLB blocks,
// decompressing into buf's array. Every malformed chunk is
// ErrCorruptStream.
func decodeBulk(chunk []byte, bulkLB uint64, buf []byte) (bulk, []byte, error) {
	if len(chunk) < bulkHeaderSize {
		return bulk{}, buf, errorf(ErrCorruptStream, "full-sync: bulk of %d bytes", len(chunk))
	}
	kind, codec := chunk[0], wdiff.Codec(chunk[1])
	nLB := uint64(binary.LittleEndian.Uint32(chunk[4:]))
	csum := binary.LittleEndian.Uint32(chunk[8:])
	if nLB == 0 || nLB > bulkLB || binary.LittleEndian.Uint16(chunk[2:]) != 0 {
		return bulk{}, buf, errorf(ErrCorruptStream, "full-sync: bulk header %x", chunk[:bulkHeaderSize])
	}
	switch kind {
	case bulkZero:
		if len(chunk) != bulkHeaderSize || codec != 0 || csum != 0 {
			return bulk{}, buf, errorf(ErrCorruptStream, "full-sync: malformed zero bulk")
		}
		return bulk{zero: true, nLB: nLB}, buf, nil
	case bulkData:
		out, err := wdiff.Decompress(buf, chunk[bulkHeaderSize:], codec, int(nLB*lbSize))
		if err != nil {
			return bulk{}, buf, errorf(ErrCorruptStream, "full-sync: bulk data: %v", err)
		}
		if checksum.Sum(out, 0) != csum {
			return bulk{}, out, errorf(ErrCorruptStream, "full-sync: bulk checksum mismatch")
		}
		return bulk{nLB: nLB, data: out}, out, nil
	}
	return bulk{}, buf, errorf(ErrCorruptStream, "full-sync: bulk kind %d", kind)
}

// encodeBulk appends the chunk of one bulk of raw data (a whole number of
// blocks) to dst, compressing with cmpr when that is smaller; comp is
// scratch space for the compressor, returned for reuse.
func encodeBulk(dst, raw, comp []byte, cmpr wdiff.Compression) (chunk, scratch []byte, err error) {
	start := len(dst)
	dst = append(dst, make([]byte, bulkHeaderSize)...)
	binary.LittleEndian.PutUint32(dst[start+4:], uint32(len(raw)/lbSize))
	if isZero(raw) {
		dst[start] = bulkZero
		return dst, comp, nil
	}
	stored, codec, err := wdiff.Compress(comp[:0], raw, cmpr.Codec, cmpr.Level)
	if err != nil {
		return dst, comp, err
	}
	if codec != wdiff.CodecNone {
		comp = stored
	}
	dst[start], dst[start+1] = bulkData, byte(codec)
	binary.LittleEndian.PutUint32(dst[start+8:], checksum.Sum(raw, 0))
	return append(dst, stored...), comp, nil
}

// FullSyncOptions configure the client side of a full sync.
type FullSyncOptions struct {
	ClientOptions
	// BulkLB is the bulk size (0: DefaultBulkLB; at most MaxBulkLB).
	BulkLB uint32
	// Compression of data bulks (zero value: snappy, walb-tools'
	// -sync-cmpr default). Workers is ignored.
	Compression *wdiff.Compression
	// Timestamp stamps the base (the storage's start time); zero means now.
	Timestamp time.Time
}

// FullSyncClient is the storage side of a running full sync. Its steps
// follow the protocol: DialFullSync (accept), SendUUID, SendImage, Finish.
type FullSyncClient struct {
	c      *wire.Conn
	sizeLB uint64
	bulkLB uint32
	cmpr   wdiff.Compression
}

// DialFullSync connects to the archive at addr and asks it to take a full
// image of vol (sizeLB blocks). It returns once the archive has accepted;
// a refusal is a *wire.RemoteError (wire.ErrWrongState,
// wire.ErrTooManyTasks, ...).
func DialFullSync(ctx context.Context, addr, vol string, sizeLB uint64, opt FullSyncOptions) (*FullSyncClient, error) {
	bulk := opt.BulkLB
	if bulk == 0 {
		bulk = DefaultBulkLB
	}
	if bulk > MaxBulkLB {
		return nil, errors.Wrapf(ErrBadArgs, "archive: bulk of %d LB over %d", bulk, MaxBulkLB)
	}
	cmpr, err := syncCompression(opt.Compression)
	if err != nil {
		return nil, err
	}
	c, err := dialSync(ctx, addr, opt.ClientOptions, ProtoFullSync, vol, sizeLB, opt.Timestamp, uint64(bulk))
	if err != nil {
		return nil, err
	}
	return &FullSyncClient{c: c, sizeLB: sizeLB, bulkLB: bulk, cmpr: cmpr}, nil
}

// syncCompression returns the compression of a sync's data: c, or
// snappy (walb-tools' -sync-cmpr default) when c is nil; validated.
func syncCompression(c *wdiff.Compression) (wdiff.Compression, error) {
	cmpr := wdiff.DefaultCompression
	if c != nil {
		cmpr = *c
	}
	if err := cmpr.Validate(); err != nil {
		return cmpr, err
	}
	return cmpr, nil
}

// dialSync opens a storage-to-archive sync, `proto VOL SIZE_LB CUR_TIME
// UNIT` with CUR_TIME from ts (zero: now), and waits for the archive's
// accept; a refusal is a *wire.RemoteError and closes the connection.
func dialSync(ctx context.Context, addr string, opt ClientOptions, proto, vol string, sizeLB uint64, ts time.Time, unit uint64) (*wire.Conn, error) {
	if ts.IsZero() {
		ts = time.Now()
	}
	c, err := wire.Dial(ctx, addr, clientID(opt.ClientID), proto, opt.Wire,
		vol, strconv.FormatUint(sizeLB, 10), strconv.FormatInt(ts.Unix(), 10), strconv.FormatUint(unit, 10))
	if err != nil {
		return nil, err
	}
	if err := c.ExpectAccept(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// SendUUID sends the device uuid (after the WAL reset) and waits for the
// archive's acknowledgement.
func (f *FullSyncClient) SendUUID(ctx context.Context, uuid meta.UUID) error {
	return sendSyncUUID(ctx, f.c, uuid)
}

// sendSyncUUID sends the device uuid of a storage-to-archive sync and
// waits for the archive's acknowledgement.
func sendSyncUUID(ctx context.Context, c *wire.Conn, uuid meta.UUID) error {
	if err := c.SendBytes(ctx, uuid[:]); err != nil {
		return err
	}
	return c.RecvAck(ctx)
}

// SendImage streams blocks [0, sizeLB) of src in bulks (all-zero bulks as
// markers, the others compressed with their checksum), then waits until
// the archive has written and synced everything.
func (f *FullSyncClient) SendImage(ctx context.Context, src io.ReaderAt) error {
	sw := f.c.NewStreamWriter(ctx, 0)
	raw := make([]byte, int(f.bulkLB)*lbSize)
	var comp []byte
	chunk := make([]byte, 0, bulkHeaderSize+len(raw))
	for pos := uint64(0); pos < f.sizeLB; {
		nLB := min(uint64(f.bulkLB), f.sizeLB-pos)
		b := raw[:nLB*lbSize]
		if n, err := src.ReadAt(b, int64(pos*lbSize)); n < len(b) {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			_ = sw.Abort(errors.Wrap(err, "full-sync client: read the device"))
			return errors.Wrapf(err, "archive: full-sync: read at block %d", pos)
		}
		var err error
		if chunk, comp, err = encodeBulk(chunk[:0], b, comp, f.cmpr); err != nil {
			_ = sw.Abort(err)
			return err
		}
		if err := sw.Send(chunk); err != nil {
			return err
		}
		pos += nLB
	}
	if err := sw.Close(); err != nil {
		return err
	}
	return f.c.RecvAck(ctx)
}

func isZero(b []byte) bool {
	for len(b) >= 8 {
		if binary.LittleEndian.Uint64(b) != 0 {
			return false
		}
		b = b[8:]
	}
	return bytes.Count(b, []byte{0}) == len(b)
}

// Finish sends the snapshot the image ends at and waits until the archive
// has made it its base and is Archived.
func (f *FullSyncClient) Finish(ctx context.Context, snap meta.Snap) error {
	if err := f.c.SendValue(ctx, snap); err != nil {
		return err
	}
	return f.c.RecvAck(ctx)
}

// Close closes the connection; an unfinished full sync is abandoned and
// the archive volume returns to SyncReady.
func (f *FullSyncClient) Close() error { return f.c.Close() }

// SendFullSync runs a whole full sync of src (sizeLB blocks) into vol on
// the archive at addr: dial, uuid, image, then the snapshot returned by
// snap, called once the archive holds the whole image (the storage takes
// its explicit snapshot then).
func SendFullSync(ctx context.Context, addr, vol string, src io.ReaderAt, sizeLB uint64, uuid meta.UUID,
	snap func(ctx context.Context) (meta.Snap, error), opt FullSyncOptions) error {
	f, err := DialFullSync(ctx, addr, vol, sizeLB, opt)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.SendUUID(ctx, uuid); err != nil {
		return err
	}
	if err := f.SendImage(ctx, src); err != nil {
		return err
	}
	s, err := snap(ctx)
	if err != nil {
		return err
	}
	return f.Finish(ctx, s)
}

// clientID defaults the client id to the host name, as walbc does.
func clientID(id string) string {
	if id != "" {
		return id
	}
	if h, err := os.Hostname(); err == nil {
		return h
	}
	return "walb-go"
}
