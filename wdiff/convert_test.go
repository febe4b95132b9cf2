package wdiff

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/internal/fixtures"
)

// structRec is the structural part of a record that must match walb-tools.
type structRec struct {
	Addr   uint64
	Blocks uint32
	Flags  string
}

// showStructure reads the records of a wdiff-show text (sorted or indexed).
func showStructure(t *testing.T, path string) []structRec {
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	var out []structRec
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fs := strings.Split(sc.Text(), "\t")
		if fs[0] != "wdiff_sorted_rec:" && fs[0] != "wdiff_indexed_rec:" {
			continue
		}
		var r structRec
		_, err := fmt.Sscan(fs[1], &r.Addr)
		require.NoError(t, err)
		_, err = fmt.Sscan(fs[2], &r.Blocks)
		require.NoError(t, err)
		r.Flags = fs[len(fs)-1]
		out = append(out, r)
	}
	return out
}

func flagString(f Flags) string {
	switch {
	case f&FlagAllZero != 0:
		return "Z-"
	case f&FlagDiscard != 0:
		return "-D"
	}
	return "--"
}

func readStructure(t *testing.T, data []byte) []structRec {
	r, err := NewReader(bytes.NewReader(data), int64(len(data)))
	require.NoError(t, err)
	var out []structRec
	for {
		x, err := r.Next()
		if err == io.EOF {
			return out
		}
		require.NoError(t, err)
		out = append(out, structRec{x.Addr, x.Blocks, flagString(x.Flags)})
	}
}

func convertFile(t *testing.T, path string, opt ConvertOptions, viaPipe bool) []byte {
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	var src io.Reader = f
	if viaPipe {
		src = struct{ io.Reader }{f} // hide ReadAt: forces the spool path
	}
	var out bytes.Buffer
	_, err = ConvertWlogs(context.Background(), []WlogInput{{Name: path, R: src}}, &out, opt)
	require.NoError(t, err)
	return out.Bytes()
}

func applySHA(t *testing.T, base []byte, diffs ...[]byte) string {
	img := &memImage{b: append([]byte(nil), base...)}
	for _, d := range diffs {
		r, err := NewReader(bytes.NewReader(d), int64(len(d)))
		require.NoError(t, err)
		_, err = Apply(context.Background(), r, img, ApplyOptions{ZeroDiscard: true, Size: int64(len(img.b))})
		require.NoError(t, err)
	}
	s := sha256.Sum256(img.b)
	return hex.EncodeToString(s[:])
}

type memImage struct{ b []byte }

func (m *memImage) WriteAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > int64(len(m.b)) {
		return 0, io.ErrShortWrite
	}
	return copy(m.b[off:], p), nil
}

// wantSHA looks up the MANIFEST's sha256 for label on base kind.
func wantSHA(t *testing.T, rows []fixtures.ApplyRow, label, base string) (string, int) {
	for _, r := range rows {
		if r.Label == label && r.Base == base {
			return r.SHA256, r.Size
		}
	}
	t.Fatalf("no apply row %s/%s", base, label)
	return "", 0
}

// Acceptance 2: our conversion has walb-tools' record structure (sorted and
// indexed, default and -x sizes) and applies to the same image.
func TestConvertMatchesCpp(t *testing.T) {
	rows := fixtures.ApplyRows(t)
	cases := []struct {
		wlog, show string
		max        uint32
		indexed    bool
	}{}
	names, err := filepath.Glob(fixtures.Path(t, "wlog", "*.wlog"))
	require.NoError(t, err)
	for _, n := range names {
		base := strings.TrimSuffix(filepath.Base(n), ".wlog")
		cases = append(cases,
			struct {
				wlog, show string
				max        uint32
				indexed    bool
			}{n, fixtures.Path(t, "wdiff", base+".wdiff.show.txt"), DefaultMaxIOBlocks, false},
			struct {
				wlog, show string
				max        uint32
				indexed    bool
			}{n, fixtures.Path(t, "wdiff", base+".indexed.wdiff.show.txt"), DefaultMaxIOBlocks, true})
	}
	for _, x := range []struct {
		name string
		max  uint32
	}{{"p4096_bigio_lsid", 0}, {"p512_nodisc_nopad_noallzero", 32}} {
		tag := "x0"
		if x.max == 32 {
			tag = "x16K"
		}
		for _, idx := range []bool{false, true} {
			sfx := ".wdiff.show.txt"
			if idx {
				sfx = ".indexed.wdiff.show.txt"
			}
			cases = append(cases, struct {
				wlog, show string
				max        uint32
				indexed    bool
			}{fixtures.Path(t, "wlog", x.name+".wlog"), fixtures.Path(t, "wdiff", x.name+"."+tag+sfx), x.max, idx})
		}
	}
	for _, tc := range cases {
		t.Run(filepath.Base(tc.show), func(t *testing.T) {
			if _, err := os.Stat(tc.show); err != nil {
				t.Skip("no C++ output for this variant")
			}
			for _, pipe := range []bool{false, true} {
				out := convertFile(t, tc.wlog, ConvertOptions{MaxIOBlocks: tc.max, Indexed: tc.indexed,
					Compression: Compression{Codec: CodecSnappy, Workers: 2}}, pipe)
				require.Equal(t, showStructure(t, tc.show), readStructure(t, out))
				label := strings.TrimSuffix(filepath.Base(tc.wlog), ".wlog") + ".wlog-redo-z"
				for _, base := range []string{"zero", "rand"} {
					want, size := wantSHA(t, rows, label, base)
					require.Equal(t, want, applySHA(t, fixtures.BaseImage(t, base, size), out), base)
				}
			}
		})
	}
}
