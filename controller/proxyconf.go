package controller

import (
	"context"
	"slices"

	"github.com/pkg/errors"
)

// A proxy forwards a volume's diffs to every archive it has an archive
// info for (system.md §4.3). An archive is synchronizing for a volume when
// every proxy of the layout has one for it: then every diff reaches it
// whichever proxy the storage uses.

// GetArchiveInfoList returns the names of the archives proxy px forwards
// vol's diffs to (empty if vol is Clear there).
func (c *Controller) GetArchiveInfoList(ctx context.Context, px Server, vol string) ([]string, error) {
	if err := needKind(px, KindProxy); err != nil {
		return nil, err
	}
	if err := checkVol(vol); err != nil {
		return nil, err
	}
	v, err := c.Client(px).CallValue(ctx, StringsValue, "archive-info", "list", vol)
	if err != nil {
		return nil, err
	}
	names, _ := v.([]string)
	return names, nil
}

// GetArchiveInfo returns proxy px's archive info for vol and archive ax.
func (c *Controller) GetArchiveInfo(ctx context.Context, px Server, vol string, ax Server) (ArchiveInfo, error) {
	if err := needKind(px, KindProxy); err != nil {
		return ArchiveInfo{}, err
	}
	if err := needKind(ax, KindArchive); err != nil {
		return ArchiveInfo{}, err
	}
	if err := checkVol(vol); err != nil {
		return ArchiveInfo{}, err
	}
	v, err := c.Client(px).CallValue(ctx, StringValue, "archive-info", "get", vol, ax.Name)
	if err != nil {
		return ArchiveInfo{}, err
	}
	s, _ := v.(string)
	info, err := ParseArchiveInfo(s)
	return info, errors.WithMessagef(err, "%s archive-info get %s %s", px, vol, ax.Name)
}

func archiveInfoArgs(cmd, vol string, ax Server, opt *SyncOpt) ([]string, error) {
	args := []string{cmd, vol, ax.Name, ax.Addr}
	if opt != nil {
		if err := opt.Validate(); err != nil {
			return nil, err
		}
		args = append(args, opt.ArchiveInfoArgs()...)
	}
	return args, nil
}

// UpdateArchiveInfo changes the options of an existing archive info; vol
// must be Stopped on px (walb-tools update_archive_info).
func (c *Controller) UpdateArchiveInfo(ctx context.Context, px Server, vol string, ax Server, opt SyncOpt) error {
	if err := c.VerifyState(ctx, px, vol, StateStopped); err != nil {
		return err
	}
	names, err := c.GetArchiveInfoList(ctx, px, vol)
	if err != nil {
		return err
	}
	if !slices.Contains(names, ax.Name) {
		return errors.Wrapf(ErrBadState, "%s: volume %s has no archive info for %s", px, vol, ax.Name)
	}
	args, err := archiveInfoArgs("update", vol, ax, &opt)
	if err != nil {
		return err
	}
	return c.Client(px).Call(ctx, "archive-info", args...)
}

// stopForArchiveInfo readies proxy px for a change of vol's archive info
// about archive ax: it checks the kinds, force-stops the volume if it is
// running, and returns the archives px knows for vol.
func (c *Controller) stopForArchiveInfo(ctx context.Context, px Server, vol string, ax Server) ([]string, error) {
	if err := needKind(px, KindProxy); err != nil {
		return nil, err
	}
	if err := needKind(ax, KindArchive); err != nil {
		return nil, err
	}
	st, err := c.GetState(ctx, px, vol)
	if err != nil {
		return nil, err
	}
	if slices.Contains(proxyActive, st) {
		if err := c.Stop(ctx, px, vol, StopForce); err != nil {
			return nil, err
		}
	}
	return c.GetArchiveInfoList(ctx, px, vol)
}

// AddArchiveToProxy makes proxy px forward vol's diffs to archive ax
// (walb-tools add_archive_to_proxy): a running volume is force-stopped,
// the archive info added (or updated, with opt's options; nil keeps the
// server's defaults), and the volume started again if start is set.
func (c *Controller) AddArchiveToProxy(ctx context.Context, px Server, vol string, ax Server, opt *SyncOpt, start bool) error {
	names, err := c.stopForArchiveInfo(ctx, px, vol, ax)
	if err != nil {
		return err
	}
	cmd := "add"
	if slices.Contains(names, ax.Name) {
		cmd = "update"
	}
	args, err := archiveInfoArgs(cmd, vol, ax, opt)
	if err != nil {
		return err
	}
	if err := c.Client(px).Call(ctx, "archive-info", args...); err != nil {
		return err
	}
	if !start {
		return nil
	}
	return c.startIfStopped(ctx, px, vol)
}

// DelArchiveFromProxy stops proxy px forwarding vol's diffs to archive ax
// and drops its queue (walb-tools del_archive_from_proxy): force stop,
// delete, start again unless no archive is left.
func (c *Controller) DelArchiveFromProxy(ctx context.Context, px Server, vol string, ax Server) error {
	names, err := c.stopForArchiveInfo(ctx, px, vol, ax)
	if err != nil {
		return err
	}
	if slices.Contains(names, ax.Name) {
		if err := c.Client(px).Call(ctx, "archive-info", "delete", vol, ax.Name); err != nil {
			return err
		}
	}
	return c.startIfStopped(ctx, px, vol)
}

// startIfStopped starts vol on proxy px if it is Stopped (not Clear: no
// archive left).
func (c *Controller) startIfStopped(ctx context.Context, px Server, vol string) error {
	st, err := c.GetState(ctx, px, vol)
	if err != nil {
		return err
	}
	if st == StateStopped {
		return c.Start(ctx, px, vol)
	}
	return nil
}

// CopyArchiveInfo gives proxy pDst the archive infos pSrc has for vol,
// then starts vol on pDst (walb-tools copy_archive_info, used to replace
// a proxy). Every archive named must be in the layout, and pSrc must
// have at least one (ErrBadState otherwise); they are all checked before
// pDst is changed. A running pDst is force-stopped first.
func (c *Controller) CopyArchiveInfo(ctx context.Context, pSrc Server, vol string, pDst Server) error {
	if err := needKind(pDst, KindProxy); err != nil {
		return err
	}
	if pSrc.Name == pDst.Name || pSrc.Addr == pDst.Addr {
		return errors.Wrapf(ErrBadArgs, "copy of %s's archive infos to itself", pSrc)
	}
	names, err := c.GetArchiveInfoList(ctx, pSrc, vol)
	if err != nil {
		return err
	}
	if len(names) == 0 {
		return errors.Wrapf(ErrBadState, "%s has no archive info for %s", pSrc, vol)
	}
	axs := make([]Server, len(names))
	opts := make([]SyncOpt, len(names))
	for i, name := range names {
		ax, ok := c.layout.Find(name)
		if !ok || ax.Kind != KindArchive {
			return errors.Wrapf(ErrBadLayout, "%s forwards %s to %q, which is not an archive of the layout", pSrc, vol, name)
		}
		info, err := c.GetArchiveInfo(ctx, pSrc, vol, ax)
		if err != nil {
			return err
		}
		axs[i], opts[i] = ax, info.SyncOpt()
	}
	for i, ax := range axs {
		if err := c.AddArchiveToProxy(ctx, pDst, vol, ax, &opts[i], false); err != nil {
			return err
		}
	}
	return c.Start(ctx, pDst, vol)
}

// IsSynchronizing reports whether every proxy forwards vol's diffs to ax
// (true) or none does (false); ErrMixedSync if only some do.
func (c *Controller) IsSynchronizing(ctx context.Context, ax Server, vol string) (bool, error) {
	if err := needKind(ax, KindArchive); err != nil {
		return false, err
	}
	var with, without []string
	for _, px := range c.layout.Proxies {
		names, err := c.GetArchiveInfoList(ctx, px, vol)
		if err != nil {
			return false, err
		}
		if slices.Contains(names, ax.Name) {
			with = append(with, px.Name)
		} else {
			without = append(without, px.Name)
		}
	}
	if len(with) > 0 && len(without) > 0 {
		return false, errors.Wrapf(ErrMixedSync, "volume %s archive %s: on %v, not on %v", vol, ax.Name, with, without)
	}
	return len(with) > 0, nil
}

// StartSynchronizing adds archive ax to every proxy for vol (with opt's
// options; nil for the servers' defaults) and kicks the storages, so that
// diffs flow to ax from now on.
func (c *Controller) StartSynchronizing(ctx context.Context, ax Server, vol string, opt *SyncOpt) error {
	for _, px := range c.layout.Proxies {
		if err := c.AddArchiveToProxy(ctx, px, vol, ax, opt, true); err != nil {
			return err
		}
	}
	return c.KickStorageAll(ctx)
}

// StopSynchronizing removes archive ax from every proxy for vol (its
// queued diffs are dropped) and kicks the storages.
func (c *Controller) StopSynchronizing(ctx context.Context, ax Server, vol string) error {
	for _, px := range c.layout.Proxies {
		if err := c.DelArchiveFromProxy(ctx, px, vol, ax); err != nil {
			return err
		}
	}
	return c.KickStorageAll(ctx)
}
