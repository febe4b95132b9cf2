package cli

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/internal/fixtures"
)

// runLine runs one walb-tools command line as written in the MANIFEST, with
// fixture-relative paths resolved and target.img mapped to target.
func runLine(t *testing.T, line, target string) string {
	t.Helper()
	dir := fixtures.Dir(t)
	var out bytes.Buffer
	for _, cmd := range strings.Split(line, "&&") {
		args := strings.Fields(cmd)
		tool, ok := Tools[args[0]]
		require.True(t, ok, "no tool %s", args[0])
		for i, a := range args[1:] {
			switch {
			case a == "target.img":
				args[i+1] = target
			case strings.Contains(a, "/"):
				args[i+1] = filepath.Join(dir, a)
			}
		}
		var stderr bytes.Buffer
		code := Run(context.Background(), args[0], tool, args[1:], &out, &stderr)
		require.Equal(t, 0, code, "%s: %s", cmd, stderr.String())
	}
	return out.String()
}

func sha256File(t *testing.T, path string) string {
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	h := sha256.New()
	_, err = io.Copy(h, f)
	require.NoError(t, err)
	return hex.EncodeToString(h.Sum(nil))
}

// Acceptance: every MANIFEST apply row run with wlog-redo or wdiff-redo gives
// the listed sha256 when our tool runs the same command on the same base.
func TestManifestApplyRows(t *testing.T) {
	n := 0
	for _, row := range fixtures.ApplyRows(t) {
		tool := strings.Fields(row.Command)[0]
		if tool != "wlog-redo" && tool != "wdiff-redo" {
			continue
		}
		n++
		t.Run(row.Base+"/"+row.Label, func(t *testing.T) {
			if _, ok := Tools[tool]; !ok {
				t.Skipf("%s not implemented yet", tool)
			}
			target := filepath.Join(t.TempDir(), "target.img")
			require.NoError(t, os.WriteFile(target, fixtures.BaseImage(t, row.Base, row.Size), 0o644))
			runLine(t, row.Command, target)
			require.Equal(t, row.SHA256, sha256File(t, target))
		})
	}
	require.Greater(t, n, 100)
}

func TestWlogShowMatchesCpp(t *testing.T) {
	in := fixtures.Path(t, "wlog", "p4096_default.wlog")
	want, err := os.ReadFile(in + ".show.txt")
	require.NoError(t, err)
	var out, stderr bytes.Buffer
	require.Equal(t, 0, Run(context.Background(), "wlog-show", WlogShow, []string{"-validate", in}, &out, &stderr), stderr.String())
	require.Equal(t, string(want), out.String())
}

func TestOptionParsing(t *testing.T) {
	o := NewOptions("t", "test")
	var ins []string
	var outp, pos string
	var z bool
	var x uint64
	o.Strings(&ins, "i", "IN", "inputs")
	o.String(&outp, "o", "OUT", "", "output")
	o.Bool(&z, "z", "zero")
	o.Size(&x, "x", "SIZE", 1<<20, "max")
	o.Param(&pos, "TARGET", "target", false)
	require.NoError(t, o.Parse([]string{"-i", "a", "b", "-z", "tgt", "-x", "16K", "-o", "-"}))
	require.Equal(t, []string{"a", "b"}, ins)
	require.Equal(t, "-", outp)
	require.True(t, z)
	require.EqualValues(t, 16384, x)
	require.Equal(t, "tgt", pos)

	for _, bad := range [][]string{{"-q", "t"}, {"-x", "12Q", "t"}, {"-o"}, {}, {"a", "b"}, {"-i", "-z", "t"}} {
		o := NewOptions("t", "test")
		var ins []string
		var s, p string
		var z bool
		var x uint64
		o.Strings(&ins, "i", "IN", "inputs")
		o.String(&s, "o", "OUT", "", "output")
		o.Bool(&z, "z", "zero")
		o.Size(&x, "x", "SIZE", 0, "max")
		o.Param(&p, "TARGET", "target", false)
		require.ErrorIs(t, o.Parse(bad), ErrUsage, "%q", bad)
	}
}
