package archive

import (
	"bytes"
	"context"
	"io"
	"os"

	"github.com/pkg/errors"
	"golang.org/x/sys/unix"

	"github.com/walb-go/walb/imagestore"
	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/wdiff"
)

// applyDiffs writes the diffs ds, in order, onto img: in passes of at most
// MaxOpen files, each pass merged on the fly (later diffs win) and applied
// as one sorted stream, so that every block is written once per pass and
// memory stays at one record per open file. img is fdatasynced every
// FsyncInterval bytes and at the end. Applying is idempotent: the records
// carry absolute data, so a list applied again over a partial application
// gives the same image.
func (e *Engine) applyDiffs(ctx context.Context, v *volume, img imagestore.Image, ds []meta.Diff) error {
	target := &imageTarget{img: img, interval: e.cfg.fsyncInterval()}
	if err := e.applyPasses(ctx, v, target, ds); err != nil {
		return err
	}
	if target.err != nil {
		return target.err
	}
	return errors.Wrap(img.Sync(), "archive: fdatasync image")
}

// applyPasses applies ds, in order, onto target's image in passes of at
// most MaxOpen files (all at once when MaxOpen is unset), with the
// configured discard handling.
func (e *Engine) applyPasses(ctx context.Context, v *volume, target *imageTarget, ds []meta.Diff) error {
	opt := wdiff.ApplyOptions{
		Size:        target.img.Size(),
		ZeroDiscard: e.cfg.Discard == DiscardZero,
		Discard:     e.cfg.Discard == DiscardPassdown,
	}
	per := e.cfg.MaxOpen
	if per <= 0 {
		per = len(ds)
	}
	for i := 0; i < len(ds); i += per {
		if err := e.applyPass(ctx, v, target, ds[i:min(i+per, len(ds))], opt); err != nil {
			return err
		}
	}
	return nil
}

func (e *Engine) applyPass(ctx context.Context, v *volume, target *imageTarget, ds []meta.Diff, opt wdiff.ApplyOptions) error {
	readers, closeAll, err := v.openDiffs(ds)
	if err != nil {
		return err
	}
	defer closeAll()
	if len(readers) == 1 {
		if _, err := wdiff.Apply(ctx, readers[0], target, opt); err != nil {
			return errors.Wrapf(err, "archive: volume %s: apply %s", v.name, ds[0])
		}
		return nil
	}
	pr, pw := io.Pipe()
	merged := make(chan error, 1)
	go func() {
		_, err := wdiff.Merge(ctx, readers, pw, wdiff.MergeOptions{Compression: wdiff.Compression{Codec: wdiff.CodecNone}})
		_ = pw.CloseWithError(err)
		merged <- err
	}()
	err = func() error {
		sr, err := wdiff.NewSortedReader(pr)
		if err != nil {
			return err
		}
		_, err = wdiff.Apply(ctx, sr, target, opt)
		return err
	}()
	_ = pr.CloseWithError(errors.New("archive: apply ended"))
	merr := <-merged
	if err == nil {
		err = merr
	}
	if err != nil {
		return errors.Wrapf(err, "archive: volume %s: apply %d diffs %s..%s", v.name, len(ds), ds[0], ds[len(ds)-1])
	}
	return nil
}

// imageTarget is an image as the target of wdiff.Apply: it fdatasyncs
// every interval bytes and deallocates discarded ranges (passdown).
type imageTarget struct {
	img      imagestore.Image
	interval int64
	dirty    int64
	err      error
}

func (t *imageTarget) WriteAt(p []byte, off int64) (int, error) {
	n, err := t.img.WriteAt(p, off)
	if err != nil {
		return n, err
	}
	return n, t.account(int64(n))
}

// Discard implements wdiff.Discarder.
func (t *imageTarget) Discard(off, n int64) error {
	if err := t.img.Punch(off, n); err != nil {
		return err
	}
	return t.account(n)
}

func (t *imageTarget) account(n int64) error {
	t.dirty += n
	if t.dirty < t.interval {
		return nil
	}
	t.dirty = 0
	if err := t.img.Sync(); err != nil {
		t.err = err
		return errors.Wrap(err, "archive: fdatasync image")
	}
	return nil
}

// syncingFileWriter writes a file sequentially and fdatasyncs it every
// interval bytes, so a long reception never leaves gigabytes of dirty pages
// to flush at the end. The first error is sticky.
type syncingFileWriter struct {
	f        *os.File
	interval int64
	dirty    int64
	err      error
}

func (w *syncingFileWriter) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	n, err := w.f.Write(p)
	if err != nil {
		w.err = err
		return n, err
	}
	w.dirty += int64(n)
	if w.dirty >= w.interval {
		w.dirty = 0
		if err := unix.Fdatasync(int(w.f.Fd())); err != nil {
			w.err = errors.Wrap(err, "fdatasync")
			return n, w.err
		}
	}
	return n, nil
}

// eofReader remembers whether its reader reached the end, and its last
// error.
type eofReader struct {
	r   io.Reader
	eof bool
	err error
}

func (e *eofReader) Read(p []byte) (int, error) {
	n, err := e.r.Read(p)
	if err == io.EOF {
		e.eof = true
	}
	if err != nil {
		e.err = err
	}
	return n, err
}

// ctxReader fails reads once ctx is done (a force stop interrupts a
// transfer between reads).
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}

func bytesReader(b []byte) io.Reader { return bytes.NewReader(b) }
