package wdiff

import (
	"bufio"
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/walb-go/walb/internal/fixtures"
)

// fixtureWdiffs lists every .wdiff under the fixture's wdiff/ and merge/.
func fixtureWdiffs(t testing.TB) []string {
	t.Helper()
	var out []string
	for _, dir := range []string{"wdiff", "merge"} {
		m, err := filepath.Glob(filepath.Join(fixtures.Path(t, dir), "*.wdiff"))
		require.NoError(t, err)
		out = append(out, m...)
	}
	require.NotEmpty(t, out)
	return out
}

// TestGoldenShow checks that Show reproduces wdiff-show -stat byte for byte
// (spec section 7; MANIFEST "wdiff/").
func TestGoldenShow(t *testing.T) {
	for _, p := range fixtureWdiffs(t) {
		t.Run(filepath.Base(p), func(t *testing.T) {
			want, err := os.ReadFile(p + ".show.txt")
			require.NoError(t, err)
			var got bytes.Buffer
			require.NoError(t, Show(&got, ShowOptions{Stat: true, VerifyData: true}, p))
			require.Equal(t, string(want), got.String())
		})
	}
}

// cppStat parses the wdiff_stat lines of a wdiff-show dump.
func cppStat(t *testing.T, path string) map[string]uint64 {
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	m := map[string]uint64{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "wdiff_stat: "); ok {
			k, v, _ := strings.Cut(rest, " ")
			n, err := strconv.ParseUint(v, 10, 64)
			require.NoError(t, err)
			m[k] = n
		}
	}
	require.NoError(t, sc.Err())
	return m
}

// TestGoldenReadAll reads every fixture with Open/Next, which decompresses
// all data, and compares the record counts and block totals with what
// walb-tools reported for the file.
func TestGoldenReadAll(t *testing.T) {
	for _, p := range fixtureWdiffs(t) {
		t.Run(filepath.Base(p), func(t *testing.T) {
			f, err := Open(p)
			require.NoError(t, err)
			defer f.Close()
			var st Stat
			for {
				x, err := f.Next()
				if err == io.EOF {
					break
				}
				require.NoError(t, err)
				st.add(x.Record)
				if x.IsNormal() {
					require.Len(t, x.Data, x.Size())
				} else {
					require.Nil(t, x.Data)
				}
			}
			want := cppStat(t, p+".show.txt")
			require.Equal(t, want["normalNr"], st.NormalNr)
			require.Equal(t, want["allZeroNr"], st.AllZeroNr)
			require.Equal(t, want["discardNr"], st.DiscardNr)
			require.Equal(t, want["normalLb"], st.NormalLb)
			require.Equal(t, want["allZeroLb"], st.AllZeroLb)
			require.Equal(t, want["discardLb"], st.DiscardLb)
			require.Equal(t, f.Indexed() != nil, want["wdiffNr"] == 1)
		})
	}
}

// TestShowOptions covers -search, -nohead, -norec and statistics summed
// over several files, as wdiff-show computes them.
func TestShowOptions(t *testing.T) {
	sorted := fixtures.Path(t, "wdiff", "p512_tiny.wdiff")
	indexed := fixtures.Path(t, "wdiff", "p512_tiny.indexed.wdiff")
	var buf bytes.Buffer
	require.NoError(t, Show(&buf, ShowOptions{NoHead: true, Search: true, Addr: 49}, sorted, indexed))
	require.Equal(t, "wdiff_sorted_rec:\t47\t4\tsnappy\t160\t108\tb4dccb8e\t--\n"+
		"wdiff_indexed_rec:\t48\t2\tsnappy\t917\t108\t4\t1\tb4dccb8e\t4b232e3a\t--\n", buf.String())
	buf.Reset()
	require.NoError(t, Show(&buf, ShowOptions{NoHead: true, NoRec: true, Stat: true}, sorted, indexed))
	require.Equal(t, "wdiff_stat: wdiffNr 1\nwdiff_stat: normalNr 47\nwdiff_stat: allZeroNr 6\n"+
		"wdiff_stat: discardNr 5\nwdiff_stat: normalLb 118\nwdiff_stat: allZeroLb 16\n"+
		"wdiff_stat: discardLb 22\nwdiff_stat: dataSize 3184\n", buf.String())
	require.Error(t, Show(&buf, ShowOptions{}, filepath.Join(t.TempDir(), "missing.wdiff")))
}
