package wdiff

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/internal/fixtures"
)

type mergeCmd struct {
	inputs []string
	opt    MergeOptions
}

func parseMergeCmd(t *testing.T, cmd string) mergeCmd {
	var mc mergeCmd
	mc.opt.Compression = DefaultCompression
	args := strings.Fields(cmd)[1:]
	for i := 0; i < len(args); i++ {
		switch args[i] {
		case "-cmpr":
			i++
			c, err := ParseCompression(args[i])
			require.NoError(t, err)
			mc.opt.Compression = c
		case "-x":
			i++
			require.Equal(t, "64K", args[i])
			mc.opt.MaxIOBlocks = 128
		case "-o":
			i++
		case "-i":
			for i+1 < len(args) && !strings.HasPrefix(args[i+1], "-") {
				i++
				mc.inputs = append(mc.inputs, args[i])
			}
		default:
			t.Fatalf("unknown merge arg %q", args[i])
		}
	}
	return mc
}

func mergeFiles(t *testing.T, paths []string, opt MergeOptions) []byte {
	var readers []Reader
	for _, p := range paths {
		f, err := Open(p)
		require.NoError(t, err)
		defer f.Close()
		readers = append(readers, f)
	}
	var out bytes.Buffer
	_, err := Merge(context.Background(), readers, &out, opt)
	require.NoError(t, err)
	return out.Bytes()
}

// Acceptance 2: every wdiff-merge output of the MANIFEST is reproduced: same
// record structure, and the same image once applied (zero and rand bases).
func TestMergeMatchesCpp(t *testing.T) {
	cmds := fixtures.Commands(t, "wdiff-merge")
	require.NotEmpty(t, cmds)
	for outName, cmd := range cmds {
		t.Run(outName, func(t *testing.T) {
			mc := parseMergeCmd(t, cmd)
			var paths [][]byte
			var inPaths []string
			for _, in := range mc.inputs {
				p := fixtures.Path(t, in)
				inPaths = append(inPaths, p)
				b, err := os.ReadFile(p)
				require.NoError(t, err)
				paths = append(paths, b)
			}
			for _, workers := range []int{1, 3} {
				opt := mc.opt
				opt.Compression.Workers = workers
				got := mergeFiles(t, inPaths, opt)
				require.Equal(t, showStructure(t, fixtures.Path(t, outName+".show.txt")), readStructure(t, got))
				cpp, err := os.ReadFile(fixtures.Path(t, outName))
				require.NoError(t, err)
				size := 8 << 20
				if strings.HasPrefix(outName, "wdiff/") {
					size = deviceSize(t, outName)
				}
				for _, base := range []string{"zero", "rand"} {
					img := fixtures.BaseImage(t, base, size)
					require.Equal(t, applySHA(t, img, cpp), applySHA(t, img, got), base)
					// Merging equals applying the inputs one by one.
					require.Equal(t, applySHA(t, img, paths...), applySHA(t, img, got), base)
				}
				if opt.Compression.Codec == CodecNone {
					// Deterministic codec: the bytes of every record match too.
					require.Equal(t, dataOf(t, cpp), dataOf(t, got))
				}
			}
		})
	}
}

// deviceSize returns the device size the MANIFEST's apply rows use for the
// fixture family of name (e.g. wdiff/p512_tiny.cmpr-lz4.wdiff).
func deviceSize(t *testing.T, name string) int {
	fam := strings.SplitN(filepath.Base(name), ".", 2)[0]
	for _, r := range fixtures.ApplyRows(t) {
		if strings.HasPrefix(r.Label, fam+".") {
			return r.Size
		}
	}
	t.Fatalf("no size for %s", name)
	return 0
}

func dataOf(t *testing.T, file []byte) [][]byte {
	r, err := NewReader(bytes.NewReader(file), int64(len(file)))
	require.NoError(t, err)
	var out [][]byte
	for {
		x, err := r.Next()
		if err != nil {
			return out
		}
		out = append(out, append([]byte(nil), x.Data...))
	}
}
