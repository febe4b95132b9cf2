package archive

import (
	"bufio"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/pkg/errors"
	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/imagestore"
	"github.com/walb-go/walb/meta"
)

// The crash tests run receives, restores, merges and applies in a child
// process (this test binary, re-executed with crashChildEnv set) and kill
// it with SIGKILL at a random moment, then restart the engine on the same
// directories and check every promise of system.md §7: no transient state
// survives, acknowledged diffs and finished applies are durable, every
// restorable gid restores bit-exact, and a restored image that exists is
// complete.
const (
	crashChildEnv = "ARCHIVE_CRASH_CHILD"
	crashVol      = "crash"
	crashSizeLB   = 512
	crashDiffs    = 14 // diffs 0->1 ... 13->14
	crashSent     = 6  // sent before the child starts
)

func TestMain(m *testing.M) {
	if spec := os.Getenv(crashChildEnv); spec != "" {
		if err := crashChild(spec); err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		fmt.Println("idle")
		time.Sleep(time.Hour) // wait for the parent's SIGKILL
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// crashConfig is the configuration shared by the child and the parent.
func crashConfig(root string, mode ApplyMode, maxOpen int) (Config, error) {
	d, err := imagestore.OpenDir(context.Background(), filepath.Join(root, "images"), &imagestore.DirOptions{Logger: quiet})
	if err != nil {
		return Config{}, err
	}
	return Config{BaseDir: filepath.Join(root, "base"), Images: d, Logger: quiet, Discard: DiscardZero, Apply: mode, MaxOpen: maxOpen}, nil
}

// crashChild runs random operations forever; spec is "root mode maxopen
// seed". Each finished operation is printed, so the parent knows what
// must have survived.
func crashChild(spec string) error {
	f := strings.Fields(spec)
	root := f[0]
	mode, _ := strconv.Atoi(f[1])
	maxOpen, _ := strconv.Atoi(f[2])
	seed, _ := strconv.ParseUint(f[3], 10, 64)
	cfg, err := crashConfig(root, ApplyMode(mode), maxOpen)
	if err != nil {
		return err
	}
	ctx := context.Background()
	e, err := Open(ctx, cfg)
	if err != nil {
		return err
	}
	if err := e.ResumeApplies(ctx); err != nil {
		return err
	}
	rng := rand.New(rand.NewPCG(seed, 1))
	uuid, err := os.ReadFile(filepath.Join(root, "uuid.bin"))
	if err != nil {
		return err
	}
	for step := 0; step < 40; step++ {
		switch rng.IntN(4) {
		case 0: // receive the next pending diff
			latest, _ := e.Latest(crashVol)
			g := latest.Gid
			data, err := os.ReadFile(filepath.Join(root, "pending", strconv.FormatUint(g, 10)))
			if os.IsNotExist(err) {
				continue
			}
			if err != nil {
				return err
			}
			h := WdiffHeader{Sender: SenderProxy, SizeLB: crashSizeLB, Diff: crashDiff(g)}
			copy(h.UUID[:], uuid)
			if err := e.ReceiveWdiff(ctx, crashVol, h, bytesReader(data)); err != nil {
				return errors.Wrapf(err, "receive %d", g)
			}
			fmt.Println("received", g+1)
		case 1: // restore a random restorable gid, then delete it
			pts, _ := e.Restorable(crashVol, true)
			if len(pts) == 0 {
				continue
			}
			g := pts[rng.IntN(len(pts))].Gid()
			if err := e.Restore(ctx, crashVol, g); err != nil {
				return errors.Wrapf(err, "restore %d", g)
			}
			fmt.Println("restored", g)
			if err := e.DelRestored(ctx, crashVol, g); err != nil {
				return err
			}
			fmt.Println("deleted", g)
		case 2: // merge from a random diff
			ds, _ := e.Diffs(crashVol, 0, 1<<62)
			if len(ds) == 0 {
				continue
			}
			g := ds[rng.IntN(len(ds))].SnapB.GidB
			err := e.Merge(ctx, crashVol, MergeRange{GidB: g, MaxBytes: 1 << 30})
			if errors.Is(err, ErrNothingToMerge) {
				continue
			}
			if err != nil {
				return errors.Wrapf(err, "merge from %d", g)
			}
			fmt.Println("merged", g)
		case 3: // apply to a random restorable gid
			pts, _ := e.Restorable(crashVol, true)
			if len(pts) < 2 {
				continue
			}
			g := pts[1+rng.IntN(len(pts)-1)].Gid()
			err := e.Apply(ctx, crashVol, g)
			if errors.Is(err, ErrNothingToApply) {
				continue
			}
			if err != nil {
				return errors.Wrapf(err, "apply %d", g)
			}
			fmt.Println("applied", g)
		}
	}
	return nil
}

// crashDiff is the diff g -> g+1 of the crash volume: explicit every
// fourth gid, mergeable otherwise.
func crashDiff(g uint64) meta.Diff { return cleanDiff(g, g+1, g%4 != 0) }

func TestCrashRecovery(t *testing.T) {
	trials := 20
	if os.Getenv("WALB_TEST_SOAK") == "1" {
		trials = 300
	}
	exe, err := os.Executable()
	require.NoError(t, err)
	for trial := range trials {
		t.Run(strconv.Itoa(trial), func(t *testing.T) {
			t.Parallel()
			rng := rand.New(rand.NewPCG(uint64(trial), 77))
			mode := []ApplyMode{ApplyInPlace, ApplyClone}[trial%2]
			maxOpen := []int{0, 2}[(trial/2)%2]
			tweak := func(c *Config) { c.Apply = mode; c.MaxOpen = maxOpen }
			env := newEnv(t, tweak)
			ctx := testCtx(t)
			m := newModel(uint64(trial)+100, crashSizeLB)
			m.discard = true
			require.NoError(t, env.e.InitVol(ctx, crashVol))
			env.fullSync(ctx, crashVol, m, meta.CleanSnap(0))
			m.record(0)
			require.NoError(t, os.WriteFile(filepath.Join(env.root, "uuid.bin"), m.uuid[:], 0o644))
			require.NoError(t, os.Mkdir(filepath.Join(env.root, "pending"), 0o755))
			for g := uint64(0); g < crashDiffs; g++ {
				data := m.nextWdiff(t, 30)
				m.record(g + 1)
				if g < crashSent {
					require.NoError(t, env.sendDiff(ctx, crashVol, m, crashDiff(g), data))
				} else {
					require.NoError(t, os.WriteFile(filepath.Join(env.root, "pending", strconv.FormatUint(g, 10)), data, 0o644))
				}
			}
			require.NoError(t, env.e.Close())

			// Run the child and kill it at a random moment.
			cmd := exec.Command(exe, "-test.run=^$")
			cmd.Env = append(os.Environ(), fmt.Sprintf("%s=%s %d %d %d", crashChildEnv, env.root, mode, maxOpen, rng.Uint64()))
			out, err := cmd.StdoutPipe()
			require.NoError(t, err)
			require.NoError(t, cmd.Start())
			t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
			// Kill after a random number of finished operations plus a
			// few milliseconds, so that the kill lands inside the next one
			// (or during startup and recovery when k is 0).
			k := rng.IntN(30)
			kill := func() {
				time.AfterFunc(time.Duration(rng.IntN(15000))*time.Microsecond, func() { _ = cmd.Process.Kill() })
			}
			if k == 0 {
				kill()
			}
			var lines []string
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				lines = append(lines, sc.Text())
				require.False(t, strings.HasPrefix(sc.Text(), "error"), "child: %v", lines)
				if len(lines) == k {
					kill()
				}
				if sc.Text() == "idle" {
					_ = cmd.Process.Kill()
				}
			}
			_ = cmd.Wait()
			var received, applied uint64
			for _, l := range lines {
				if g, ok := strings.CutPrefix(l, "received "); ok {
					received = max(received, mustU64(t, g))
				}
				if g, ok := strings.CutPrefix(l, "applied "); ok {
					applied = max(applied, mustU64(t, g))
				}
			}

			// Restart and check.
			env2 := openEnv(t, env.root, tweak)
			e := env2.e
			st, _ := e.State(crashVol)
			require.Equal(t, StateArchived, st)
			for _, dir := range []string{filepath.Join(env.root, "base", crashVol), filepath.Join(env.root, "images")} {
				ents, err := os.ReadDir(dir)
				require.NoError(t, err)
				for _, ent := range ents {
					require.False(t, meta.IsTempName(ent.Name()) || imagestore.IsTempName(ent.Name()), "temporary %s left after recovery", ent.Name())
				}
			}
			latest, ok := e.Latest(crashVol)
			require.True(t, ok)
			require.GreaterOrEqual(t, latest.Gid, max(received, crashSent), "acknowledged diffs lost (lines %v)", lines)
			// A restored image that survived is complete.
			gids, err := e.Restored(crashVol)
			require.NoError(t, err)
			for _, g := range gids {
				p, err := e.RestoredPath(crashVol, g)
				require.NoError(t, err)
				require.Equal(t, m.sha[g], shaOf(readAllFile(t, p)), "surviving restored image %d", g)
				require.NoError(t, e.DelRestored(ctx, crashVol, g))
			}
			// Finish an interrupted apply; the base is then exactly its gid.
			require.NoError(t, e.ResumeApplies(ctx))
			base, err := e.Base(crashVol)
			require.NoError(t, err)
			require.False(t, base.IsApplying)
			require.GreaterOrEqual(t, base.SnapB.GidB, applied, "a finished apply was lost (lines %v)", lines)
			require.Equal(t, m.sha[base.SnapB.GidB], env2.baseSHA(crashVol), "base %s", base)
			// Every restorable gid restores bit-exact.
			pts, err := e.Restorable(crashVol, true)
			require.NoError(t, err)
			require.NotEmpty(t, pts)
			require.Equal(t, base.SnapB.GidB, pts[0].Gid())
			require.Equal(t, latest.Gid, pts[len(pts)-1].Gid())
			for _, p := range pts {
				g := p.Gid()
				if g != latest.Gid && rng.IntN(3) != 0 && os.Getenv("WALB_TEST_SOAK") != "1" {
					continue // a third of the middle gids keeps the run short
				}
				require.Equal(t, m.sha[g], env2.restoredSHA(ctx, crashVol, g), "gid %d after crash (lines %v)", g, lines)
			}
			// Diffs the base has passed are gone.
			ds, err := e.Diffs(crashVol, 0, 1<<62)
			require.NoError(t, err)
			for _, d := range ds {
				require.Greater(t, d.SnapE.GidB, base.SnapB.GidB, "diff %s left behind the base", d)
			}
			require.True(t, slices.IsSortedFunc(pts, func(a, b meta.RestorePoint) int { return int(a.Gid()) - int(b.Gid()) }))
		})
	}
}

func mustU64(t *testing.T, s string) uint64 {
	v, err := strconv.ParseUint(s, 10, 64)
	require.NoError(t, err)
	return v
}
