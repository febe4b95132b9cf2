package archive

import (
	"context"
	"fmt"
	"time"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/imagestore"
	"github.com/walb-go/walb/nbd"
)

// exportRemoveTimeout bounds how long removing an export waits for its NBD
// clients to finish their requests before closing them.
const exportRemoveTimeout = 10 * time.Second

// addExport registers the restored image gid of v and, with an NBD server,
// exports it read-only as VOL/GID.
func (e *Engine) addExport(v *volume, gid uint64) error {
	ex := &export{name: ExportName(v.name, gid)}
	if e.cfg.NBD != nil {
		path, err := e.cfg.Images.Path(restoredImageName(v.name, gid))
		if err != nil {
			return errors.Wrapf(err, "archive: volume %s: path of restored image %d", v.name, gid)
		}
		fb, err := nbd.OpenFileBackend(path, true)
		if err != nil {
			return errors.Wrapf(err, "archive: volume %s: open restored image %d for export", v.name, gid)
		}
		desc := fmt.Sprintf("archive volume %s restored at gid %d (read-only)", v.name, gid)
		if err := e.cfg.NBD.AddExport(ex.name, nbd.ReadOnly(fb), true, desc); err != nil {
			_ = fb.Close()
			return errors.Wrapf(err, "archive: volume %s: export restored image %d", v.name, gid)
		}
		ex.backend = fb
	}
	v.mu.Lock()
	v.restored[gid] = ex
	v.mu.Unlock()
	return nil
}

// withdrawExport stops serving restored image gid over NBD (waiting for
// its clients, then closing them). The image stays registered.
func (e *Engine) withdrawExport(ctx context.Context, v *volume, gid uint64) {
	v.mu.Lock()
	ex := v.restored[gid]
	var fb *nbd.FileBackend
	if ex != nil {
		fb, ex.backend = ex.backend, nil
	}
	v.mu.Unlock()
	if fb == nil {
		return
	}
	rctx, cancel := context.WithTimeout(ctx, exportRemoveTimeout)
	err := e.cfg.NBD.RemoveExport(rctx, ex.name)
	cancel()
	if err != nil && !errors.Is(err, context.DeadlineExceeded) {
		e.logv(v.name).Warn("removing NBD export", "gid", gid, "err", err)
	}
	_ = fb.Close()
}

// deleteRestored withdraws and deletes restored image gid. The image
// stays registered until it is gone, so a restore of the same gid cannot
// start (and be deleted by this) meanwhile.
func (e *Engine) deleteRestored(ctx context.Context, v *volume, gid uint64) error {
	e.withdrawExport(ctx, v, gid)
	if err := e.cfg.Images.Remove(ctx, restoredImageName(v.name, gid)); err != nil && !errors.Is(err, imagestore.ErrNotFound) {
		return errors.Wrapf(err, "archive: volume %s: remove restored image %d", v.name, gid)
	}
	v.mu.Lock()
	delete(v.restored, gid)
	v.mu.Unlock()
	return nil
}

// closeExports withdraws every export (engine shutdown).
func (e *Engine) closeExports() {
	e.mu.Lock()
	vols := make([]*volume, 0, len(e.volumes))
	for _, v := range e.volumes {
		vols = append(vols, v)
	}
	e.mu.Unlock()
	for _, v := range vols {
		for _, g := range v.restoredGids() {
			e.withdrawExport(context.Background(), v, g)
		}
	}
}
