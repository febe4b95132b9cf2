package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/wdiff"
	"github.com/walb-go/walb/wlog"
)

// TestMain lets the test binary serve as the harness's child process, as
// the bench binary does.
func TestMain(m *testing.M) {
	if len(os.Args) > 1 && os.Args[1] == childFlag {
		os.Exit(childMain(os.Args[2:]))
	}
	os.Exit(m.Run())
}

func TestParseFlags(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantErr bool
		check   func(t *testing.T, c config)
	}{
		{name: "defaults", check: func(t *testing.T, c config) {
			require.EqualValues(t, 768<<20, c.size)
			require.EqualValues(t, 4<<30, c.device)
			require.Len(t, c.suites, len(allSuites))
			require.Equal(t, 1, c.count)
			require.GreaterOrEqual(t, c.workers, 1)
			require.EqualValues(t, 2<<30, c.devSize)
			require.EqualValues(t, 1<<30, c.ldevSize)
			require.EqualValues(t, 1<<30, c.nbdSize)
			require.Len(t, c.sweep, len(strings.Fields(defaultSweep)))
		}},
		{name: "quick", args: []string{"-quick"}, check: func(t *testing.T, c config) {
			require.EqualValues(t, 64<<20, c.size)
			require.EqualValues(t, 256<<20, c.devSize)
			require.EqualValues(t, 256<<20, c.nbdSize)
		}},
		{name: "device and nbd", args: []string{"-suites", "device,nbd", "-devsize", "64M", "-ldev", "16M", "-nbdsize", "32M",
			"-devsweep", "flushmb=16,pendingmb=128 gcdelay=1ms flushmb=16,pendingmb=128"}, check: func(t *testing.T, c config) {
			require.Equal(t, map[string]bool{"device": true, "nbd": true}, c.suites)
			require.EqualValues(t, 64<<20, c.devSize)
			require.EqualValues(t, 16<<20, c.ldevSize)
			require.EqualValues(t, 32<<20, c.nbdSize)
			require.Equal(t, []devOptions{{flushMB: 16, pendingMB: 128}, {gcDelay: time.Millisecond}}, c.sweep)
			require.EqualValues(t, 4<<30+16<<20, c.diskNeed(), "the 4 GiB data device and the log")
		}},
		{name: "no sweep", args: []string{"-devsweep", "none"}, check: func(t *testing.T, c config) {
			require.Empty(t, c.sweep)
		}},
		{name: "zero device option", args: []string{"-devsweep", "flushmb=0"}, wantErr: true},
		{name: "unknown device option", args: []string{"-devsweep", "flushmb=4,depth=3"}, wantErr: true},
		{name: "devsize not in MiB", args: []string{"-devsize", "1000K"}, wantErr: true},
		{name: "zero nbdsize", args: []string{"-nbdsize", "0"}, wantErr: true},
		{name: "size and suites", args: []string{"-size", "2G", "-suites", "convert,apply", "-count", "3"}, check: func(t *testing.T, c config) {
			require.EqualValues(t, 2<<30, c.size)
			require.Equal(t, map[string]bool{"convert": true, "apply": true}, c.suites)
			require.Equal(t, 3, c.count)
		}},
		{name: "unknown suite", args: []string{"-suites", "convert,fsck"}, wantErr: true},
		{name: "size not in MiB", args: []string{"-size", "1000K"}, wantErr: true},
		{name: "zero device", args: []string{"-device", "0"}, wantErr: true},
		{name: "no workers", args: []string{"-workers", "0"}, wantErr: true},
		{name: "stray argument", args: []string{"convert"}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := parseFlags(tt.args, io.Discard)
			if tt.wantErr {
				require.Error(t, err)
				return
			}
			require.NoError(t, err)
			tt.check(t, c)
		})
	}
}

func TestResultRates(t *testing.T) {
	ms := func(n ...int) []sample {
		var s []sample
		for _, v := range n {
			s = append(s, sample{wall: time.Duration(v) * time.Millisecond, inner: time.Duration(v) * time.Microsecond, maxRSS: int64(v) << 20})
		}
		return s
	}
	tests := []struct {
		name         string
		r            result
		best, median float64
		rss          int64
	}{
		{name: "one run", r: result{bytes: 1e6, samples: ms(500)}, best: 2, median: 2, rss: 500 << 20},
		{name: "odd count", r: result{bytes: 1e6, samples: ms(1000, 250, 500)}, best: 4, median: 2, rss: 1000 << 20},
		{name: "even count", r: result{bytes: 1e6, samples: ms(1000, 250, 500, 2000)}, best: 4, median: 4.0 / 3, rss: 2000 << 20},
		{name: "inner clock", r: result{bytes: 1e6, inner: true, samples: ms(500, 1000)}, best: 2000, median: 4000.0 / 3, rss: 1000 << 20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			require.InDelta(t, tt.best, tt.r.best(), 1e-9)
			require.InDelta(t, tt.median, tt.r.median(), 1e-9)
			require.Equal(t, tt.rss, tt.r.peakRSS())
		})
	}
}

// TestGenLog checks that a workload log is valid, holds exactly the asked
// data inside the device, and depends on the seed alone.
func TestGenLog(t *testing.T) {
	const device, size = 16 << 20, 2 << 20
	for _, w := range workloads {
		t.Run(w.name, func(t *testing.T) {
			dir := t.TempDir()
			a, err := genLog(filepath.Join(dir, "a.wlog"), w, device, size, 7, 100)
			require.NoError(t, err)
			b, err := genLog(filepath.Join(dir, "b.wlog"), w, device, size, 7, 100)
			require.NoError(t, err)
			c, err := genLog(filepath.Join(dir, "c.wlog"), w, device, size, 8, 100)
			require.NoError(t, err)
			require.Equal(t, fileHash(t, a.path), fileHash(t, b.path))
			require.NotEqual(t, fileHash(t, a.path), fileHash(t, c.path))

			f, err := os.Open(a.path)
			require.NoError(t, err)
			defer f.Close()
			r, err := wlog.NewReader(bufio.NewReader(f))
			require.NoError(t, err)
			var data, ios, discards int
			for {
				h, err := r.NextPack()
				if err == io.EOF {
					break
				}
				require.NoError(t, err)
				require.LessOrEqual(t, h.DataSize(), packDataBytes)
				for {
					rec, _, err := r.NextRecord()
					if err == io.EOF {
						break
					}
					require.NoError(t, err)
					require.LessOrEqual(t, (rec.Offset+uint64(rec.IOSize))*wlog.LogicalBlockSize, uint64(device))
					if rec.IsDiscard() {
						discards++
						continue
					}
					data += int(rec.IOSize) * wlog.LogicalBlockSize
					ios++
				}
			}
			require.Equal(t, size, data)
			require.Equal(t, a.ios, ios)
			require.Equal(t, a.discards, discards)
			require.EqualValues(t, 100, a.beginLsid)
			require.Equal(t, a.endLsid, r.EndLsid())
		})
	}
}

// TestHarness runs the wdiff suites at a tiny size and checks the report's
// lines and that the files the tools made are right: every converted wdiff
// and the image the apply suite wrote equal the log replayed with
// wlog.Redo, and the merged wdiff equals the four merge logs replayed in
// order.
func TestHarness(t *testing.T) {
	const device = 64 << 20
	// Under -race each child would otherwise linger a second at exit.
	t.Setenv("GORACE", strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	cfg := config{size: 8 << 20, device: device, workers: 2, count: 1, dir: t.TempDir(), keep: true,
		suites: map[string]bool{}}
	for _, s := range []string{"baselines", "convert", "merge", "apply"} {
		cfg.suites[s] = true
	}
	var out bytes.Buffer
	dir, err := run(context.Background(), cfg, &out, io.Discard)
	require.NoError(t, err)
	report := out.String()
	t.Log("\n" + report)

	rate := ` +\d+\.\d MB/s `
	op := rate + ` +\(\d+\.\d\dx raw write\) +peak RSS +\d+ MiB +\d+\.\d\d s, cpu +\d+\.\d\d s`
	lines := []string{
		`workload random4k: +8 MiB of 4 KiB writes at random 4 KiB-aligned offsets over a 64 MiB device`,
		`workload seqmix: +8 MiB of mostly sequential 4-64 KiB writes`,
		`baseline memmove` + rate,
		`baseline raw file write` + rate,
		`baseline raw file read \(cold\)` + rate + `.*page cache dropped`,
		`baseline raw file read \(warm\)` + rate,
		`targets: convert snappy >= 340 MB/s \(C\+\+ 226\): convert random4k snappy .* convert seqmix snappy `,
		` +merge 4 >= 1\.5 GB/s snappy .*: merge random4k 4 wdiffs snappy .* merge seqmix 4 wdiffs snappy `,
		` +apply random 4K >= 320 MB/s \(C\+\+ 311\): apply random4k sorted [\d.]+ MB/s (ok|MISS)`,
	}
	for _, w := range workloads {
		for _, c := range convertCodecs {
			lines = append(lines, `convert `+w.name+` `+c+op+` +wlog [\d.]+ MB -> wdiff [\d.]+ MB`)
		}
		lines = append(lines, `merge `+w.name+` 4 wdiffs snappy`+op, `apply `+w.name+` sorted`+op)
	}
	for _, l := range lines {
		require.Regexp(t, regexp.MustCompile(`(?m)^`+l), report)
	}

	for _, w := range workloads {
		want := redoImage(t, device, filepath.Join(dir, w.name+".wlog"))
		require.NotEqual(t, zeroImage(t, device), want, "the log must change the image")
		for _, c := range convertCodecs {
			got := applyImage(t, device, filepath.Join(dir, w.name+"."+c+".wdiff"))
			require.Equal(t, want, got, "%s converted with %s", w.name, c)
		}
		require.Equal(t, want, fileHash(t, filepath.Join(dir, w.name+".img")), "%s image of the apply suite", w.name)

		none, snappy := sizeOf(t, dir, w.name+".none.wdiff"), sizeOf(t, dir, w.name+".snappy.wdiff")
		require.InDelta(t, 0.55, float64(snappy)/float64(none), 0.2, "%s data should be about half compressible", w.name)

		var logs []string
		for i := range 4 {
			logs = append(logs, filepath.Join(dir, fmt.Sprintf("%s.merge%d.wlog", w.name, i)))
		}
		require.Equal(t, redoImage(t, device, logs...), applyImage(t, device, filepath.Join(dir, w.name+".merged.wdiff")),
			"%s merged wdiff", w.name)
	}
}

// TestHarnessDeviceNBD runs the device and nbd suites at a tiny size. The
// suites themselves check what they wrote: the sequential data on the data
// device after every device run, and every copy through an NBD export
// against its source. Without qemu-img the nbd suite is left out, unless
// the CI environment variable is set, where it must run.
func TestHarnessDeviceNBD(t *testing.T) {
	t.Setenv("GORACE", strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	withNBD := true
	if err := needTools("qemu-img", "qemu-nbd"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("CI is set and the nbd suite cannot run: %v", err)
		}
		t.Logf("nbd suite left out: %v", err)
		withNBD = false
	}
	sweep, err := parseSweep("flushmb=1 gcdelay=50us")
	require.NoError(t, err)
	cfg := config{size: 8 << 20, device: 64 << 20, devSize: 16 << 20, ldevSize: 8 << 20, nbdSize: 16 << 20, sweep: sweep,
		workers: 2, count: 1, dir: t.TempDir(), suites: map[string]bool{"device": true, "nbd": withNBD}}
	var out bytes.Buffer
	_, err = run(context.Background(), cfg, &out, io.Discard)
	require.NoError(t, err)
	report := out.String()
	t.Log("\n" + report)

	rate := ` +\d+\.\d MB/s`
	iops := rate + ` +\d+ IOPS`
	ratios := ` +\d+\.\d\dx durable \d+\.\d\dx page cache +peak RSS +\d+ MiB +\d+\.\d\d s, cpu +\d+\.\d\d s, others +\d+\.\d\d s`
	devNote := ` +\(writes [\d.]+ s \+ Flush [\d.]+ s; Close [\d.]+ s, [\d.]+ MB/s with it; log [\d.]+ MB\)`
	lines := []string{
		`device suite: walb.Device \(pbs 4096\) over a 64 MiB data device file and a 8 MiB log device file`,
		`raw seq 1M durable` + rate + ` .*\(writes [\d.]+ s \+ fdatasync [\d.]+ s\)`,
		`raw seq 1M page cache` + rate + ` .*\(no sync\)`,
		`device seq 1M` + rate + ratios + devNote,
		`raw rand 4K x32 durable` + iops,
		`raw rand 4K x32 page cache` + iops,
		`device rand 4K x32` + iops + ratios + devNote,
		`device seq 1M flushmb=1` + rate + ratios,
		`device seq 1M gcdelay=50µs` + rate + ratios,
		`device rand 4K x32 flushmb=1` + iops + ratios,
		`device rand 4K x32 gcdelay=50µs` + iops + ratios,
		`device seq 1M default again` + rate + ratios + devNote,
		`device rand 4K x32 default again` + iops + ratios + devNote,
		`device sweep seq 1M: default` + rate + ` \(best of` + rate + ` and` + rate + ` after the sweep\); (best|no option)`,
		`device sweep rand 4K x32: default` + rate + ` = \d+ IOPS \(best of .* after the sweep\); (best|no option)`,
		`device targets: seq 1M >= 45% of raw durable MB/s: default \d+\.\d\dx (ok|MISS)`,
		` +rand 4K x32 >= 40% of raw durable IOPS: default \d+\.\d\dx (ok|MISS)`,
	}
	if withNBD {
		nbdRate := rate + ` +\d+\.\d\dx qemu-nbd +\d+\.\d\d s; server cpu +[\d.]+ s, peak RSS +\d+ MiB; qemu-img cpu +[\d.]+ s, others +[\d.]+ s`
		lines = append(lines,
			`nbd suite: qemu-img version \S+ .*copies 16 MiB of random data into and out of a 16 MiB export`,
			`nbd write qemu-nbd`+nbdRate+`$`,
			// qemu-img -t writeback must end the copy with a flush.
			`nbd write nbd.Server FileBackend`+nbdRate+` +\(requests: \d+ writes of [\d.]+ MiB, 1 flushes; up to \d+ in flight\)`,
			`nbd write nbd.Server walb.Device`+nbdRate+` +\(requests: \d+ writes of [\d.]+ MiB, 1 flushes; up to \d+ in flight; Close [\d.]+ s\)`,
			`nbd read qemu-nbd`+nbdRate+`$`,
			`nbd read nbd.Server FileBackend`+nbdRate+` +\(requests: \d+ reads of [\d.]+ MiB; up to \d+ in flight\)`,
			`nbd read nbd.Server walb.Device`+nbdRate+` +\(requests: \d+ reads of [\d.]+ MiB; up to \d+ in flight; Close [\d.]+ s\)`,
			`nbd targets: walb.Device export >= 50% of qemu-nbd: write \d+\.\d\dx (ok|MISS), read \d+\.\d\dx (ok|MISS)`,
		)
	}
	for _, l := range lines {
		require.Regexp(t, regexp.MustCompile(`(?m)^`+l), report)
	}
}

func fileHash(t *testing.T, path string) [32]byte {
	t.Helper()
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	h := sha256.New()
	_, err = io.Copy(h, f)
	require.NoError(t, err)
	return [32]byte(h.Sum(nil))
}

func sizeOf(t *testing.T, dir, name string) int64 {
	t.Helper()
	n, err := fileSize(filepath.Join(dir, name))
	require.NoError(t, err)
	return n
}

func newImage(t *testing.T, size int64) *os.File {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "img")
	require.NoError(t, err)
	t.Cleanup(func() { f.Close() })
	require.NoError(t, f.Truncate(size))
	return f
}

func zeroImage(t *testing.T, size int64) [32]byte {
	return fileHash(t, newImage(t, size).Name())
}

// redoImage replays wlogs in order, discards as zeros, onto a zero image.
func redoImage(t *testing.T, size int64, wlogs ...string) [32]byte {
	t.Helper()
	img := newImage(t, size)
	for _, p := range wlogs {
		f, err := os.Open(p)
		require.NoError(t, err)
		r, err := wlog.NewReader(bufio.NewReader(f))
		require.NoError(t, err)
		_, err = wlog.Redo(context.Background(), r, img, wlog.RedoOptions{ZeroDiscard: true, Size: size})
		require.NoError(t, err)
		require.NoError(t, f.Close())
	}
	return fileHash(t, img.Name())
}

// applyImage applies a wdiff, discards as zeros, onto a zero image.
func applyImage(t *testing.T, size int64, path string) [32]byte {
	t.Helper()
	img := newImage(t, size)
	f, err := wdiff.Open(path)
	require.NoError(t, err)
	defer f.Close()
	_, err = wdiff.Apply(context.Background(), f, img, wdiff.ApplyOptions{ZeroDiscard: true, Size: size})
	require.NoError(t, err)
	return fileHash(t, img.Name())
}

// TestHarnessHashBkp runs the hashbkp suite on a tiny device, two rounds:
// the group's hash backups and the replication must succeed (the controller
// waits for the gids to be restorable), and the storage must send about the
// bytes it changed. As root the archives' images sit on a loop-mounted XFS,
// which the suite must leave unmounted and detached.
func TestHarnessHashBkp(t *testing.T) {
	const size = 32 << 20
	cfg := config{hashSize: size, count: 2, dir: t.TempDir(), suites: map[string]bool{"hashbkp": true}}
	var out bytes.Buffer
	_, err := run(context.Background(), cfg, &out, io.Discard)
	require.NoError(t, err)
	report := out.String()
	t.Log("\n" + report)

	rate := ` +\d+\.\d MB/s`
	lines := []string{
		`hashbkp suite: embedded group \(1 storage, 1 proxy, 2 archives on 127\.0\.0\.1\), 32 MiB device, chunk 256 KiB`,
		`baseline raw device read` + rate,
		`full-bkp` + rate + ` +\(\d+\.\d\dx raw read; 32\.0 MiB sent to the archive\)`,
		`  round 1: raw` + rate + `, device \+ image` + rate + `, hash-bkp` + rate + ` = \d+\.\d\dx raw, \d+\.\d\dx device \+ image`,
		`  round 2: raw` + rate,
		`hash-bkp,  0\.8% chunks changed  \d+\.\d\dx raw device read \(median of 2 rounds; best \d+\.\d\dx\), goal >= 0\.80`,
		`replicate a0 -> a1 \(full\)` + rate + ` +\(\d+\.\d\dx full-bkp; until a1 has the latest gid\)`,
	}
	for _, l := range lines {
		require.Regexp(t, regexp.MustCompile(`(?m)^`+l), report)
	}
	m := regexp.MustCompile(`hash-bkp bytes +sent .* changed = (\d+\.\d+)x \(goal <= 1\.05\)`).FindStringSubmatch(report)
	require.NotNil(t, m, "bytes line")
	var ratio float64
	_, err = fmt.Sscan(m[1], &ratio)
	require.NoError(t, err)
	require.GreaterOrEqual(t, ratio, 1.0, "every changed byte is sent")
	require.LessOrEqual(t, ratio, 1.05, "only the changed chunks are sent")

	if os.Geteuid() == 0 {
		mounts, err := os.ReadFile("/proc/self/mounts")
		require.NoError(t, err)
		require.NotContains(t, string(mounts), cfg.dir, "the images' file system is unmounted")
	}
}
