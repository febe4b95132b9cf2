package storage

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/meta"
)

// Queries behind `get` and `status` (system.md §3.8).

// IsOverflow reports whether the volume's log overflowed (get is-overflow).
func (s *Storage) IsOverflow(ctx context.Context, vol string) (bool, error) {
	v, err := s.volume(vol)
	if err != nil {
		return false, err
	}
	dev, err := s.device(ctx, v)
	if err != nil {
		return false, err
	}
	return dev.IsLogOverflow(ctx)
}

// LogUsage is a volume's log occupancy.
type LogUsage struct {
	Vol        string
	UsagePB    uint64 // latest - oldest
	CapacityPB uint64
	PBS        uint32
}

// String formats u as walb-tools' get log-usage line.
func (u LogUsage) String() string {
	return fmt.Sprintf("name:%s\tusage_pb:%d\tcapacity_pb:%d\tpbs:%d", u.Vol, u.UsagePB, u.CapacityPB, u.PBS)
}

// LogUsage returns the volume's log occupancy (get log-usage VOL).
func (s *Storage) LogUsage(ctx context.Context, vol string) (LogUsage, error) {
	v, err := s.volume(vol)
	if err != nil {
		return LogUsage{}, err
	}
	dev, err := s.device(ctx, v)
	if err != nil {
		return LogUsage{}, err
	}
	info, err := dev.Info(ctx)
	if err != nil {
		return LogUsage{}, err
	}
	l, err := dev.Lsids(ctx)
	if err != nil {
		return LogUsage{}, err
	}
	return LogUsage{Vol: vol, UsagePB: l.Latest - l.Oldest, CapacityPB: info.LogCapacityPB, PBS: info.PBS}, nil
}

// LogUsageAll returns the log usage of every volume whose device answers
// (get log-usage).
func (s *Storage) LogUsageAll(ctx context.Context) []LogUsage {
	var v []LogUsage
	for _, vol := range s.VolumeNames() {
		if u, err := s.LogUsage(ctx, vol); err == nil {
			v = append(v, u)
		}
	}
	return v
}

// LatestSnap returns the newest snapshot record of a Target volume (the
// queue's front, or done when the queue is empty); ok is false for other
// volumes (get latest-snap).
func (s *Storage) LatestSnap(vol string) (info SnapshotInfo, ok bool) {
	v, err := s.volume(vol)
	if err != nil || s.states.State(vol) != StateTarget {
		return info, false
	}
	v.mu.Lock()
	rec := v.done
	if front, err := v.queue.Front(); err == nil {
		rec = front
	}
	v.mu.Unlock()
	return SnapshotInfo{Vol: vol, Gid: rec.Gid, Lsid: rec.Lsid, Timestamp: rec.Timestamp}, true
}

// LatestSnapLine formats a storage SnapshotInfo as get latest-snap does.
func LatestSnapLine(i SnapshotInfo) string {
	return fmt.Sprintf("name:%s\tkind:storage\tgid:%d\tlsid:%d\ttimestamp:%s",
		i.Vol, i.Gid, i.Lsid, meta.FormatPrettyTime(i.Timestamp))
}

// UUID returns the volume's log uuid as last saved (get uuid).
func (s *Storage) UUID(vol string) (meta.UUID, error) {
	v, err := s.volume(vol)
	if err != nil {
		return meta.UUID{}, err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.uuid, nil
}

// Done returns the volume's done record and its queue, newest first (for
// status, tests and the controller).
func (s *Storage) Done(vol string) (meta.LsidGid, []meta.LsidGid, error) {
	v, err := s.volume(vol)
	if err != nil {
		return meta.LsidGid{}, nil, err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.done, v.queue.Items(), nil
}

// Status returns the global status lines (status without a volume).
func (s *Storage) Status(ctx context.Context) []string {
	c := s.cfg
	v := []string{
		"-----StorageGlobal-----",
		"id " + c.ID,
		"baseDir " + c.BaseDir,
		fmt.Sprintf("maxWlogSendMb %d", c.MaxWlogSendBytes>>20),
		fmt.Sprintf("maxWlogSendBytes %d", c.MaxWlogSendBytes),
		fmt.Sprintf("implicitSnapshotIntervalSec %d", int64(c.SnapshotInterval/time.Second)),
		fmt.Sprintf("minDelaySecForRetry %d", int64(c.RetryMin/time.Second)),
		fmt.Sprintf("maxDelaySecForRetry %d", int64(c.RetryMax/time.Second)),
		fmt.Sprintf("maxForegroundTasks %d", c.MaxForeground),
		fmt.Sprintf("maxBackgroundTasks %d", c.MaxBackground),
		fmt.Sprintf("fullScanBytesPerSec %d", s.FullScanBps()),
		"-----Archive-----",
		"host " + c.Archive,
		"-----Proxy-----",
	}
	v = append(v, s.proxies.status()...)
	if s.ownTasks { // otherwise the queue's owner reports it
		v = append(v, "-----TaskQueue-----")
		for _, t := range s.tasks.Tasks() {
			v = append(v, t.String())
		}
	}
	s.tsd.mu.Lock()
	if !s.tsd.at.IsZero() {
		v = append(v, "tsDeltaGatheredAt "+meta.FormatPrettyTime(s.tsd.at))
	}
	s.tsd.mu.Unlock()
	v = append(v, "-----Volume-----")
	for _, vol := range s.VolumeNames() {
		v = append(v, s.volumeLine(ctx, vol))
	}
	return v
}

// volumeLine is one volume's line of the global status.
func (s *Storage) volumeLine(ctx context.Context, vol string) string {
	line := fmt.Sprintf("volume %s state %s", vol, s.states.State(vol))
	done, q, err := s.Done(vol)
	if err != nil {
		return line
	}
	latestGid := done.Gid
	if len(q) > 0 {
		latestGid = q[0].Gid
	}
	line += fmt.Sprintf(" oldestGid %d latestGid %d", int64(done.Gid), int64(latestGid))
	u, err := s.LogUsage(ctx, vol)
	if err != nil {
		return line + " device " + err.Error()
	}
	v, _ := s.volume(vol)
	dev, err := s.device(ctx, v)
	if err != nil {
		return line
	}
	l, err := dev.Lsids(ctx)
	if err != nil {
		return line
	}
	return line + fmt.Sprintf(" logUsagePb %d logCapacityPb %d oldestLsid %d permanentLsid %d",
		u.UsagePB, u.CapacityPB, l.Oldest, l.Permanent)
}

// VolStatus returns the status lines of one volume (status VOL).
func (s *Storage) VolStatus(ctx context.Context, vol string) ([]string, error) {
	st := s.states.State(vol)
	out := []string{"hostType storage", "volId " + vol, "state " + st}
	v, err := s.volume(vol)
	if err != nil {
		if errors.Is(err, ErrNotFound) {
			return out, nil
		}
		return nil, err
	}
	acts := s.states.Actions(vol)
	names := slices.Sorted(maps.Keys(acts))
	var as []string
	for _, n := range []string{ActionWlogSend, ActionWlogRemove} {
		if !slices.Contains(names, n) {
			names = append(names, n)
		}
	}
	for _, n := range names {
		as = append(as, fmt.Sprintf("%s:%d", n, acts[n].Running))
	}
	sort.Strings(as)
	out = append(out,
		"action "+strings.Join(as, " "),
		"stopState "+s.states.StopState(vol).String(),
		fmt.Sprintf("isUnderMonitoring %t", s.isMonitored(v)),
		"wdevPath "+v.devPath,
	)
	if dev, err := s.device(ctx, v); err != nil {
		out = append(out, "device "+err.Error())
	} else if info, err := dev.Info(ctx); err != nil {
		out = append(out, "device "+err.Error())
	} else {
		over, _ := dev.IsLogOverflow(ctx)
		out = append(out,
			fmt.Sprintf("sizeLb %d", info.SizeLB),
			fmt.Sprintf("isOverflow %t", over),
		)
		if l, err := dev.Lsids(ctx); err == nil {
			out = append(out,
				fmt.Sprintf("logUsagePb %d", l.Latest-l.Oldest),
				fmt.Sprintf("logCapacityPb %d", info.LogCapacityPB),
				"lsids "+strings.ReplaceAll(strings.TrimSpace(l.String()), "\n", " "),
			)
		}
		out = append(out,
			"deviceUuid "+info.UUID.String(),
			fmt.Sprintf("pbs %d", info.PBS),
			fmt.Sprintf("salt %08x", info.Salt),
		)
	}
	if p, ok := s.BackupProgress(vol); ok {
		out = append(out, fmt.Sprintf("backup %s startedAt %s readLb %d comparedLb %d sizeLb %d", p.Command,
			meta.FormatPrettyTime(p.Started), p.ReadBytes/512, p.ComparedBytes/512, p.SizeBytes/512))
	}
	v.mu.Lock()
	out = append(out, "uuid "+v.uuid.String())
	if !v.lastSend.IsZero() {
		out = append(out, "lastWlogSentTime "+meta.FormatPrettyTime(v.lastSend))
	}
	out = append(out, "-----DoneFile-----", v.done.String(), "-----QueueFile-----")
	for _, r := range v.queue.Items() {
		out = append(out, r.String())
	}
	v.mu.Unlock()
	return out, nil
}

// tsDeltas holds the last gather-latest-snap result.
type tsDeltas struct {
	mu    sync.Mutex
	lines []string
	at    time.Time
}

// TsDelta returns the last ts-delta lines (get ts-delta): per Target volume,
// its latest gid and time here and on the primary archive, and the time
// difference in seconds.
func (s *Storage) TsDelta() []string {
	s.tsd.mu.Lock()
	defer s.tsd.mu.Unlock()
	return slices.Clone(s.tsd.lines)
}

// tsDeltaLoop runs gather-latest-snap every TsDeltaInterval, the first time
// 5 s after start.
func (s *Storage) tsDeltaLoop(ctx context.Context, g LatestSnapGatherer) {
	t := time.NewTimer(5 * time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := s.gatherTsDelta(ctx, g); err != nil && ctx.Err() == nil {
			s.log.Warn("gather-latest-snap failed", "peer", s.cfg.Archive, "err", err)
		}
		t.Reset(s.cfg.TsDeltaInterval)
	}
}

func (s *Storage) gatherTsDelta(ctx context.Context, g LatestSnapGatherer) error {
	var mine []SnapshotInfo
	var vols []string
	for _, vol := range s.VolumeNames() {
		if i, ok := s.LatestSnap(vol); ok {
			mine = append(mine, i)
			vols = append(vols, vol)
		}
	}
	theirs, err := g.GatherLatestSnap(ctx, s.cfg.Archive, vols)
	if err != nil {
		return err
	}
	if len(theirs) != len(mine) {
		return errors.Errorf("storage: gather-latest-snap: %d answers for %d volumes", len(theirs), len(mine))
	}
	lines := make([]string, len(mine))
	for i := range mine {
		lines[i] = tsDeltaLine(mine[i], theirs[i], s.cfg.Archive)
	}
	s.tsd.mu.Lock()
	s.tsd.lines, s.tsd.at = lines, s.cfg.Now()
	s.tsd.mu.Unlock()
	return nil
}

// tsDeltaLine formats one volume's ts-delta as walb-tools does; dst.Gid
// meta.InvalidGid means the archive has no snapshot of the volume.
func tsDeltaLine(src, dst SnapshotInfo, dest string) string {
	line := fmt.Sprintf("name:%s\tdest:%s\tkind:storage\tdest_kind:archive\tgid:%d\tts:%s\t",
		src.Vol, dest, src.Gid, meta.FormatPrettyTime(src.Timestamp))
	if dst.Gid == meta.InvalidGid {
		return line + "dest_ts:\tdest_gid:\tts_delta:"
	}
	delta := src.Timestamp.Unix() - dst.Timestamp.Unix()
	return line + fmt.Sprintf("dest_gid:%d\tdest_ts:%s\tts_delta:%d", dst.Gid, meta.FormatPrettyTime(dst.Timestamp), delta)
}
