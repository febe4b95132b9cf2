package proxy

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"math"
	"os"
	"path/filepath"
	"time"

	"github.com/pkg/errors"
	"golang.org/x/sys/unix"

	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/server"
	"github.com/walb-go/walb/wdiff"
	"github.com/walb-go/walb/wlog"
)

// WlogHeader is what a wlog transfer announces before its logpacks
// (system.md §6.5, wlog-transfer).
type WlogHeader struct {
	// UUID is the log device's UUID; it becomes the wdiff header's UUID.
	UUID meta.UUID
	// PBS is the log's physical block size and Salt its checksum salt.
	PBS, Salt uint32
	// SizeLb is the volume size; the proxy's size grows to it.
	SizeLb uint64
	// MaxLogSizePb bounds the transfer; that much free disk space is
	// required.
	MaxLogSizePb uint64
}

// Validate checks the block size and that the announced size is
// representable in bytes.
func (h WlogHeader) Validate() error {
	if !wlog.ValidPBS(h.PBS) {
		return errors.Wrapf(ErrBadStream, "physical block size %d", h.PBS)
	}
	if h.MaxLogSizePb > math.MaxInt64/uint64(h.PBS) {
		return errors.Wrapf(ErrBadStream, "max log size %d PB of %d bytes", h.MaxLogSizePb, h.PBS)
	}
	if h.SizeLb > math.MaxInt64/wlog.LogicalBlockSize {
		return errors.Wrapf(ErrBadStream, "volume size %d LB", h.SizeLb)
	}
	return nil
}

// Receiver is one wlog transfer being turned into a wdiff (system.md §4.4).
// The network handler (and tests) drive it:
//
//	r, err := p.BeginReceive(ctx, vol, hdr) // reply accept or the error
//	defer r.Abort()
//	err = r.ReadPacks(packs)                 // the logpack stream
//	err = r.Commit(diff)                     // the MetaDiff; then send the ACK
//
// While it runs the volume is in WlogRecv; Abort (or any failure) rolls it
// back to Started and removes the temporary file.
type Receiver struct {
	p       *Proxy
	v       *volume
	hdr     WlogHeader
	ctx     context.Context
	cancel  context.CancelFunc
	untrack func()
	release func()
	tx      *server.StateTxn
	tmp     *meta.TempFile
	stats   wdiff.ConvertStats
	packs   bool // ReadPacks succeeded
	done    bool
}

// BeginReceive accepts a wlog transfer for vol, or says why not: the volume
// must be Started and not stopping, a foreground slot (-fg) must be free,
// and the volume's file system must have MaxLogSizePb blocks free. The
// transfer is aborted when ctx is canceled or the volume is force stopped.
func (p *Proxy) BeginReceive(ctx context.Context, vol string, hdr WlogHeader) (*Receiver, error) {
	if err := validateNames(vol, ""); err != nil {
		return nil, err
	}
	if err := hdr.Validate(); err != nil {
		return nil, err
	}
	if p.isClosed() {
		return nil, ErrClosed
	}
	if ss := p.vols.StopState(vol); ss != server.NotStopping {
		return nil, errors.Wrapf(server.ErrStopping, "volume %s is %s", vol, ss)
	}
	release, err := p.foreground()
	if err != nil {
		return nil, err
	}
	r := &Receiver{p: p, hdr: hdr, release: release}
	r.ctx, r.cancel = context.WithCancel(ctx)
	if r.tx, err = p.vols.Begin(ctx, vol, StateWlogRecv, guardWlogRecv); err != nil {
		r.Abort()
		return nil, err
	}
	if r.v, err = p.mustVolume(vol); err != nil {
		r.Abort()
		return nil, err
	}
	r.untrack = r.v.track(r.cancel)
	if err := checkFreeSpace(r.v.dir.receivedDir(), hdr.MaxLogSizePb*uint64(hdr.PBS)); err != nil {
		r.Abort()
		return nil, err
	}
	return r, nil
}

// checkFreeSpace fails with ErrNoSpace when dir's file system has fewer
// than need bytes available.
func checkFreeSpace(dir string, need uint64) error {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return errors.Wrapf(err, "proxy: statfs %s", dir)
	}
	avail := st.Bavail * uint64(st.Bsize)
	if avail < need {
		return errors.Wrapf(ErrNoSpace, "%d bytes free in %s, the transfer may need %d", avail, dir, need)
	}
	return nil
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n uint64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += uint64(n)
	return n, err
}

// ReadPacks consumes the transfer's logpacks from packs: each pack is its
// header block followed by its data blocks, exactly as on the log device,
// packs in lsid order; io.EOF after the last pack ends the stream (the
// network layer gives EOF only on the sender's End marker). The packs are
// framed as a wlog and converted by wdiff.ConvertWlogs into an indexed
// wdiff in a temporary file of received/: every header and IO checksum is
// verified, padding is dropped, discards become DISCARD records and
// all-zero IOs ALLZERO records. Bytes after the last pack (an end block
// included) are an error.
func (r *Receiver) ReadPacks(packs io.Reader) error {
	if r.done || r.packs || r.tmp != nil {
		return errors.Wrap(server.ErrBadArgs, "proxy: ReadPacks called twice or after the end")
	}
	err := r.readPacks(packs)
	if err != nil {
		r.Abort()
		return err
	}
	r.packs = true
	return nil
}

func (r *Receiver) readPacks(packs io.Reader) error {
	var err error
	if r.tmp, err = meta.CreateTemp(r.v.dir.receivedDir(), filePerm); err != nil {
		return err
	}
	pbs := int(r.hdr.PBS)
	br := bufio.NewReaderSize(packs, max(64<<10, pbs))
	begin := uint64(0)
	first, err := br.Peek(pbs)
	switch {
	case err == nil:
		h, perr := wlog.ParsePackHeader(first, r.hdr.Salt)
		if perr != nil {
			return errors.Wrapf(ErrBadStream, "first logpack header: %v", perr)
		}
		begin = h.LogpackLsid
	case err == io.EOF && len(first) == 0:
		// No logpack: an empty diff.
	case err == io.EOF || err == io.ErrUnexpectedEOF:
		return errors.Wrapf(ErrBadStream, "stream ends inside the first logpack header (%d of %d bytes)", len(first), pbs)
	default:
		return err
	}
	fh := wlog.FileHeader{Salt: r.hdr.Salt, PBS: r.hdr.PBS, UUID: wlog.UUID(r.hdr.UUID), BeginLsid: begin, EndLsid: wlog.InvalidLsid}
	if err := fh.Validate(); err != nil {
		return errors.Wrapf(ErrBadStream, "%v", err)
	}
	cr := &countingReader{r: br}
	src := io.MultiReader(bytes.NewReader(fh.Marshal()), cr)
	bw := bufio.NewWriterSize(r.tmp, 1<<20)
	r.stats, err = wdiff.ConvertWlogs(r.ctx, []wdiff.WlogInput{{Name: "wlog-transfer", R: src}}, bw, wdiff.ConvertOptions{
		Indexed:     true,
		Compression: *r.p.cfg.ReceiveCompression,
		MaxIOBlocks: wdiff.DefaultMaxIOBlocks,
	})
	if err != nil {
		if ctxErr := r.ctx.Err(); ctxErr != nil {
			return errors.Wrap(ctxErr, "proxy: wlog receive aborted")
		}
		if isStreamError(err) {
			return errors.Wrapf(ErrBadStream, "%v", err)
		}
		return err
	}
	if err := bw.Flush(); err != nil {
		return errors.Wrap(err, "proxy: write wdiff")
	}
	// The converter stops at an end block or at EOF; insist on EOF right
	// after the last pack, so nothing the sender meant is dropped.
	var one [1]byte
	if n, _ := io.ReadFull(cr, one[:]); n > 0 {
		return errors.Wrapf(ErrBadStream, "data after the last logpack (lsid %d)", r.stats.EndLsid)
	}
	want := (r.stats.EndLsid - r.stats.BeginLsid) * uint64(r.hdr.PBS)
	if cr.n != want {
		return errors.Wrapf(ErrBadStream, "%d bytes of logpacks for lsids [%d, %d), want %d (data after the last logpack)",
			cr.n, r.stats.BeginLsid, r.stats.EndLsid, want)
	}
	return nil
}

// isStreamError reports whether a conversion error blames the input.
func isStreamError(err error) bool {
	for _, e := range []error{wlog.ErrChecksum, wlog.ErrCorrupt, wlog.ErrTruncated, wlog.ErrInvalid, wdiff.ErrInvalid} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// Context returns the transfer's context: it is canceled when the transfer
// must stop (a force stop of the volume, Abort). The network handler reads
// the logpack stream with it, so a blocked read ends too.
func (r *Receiver) Context() context.Context { return r.ctx }

// Stats returns what ReadPacks converted.
func (r *Receiver) Stats() wdiff.ConvertStats { return r.stats }

// Commit ends the transfer with its MetaDiff, which must be clean
// (system.md §4.4 steps 2–7): the wdiff is fsynced and renamed into
// received/ under the diff's name, hard-linked into every sendto/<archive>/
// and removed from received/; a send per archive is queued after that
// archive's delay and the send-error flags are cleared; the size grows to
// the announced one; the state returns to Started. Only when Commit returns
// nil may the caller send the ACK: everything is durable by then, and a
// lost ACK only makes the storage send the same range again. The returned
// diff carries the file's DataSize.
func (r *Receiver) Commit(diff meta.Diff) (meta.Diff, error) {
	if r.done || !r.packs {
		return meta.Diff{}, errors.Wrap(server.ErrBadArgs, "proxy: Commit without ReadPacks")
	}
	d, err := r.commit(diff)
	if err != nil {
		r.Abort()
		return meta.Diff{}, err
	}
	return d, nil
}

func (r *Receiver) commit(diff meta.Diff) (meta.Diff, error) {
	p, v := r.p, r.v
	if err := diff.Validate(); err != nil {
		return diff, errors.Wrapf(ErrBadStream, "diff %s: %v", diff, err)
	}
	if !diff.IsClean() {
		return diff, errors.Wrapf(ErrBadStream, "diff %s is not clean", diff)
	}
	if err := r.ctx.Err(); err != nil {
		return diff, errors.Wrap(err, "proxy: wlog receive aborted")
	}
	st, err := r.tmp.Stat()
	if err != nil {
		return diff, errors.Wrap(err, "proxy: stat wdiff")
	}
	diff.DataSize = uint64(st.Size())
	name, err := meta.FileName(diff)
	if err != nil {
		return diff, errors.Wrapf(ErrBadStream, "%v", err)
	}
	// Step 3: durable under its name in received/, and registered. An
	// older file of the same range (a resend after a lost ACK that was
	// never distributed) gives way.
	v.mu.Lock()
	if old, ok := v.received.Get(diff); ok {
		if oldName, _ := meta.FileName(old); oldName != name {
			if err := os.Remove(filepath.Join(v.dir.receivedDir(), oldName)); err != nil && !os.IsNotExist(err) {
				v.mu.Unlock()
				return diff, errors.Wrap(err, "proxy: replace received wdiff")
			}
		}
		v.received.Remove(old)
	}
	v.mu.Unlock()
	err = r.tmp.Commit(filepath.Join(v.dir.receivedDir(), name))
	r.tmp = nil
	if err != nil {
		return diff, err
	}
	v.mu.Lock()
	err = v.received.Add(diff)
	v.mu.Unlock()
	if err != nil {
		return diff, err
	}
	// Step 4: hard links in every queue, then out of received/.
	if err := p.distributeReceived(v); err != nil {
		return diff, err
	}
	// Steps 5 and 6.
	v.mu.Lock()
	type push struct {
		key   string
		delay time.Duration
	}
	var pushes []push
	for _, a := range v.archives {
		a.sendError = false
		pushes = append(pushes, push{taskKey(v.name, a.name), a.info.Delay})
	}
	if r.hdr.SizeLb > v.sizeLb {
		if err := saveSize(v.dir, r.hdr.SizeLb); err != nil {
			v.mu.Unlock()
			return diff, err
		}
		p.log.InfoContext(r.ctx, "volume grew", "vol", v.name, "oldSizeLb", v.sizeLb, "sizeLb", r.hdr.SizeLb)
		v.sizeLb = r.hdr.SizeLb
	}
	v.lastWlogRecv = time.Now()
	v.mu.Unlock()
	for _, ps := range pushes {
		p.tasks.PushAfter(ps.key, ps.delay)
	}
	// Step 7: commit the state; the caller acks after this.
	if err := r.tx.Commit(StateStarted); err != nil {
		return diff, err
	}
	r.finish()
	p.log.DebugContext(r.ctx, "wlog received", "vol", v.name, "diff", diff.String(), "size", diff.DataSize,
		"lsid", r.stats.BeginLsid, "endLsid", r.stats.EndLsid, "ios", r.stats.InputIOs)
	return diff, nil
}

// Abort ends the transfer without a diff: the state goes back to Started
// and the temporary file is removed. It does nothing after Commit and may
// be called more than once.
func (r *Receiver) Abort() {
	if r.done {
		return
	}
	if r.tmp != nil {
		_ = r.tmp.Abort()
		r.tmp = nil
	}
	if r.tx != nil {
		r.tx.Rollback()
	}
	r.finish()
}

func (r *Receiver) finish() {
	r.done = true
	if r.untrack != nil {
		r.untrack()
	}
	r.cancel()
	r.release()
}

// distributeReceived hard-links every diff of received/ into each archive
// queue and then removes it from received/ (walb-tools
// tryToMakeHardlinkInSendtoDir). In each queue a diff of the same range
// under another name (an earlier copy of a resent range) is removed before
// the link is made, so a crash at any point leaves at most one file per
// range in a queue, and the received/ copy to finish from.
func (p *Proxy) distributeReceived(v *volume) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if len(v.archives) == 0 {
		return nil // nowhere to link to: the files stay in received/
	}
	for _, d := range v.received.All() {
		name, err := meta.FileName(d)
		if err != nil {
			return err
		}
		src := filepath.Join(v.dir.receivedDir(), name)
		for _, a := range v.archives {
			dir := v.dir.sendtoDir(a.name)
			if old, ok := a.diffs.Get(d); ok {
				if oldName, _ := meta.FileName(old); oldName != name {
					if err := os.Remove(filepath.Join(dir, oldName)); err != nil && !os.IsNotExist(err) {
						return errors.Wrap(err, "proxy: replace queued wdiff")
					}
				}
				a.diffs.Remove(old)
			}
			if err := linkFile(src, dir, name); err != nil {
				return err
			}
			if err := meta.SyncDir(dir); err != nil {
				return err
			}
			if err := a.diffs.Add(d); err != nil {
				return err
			}
		}
		if err := os.Remove(src); err != nil && !os.IsNotExist(err) {
			return errors.Wrap(err, "proxy: remove received wdiff")
		}
		if err := meta.SyncDir(v.dir.receivedDir()); err != nil {
			return err
		}
		v.received.Remove(d)
	}
	return nil
}
