package controller

import (
	"math"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/wdiff"
)

// The servers answer get with walb-tools' text forms (system.md §2, §3.8,
// §4.7, §5.10). These parsers turn them into Go values; every one refuses
// what it does not fully understand, with ErrBadValue and the line.

const prettyLayout = "2006-01-02T15:04:05"

// ParsePrettyTime parses walb-tools' pretty time YYYY-MM-DDThh:mm:ss (UTC);
// "---" is the zero time, as FormatPrettyTime prints it.
func ParsePrettyTime(s string) (time.Time, error) {
	if s == "---" {
		return time.Time{}, nil
	}
	t, err := time.ParseInLocation(prettyLayout, s, time.UTC)
	if err != nil || t.Format(prettyLayout) != s {
		return time.Time{}, errors.Wrapf(ErrBadValue, "time %q", s)
	}
	if t.Unix() <= 0 {
		// The epoch and earlier print as "---"; accepting them would give
		// two spellings of one value.
		return time.Time{}, errors.Wrapf(ErrBadValue, "time %q: not after the epoch", s)
	}
	return t, nil
}

func badLine(what, line string, why string) error {
	return errors.Wrapf(ErrBadValue, "%s line %q: %s", what, line, why)
}

// ParseDiffLine parses a diff listing line (get diff, applicable-diff,
// proxy-diff): "|B|-->|E| MC YYYY-MM-DDThh:mm:ss SIZE", M being M or -,
// C being C or -.
func ParseDiffLine(line string) (meta.Diff, error) {
	f := strings.Split(line, " ")
	if len(f) != 4 {
		return meta.Diff{}, badLine("diff", line, "want 4 fields")
	}
	b, e, ok := strings.Cut(f[0], "-->")
	if !ok {
		return meta.Diff{}, badLine("diff", line, "no -->")
	}
	var d meta.Diff
	var err error
	if d.SnapB, err = meta.ParseSnap(b); err != nil {
		return meta.Diff{}, badLine("diff", line, err.Error())
	}
	if d.SnapE, err = meta.ParseSnap(e); err != nil {
		return meta.Diff{}, badLine("diff", line, err.Error())
	}
	if len(f[1]) != 2 || !strings.Contains("M-", f[1][:1]) || !strings.Contains("C-", f[1][1:]) {
		return meta.Diff{}, badLine("diff", line, "flags must be [M-][C-]")
	}
	d.Mergeable, d.CompDiff = f[1][0] == 'M', f[1][1] == 'C'
	if d.Timestamp, err = ParsePrettyTime(f[2]); err != nil {
		return meta.Diff{}, badLine("diff", line, "bad time")
	}
	if d.DataSize, err = strconv.ParseUint(f[3], 10, 64); err != nil {
		return meta.Diff{}, badLine("diff", line, "bad size")
	}
	if err := d.Validate(); err != nil {
		return meta.Diff{}, badLine("diff", line, err.Error())
	}
	return d, nil
}

// ParseDiffList parses diff listing lines.
func ParseDiffList(lines []string) ([]meta.Diff, error) {
	out := make([]meta.Diff, 0, len(lines))
	for _, l := range lines {
		d, err := ParseDiffLine(l)
		if err != nil {
			return nil, err
		}
		out = append(out, d)
	}
	return out, nil
}

// RestorableGid is one line of get restorable (walb-tools GidInfo): a
// clean snapshot the archive can restore, the time it was taken, and
// whether it is explicit (from snapshot or the end of a backup; implicit
// ones are listed only with "all").
type RestorableGid struct {
	Gid       uint64
	Timestamp time.Time
	Explicit  bool
}

// ParseRestorable parses "GID YYYY-MM-DDThh:mm:ss 0|1". The explicit flag
// may be missing (older walb-tools print two fields); it is then false.
func ParseRestorable(line string) (RestorableGid, error) {
	f := strings.Split(line, " ")
	if len(f) != 2 && len(f) != 3 {
		return RestorableGid{}, badLine("restorable", line, "want GID TIME [0|1]")
	}
	var r RestorableGid
	var err error
	if r.Gid, err = strconv.ParseUint(f[0], 10, 64); err != nil {
		return RestorableGid{}, badLine("restorable", line, "bad gid")
	}
	if r.Timestamp, err = ParsePrettyTime(f[1]); err != nil {
		return RestorableGid{}, badLine("restorable", line, "bad time")
	}
	if len(f) == 3 {
		switch f[2] {
		case "0":
		case "1":
			r.Explicit = true
		default:
			return RestorableGid{}, badLine("restorable", line, "explicit flag must be 0 or 1")
		}
	}
	return r, nil
}

// ParseGids parses gid lists (get restored, get cold): one decimal gid per
// line.
func ParseGids(lines []string) ([]uint64, error) {
	out := make([]uint64, 0, len(lines))
	for _, l := range lines {
		g, err := strconv.ParseUint(l, 10, 64)
		if err != nil {
			return nil, badLine("gid", l, "not a decimal gid")
		}
		out = append(out, g)
	}
	return out, nil
}

// ParseFields parses a tab-separated line of key:value fields (get
// latest-snap, log-usage, ts-delta, base-all). Keys must be unique; values
// may be empty or contain ':'.
func ParseFields(line string) (map[string]string, error) {
	m := map[string]string{}
	for _, f := range strings.Split(line, "\t") {
		k, v, ok := strings.Cut(f, ":")
		if !ok || k == "" {
			return nil, badLine("key:value", line, "field "+strconv.Quote(f)+" is not key:value")
		}
		if _, dup := m[k]; dup {
			return nil, badLine("key:value", line, "key "+k+" twice")
		}
		m[k] = v
	}
	return m, nil
}

func fieldU64(m map[string]string, k, what, line string) (uint64, error) {
	v, ok := m[k]
	if !ok {
		return 0, badLine(what, line, "no "+k)
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0, badLine(what, line, "bad "+k)
	}
	return n, nil
}

// LatestSnap is one line of get latest-snap: the newest snapshot a server
// holds of a volume. Kind is the answering server's kind; Archive is set on
// proxies (one line per archive queue). A proxy queue that is empty has no
// gid (HasGid false); Lsid is the storage's (HasLsid).
type LatestSnap struct {
	Vol       string
	Kind      Kind
	Archive   string
	Gid       uint64
	HasGid    bool
	Lsid      uint64
	HasLsid   bool
	Timestamp time.Time
}

// ParseLatestSnap parses
// "name:V\tkind:K[\tarchive:A]\tgid:G[\tlsid:L]\ttimestamp:T".
func ParseLatestSnap(line string) (LatestSnap, error) {
	m, err := ParseFields(line)
	if err != nil {
		return LatestSnap{}, err
	}
	var s LatestSnap
	s.Vol = m["name"]
	if s.Vol == "" {
		return LatestSnap{}, badLine("latest-snap", line, "no name")
	}
	if s.Kind, err = ParseKind(m["kind"]); err != nil {
		return LatestSnap{}, badLine("latest-snap", line, "bad kind")
	}
	s.Archive = m["archive"]
	if s.Kind == KindProxy && s.Archive == "" {
		return LatestSnap{}, badLine("latest-snap", line, "a proxy line needs archive")
	}
	if v, ok := m["gid"]; !ok {
		return LatestSnap{}, badLine("latest-snap", line, "no gid")
	} else if v != "" || s.Kind != KindProxy {
		if s.Gid, err = fieldU64(m, "gid", "latest-snap", line); err != nil {
			return LatestSnap{}, err
		}
		s.HasGid = true
	}
	if _, ok := m["lsid"]; ok {
		if s.Lsid, err = fieldU64(m, "lsid", "latest-snap", line); err != nil {
			return LatestSnap{}, err
		}
		s.HasLsid = true
	}
	ts, ok := m["timestamp"]
	if !ok {
		return LatestSnap{}, badLine("latest-snap", line, "no timestamp")
	}
	if ts != "" || s.HasGid {
		if s.Timestamp, err = ParsePrettyTime(ts); err != nil {
			return LatestSnap{}, badLine("latest-snap", line, "bad timestamp")
		}
	}
	return s, nil
}

// LogUsage is one line of get log-usage (storage): how much of a
// volume's log ring holds logs not yet released.
type LogUsage struct {
	Vol        string
	UsagePB    uint64
	CapacityPB uint64
	PBS        uint64
}

// ParseLogUsage parses "name:V\tusage_pb:N\tcapacity_pb:N\tpbs:N".
func ParseLogUsage(line string) (LogUsage, error) {
	m, err := ParseFields(line)
	if err != nil {
		return LogUsage{}, err
	}
	u := LogUsage{Vol: m["name"]}
	if u.Vol == "" {
		return LogUsage{}, badLine("log-usage", line, "no name")
	}
	if u.UsagePB, err = fieldU64(m, "usage_pb", "log-usage", line); err != nil {
		return LogUsage{}, err
	}
	if u.CapacityPB, err = fieldU64(m, "capacity_pb", "log-usage", line); err != nil {
		return LogUsage{}, err
	}
	if u.PBS, err = fieldU64(m, "pbs", "log-usage", line); err != nil {
		return LogUsage{}, err
	}
	return u, nil
}

// ActionInfo is the activity of one archive action on one volume.
type ActionInfo struct {
	Running   int
	LastStart time.Time // zero if never started
}

// VolActions is one line of get all-actions (archive).
type VolActions struct {
	Vol     string
	Actions map[string]ActionInfo
}

// ParseAllActions parses "VOL ACTION N TIME [ACTION N TIME]...".
func ParseAllActions(line string) (VolActions, error) {
	f := strings.Split(line, " ")
	if len(f) < 1 || f[0] == "" || (len(f)-1)%3 != 0 {
		return VolActions{}, badLine("all-actions", line, "want VOL followed by ACTION N TIME triples")
	}
	va := VolActions{Vol: f[0], Actions: map[string]ActionInfo{}}
	for i := 1; i < len(f); i += 3 {
		n, err := strconv.ParseUint(f[i+1], 10, 31)
		if err != nil || f[i] == "" {
			return VolActions{}, badLine("all-actions", line, "bad count of "+f[i])
		}
		ts, err := ParsePrettyTime(f[i+2])
		if err != nil {
			return VolActions{}, badLine("all-actions", line, "bad time of "+f[i])
		}
		if _, dup := va.Actions[f[i]]; dup {
			return VolActions{}, badLine("all-actions", line, f[i]+" twice")
		}
		va.Actions[f[i]] = ActionInfo{Running: int(n), LastStart: ts}
	}
	return va, nil
}

// Defaults of SyncOpt (walb-tools SyncOpt and CompressOpt).
const (
	DefaultMaxMergeSize = 1 << 30
	DefaultSyncBulkSize = 64 << 10
)

// SyncOpt is how diffs travel to an archive (walb-tools SyncOpt): the
// compression and delay of a proxy's archive info, and the merge and bulk
// limits of a replication.
type SyncOpt struct {
	// Compression of the diffs sent (archive-info TYPE:LEVEL:NCPU).
	Compression wdiff.Compression
	// Delay postpones each diff's send from the proxy (whole seconds).
	Delay time.Duration
	// MaxMergeSize bounds the diffs merged into one transfer
	// (replication).
	MaxMergeSize uint64
	// BulkSize is the replication bulk.
	BulkSize uint64
}

// DefaultSyncOpt returns snappy:0:1, no delay, 1 GiB merges, 64 KiB bulks.
func DefaultSyncOpt() SyncOpt {
	return SyncOpt{
		Compression:  wdiff.Compression{Codec: wdiff.CodecSnappy, Level: 0, Workers: 1},
		MaxMergeSize: DefaultMaxMergeSize,
		BulkSize:     DefaultSyncBulkSize,
	}
}

// Validate checks the fields the servers check.
func (o SyncOpt) Validate() error {
	if err := o.Compression.Validate(); err != nil {
		return errors.Wrapf(ErrBadArgs, "sync option compression %s: %v", o.Compression, err)
	}
	if o.Compression.Level < 0 || o.Compression.Level > 9 {
		return errors.Wrapf(ErrBadArgs, "sync option compression level %d: want 0..9", o.Compression.Level)
	}
	if o.Delay < 0 || o.Delay%time.Second != 0 || o.Delay/time.Second > math.MaxUint32 {
		return errors.Wrapf(ErrBadArgs, "sync option delay %s: want whole seconds", o.Delay)
	}
	return nil
}

// ArchiveInfoArgs returns the trailing arguments of archive-info
// add|update: "TYPE:LEVEL:NCPU" and the delay in seconds.
func (o SyncOpt) ArchiveInfoArgs() []string {
	return []string{o.Compression.String(), strconv.FormatInt(int64(o.Delay/time.Second), 10)}
}

// ReplicateArgs returns the trailing arguments of replicate: "CMPR
// MAXMERGE BULK" (walb-tools SyncOpt.getReplicateArgs). A zero MaxMergeSize
// or BulkSize stands for its default (DefaultMaxMergeSize,
// DefaultSyncBulkSize).
func (o SyncOpt) ReplicateArgs() []string {
	mm, bulk := o.MaxMergeSize, o.BulkSize
	if mm == 0 {
		mm = DefaultMaxMergeSize
	}
	if bulk == 0 {
		bulk = DefaultSyncBulkSize
	}
	return []string{o.Compression.String(), FormatSize(mm), FormatSize(bulk)}
}

// FormatSize writes a byte count the way walb-tools' size arguments are
// written: with the largest of the K, M, G, T suffixes (powers of 1024)
// that divides it exactly, or as a plain number.
func FormatSize(n uint64) string {
	if n > 0 {
		for _, u := range []struct {
			shift  uint
			suffix string
		}{{40, "T"}, {30, "G"}, {20, "M"}, {10, "K"}} {
			if n%(1<<u.shift) == 0 {
				return strconv.FormatUint(n>>u.shift, 10) + u.suffix
			}
		}
	}
	return strconv.FormatUint(n, 10)
}

// ArchiveInfo is a proxy's record of where and how it sends a volume's
// diffs to one archive (archive-info get).
type ArchiveInfo struct {
	Addr        string // host:port
	Compression wdiff.Compression
	Delay       time.Duration
}

// SyncOpt returns the archive info's options, with the replication fields
// at their defaults (walb-tools get_archive_info).
func (a ArchiveInfo) SyncOpt() SyncOpt {
	o := DefaultSyncOpt()
	o.Compression, o.Delay = a.Compression, a.Delay
	return o
}

// ParseArchiveInfo parses the answer of archive-info get:
// "HOST:PORT TYPE:LEVEL:NCPU DELAY".
func ParseArchiveInfo(s string) (ArchiveInfo, error) {
	f := strings.Split(s, " ")
	if len(f) != 3 {
		return ArchiveInfo{}, badLine("archive-info", s, "want ADDR:PORT TYPE:LEVEL:NCPU DELAY")
	}
	host, port, err := net.SplitHostPort(f[0])
	if err != nil || host == "" {
		return ArchiveInfo{}, badLine("archive-info", s, "bad address")
	}
	if p, err := strconv.ParseUint(port, 10, 16); err != nil || p == 0 {
		return ArchiveInfo{}, badLine("archive-info", s, "bad port")
	}
	a := ArchiveInfo{Addr: f[0]}
	if a.Compression, err = wdiff.ParseCompression(f[1]); err != nil {
		return ArchiveInfo{}, badLine("archive-info", s, "bad compression")
	}
	d, err := strconv.ParseUint(f[2], 10, 32)
	if err != nil {
		return ArchiveInfo{}, badLine("archive-info", s, "bad delay")
	}
	a.Delay = time.Duration(d) * time.Second
	return a, nil
}
