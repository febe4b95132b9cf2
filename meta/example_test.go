package meta_test

import (
	"bytes"
	"fmt"
	"time"

	"github.com/walb-go/walb/meta"
)

func Example() {
	at := time.Date(2017, 7, 14, 2, 40, 0, 0, time.UTC)
	d := meta.Diff{SnapB: meta.CleanSnap(10), SnapE: meta.CleanSnap(20), Mergeable: true, Timestamp: at}
	name, _ := meta.FileName(d)
	b, _ := meta.Marshal(d)
	fmt.Println(name)
	fmt.Printf("% X\n", b)
	fmt.Println(d.Listing())
	// Output:
	// 20170714024000-M--10-20.wdiff
	// 12 03 01 00 82 00 2F 68 59 11 03 0A 0A 11 03 14 14 00
	// |10|-->|20| M- 2017-07-14T02:40:00 0
}

func ExampleDiffSet() {
	at := func(s int64) time.Time { return time.Unix(1500000000+s, 0).UTC() }
	diff := func(b, e uint64, mergeable bool) meta.Diff {
		return meta.Diff{SnapB: meta.CleanSnap(b), SnapE: meta.CleanSnap(e), Mergeable: mergeable, Timestamp: at(int64(e))}
	}
	set, _ := meta.NewDiffSet(diff(0, 1, false), diff(1, 2, true), diff(2, 3, false), diff(3, 4, true))
	base := meta.NewState(meta.CleanSnap(0), at(0))

	for _, p := range set.RestorePoints(base, false) {
		fmt.Println(p)
	}
	list := set.MergeableList(0, nil)
	merged, _ := meta.MergeAll(list)
	fmt.Println("merge", list, "->", merged)
	set.Add(merged)
	fmt.Println("gc removes", set.Gc(base.SnapB))
	fmt.Println("latest", set.LatestSnap(base))
	// Output:
	// 0 2017-07-14T02:40:00 0
	// 2 2017-07-14T02:40:02 1
	// 4 2017-07-14T02:40:04 1
	// merge [|0|-->|1| |1|-->|2|] -> |0|-->|2|
	// gc removes [|0|-->|1| |1|-->|2|]
	// latest |4|
}

func ExampleEncoder() {
	var b bytes.Buffer
	e := meta.NewEncoder(&b)
	e.Strings([]string{"get", "restorable", "vol0"})
	e.U32(4294967096) // u32: the top bits fold into the 16-bit signed form
	e.I32(-200)
	fmt.Printf("% X\n", b.Bytes())

	d := meta.NewDecoder(&b)
	args, _ := d.Strings(16, 64)
	u, _ := d.U32()
	i, err := d.I32()
	fmt.Println(args, u, i, err)
	// Output:
	// 03 03 67 65 74 0A 72 65 73 74 6F 72 61 62 6C 65 04 76 6F 6C 30 85 38 FF 85 38 FF
	// [get restorable vol0] 4294967096 -200 <nil>
}
