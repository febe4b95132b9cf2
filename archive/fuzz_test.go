package archive

import (
	"bytes"
	"context"
	"io"
	"os"
	"strconv"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/checksum"
	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/wdiff"
)

// FuzzDecodeBulk: any chunk either decodes to exactly its blocks with a
// matching checksum, or is ErrCorruptStream; a decoded bulk encodes and
// decodes back to the same content.
func FuzzDecodeBulk(f *testing.F) {
	raw := bytes.Repeat([]byte("walb-go archive "), 128) // 4 blocks
	for _, c := range []wdiff.Codec{wdiff.CodecNone, wdiff.CodecSnappy, wdiff.CodecZstd} {
		chunk, _, err := encodeBulk(nil, raw, nil, wdiff.Compression{Codec: c})
		require.NoError(f, err)
		f.Add(chunk, uint64(8))
	}
	zero, _, err := encodeBulk(nil, make([]byte, 1024), nil, wdiff.DefaultCompression)
	require.NoError(f, err)
	f.Add(zero, uint64(2))
	f.Fuzz(func(t *testing.T, chunk []byte, bulkLB uint64) {
		bulkLB = bulkLB%MaxBulkLB + 1
		b, _, err := decodeBulk(chunk, bulkLB, nil)
		if err != nil {
			require.ErrorIs(t, err, ErrCorruptStream)
			return
		}
		require.True(t, b.nLB >= 1 && b.nLB <= bulkLB)
		data := b.data
		if b.zero {
			require.Nil(t, data)
			data = make([]byte, b.nLB*lbSize)
		} else {
			require.Len(t, data, int(b.nLB*lbSize))
		}
		again, _, err := encodeBulk(nil, data, nil, wdiff.DefaultCompression)
		require.NoError(t, err)
		b2, _, err := decodeBulk(again, bulkLB, nil)
		require.NoError(t, err)
		require.Equal(t, b.nLB, b2.nLB)
		if !b2.zero {
			require.Equal(t, data, b2.data)
			require.Equal(t, checksum.Sum(data, 0), checksum.Sum(b2.data, 0))
		}
	})
}

// FuzzReceiveWdiff feeds arbitrary bytes to a wdiff reception: it never
// panics, refuses what it cannot fully verify, leaves no file behind, and
// what it accepts reads back as a sorted wdiff inside the volume.
func FuzzReceiveWdiff(f *testing.F) {
	m := newModel(21, 64)
	for range 3 {
		f.Add(m.nextWdiff(f, 4))
	}
	f.Add(m.wdiff(f, 2, true))
	env := newEnv(f, nil)
	ctx := context.Background()
	const vol = "fz"
	require.NoError(f, env.e.InitVol(ctx, vol))
	env.fullSync(ctx, vol, newModel(21, 64), meta.CleanSnap(0))
	dir := env.cfg.BaseDir + "/" + vol
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := env.e.BeginWdiffRecv(ctx, vol, WdiffHeader{Sender: SenderProxy, UUID: m.uuid, SizeLB: 64, Diff: cleanDiff(0, 1, false)})
		require.NoError(t, err)
		err = r.Receive(bytes.NewReader(data))
		if err != nil {
			require.ErrorIs(t, err, ErrCorruptStream)
		} else {
			fi, err := r.tmp.Stat()
			require.NoError(t, err)
			sr, err := wdiff.NewSortedReader(io.NewSectionReader(r.tmp.File, 0, fi.Size()))
			require.NoError(t, err)
			for {
				x, err := sr.Next()
				if err == io.EOF {
					break
				}
				require.NoError(t, err)
				require.LessOrEqual(t, x.End(), uint64(64))
			}
		}
		r.Abort()
		ents, err := os.ReadDir(dir)
		require.NoError(t, err)
		for _, e := range ents {
			require.False(t, meta.IsTempName(e.Name()), "temporary %s left", e.Name())
		}
	})
}

// FuzzParseRestoredImageName: a name parses only if it is exactly the
// name of its volume and gid.
func FuzzParseRestoredImageName(f *testing.F) {
	for _, s := range []string{"wr_vol_12", "wr_a-b_0", "wr__1", "wr_v_01", "wb_v", "wr_v_18446744073709551615", "wr_v_x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		vol, gid, ok := parseRestoredImageName(name)
		if ok {
			require.Equal(t, name, restoredImageName(vol, gid))
		}
	})
}

// FuzzParseSize: accepted sizes are the number times its suffix.
func FuzzParseSize(f *testing.F) {
	for _, s := range []string{"0", "512", "1k", "2M", "3g", "4t", "5p", "x", "", "99999999999999999999p"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := ParseSize(s)
		if err != nil {
			return
		}
		require.Less(t, v, uint64(1<<63)+1)
		if n, err := strconv.ParseUint(s, 10, 64); err == nil {
			require.Equal(t, n, v)
		}
	})
}
