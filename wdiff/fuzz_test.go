package wdiff

import (
	"bytes"
	"io"
	"os"
	"path/filepath"
	"testing"

	"github.com/walb-go/walb/internal/fixtures"
)

// addFixtureSeeds adds small fixture files of the given layout as seeds.
func addFixtureSeeds(f *testing.F, names ...string) {
	for _, n := range names {
		b, err := os.ReadFile(filepath.Join(fixtures.Dir(f), "wdiff", n))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
}

// checkReader reads a file image to the end or the first error. Whatever
// the input, it must not panic, and data must have the record's size.
// A file read without error must survive a round trip through the writer
// unchanged.
func checkReader(t *testing.T, r Reader, err error) {
	if err != nil {
		return
	}
	var ios []IO
	for range 10000 {
		x, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return
		}
		if (x.IsNormal() && len(x.Data) != x.Size()) || (!x.IsNormal() && x.Data != nil) {
			t.Fatalf("record %+v with %d data bytes", x.Record, len(x.Data))
		}
		if x.Data != nil {
			x.Data = bytes.Clone(x.Data)
		}
		ios = append(ios, x)
	}
	var buf bytes.Buffer
	w, err := NewSortedWriter(&buf, r.Header(), Compression{Codec: CodecSnappy})
	if err != nil {
		t.Fatal(err)
	}
	for _, x := range ios {
		if err := w.Write(x); err != nil {
			t.Fatalf("re-writing %+v: %v", x.Record, err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	got, err := readAllFromBytes(buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(ios) {
		t.Fatalf("round trip: %d records, want %d", len(got), len(ios))
	}
	for i := range ios {
		if got[i].Record != ios[i].Record || !bytes.Equal(got[i].Data, ios[i].Data) {
			t.Fatalf("round trip: record %d differs", i)
		}
	}
}

func FuzzSortedReader(f *testing.F) {
	addFixtureSeeds(f, "p512_tiny.wdiff", "p512_tiny.cmpr-gzip.wdiff")
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := NewSortedReader(bytes.NewReader(b))
		checkReader(t, r, err)
	})
}

func FuzzIndexedReader(f *testing.F) {
	addFixtureSeeds(f, "p512_tiny.indexed.wdiff")
	f.Fuzz(func(t *testing.T, b []byte) {
		r, err := NewIndexedReader(bytes.NewReader(b), int64(len(b)))
		checkReader(t, r, err)
	})
}

// FuzzDecompress feeds arbitrary bytes to a codec chosen by the first
// byte, and checks that compressing them round-trips.
func FuzzDecompress(f *testing.F) {
	for _, c := range allCodecs {
		in := bytes.Repeat([]byte("walb diff fuzz seed "), 50)
		stored, used, err := Compress(nil, in, c, 0)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(uint16(len(in)), append([]byte{byte(used)}, stored...))
	}
	f.Fuzz(func(t *testing.T, size uint16, b []byte) {
		if len(b) == 0 {
			return
		}
		c, data := Codec(b[0]%numCodecs), b[1:]
		out, err := Decompress(nil, data, c, int(size))
		if err == nil && len(out) != int(size) {
			t.Fatalf("%s: %d bytes, want %d", c, len(out), size)
		}
		if c == CodecLZMA && len(data) > 4096 {
			return // keep the slow encoder out of long inputs
		}
		stored, used, err := Compress(nil, data, c, 0)
		if err != nil {
			t.Fatal(err)
		}
		if used != CodecNone && len(stored) >= len(data) {
			t.Fatalf("%s kept a result that is not smaller", c)
		}
		back, err := Decompress(nil, stored, used, len(data))
		if err != nil || !bytes.Equal(back, data) {
			t.Fatalf("%s round trip: %v", used, err)
		}
	})
}
