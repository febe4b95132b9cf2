package archive

import (
	"context"
	"io"
	"math"
	"sync"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/imagestore"
	"github.com/walb-go/walb/meta"
)

// Virtual images (system.md §5.5 "virtual full scan"): the image of a
// volume at some snapshot, clean or dirty, read without materializing it as
// a restored image. Hash backup compares the storage's device with the
// image at the archive's latest snapshot, bhash hashes the image at a gid,
// and replication scans the image a peer lacks.
//
// Where the store can reflink, the base is cloned to a temporary image
// (free), the diffs are applied to the clone with the apply code, and the
// clone is read: once it is made the view no longer depends on the base or
// the diffs, so applies, merges and resizes may run meanwhile.
//
// Where it cannot, a clone would copy the whole base first (1 TiB of I/O
// and space before a hash backup of a 1 TiB volume could start). The base
// is read in place instead, as walb-tools does: with no diff needed it is
// the image; otherwise the image is an overlay (overlay.go) that reads the
// base and lays the diffs' records over each read, the diffs of each apply
// pass merged into one temporary sorted wdiff in the volume directory (or
// a single sorted diff read directly). Either way baseMu is held shared
// until Close, which makes an in-place apply, the commit of a cloned apply
// and a resize wait (the way they wait for a restore's clone); merges and
// the removal of diffs may still run, since the overlay reads its merged
// copy, or a diff it keeps pinned.

// virtualImage is a read-only image of a volume at a snapshot. Close
// releases it: the temporary clone is removed, or the base released and an
// overlay's temporary files removed.
type virtualImage struct {
	r    io.ReaderAt
	size int64

	once     sync.Once
	closeErr error
	release  func() error
}

// ReadAt reads the image; reads past Size return io.EOF.
func (vi *virtualImage) ReadAt(p []byte, off int64) (int, error) { return vi.r.ReadAt(p, off) }

// Size returns the image size in bytes (the base image's size when the
// view was made).
func (vi *virtualImage) Size() int64 { return vi.size }

// Close releases the image; later calls return the first result.
func (vi *virtualImage) Close() error {
	vi.once.Do(func() { vi.closeErr = vi.release() })
	return vi.closeErr
}

// virtualImageName is the target name of the temporary clone behind a
// virtual image. The clone is never committed: it lives under the store's
// temporary name (which CleanTemps removes at start after a crash) and is
// removed by Close.
func virtualImageName(vol string) string { return "wv_" + vol }

// errStaleList means the base moved (an apply finished) between the time a
// diff list was computed and the time the base was locked: compute the
// list again.
var errStaleList = errors.New("archive: the base changed under a virtual image's diff list")

// openVirtual returns the image of the base with diffs applied in order.
// diffs must chain from the base state, as the diff-set queries return
// them (latestList, gidList); if the base has moved since they were
// computed the error wraps errStaleList. The base image is never written.
// The caller closes the image.
func (e *Engine) openVirtual(ctx context.Context, v *volume, diffs []meta.Diff) (*virtualImage, error) {
	v.baseMu.RLock()
	locked := true
	defer func() {
		if locked {
			v.baseMu.RUnlock()
		}
	}()
	base := v.getBase()
	if _, err := base.EndApplying(diffs); err != nil {
		return nil, errors.Wrapf(errStaleList, "volume %s: base %s: %v", v.name, base, err)
	}
	if err := v.pinPresent(diffs); err != nil {
		return nil, err
	}
	defer v.unpin(diffs)
	store := e.cfg.Images
	if !e.cloneVirtual() {
		img, err := store.Open(ctx, baseImageName(v.name), imagestore.ReadOnly)
		if err != nil {
			return nil, errors.Wrapf(err, "archive: volume %s: open the base", v.name)
		}
		if len(diffs) == 0 {
			locked = false // released by Close
			return &virtualImage{r: img, size: img.Size(), release: func() error {
				err := img.Close()
				v.baseMu.RUnlock()
				return err
			}}, nil
		}
		ov, err := e.openOverlay(ctx, v, img, diffs)
		if err != nil {
			_ = img.Close()
			return nil, err
		}
		locked = false // released by Close
		return &virtualImage{r: ov, size: ov.size, release: func() error {
			err := ov.close(v)
			v.baseMu.RUnlock()
			return err
		}}, nil
	}
	pending, err := store.CloneTemp(ctx, baseImageName(v.name), virtualImageName(v.name))
	v.baseMu.RUnlock()
	locked = false
	if err != nil {
		return nil, errors.Wrapf(err, "archive: volume %s: clone the base", v.name)
	}
	if err := e.applyVirtual(ctx, v, pending, diffs); err != nil {
		_ = pending.Abort()
		return nil, err
	}
	return &virtualImage{r: pending, size: pending.Size(), release: func() error {
		err := pending.Abort()
		if errors.Is(err, imagestore.ErrFinished) {
			return nil
		}
		return err
	}}, nil
}

// cloneVirtual reports whether a virtual image is a clone rather than the
// base read in place (alone or under an overlay).
func (e *Engine) cloneVirtual() bool {
	return e.cfg.Images.Capabilities().Reflink
}

// applyVirtual writes ds onto a virtual image's clone, MaxOpen files per
// pass, like applyDiffs but without fdatasync: the clone is thrown away,
// so its durability does not matter.
func (e *Engine) applyVirtual(ctx context.Context, v *volume, img imagestore.Image, ds []meta.Diff) error {
	target := &imageTarget{img: img, interval: math.MaxInt64}
	if err := e.applyPasses(ctx, v, target, ds); err != nil {
		return err
	}
	return ctx.Err()
}

// pinPresent pins ds, all of which must still have a file (indexed, or
// removed from the index while another reader pins it).
func (v *volume) pinPresent(ds []meta.Diff) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, d := range ds {
		if _, ok := v.diffs.Get(d); ok {
			continue
		}
		if _, ok := v.doomed[keyOf(d)]; ok {
			continue
		}
		return errors.Wrapf(errStaleList, "volume %s: diff %s is gone", v.name, d)
	}
	for _, d := range ds {
		v.pins[keyOf(d)]++
	}
	return nil
}

// latestList returns the snapshot the whole chain from the base reaches
// (dirty allowed: a hash backup's end is dirty until the logs pass it)
// and the diffs that reach it. An applying base whose chain cannot
// complete it has no usable latest image: ErrNotRestorable.
func (v *volume) latestList() (meta.Snap, []meta.Diff, error) {
	base := v.getBase()
	chain := v.diffs.Chain(base.SnapB, nil)
	st, err := base.EndApplying(chain)
	if err != nil {
		return meta.Snap{}, nil, errorf(ErrNotRestorable, "volume %s: base %s: latest image: %v", v.name, base, err)
	}
	return st.SnapB, chain, nil
}

// gidList returns the diffs that take the base exactly to the clean
// snapshot |gid| (the restore list); ErrNotRestorable if none does.
func (v *volume) gidList(gid uint64) ([]meta.Diff, error) {
	list, ok := v.diffs.RestoreList(v.getBase(), gid)
	if !ok {
		return nil, errorf(ErrNotRestorable, "volume %s: gid %d", v.name, gid)
	}
	return list, nil
}

// maxStaleRetries bounds how often openVirtualLatest and openVirtualGid
// recompute their list when applies keep moving the base.
const maxStaleRetries = 8

// openVirtualLatest opens the image at the latest snapshot and returns
// that snapshot.
func (e *Engine) openVirtualLatest(ctx context.Context, v *volume) (*virtualImage, meta.Snap, error) {
	for try := 0; ; try++ {
		snap, list, err := v.latestList()
		if err != nil {
			return nil, snap, err
		}
		vi, err := e.openVirtual(ctx, v, list)
		if errors.Is(err, errStaleList) && try < maxStaleRetries {
			continue
		}
		return vi, snap, err
	}
}

// openVirtualGid opens the image at the clean snapshot |gid|.
func (e *Engine) openVirtualGid(ctx context.Context, v *volume, gid uint64) (*virtualImage, error) {
	for try := 0; ; try++ {
		list, err := v.gidList(gid)
		if err != nil {
			return nil, err
		}
		vi, err := e.openVirtual(ctx, v, list)
		if errors.Is(err, errStaleList) && try < maxStaleRetries {
			continue
		}
		return vi, err
	}
}

// openVirtualSnap opens the image at snap, which must be reachable from
// the base exactly (the sync list); a clean or dirty snapshot.
func (e *Engine) openVirtualSnap(ctx context.Context, v *volume, snap meta.Snap) (*virtualImage, error) {
	for try := 0; ; try++ {
		list, ok := v.diffs.SyncList(v.getBase(), snap)
		if !ok {
			return nil, errorf(ErrNotRestorable, "volume %s: snapshot %s", v.name, snap)
		}
		vi, err := e.openVirtual(ctx, v, list)
		if errors.Is(err, errStaleList) && try < maxStaleRetries {
			continue
		}
		return vi, err
	}
}
