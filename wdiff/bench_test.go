package wdiff

import (
	"bytes"
	"io"
	"math/rand/v2"
	"strconv"
	"testing"
)

// benchData is 4 KiB blocks about half compressible, as the benchmarks
// of the merge and apply targets assume.
func benchData(n int) []byte {
	return halfCompressible(rand.New(rand.NewPCG(42, 43)), n)
}

func BenchmarkCompress(b *testing.B) {
	src := benchData(4096)
	for _, c := range allCodecs {
		b.Run(c.String(), func(b *testing.B) {
			dst := make([]byte, 0, 8192)
			b.SetBytes(int64(len(src)))
			b.ReportAllocs()
			for b.Loop() {
				if _, _, err := Compress(dst, src, c, 0); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkDecompress(b *testing.B) {
	src := benchData(4096)
	for _, c := range allCodecs {
		b.Run(c.String(), func(b *testing.B) {
			stored, used, err := Compress(nil, src, c, 0)
			if err != nil {
				b.Fatal(err)
			}
			dst := make([]byte, 4096)
			b.SetBytes(int64(len(src)))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := Decompress(dst, stored, used, len(src)); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// benchIOs is 16 MiB of 4 KiB normal records.
func benchIOs() []IO {
	data := benchData(16 << 20)
	ios := make([]IO, 0, len(data)/4096)
	for i := 0; i < len(data); i += 4096 {
		ios = append(ios, IO{Record: Record{Addr: uint64(i / 512), Blocks: 8}, Data: data[i : i+4096]})
	}
	return ios
}

func BenchmarkSortedWrite(b *testing.B) {
	ios := benchIOs()
	for _, c := range []Compression{
		{Codec: CodecNone}, {Codec: CodecSnappy, Workers: 1}, {Codec: CodecSnappy, Workers: 2},
		{Codec: CodecLZ4, Workers: 1}, {Codec: CodecZstd, Workers: 2},
	} {
		b.Run(c.String(), func(b *testing.B) {
			b.SetBytes(16 << 20)
			b.ReportAllocs()
			for b.Loop() {
				w, err := NewSortedWriter(io.Discard, FileHeader{}, c)
				if err != nil {
					b.Fatal(err)
				}
				for _, x := range ios {
					if err := w.Write(x); err != nil {
						b.Fatal(err)
					}
				}
				if err := w.Close(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

func BenchmarkSortedRead(b *testing.B) {
	ios := benchIOs()
	for _, c := range []Codec{CodecNone, CodecSnappy, CodecLZ4, CodecZstd} {
		var buf bytes.Buffer
		w, _ := NewSortedWriter(&buf, FileHeader{}, Compression{Codec: c, Workers: 2})
		for _, x := range ios {
			if err := w.Write(x); err != nil {
				b.Fatal(err)
			}
		}
		if err := w.Close(); err != nil {
			b.Fatal(err)
		}
		file := buf.Bytes()
		for _, stored := range []bool{false, true} {
			b.Run(c.String()+"/stored="+strconv.FormatBool(stored), func(b *testing.B) {
				b.SetBytes(16 << 20)
				b.ReportAllocs()
				for b.Loop() {
					r, err := NewSortedReader(bytes.NewReader(file))
					if err != nil {
						b.Fatal(err)
					}
					for {
						if stored {
							_, _, err = r.NextStored()
						} else {
							_, err = r.Next()
						}
						if err == io.EOF {
							break
						}
						if err != nil {
							b.Fatal(err)
						}
					}
				}
			})
		}
	}
}

// BenchmarkSortedCopyStored is the pass-through path of a merge: records
// read with NextStored and written with WriteStored, no recompression.
func BenchmarkSortedCopyStored(b *testing.B) {
	var buf bytes.Buffer
	w, _ := NewSortedWriter(&buf, FileHeader{}, Compression{Codec: CodecSnappy, Workers: 2})
	for _, x := range benchIOs() {
		if err := w.Write(x); err != nil {
			b.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		b.Fatal(err)
	}
	file := buf.Bytes()
	b.SetBytes(16 << 20)
	b.ReportAllocs()
	for b.Loop() {
		r, err := NewSortedReader(bytes.NewReader(file))
		if err != nil {
			b.Fatal(err)
		}
		w, err := NewSortedWriter(io.Discard, FileHeader{}, DefaultCompression)
		if err != nil {
			b.Fatal(err)
		}
		for {
			rec, st, err := r.NextStored()
			if err == io.EOF {
				break
			}
			if err != nil {
				b.Fatal(err)
			}
			if err := w.WriteStored(rec, st); err != nil {
				b.Fatal(err)
			}
		}
		if err := w.Close(); err != nil {
			b.Fatal(err)
		}
	}
}
