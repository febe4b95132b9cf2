package walb

import (
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/internal/fixtures"
	"github.com/walb-go/walb/wlog"
)

// The C++ log device fixtures (MANIFEST.md, ldev section).
var ldevFixtures = []struct {
	name  string
	pbs   uint32
	begin uint64 // oldest lsid of the restored image
	end   uint64 // reallyEndLsid of the .cat.wlog
}{
	{"ldev_p512_wrap", 512, 800, 1366},
	{"ldev_p4096_clip", 4096, 0, 64},
}

func readFixture(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(fixtures.Path(t, "ldev", name))
	require.NoError(t, err)
	return b
}

func TestGoldenSuperRoundTrip(t *testing.T) {
	for _, fx := range ldevFixtures {
		for _, img := range []struct{ file, info string }{
			{fx.name + ".formatted.head16k.img", fx.name + ".formatted.wldev-info.txt"},
			{fx.name + ".restored.img", fx.name + ".restored.wldev-info.txt"},
		} {
			t.Run(img.file, func(t *testing.T) {
				b := readFixture(t, img.file)
				raw := b[PageSize : PageSize+int(fx.pbs)]
				s, err := ParseSuper(raw)
				require.NoError(t, err)
				require.Equal(t, fx.pbs, s.PBS)
				require.Equal(t, string(readFixture(t, img.info)), s.String())
				require.Equal(t, raw, s.Marshal(), "marshal must reproduce the C++ super sector")

				// pbs 0 reads the block size from the super sector itself.
				s2, err := ReadSuper(bytes.NewReader(b), 0)
				require.NoError(t, err)
				require.Equal(t, s, s2)
				// The wrong pbs fails cleanly.
				other := uint32(4096)
				if fx.pbs == 4096 {
					other = 512
				}
				_, err = ReadSuper(bytes.NewReader(b), other)
				require.Error(t, err)
			})
		}
		t.Run(fx.name+"/format-ldev-stdout", func(t *testing.T) {
			b := readFixture(t, fx.name+".formatted.head16k.img")
			s, err := ParseSuper(b[PageSize : PageSize+int(fx.pbs)])
			require.NoError(t, err)
			// format-ldev prints the super sector and a blank line.
			require.Equal(t, string(readFixture(t, fx.name+".format-ldev.stdout.txt")), s.String()+"\n")
			// The block at lsid 0 is zero after format.
			off := s.LsidOffset(0)
			require.Equal(t, make([]byte, fx.pbs), b[off:off+int64(fx.pbs)])
		})
	}
}

func TestGoldenLogExtraction(t *testing.T) {
	ctx := context.Background()
	for _, fx := range ldevFixtures {
		t.Run(fx.name, func(t *testing.T) {
			want := readFixture(t, fx.name+".cat.wlog")
			l, err := OpenLogDevice(fixtures.Path(t, "ldev", fx.name+".restored.img"), 0)
			require.NoError(t, err)
			defer l.Close()
			s := l.Super()
			require.Equal(t, fx.pbs, s.PBS)
			require.Equal(t, fx.begin, s.OldestLsid)

			// wlog-cat's defaults: begin 0 (raised to oldest), end 2^64-1.
			var got bytes.Buffer
			end, err := l.ReadLog(ctx, 0, wlog.InvalidLsid, &got)
			require.NoError(t, err)
			require.Equal(t, fx.end, end)
			require.Equal(t, len(want), got.Len())
			require.True(t, bytes.Equal(want, got.Bytes()), "extracted wlog differs from wlog-cat's")

			// The result is a valid wlog for the strict reader.
			st, err := wlog.Show(io.Discard, bytes.NewReader(got.Bytes()), wlog.ShowOptions{})
			require.NoError(t, err)
			require.Equal(t, fx.end, st.RealEndLsid)

			// A range that stops early ends after the pack holding end-1.
			pr, err := l.NewPackReader(fx.begin, fx.begin+1)
			require.NoError(t, err)
			h, _, err := pr.Next(ctx)
			require.NoError(t, err)
			require.Equal(t, fx.begin, h.LogpackLsid)
			_, _, err = pr.Next(ctx)
			require.ErrorIs(t, err, io.EOF)
		})
	}
}

// TestGoldenOpenCppDevice opens a C++-restored log device as a running
// device: recovery replays the whole log onto a zero data device, which
// must then equal wlog-redo of wlog-cat's output, and the running device
// extracts the same wlog.
func TestGoldenOpenCppDevice(t *testing.T) {
	ctx := context.Background()
	for _, fx := range ldevFixtures {
		t.Run(fx.name, func(t *testing.T) {
			dir := t.TempDir()
			ldevPath := filepath.Join(dir, "ldev")
			ddevPath := filepath.Join(dir, "ddev")
			require.NoError(t, os.WriteFile(ldevPath, readFixture(t, fx.name+".restored.img"), 0o600))
			require.NoError(t, os.WriteFile(ddevPath, nil, 0o600))
			require.NoError(t, os.Truncate(ddevPath, 16<<20))

			d, err := Open(ctx, ldevPath, ddevPath, Options{Logger: testLogger(t)})
			require.NoError(t, err)
			ls := d.Lsids()
			require.Equal(t, Lsids{Latest: fx.end, Completed: fx.end, Flush: fx.end, Permanent: fx.end,
				Written: fx.end, PrevWritten: fx.end, Oldest: fx.begin}, ls)
			require.False(t, d.IsLogOverflow())

			var got bytes.Buffer
			end, err := d.ReadLog(ctx, fx.begin, wlog.InvalidLsid, &got)
			require.NoError(t, err)
			require.Equal(t, fx.end, end)
			require.True(t, bytes.Equal(readFixture(t, fx.name+".cat.wlog"), got.Bytes()))
			require.NoError(t, d.Close())

			want := make([]byte, 16<<20)
			r, err := wlog.NewReader(bytes.NewReader(readFixture(t, fx.name+".cat.wlog")))
			require.NoError(t, err)
			_, err = wlog.Redo(ctx, r, sliceWriterAt(want), wlog.RedoOptions{ZeroDiscard: true})
			require.NoError(t, err)
			image, err := os.ReadFile(ddevPath)
			require.NoError(t, err)
			require.True(t, bytes.Equal(want, image), "recovered data device differs from wlog-redo -z")

			// The super sector now records the replayed log.
			l, err := OpenLogDevice(ldevPath, 0)
			require.NoError(t, err)
			require.Equal(t, fx.end, l.Super().WrittenLsid)
			require.NoError(t, l.Close())
		})
	}
}

type sliceWriterAt []byte

func (s sliceWriterAt) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > int64(len(s)) {
		return 0, io.ErrShortWrite
	}
	return copy(s[off:], p), nil
}
