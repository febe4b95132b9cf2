package cli

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/internal/fixtures"
	"github.com/walb-go/walb/wlog"
)

type memWriterAt []byte

func (m memWriterAt) WriteAt(p []byte, off int64) (int, error) { return copy(m[off:], p), nil }

// bhashImage materializes the image a MANIFEST bhash command reads. The
// MANIFEST's bhash section gives the sha256 of the generated ones.
func bhashImage(t *testing.T, arg string) string {
	t.Helper()
	if !strings.HasPrefix(arg, "$IMG/") {
		return fixtures.Path(t, arg)
	}
	var img []byte
	var sum string
	switch name := strings.TrimPrefix(arg, "$IMG/"); name {
	case "base-rand-16M.img":
		img, sum = fixtures.BaseImage(t, "rand", 16<<20), "4f5cd2c667fd1a58583d6ecef7dbda21a175d266cc2e787c9d4d1b904dee54ce"
	case "base-zero-16M.img":
		img, sum = fixtures.BaseImage(t, "zero", 16<<20), "080acf35a507ac9849cfcba47dc2ad83e01b75663a516279c8b9d243b719643e"
	case "p512_default.applied-zero.img":
		img, sum = fixtures.BaseImage(t, "zero", 16<<20), "ae531e1917a6d0790c91a07e90076c337b2863d8546333cdf3e76b898b88b8bd"
		f, err := os.Open(fixtures.Path(t, "wlog", "p512_default.wlog"))
		require.NoError(t, err)
		defer f.Close()
		r, err := wlog.NewReader(f)
		require.NoError(t, err)
		_, err = wlog.Redo(context.Background(), r, memWriterAt(img), wlog.RedoOptions{ZeroDiscard: true})
		require.NoError(t, err)
	default:
		t.Fatalf("unknown image %s", name)
	}
	got := sha256.Sum256(img)
	require.Equal(t, sum, hex.EncodeToString(got[:]), arg)
	p := filepath.Join(t.TempDir(), filepath.Base(arg))
	require.NoError(t, os.WriteFile(p, img, 0o644))
	return p
}

// Golden: every bhash command of the MANIFEST file table prints exactly the
// stored output.
func TestBHashMatchesCpp(t *testing.T) {
	cmds := fixtures.Commands(t, "bhash")
	require.GreaterOrEqual(t, len(cmds), 13)
	for file, cmd := range cmds {
		t.Run(filepath.Base(file), func(t *testing.T) {
			args := strings.Fields(cmd)
			i := 1
			for ; i < len(args) && args[i] != ">"; i++ {
			}
			args = args[1:i]
			args[len(args)-1] = bhashImage(t, args[len(args)-1])
			want, err := os.ReadFile(fixtures.Path(t, file))
			require.NoError(t, err)
			var out, stderr bytes.Buffer
			require.Equal(t, 0, Run(context.Background(), "bhash", Tools["bhash"], args, &out, &stderr), stderr.String())
			require.Equal(t, string(want), out.String())
		})
	}
}

func TestBHashUsageErrors(t *testing.T) {
	img := fixtures.Path(t, "bhash", "small.img")
	for _, args := range [][]string{
		{"-ios", "1000", img},               // not a multiple of 512
		{"-ios", "4K", "-chunk", "6K", img}, // chunk not a multiple of ios
		{"-ios", "4K", "-off", "512", img},
		{"-ios", "0", img},
		{"-off", "1G", img}, // beyond the end
		{},
	} {
		var out, stderr bytes.Buffer
		require.Equal(t, 2, Run(context.Background(), "bhash", BHash, args, &out, &stderr), "%q: %s", args, stderr.String())
	}
	var out, stderr bytes.Buffer
	require.Equal(t, 1, Run(context.Background(), "bhash", BHash, []string{"-size", "1M", img}, &out, &stderr), "reading past the end fails")
	require.Contains(t, stderr.String(), "shorter")
	require.Equal(t, 1, Run(context.Background(), "bhash", BHash, []string{filepath.Join(t.TempDir(), "none")}, &out, &stderr))
}
