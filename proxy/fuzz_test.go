package proxy

import (
	"bytes"
	"context"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/wdiff"
)

// FuzzParseArchiveInfo: any arguments either parse into a valid info that
// survives its file form and its text form, or fail with ErrBadArchiveInfo.
func FuzzParseArchiveInfo(f *testing.F) {
	for _, s := range []string{"h:1", "10.0.0.1:5000 snappy:0:1 0", "[::1]:9 zstd:9:4 100", "h:0", "h:1 x", "h:1 gzip:9:255 4294967295"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a, err := ParseArchiveInfo(strings.Fields(s))
		if err != nil {
			require.ErrorIs(t, err, ErrBadArchiveInfo)
			return
		}
		require.NoError(t, a.Validate())
		b, err := meta.Marshal(a)
		require.NoError(t, err)
		var back ArchiveInfo
		require.NoError(t, meta.Unmarshal(b, &back))
		require.Equal(t, a, back)
		again, err := ParseArchiveInfo(strings.Fields(a.String()))
		require.NoError(t, err)
		require.Equal(t, a, again)
	})
}

// FuzzReadPacks: whatever a storage sends, the proxy refuses it or turns it
// into a valid wdiff; it never panics and never leaves a temporary file.
func FuzzReadPacks(f *testing.F) {
	g := newWlogGen(512)
	good := g.packs(f, rand.New(rand.NewPCG(1, 1)), 3)
	f.Add(good)
	f.Add(good[:700])
	f.Add([]byte{})
	f.Add(bytes.Repeat([]byte{0}, 512))
	p := openTest(f, testConfig(f, newFakeArchive()))
	startedVolume(f, p, "v0", "a0")
	hdr := g.header()
	f.Fuzz(func(t *testing.T, packs []byte) {
		r, err := p.BeginReceive(context.Background(), "v0", hdr)
		require.NoError(t, err)
		defer r.Abort()
		if err := r.ReadPacks(bytes.NewReader(packs)); err != nil {
			return
		}
		st, err := r.tmp.Stat()
		require.NoError(t, err)
		rd, err := wdiff.NewReader(r.tmp, st.Size())
		require.NoError(t, err)
		for {
			_, err := rd.Next()
			if err != nil {
				require.Equal(t, "EOF", err.Error())
				break
			}
		}
		r.Abort()
		require.Empty(t, dirNames(t, volPath(p, "v0", "received")))
	})
}

// FuzzChunkDecode: a wlog-transfer chunk decodes to at most MaxWlogChunk
// bytes or is refused as a bad stream.
func FuzzChunkDecode(f *testing.F) {
	f.Add([]byte{0, 3, 0, 0, 0, 'a', 'b', 'c'})
	comp, _, _ := wdiff.Compress(nil, make([]byte, 4096), wdiff.CodecSnappy, 0)
	f.Add(append([]byte{2, 0, 16, 0, 0}, comp...))
	f.Add([]byte{2, 0xff, 0xff, 0xff, 0xff, 1})
	f.Fuzz(func(t *testing.T, chunk []byte) {
		var r chunkReader
		out, err := r.decode(chunk)
		if err != nil {
			require.ErrorIs(t, err, ErrBadStream)
			return
		}
		require.NotEmpty(t, out)
		require.LessOrEqual(t, len(out), MaxWlogChunk)
	})
}
