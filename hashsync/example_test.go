package hashsync_test

import (
	"bytes"
	"context"
	"fmt"
	"net"

	"github.com/walb-go/walb/hashsync"
	"github.com/walb-go/walb/wdiff"
)

// Two images compared over a connection: the hash side (old image) gets a
// sorted wdiff holding the one chunk that differs.
func Example() {
	ctx := context.Background()
	old := bytes.Repeat([]byte{1}, 1<<20)
	cur := bytes.Clone(old)
	copy(cur[300<<10:], "new data")

	hashConn, dataConn := net.Pipe()
	defer hashConn.Close()
	defer dataConn.Close()
	go func() {
		// The data side, normally on the other machine.
		_, _ = hashsync.SendDiff(ctx, dataConn, dataConn, bytes.NewReader(cur), hashsync.DefaultDataOptions())
	}()

	var diff bytes.Buffer
	sw, err := wdiff.NewSortedWriter(&diff, wdiff.FileHeader{}, wdiff.DefaultCompression)
	if err != nil {
		panic(err)
	}
	st, err := hashsync.RunHashSide(ctx, hashConn, hashConn, bytes.NewReader(old),
		hashsync.Session{End: int64(len(old))}, sw, hashsync.HashOptions{})
	if err != nil {
		panic(err)
	}
	if err := sw.Close(); err != nil {
		panic(err)
	}
	fmt.Println(st.Chunks, "chunks compared,", st.DiffChunks, "sent")

	r, err := wdiff.NewSortedReader(&diff)
	if err != nil {
		panic(err)
	}
	rec, err := r.Next()
	if err != nil {
		panic(err)
	}
	fmt.Printf("record at block %d, %d blocks\n", rec.Addr, rec.Blocks)
	// Output:
	// 4 chunks compared, 1 sent
	// record at block 512, 512 blocks
}
