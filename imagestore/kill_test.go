package imagestore

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// The kill test runs CloneForApply in a child process (this test binary,
// re-executed with killChildEnv set to the store directory) and kills it
// with SIGKILL at chosen points.
const (
	killChildEnv   = "IMAGESTORE_KILL_CHILD_DIR"
	killImageSize  = 8 << 20
	killBlock      = 64 << 10
	killBlockCount = killImageSize / killBlock
)

func TestMain(m *testing.M) {
	if dir := os.Getenv(killChildEnv); dir != "" {
		if err := killChild(dir); err != nil {
			fmt.Println("error:", err)
			os.Exit(1)
		}
		time.Sleep(time.Hour) // wait for the parent's SIGKILL
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// killChild rewrites the base with pattern 2 block by block, reporting
// each block, then commits.
func killChild(dir string) error {
	ctx := context.Background()
	d, err := OpenDir(ctx, dir, &DirOptions{Logger: quiet})
	if err != nil {
		return err
	}
	buf := make([]byte, killBlock)
	err = CloneForApply(ctx, d, "wb_v", func(ctx context.Context, img Image) error {
		fmt.Println("cloned")
		for i := range killBlockCount {
			off := int64(i) * killBlock
			fillPattern(buf, 2, off)
			if _, err := img.WriteAt(buf, off); err != nil {
				return err
			}
			fmt.Println("block", i)
			time.Sleep(time.Millisecond)
		}
		fmt.Println("applied")
		return nil
	})
	if err != nil {
		return err
	}
	fmt.Println("committed")
	return nil
}

// TestKillDuringApply kills a process in the middle of CloneForApply and
// checks that the base is then wholly old or wholly new: old if the apply
// had not finished, new once the commit returned.
func TestKillDuringApply(t *testing.T) {
	ctx := context.Background()
	exe, err := os.Executable()
	require.NoError(t, err)
	// Kill after the child printed this line (the last one waits until the
	// child has committed and is sleeping).
	for _, at := range []string{"cloned", "block 3", "block 60", "applied", "committed"} {
		t.Run(at, func(t *testing.T) {
			dir := t.TempDir()
			d := openTestDir(t, dir, DirOptions{})
			base, err := d.Create(ctx, "wb_v", killImageSize)
			require.NoError(t, err)
			writePattern(t, base, 1, 0, killImageSize)
			require.NoError(t, base.Sync())
			require.NoError(t, base.Close())

			cmd := exec.Command(exe, "-test.run=^$")
			cmd.Env = append(os.Environ(), killChildEnv+"="+dir)
			out, err := cmd.StdoutPipe()
			require.NoError(t, err)
			require.NoError(t, cmd.Start())
			t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })

			var lines []string
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				lines = append(lines, sc.Text())
				require.False(t, strings.HasPrefix(sc.Text(), "error"), sc.Text())
				if sc.Text() == at {
					require.NoError(t, cmd.Process.Kill())
				}
			}
			_ = cmd.Wait()
			require.Contains(t, lines, at, "child output: %v", lines)

			d = openTestDir(t, dir, DirOptions{})
			_, err = d.CleanTemps(ctx)
			require.NoError(t, err)
			require.Equal(t, []string{"wb_v"}, dirEntries(t, dir))
			img, err := d.Open(ctx, "wb_v", ReadOnly)
			require.NoError(t, err)
			defer img.Close()
			applied := lines[len(lines)-1] == "committed"
			finishedApply := applied || lines[len(lines)-1] == "applied"
			switch {
			case applied:
				checkPattern(t, img, 2, 0, killImageSize)
			case !finishedApply:
				checkPattern(t, img, 1, 0, killImageSize)
			default:
				// Killed during the commit: either image, but whole.
				first := make([]byte, 16)
				_, err := img.ReadAt(first, 0)
				require.NoError(t, err)
				seed := uint64(first[0])
				require.Contains(t, []uint64{1, 2}, seed)
				checkPattern(t, img, seed, 0, killImageSize)
			}
		})
	}
}
