// Package demo runs the SDK's demonstration, the front end of
// cmd/walb-demo: it starts the embedded default backup group (package
// group: a WalB device, a storage, a proxy and two archives in this
// process, on loopback ports, in a temporary directory), writes to the
// device in random bursts, takes a full backup while the device is being
// written, snapshots it between bursts, restores every snapshot at the
// primary archive and checks it against the device's sha256 at that
// snapshot, applies the older diffs to the archive's base, and restores and
// checks again. Then the storage goes standby, the device is written (the
// log is dropped), a hash backup brings the archive up to date, and the
// volume is replicated to the second archive; both restore the same image.
// Every step is printed with its gid, lsids, sizes and time.
package demo

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"sync"
	"time"

	"github.com/pkg/errors"

	"github.com/walb-go/walb/controller"
	"github.com/walb-go/walb/group"
	"github.com/walb-go/walb/nbd"
	"github.com/walb-go/walb/walb"
)

// ErrMismatch means a restored image differs from the device at its
// snapshot: the backup is wrong.
var ErrMismatch = errors.New("demo: restored image differs from the device")

// Options sizes the demo.
type Options struct {
	// Dir is the group directory; empty means a temporary directory,
	// removed at the end.
	Dir string
	// DeviceMiB and LogMiB size the data and log devices.
	DeviceMiB, LogMiB int
	// Snapshots is how many bursts are written, each followed by a
	// snapshot (at least 2: one is applied, a later one restored after).
	Snapshots int
	// BurstWrites is the number of writes per burst, each 4 KiB to
	// MaxWriteKiB at a random 4 KiB-aligned offset.
	BurstWrites, MaxWriteKiB int
	// Seed makes the written data and offsets reproducible.
	Seed uint64
	// Logger receives the servers' logs (nil: none).
	Logger *slog.Logger
}

// DefaultOptions is what cmd/walb-demo runs.
var DefaultOptions = Options{DeviceMiB: 64, LogMiB: 32, Snapshots: 4, BurstWrites: 200, MaxWriteKiB: 64, Seed: 1}

func (o Options) check() error {
	switch {
	case o.DeviceMiB < 1 || o.DeviceMiB > 1<<20:
		return errors.Errorf("demo: device size %d MiB: want 1 MiB to 1 TiB", o.DeviceMiB)
	case o.LogMiB*int(1<<20) < group.MinLogSize:
		return errors.Errorf("demo: log size %d MiB: want at least %d MiB", o.LogMiB, group.MinLogSize>>20)
	case o.Snapshots < 2:
		return errors.Errorf("demo: %d snapshots: want at least 2", o.Snapshots)
	case o.BurstWrites < 1:
		return errors.Errorf("demo: %d writes per burst: want at least 1", o.BurstWrites)
	case o.MaxWriteKiB < 4 || o.MaxWriteKiB%4 != 0 || o.MaxWriteKiB > 1024 || o.MaxWriteKiB*1024 > o.DeviceMiB<<20:
		return errors.Errorf("demo: max write %d KiB: want a multiple of 4 up to 1024 and the device size", o.MaxWriteKiB)
	}
	return nil
}

const volName = "vol0"

// demo is one run.
type demo struct {
	out   io.Writer
	opt   Options
	start time.Time
	g     *group.Group
	ctl   *controller.Controller
	v     *group.Volume
	rng   *rand.Rand
	buf   []byte
}

// snap is a snapshot taken by the demo and what the device held at it.
type snap struct {
	gid uint64
	sum [32]byte
}

// Run executes the demo, reporting to out. It returns nil only if every
// restored image matched the device at its snapshot.
func Run(ctx context.Context, out io.Writer, opt Options) (err error) {
	if err := opt.check(); err != nil {
		return err
	}
	d := &demo{out: out, opt: opt, start: time.Now(), rng: newRand(opt.Seed),
		buf: make([]byte, opt.MaxWriteKiB<<10)}
	d.say("walb-demo: a WalB backup group embedded in this process")

	t := time.Now()
	// Two archives: a0, the primary, takes the backups; a1 gets a replica.
	g, err := group.Start(ctx, group.Config{Dir: opt.Dir, Logger: opt.Logger, Archives: 2})
	if err != nil {
		return errors.WithMessage(err, "demo: start the group")
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		t := time.Now()
		if cerr := g.Close(cctx); cerr != nil {
			err = errors.Wrap(cerr, "demo: close the group")
			return
		}
		kept := "temporary directory removed"
		if opt.Dir != "" {
			kept = opt.Dir + " kept"
		}
		d.say("closed the group: servers stopped, device checkpointed, %s (%v)", kept, since(t))
	}()
	d.g, d.ctl = g, g.Controller()
	l := g.Layout()
	d.say("started the group in %s (%v)", g.Dir(), since(t))
	for _, s := range l.All() {
		d.say("  %-7s %-3s %s", s.Kind, s.Name, s.Addr)
	}
	d.say("  nbd     devices %s, restored images %s", g.DeviceNBDAddr(), g.ArchiveNBDAddr(g.Primary()))

	if err := d.run(ctx); err != nil {
		return err
	}
	return nil
}

func (d *demo) run(ctx context.Context) error {
	size := int64(d.opt.DeviceMiB) << 20
	t := time.Now()
	if _, err := d.g.Volume(volName); err == nil {
		// -dir names the directory of an earlier run: start afresh.
		if err := d.g.DeleteVolume(ctx, volName); err != nil {
			return err
		}
		d.say("deleted volume %s left by an earlier run (%v)", volName, since(t))
		t = time.Now()
	}
	v, err := d.g.AddVolume(ctx, volName, group.VolumeOptions{Size: size, LogSize: int64(d.opt.LogMiB) << 20})
	if err != nil {
		return err
	}
	d.v = v
	dev := v.Device()
	st, err := d.ctl.GetState(ctx, v.Storage(), volName)
	if err != nil {
		return err
	}
	d.say("created volume %s: %s data device, %s log device, %d-byte blocks, log uuid %s; storage %s: %s (%v)",
		volName, mib(size), mib(int64(d.opt.LogMiB)<<20), dev.PBS(), dev.UUID(), v.Storage().Name, st, since(t))
	d.say("  device %s is exported read-write at %s", v.DevicePath(), v.NBDURI())

	// Some data before the backup, so that the full copy has something to
	// carry.
	if err := d.burst("initial data", dev); err != nil {
		return err
	}

	// The full backup copies the image while a writer keeps writing; the
	// logs of those writes reach the archive through the proxy, and the
	// backup's snapshot includes them.
	t = time.Now()
	w := d.startWriter(dev)
	gid0, err := v.FullBackup(ctx)
	n, bytes, werr := w.stop()
	if err != nil {
		return errors.WithMessage(err, "demo: full backup")
	}
	if werr != nil {
		return errors.Wrap(werr, "demo: write during the full backup")
	}
	base, err := d.ctl.GetBase(ctx, d.g.Primary(), volName)
	if err != nil {
		return err
	}
	d.say("full backup to %s while writing (%d writes, %s, during the copy): restorable at gid %d, base %s (%v)",
		d.g.Primary().Name, n, mib(bytes), gid0, base.SnapB, since(t))
	st, err = d.ctl.GetState(ctx, v.Storage(), volName)
	if err != nil {
		return err
	}
	d.say("  storage %s: %s, every write now flows storage -> proxy -> archive; %s", v.Storage().Name, st, lsids(dev))

	// Bursts and snapshots; the second burst goes through NBD, as any
	// NBD client (qemu, nbdcopy, the kernel's nbd) would write.
	var snaps []snap
	for i := 1; i <= d.opt.Snapshots; i++ {
		var w io.WriterAt = dev
		what := fmt.Sprintf("burst %d", i)
		var c *nbd.Client
		if i == 2 && d.g.DeviceNBDAddr() != "" {
			if c, err = nbd.Dial(ctx, "tcp", d.g.DeviceNBDAddr(), nbd.ClientOptions{Export: volName}); err != nil {
				return errors.Wrap(err, "demo: NBD client")
			}
			w, what = c, what+" through NBD"
		}
		err := d.burst(what, w)
		if c != nil {
			if err == nil {
				err = c.Flush()
			}
			if cerr := c.Close(); err == nil {
				err = cerr
			}
		}
		if err != nil {
			return err
		}
		t := time.Now()
		gid, err := v.Snapshot(ctx)
		if err != nil {
			return errors.WithMessagef(err, "demo: snapshot %d", i)
		}
		took := since(t)
		sum, err := deviceSum(dev)
		if err != nil {
			return err
		}
		snaps = append(snaps, snap{gid, sum})
		d.say("snapshot %d: gid %d restorable at %s (%v); device sha256 %x...; %s", i, gid, d.g.Primary().Name, took, sum[:8], lsids(dev))
	}

	if err := d.archiveState(ctx, "archive"); err != nil {
		return err
	}
	for _, s := range snaps {
		if err := d.restore(ctx, d.g.Primary(), s); err != nil {
			return err
		}
	}

	// Apply the diffs up to the middle snapshot to the base: the older
	// snapshots go, the newer ones stay restorable from the new base.
	applied := snaps[len(snaps)/2-1]
	t = time.Now()
	if err := d.v.Apply(ctx, applied.gid); err != nil {
		return errors.WithMessagef(err, "demo: apply gid %d", applied.gid)
	}
	d.say("applied the diffs up to gid %d to the base image (%v)", applied.gid, since(t))
	if err := d.archiveState(ctx, "after apply"); err != nil {
		return err
	}
	verified := len(snaps)
	for _, s := range snaps {
		if s.gid >= applied.gid {
			if err := d.restore(ctx, d.g.Primary(), s); err != nil {
				return err
			}
			verified++
		}
	}

	// Standby: the storage stops sending and drops the log, as when a
	// replica takes over or the log overflowed. The writes made meanwhile
	// reach the archive by hash backup: only the chunks that differ travel.
	t = time.Now()
	if err := d.v.GoStandby(ctx); err != nil {
		return errors.WithMessage(err, "demo: go standby")
	}
	if err := d.burst("burst while standby (its log is dropped)", dev); err != nil {
		return err
	}
	gid, err := d.v.HashBackup(ctx)
	if err != nil {
		return errors.WithMessage(err, "demo: hash backup")
	}
	sum, err := deviceSum(dev)
	if err != nil {
		return err
	}
	hashed := snap{gid, sum}
	d.say("standby, then hash backup to %s: restorable at gid %d (%v)", d.g.Primary().Name, gid, since(t))
	if err := d.restore(ctx, d.g.Primary(), hashed); err != nil {
		return err
	}
	verified++

	// Replication: a1 gets the volume from a0 (a full replication the
	// first time), and restores the same images.
	a1 := d.g.Layout().Archives[1]
	t = time.Now()
	rgid, err := d.v.ReplicateTo(ctx, a1)
	if err != nil {
		return errors.WithMessagef(err, "demo: replicate to %s", a1.Name)
	}
	d.say("replicated %s -> %s up to gid %d (%v)", d.g.Primary().Name, a1.Name, rgid, since(t))
	if rgid != hashed.gid {
		return errors.Wrapf(ErrMismatch, "replicated up to gid %d, want %d", rgid, hashed.gid)
	}
	if err := d.restore(ctx, a1, hashed); err != nil {
		return err
	}
	verified++
	d.say("OK: %d restores of %d snapshots matched the device bit for bit (%v in all)", verified, len(snaps)+1, since(d.start))
	return nil
}

// burst writes BurstWrites random blocks to w.
func (d *demo) burst(what string, w io.WriterAt) error {
	t := time.Now()
	size := int64(d.opt.DeviceMiB) << 20
	var bytes int64
	for range d.opt.BurstWrites {
		n, off := randomWrite(d.rng, d.buf, size)
		if _, err := w.WriteAt(d.buf[:n], off); err != nil {
			return errors.Wrapf(err, "demo: %s: write %d bytes at %d", what, n, off)
		}
		bytes += int64(n)
	}
	d.say("%s: %d random writes, %s (%v)", what, d.opt.BurstWrites, mib(bytes), since(t))
	return nil
}

func newRand(seed uint64) *rand.Rand { return rand.New(rand.NewPCG(seed, 0x5741_4c42)) }

// randomWrite fills a random prefix of buf with random bytes and picks a
// 4 KiB-aligned offset for it.
func randomWrite(rng *rand.Rand, buf []byte, size int64) (int, int64) {
	n := (1 + rng.IntN(len(buf)/4096)) * 4096
	off := rng.Int64N((size-int64(n))/4096+1) * 4096
	for i := 0; i < n; i += 8 {
		v := rng.Uint64()
		for j := range 8 {
			buf[i+j] = byte(v >> (8 * j))
		}
	}
	return n, off
}

// writer writes to the device until stopped.
type writer struct {
	quit  chan struct{}
	wg    sync.WaitGroup
	n     int
	bytes int64
	err   error
}

func (d *demo) startWriter(dev *walb.Device) *writer {
	w := &writer{quit: make(chan struct{})}
	rng := rand.New(rand.NewPCG(d.opt.Seed, 0xfeed))
	buf := make([]byte, len(d.buf))
	size := dev.Size()
	w.wg.Add(1)
	go func() {
		defer w.wg.Done()
		for {
			select {
			case <-w.quit:
				return
			default:
			}
			n, off := randomWrite(rng, buf, size)
			if _, err := dev.WriteAt(buf[:n], off); err != nil {
				w.err = err
				return
			}
			w.n++
			w.bytes += int64(n)
			// A steady stream rather than a flood, so that the log keeps
			// up with the copy.
			time.Sleep(time.Millisecond)
		}
	}()
	return w
}

func (w *writer) stop() (int, int64, error) {
	close(w.quit)
	w.wg.Wait()
	return w.n, w.bytes, w.err
}

// restore restores s at the primary archive, compares the image with the
// device's sum at the snapshot, and deletes it.
func (d *demo) restore(ctx context.Context, ax controller.Server, s snap) error {
	t := time.Now()
	img, err := d.ctl.Restore(ctx, ax, volName, s.gid)
	if err != nil {
		return errors.WithMessagef(err, "demo: restore gid %d", s.gid)
	}
	took := since(t)
	f, err := os.Open(img.Path)
	if err != nil {
		return errors.Wrap(err, "demo: open the restored image")
	}
	sum, err := readerSum(f, d.v.Size())
	f.Close()
	if err != nil {
		return errors.Wrap(err, "demo: read the restored image")
	}
	if sum != s.sum {
		return errors.Wrapf(ErrMismatch, "gid %d: restored sha256 %x, device %x", s.gid, sum, s.sum)
	}
	where := img.Path
	if uri := d.g.RestoredURI(ax, img); uri != "" {
		where += ", " + uri
	}
	d.say("restored gid %d on %s (%v): %s image, sha256 %x... matches snapshot (%s)", s.gid, ax.Name, took, mib(d.v.Size()), sum[:8], where)
	if err := d.ctl.DelRestored(ctx, ax, volName, s.gid); err != nil {
		return errors.WithMessagef(err, "demo: delete restored gid %d", s.gid)
	}
	return nil
}

// archiveState prints the archive's base, diffs and restorable snapshots.
func (d *demo) archiveState(ctx context.Context, what string) error {
	a0 := d.g.Primary()
	base, err := d.ctl.GetBase(ctx, a0, volName)
	if err != nil {
		return err
	}
	diffs, err := d.ctl.GetDiffList(ctx, a0, volName, 0, controller.LatestGid)
	if err != nil {
		return err
	}
	var total uint64
	for _, df := range diffs {
		total += df.DataSize
	}
	gids, err := d.v.Restorable(ctx)
	if err != nil {
		return err
	}
	d.say("%s %s: base %s, %d wdiffs (%s), restorable gids %v", what, a0.Name, base.SnapB, len(diffs), mib(int64(total)), gids)
	return nil
}

func (d *demo) say(format string, args ...any) {
	fmt.Fprintf(d.out, "[%6.2fs] %s\n", time.Since(d.start).Seconds(), fmt.Sprintf(format, args...))
}

func lsids(dev *walb.Device) string {
	l := dev.Lsids()
	return fmt.Sprintf("lsids oldest %d, permanent %d, latest %d (log %d of %d blocks in use)",
		l.Oldest, l.Permanent, l.Latest, dev.LogUsage(), dev.LogCapacity())
}

func deviceSum(dev *walb.Device) ([32]byte, error) {
	sum, err := readerSum(dev, dev.Size())
	return sum, errors.Wrap(err, "demo: read the device")
}

func readerSum(r io.ReaderAt, size int64) ([32]byte, error) {
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(r, 0, size)); err != nil {
		return [32]byte{}, err
	}
	return [32]byte(h.Sum(nil)), nil
}

func mib(n int64) string { return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20)) }

func since(t time.Time) time.Duration {
	d := time.Since(t)
	if d > time.Second {
		return d.Round(10 * time.Millisecond)
	}
	return d.Round(time.Millisecond)
}
