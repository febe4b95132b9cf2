package archive

import (
	"context"
	"io/fs"
	"net"
	"strconv"
	"time"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/server"
	"github.com/walb-go/walb/wdiff"
	"github.com/walb-go/walb/wire"
)

// ProtoReplSync is archive-to-archive replication (system.md §5.6 and §6.5
// repl-sync3, in our wire format). The source archive A1 runs `replicate`
// as its ReplSyncAsClient action and is the client; the target A2 serves:
//
//	C: Dial "repl-sync" VOL ARCHIVE_UUID(32 hex) DO_RESYNC(0|1)
//	S: accept | error   (A2: SyncReady or Archived, nothing running, not
//	                     stopping, -fg ok; "resync-required" when a resync
//	                     is needed and DO_RESYNC is 0)
//	S: U64 first phase   0 FULL, 1 RESYNC, 2 none
//
// The first phase (A2 chooses): SyncReady: RESYNC if DO_RESYNC and A2 has a
// base image, else FULL. Archived: RESYNC if the archive uuids differ or
// DO_RESYNC, else none.
//
//	FULL    C: U64 SIZE_LB, U64 BULK_LB, Value MetaState (A1's base),
//	           Bytes uuid (16)
//	        S: ok | error, then U64 START_LB (A2: FullSync; START_LB > 0
//	           resumes an interrupted full replication)
//	        C: stream of ProtoFullSync bulk chunks from START_LB; End
//	        S: Ack      (base = the MetaState, uuid, A1's archive uuid,
//	                     Archived)
//	RESYNC  C: U64 SIZE_LB, U64 BULK_LB, Value MetaState (A1's oldest
//	           state), Bytes uuid (16)
//	        S: ok | error (A2: Archived -> Stopped -> SyncReady, its
//	           restored images and diffs dropped; then Resync)
//	        hash sync (hashsync.WireHashSide / WireDataSide): A2 hashes
//	        its raw base and patches it in place; A1 scans its virtual
//	        image at the MetaState
//	        S: Ack      (base = the MetaState, uuid, A1's archive uuid,
//	                     Archived)
//
// Then the loop, until A1 answers DONT:
//
//	S: Value MetaState   A2's latest state
//	C: U64 action        0 DONT, 1 HASH, 2 DIFF (ShouldDoRepl)
//	DONT  S: Ack
//	HASH  C: U64 SIZE_LB, U64 BULK_LB, Value MetaDiff, Bytes uuid (16)
//	         (the compared diff A2.latest -> A1's oldest clean snapshot)
//	      S: ok | error (A2: ReplSyncAsServer)
//	      hash sync: A2 hashes its virtual image at its latest snapshot
//	      into a temporary wdiff; A1 scans its virtual image at the
//	      diff's end
//	      S: Ack         (the diff is durable and registered)
//	DIFF  C: U64 SIZE_LB, Bytes uuid (16), Value MetaDiff
//	      S: ok | too-old-diff | too-new-diff | not-applicable-diff |
//	         smaller-lv-size | error (A2: ReplSyncAsServer)
//	      C: stream: one sorted wdiff file (the diffs merged, or with
//	         dontMerge one diff file as stored); End
//	      S: Ack         (the diff is durable and registered, and the
//	                     diffs inside its range removed)
//
// Either side may send an error reply in place of any frame; that ends
// the session. A2 never persists a transient state: a cut leaves it
// SyncReady during FULL (with full_repl_state, which lets the next FULL
// resume) or RESYNC, and Archived with its previous diffs during HASH and
// DIFF.
const ProtoReplSync = "repl-sync"

// CmdNameReplicate is the replicate command (walbc's spelling).
const CmdNameReplicate = "replicate"

// Defaults of the replicate command's optional arguments (system.md §5.6).
const (
	DefaultReplMaxMerge = 1 << 30   // MAXMERGE: 1 GiB
	DefaultReplBulk     = 256 << 10 // BULK: 256 KiB
)

// fullReplStateFileName is the resume point of a full replication.
const fullReplStateFileName = "full_repl_state"

// CodeResyncRequired is the reply of a target that needs a resync which
// the source did not allow.
const CodeResyncRequired wire.Code = "resync-required"

var (
	// ErrResyncRequired: the target volume belongs to another lineage
	// (its archive uuid differs) or a resync was otherwise needed, and
	// doResync is 0 (walb-tools: "resync is required but not allowed").
	// Nothing was changed (CodeResyncRequired).
	ErrResyncRequired error = &codedError{"archive: resync is required but not allowed", CodeResyncRequired}
	// ErrReplTiming: the target's latest snapshot lies on no diff chain
	// of the source (walb-tools: "timing problem may occur"), or the
	// target changed between two steps of a session (wire.ErrFailed).
	ErrReplTiming error = &codedError{"archive: replication timing problem", wire.ErrFailed}
	// ErrReplProtocol: the peer of a replication broke the protocol (an
	// unknown phase or action, a step that made no progress)
	// (wire.ErrProtocol).
	ErrReplProtocol error = &codedError{"archive: replication protocol error", wire.ErrProtocol}
)

// ReplFirst is the first phase of a replication session, chosen by the
// target.
type ReplFirst uint64

// First phases, as numbered on the wire.
const (
	ReplFirstFull   ReplFirst = 0
	ReplFirstResync ReplFirst = 1
	ReplFirstNone   ReplFirst = 2
)

// String names the phase.
func (f ReplFirst) String() string {
	switch f {
	case ReplFirstFull:
		return "full"
	case ReplFirstResync:
		return "resync"
	case ReplFirstNone:
		return "none"
	}
	return "ReplFirst(" + strconv.FormatUint(uint64(f), 10) + ")"
}

// ReplAction is what one step of the replication loop does, decided by the
// source with ShouldDoRepl.
type ReplAction uint64

// Actions, as numbered on the wire.
const (
	ReplDont ReplAction = 0
	ReplHash ReplAction = 1
	ReplDiff ReplAction = 2
)

// String names the action.
func (a ReplAction) String() string {
	switch a {
	case ReplDont:
		return "dont"
	case ReplHash:
		return "hash"
	case ReplDiff:
		return "diff"
	}
	return "ReplAction(" + strconv.FormatUint(uint64(a), 10) + ")"
}

// ReplMode says how replicate's N is read.
type ReplMode int

const (
	// ReplByGid replicates until the target has reached gid N.
	ReplByGid ReplMode = iota
	// ReplBySize replicates while the diffs the target misses total more
	// than N MiB; N = 0 replicates everything.
	ReplBySize
)

// String returns the command-line word.
func (m ReplMode) String() string {
	if m == ReplBySize {
		return "size"
	}
	return "gid"
}

// ReplicateOptions configure a replication (the arguments of `replicate`).
type ReplicateOptions struct {
	// ClientOptions name this archive to the target and set the wire
	// options (timeouts, TLS).
	ClientOptions
	// Addr is the target archive, ADDR:PORT.
	Addr string
	// Mode and N: replicate up to gid N, or while more than N MiB of
	// diffs are missing on the target (0: everything).
	Mode ReplMode
	N    uint64
	// DoResync allows a resync: needed when the target is of another
	// lineage (different archive uuid), for example after the source was
	// rebuilt by a full backup.
	DoResync bool
	// DontMerge sends one stored diff per DIFF step, unchanged, instead
	// of the applicable diffs merged.
	DontMerge bool
	// Compression of bulks, hash-sync chunks and merged diffs (nil:
	// snappy:0:1).
	Compression *wdiff.Compression
	// MaxMergeBytes bounds the input of one merged DIFF step (0:
	// DefaultReplMaxMerge); the archive's MaxWdiffFiles bounds its file
	// count.
	MaxMergeBytes uint64
	// BulkLB is the bulk of FULL and the chunk of hash syncs, in blocks
	// (0: DefaultReplBulk; at most MaxBulkLB).
	BulkLB uint32
	// Observe, if set, is called as the session goes (on the goroutine
	// running it), for progress reports and tests.
	Observe func(ReplEvent)
}

// ReplStep names a step of a replication session in a ReplEvent.
type ReplStep string

// Steps. Each event is reported once its step has completed.
const (
	ReplStepFull   ReplStep = "full"   // the full copy (first phase)
	ReplStepResync ReplStep = "resync" // the resync (first phase)
	ReplStepHash   ReplStep = "hash"   // a compared diff (loop)
	ReplStepDiff   ReplStep = "diff"   // a diff, merged or not (loop)
	ReplStepDone   ReplStep = "done"   // the target is where it should be
)

// ReplEvent reports one completed step of a replication session to
// ReplicateOptions.Observe.
type ReplEvent struct {
	Step ReplStep
	// StartLB is where a full copy started: above 0 it resumed an
	// interrupted one.
	StartLB uint64
	// Diff is the diff a hash or diff step delivered, covering NumDiffs
	// stored diffs of the source (diff steps).
	Diff     meta.Diff
	NumDiffs int
	// Remote is the target's latest state a hash or diff step started
	// from; for full, resync and done, the state the target is at when
	// the step ends.
	Remote meta.State
}

// withDefaults fills the defaults and validates.
func (o ReplicateOptions) withDefaults() (ReplicateOptions, error) {
	if o.Addr == "" {
		return o, errors.Wrap(ErrBadArgs, "replicate: no target address")
	}
	if o.Mode != ReplByGid && o.Mode != ReplBySize {
		return o, errors.Wrapf(ErrBadArgs, "replicate: mode %d", o.Mode)
	}
	if o.Mode == ReplBySize && o.N > maxReplSizeMiB {
		return o, errors.Wrapf(ErrBadArgs, "replicate: size %d MiB over %d", o.N, maxReplSizeMiB)
	}
	if o.Compression == nil {
		c := wdiff.DefaultCompression
		o.Compression = &c
	}
	if err := o.Compression.Validate(); err != nil {
		return o, errors.Wrapf(ErrBadArgs, "replicate: compression %v", err)
	}
	if o.MaxMergeBytes == 0 {
		o.MaxMergeBytes = DefaultReplMaxMerge
	}
	if o.BulkLB == 0 {
		o.BulkLB = DefaultReplBulk / lbSize
	}
	if o.BulkLB > MaxBulkLB {
		return o, errors.Wrapf(ErrBadArgs, "replicate: bulk of %d LB over %d", o.BulkLB, MaxBulkLB)
	}
	return o, nil
}

// maxReplSizeMiB bounds size mode's N so that N MiB fits in 64 bits with
// room to spare.
const maxReplSizeMiB = 1 << 40

// replicateUsage is the command's syntax.
const replicateUsage = CmdNameReplicate + " VOL gid|size N ADDR:PORT [doResync dontMerge CMPR MAXMERGE BULK]"

// ParseReplicateArgs parses the arguments of `replicate VOL gid|size N
// ADDR:PORT [doResync dontMerge CMPR MAXMERGE BULK]`: doResync and
// dontMerge are 0 or 1, CMPR is TYPE[:LEVEL[:CPUS]] (default snappy:0:1),
// MAXMERGE and BULK are sizes in bytes with an optional k/m/g/t/p suffix
// (defaults 1G and 256K; BULK a multiple of 512 up to 4M). Trailing
// optional arguments may be left out. Errors wrap ErrBadVolumeName or
// ErrBadArgs (both the wire code bad-request).
func ParseReplicateArgs(args []string) (vol string, opt ReplicateOptions, err error) {
	if err := wantArgs(args, 4, 9, replicateUsage); err != nil {
		return "", opt, err
	}
	if vol, err = volArg(args, 0); err != nil {
		return "", opt, err
	}
	switch args[1] {
	case "gid":
		opt.Mode = ReplByGid
	case "size":
		opt.Mode = ReplBySize
	default:
		return "", opt, errors.Wrapf(ErrBadArgs, "replicate: %q is not gid or size (usage: %s)", args[1], replicateUsage)
	}
	if opt.N, err = u64Arg(args, 2, args[1]); err != nil {
		return "", opt, err
	}
	if opt.Mode == ReplBySize && opt.N > maxReplSizeMiB {
		return "", opt, errors.Wrapf(ErrBadArgs, "replicate: size %d MiB over %d", opt.N, uint64(maxReplSizeMiB))
	}
	if err := checkAddr(args[3]); err != nil {
		return "", opt, err
	}
	opt.Addr = args[3]
	flag := func(i int, what string) (bool, error) {
		switch args[i] {
		case "0":
			return false, nil
		case "1":
			return true, nil
		}
		return false, errors.Wrapf(ErrBadArgs, "replicate: %s %q is not 0 or 1", what, args[i])
	}
	if len(args) > 4 {
		if opt.DoResync, err = flag(4, "doResync"); err != nil {
			return "", opt, err
		}
	}
	if len(args) > 5 {
		if opt.DontMerge, err = flag(5, "dontMerge"); err != nil {
			return "", opt, err
		}
	}
	if len(args) > 6 {
		c, err := wdiff.ParseCompression(args[6])
		if err != nil {
			return "", opt, errors.Wrapf(ErrBadArgs, "replicate: %v", err)
		}
		opt.Compression = &c
	}
	if len(args) > 7 {
		if opt.MaxMergeBytes, err = ParseSize(args[7]); err != nil {
			return "", opt, err
		}
		if opt.MaxMergeBytes == 0 {
			return "", opt, errors.Wrap(ErrBadArgs, "replicate: MAXMERGE 0")
		}
	}
	if len(args) > 8 {
		b, err := ParseSize(args[8])
		if err != nil {
			return "", opt, err
		}
		if b == 0 || b%lbSize != 0 || b/lbSize > MaxBulkLB {
			return "", opt, errors.Wrapf(ErrBadArgs, "replicate: BULK %s: want a multiple of %d up to %d", args[8], lbSize, MaxBulkLB*lbSize)
		}
		opt.BulkLB = uint32(b / lbSize)
	}
	opt, err = opt.withDefaults()
	return vol, opt, err
}

// checkAddr accepts HOST:PORT with a non-empty host and a port 1..65535,
// or unix:/path.
func checkAddr(addr string) error {
	if network, a := wire.ParseAddr(addr); network == "unix" {
		if a == "" {
			return errors.Wrapf(ErrBadArgs, "replicate: address %q", addr)
		}
		return nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host == "" {
		return errors.Wrapf(ErrBadArgs, "replicate: address %q is not HOST:PORT", addr)
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
		return errors.Wrapf(ErrBadArgs, "replicate: port %q", port)
	}
	return nil
}

// ShouldDoRepl decides one step of the replication loop (walb-tools'
// shouldDoRepl, system.md §5.6) from the target's latest snapshot srv and
// the source's base and diffs:
//
//   - srv.gidB >= the source's latest gidB: ReplDont, the target is up to
//     date;
//   - srv.gidB < the source's base gidB: ReplHash, the diffs that would
//     lead from srv are gone (applied), only a comparison can;
//   - otherwise the diffs that take srv exactly to the source's latest
//     snapshot decide (none: ErrReplTiming): in size mode ReplDiff if n is
//     0 or they total more than n MiB, else ReplDont; in gid mode ReplDont
//     once n <= the first one's begin gid, else ReplDiff.
//
// It reads ds and changes nothing.
func ShouldDoRepl(srv meta.Snap, base meta.State, ds *meta.DiffSet, mode ReplMode, n uint64) (ReplAction, error) {
	cli := ds.LatestSnap(base)
	if srv.GidB >= cli.GidB {
		return ReplDont, nil
	}
	if srv.GidB < base.SnapB.GidB {
		return ReplHash, nil
	}
	list, ok := ds.SyncList(meta.NewState(srv, time.Time{}), cli)
	if !ok || len(list) == 0 {
		return ReplDont, errorf(ErrReplTiming, "no diff list leads from the target's %s to the source's %s", srv, cli)
	}
	switch mode {
	case ReplBySize:
		if n == 0 {
			return ReplDiff, nil
		}
		var total uint64
		for _, d := range list {
			total += d.DataSize
			if total > n<<20 {
				return ReplDiff, nil
			}
		}
		return ReplDont, nil
	case ReplByGid:
		if n <= list[0].SnapB.GidB {
			return ReplDont, nil
		}
		return ReplDiff, nil
	}
	return ReplDont, errors.Wrapf(ErrBadArgs, "replication mode %d", mode)
}

// FullReplState is the resume point of a full replication (walb-tools'
// FullReplState, the volume's full_repl_state file): the source base the
// target is copying, the blocks [0, ProgressLB) known durable, and when it
// was saved. Serialized as the MetaState, then progressLb and timestamp as
// u64 (cybozu form).
type FullReplState struct {
	State      meta.State
	ProgressLB uint64
	Timestamp  time.Time
}

// EncodeTo implements meta.Encodable.
func (s FullReplState) EncodeTo(e *meta.Encoder) error {
	if err := e.Value(s.State); err != nil {
		return err
	}
	e.U64(s.ProgressLB)
	return e.U64(unixSeconds(s.Timestamp))
}

// DecodeFrom implements meta.Decodable.
func (s *FullReplState) DecodeFrom(d *meta.Decoder) error {
	var v FullReplState
	if err := d.Value(&v.State); err != nil {
		return err
	}
	p, _ := d.U64()
	ts, err := d.U64()
	if err != nil {
		return err
	}
	if ts > uint64(meta.MaxTimestamp.Unix()) {
		return errors.Wrapf(meta.ErrInvalid, "full_repl_state: timestamp %d", ts)
	}
	v.ProgressLB = p
	if ts != 0 {
		v.Timestamp = time.Unix(int64(ts), 0).UTC()
	}
	*s = v
	return nil
}

// String formats the state as `status` shows it.
func (s FullReplState) String() string {
	return s.State.String() + " " + strconv.FormatUint(s.ProgressLB, 10) + " " + meta.FormatPrettyTime(s.Timestamp)
}

func unixSeconds(t time.Time) uint64 {
	if t.IsZero() || t.Unix() < 0 {
		return 0
	}
	return uint64(t.Unix())
}

// FullReplState returns vol's full_repl_state: ok is false when the volume
// has none (no full replication was interrupted).
func (e *Engine) FullReplState(vol string) (st FullReplState, ok bool, err error) {
	v, err := e.volume(vol)
	if err != nil {
		return st, false, err
	}
	return v.loadFullReplState()
}

func (v *volume) loadFullReplState() (st FullReplState, ok bool, err error) {
	err = meta.Load(v.path(fullReplStateFileName), &st)
	if errors.Is(err, fs.ErrNotExist) {
		return FullReplState{}, false, nil
	}
	if err != nil {
		return FullReplState{}, false, errors.Wrapf(err, "archive: volume %s", v.name)
	}
	return st, true, nil
}

// registerReplication installs replicate and the repl-sync server side.
func (s *Server) registerReplication() {
	s.srv.Handle(CmdNameReplicate, s.cmdReplicate)
	s.srv.Handle(ProtoReplSync, s.serveReplSync)
}

// replicate VOL gid|size N ADDR:PORT [doResync dontMerge CMPR MAXMERGE
// BULK]: accept once the target has accepted, then the replication runs
// on this connection's goroutine (a foreground task).
func (s *Server) cmdReplicate(ctx context.Context, c *wire.Conn, args []string) error {
	vol, opt, err := ParseReplicateArgs(args)
	if err != nil {
		return err
	}
	cfg := s.srv.Config()
	opt.ClientID, opt.Wire = cfg.ID, cfg.Wire
	if s.e.cfg.ClientWire != nil {
		opt.Wire = s.e.cfg.ClientWire
	}
	return s.runLong(ctx, c, CmdNameReplicate, func() (prepared, error) {
		return prep(s.e.PrepareReplicate(ctx, vol, opt))
	}, "vol", vol, "peer", opt.Addr, "mode", opt.Mode.String(), "n", opt.N)
}

// serveReplSync is the target side of ProtoReplSync.
func (s *Server) serveReplSync(ctx context.Context, c *wire.Conn, args []string) error {
	if err := wantArgs(args, 3, 3, ProtoReplSync+" VOL ARCHIVE_UUID DO_RESYNC"); err != nil {
		return err
	}
	vol, err := volArg(args, 0)
	if err != nil {
		return err
	}
	aUUID, err := meta.ParseUUID(args[1])
	if err != nil {
		return errors.Wrapf(server.ErrBadArgs, "archive uuid %q", args[1])
	}
	var doResync bool
	switch args[2] {
	case "0":
	case "1":
		doResync = true
	default:
		return errors.Wrapf(server.ErrBadArgs, "doResync %q is not 0 or 1", args[2])
	}
	release, err := s.srv.Foreground()
	if err != nil {
		return err
	}
	defer release()
	rs, err := s.e.prepareReplServer(vol, aUUID, doResync)
	if err != nil {
		server.LoggerFrom(ctx).Info("repl-sync refused", "vol", vol, "reply", wire.CodeOf(err), "err", err)
		return err
	}
	if err := c.SendAccept(ctx); err != nil {
		return err
	}
	if err := c.SendU64(ctx, uint64(rs.first)); err != nil {
		return err
	}
	return rs.serve(ctx, c)
}
