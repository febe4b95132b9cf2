package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"

	"github.com/pkg/errors"
	"golang.org/x/sys/unix"

	"github.com/walb-go/walb/walb"
)

// nbdTarget is the least share of qemu-nbd's rate the walb.Device export
// must reach, in both directions.
const nbdTarget = 0.5

var nbdServers = []struct{ id, label string }{
	{serverQemu, "qemu-nbd"},
	{serverFile, "nbd.Server FileBackend"},
	{serverWalb, "nbd.Server walb.Device"},
}

// nbd measures qemu-img copying into and out of exports of qemu-nbd and of
// our server (see the package documentation).
func (b *bench) nbd(ctx context.Context) error {
	if err := needTools("qemu-img", "qemu-nbd"); err != nil {
		fmt.Fprintf(b.out, "nbd suite: skipped: %v (Debian and Ubuntu: apt-get install qemu-utils)\n", err)
		return nil
	}
	c := b.cfg
	src, data, ldev, dst, stats := b.path("nbd.src"), b.path("nbd.img"), b.path("nbd.ldev"), b.path("nbd.dst"), b.path("nbd.stats")
	fmt.Fprintf(b.log, "generating %s\n", src)
	if err := randomFile(src, c.nbdSize, 0x6e6264); err != nil {
		return err
	}
	if err := zeroFile(ldev, c.ldevSize); err != nil {
		return err
	}
	b.nbdHeader()

	qemuRate := map[string]float64{}
	walbRate := map[string]float64{}
	for _, dir := range []string{"write", "read"} {
		for _, s := range nbdServers {
			o := op{label: "nbd " + dir + " " + s.label, bytes: c.nbdSize, inner: true}
			if dir == "write" {
				o.args = []string{"nbd", s.id, dir, src, data, ldev, stats}
				o.inputs = []string{src}
				o.prepare = func() error {
					if err := zeroFile(data, c.nbdSize); err != nil {
						return err
					}
					if s.id == serverWalb {
						_, err := walb.FormatLogDevice(ldev, data, walb.FormatOptions{Name: "bench", PBS: devPBS})
						return err
					}
					return nil
				}
			} else {
				o.args = []string{"nbd", s.id, dir, dst, data, ldev, stats}
				o.inputs = []string{data}
				o.prepare = func() error {
					if err := os.Remove(dst); err != nil && !os.IsNotExist(err) {
						return errors.Wrap(err, "bench")
					}
					return nil
				}
			}
			r, st, err := b.measureWithStats(ctx, o, stats)
			if err != nil {
				return err
			}
			copied := data
			if dir == "read" {
				copied = dst
			}
			if err := sameContent(src, copied); err != nil {
				return errors.WithMessagef(err, "%s", o.label)
			}
			switch s.id {
			case serverQemu:
				qemuRate[dir] = r.best()
			case serverWalb:
				walbRate[dir] = r.best()
			}
			b.emitNBD(r, st, qemuRate[dir])
		}
	}
	var parts []string
	for _, dir := range []string{"write", "read"} {
		v := "ok"
		if walbRate[dir] < nbdTarget*qemuRate[dir] {
			v = "MISS"
		}
		parts = append(parts, fmt.Sprintf("%s %.2fx %s", dir, walbRate[dir]/qemuRate[dir], v))
	}
	fmt.Fprintf(b.out, "nbd targets: walb.Device export >= %.0f%% of qemu-nbd: %s\n", 100*nbdTarget, strings.Join(parts, ", "))
	fmt.Fprintf(b.out, "nbd suite done; load average %s\n", loadAverage())
	for _, p := range []string{src, data, ldev, dst} {
		if err := b.remove(p); err != nil {
			return err
		}
	}
	return nil
}

func (b *bench) nbdHeader() {
	c := b.cfg
	out := b.out
	version := toolVersion("qemu-img")
	fmt.Fprintf(out, "nbd suite: %s copies %s of random data into and out of a %s export, over TCP on 127.0.0.1\n", version, mib(c.nbdSize), mib(c.nbdSize))
	w, _ := qemuImgArgs("write", "SRC", "nbd://127.0.0.1:PORT/"+exportName)
	r, _ := qemuImgArgs("read", "DST", "nbd://127.0.0.1:PORT/"+exportName)
	fmt.Fprintf(out, "  write: qemu-img %s (flushes at the end)\n", strings.Join(w, " "))
	fmt.Fprintf(out, "  read:  qemu-img %s (DST not synced)\n", strings.Join(r, " "))
	fmt.Fprintf(out, "  servers: qemu-nbd %s; our nbd.Server (in a bench child)\n", strings.Join(qemuNBDArgs("PORT", "DATA"), " "))
	fmt.Fprintf(out, "  with nbd.FileBackend on DATA; our nbd.Server with walb.Device (pbs %d) over DATA and a %s log device file\n", devPBS, mib(c.ldevSize))
	fmt.Fprintln(out, "  DATA is zero-filled (and the log formatted) before every write run; every copy is compared with SRC afterwards;")
	cache := "in the page cache"
	if c.cold {
		cache = "dropped from the page cache (fadvise DONTNEED)"
	}
	fmt.Fprintf(out, "  SRC (writes) and DATA (reads) are %s; time = qemu-img's wall time (start, handshake, copy, flush, exit);\n", cache)
	fmt.Fprintln(out, "  MB/s = 1e6 bytes/s of the copied image; ratios to qemu-nbd of this run; cpu = user+sys of the server process")
	fmt.Fprintln(out, "  (ours: the whole child) and of qemu-img; others = CPU time the rest of the machine used meanwhile;")
	fmt.Fprintf(out, "  walb.Device's Close (apply, checkpoint) is timed apart and not counted; load average at start %s\n", loadAverage())
}

// emitNBD prints one line of the nbd suite; qemu is qemu-nbd's rate in the
// same direction.
func (b *bench) emitNBD(r result, st childStats, qemu float64) {
	b.results[r.label] = r
	var l strings.Builder
	fmt.Fprintf(&l, "%-34s %8.1f MB/s", r.label, r.best())
	if b.cfg.count > 1 {
		fmt.Fprintf(&l, " (%8.1f)", r.median())
	}
	fmt.Fprintf(&l, "  %4.2fx qemu-nbd", r.best()/qemu)
	best := r.bestSample()
	fmt.Fprintf(&l, "  %6.2f s; server cpu %6.2f s, peak RSS %4d MiB; qemu-img cpu %5.2f s%s",
		r.duration(best).Seconds(), st.dur("server_cpu_ns").Seconds(), (st["server_rss"]+1<<20-1)>>20, st.dur("client_cpu_ns").Seconds(), othersNote(st))
	var notes []string
	if s := requestSummary(st); s != "" {
		notes = append(notes, s)
	}
	if d, ok := st["close_ns"]; ok && strings.HasSuffix(r.label, "walb.Device") {
		notes = append(notes, fmt.Sprintf("Close %.2f s", float64(d)/1e9))
	}
	if len(notes) > 0 {
		fmt.Fprintf(&l, "  (%s)", strings.Join(notes, "; "))
	}
	fmt.Fprintln(b.out, l.String())
}

// randomFile writes size random bytes derived from seed to path and syncs.
func randomFile(path string, size int64, seed uint64) error {
	f, err := os.Create(path)
	if err != nil {
		return errors.Wrap(err, "bench")
	}
	defer f.Close()
	src := rand.NewChaCha8(seedBytes(seed))
	buf := make([]byte, 4<<20)
	for off := int64(0); off < size; off += int64(len(buf)) {
		n := min(int64(len(buf)), size-off)
		_, _ = src.Read(buf[:n]) // never fails
		if _, err := f.WriteAt(buf[:n], off); err != nil {
			return errors.Wrap(err, "bench: write random file")
		}
	}
	if err := unix.Fdatasync(int(f.Fd())); err != nil {
		return errors.Wrap(err, "bench: fdatasync")
	}
	return errors.Wrap(f.Close(), "bench")
}
