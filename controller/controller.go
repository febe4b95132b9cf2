package controller

import (
	"context"
	"math"
	"slices"
	"strconv"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/server"
)

// LatestGid stands for "the newest" where a gid bounds a query (walb-tools
// UINT64_MAX).
const LatestGid = math.MaxUint64

// State names the controller relies on (system.md §3.1, §4.1, §5.1).
const (
	StateClear     = "Clear"
	StateSyncReady = "SyncReady"
	StateStopped   = "Stopped"
	StateTarget    = "Target"
	StateStandby   = "Standby"
	StateStarted   = "Started"
	StateArchived  = "Archived"
)

// Archive action names (get num-action VOL ACTION).
const (
	ActionMerge            = "Merge"
	ActionApply            = "Apply"
	ActionRestore          = "Restore"
	ActionReplSyncAsClient = "ReplSyncAsClient"
	ActionResize           = "Resize"
)

// State sets of walb-tools' controller.
var (
	storageDuringFullSync        = []string{"FullSync", StateStopped, "StartTarget"}
	storageDuringHashSync        = []string{"HashSync", StateStopped, "StartTarget"}
	storageDuringStopForTarget   = []string{StateTarget, "StopTarget"}
	storageDuringStopForStandby  = []string{StateStandby, "StopStandby"}
	proxyActive                  = []string{StateStarted, "WlogRecv"}
	proxyDuringStop              = []string{StateStarted, "WlogRecv", "Stop", "WaitForEmpty"}
	archiveActive                = []string{StateArchived, "WdiffRecv", "HashSync", "ReplSyncAsServer"}
	archiveAcceptForResize       = append(slices.Clone(archiveActive), StateStopped, StateSyncReady)
	archiveAcceptForClearVol     = []string{StateStopped, StateSyncReady}
	archiveDuringStop            = append(slices.Clone(archiveActive), "Stop")
	archiveDuringReplicate       = []string{"ReplSyncAsServer", "FullSync", "Resync"}
	storageStandbyOrClear        = []string{StateStandby, StateClear}
	storagePrevStatesForSyncStop = []string{StateStandby, "HashSync", "FullSync"}
)

// IsArchiveActive reports whether an archive state is one of walb-tools'
// aActive states (Archived and the transient states of a receiving
// archive): the states in which diffs arrive and restores run.
func IsArchiveActive(state string) bool { return slices.Contains(archiveActive, state) }

// Controller drives the servers of one backup group (walb-tools
// walblib.Controller). Its methods are synchronous unless their name ends
// in NB: they send the commands, then poll the servers until the operation
// is complete, under the caller's context. It is safe for concurrent use.
type Controller struct {
	layout  Layout
	opt     Options
	clients map[string]*Client // by address
}

// New returns a controller of layout. The layout is checked (Validate);
// no server is contacted.
func New(layout Layout, opts *Options) (*Controller, error) {
	if err := layout.Validate(); err != nil {
		return nil, err
	}
	c := &Controller{layout: layout, opt: opts.withDefaults(), clients: map[string]*Client{}}
	for _, s := range layout.All() {
		c.clients[s.Addr] = NewClient(s.Addr, &c.opt)
	}
	return c, nil
}

// Layout returns the controller's layout.
func (c *Controller) Layout() Layout { return c.layout }

// Client returns the client of server s, for commands this package does
// not wrap.
func (c *Controller) Client(s Server) *Client {
	if cl, ok := c.clients[s.Addr]; ok {
		return cl
	}
	return NewClient(s.Addr, &c.opt)
}

// --- Queries ---------------------------------------------------------------

// HostType returns what s answers to get host-type.
func (c *Controller) HostType(ctx context.Context, s Server) (string, error) {
	return c.Client(s).GetString(ctx, "host-type")
}

// CheckKinds asks every server of the layout its host type and fails with
// ErrWrongKind if one is not the kind the layout says (a swapped address),
// or with the first connection error.
func (c *Controller) CheckKinds(ctx context.Context) error {
	for _, s := range c.layout.All() {
		ht, err := c.HostType(ctx, s)
		if err != nil {
			return err
		}
		if ht != s.Kind.String() {
			return errors.Wrapf(ErrWrongKind, "%s answers host type %q", s, ht)
		}
	}
	return nil
}

// AliveServers returns the servers of the layout that answer get
// host-type (walb-tools get_alive_server).
func (c *Controller) AliveServers(ctx context.Context) []Server {
	var out []Server
	for _, s := range c.layout.All() {
		if _, err := c.HostType(ctx, s); err == nil {
			out = append(out, s)
		}
	}
	return out
}

// GetState returns vol's state on s.
func (c *Controller) GetState(ctx context.Context, s Server, vol string) (string, error) {
	if err := checkVol(vol); err != nil {
		return "", err
	}
	return c.Client(s).GetString(ctx, "state", vol)
}

// ServerState is one server's state of a volume, or why it could not be
// read.
type ServerState struct {
	Server Server
	State  string
	Err    error
}

// GetStateAll returns vol's state on every server of the layout (walb-tools
// get_state_all); a server that does not answer has Err set.
func (c *Controller) GetStateAll(ctx context.Context, vol string) []ServerState {
	all := c.layout.All()
	out := make([]ServerState, len(all))
	for i, s := range all {
		st, err := c.GetState(ctx, s, vol)
		out[i] = ServerState{Server: s, State: st, Err: err}
	}
	return out
}

// VerifyState fails with ErrBadState unless vol is in state want on s.
func (c *Controller) VerifyState(ctx context.Context, s Server, vol, want string) error {
	st, err := c.GetState(ctx, s, vol)
	if err != nil {
		return err
	}
	if st != want {
		return errors.Wrapf(ErrBadState, "%s: volume %s is %s, want %s", s, vol, st, want)
	}
	return nil
}

// GetVolList returns the volumes s knows.
func (c *Controller) GetVolList(ctx context.Context, s Server) ([]string, error) {
	return c.Client(s).GetStrings(ctx, "vol")
}

// Status returns the status lines of s: the whole server's with vol "",
// or the volume's.
func (c *Controller) Status(ctx context.Context, s Server, vol string) ([]string, error) {
	if vol == "" {
		return c.Client(s).Status(ctx)
	}
	if err := checkVol(vol); err != nil {
		return nil, err
	}
	return c.Client(s).Status(ctx, vol)
}

// GetUUID returns the device UUID of vol on a storage (its log's current
// identity) or an archive (the UUID of the device its diffs come from).
func (c *Controller) GetUUID(ctx context.Context, s Server, vol string) (meta.UUID, error) {
	if err := needKind(s, KindStorage, KindArchive); err != nil {
		return meta.UUID{}, err
	}
	return c.getUUID(ctx, s, "uuid", vol)
}

// GetArchiveUUID returns the lineage identity of vol on an archive: equal
// on two archives only if one was replicated from the other since the last
// full backup.
func (c *Controller) GetArchiveUUID(ctx context.Context, ax Server, vol string) (meta.UUID, error) {
	if err := needKind(ax, KindArchive); err != nil {
		return meta.UUID{}, err
	}
	return c.getUUID(ctx, ax, "archive-uuid", vol)
}

func (c *Controller) getUUID(ctx context.Context, s Server, target, vol string) (meta.UUID, error) {
	if err := checkVol(vol); err != nil {
		return meta.UUID{}, err
	}
	str, err := c.Client(s).GetString(ctx, target, vol)
	if err != nil {
		return meta.UUID{}, err
	}
	u, err := meta.ParseUUID(str)
	if err != nil {
		return meta.UUID{}, errors.Wrapf(ErrBadValue, "%s get %s %s: %q", s, target, vol, str)
	}
	return u, nil
}

// IsOverflow reports whether vol's log overflowed on storage sx: logs were
// lost and only a hash backup brings the archives back.
func (c *Controller) IsOverflow(ctx context.Context, sx Server, vol string) (bool, error) {
	if err := needKind(sx, KindStorage); err != nil {
		return false, err
	}
	if err := checkVol(vol); err != nil {
		return false, err
	}
	return c.Client(sx).GetBool(ctx, "is-overflow", vol)
}

// IsWdiffSendError reports whether proxy px gave up sending vol's diffs to
// archive ax (smaller-lv-size, archive-not-found, or no wlog for -rto);
// kick, a new wlog or start clear it.
func (c *Controller) IsWdiffSendError(ctx context.Context, px Server, vol string, ax Server) (bool, error) {
	if err := needKind(px, KindProxy); err != nil {
		return false, err
	}
	if err := needKind(ax, KindArchive); err != nil {
		return false, err
	}
	if err := checkVol(vol); err != nil {
		return false, err
	}
	return c.Client(px).GetBool(ctx, "is-wdiff-send-error", vol, ax.Name)
}

// GetLogUsage returns the log usage of vol on storage sx, or of every
// volume with vol "".
func (c *Controller) GetLogUsage(ctx context.Context, sx Server, vol string) ([]LogUsage, error) {
	if err := needKind(sx, KindStorage); err != nil {
		return nil, err
	}
	lines, err := c.Client(sx).GetStrings(ctx, "log-usage", optVol(vol)...)
	if err != nil {
		return nil, err
	}
	out := make([]LogUsage, 0, len(lines))
	for _, l := range lines {
		u, err := ParseLogUsage(l)
		if err != nil {
			return nil, errors.WithMessagef(err, "%s get log-usage", sx)
		}
		out = append(out, u)
	}
	return out, nil
}

// GetLatestSnap returns the newest snapshot s holds of vol, or of every
// volume with vol "" (one entry per archive queue on a proxy).
func (c *Controller) GetLatestSnap(ctx context.Context, s Server, vol string) ([]LatestSnap, error) {
	lines, err := c.Client(s).GetStrings(ctx, "latest-snap", optVol(vol)...)
	if err != nil {
		return nil, err
	}
	out := make([]LatestSnap, 0, len(lines))
	for _, l := range lines {
		ls, err := ParseLatestSnap(l)
		if err != nil {
			return nil, errors.WithMessagef(err, "%s get latest-snap", s)
		}
		out = append(out, ls)
	}
	return out, nil
}

// GetVolSizeLB returns vol's size on archive ax in logical blocks.
func (c *Controller) GetVolSizeLB(ctx context.Context, ax Server, vol string) (uint64, error) {
	return c.archiveU64(ctx, ax, "vol-size", vol)
}

// GetProgressLB returns how far a running full backup, hash backup or
// replication into vol on ax has come, in logical blocks; 0 when none
// runs.
func (c *Controller) GetProgressLB(ctx context.Context, ax Server, vol string) (uint64, error) {
	return c.archiveU64(ctx, ax, "progress", vol)
}

// GetNumDiff returns the number of vol's diffs on ax whose begin gid is in
// [gid0, gid1).
func (c *Controller) GetNumDiff(ctx context.Context, ax Server, vol string, gid0, gid1 uint64) (uint64, error) {
	return c.archiveU64(ctx, ax, "num-diff", vol, gidStr(gid0), gidStr(gid1))
}

// GetTotalDiffSize returns the bytes of vol's diffs on ax whose begin gid
// is in [gid0, gid1).
func (c *Controller) GetTotalDiffSize(ctx context.Context, ax Server, vol string, gid0, gid1 uint64) (uint64, error) {
	return c.archiveU64(ctx, ax, "total-diff-size", vol, gidStr(gid0), gidStr(gid1))
}

// GetNumAction returns how many instances of action (ActionMerge,
// ActionApply...) run on vol on archive ax.
func (c *Controller) GetNumAction(ctx context.Context, ax Server, vol, action string) (int, error) {
	n, err := c.archiveU64(ctx, ax, "num-action", vol, action)
	return int(n), err
}

func (c *Controller) archiveU64(ctx context.Context, ax Server, target, vol string, args ...string) (uint64, error) {
	if err := needKind(ax, KindArchive); err != nil {
		return 0, err
	}
	if err := checkVol(vol); err != nil {
		return 0, err
	}
	return c.Client(ax).GetU64(ctx, target, append([]string{vol}, args...)...)
}

// GetAllActions returns the action counters of every active volume of
// archive ax (walb-tools get_all_actions).
func (c *Controller) GetAllActions(ctx context.Context, ax Server) ([]VolActions, error) {
	if err := needKind(ax, KindArchive); err != nil {
		return nil, err
	}
	lines, err := c.Client(ax).GetStrings(ctx, "all-actions")
	if err != nil {
		return nil, err
	}
	out := make([]VolActions, 0, len(lines))
	for _, l := range lines {
		va, err := ParseAllActions(l)
		if err != nil {
			return nil, errors.WithMessagef(err, "%s get all-actions", ax)
		}
		out = append(out, va)
	}
	return out, nil
}

// ExistsBaseImage reports whether archive ax holds a base image of vol
// (false before the first full backup or replication has created one).
func (c *Controller) ExistsBaseImage(ctx context.Context, ax Server, vol string) (bool, error) {
	if err := needKind(ax, KindArchive); err != nil {
		return false, err
	}
	if err := checkVol(vol); err != nil {
		return false, err
	}
	return c.Client(ax).GetBool(ctx, "exists-base-image", vol)
}

// GetBase returns the base image state of vol on archive ax.
func (c *Controller) GetBase(ctx context.Context, ax Server, vol string) (meta.State, error) {
	return c.archiveState(ctx, ax, "base", vol)
}

// GetMetaState returns the state of vol's image on ax at gid (LatestGid
// for the newest) as the chain of diffs from the base reaches it; applying
// gives the form an apply up to gid would persist first.
func (c *Controller) GetMetaState(ctx context.Context, ax Server, vol string, applying bool, gid uint64) (meta.State, error) {
	flag := "0"
	if applying {
		flag = "1"
	}
	return c.archiveState(ctx, ax, "meta-state", vol, flag, gidStr(gid))
}

func (c *Controller) archiveState(ctx context.Context, ax Server, target, vol string, args ...string) (meta.State, error) {
	if err := needKind(ax, KindArchive); err != nil {
		return meta.State{}, err
	}
	if err := checkVol(vol); err != nil {
		return meta.State{}, err
	}
	s, err := c.Client(ax).GetString(ctx, target, append([]string{vol}, args...)...)
	if err != nil {
		return meta.State{}, err
	}
	st, err := meta.ParseState(s)
	if err != nil {
		return meta.State{}, errors.Wrapf(ErrBadValue, "%s get %s %s: %v", ax, target, vol, err)
	}
	return st, nil
}

// GetMetaSnap returns the snapshot vol's chain of diffs on ax reaches at
// gid (LatestGid for the newest).
func (c *Controller) GetMetaSnap(ctx context.Context, ax Server, vol string, gid uint64) (meta.Snap, error) {
	if err := needKind(ax, KindArchive); err != nil {
		return meta.Snap{}, err
	}
	if err := checkVol(vol); err != nil {
		return meta.Snap{}, err
	}
	s, err := c.Client(ax).GetString(ctx, "meta-snap", vol, gidStr(gid))
	if err != nil {
		return meta.Snap{}, err
	}
	snap, err := meta.ParseSnap(s)
	if err != nil {
		return meta.Snap{}, errors.Wrapf(ErrBadValue, "%s get meta-snap %s: %v", ax, vol, err)
	}
	return snap, nil
}

// GetDiffList returns vol's diffs on ax whose begin gid is in [gid0,
// gid1) (0, LatestGid for all).
func (c *Controller) GetDiffList(ctx context.Context, ax Server, vol string, gid0, gid1 uint64) ([]meta.Diff, error) {
	return c.archiveDiffs(ctx, ax, "diff", vol, gidStr(gid0), gidStr(gid1))
}

// GetApplicableDiffList returns the chain of diffs from vol's base on ax,
// cut where it would pass maxGid (LatestGid for the whole chain).
func (c *Controller) GetApplicableDiffList(ctx context.Context, ax Server, vol string, maxGid uint64) ([]meta.Diff, error) {
	return c.archiveDiffs(ctx, ax, "applicable-diff", vol, gidStr(maxGid))
}

func (c *Controller) archiveDiffs(ctx context.Context, ax Server, target, vol string, args ...string) ([]meta.Diff, error) {
	if err := needKind(ax, KindArchive); err != nil {
		return nil, err
	}
	if err := checkVol(vol); err != nil {
		return nil, err
	}
	lines, err := c.Client(ax).GetStrings(ctx, target, append([]string{vol}, args...)...)
	if err != nil {
		return nil, err
	}
	ds, err := ParseDiffList(lines)
	return ds, errors.WithMessagef(err, "%s get %s %s", ax, target, vol)
}

// ExistsDiff reports whether archive ax has a diff of vol from snapshot b
// to snapshot e.
func (c *Controller) ExistsDiff(ctx context.Context, ax Server, vol string, b, e meta.Snap) (bool, error) {
	if err := needKind(ax, KindArchive); err != nil {
		return false, err
	}
	if err := checkVol(vol); err != nil {
		return false, err
	}
	return c.Client(ax).GetBool(ctx, "exists-diff", vol,
		gidStr(b.GidB), gidStr(b.GidE), gidStr(e.GidB), gidStr(e.GidE))
}

// GetRestorable returns the snapshots of vol archive ax can restore, oldest
// first: the explicit ones, or every clean one with all.
func (c *Controller) GetRestorable(ctx context.Context, ax Server, vol string, all bool) ([]RestorableGid, error) {
	if err := needKind(ax, KindArchive); err != nil {
		return nil, err
	}
	if err := checkVol(vol); err != nil {
		return nil, err
	}
	args := []string{vol}
	if all {
		args = append(args, "all")
	}
	lines, err := c.Client(ax).GetStrings(ctx, "restorable", args...)
	if err != nil {
		return nil, err
	}
	out := make([]RestorableGid, 0, len(lines))
	for _, l := range lines {
		r, err := ParseRestorable(l)
		if err != nil {
			return nil, errors.WithMessagef(err, "%s get restorable %s", ax, vol)
		}
		out = append(out, r)
	}
	return out, nil
}

// GetRestorableGids returns the gids of GetRestorable.
func (c *Controller) GetRestorableGids(ctx context.Context, ax Server, vol string, all bool) ([]uint64, error) {
	rs, err := c.GetRestorable(ctx, ax, vol, all)
	if err != nil {
		return nil, err
	}
	gids := make([]uint64, len(rs))
	for i, r := range rs {
		gids[i] = r.Gid
	}
	return gids, nil
}

// GetLatestClean returns the newest restorable gid of vol on ax; ErrBadGid
// if there is none.
func (c *Controller) GetLatestClean(ctx context.Context, ax Server, vol string) (uint64, error) {
	gids, err := c.GetRestorableGids(ctx, ax, vol, false)
	if err != nil {
		return 0, err
	}
	if len(gids) == 0 {
		return 0, errors.Wrapf(ErrBadGid, "%s: volume %s has no restorable snapshot", ax, vol)
	}
	return gids[len(gids)-1], nil
}

// GetRestored returns the gids of vol's restored images on ax.
func (c *Controller) GetRestored(ctx context.Context, ax Server, vol string) ([]uint64, error) {
	return c.archiveGids(ctx, ax, "restored", vol)
}

// GetCold returns the gids of vol's cold snapshots on ax (thin mode).
func (c *Controller) GetCold(ctx context.Context, ax Server, vol string) ([]uint64, error) {
	return c.archiveGids(ctx, ax, "cold", vol)
}

func (c *Controller) archiveGids(ctx context.Context, ax Server, target, vol string) ([]uint64, error) {
	if err := needKind(ax, KindArchive); err != nil {
		return nil, err
	}
	if err := checkVol(vol); err != nil {
		return nil, err
	}
	lines, err := c.Client(ax).GetStrings(ctx, target, vol)
	if err != nil {
		return nil, err
	}
	gids, err := ParseGids(lines)
	return gids, errors.WithMessagef(err, "%s get %s %s", ax, target, vol)
}

// GetRestoredPath returns where the restored image of vol at gid lives on
// ax's host (walb-tools: the LV /dev/VG/wr_VOL_GID).
func (c *Controller) GetRestoredPath(ctx context.Context, ax Server, vol string, gid uint64) (string, error) {
	if err := needKind(ax, KindArchive); err != nil {
		return "", err
	}
	if err := checkVol(vol); err != nil {
		return "", err
	}
	return c.Client(ax).GetString(ctx, "restored-path", vol, gidStr(gid))
}

// GetRestoredExport returns the NBD export name under which ax serves the
// restored image of vol at gid; the error matches wire.ErrNotFound when ax
// exports nothing.
func (c *Controller) GetRestoredExport(ctx context.Context, ax Server, vol string, gid uint64) (string, error) {
	if err := needKind(ax, KindArchive); err != nil {
		return "", err
	}
	if err := checkVol(vol); err != nil {
		return "", err
	}
	return c.Client(ax).GetString(ctx, "restored-export", vol, gidStr(gid))
}

// GetTsDelta returns the ts-delta lines of s (the gid and time lag between
// a storage or archive and its peer); ParseFields reads each.
func (c *Controller) GetTsDelta(ctx context.Context, s Server) ([]string, error) {
	return c.Client(s).GetStrings(ctx, "ts-delta")
}

// --- helpers ---------------------------------------------------------------

func gidStr(g uint64) string { return strconv.FormatUint(g, 10) }

func optVol(vol string) []string {
	if vol == "" {
		return nil
	}
	return []string{vol}
}

// checkVol refuses what no server would take as a volume name, before
// anything is sent; the rules are the servers' (server.ValidateVolumeName).
func checkVol(vol string) error {
	if err := server.ValidateVolumeName(vol); err != nil {
		return errors.Wrap(ErrBadArgs, err.Error())
	}
	return nil
}
