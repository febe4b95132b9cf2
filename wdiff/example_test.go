package wdiff_test

import (
	"bytes"
	"fmt"
	"io"
	"log"
	"os"

	"github.com/walb-go/walb/wdiff"
)

// Write a sorted wdiff with snappy compression and read it back.
func ExampleNewSortedWriter() {
	var file bytes.Buffer
	w, err := wdiff.NewSortedWriter(&file, wdiff.FileHeader{}, wdiff.DefaultCompression)
	if err != nil {
		log.Fatal(err)
	}
	data := bytes.Repeat([]byte("walb"), 256) // two 512-byte blocks
	for _, x := range []wdiff.IO{
		{Record: wdiff.Record{Addr: 100, Blocks: 2}, Data: data},
		{Record: wdiff.Record{Addr: 200, Blocks: 8, Flags: wdiff.FlagDiscard}},
	} {
		if err := w.Write(x); err != nil {
			log.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		log.Fatal(err)
	}

	r, err := wdiff.NewSortedReader(&file)
	if err != nil {
		log.Fatal(err)
	}
	for {
		x, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			log.Fatal(err)
		}
		fmt.Println(x.Addr, x.Blocks, x.IsNormal(), len(x.Data))
	}
	// Output:
	// 100 2 true 1024
	// 200 8 false 0
}

// Build an indexed wdiff: images first, then the index in address order.
// A record may use part of an image.
func ExampleNewIndexedWriter() {
	var file bytes.Buffer
	w, err := wdiff.NewIndexedWriter(&file, wdiff.FileHeader{}, wdiff.Compression{Codec: wdiff.CodecNone})
	if err != nil {
		log.Fatal(err)
	}
	img, err := w.WriteImage(make([]byte, 6*512)) // one 6-block IO
	if err != nil {
		log.Fatal(err)
	}
	// Blocks 2..5 of the image at address 10: split into 10+2 and 12+2.
	if err := w.WriteIndex(wdiff.Record{Addr: 10, Blocks: 4}, img, 2); err != nil {
		log.Fatal(err)
	}
	if err := w.Close(); err != nil {
		log.Fatal(err)
	}
	err = wdiff.ShowReaderAt(os.Stdout, wdiff.ShowOptions{Stat: true, NoHead: true}, bytes.NewReader(file.Bytes()), int64(file.Len()))
	if err != nil {
		log.Fatal(err)
	}
	// Output:
	// wdiff_indexed_rec:	10	2	none	32	3072	6	2	00000000	fffff3cc	--
	// wdiff_indexed_rec:	12	2	none	32	3072	6	4	00000000	fffff3c8	--
	// wdiff_stat: wdiffNr 1
	// wdiff_stat: normalNr 2
	// wdiff_stat: allZeroNr 0
	// wdiff_stat: discardNr 0
	// wdiff_stat: normalLb 4
	// wdiff_stat: allZeroLb 0
	// wdiff_stat: discardLb 0
	// wdiff_stat: dataSize 3072
}
