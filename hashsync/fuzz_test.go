package hashsync

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"github.com/walb-go/walb/wdiff"
)

// fuzzImages are the images the fuzz targets compare against.
func fuzzImages() (old, cur []byte) {
	rng := rand.New(rand.NewPCG(41, 41))
	old, cur, _ = randImages(rng, 4<<10, 1024)
	return old, cur
}

// fuzzStreams returns valid streams of a few sessions over fuzzImages.
func fuzzStreams(t testing.TB) (hashStreams, dataStreams [][]byte) {
	old, cur := fuzzImages()
	for i, s := range []Session{
		{ChunkSize: 1024, End: 4 << 10, Seed: 1},
		{ChunkSize: 1536, Start: 1024, End: 4 << 10, Seed: 2},
		{ChunkSize: 4096, End: 0, Seed: 3},
	} {
		_, hs, ds := recordStreams(t, old, cur, s, HashOptions{BulkChunks: 1 + i*2}, DataOptions{Compression: wdiff.DefaultCompression})
		hashStreams = append(hashStreams, hs)
		dataStreams = append(dataStreams, ds)
	}
	return hashStreams, dataStreams
}

// fixCRCs recomputes the header and message checksums of a mutated stream
// as far as its framing goes, so that the fuzzer explores the protocol
// behind them (TestStreamCorruptionDetected covers the checksums).
func fixCRCs(data []byte) []byte {
	data = bytes.Clone(data)
	if len(data) < headerSize {
		return data
	}
	binary.LittleEndian.PutUint32(data[44:], crc32.Checksum(data[:44], castagnoli))
	for off := headerSize; off+msgHeaderSize <= len(data); {
		n := int(binary.LittleEndian.Uint32(data[off+4:]))
		end := off + msgHeaderSize + n
		if n > len(data) || end+msgTrailerSize > len(data) {
			break
		}
		binary.LittleEndian.PutUint32(data[end:], crc32.Checksum(data[off:end], castagnoli))
		off = end + msgTrailerSize
	}
	return data
}

// The data side decodes a hostile hash stream without panicking and with
// bounded work: it fails with an error, or it succeeds only on a complete,
// consistent stream.
func FuzzHashStream(f *testing.F) {
	hs, _ := fuzzStreams(f)
	for _, s := range hs {
		f.Add(s, false)
		f.Add(s, true)
	}
	_, cur := fuzzImages()
	f.Fuzz(func(t *testing.T, data []byte, fix bool) {
		if fix {
			data = fixCRCs(data)
		}
		if len(data) >= headerSize && binary.LittleEndian.Uint32(data[8:]) > 64<<10 {
			t.Skip("large chunks only cost time here")
		}
		st, err := SendDiff(context.Background(), bytes.NewReader(data), io.Discard, bytes.NewReader(cur), DataOptions{Workers: 1})
		if err == nil {
			s, _, herr := decodeHeader(data[:headerSize], hashMagic)
			require.NoError(t, herr)
			require.Equal(t, s.End, st.Offset)
			require.Equal(t, s.Chunks(), st.Chunks)
		}
	})
}

// The receiving half decodes a hostile data stream without panicking; what
// it accepts, the sink accepts too.
func FuzzDataStream(f *testing.F) {
	_, ds := fuzzStreams(f)
	for _, s := range ds {
		f.Add(s, false)
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, data []byte, fix bool) {
		if fix {
			data = fixCRCs(data)
		}
		s := Session{ChunkSize: 2048, End: 16 << 10, Seed: 1}
		if len(data) >= headerSize {
			if got, _, err := decodeHeader(data[:headerSize], dataMagic); err == nil {
				s = got
			}
		}
		sw, err := wdiff.NewSortedWriter(io.Discard, wdiff.FileHeader{}, wdiff.DefaultCompression)
		require.NoError(t, err)
		st, err := ReceiveDiff(context.Background(), bytes.NewReader(data), s, sw, HashOptions{})
		if err == nil {
			require.Equal(t, s.End, st.Offset)
			require.NoError(t, sw.Close())
		}
	})
}

// TestFuzzCorpus checks that the committed seed corpus holds valid
// streams that the decoders accept, so the fuzzers start from deep inside
// the protocol. With HASHSYNC_WRITE_CORPUS set it regenerates the corpus.
func TestFuzzCorpus(t *testing.T) {
	hs, ds := fuzzStreams(t)
	_, cur := fuzzImages()
	for name, streams := range map[string][][]byte{"FuzzHashStream": hs, "FuzzDataStream": ds} {
		dir := filepath.Join("testdata", "fuzz", name)
		if os.Getenv("HASHSYNC_WRITE_CORPUS") != "" {
			require.NoError(t, os.MkdirAll(dir, 0o755))
			for i, s := range streams {
				content := "go test fuzz v1\n[]byte(" + strconv.Quote(string(s)) + ")\nbool(" + strconv.FormatBool(i%2 == 0) + ")\n"
				require.NoError(t, os.WriteFile(filepath.Join(dir, fmt.Sprintf("valid-%d", i)), []byte(content), 0o644))
			}
		}
		files, err := filepath.Glob(filepath.Join(dir, "*"))
		require.NoError(t, err)
		require.NotEmpty(t, files)
		for _, path := range files {
			raw, err := os.ReadFile(path)
			require.NoError(t, err)
			lines := strings.Split(strings.TrimSpace(string(raw)), "\n")
			require.Len(t, lines, 3, path)
			require.Equal(t, "go test fuzz v1", lines[0])
			require.True(t, strings.HasPrefix(lines[1], "[]byte(") && strings.HasSuffix(lines[1], ")"), path)
			data, err := strconv.Unquote(strings.TrimSuffix(strings.TrimPrefix(lines[1], "[]byte("), ")"))
			require.NoError(t, err, path)
			s, _, err := decodeHeader([]byte(data)[:headerSize], map[string][4]byte{"FuzzHashStream": hashMagic, "FuzzDataStream": dataMagic}[name])
			require.NoError(t, err, path)
			if name == "FuzzHashStream" {
				_, err = SendDiff(context.Background(), strings.NewReader(data), io.Discard, bytes.NewReader(cur), DataOptions{})
			} else {
				_, err = ReceiveDiff(context.Background(), strings.NewReader(data), s, &discardSink{}, HashOptions{})
			}
			require.NoError(t, err, path)
		}
	}
}
