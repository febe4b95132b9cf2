package meta

import (
	"bytes"
	"testing"

	"github.com/pkg/errors"
)

// FuzzDecodeVarint: whatever decodes re-encodes to the bytes it came from
// (only canonical forms are accepted), for every integer kind.
func FuzzDecodeVarint(f *testing.F) {
	for _, s := range []string{"00", "7F", "8080", "810001", "8200000100", "830000000001000000", "FF", "8480",
		"8538FF", "8680000000", "84", "8305", "870000000000000080", "8005"} {
		f.Add(unhex(f, s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, k := range []intKind{kindU32, kindI32, kindU64, kindI64} {
			d := NewDecoder(bytes.NewReader(b))
			x, err := decodeKind(d, k)
			if err != nil {
				continue
			}
			if x != normalize(x, k) {
				t.Fatalf("%s: value %#x not normalized", kindNames[k], x)
			}
			var out bytes.Buffer
			if err := encodeKind(NewEncoder(&out), k, x); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(out.Bytes(), b[:d.Offset()]) {
				t.Fatalf("%s: % x decoded to %#x, re-encodes to % x", kindNames[k], b[:d.Offset()], x, out.Bytes())
			}
		}
	})
}

// FuzzDecodeMeta: every record that decodes is valid and re-encodes to the
// exact input; nothing panics.
func FuzzDecodeMeta(f *testing.F) {
	for _, v := range []Encodable{
		Diff{SnapB: sn(10), SnapE: sn(20), Mergeable: true, Timestamp: ts(1500000000)},
		Diff{SnapB: sn(1, 2), SnapE: sn(3, 4), CompDiff: true, DataSize: 4096},
		NewApplyingState(sn(0, 10), sn(25), ts(1)), DefaultState(), CleanSnap(7), DefaultLsidGid(),
		LsidGid{Lsid: 1000, Gid: 3, Mergeable: true, Timestamp: ts(1)},
	} {
		b, err := Marshal(v)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, mk := range []func() Decodable{
			func() Decodable { return new(Snap) }, func() Decodable { return new(Diff) },
			func() Decodable { return new(State) }, func() Decodable { return new(LsidGid) },
		} {
			v := mk()
			if Unmarshal(b, v) != nil {
				continue
			}
			out, err := Marshal(v.(Encodable))
			if err != nil {
				t.Fatalf("decoded %T %+v does not encode: %v", v, v, err)
			}
			if !bytes.Equal(out, b) {
				t.Fatalf("%T: % x re-encodes to % x", v, b, out)
			}
		}
		// Length-prefixed reads never over-allocate or panic.
		d := NewDecoder(bytes.NewReader(b))
		d.Strings(16, 64)
	})
}

// FuzzParseFileName: accepted names are canonical (FileName gives them
// back) and describe valid diffs.
func FuzzParseFileName(f *testing.F) {
	for _, s := range []string{"20170714024000-M--10-20.wdiff", "20170714024000--C-10-12-20-25.wdiff",
		"19700101000000----0-1.wdiff", "20170714024000-M--010-20.wdiff", "20170714024000-M--10-10-20-20.wdiff",
		"tmpAbC123", "20170230024000-M--10-20.wdiff"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		d, err := ParseFileName(name)
		if err != nil {
			return
		}
		if err := d.Validate(); err != nil {
			t.Fatalf("%q parsed to invalid %v: %v", name, d, err)
		}
		back, err := FileName(d)
		if err != nil || back != name {
			t.Fatalf("%q parsed to %v, formats to %q (%v)", name, d, back, err)
		}
	})
}

// FuzzOpenQueue: any file content either is refused with ErrCorrupt or
// opens to a queue that is then clean on reopen, keeps working, and
// survives its own writes.
func FuzzOpenQueue(f *testing.F) {
	img, _ := smallQueue(f, 3)
	f.Add(img)
	f.Add(newQueueImage(0))
	one, _ := smallQueue(f, 1)
	f.Add(one)
	f.Add(expectedImage(0x12345678, 40, [][]byte{{0x14, 0x03, 0x00, 0x00, 0x05, 0x06}}, 22))
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) > 1<<16 {
			return
		}
		q, m, err := openMem(t, b)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) {
				t.Fatalf("open failed without ErrCorrupt: %v", err)
			}
			return
		}
		items := nonNil(q.Items())
		again, err := openQueueIO(newMemFile(m.data), true)
		if err != nil || !again.Recovery().Clean() || !equalRecs(items, nonNil(again.Items())) {
			t.Fatalf("reopen after repair: err %v recovery %v items %v vs %v", err, again, items, again)
		}
		if err := again.PushFront(lg(1)); err != nil {
			t.Fatal(err)
		}
		if err := again.PopBack(); err != nil {
			t.Fatal(err)
		}
		third, err := openQueueIO(newMemFile(again.f.(*memFile).data), false)
		if err != nil || !third.Recovery().Clean() || len(third.Items()) != len(items) {
			t.Fatalf("after push/pop: %v %v", err, third)
		}
	})
}
