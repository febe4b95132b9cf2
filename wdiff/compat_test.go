package wdiff

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/walb-go/walb/internal/fixtures"
)

// Names of the fixture diffs that exist in every codec variant.
var cmprFixtures = []string{"p512_default", "p4096_default", "p512_tiny", "p512_nodisc_nopad_noallzero", "p4096_smalldisc"}

// TestSortedReencodeNoneMatchesCpp re-encodes fixture contents with codec
// none and compares with wdiff-merge -cmpr none:0:1 of the same input, byte
// for byte: pack boundaries, record layout, checksums, end pack (spec 7.1).
func TestSortedReencodeNoneMatchesCpp(t *testing.T) {
	for _, name := range cmprFixtures {
		t.Run(name, func(t *testing.T) {
			f, err := Open(fixtures.Path(t, "wdiff", name+".wdiff"))
			require.NoError(t, err)
			defer f.Close()
			ios := readAllIOs(t, f)
			// wdiff-merge writes an all-zero UUID.
			got := writeSorted(t, FileHeader{}, Compression{Codec: CodecNone}, ios)
			want, err := os.ReadFile(fixtures.Path(t, "wdiff", name+".cmpr-none.wdiff"))
			require.NoError(t, err)
			require.True(t, bytes.Equal(want, got), "re-encoded file differs from the C++ one")
		})
	}
}

// TestSortedStoredPassThroughMatchesCpp copies stored (snappy) records with
// NextStored/WriteStored; the result must equal wdiff-merge's snappy output
// of the same file, which used the same compressor as the input.
func TestSortedStoredPassThroughMatchesCpp(t *testing.T) {
	for _, name := range cmprFixtures {
		for _, workers := range []int{1, 3} {
			t.Run(name+"/workers="+strconv.Itoa(workers), func(t *testing.T) {
				f, err := Open(fixtures.Path(t, "wdiff", name+".wdiff"))
				require.NoError(t, err)
				defer f.Close()
				var buf bytes.Buffer
				w, err := NewSortedWriter(&buf, FileHeader{}, Compression{Codec: CodecSnappy, Workers: workers})
				require.NoError(t, err)
				for {
					rec, st, err := f.Sorted().NextStored()
					if err == io.EOF {
						break
					}
					require.NoError(t, err)
					require.NoError(t, w.WriteStored(rec, st))
				}
				require.NoError(t, w.Close())
				want, err := os.ReadFile(fixtures.Path(t, "wdiff", name+".cmpr-snappy.wdiff"))
				require.NoError(t, err)
				require.True(t, bytes.Equal(want, buf.Bytes()), "pass-through copy differs from the C++ one")
			})
		}
	}
}

// TestIndexedRebuildMatchesCpp rebuilds indexed fixtures from their images
// and their index records merged back into whole ranges, and requires the
// same bytes: splitting, io_offset, record checksums, padding, super
// (spec 7.2). Only fixtures whose images tile the data area qualify (the
// others hold images that overlaps made unreferenced).
func TestIndexedRebuildMatchesCpp(t *testing.T) {
	rebuilt := 0
	for _, p := range fixtureWdiffs(t) {
		want, err := os.ReadFile(p)
		require.NoError(t, err)
		if Type(want[6]) != TypeIndexed {
			continue
		}
		r, err := NewIndexedReader(bytes.NewReader(want), int64(len(want)))
		require.NoError(t, err)
		var recs []IndexRecord
		imgs := map[uint64]IndexRecord{}
		for {
			ir, err := r.NextRaw()
			if err == io.EOF {
				break
			}
			require.NoError(t, err)
			recs = append(recs, ir)
			if ir.IsNormal() {
				imgs[ir.DataOffset] = ir
			}
		}
		offs := make([]uint64, 0, len(imgs))
		for o := range imgs {
			offs = append(offs, o)
		}
		slices.Sort(offs)
		end, tiles := uint64(FileHeaderSize), true
		for _, o := range offs {
			tiles = tiles && o == end
			end = o + uint64(imgs[o].DataSize)
		}
		if !tiles || r.Super().IndexOffset-end >= 8 {
			continue
		}
		rebuilt++
		var buf bytes.Buffer
		w, err := NewIndexedWriter(&buf, r.Header(), DefaultCompression)
		require.NoError(t, err)
		images := map[uint64]Image{}
		for _, o := range offs {
			ir := imgs[o]
			img, err := w.WriteStoredImage(Stored{Codec: ir.Codec, Data: want[o : o+uint64(ir.DataSize)], Checksum: ir.IOChecksum}, ir.OrigBlocks)
			require.NoError(t, err)
			require.Equal(t, o, img.Offset)
			images[o] = img
		}
		for i := 0; i < len(recs); {
			j := i + 1
			for j < len(recs) && recs[j].Flags == recs[i].Flags && recs[j].DataOffset == recs[i].DataOffset &&
				recs[j-1].End() == recs[j].Addr && recs[j-1].IOOffset+recs[j-1].Blocks == recs[j].IOOffset {
				j++
			}
			rec := Record{Addr: recs[i].Addr, Blocks: uint32(recs[j-1].End() - recs[i].Addr), Flags: recs[i].Flags}
			img := images[recs[i].DataOffset]
			if !rec.IsNormal() {
				img = Image{Offset: recs[i].DataOffset}
			}
			require.NoError(t, w.WriteIndex(rec, img, recs[i].IOOffset))
			i = j
		}
		w.SetNData(r.Super().NData)
		require.NoError(t, w.Close())
		require.True(t, bytes.Equal(want, buf.Bytes()), "%s: rebuilt file differs", p)
	}
	require.GreaterOrEqual(t, rebuilt, 4)
}

// applyFixtureDiff applies one diff to img as wdiff-redo does: normal data is
// written, all-zero ranges are zeroed, discards are zeroed only with
// zeroDiscard (-z) and skipped otherwise.
func applyFixtureDiff(t testing.TB, img []byte, path string, zeroDiscard bool) {
	t.Helper()
	f, err := Open(path)
	require.NoError(t, err)
	defer f.Close()
	for {
		x, err := f.Next()
		if err == io.EOF {
			return
		}
		require.NoError(t, err)
		lo, hi := x.Addr*LogicalBlockSize, x.End()*LogicalBlockSize
		require.LessOrEqual(t, hi, uint64(len(img)), "record beyond the device")
		switch {
		case x.IsNormal():
			copy(img[lo:hi], x.Data)
		case x.IsAllZero() || zeroDiscard:
			clear(img[lo:hi])
		}
	}
}

// TestApplyMatchesManifest applies fixture diffs to the MANIFEST's base
// images and compares the sha256 of the result with what wdiff-redo and
// virt-full-cat produced (MANIFEST "apply/"). This checks every decoded
// byte of every codec and both layouts.
func TestApplyMatchesManifest(t *testing.T) {
	dir := fixtures.Dir(t)
	mf, err := os.Open(fixtures.Path(t, "MANIFEST.md"))
	require.NoError(t, err)
	defer mf.Close()
	bases := map[string][]byte{}
	checked := 0
	sc := bufio.NewScanner(mf)
	for sc.Scan() {
		cols := strings.Split(sc.Text(), "|")
		if len(cols) != 8 {
			continue
		}
		label, base, sizeStr := strings.TrimSpace(cols[1]), strings.TrimSpace(cols[2]), strings.TrimSpace(cols[3])
		cmd, sum := strings.Trim(strings.TrimSpace(cols[5]), "`"), strings.TrimSpace(cols[6])
		if base != "zero" && base != "rand" {
			continue
		}
		f := strings.Fields(cmd)
		var inputs []string
		zeroDiscard := true
		switch {
		case len(f) == 5 && f[0] == "wdiff-redo" && f[1] == "-z":
			inputs = []string{f[3]}
		case len(f) == 4 && f[0] == "wdiff-redo":
			inputs, zeroDiscard = []string{f[2]}, false
		case len(f) >= 7 && f[0] == "virt-full-cat" && f[3] == "-d":
			inputs = f[4 : len(f)-2]
		default:
			continue
		}
		if testing.Short() && base == "rand" {
			continue
		}
		size, err := strconv.Atoi(sizeStr)
		require.NoError(t, err)
		key := base + sizeStr
		if bases[key] == nil {
			bases[key] = fixtures.BaseImage(t, base, size)
		}
		img := bytes.Clone(bases[key])
		for _, in := range inputs {
			applyFixtureDiff(t, img, dir+"/"+in, zeroDiscard)
		}
		got := sha256.Sum256(img)
		require.Equal(t, sum, hex.EncodeToString(got[:]), "%s on %s base", label, base)
		checked++
	}
	require.NoError(t, sc.Err())
	require.Greater(t, checked, 50)
}
