package proxy

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/server"
)

// State returns vol's state (get state).
func (p *Proxy) State(vol string) string { return p.vols.State(vol) }

// VolumeNames returns the volumes that are not Clear, sorted (get vol).
func (p *Proxy) VolumeNames() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return slices.Sorted(maps.Keys(p.volumes))
}

// ArchiveNames returns vol's archive names, sorted (archive-info list); a
// Clear volume has none.
func (p *Proxy) ArchiveNames(vol string) ([]string, error) {
	if err := validateNames(vol, ""); err != nil {
		return nil, err
	}
	v := p.volume(vol)
	if v == nil {
		return []string{}, nil
	}
	return v.archiveNames(), nil
}

// ArchiveInfo returns the info of vol's archive (archive-info get).
func (p *Proxy) ArchiveInfo(vol, archive string) (ArchiveInfo, error) {
	if err := validateNames(vol, archive); err != nil {
		return ArchiveInfo{}, err
	}
	v := p.volume(vol)
	if v == nil {
		return ArchiveInfo{}, errors.Wrapf(ErrNoArchive, "volume %s is %s", vol, StateClear)
	}
	a := v.archive(archive)
	if a == nil {
		return ArchiveInfo{}, errors.Wrapf(ErrNoArchive, "volume %s archive %s", vol, archive)
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	return a.info, nil
}

// IsWdiffSendError reports the send-error flag of vol's archive (get
// is-wdiff-send-error).
func (p *Proxy) IsWdiffSendError(vol, archive string) (bool, error) {
	if err := validateNames(vol, archive); err != nil {
		return false, err
	}
	v, err := p.mustVolume(vol)
	if err != nil {
		return false, err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	a := v.archives[archive]
	if a == nil {
		return false, errors.Wrapf(ErrNoArchive, "volume %s archive %s", vol, archive)
	}
	return a.sendError, nil
}

// LatestSnap returns, for vol (all volumes for ""), one line per archive
// about the newest queued diff (get latest-snap):
// name:V\tkind:proxy\tarchive:A\tgid:G\ttimestamp:T, with empty values when
// the queue is empty.
func (p *Proxy) LatestSnap(vol string) ([]string, error) {
	if vol == "" {
		lines := []string{}
		for _, name := range p.VolumeNames() {
			if v := p.volume(name); v != nil {
				lines = append(lines, v.latestSnap()...)
			}
		}
		return lines, nil
	}
	if err := validateNames(vol, ""); err != nil {
		return nil, err
	}
	v, err := p.mustVolume(vol)
	if err != nil {
		return nil, errors.WithMessagef(err, "no latest snapshot for volume %s", vol)
	}
	return v.latestSnap(), nil
}

func (v *volume) latestSnap() []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	lines := []string{}
	for _, name := range slices.Sorted(maps.Keys(v.archives)) {
		line := fmt.Sprintf("name:%s\tkind:proxy\tarchive:%s\t", v.name, name)
		if d, ok := v.archives[name].diffs.Latest(); ok {
			line += fmt.Sprintf("gid:%d\ttimestamp:%s", d.SnapE.GidB, meta.FormatPrettyTime(d.Timestamp))
		} else {
			line += "gid:\ttimestamp:"
		}
		lines = append(lines, line)
	}
	return lines
}

// ProxyDiff returns the diff listing of vol's received/ or, with an
// archive, of that archive's queue (get proxy-diff).
func (p *Proxy) ProxyDiff(vol, archive string) ([]string, error) {
	if err := validateNames(vol, archive); err != nil {
		return nil, err
	}
	v, err := p.mustVolume(vol)
	if err != nil {
		return nil, err
	}
	diffs, err := v.diffs(archive)
	if err != nil {
		return nil, err
	}
	lines := make([]string, len(diffs))
	for i, d := range diffs {
		lines[i] = d.Listing()
	}
	return lines, nil
}

// Diffs returns the diffs of vol's received/ or, with an archive, of that
// archive's queue, in gid order.
func (p *Proxy) Diffs(vol, archive string) ([]meta.Diff, error) {
	if err := validateNames(vol, archive); err != nil {
		return nil, err
	}
	v, err := p.mustVolume(vol)
	if err != nil {
		return nil, err
	}
	return v.diffs(archive)
}

func (v *volume) diffs(archive string) ([]meta.Diff, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if archive == "" {
		return v.received.All(), nil
	}
	a := v.archives[archive]
	if a == nil {
		return nil, errors.Wrapf(ErrNoArchive, "volume %s archive %s", v.name, archive)
	}
	return a.diffs.All(), nil
}

// SizeLb returns the volume size the proxy knows, in LB.
func (p *Proxy) SizeLb(vol string) (uint64, error) {
	if err := validateNames(vol, ""); err != nil {
		return 0, err
	}
	v, err := p.mustVolume(vol)
	if err != nil {
		return 0, err
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.sizeLb, nil
}

func prettyTime(t time.Time) string { return meta.FormatPrettyTime(t) }

// Status answers status [VOL] (system.md §4.7): with a volume, its state,
// size, received diffs, last wlog time and actions, then per archive its
// address, compression, delay, action, queue and send state; without, one
// summary line per volume and per archive.
func (p *Proxy) Status(ctx context.Context, args []string) ([]string, error) {
	switch len(args) {
	case 0:
		return p.statusAll(), nil
	case 1:
		return p.statusVol(args[0])
	}
	return nil, errors.Wrapf(server.ErrBadArgs, "status [VOL], got %q", args)
}

func (p *Proxy) statusAll() []string {
	lines := []string{fmt.Sprintf("proxy\tbaseDir:%s\tmaxWdiffSendSize:%d\tmaxWdiffSendFiles:%d\tdelay:%s\tmaxDelay:%s\tretryTimeout:%s",
		p.cfg.BaseDir, p.cfg.MaxWdiffSendSize, p.cfg.MaxWdiffSendFiles, p.cfg.Delay, p.cfg.MaxDelay, p.cfg.RetryTimeout)}
	for _, name := range p.VolumeNames() {
		v := p.volume(name)
		if v == nil {
			continue
		}
		state := p.vols.State(name)
		v.mu.Lock()
		n, size := v.received.Stats(0, ^uint64(0))
		lines = append(lines, fmt.Sprintf("volume\tname:%s\tstate:%s\tnumDiff:%d\ttotalSize:%d\tlastWlogReceivedTime:%s",
			name, state, n, size, prettyTime(v.lastWlogRecv)))
		for _, an := range slices.Sorted(maps.Keys(v.archives)) {
			a := v.archives[an]
			n, size := a.diffs.Stats(0, ^uint64(0))
			minGid, maxGid, _ := a.diffs.MinMaxGid()
			lines = append(lines, fmt.Sprintf("archive\tname:%s\tarchive:%s\taction:%s\tnumDiff:%d\ttotalSize:%d\tminGid:%d\tmaxGid:%d\tlastWdiffSentTime:%s\tisWdiffSendError:%d",
				name, an, p.actionString(name, an), n, size, minGid, maxGid, prettyTime(a.lastSent), b2i(a.sendError)))
		}
		v.mu.Unlock()
	}
	return lines
}

func (p *Proxy) actionString(vol, archive string) string {
	if p.vols.NumAction(vol, actionName(archive)) > 0 {
		return "WdiffSend"
	}
	return "None"
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

func (p *Proxy) statusVol(vol string) ([]string, error) {
	if err := validateNames(vol, ""); err != nil {
		return nil, err
	}
	state := p.vols.State(vol)
	lines := []string{"hostType proxy", "volume " + vol, "state " + state}
	v := p.volume(vol)
	if v == nil {
		return lines, nil
	}
	total := 0
	for _, st := range p.vols.Actions(vol) {
		total += st.Running
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	n, size := v.received.Stats(0, ^uint64(0))
	lines = append(lines,
		fmt.Sprintf("stopState %s", p.vols.StopState(vol)),
		fmt.Sprintf("sizeLb %d", v.sizeLb),
		fmt.Sprintf("numDiff %d", n),
		fmt.Sprintf("totalSize %d", size),
		fmt.Sprintf("lastWlogReceivedTime %s", prettyTime(v.lastWlogRecv)),
		fmt.Sprintf("totalNumAction %d", total),
		"-----Archive-----")
	now := time.Now()
	for _, an := range slices.Sorted(maps.Keys(v.archives)) {
		a := v.archives[an]
		diffs := a.diffs.All()
		var qsize uint64
		var oldest time.Time
		for _, d := range diffs {
			qsize += d.DataSize
			if oldest.IsZero() || d.Timestamp.Before(oldest) {
				oldest = d.Timestamp
			}
		}
		measured := int64(0)
		if len(diffs) > 0 {
			measured = int64(now.Sub(oldest) / time.Second)
		}
		lines = append(lines,
			"  archive "+an,
			"  host "+a.info.Addr(),
			"  compression "+a.info.Compression.String(),
			fmt.Sprintf("  wdiffSendDelay %d", int64(a.info.Delay/time.Second)),
			"  action "+p.actionString(vol, an),
			fmt.Sprintf("  numDiff %d", len(diffs)),
			"  lastWdiffSentTime "+prettyTime(a.lastSent),
			fmt.Sprintf("  isWdiffSendError %d", b2i(a.sendError)),
			fmt.Sprintf("  wdiffTotalSize %d", qsize),
			fmt.Sprintf("  wdiffSendDelayMeasured %d", measured))
	}
	return lines, nil
}
