package archive

import (
	"context"
	"io"
	"os"
	"time"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/imagestore"
	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/wdiff"
	"github.com/walb-go/walb/wire"
)

// ReplicateCheck is a replication the target has accepted, ready to run:
// the server replies accept to the controller in between, as walb-tools
// does. Run or Cancel must follow.
type ReplicateCheck struct {
	e     *Engine
	v     *volume
	opt   ReplicateOptions
	end   func()
	c     *wire.Conn
	first ReplFirst
	ran   bool
}

// PrepareReplicate starts the ReplSyncAsClient action on vol (active, not
// stopping; no Restore, ReplSyncAsClient, Apply, Merge or Resize running;
// a base image), connects to the target archive opt.Addr and waits for it
// to accept (ProtoReplSync). A refusal of the target is returned wrapped
// with its wire code (ErrResyncRequired when a resync is needed and
// opt.DoResync is false); nothing changed on either side.
func (e *Engine) PrepareReplicate(ctx context.Context, vol string, opt ReplicateOptions) (*ReplicateCheck, error) {
	opt, err := opt.withDefaults()
	if err != nil {
		return nil, err
	}
	v, end, err := e.startAction(vol, ActionReplSyncAsClient, CmdReplicate)
	if err != nil {
		return nil, err
	}
	v.mu.Lock()
	aUUID, size := v.archiveUUID, v.sizeLB
	v.mu.Unlock()
	if size == 0 {
		end()
		return nil, errorf(ErrNoBaseImage, "replicate %s", vol)
	}
	doResync := "0"
	if opt.DoResync {
		doResync = "1"
	}
	c, err := wire.Dial(ctx, opt.Addr, clientID(opt.ClientID), ProtoReplSync, opt.Wire, vol, aUUID.String(), doResync)
	if err != nil {
		end()
		return nil, remoteErr(err, vol, opt.Addr)
	}
	first, err := func() (ReplFirst, error) {
		if err := c.ExpectAccept(ctx); err != nil {
			return 0, err
		}
		k, err := c.RecvU64(ctx)
		if err != nil {
			return 0, err
		}
		switch f := ReplFirst(k); {
		case f > ReplFirstNone:
			return 0, errorf(ErrReplProtocol, "first phase %d", k)
		case f == ReplFirstResync && !opt.DoResync:
			return 0, errorf(ErrReplProtocol, "the target chose a resync, which was not allowed")
		default:
			return f, nil
		}
	}()
	if err != nil {
		c.Close()
		end()
		return nil, remoteErr(err, vol, opt.Addr)
	}
	return &ReplicateCheck{e: e, v: v, opt: opt, end: end, c: c, first: first}, nil
}

// remoteErr gives the error of an exchange with the target its context;
// the target's refusals keep their wire code.
func remoteErr(err error, vol, addr string) error {
	if errors.Is(err, CodeResyncRequired) {
		return errorf(ErrResyncRequired, "replicate %s to %s: %v", vol, addr, err)
	}
	return errors.Wrapf(err, "archive: replicate %s to %s", vol, addr)
}

// First returns the first phase the target chose.
func (r *ReplicateCheck) First() ReplFirst { return r.first }

// Cancel drops a prepared replication that will not run: the connection
// is closed, which the target sees as a cut before any change.
func (r *ReplicateCheck) Cancel() {
	if !r.ran {
		r.ran = true
		_ = r.c.Close()
		r.end()
	}
}

// Run replicates (system.md §5.6): the first phase (FULL, RESYNC or
// none), then the loop in which the target reports its latest state and
// ShouldDoRepl decides HASH, DIFF or DONT. The volume's base and diffs
// are only read; the diffs being sent stay on disk until they are, even
// if a merge drops them meanwhile. A failure leaves the target as the
// protocol says (ProtoReplSync) and is reported to it when the connection
// still works.
func (r *ReplicateCheck) Run(ctx context.Context) (err error) {
	if r.ran {
		return errors.Wrap(ErrBadArgs, "archive: replicate already run")
	}
	r.ran = true
	defer r.end()
	defer r.c.Close()
	e, v := r.e, r.v
	ctx, done := v.actionContext(ctx)
	defer done()
	defer v.progressLB.Store(0)
	log := e.logv(v.name).With("peer", r.opt.Addr)
	start := time.Now()
	defer func() {
		if err == nil {
			log.Info("replicate done", "elapsed", time.Since(start).Round(time.Millisecond))
			return
		}
		err = remoteErr(err, v.name, r.opt.Addr)
		if !errors.Is(err, wire.ErrRemote) {
			// Tell the target why, if the connection still works.
			sctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_ = r.c.SendError(sctx, err)
			cancel()
		}
	}()
	log.Info("replicate started", "first", r.first.String(), "mode", r.opt.Mode.String(), "n", r.opt.N)
	switch r.first {
	case ReplFirstFull:
		err = r.runFull(ctx)
	case ReplFirstResync:
		err = r.runResync(ctx)
	}
	if err != nil {
		return err
	}
	var prev meta.Snap
	for step := 0; ; step++ {
		var srv meta.State
		if err := r.c.RecvValue(ctx, &srv); err != nil {
			return err
		}
		if step > 0 && srv.SnapB.GidB <= prev.GidB {
			return errorf(ErrReplProtocol, "the target stayed at %s after a step from %s", srv.SnapB, prev)
		}
		prev = srv.SnapB
		a, err := ShouldDoRepl(srv.SnapB, v.getBase(), v.diffs, r.opt.Mode, r.opt.N)
		if err != nil {
			return err
		}
		if err := r.c.SendU64(ctx, uint64(a)); err != nil {
			return err
		}
		switch a {
		case ReplDont:
			if err := r.c.RecvAck(ctx); err != nil {
				return err
			}
			r.observe(ReplEvent{Step: ReplStepDone, Remote: srv})
			return nil
		case ReplHash:
			err = r.runHash(ctx, srv)
		case ReplDiff:
			err = r.runDiff(ctx, srv)
		}
		if err != nil {
			return err
		}
	}
}

func (r *ReplicateCheck) observe(ev ReplEvent) {
	if r.opt.Observe != nil {
		r.opt.Observe(ev)
	}
}

// Replicate runs a whole replication of vol to opt.Addr (PrepareReplicate
// then Run), the Engine-level `replicate`.
func (e *Engine) Replicate(ctx context.Context, vol string, opt ReplicateOptions) error {
	r, err := e.PrepareReplicate(ctx, vol, opt)
	if err != nil {
		return err
	}
	return r.Run(ctx)
}

// sourceInfo returns the size and device uuid sent with each step.
func (v *volume) sourceInfo() (sizeLB uint64, uuid meta.UUID) {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.sizeLB, v.uuid
}

// runFull streams the base image with its state (FULL). The base is held
// shared, so no apply or resize changes it meanwhile.
func (r *ReplicateCheck) runFull(ctx context.Context) error {
	e, v, c := r.e, r.v, r.c
	v.baseMu.RLock()
	defer v.baseMu.RUnlock()
	base := v.getBase()
	_, uuid := v.sourceInfo()
	img, err := e.cfg.Images.Open(ctx, baseImageName(v.name), imagestore.ReadOnly)
	if err != nil {
		return errors.Wrapf(err, "archive: full-repl %s: open the base", v.name)
	}
	defer img.Close()
	sizeLB := uint64(img.Size()) / lbSize
	bulkLB := uint64(r.opt.BulkLB)
	if err := c.SendU64(ctx, sizeLB); err != nil {
		return err
	}
	if err := c.SendU64(ctx, bulkLB); err != nil {
		return err
	}
	if err := c.SendValue(ctx, base); err != nil {
		return err
	}
	if err := c.SendBytes(ctx, uuid[:]); err != nil {
		return err
	}
	if err := c.ExpectOK(ctx); err != nil {
		return err
	}
	startLB, err := c.RecvU64(ctx)
	if err != nil {
		return err
	}
	if startLB > sizeLB {
		return errorf(ErrReplProtocol, "full-repl %s: start at %d LB of %d", v.name, startLB, sizeLB)
	}
	e.logv(v.name).Info("full-repl sending", "sizeLb", sizeLB, "startLb", startLB, "base", base.StringTs())
	sw := c.NewStreamWriter(ctx, 0)
	raw := make([]byte, bulkLB*lbSize)
	var comp []byte
	chunk := make([]byte, 0, bulkHeaderSize+len(raw))
	for pos := startLB; pos < sizeLB; {
		nLB := min(bulkLB, sizeLB-pos)
		b := raw[:nLB*lbSize]
		if n, err := img.ReadAt(b, int64(pos*lbSize)); n < len(b) {
			if err == nil || err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			err = errors.Wrapf(err, "archive: full-repl %s: read the base at block %d", v.name, pos)
			_ = sw.Abort(err)
			return err
		}
		var err error
		if chunk, comp, err = encodeBulk(chunk[:0], b, comp, *r.opt.Compression); err != nil {
			_ = sw.Abort(err)
			return err
		}
		if err := sw.Send(chunk); err != nil {
			return err
		}
		pos += nLB
		v.progressLB.Store(pos)
	}
	if err := sw.Close(); err != nil {
		return err
	}
	if err := c.RecvAck(ctx); err != nil {
		return err
	}
	r.observe(ReplEvent{Step: ReplStepFull, StartLB: startLB, Remote: base})
	return nil
}

// sendList returns the diffs one DIFF step sends to a target at srv: the
// applicable diffs that merge into one (within MaxMergeBytes and the
// archive's MaxWdiffFiles), or with DontMerge the first of them alone.
// The caller holds v.mu.
func (r *ReplicateCheck) sendList(srv meta.Snap) []meta.Diff {
	ds := r.v.diffs
	if r.opt.DontMerge {
		first := true
		return ds.Chain(srv, func(meta.Diff, meta.Snap) bool {
			ok := first
			first = false
			return ok
		})
	}
	return ds.ReplSendList(srv, r.opt.MaxMergeBytes, r.e.cfg.maxWdiffFiles())
}

// runDiff sends the diffs that take the target from srv forward (DIFF):
// merged on the fly into one sorted wdiff, or, with DontMerge, one stored
// file as it is.
func (r *ReplicateCheck) runDiff(ctx context.Context, srv meta.State) error {
	v, c := r.v, r.c
	// The list is chosen and pinned at once: a merge or an apply that
	// drops these diffs meanwhile leaves their files until unpin.
	v.mu.Lock()
	list := r.sendList(srv.SnapB)
	for _, d := range list {
		v.pins[keyOf(d)]++
	}
	v.mu.Unlock()
	defer v.unpin(list)
	if len(list) == 0 {
		return errorf(ErrReplTiming, "diff-repl %s: no diff applies to the target's %s any more", v.name, srv.SnapB)
	}
	merged, err := meta.MergeAll(list)
	if err != nil {
		return errors.Wrapf(err, "archive: diff-repl %s", v.name)
	}
	merged.DataSize = 0
	src, err := r.openDiffSource(ctx, list)
	if err != nil {
		return err
	}
	defer src.close()
	sizeLB, _ := v.sourceInfo()
	if err := c.SendU64(ctx, sizeLB); err != nil {
		return err
	}
	if err := c.SendBytes(ctx, src.uuid[:]); err != nil {
		return err
	}
	if err := c.SendValue(ctx, merged); err != nil {
		return err
	}
	if err := c.ExpectOK(ctx); err != nil {
		return err
	}
	sw := c.NewStreamWriter(ctx, 0)
	if err := src.write(sw); err != nil {
		err = errors.Wrapf(err, "archive: diff-repl %s: send %s", v.name, merged)
		_ = sw.Abort(err)
		return err
	}
	if err := sw.Close(); err != nil {
		return err
	}
	if err := c.RecvAck(ctx); err != nil {
		return err
	}
	r.e.logv(v.name).Info("diff-repl sent", "diff", merged.String(), "diffs", len(list), "remote", srv.SnapB.String())
	r.observe(ReplEvent{Step: ReplStepDiff, Diff: merged, NumDiffs: len(list), Remote: srv})
	return nil
}

// diffSource yields the sorted wdiff a DIFF step sends, and the device
// uuid its header carries.
type diffSource struct {
	uuid  meta.UUID
	write func(w io.Writer) error
	close func()
}

// openDiffSource opens the pinned diffs of list. One sorted file is sent
// byte for byte when merging is off; otherwise the files are merged on
// the fly with the replication's compression (records already stored with
// it are copied as they are).
func (r *ReplicateCheck) openDiffSource(ctx context.Context, list []meta.Diff) (*diffSource, error) {
	v := r.v
	if r.opt.DontMerge && len(list) == 1 {
		f, h, err := v.openDiffRaw(list[0])
		if err != nil {
			return nil, err
		}
		if h.Type == wdiff.TypeSorted {
			return &diffSource{
				uuid: meta.UUID(h.UUID),
				write: func(w io.Writer) error {
					_, err := io.Copy(w, &ctxReader{ctx: ctx, r: f})
					return err
				},
				close: func() { _ = f.Close() },
			}, nil
		}
		_ = f.Close() // an indexed file: the merge below rewrites it sorted
	}
	readers, closeAll, err := v.openDiffs(list)
	if err != nil {
		return nil, err
	}
	cmpr := *r.opt.Compression
	return &diffSource{
		uuid: meta.UUID(readers[len(readers)-1].Header().UUID),
		write: func(w io.Writer) error {
			_, err := wdiff.Merge(ctx, readers, w, wdiff.MergeOptions{Compression: cmpr})
			return err
		},
		close: closeAll,
	}, nil
}

// openDiffRaw opens the current file of d for reading its bytes, and
// returns its parsed header; the file is positioned at its start.
func (v *volume) openDiffRaw(d meta.Diff) (*os.File, wdiff.FileHeader, error) {
	var h wdiff.FileHeader
	v.mu.Lock()
	name, err := v.diffFileNameLocked(d)
	if err != nil {
		v.mu.Unlock()
		return nil, h, err
	}
	f, err := os.Open(v.path(name))
	v.mu.Unlock()
	if err != nil {
		return nil, h, errors.Wrapf(err, "archive: volume %s: open %s", v.name, name)
	}
	var b [wdiff.FileHeaderSize]byte
	if _, err := io.ReadFull(f, b[:]); err != nil {
		_ = f.Close()
		return nil, h, errors.Wrapf(err, "archive: volume %s: %s header", v.name, name)
	}
	if h, err = wdiff.ParseFileHeader(b[:]); err != nil {
		_ = f.Close()
		return nil, h, errors.Wrapf(err, "archive: volume %s: %s", v.name, name)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		_ = f.Close()
		return nil, h, err
	}
	return f, h, nil
}
