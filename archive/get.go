package archive

import (
	"context"
	"math"
	"strconv"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/server"
)

// Get targets (system.md §5.10). Values: lists are string vectors in
// walb-tools' text forms, counts and sizes u64, yes/no answers bool.
const (
	GetState           = "state"             // VOL -> string
	GetVol             = "vol"               // -> []string: volumes with a directory
	GetDiff            = "diff"              // VOL [G0 [G1]] -> []string: diff listings
	GetApplicableDiff  = "applicable-diff"   // VOL [MAXGID] -> []string
	GetTotalDiffSize   = "total-diff-size"   // VOL [G0 [G1]] -> u64
	GetNumDiff         = "num-diff"          // VOL [G0 [G1]] -> u64
	GetExistsDiff      = "exists-diff"       // VOL B0 B1 E0 E1 -> bool
	GetRestored        = "restored"          // VOL -> []string: gids
	GetRestorable      = "restorable"        // VOL [all] -> []string: "GID ts 0|1"
	GetMetaSnap        = "meta-snap"         // VOL [GID] -> string
	GetMetaState       = "meta-state"        // VOL 0|1 [GID] -> string
	GetLatestSnap      = "latest-snap"       // [VOL] -> []string
	GetExistsBaseImage = "exists-base-image" // VOL -> bool
	GetUUID            = "uuid"              // VOL -> string (32 hex)
	GetArchiveUUID     = "archive-uuid"      // VOL -> string (32 hex)
	GetBase            = "base"              // VOL -> string: MetaState with timestamp
	GetBaseAll         = "base-all"          // -> []string
	GetVolSize         = "vol-size"          // VOL -> u64 (LB)
	GetProgress        = "progress"          // VOL -> u64 (LB)
	GetNumAction       = "num-action"        // VOL ACTION -> u64
	GetAllActions      = "all-actions"       // -> []string
	GetRestoredPath    = "restored-path"     // VOL GID -> string: the image's path
	GetRestoredExport  = "restored-export"   // VOL GID -> string: the NBD export name
)

func (s *Server) registerGets() {
	g := s.srv.HandleGet
	g(GetState, s.getState)
	g(GetVol, func(context.Context, []string) (any, error) { return nonNil(s.e.VolumeNames()), nil })
	g(GetDiff, s.getDiff)
	g(GetApplicableDiff, s.getApplicableDiff)
	g(GetTotalDiffSize, s.getDiffStats(false))
	g(GetNumDiff, s.getDiffStats(true))
	g(GetExistsDiff, s.getExistsDiff)
	g(GetRestored, s.getRestored)
	g(GetRestorable, s.getRestorable)
	g(GetMetaSnap, s.getMetaSnap)
	g(GetMetaState, s.getMetaState)
	g(GetLatestSnap, s.getLatestSnap)
	g(GetExistsBaseImage, s.volGet(func(vol string) (any, error) { return s.e.ExistsBaseImage(vol) }))
	g(GetUUID, s.volGet(func(vol string) (any, error) { u, err := s.e.UUID(vol); return u.String(), err }))
	g(GetArchiveUUID, s.volGet(func(vol string) (any, error) { u, err := s.e.ArchiveUUID(vol); return u.String(), err }))
	g(GetBase, s.volGet(func(vol string) (any, error) { b, err := s.e.Base(vol); return b.StringTs(), err }))
	g(GetBaseAll, func(context.Context, []string) (any, error) { return nonNil(s.e.BaseAll()), nil })
	g(GetVolSize, s.volGet(func(vol string) (any, error) { return s.e.VolSize(vol) }))
	g(GetProgress, s.volGet(func(vol string) (any, error) { return s.e.Progress(vol) }))
	g(GetNumAction, s.getNumAction)
	g(GetAllActions, func(context.Context, []string) (any, error) { return nonNil(s.e.AllActionsLines()), nil })
	g(GetRestoredPath, s.getRestoredPath)
	g(GetRestoredExport, s.getRestoredExport)
}

func nonNil(v []string) []string {
	if v == nil {
		return []string{}
	}
	return v
}

// volGet wraps a get that takes exactly VOL.
func (s *Server) volGet(f func(vol string) (any, error)) server.GetHandler {
	return func(_ context.Context, args []string) (any, error) {
		if err := wantArgs(args, 1, 1, "get TARGET VOL"); err != nil {
			return nil, err
		}
		vol, err := volArg(args, 0)
		if err != nil {
			return nil, err
		}
		return f(vol)
	}
}

func (s *Server) getState(_ context.Context, args []string) (any, error) {
	if err := wantArgs(args, 1, 1, "get state VOL"); err != nil {
		return nil, err
	}
	return s.e.State(args[0])
}

// gidRangeArgs parses "VOL [G0 [G1]]".
func gidRangeArgs(args []string, usage string) (vol string, g0, g1 uint64, err error) {
	if err = wantArgs(args, 1, 3, usage); err != nil {
		return
	}
	if vol, err = volArg(args, 0); err != nil {
		return
	}
	g1 = math.MaxUint64
	if len(args) > 1 {
		if g0, err = u64Arg(args, 1, "gid0"); err != nil {
			return
		}
	}
	if len(args) > 2 {
		if g1, err = u64Arg(args, 2, "gid1"); err != nil {
			return
		}
	}
	return
}

func listings(ds []meta.Diff) []string {
	out := make([]string, 0, len(ds))
	for _, d := range ds {
		out = append(out, d.Listing())
	}
	return out
}

func (s *Server) getDiff(_ context.Context, args []string) (any, error) {
	vol, g0, g1, err := gidRangeArgs(args, "get diff VOL [GID0 [GID1]]")
	if err != nil {
		return nil, err
	}
	ds, err := s.e.Diffs(vol, g0, g1)
	return listings(ds), err
}

func (s *Server) getDiffStats(count bool) server.GetHandler {
	return func(_ context.Context, args []string) (any, error) {
		vol, g0, g1, err := gidRangeArgs(args, "get num-diff|total-diff-size VOL [GID0 [GID1]]")
		if err != nil {
			return nil, err
		}
		n, bytes, err := s.e.DiffStats(vol, g0, g1)
		if count {
			return uint64(n), err
		}
		return bytes, err
	}
}

func (s *Server) getApplicableDiff(_ context.Context, args []string) (any, error) {
	if err := wantArgs(args, 1, 2, "get applicable-diff VOL [MAXGID]"); err != nil {
		return nil, err
	}
	vol, err := volArg(args, 0)
	if err != nil {
		return nil, err
	}
	maxGid := uint64(math.MaxUint64)
	if len(args) == 2 {
		if maxGid, err = u64Arg(args, 1, "gid"); err != nil {
			return nil, err
		}
	}
	ds, err := s.e.ApplicableDiffs(vol, maxGid)
	return listings(ds), err
}

func (s *Server) getExistsDiff(_ context.Context, args []string) (any, error) {
	if err := wantArgs(args, 5, 5, "get exists-diff VOL B0 B1 E0 E1"); err != nil {
		return nil, err
	}
	vol, err := volArg(args, 0)
	if err != nil {
		return nil, err
	}
	var g [4]uint64
	for i := range g {
		if g[i], err = u64Arg(args, i+1, "gid"); err != nil {
			return nil, err
		}
	}
	d := meta.Diff{SnapB: meta.Snap{GidB: g[0], GidE: g[1]}, SnapE: meta.Snap{GidB: g[2], GidE: g[3]}}
	if err := d.Validate(); err != nil {
		return nil, errors.Wrapf(server.ErrBadArgs, "exists-diff: %v", err)
	}
	return s.e.ExistsDiff(vol, d)
}

func (s *Server) getRestored(_ context.Context, args []string) (any, error) {
	if err := wantArgs(args, 1, 1, "get restored VOL"); err != nil {
		return nil, err
	}
	vol, err := volArg(args, 0)
	if err != nil {
		return nil, err
	}
	gids, err := s.e.Restored(vol)
	out := make([]string, 0, len(gids))
	for _, g := range gids {
		out = append(out, strconv.FormatUint(g, 10))
	}
	return out, err
}

func (s *Server) getRestorable(_ context.Context, args []string) (any, error) {
	if err := wantArgs(args, 1, 2, "get restorable VOL [all]"); err != nil {
		return nil, err
	}
	vol, err := volArg(args, 0)
	if err != nil {
		return nil, err
	}
	all := false
	if len(args) == 2 {
		if args[1] != "all" {
			return nil, errors.Wrapf(server.ErrBadArgs, "get restorable: unknown option %q", args[1])
		}
		all = true
	}
	pts, err := s.e.Restorable(vol, all)
	out := make([]string, 0, len(pts))
	for _, p := range pts {
		out = append(out, p.String())
	}
	return out, err
}

func (s *Server) getMetaSnap(_ context.Context, args []string) (any, error) {
	if err := wantArgs(args, 1, 2, "get meta-snap VOL [GID]"); err != nil {
		return nil, err
	}
	vol, err := volArg(args, 0)
	if err != nil {
		return nil, err
	}
	gid := uint64(math.MaxUint64)
	if len(args) == 2 {
		if gid, err = u64Arg(args, 1, "gid"); err != nil {
			return nil, err
		}
	}
	snap, err := s.e.MetaSnap(vol, gid)
	return snap.String(), err
}

func (s *Server) getMetaState(_ context.Context, args []string) (any, error) {
	if err := wantArgs(args, 2, 3, "get meta-state VOL 0|1 [GID]"); err != nil {
		return nil, err
	}
	vol, err := volArg(args, 0)
	if err != nil {
		return nil, err
	}
	if args[1] != "0" && args[1] != "1" {
		return nil, errors.Wrapf(server.ErrBadArgs, "get meta-state: %q is not 0 or 1", args[1])
	}
	gid := uint64(math.MaxUint64)
	if len(args) == 3 {
		if gid, err = u64Arg(args, 2, "gid"); err != nil {
			return nil, err
		}
	}
	st, err := s.e.MetaState(vol, args[1] == "1", gid)
	return st.StringTs(), err
}

func (s *Server) getLatestSnap(_ context.Context, args []string) (any, error) {
	if err := wantArgs(args, 0, 1, "get latest-snap [VOL]"); err != nil {
		return nil, err
	}
	if len(args) == 1 {
		vol, err := volArg(args, 0)
		if err != nil {
			return nil, err
		}
		l, ok := s.e.Latest(vol)
		if !ok {
			return nil, errorf(ErrWrongState, "no latest snapshot for volume %s", vol)
		}
		return []string{l.String()}, nil
	}
	out := []string{}
	for _, vol := range s.e.VolumeNames() {
		if l, ok := s.e.Latest(vol); ok {
			out = append(out, l.String())
		}
	}
	return out, nil
}

func (s *Server) getNumAction(_ context.Context, args []string) (any, error) {
	if err := wantArgs(args, 2, 2, "get num-action VOL ACTION"); err != nil {
		return nil, err
	}
	vol, err := volArg(args, 0)
	if err != nil {
		return nil, err
	}
	n, err := s.e.NumAction(vol, args[1])
	return uint64(n), err
}

func (s *Server) getRestoredPath(_ context.Context, args []string) (any, error) {
	vol, gid, err := volGid(args, "get restored-path VOL GID")
	if err != nil {
		return nil, err
	}
	return s.e.RestoredPath(vol, gid)
}

func (s *Server) getRestoredExport(_ context.Context, args []string) (any, error) {
	vol, gid, err := volGid(args, "get restored-export VOL GID")
	if err != nil {
		return nil, err
	}
	gids, err := s.e.Restored(vol)
	if err != nil {
		return nil, err
	}
	for _, g := range gids {
		if g == gid {
			if s.ecfg.NBD == nil {
				return nil, errorf(ErrNotFound, "no NBD server: restored images are not exported")
			}
			return ExportName(vol, gid), nil
		}
	}
	return nil, errorf(ErrNotFound, "volume %s: gid %d is not restored", vol, gid)
}
