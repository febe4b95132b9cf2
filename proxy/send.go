package proxy

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/server"
	"github.com/walb-go/walb/wdiff"
	"github.com/walb-go/walb/wire"
)

// RunTask runs the send task key ("VOL ARCHIVE"): it is the TaskFunc of the
// task queue. It never asks the queue to retry (returns nil): the proxy
// schedules its own retries from the archive's reply (system.md §4.5).
func (p *Proxy) RunTask(ctx context.Context, key string) error {
	vol, archive, ok := parseTaskKey(key)
	if !ok {
		p.log.ErrorContext(ctx, "dropping a malformed task", "task", key)
		return nil
	}
	p.runSend(ctx, vol, archive)
	return nil
}

// sendFile is one queued wdiff opened for a transfer.
type sendFile struct {
	diff meta.Diff
	name string
	path string
	info os.FileInfo // to delete only the very file that was sent
	f    *os.File
	r    wdiff.Reader
}

// badFileError blames a queued file for a failed transfer: it cannot be
// read as a wdiff.
type badFileError struct {
	path string
	err  error
}

func (e *badFileError) Error() string { return "proxy: queued wdiff " + e.path + ": " + e.err.Error() }
func (e *badFileError) Unwrap() error { return e.err }

// fileReader names the file in the errors of its reader, so a merge that
// fails can say which queued file is damaged.
type fileReader struct {
	wdiff.Reader
	path string
}

func (r *fileReader) Next() (wdiff.IO, error) {
	x, err := r.Reader.Next()
	if err != nil && err != io.EOF {
		err = &badFileError{path: r.path, err: err}
	}
	return x, err
}

// errSendEnded closes the merge pipe once the archive client is done with it.
var errSendEnded = errors.New("proxy: wdiff transfer ended")

// sendResult is the outcome of one transfer attempt.
type sendResult struct {
	files []*sendFile
	diff  meta.Diff
	err   error // the archive client's error; nil: accepted and acked
	bad   error // a *badFileError: a queued file is unreadable
}

func (p *Proxy) runSend(ctx context.Context, vol, archive string) {
	key := taskKey(vol, archive)
	log := p.log.With("vol", vol, "archive", archive)
	v := p.volume(vol)
	if v == nil {
		return
	}
	if stopping(p.vols.StopState(vol)) {
		return
	}
	switch st := p.vols.State(vol); {
	case st == StateStart:
		p.tasks.PushAfter(key, time.Second) // start is finishing; rare
		return
	case !slices.Contains(sendStates, st):
		return
	}
	v.mu.Lock()
	a := v.archives[archive]
	var wait time.Duration
	if a != nil {
		wait = time.Until(a.notBefore)
	}
	v.mu.Unlock()
	if a == nil {
		return
	}
	if wait > 0 {
		// Backing off: a new wlog or the framework's kick must not hurry
		// the archive; only Kick (which clears notBefore) does.
		p.tasks.PushAfter(key, wait)
		return
	}
	end, err := p.vols.StartAction(vol, actionName(archive), server.Guard{States: sendStates, NoActions: []string{actionName(archive)}})
	if err != nil {
		log.DebugContext(ctx, "send not started", "err", err)
		return
	}
	defer end()
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	untrack := v.track(cancel)
	defer untrack()
	// Checked after registering, so a force stop either is seen here or
	// cancels this transfer.
	if stopping(p.vols.StopState(vol)) {
		return
	}
	res := p.sendOnce(sctx, v, a)
	for _, f := range res.files {
		f.f.Close()
	}
	p.handleResult(sctx, log, v, a, res)
}

func stopping(s server.StopState) bool { return s == server.Stopping || s == server.ForceStopping }

// sendOnce picks the diffs to send, merges them and offers them to the
// archive.
func (p *Proxy) sendOnce(ctx context.Context, v *volume, a *archiveQueue) sendResult {
	files, err := p.openSendList(ctx, v, a)
	res := sendResult{files: files}
	if err != nil {
		var bf *badFileError
		if errors.As(err, &bf) {
			res.bad = err
		} else {
			res.err = err
		}
		return res
	}
	if len(files) == 0 {
		return res
	}
	diffs := make([]meta.Diff, len(files))
	readers := make([]wdiff.Reader, len(files))
	for i, f := range files {
		diffs[i] = f.diff
		readers[i] = &fileReader{Reader: f.r, path: f.path}
	}
	if res.diff, err = meta.MergeAll(diffs); err != nil {
		res.err = errors.WithMessage(err, "proxy: merge the send list")
		return res
	}
	v.mu.Lock()
	req := WdiffRequest{Addr: a.info.Addr(), Vol: v.name, UUID: meta.UUID(files[0].r.Header().UUID), SizeLb: v.sizeLb, Diff: res.diff}
	cmpr := a.info.Compression
	v.mu.Unlock()

	pr, pw := io.Pipe()
	mctx, mcancel := context.WithCancel(ctx)
	mergeDone := make(chan error, 1)
	go func() {
		bw := bufio.NewWriterSize(pw, 1<<20)
		_, err := wdiff.Merge(mctx, readers, bw, wdiff.MergeOptions{Compression: cmpr})
		if err == nil {
			err = bw.Flush()
		}
		pw.CloseWithError(err)
		mergeDone <- err
	}()
	res.err = p.cfg.Archive.SendWdiff(ctx, req, pr)
	pr.CloseWithError(errSendEnded)
	mcancel()
	mergeErr := <-mergeDone
	var bf *badFileError
	if res.err != nil && errors.As(mergeErr, &bf) {
		res.bad = mergeErr
	}
	return res
}

// openSendList opens the diffs to send in one transfer (system.md §2.10):
// the mergeable list from the oldest queued diff within -wd and -wn, cut
// where the wdiff header's UUID changes. A listed file that has vanished
// (replaced by a resend of its range) makes the list be rebuilt, at most
// maxListRetries times.
func (p *Proxy) openSendList(ctx context.Context, v *volume, a *archiveQueue) ([]*sendFile, error) {
	dir := v.dir.sendtoDir(a.name)
	for try := 1; ; try++ {
		v.mu.Lock()
		list := a.diffs.ProxySendList(p.cfg.MaxWdiffSendSize, p.cfg.MaxWdiffSendFiles)
		v.mu.Unlock()
		files, err := openDiffs(dir, list)
		if err == nil {
			return files, nil
		}
		var gone *vanishedError
		if !errors.As(err, &gone) || try >= maxListRetries {
			return nil, err
		}
		// The queue entry may have been replaced meanwhile; if it still
		// names the missing file, the file was removed behind the proxy's
		// back and the entry must go.
		v.mu.Lock()
		if cur, ok := a.diffs.Get(gone.diff); ok {
			if name, _ := meta.FileName(cur); name == gone.name {
				a.diffs.Remove(cur)
				p.log.ErrorContext(ctx, "a queued wdiff vanished; dropping it from the queue", "vol", v.name, "archive", a.name, "file", gone.name)
			}
		}
		v.mu.Unlock()
	}
}

// vanishedError reports a listed file that does not exist.
type vanishedError struct {
	diff meta.Diff
	name string
}

func (e *vanishedError) Error() string { return "proxy: queued wdiff " + e.name + " vanished" }

// openDiffs opens list's files in dir, stopping before the first whose
// header UUID differs from the first file's.
func openDiffs(dir string, list []meta.Diff) ([]*sendFile, error) {
	var files []*sendFile
	fail := func(err error) ([]*sendFile, error) {
		for _, f := range files {
			f.f.Close()
		}
		return nil, err
	}
	for _, d := range list {
		name, err := meta.FileName(d)
		if err != nil {
			return fail(err)
		}
		path := filepath.Join(dir, name)
		f, err := os.Open(path)
		if os.IsNotExist(err) {
			return fail(&vanishedError{diff: d, name: name})
		}
		if err != nil {
			return fail(errors.Wrap(err, "proxy: open queued wdiff"))
		}
		sf := &sendFile{diff: d, name: name, path: path, f: f}
		if sf.info, err = f.Stat(); err != nil {
			f.Close()
			return fail(errors.Wrap(err, "proxy: stat queued wdiff"))
		}
		if sf.r, err = wdiff.NewReader(f, sf.info.Size()); err != nil {
			f.Close()
			if len(files) > 0 {
				break // send what precedes it; it comes first next time
			}
			return fail(&badFileError{path: path, err: err})
		}
		if len(files) > 0 && sf.r.Header().UUID != files[0].r.Header().UUID {
			f.Close()
			break
		}
		files = append(files, sf)
	}
	return files, nil
}

// handleResult applies the reply table of system.md §4.5.
func (p *Proxy) handleResult(ctx context.Context, log *slog.Logger, v *volume, a *archiveQueue, res sendResult) {
	key := taskKey(v.name, a.name)
	err := res.err
	switch {
	case len(res.files) == 0 && err == nil && res.bad == nil:
		// Nothing queued.
	case res.bad != nil:
		p.setSendError(v, a)
		log.ErrorContext(ctx, "send error: a queued wdiff is unreadable; remove or repair it, then kick",
			"diff", res.diff.String(), "err", res.bad)
	case err == nil:
		n := p.deleteSent(ctx, v, a, res.files)
		v.mu.Lock()
		a.lastSent, a.backoff, a.notBefore = time.Now(), 0, time.Time{}
		v.mu.Unlock()
		log.InfoContext(ctx, "wdiff sent", "diff", res.diff.String(), "files", len(res.files), "deleted", n,
			"gid", res.diff.SnapE.GidB)
		p.tasks.Push(key)
	case ctx.Err() != nil:
		log.InfoContext(ctx, "wdiff send aborted", "diff", res.diff.String(), "err", err)
	case errors.Is(err, wire.ErrTooOldDiff), errors.Is(err, wire.ErrDifferentUUID):
		n := p.deleteSent(ctx, v, a, res.files)
		v.mu.Lock()
		a.backoff, a.notBefore = 0, time.Time{}
		v.mu.Unlock()
		log.InfoContext(ctx, "archive refused the diff for good; deleted", "diff", res.diff.String(), "reply", wire.CodeOf(err), "deleted", n)
		p.tasks.Push(key)
	case errors.Is(err, wire.ErrSmallerLvSize), errors.Is(err, wire.ErrArchiveNotFound):
		p.setSendError(v, a)
		log.ErrorContext(ctx, "send error: archive refuses the volume; fix it, then kick", "diff", res.diff.String(), "err", err)
	case errors.Is(err, wire.ErrTooNewDiff), errors.Is(err, wire.ErrSyncing):
		d := p.backoff(v, a)
		log.InfoContext(ctx, "archive not ready; retrying", "diff", res.diff.String(), "reply", wire.CodeOf(err), "retry", d)
	case isRemote(err):
		v.mu.Lock()
		last := v.lastWlogRecv
		v.mu.Unlock()
		if !last.IsZero() && time.Since(last) > p.cfg.RetryTimeout {
			p.setSendError(v, a)
			log.ErrorContext(ctx, "send error: retry timeout reached", "diff", res.diff.String(), "err", err,
				"rto", p.cfg.RetryTimeout, "lastWlog", last)
			return
		}
		d := p.backoff(v, a)
		log.WarnContext(ctx, "archive refused the diff; retrying", "diff", res.diff.String(), "err", err, "retry", d)
	default:
		log.WarnContext(ctx, "wdiff send failed; retrying", "diff", res.diff.String(), "err", err, "retry", p.exceptionRetry)
		p.tasks.PushAfter(key, p.exceptionRetry)
	}
}

// setSendError stops the retries of a until kick, a new wlog or start.
func (p *Proxy) setSendError(v *volume, a *archiveQueue) {
	v.mu.Lock()
	defer v.mu.Unlock()
	a.sendError = true
}

// backoff schedules the next attempt after the current backoff, which
// doubles from -delay up to -maxdelay.
func (p *Proxy) backoff(v *volume, a *archiveQueue) time.Duration {
	v.mu.Lock()
	if a.backoff == 0 {
		a.backoff = p.cfg.Delay
	} else {
		a.backoff = min(2*a.backoff, p.cfg.MaxDelay)
	}
	d := a.backoff
	a.notBefore = time.Now().Add(d)
	v.mu.Unlock()
	p.tasks.PushAfter(taskKey(v.name, a.name), d)
	return d
}

// deleteSent removes the sent files from the queue. A file is removed only
// if it still is the very file that was sent: a resend of the same range
// may have replaced it meanwhile, and that one has not been sent.
func (p *Proxy) deleteSent(ctx context.Context, v *volume, a *archiveQueue, files []*sendFile) int {
	v.mu.Lock()
	defer v.mu.Unlock()
	n := 0
	for _, f := range files {
		cur, err := os.Stat(f.path)
		if err != nil || !os.SameFile(cur, f.info) {
			continue
		}
		if err := os.Remove(f.path); err != nil {
			p.log.WarnContext(ctx, "removing a sent wdiff", "vol", v.name, "archive", a.name, "file", f.name, "err", err)
			continue
		}
		n++
		if stored, ok := a.diffs.Get(f.diff); ok {
			if name, _ := meta.FileName(stored); name == f.name {
				a.diffs.Remove(stored)
			}
		}
	}
	if n > 0 {
		if err := meta.SyncDir(v.dir.sendtoDir(a.name)); err != nil {
			p.log.WarnContext(ctx, "syncing a queue directory", "vol", v.name, "archive", a.name, "err", err)
		}
	}
	return n
}
