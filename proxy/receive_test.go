package proxy

import (
	"bytes"
	"context"
	"io"
	"math/rand/v2"
	"os"
	"testing"
	"testing/iotest"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/server"
	"github.com/walb-go/walb/wdiff"
	"github.com/walb-go/walb/wire"
	"github.com/walb-go/walb/wlog"
)

// §4.4: a transfer becomes one indexed wdiff, hard-linked into every
// archive queue and gone from received/; its content equals the reference
// conversion of the same log.
func TestReceiveMakesIndexedWdiffInEveryQueue(t *testing.T) {
	for _, pbs := range []uint32{512, 4096} {
		t.Run("pbs"+itoa(int(pbs)), func(t *testing.T) {
			arch := newFakeArchive()
			arch.setReply(func(WdiffRequest) error { return remote(wire.ErrSyncing) }) // keep the queues
			cfg := testConfig(t, arch)
			cfg.Delay, cfg.MaxDelay = 1<<40, 1<<40 // one try, then a long backoff
			p := openTest(t, cfg)
			startedVolume(t, p, "v0", "a0", "a1")
			g := newWlogGen(pbs)
			packs := g.packs(t, rand.New(rand.NewPCG(1, uint64(pbs))), 30)
			want := testDiff(1, true)
			got, err := receive(context.Background(), p, "v0", g.header(), bytes.NewReader(packs), want)
			require.NoError(t, err)
			require.True(t, got.Equal(want))

			name, err := meta.FileName(want)
			require.NoError(t, err)
			require.Empty(t, wdiffNames(t, volPath(p, "v0", "received")))
			p0 := volPath(p, "v0", "sendto", "a0", name)
			p1 := volPath(p, "v0", "sendto", "a1", name)
			same, err := sameFile(p0, p1)
			require.NoError(t, err)
			require.True(t, same, "the queues share one inode")
			st, err := os.Stat(p0)
			require.NoError(t, err)
			require.EqualValues(t, st.Size(), got.DataSize)

			// Reference: the same log converted offline.
			wl := append((&wlog.FileHeader{Salt: g.salt, PBS: pbs, UUID: wlog.UUID(g.uuid), BeginLsid: 1000, EndLsid: wlog.InvalidLsid}).Marshal(), packs...)
			var ref bytes.Buffer
			_, err = wdiff.ConvertWlogs(context.Background(), []wdiff.WlogInput{{Name: "ref", R: bytes.NewReader(wl)}}, &ref,
				wdiff.ConvertOptions{Indexed: true, Compression: DefaultCompression, MaxIOBlocks: wdiff.DefaultMaxIOBlocks})
			require.NoError(t, err)
			data, err := os.ReadFile(p0)
			require.NoError(t, err)
			require.Equal(t, ref.Bytes(), data)
			r, err := wdiff.NewReader(bytes.NewReader(data), int64(len(data)))
			require.NoError(t, err)
			require.Equal(t, wdiff.TypeIndexed, r.Header().Type)
			require.Equal(t, [16]byte(g.uuid), r.Header().UUID)
			require.Equal(t, g.img, applyAll(t, [][]byte{data}))

			size, err := p.SizeLb("v0")
			require.NoError(t, err)
			require.EqualValues(t, testVolSizeLb, size)
			require.Equal(t, StateStarted, p.State("v0"))
			for _, a := range []string{"a0", "a1"} {
				ds, err := p.Diffs("v0", a)
				require.NoError(t, err)
				require.Len(t, ds, 1)
			}
		})
	}
}

// An empty transfer (no logpack) is a valid, empty diff.
func TestReceiveEmptyStream(t *testing.T) {
	arch := newFakeArchive()
	p := openTest(t, testConfig(t, arch))
	startedVolume(t, p, "v0", "a0")
	g := newWlogGen(512)
	_, err := receive(context.Background(), p, "v0", g.header(), bytes.NewReader(nil), testDiff(1, true))
	require.NoError(t, err)
	waitFor(t, "the empty diff to be sent", func() bool { return len(arch.received()) == 1 })
	require.Equal(t, make([]byte, testVolSizeLb*512), applyAll(t, [][]byte{arch.received()[0].data}))
}

// Every parser input reaches ReadPacks through short reads too.
func TestReceiveShortReads(t *testing.T) {
	for name, wrap := range map[string]func(io.Reader) io.Reader{
		"one-byte": iotest.OneByteReader,
		"half":     iotest.HalfReader,
		"data-err": iotest.DataErrReader,
	} {
		t.Run(name, func(t *testing.T) {
			arch := newFakeArchive()
			p := openTest(t, testConfig(t, arch))
			startedVolume(t, p, "v0", "a0")
			g := newWlogGen(512)
			packs := g.packs(t, rand.New(rand.NewPCG(2, 3)), 10)
			_, err := receive(context.Background(), p, "v0", g.header(), wrap(bytes.NewReader(packs)), testDiff(1, true))
			require.NoError(t, err)
			waitFor(t, "the diff to be sent", func() bool { return len(arch.received()) == 1 })
			require.Equal(t, g.img, applyAll(t, [][]byte{arch.received()[0].data}))
		})
	}
}

// Bad input: every broken stream or diff is refused with ErrBadStream (or
// the reader's own error), leaves no file behind and the volume Started.
func TestReceiveRejectsBadStreams(t *testing.T) {
	g := newWlogGen(512)
	good := g.packs(t, rand.New(rand.NewPCG(5, 6)), 6)
	hdr := g.header()
	firstPack, err := wlog.ParsePackHeader(good[:512], hdr.Salt)
	require.NoError(t, err)
	firstLen := 512 * int(1+firstPack.TotalIOSize)
	flip := func(off int) []byte {
		b := bytes.Clone(good)
		b[off] ^= 0x40
		return b
	}
	var dataOff int
	for i, rec := range firstPack.Records {
		if rec.IsNormal() {
			dataOff = 512 * int(rec.LsidLocal)
			_ = i
			break
		}
	}
	require.NotZero(t, dataOff)
	end := wlog.MarshalEndBlock(512, hdr.Salt)
	// A second stream whose packs do not follow each other.
	g2 := newWlogGen(512)
	g2.lsid = 5000
	other := g2.packs(t, rand.New(rand.NewPCG(7, 8)), 1)
	dirty := testDiff(1, true)
	dirty.SnapE = meta.Snap{GidB: 1, GidE: 2}

	cases := []struct {
		name  string
		hdr   WlogHeader
		packs []byte
		diff  meta.Diff
		phase string // which step fails: "begin", "packs" or "commit"
	}{
		{"garbage", hdr, bytes.Repeat([]byte{0xA5}, 4096), testDiff(1, true), "packs"},
		{"header checksum", hdr, flip(0), testDiff(1, true), "packs"},
		{"io checksum", hdr, flip(dataOff + 3), testDiff(1, true), "packs"},
		{"wrong salt", WlogHeader{UUID: hdr.UUID, PBS: 512, Salt: hdr.Salt + 1, SizeLb: hdr.SizeLb}, good, testDiff(1, true), "packs"},
		{"truncated in header", hdr, good[:100], testDiff(1, true), "packs"},
		{"truncated in data", hdr, good[:firstLen-1], testDiff(1, true), "packs"},
		{"lsid gap", hdr, append(bytes.Clone(good), other...), testDiff(1, true), "packs"},
		{"trailing end block", hdr, append(bytes.Clone(good), end...), testDiff(1, true), "packs"},
		{"trailing bytes", hdr, append(bytes.Clone(good), 0), testDiff(1, true), "packs"},
		{"dirty diff", hdr, good, dirty, "commit"},
		{"invalid diff", hdr, good, meta.Diff{SnapB: meta.CleanSnap(3), SnapE: meta.CleanSnap(2), Timestamp: baseTime}, "commit"},
		{"bad pbs", WlogHeader{UUID: hdr.UUID, PBS: 1000, Salt: hdr.Salt}, good, testDiff(1, true), "begin"},
		{"huge max log size", WlogHeader{UUID: hdr.UUID, PBS: 512, Salt: hdr.Salt, MaxLogSizePb: 1 << 62}, good, testDiff(1, true), "begin"},
	}
	arch := newFakeArchive()
	p := openTest(t, testConfig(t, arch))
	startedVolume(t, p, "v0", "a0")
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			r, err := p.BeginReceive(ctx, "v0", tc.hdr)
			if tc.phase == "begin" {
				require.ErrorIs(t, err, ErrBadStream)
				return
			}
			require.NoError(t, err)
			defer r.Abort()
			err = r.ReadPacks(bytes.NewReader(tc.packs))
			if tc.phase == "packs" {
				require.ErrorIs(t, err, ErrBadStream)
				require.ErrorIs(t, err, wire.ErrBadRequest, "the client gets bad-request")
			} else {
				require.NoError(t, err)
				_, err = r.Commit(tc.diff)
				require.ErrorIs(t, err, ErrBadStream)
			}
			require.Equal(t, StateStarted, p.State("v0"))
			require.Empty(t, dirNames(t, volPath(p, "v0", "received")), "no temporary file left")
			require.Empty(t, wdiffNames(t, volPath(p, "v0", "sendto", "a0")))
		})
	}
	require.Zero(t, arch.numCalls())
}

// A reader failing mid-stream (the connection) aborts the transfer with its
// own error.
func TestReceiveSourceErrorAborts(t *testing.T) {
	p := openTest(t, testConfig(t, newFakeArchive()))
	startedVolume(t, p, "v0", "a0")
	g := newWlogGen(512)
	packs := g.packs(t, rand.New(rand.NewPCG(9, 9)), 5)
	boom := io.ErrClosedPipe
	_, err := receive(context.Background(), p, "v0", g.header(), io.MultiReader(bytes.NewReader(packs[:700]), iotest.ErrReader(boom)), testDiff(1, true))
	require.ErrorIs(t, err, boom)
	require.NotErrorIs(t, err, ErrBadStream)
	require.Empty(t, dirNames(t, volPath(p, "v0", "received")))
	require.Equal(t, StateStarted, p.State("v0"))
}

// Acceptance (§4.4): Started and not stopping, -fg, free space; bad names
// and unknown volumes are refused.
func TestReceiveAcceptance(t *testing.T) {
	ctx := context.Background()
	cfg := testConfig(t, newFakeArchive())
	cfg.MaxForeground = 1
	p := openTest(t, cfg)
	startedVolume(t, p, "v0", "a0")
	require.NoError(t, p.AddArchiveInfo(ctx, "v1", "a0", ArchiveInfo{Host: "h", Port: 1, Compression: DefaultCompression}, false))
	hdr := newWlogGen(512).header()

	_, err := p.BeginReceive(ctx, "bad/name", hdr)
	require.ErrorIs(t, err, server.ErrBadVolumeName)
	_, err = p.BeginReceive(ctx, "", hdr)
	require.ErrorIs(t, err, server.ErrBadVolumeName)
	_, err = p.BeginReceive(ctx, "unknown", hdr)
	require.ErrorIs(t, err, server.ErrWrongState)
	_, err = p.BeginReceive(ctx, "v1", hdr) // Stopped
	require.ErrorIs(t, err, server.ErrWrongState)

	r, err := p.BeginReceive(ctx, "v0", hdr)
	require.NoError(t, err)
	require.Equal(t, StateWlogRecv, p.State("v0"))
	_, err = p.BeginReceive(ctx, "v0", hdr)
	require.ErrorIs(t, err, server.ErrTooManyTasks, "-fg 1 is taken")
	r.Abort()
	require.Equal(t, StateStarted, p.State("v0"))

	huge := hdr
	huge.MaxLogSizePb = 1 << 50 // 512 PiB of 512-byte blocks
	_, err = p.BeginReceive(ctx, "v0", huge)
	require.ErrorIs(t, err, ErrNoSpace)
	require.Equal(t, StateStarted, p.State("v0"))

	// The slot was given back each time.
	r, err = p.BeginReceive(ctx, "v0", hdr)
	require.NoError(t, err)
	r.Abort()
}

// A resend of a range after a lost ACK replaces the queued copy, and the
// size file follows the largest announced size.
func TestReceiveDuplicateRangeAndGrow(t *testing.T) {
	ctx := context.Background()
	arch := newFakeArchive()
	arch.setReply(func(WdiffRequest) error { return remote(wire.ErrSyncing) })
	cfg := testConfig(t, arch)
	cfg.Delay, cfg.MaxDelay = 1<<40, 1<<40
	p := openTest(t, cfg)
	startedVolume(t, p, "v0", "a0")
	g := newWlogGen(512)
	packs := g.packs(t, rand.New(rand.NewPCG(1, 1)), 3)
	d := testDiff(1, true)
	_, err := receive(ctx, p, "v0", g.header(), bytes.NewReader(packs), d)
	require.NoError(t, err)
	// The same range again, stamped later: one file remains, the new one.
	d2 := d
	d2.Timestamp = d.Timestamp.Add(time.Hour)
	hdr := g.header()
	hdr.SizeLb = 2 * testVolSizeLb
	_, err = receive(ctx, p, "v0", hdr, bytes.NewReader(packs), d2)
	require.NoError(t, err)
	name2, _ := meta.FileName(d2)
	require.Equal(t, []string{name2}, wdiffNames(t, volPath(p, "v0", "sendto", "a0")))
	ds, err := p.Diffs("v0", "a0")
	require.NoError(t, err)
	require.Len(t, ds, 1)
	require.True(t, ds[0].Timestamp.Equal(d2.Timestamp))
	size, err := p.SizeLb("v0")
	require.NoError(t, err)
	require.EqualValues(t, 2*testVolSizeLb, size)
	// A smaller announced size does not shrink it.
	_, err = receive(ctx, p, "v0", g.header(), bytes.NewReader(nil), testDiff(2, true))
	require.NoError(t, err)
	size, _ = p.SizeLb("v0")
	require.EqualValues(t, 2*testVolSizeLb, size)
	var v uint64
	require.NoError(t, meta.LoadFunc(volPath(p, "v0", "size"), func(d *meta.Decoder) error {
		var err error
		v, err = d.U64()
		return err
	}))
	require.EqualValues(t, 2*testVolSizeLb, v)
}
