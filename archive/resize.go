package archive

import (
	"context"

	"github.com/pkg/errors"
)

// Resize grows vol's base image to sizeLB blocks (SyncReady, active or
// Stopped; no Restore, ReplSyncAsClient, Apply or Resize running). Images
// only grow. The new area reads as zeros (every image store guarantees
// it), which is what walb-tools' zeroclear option asks for, so the option
// costs nothing here. Restored images keep their size.
func (e *Engine) Resize(ctx context.Context, vol string, sizeLB uint64) error {
	v, end, err := e.startAction(vol, ActionResize, CmdResize)
	if err != nil {
		return err
	}
	defer end()
	if sizeLB == 0 || sizeLB > maxVolumeLB {
		return errorf(ErrBadArgs, "resize %s: size %d LB", vol, sizeLB)
	}
	v.baseMu.Lock()
	defer v.baseMu.Unlock()
	v.mu.Lock()
	cur := v.sizeLB
	v.mu.Unlock()
	switch {
	case cur == 0:
		return errorf(ErrNoBaseImage, "resize %s", vol)
	case sizeLB < cur:
		return errorf(ErrShrink, "resize %s from %d LB to %d LB", vol, cur, sizeLB)
	case sizeLB == cur:
		return nil
	}
	if err := e.cfg.Images.Resize(ctx, baseImageName(vol), int64(sizeLB*lbSize)); err != nil {
		return errors.Wrapf(err, "archive: resize %s", vol)
	}
	v.mu.Lock()
	v.sizeLB = sizeLB
	v.mu.Unlock()
	e.logv(vol).Info("resize done", "fromLb", cur, "toLb", sizeLB)
	return nil
}
