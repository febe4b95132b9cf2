package controller

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/pkg/errors"
)

// Waits poll the servers every Options.PollInterval, as walb-tools'
// controller does (its servers report the end of a long command only in
// their logs). A wait ends when its condition holds, when a query fails
// (after the Client's retries), or when the context ends; the error then
// wraps the context's error (errors.Is(err, context.DeadlineExceeded)) and
// says what was awaited and what was last seen.

// poll runs check at once and then every PollInterval until it reports
// done or fails. last describes the latest observation for the timeout
// message.
func (c *Controller) poll(ctx context.Context, what string, check func(ctx context.Context) (done bool, last string, err error)) error {
	t := time.NewTicker(c.opt.PollInterval)
	defer t.Stop()
	last := "nothing yet"
	for {
		done, seen, err := check(ctx)
		if err != nil {
			if cerr := ctx.Err(); cerr != nil {
				return errors.Wrapf(cerr, "controller: waiting for %s (last seen: %s)", what, last)
			}
			return errors.WithMessagef(err, "waiting for %s", what)
		}
		if done {
			return nil
		}
		last = seen
		select {
		case <-ctx.Done():
			return errors.Wrapf(ctx.Err(), "controller: waiting for %s (last seen: %s)", what, last)
		case <-t.C:
		}
	}
}

// short bounds a wait for a quick state change by Options.ShortTimeout.
func (c *Controller) short(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, c.opt.ShortTimeout)
}

// WaitForStateChange waits until vol on s leaves the transient states
// and returns the state it reached, which must be one of goal
// (ErrBadState otherwise: the command failed and rolled back).
func (c *Controller) WaitForStateChange(ctx context.Context, s Server, vol string, transient, goal []string) (string, error) {
	var st string
	err := c.poll(ctx, fmt.Sprintf("%s: volume %s to leave %v", s, vol, transient), func(ctx context.Context) (bool, string, error) {
		var err error
		st, err = c.GetState(ctx, s, vol)
		return err == nil && !slices.Contains(transient, st), st, err
	})
	if err != nil {
		return st, err
	}
	if !slices.Contains(goal, st) {
		return st, errors.Wrapf(ErrBadState, "%s: volume %s reached %s, want %v", s, vol, st, goal)
	}
	return st, nil
}

// WaitForNoAction waits until no instance of action runs on vol on
// archive ax.
func (c *Controller) WaitForNoAction(ctx context.Context, ax Server, vol, action string) error {
	return c.poll(ctx, fmt.Sprintf("%s: %s on %s to end", ax, action, vol), func(ctx context.Context) (bool, string, error) {
		n, err := c.GetNumAction(ctx, ax, vol, action)
		return err == nil && n == 0, fmt.Sprintf("%d running", n), err
	})
}

// WaitForRestorable waits until gid is in vol's restorable list on ax
// (walb-tools wait_for_restorable).
func (c *Controller) WaitForRestorable(ctx context.Context, ax Server, vol string, gid uint64) error {
	return c.poll(ctx, fmt.Sprintf("%s: gid %d of %s to be restorable", ax, gid, vol), func(ctx context.Context) (bool, string, error) {
		gids, err := c.GetRestorableGids(ctx, ax, vol, true)
		return err == nil && slices.Contains(gids, gid), fmt.Sprint(gids), err
	})
}

// VerifyNotRestorable checks that gid does not become restorable on ax
// within d (walb-tools verify_not_restorable, for fault tests): nil if it
// stays unrestorable, ErrBadGid if it becomes restorable.
func (c *Controller) VerifyNotRestorable(ctx context.Context, ax Server, vol string, gid uint64, d time.Duration) error {
	wctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	err := c.WaitForRestorable(wctx, ax, vol, gid)
	switch {
	case err == nil:
		return errors.Wrapf(ErrBadGid, "%s: gid %d of %s became restorable", ax, gid, vol)
	case ctx.Err() != nil:
		return err
	case errors.Is(err, context.DeadlineExceeded):
		return nil
	}
	return err
}

// WaitForRestored waits until the restore of gid has ended on ax and
// checks that the image exists (ErrNotReached otherwise).
func (c *Controller) WaitForRestored(ctx context.Context, ax Server, vol string, gid uint64) error {
	if err := c.WaitForNoAction(ctx, ax, vol, ActionRestore); err != nil {
		return err
	}
	gids, err := c.GetRestored(ctx, ax, vol)
	if err != nil {
		return err
	}
	if !slices.Contains(gids, gid) {
		return errors.Wrapf(ErrNotReached, "%s: restore of %s gid %d ended but the image is not there (restored %v)", ax, vol, gid, gids)
	}
	return nil
}

// waitForNotRestored waits until ax no longer lists gid as restored.
func (c *Controller) waitForNotGid(ctx context.Context, ax Server, vol, target string, gid uint64) error {
	return c.poll(ctx, fmt.Sprintf("%s: %s gid %d of %s to go", ax, target, gid, vol), func(ctx context.Context) (bool, string, error) {
		gids, err := c.archiveGids(ctx, ax, target, vol)
		return err == nil && !slices.Contains(gids, gid), fmt.Sprint(gids), err
	})
}

// WaitForApplied waits until the apply of vol up to gid has ended on ax
// and checks that the base is steady and gid is no newer than the oldest
// restorable snapshot (walb-tools _wait_for_applied).
func (c *Controller) WaitForApplied(ctx context.Context, ax Server, vol string, gid uint64) error {
	if err := c.WaitForNoAction(ctx, ax, vol, ActionApply); err != nil {
		return err
	}
	base, err := c.GetBase(ctx, ax, vol)
	if err != nil {
		return err
	}
	if base.IsApplying {
		return errors.Wrapf(ErrNotReached, "%s: apply of %s to gid %d ended with the base still applying (%s)", ax, vol, gid, base)
	}
	gids, err := c.GetRestorableGids(ctx, ax, vol, false)
	if err != nil {
		return err
	}
	if len(gids) == 0 || gid > gids[0] {
		return errors.Wrapf(ErrNotReached, "%s: apply of %s to gid %d ended at base %s (restorable %v)", ax, vol, gid, base, gids)
	}
	return nil
}

// WaitForMerged waits until the merge of vol's diffs from gidB to gidE
// has ended on ax and checks that one diff now spans them.
func (c *Controller) WaitForMerged(ctx context.Context, ax Server, vol string, gidB, gidE uint64) error {
	if err := c.WaitForNoAction(ctx, ax, vol, ActionMerge); err != nil {
		return err
	}
	ds, err := c.GetApplicableDiffList(ctx, ax, vol, gidE)
	if err != nil {
		return err
	}
	for _, d := range ds {
		if d.SnapB.GidB == gidB && d.SnapE.GidB == gidE {
			return nil
		}
	}
	return errors.Wrapf(ErrNotReached, "%s: merge of %s from %d to %d ended without a diff spanning them", ax, vol, gidB, gidE)
}

// WaitForStopped waits until a stop of vol on s is complete (walb-tools
// wait_for_stopped). prev is the state before the stop; on a storage it
// tells the goal: SyncReady after Standby or a backup, Stopped after
// Target.
func (c *Controller) WaitForStopped(ctx context.Context, s Server, vol, prev string) error {
	var transient []string
	goal := StateStopped
	switch s.Kind {
	case KindStorage:
		if prev == "" {
			return errors.Wrapf(ErrBadArgs, "%s: wait for stopped needs the state before the stop", s)
		}
		if slices.Contains(storagePrevStatesForSyncStop, prev) {
			transient, goal = storageDuringStopForStandby, StateSyncReady
		} else {
			transient = storageDuringStopForTarget
		}
	case KindProxy:
		transient = proxyDuringStop
	case KindArchive:
		transient = archiveDuringStop
	default:
		return needKind(s, KindStorage, KindProxy, KindArchive)
	}
	_, err := c.WaitForStateChange(ctx, s, vol, transient, []string{goal})
	return err
}
