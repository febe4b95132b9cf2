package archive

import (
	"bytes"
	"context"
	"encoding/binary"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pkg/errors"
	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/checksum"
	"github.com/walb-go/walb/hashsync"
	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/server"
	"github.com/walb-go/walb/wdiff"
	"github.com/walb-go/walb/wire"
)

// runHashCommand runs hash-sync (begun, then aborted) or bhash (whole) on
// the table volume (see tableVol.run).
func (tv *tableVol) runHashCommand(ctx context.Context, cmd Command) error {
	e := tv.env.e
	switch cmd {
	case CmdHashSync:
		r, err := e.BeginHashSync(ctx, tvol, tv.m.sizeLB)
		if err == nil {
			r.Abort()
		}
		return err
	case CmdBlockHash:
		n := 0
		err := e.BlockHash(ctx, tvol, 2, hashsync.BHashOptions{Chunk: 64 << 10}, func(uint64, [hashsync.SipHash128Size]byte) error {
			n++
			return nil
		})
		if err == nil && n != 2 {
			return errors.Errorf("bhash gave %d hashes of 64 KiB for 128 KiB", n)
		}
		return err
	}
	panic("not a hash command: " + cmd)
}

const testChunk = 64 << 10

// diffChunks lists the chunks (of testChunk bytes) where a and b differ:
// what a hash backup must send, computed without the code under test.
func diffChunks(a, b []byte) []uint64 {
	var out []uint64
	for off := 0; off < len(b); off += testChunk {
		end := min(off+testChunk, len(b))
		if !bytes.Equal(a[off:end], b[off:end]) {
			out = append(out, uint64(off/testChunk))
		}
	}
	return out
}

// scribble changes chunk i of img (so that it differs for sure); zero
// clears it instead.
func scribble(img []byte, i int, zero bool) {
	c := img[i*testChunk : (i+1)*testChunk]
	if zero {
		clear(c)
		return
	}
	for j := 700; j < 1900; j++ {
		c[j] ^= byte(j) | 1
	}
}

// diffRecords reads the records of a stored wdiff: start block and
// length of each, and the file's uuid.
func diffRecords(t *testing.T, dir string, d meta.Diff) ([][2]uint64, [16]byte) {
	t.Helper()
	name, err := meta.FileName(d)
	require.NoError(t, err)
	f, err := wdiff.Open(filepath.Join(dir, name))
	require.NoError(t, err)
	defer f.Close()
	var out [][2]uint64
	for {
		x, err := f.Next()
		if err == io.EOF {
			break
		}
		require.NoError(t, err)
		out = append(out, [2]uint64{x.Addr, uint64(x.Blocks)})
	}
	return out, f.Header().UUID
}

// chunkRecords is what diffRecords returns for whole chunks.
func chunkRecords(chunks []uint64) [][2]uint64 {
	out := [][2]uint64{}
	for _, c := range chunks {
		out = append(out, [2]uint64{c * testChunk / lbSize, testChunk / lbSize})
	}
	return out
}

// tcpRestoreSHA restores gid over the wire and hashes the image.
func (ta *tcpArchive) restoreSHA(ctx context.Context, vol string, gid uint64) string {
	ta.t.Helper()
	ta.accept(ctx, "restore", vol, u64s(gid))
	waitFor(ta.t, "restore", func() bool { return ta.getU64(ctx, "num-action", vol, ActionRestore) == 0 })
	sha := shaOf(readAllFile(ta.t, ta.getString(ctx, "restored-path", vol, u64s(gid))))
	ta.ok(ctx, "del-restored", vol, u64s(gid))
	return sha
}

// tcpEnv gives a running server's engine the snapshot helpers of testEnv.
func (ta *tcpArchive) env() *testEnv {
	return &testEnv{t: ta.t, root: ta.root, e: ta.s.Engine()}
}

// TestHashSyncOverTCP runs hash backups (system.md §3.7, §6.5
// dirty-hash-sync2) over TCP with the storage's client API: the device
// lost some writes the archive has and has some the archive lacks; only
// the differing chunks travel and are stored, as the dirty diff
// latest -> |gidB,gidE| (non-mergeable from a clean snapshot, mergeable
// from a dirty one), which becomes restorable once the log diffs from
// gidB pass gidE. bhash over the wire matches the bhash of the model.
func TestHashSyncOverTCP(t *testing.T) {
	root := t.TempDir()
	ta := startArchive(t, root, nil)
	ctx := testCtx(t)
	const vol = "hs"
	m := newModel(77, 8192) // 4 MiB: 64 chunks
	copt := ClientOptions{ClientID: "s0"}
	ta.ok(ctx, "init-vol", vol)
	m.record(0)
	require.NoError(t, SendFullSync(ctx, ta.addr, vol, bytes.NewReader(m.img), m.sizeLB, m.uuid,
		func(context.Context) (meta.Snap, error) { return meta.CleanSnap(0), nil }, FullSyncOptions{ClientOptions: copt}))
	for g := uint64(0); g < 2; g++ {
		hdr := WdiffHeader{Sender: SenderProxy, UUID: m.uuid, SizeLB: m.sizeLB, Diff: cleanDiff(g, g+1, false)}
		reply, err := SendWdiff(ctx, ta.addr, vol, hdr, bytes.NewReader(m.nextWdiff(t, 30)), copt)
		require.NoError(t, err)
		require.Equal(t, ReplyAccept, reply)
		m.record(g + 1)
	}
	archived := bytes.Clone(m.img) // the archive's image at |2|

	// The device diverged (its logs were lost): some chunks changed, one
	// was cleared.
	for _, i := range []int{0, 3, 17, 40, 63} {
		scribble(m.img, i, false)
	}
	scribble(m.img, 20, true)
	want := diffChunks(archived, m.img)
	require.Len(t, want, 6)
	m.uuid = meta.UUID{0xa5, 1, 2, 3}
	ts := time.Unix(1700005000, 0).UTC()
	before := ta.env().dirSnapshot()

	h, err := DialHashSync(ctx, ta.addr, vol, m.sizeLB, HashSyncOptions{ClientOptions: copt, ChunkSize: testChunk, Timestamp: ts})
	require.NoError(t, err)
	defer h.Close()
	require.Equal(t, meta.CleanSnap(2), h.From())
	require.Equal(t, StateHashSync, ta.getString(ctx, "state", vol))
	// Proxies are told to wait, and a second backup is refused.
	hdr := WdiffHeader{Sender: SenderProxy, UUID: m.uuid, SizeLB: m.sizeLB, Diff: cleanDiff(2, 3, false)}
	other := newModel(1, m.sizeLB)
	other.uuid = m.uuid
	reply, _ := SendWdiff(ctx, ta.addr, vol, hdr, bytes.NewReader(other.nextWdiff(t, 1)), copt)
	require.Equal(t, ReplySyncing, reply)
	_, err = DialHashSync(ctx, ta.addr, vol, m.sizeLB, HashSyncOptions{ClientOptions: copt})
	require.ErrorIs(t, err, wire.ErrWrongState)

	require.NoError(t, h.SendUUID(ctx, m.uuid))
	var progress []int64
	st, err := h.SendDiff(ctx, bytes.NewReader(m.img), hashsync.DataOptions{Progress: func(s hashsync.Stats) { progress = append(progress, s.Offset) }})
	require.NoError(t, err)
	require.EqualValues(t, len(want), st.DiffChunks)
	require.EqualValues(t, 1, st.ZeroChunks)
	require.EqualValues(t, 64, st.Chunks)
	require.NotEmpty(t, progress)
	require.EqualValues(t, len(m.img), progress[len(progress)-1])
	snap := meta.Snap{GidB: 3, GidE: 5}
	require.NoError(t, h.Finish(ctx, snap))
	h.Close()

	require.Equal(t, StateArchived, ta.getString(ctx, "state", vol))
	require.Equal(t, m.uuid.String(), ta.getString(ctx, "uuid", vol))
	require.EqualValues(t, 0, ta.getU64(ctx, "progress", vol))
	d := meta.Diff{SnapB: meta.CleanSnap(2), SnapE: snap, Timestamp: ts}
	e := ta.s.Engine()
	got, err := e.Diffs(vol, 2, 3)
	require.NoError(t, err)
	require.Len(t, got, 1)
	require.True(t, got[0].Equal(d), "%s", got[0])
	require.False(t, got[0].Mergeable, "a diff from a clean snapshot is not mergeable")
	require.Equal(t, ts, got[0].Timestamp)
	recs, uuid := diffRecords(t, filepath.Join(root, "base", vol), got[0])
	require.Equal(t, chunkRecords(want), recs, "exactly the differing chunks")
	require.Equal(t, [16]byte(m.uuid), uuid)
	require.Equal(t, []string{"0", "1", "2"}, restorableList(ta, ctx, vol), "|3,5| is dirty")
	// Nothing but the new diff changed on disk.
	after := ta.env().dirSnapshot()
	for k, v := range before {
		if strings.HasPrefix(k, "base/"+vol+"/") && !strings.HasSuffix(k, ".wdiff") && !strings.HasSuffix(k, "uuid") {
			require.Equal(t, v, after[k], k)
		}
	}

	// A second hash backup from the dirty |3,5|: a few more lost writes.
	prev := bytes.Clone(m.img)
	scribble(m.img, 9, false)
	scribble(m.img, 33, false)
	h, err = DialHashSync(ctx, ta.addr, vol, m.sizeLB, HashSyncOptions{ClientOptions: copt, ChunkSize: testChunk, Timestamp: ts.Add(time.Hour)})
	require.NoError(t, err)
	defer h.Close()
	require.Equal(t, snap, h.From())
	require.NoError(t, h.SendUUID(ctx, m.uuid))
	st, err = h.SendDiff(ctx, bytes.NewReader(m.img), hashsync.DataOptions{})
	require.NoError(t, err)
	require.EqualValues(t, 2, st.DiffChunks)
	require.NoError(t, h.Finish(ctx, meta.Snap{GidB: 6, GidE: 7}))
	got, err = e.Diffs(vol, 3, 4)
	require.NoError(t, err)
	require.Len(t, got, 1)
	require.Equal(t, "|3,5|-->|6,7|", got[0].String())
	require.True(t, got[0].Mergeable, "a diff from a dirty snapshot is mergeable")
	recs, _ = diffRecords(t, filepath.Join(root, "base", vol), got[0])
	require.Equal(t, chunkRecords(diffChunks(prev, m.img)), recs)

	// The logs from gidB = 6 onwards arrive (the storage writes meanwhile):
	// once they pass gidE = 7 the image is clean and restorable.
	hdr.Diff = cleanDiff(6, 8, false)
	reply, err = SendWdiff(ctx, ta.addr, vol, hdr, bytes.NewReader(m.nextWdiff(t, 25)), copt)
	require.NoError(t, err)
	require.Equal(t, ReplyAccept, reply)
	m.record(8)
	require.Equal(t, []string{"0", "1", "2", "8"}, restorableList(ta, ctx, vol))
	require.Equal(t, m.sha[8], ta.restoreSHA(ctx, vol, 8))
	require.Equal(t, m.sha[1], ta.restoreSHA(ctx, vol, 1), "older snapshots still restore")

	// bhash over the wire: per 64 KiB and whole, as the tool prints them.
	var wantLines []string
	require.NoError(t, hashsync.BHash(ctx, bytes.NewReader(m.img), int64(len(m.img)), hashsync.BHashOptions{Chunk: testChunk},
		func(addr uint64, sum [hashsync.SipHash128Size]byte) error {
			wantLines = append(wantLines, FormatBHash(true, addr, sum))
			return nil
		}))
	require.Len(t, wantLines, 64)
	require.Equal(t, wantLines, ta.bhash(ctx, vol, "8", "64k"))
	whole := ta.bhash(ctx, vol, "8")
	require.Len(t, whole, 1)
	require.Len(t, whole[0], 32)
	half := ta.bhash(ctx, vol, "8", "64k", "2m")
	require.Equal(t, wantLines[:32], half)
	_, _, err = ta.cmd(ctx, CmdNameBHash, vol, "5")
	require.ErrorIs(t, err, wire.ErrBadRequest, "a dirty gid is not restorable")
	_, _, err = ta.cmd(ctx, CmdNameBHash, vol, "8", "1000")
	require.ErrorIs(t, err, wire.ErrBadRequest)
	// More lines than a 64 KiB reply frame holds.
	c, err := wire.Dial(ctx, ta.addr, "t", CmdNameBHash, &wire.Options{MaxFrame: wire.MinMaxFrame}, vol, "8", "512")
	require.NoError(t, err)
	_, err = c.RecvReply(ctx)
	c.Close()
	require.ErrorIs(t, err, wire.ErrBadRequest)
}

func restorableList(ta *tcpArchive, ctx context.Context, vol string) []string {
	var out []string
	for _, l := range ta.getStrings(ctx, "restorable", vol, "all") {
		out = append(out, strings.Fields(l)[0])
	}
	return out
}

// bhash runs the bhash command and returns its lines.
func (ta *tcpArchive) bhash(ctx context.Context, args ...string) []string {
	ta.t.Helper()
	r, c, err := ta.cmd(ctx, CmdNameBHash, args...)
	require.NoError(ta.t, err, "bhash %v", args)
	defer c.Close()
	require.Equal(ta.t, wire.ReplyOK, r)
	lines, err := c.RecvStrings(ctx)
	require.NoError(ta.t, err)
	return lines
}

// failingReader fails reads at or past off (the device breaking, or the
// storage dying, midway); hook runs once at the first such read.
type failingReader struct {
	r    io.ReaderAt
	off  int64
	hook func()
	once sync.Once
}

func (f *failingReader) ReadAt(p []byte, off int64) (int, error) {
	if off+int64(len(p)) > f.off {
		if f.hook != nil {
			f.once.Do(f.hook)
		}
		return 0, errors.New("test: device read error")
	}
	return f.r.ReadAt(p, off)
}

// TestHashSyncRefusals: every refusal (state, running action, stopping,
// arguments, size) and every failure after accept (bad snapshot, client
// gone before the uuid, after it, mid-stream, a device read error) leaves
// the archive exactly as it was: Archived, the same diffs, no temporary
// file or image (system.md §7, scenario e13); the next backup works.
func TestHashSyncRefusals(t *testing.T) {
	root := t.TempDir()
	ta := startArchive(t, root, nil)
	ctx := testCtx(t)
	const vol = "hr"
	m := newModel(5, 2048)
	opt := HashSyncOptions{ChunkSize: testChunk}
	_, err := DialHashSync(ctx, ta.addr, "nosuch", m.sizeLB, opt)
	require.ErrorIs(t, err, wire.ErrWrongState)
	ta.ok(ctx, "init-vol", vol)
	_, err = DialHashSync(ctx, ta.addr, vol, m.sizeLB, opt)
	require.ErrorIs(t, err, wire.ErrWrongState, "SyncReady")
	require.NoError(t, SendFullSync(ctx, ta.addr, vol, bytes.NewReader(m.img), m.sizeLB, m.uuid,
		func(context.Context) (meta.Snap, error) { return meta.CleanSnap(0), nil }, FullSyncOptions{}))
	hdr := WdiffHeader{Sender: SenderProxy, UUID: m.uuid, SizeLB: m.sizeLB, Diff: cleanDiff(0, 1, false)}
	_, err = SendWdiff(ctx, ta.addr, vol, hdr, bytes.NewReader(m.nextWdiff(t, 20)), ClientOptions{})
	require.NoError(t, err)
	m.record(1)
	env := ta.env()
	before := env.dirSnapshot()
	unchanged := func(what string) {
		t.Helper()
		waitFor(t, "Archived after "+what, func() bool { return ta.getString(ctx, "state", vol) == StateArchived })
		require.Equal(t, before, env.dirSnapshot(), what)
	}
	vs := ta.s.Engine().Volumes()

	end, err := vs.StartAction(vol, ActionMerge, server.Guard{})
	require.NoError(t, err)
	_, err = DialHashSync(ctx, ta.addr, vol, m.sizeLB, opt)
	end()
	require.ErrorIs(t, err, wire.ErrActionRunning)
	unchanged("action running")
	endStop, err := vs.BeginStop(vol, server.Stopping)
	require.NoError(t, err)
	_, err = DialHashSync(ctx, ta.addr, vol, m.sizeLB, opt)
	endStop()
	require.ErrorIs(t, err, wire.ErrStopping)
	unchanged("stopping")
	_, err = DialHashSync(ctx, ta.addr, vol, 2*m.sizeLB, opt)
	require.ErrorIs(t, err, wire.ErrSmallerLvSize, "a larger device without -autoresize")
	unchanged("larger device")
	_, err = DialHashSync(ctx, ta.addr, vol, m.sizeLB, HashSyncOptions{ChunkSize: 1000})
	require.ErrorIs(t, err, ErrBadArgs, "checked by the client")
	for _, args := range [][]string{
		{vol, "2048", "1700000000"},
		{vol, "0", "1700000000", "65536"},
		{vol, "x", "1700000000", "65536"},
		{vol, "2048", "999999999999", "65536"},
		{vol, "2048", "1700000000", "0"},
		{vol, "2048", "1700000000", "1000"},
		{vol, "2048", "1700000000", "8388608"},
		{"../x", "2048", "1700000000", "65536"},
	} {
		c, err := wire.Dial(ctx, ta.addr, "t", ProtoHashSync, nil, args...)
		require.NoError(t, err)
		err = c.ExpectAccept(ctx)
		c.Close()
		require.ErrorIs(t, err, wire.ErrBadRequest, "%v", args)
	}
	unchanged("bad arguments")

	// Failures after accept.
	device := bytes.Clone(m.img)
	scribble(device, 2, false)
	scribble(device, 13, false)
	newUUID := meta.UUID{9, 9}
	cases := []struct {
		name string
		run  func(h *HashSyncClient) error
	}{
		{"gone before the uuid", func(h *HashSyncClient) error { return h.Close() }},
		{"gone after the uuid", func(h *HashSyncClient) error {
			require.NoError(t, h.SendUUID(ctx, newUUID))
			return h.Close()
		}},
		{"device read error", func(h *HashSyncClient) error {
			require.NoError(t, h.SendUUID(ctx, newUUID))
			_, err := h.SendDiff(ctx, &failingReader{r: bytes.NewReader(device), off: 512 << 10}, hashsync.DataOptions{})
			require.Error(t, err)
			return h.Close()
		}},
		{"disconnect mid-stream", func(h *HashSyncClient) error {
			require.NoError(t, h.SendUUID(ctx, newUUID))
			_, err := h.SendDiff(ctx, &failingReader{r: bytes.NewReader(device), off: 512 << 10, hook: func() { h.c.Close() }}, hashsync.DataOptions{})
			require.Error(t, err)
			return nil
		}},
		{"gidB not from.gidE+1", func(h *HashSyncClient) error {
			require.NoError(t, h.SendUUID(ctx, newUUID))
			_, err := h.SendDiff(ctx, bytes.NewReader(device), hashsync.DataOptions{})
			require.NoError(t, err)
			err = h.Finish(ctx, meta.Snap{GidB: 3, GidE: 4})
			require.ErrorIs(t, err, wire.ErrBadRequest)
			return h.Close()
		}},
		{"gidE < gidB", func(h *HashSyncClient) error {
			require.NoError(t, h.SendUUID(ctx, newUUID))
			_, err := h.SendDiff(ctx, bytes.NewReader(device), hashsync.DataOptions{})
			require.NoError(t, err)
			require.Error(t, h.Finish(ctx, meta.Snap{GidB: 2, GidE: 1}), "refused by the encoder")
			return h.Close()
		}},
		{"gone before the snapshot", func(h *HashSyncClient) error {
			require.NoError(t, h.SendUUID(ctx, newUUID))
			_, err := h.SendDiff(ctx, bytes.NewReader(device), hashsync.DataOptions{})
			require.NoError(t, err)
			return h.Close()
		}},
	}
	for _, tc := range cases {
		h, err := DialHashSync(ctx, ta.addr, vol, m.sizeLB, opt)
		require.NoError(t, err, tc.name)
		require.Equal(t, meta.CleanSnap(1), h.From())
		require.NoError(t, tc.run(h), tc.name)
		unchanged(tc.name)
	}

	// The retry succeeds.
	h, err := DialHashSync(ctx, ta.addr, vol, m.sizeLB, opt)
	require.NoError(t, err)
	defer h.Close()
	require.NoError(t, h.SendUUID(ctx, newUUID))
	st, err := h.SendDiff(ctx, bytes.NewReader(device), hashsync.DataOptions{})
	require.NoError(t, err)
	require.EqualValues(t, 2, st.DiffChunks)
	require.NoError(t, h.Finish(ctx, meta.Snap{GidB: 2, GidE: 2}))
	require.Equal(t, newUUID.String(), ta.getString(ctx, "uuid", vol))
	// A clean end snapshot: restorable at once, and equal to the device.
	require.Equal(t, shaOf(device), ta.restoreSHA(ctx, vol, 2))
}

// localHashSync runs the hash side of a backup through the engine, with
// the data side run in-process over cur; mangle, if set, alters the data
// stream first. It returns the receiver, received or failed, for the
// caller to commit or abort.
func localHashSync(t testing.TB, e *Engine, vol string, cur []byte, uuid meta.UUID, mangle func([]byte) []byte) (*HashSyncRecv, error) {
	t.Helper()
	ctx := testCtx(t)
	r, err := e.BeginHashSync(ctx, vol, uint64(len(cur))/lbSize)
	require.NoError(t, err)
	require.NoError(t, r.Open(uuid))
	_, err = r.Receive(testChunk, func(ctx context.Context, old io.ReaderAt, s hashsync.Session, sink hashsync.Sink, opt hashsync.HashOptions) (hashsync.Stats, error) {
		data := dataStream(t, ctx, old, s, cur)
		if mangle != nil {
			data = mangle(data)
		}
		return hashsync.RunHashSide(ctx, bytes.NewReader(data), io.Discard, old, s, sink, opt)
	})
	return r, err
}

// dataStream returns the data stream a data side with cur sends for the
// session s over old.
func dataStream(t testing.TB, ctx context.Context, old io.ReaderAt, s hashsync.Session, cur []byte) []byte {
	var hashes, data bytes.Buffer
	_, _, err := hashsync.SendHashes(ctx, &hashes, old, s, hashsync.HashOptions{})
	require.NoError(t, err)
	_, err = hashsync.SendDiff(ctx, &hashes, &data, bytes.NewReader(cur), hashsync.DefaultDataOptions())
	require.NoError(t, err)
	return data.Bytes()
}

// TestHashSyncCorruptStream: a data stream with any byte flipped, or cut
// anywhere, is refused with ErrCorruptStream and changes nothing.
func TestHashSyncCorruptStream(t *testing.T) {
	env := newEnv(t, nil)
	ctx := testCtx(t)
	const vol = "hc"
	m := newModel(3, 1024)
	env.initArchived(ctx, vol, m)
	dev := bytes.Clone(m.img)
	scribble(dev, 1, false)
	scribble(dev, 5, true)
	before := env.dirSnapshot()

	var n int
	r, err := localHashSync(t, env.e, vol, dev, m.uuid, func(b []byte) []byte { n = len(b); return b })
	require.NoError(t, err)
	require.EqualValues(t, 2, r.Stats().DiffChunks)
	require.NotEmpty(t, r.tmpData(t))
	r.Abort()
	require.Equal(t, before, env.dirSnapshot())

	offsets := []int{0, 5, 16, 44, 47, 48, 52, n / 3, n / 2, n - 40, n - 5, n - 1}
	for _, off := range offsets {
		r, err := localHashSync(t, env.e, vol, dev, m.uuid, func(b []byte) []byte {
			b = bytes.Clone(b)
			b[off] ^= 0x10
			return b
		})
		require.ErrorIs(t, err, ErrCorruptStream, "byte %d of %d flipped", off, n)
		r.Abort()
		require.Equal(t, before, env.dirSnapshot(), "byte %d flipped", off)
		r, err = localHashSync(t, env.e, vol, dev, m.uuid, func(b []byte) []byte { return b[:off] })
		require.ErrorIs(t, err, ErrCorruptStream, "cut at %d of %d", off, n)
		r.Abort()
		require.Equal(t, before, env.dirSnapshot(), "cut at %d", off)
	}
	// Commit refuses after a failed Receive, and the steps are ordered.
	r, err = localHashSync(t, env.e, vol, dev, m.uuid, func(b []byte) []byte { return b[:n/2] })
	require.Error(t, err)
	require.ErrorIs(t, r.Commit(meta.CleanSnap(1), time.Now()), ErrBadArgs)
	require.Equal(t, before, env.dirSnapshot())
	r, err = env.e.BeginHashSync(ctx, vol, m.sizeLB)
	require.NoError(t, err)
	_, err = r.Receive(testChunk, nil)
	require.ErrorIs(t, err, ErrBadArgs, "Receive before Open")
	require.NoError(t, r.Open(m.uuid))
	_, err = r.Receive(1000, nil)
	require.ErrorIs(t, err, ErrBadArgs, "chunk size")
	r.Abort()
	require.Equal(t, before, env.dirSnapshot())
}

// tmpData reads the received temporary wdiff.
func (r *HashSyncRecv) tmpData(t *testing.T) []byte {
	b, err := os.ReadFile(r.tmp.Name())
	require.NoError(t, err)
	return b
}

// TestHashSyncAutoResize: a device larger than the base is refused with
// smaller-lv-size unless -autoresize grows the base first; the grown area
// is compared like the rest. A smaller device is compared over its size.
func TestHashSyncAutoResize(t *testing.T) {
	env := newEnv(t, func(c *Config) { c.AutoResize = true })
	ctx := testCtx(t)
	const vol = "ha"
	m := newModel(8, 1024)
	env.initArchived(ctx, vol, m)
	dev := append(bytes.Clone(m.img), make([]byte, 1024*lbSize)...)
	scribble(dev, 12, false) // in the new area
	scribble(dev, 2, false)
	r, err := localHashSync(t, env.e, vol, dev, meta.UUID{1}, nil)
	require.NoError(t, err)
	require.EqualValues(t, 2, r.Stats().DiffChunks)
	require.NoError(t, r.Commit(meta.CleanSnap(1), time.Unix(1700000100, 0)))
	size, err := env.e.VolSize(vol)
	require.NoError(t, err)
	require.EqualValues(t, 2048, size)
	require.Equal(t, shaOf(dev), env.restoredSHA(ctx, vol, 1))

	// A smaller device: only its range is compared; the rest stays.
	small := bytes.Clone(dev[:1024*lbSize])
	scribble(small, 0, false)
	r, err = localHashSync(t, env.e, vol, small, meta.UUID{1}, nil)
	require.NoError(t, err)
	require.EqualValues(t, 1, r.Stats().DiffChunks)
	require.NoError(t, r.Commit(meta.CleanSnap(2), time.Unix(1700000200, 0)))
	want := append(bytes.Clone(small), dev[1024*lbSize:]...)
	require.Equal(t, shaOf(want), env.restoredSHA(ctx, vol, 2))
}

// copyTree copies the files under src to dst, as a crash would leave them
// on disk.
func copyTree(t *testing.T, src, dst string) {
	err := filepath.Walk(src, func(p string, fi os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(src, p)
		out := filepath.Join(dst, rel)
		if fi.IsDir() {
			return os.MkdirAll(out, 0o755)
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		return os.WriteFile(out, b, fi.Mode())
	})
	require.NoError(t, err)
}

// TestHashSyncCrash: a server killed in the middle of a hash backup (the
// temporary wdiff half written, the image at `from` cloned) comes back
// Archived with the diffs it had, no temporary file and no temporary
// image (system.md §7); restores and the next backup work.
func TestHashSyncCrash(t *testing.T) {
	env := newEnv(t, nil)
	ctx := testCtx(t)
	const vol = "hk"
	m := newModel(13, 2048)
	env.initArchived(ctx, vol, m)
	m.record(0)
	require.NoError(t, env.sendDiff(ctx, vol, m, cleanDiff(0, 1, false), m.nextWdiff(t, 20)))
	m.record(1)
	before := env.dirSnapshot()
	dev := bytes.Clone(m.img)
	for _, i := range []int{1, 4, 7, 9, 15} {
		scribble(dev, i, false)
	}

	crashed := t.TempDir()
	r, err := env.e.BeginHashSync(ctx, vol, m.sizeLB)
	require.NoError(t, err)
	require.NoError(t, r.Open(meta.UUID{4}))
	_, err = r.Receive(testChunk, func(ctx context.Context, old io.ReaderAt, s hashsync.Session, sink hashsync.Sink, opt hashsync.HashOptions) (hashsync.Stats, error) {
		// Store a few records, then "crash": copy the disk as it is.
		for _, i := range []uint64{1, 4} {
			b := dev[i*testChunk : (i+1)*testChunk]
			rec := wdiff.Record{Addr: i * testChunk / lbSize, Blocks: testChunk / lbSize}
			require.NoError(t, sink.WriteStored(rec, wdiff.Stored{Codec: wdiff.CodecNone, Checksum: checksum.Sum(b, 0), Data: b}))
		}
		copyTree(t, env.root, crashed)
		return hashsync.Stats{}, errors.New("test: crashed")
	})
	require.Error(t, err)
	r.Abort()
	require.Equal(t, before, env.dirSnapshot())

	var temps []string
	for _, dir := range []string{filepath.Join(crashed, "base", vol), filepath.Join(crashed, "images")} {
		ents, err := os.ReadDir(dir)
		require.NoError(t, err)
		for _, e := range ents {
			if meta.IsTempName(e.Name()) || strings.HasPrefix(e.Name(), ".imgtmp-") {
				temps = append(temps, e.Name())
			}
		}
	}
	// Without reflink the image is the base read in place under the one sorted diff: no temporary image.
	require.Len(t, temps, map[bool]int{true: 2, false: 1}[env.images.Capabilities().Reflink], "the crash left a temporary wdiff (and, with reflink, a temporary image): %v", temps)

	renv := openEnv(t, crashed, nil)
	st, err := renv.e.State(vol)
	require.NoError(t, err)
	require.Equal(t, StateArchived, st)
	snapAfter := renv.dirSnapshot()
	for k := range snapAfter {
		require.False(t, strings.Contains(k, "/tmp") || strings.Contains(k, ".imgtmp-"), "left over: %s", k)
	}
	require.Equal(t, fmtMap(before), fmtMap(snapAfter))
	require.Equal(t, m.sha[1], renv.restoredSHA(ctx, vol, 1))
	r, err = localHashSync(t, renv.e, vol, dev, meta.UUID{4}, nil)
	require.NoError(t, err)
	require.EqualValues(t, 5, r.Stats().DiffChunks)
	require.NoError(t, r.Commit(meta.CleanSnap(2), time.Unix(1700000000, 0)))
	require.Equal(t, shaOf(dev), renv.restoredSHA(ctx, vol, 2))
}

// FuzzHashSyncReceive feeds arbitrary data streams to the hash side of a
// backup (their header's seed patched to the session's, so that the
// fuzzer gets past it): it never panics, anything it refuses is
// ErrCorruptStream or the peer's own error, nothing is left behind, and
// what it accepts is a sorted wdiff of whole chunks inside the device.
func FuzzHashSyncReceive(f *testing.F) {
	env := newEnv(f, nil)
	ctx := context.Background()
	const vol = "fh"
	const sizeLB = 256
	m := newModel(31, sizeLB)
	env.initArchived(ctx, vol, m)
	for _, changed := range [][]int{{}, {0}, {1}, {0, 1}} {
		dev := bytes.Clone(m.img)
		for _, i := range changed {
			scribble(dev, i, i == 1)
		}
		s := hashsync.Session{ChunkSize: testChunk, End: sizeLB * lbSize, Seed: 1}
		f.Add(dataStream(f, ctx, bytes.NewReader(m.img), s, dev))
	}
	dir := filepath.Join(env.cfg.BaseDir, vol)
	f.Fuzz(func(t *testing.T, data []byte) {
		r, err := env.e.BeginHashSync(ctx, vol, sizeLB)
		require.NoError(t, err)
		defer r.Abort()
		require.NoError(t, r.Open(meta.UUID{1}))
		_, err = r.Receive(testChunk, func(ctx context.Context, old io.ReaderAt, s hashsync.Session, sink hashsync.Sink, opt hashsync.HashOptions) (hashsync.Stats, error) {
			data := bytes.Clone(data)
			if len(data) >= 48 {
				binary.LittleEndian.PutUint64(data[16:], s.Seed)
				binary.LittleEndian.PutUint32(data[44:], crc32.Checksum(data[:44], crc32.MakeTable(crc32.Castagnoli)))
			}
			return hashsync.RunHashSide(ctx, bytes.NewReader(data), io.Discard, old, s, sink, opt)
		})
		if err != nil {
			require.True(t, errors.Is(err, ErrCorruptStream) || errors.Is(err, hashsync.ErrRemote), "%v", err)
		} else {
			sr, err := wdiff.NewSortedReader(bytes.NewReader(r.tmpData(t)))
			require.NoError(t, err)
			for {
				x, err := sr.Next()
				if err == io.EOF {
					break
				}
				require.NoError(t, err)
				require.Zero(t, x.Addr%(testChunk/lbSize))
				require.LessOrEqual(t, x.End(), uint64(sizeLB))
			}
		}
		r.Abort()
		ents, err := os.ReadDir(dir)
		require.NoError(t, err)
		for _, e := range ents {
			require.False(t, meta.IsTempName(e.Name()), "temporary %s left", e.Name())
		}
		imgs, err := env.images.List(ctx)
		require.NoError(t, err)
		require.Equal(t, []string{baseImageName(vol)}, imgs)
		require.False(t, slices.ContainsFunc(mustReadDir(t, filepath.Join(env.root, "images")), func(n string) bool { return strings.HasPrefix(n, ".imgtmp-") }))
	})
}

func mustReadDir(t *testing.T, dir string) []string {
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// handStream builds a data stream by hand (package hashsync's layout):
// the header echoing s, one Record per rec, a Checkpoint at the end and
// DataEnd with the counts.
type handRecord struct {
	chunk uint64
	codec wdiff.Codec
	data  []byte
}

func handStream(s hashsync.Session, recs []handRecord) []byte {
	castagnoli := crc32.MakeTable(crc32.Castagnoli)
	var out []byte
	var h [48]byte
	copy(h[:], "WHSD")
	binary.LittleEndian.PutUint16(h[4:], hashsync.Version)
	h[6] = hashsync.HashXXH3
	binary.LittleEndian.PutUint32(h[8:], uint32(s.ChunkSize))
	binary.LittleEndian.PutUint64(h[16:], s.Seed)
	binary.LittleEndian.PutUint64(h[24:], uint64(s.Start))
	binary.LittleEndian.PutUint64(h[32:], uint64(s.End))
	binary.LittleEndian.PutUint32(h[44:], crc32.Checksum(h[:44], castagnoli))
	out = append(out, h[:]...)
	msg := func(t byte, body []byte) {
		start := len(out)
		out = append(out, t, 0, 0, 0)
		out = binary.LittleEndian.AppendUint32(out, uint32(len(body)))
		out = append(out, body...)
		out = binary.LittleEndian.AppendUint32(out, crc32.Checksum(out[start:], castagnoli))
	}
	for _, r := range recs {
		var b [20]byte
		binary.LittleEndian.PutUint64(b[0:], r.chunk*uint64(s.ChunkSize)/lbSize)
		binary.LittleEndian.PutUint32(b[8:], uint32(s.ChunkSize/lbSize))
		b[13] = byte(r.codec)
		binary.LittleEndian.PutUint32(b[16:], checksum.Sum(r.data, 0))
		msg(0x10, append(b[:], r.data...))
	}
	msg(0x11, binary.LittleEndian.AppendUint64(nil, uint64(s.End)))
	var end []byte
	end = binary.LittleEndian.AppendUint64(end, uint64(s.Chunks()))
	end = binary.LittleEndian.AppendUint64(end, uint64(len(recs)))
	end = binary.LittleEndian.AppendUint64(end, uint64(len(recs)*s.ChunkSize))
	msg(0x12, end)
	return out
}

// TestHashSyncBadCompressedData: a record whose stored bytes carry a good
// checksum but do not decompress to the chunk is refused before the diff
// is stored (it would otherwise fail only when applied); the same stream
// with raw data is accepted and stores exactly that chunk.
func TestHashSyncBadCompressedData(t *testing.T) {
	env := newEnv(t, nil)
	ctx := testCtx(t)
	const vol = "hz"
	m := newModel(6, 1024)
	env.initArchived(ctx, vol, m)
	before := env.dirSnapshot()
	chunk := bytes.Repeat([]byte("hand-made chunk "), testChunk/16)
	for _, tc := range []struct {
		name string
		rec  handRecord
		ok   bool
	}{
		{"garbage snappy", handRecord{chunk: 2, codec: wdiff.CodecSnappy, data: []byte("this is not snappy data at all")}, false},
		{"short zstd", handRecord{chunk: 2, codec: wdiff.CodecZstd, data: []byte{0x28, 0xb5, 0x2f, 0xfd, 0, 0}}, false},
		{"raw", handRecord{chunk: 2, codec: wdiff.CodecNone, data: chunk}, true},
	} {
		r, err := env.e.BeginHashSync(ctx, vol, m.sizeLB)
		require.NoError(t, err)
		require.NoError(t, r.Open(meta.UUID{2}))
		_, err = r.Receive(testChunk, func(ctx context.Context, old io.ReaderAt, s hashsync.Session, sink hashsync.Sink, opt hashsync.HashOptions) (hashsync.Stats, error) {
			return hashsync.RunHashSide(ctx, bytes.NewReader(handStream(s, []handRecord{tc.rec})), io.Discard, old, s, sink, opt)
		})
		if !tc.ok {
			require.ErrorIs(t, err, ErrCorruptStream, tc.name)
			r.Abort()
			require.Equal(t, before, env.dirSnapshot(), tc.name)
			continue
		}
		require.NoError(t, err, tc.name)
		require.NoError(t, r.Commit(meta.CleanSnap(1), time.Unix(1700000000, 0)))
		ds, err := env.e.Diffs(vol, 0, 1)
		require.NoError(t, err)
		require.Len(t, ds, 1)
		recs, uuid := diffRecords(t, filepath.Join(env.cfg.BaseDir, vol), ds[0])
		require.Equal(t, chunkRecords([]uint64{2}), recs)
		require.Equal(t, [16]byte{2}, uuid)
		want := bytes.Clone(m.img)
		copy(want[2*testChunk:], chunk)
		require.Equal(t, shaOf(want), env.restoredSHA(ctx, vol, 1))
	}
}

// BenchmarkHashSyncLocal measures a hash backup of an 8 MiB device with
// one chunk in 16 differing, both halves in-process (virtual image at the
// latest snapshot with 4 diffs, hashing, the data side, the temporary
// wdiff), per byte of device.
func BenchmarkHashSyncLocal(b *testing.B) {
	env := newEnv(b, nil)
	ctx := testCtx(b)
	const vol = "bh"
	m := newModel(3, 1<<14)
	env.initArchived(ctx, vol, m)
	for g := uint64(0); g < 4; g++ {
		require.NoError(b, env.sendDiff(ctx, vol, m, cleanDiff(g, g+1, true), m.nextWdiff(b, 100)))
	}
	dev := bytes.Clone(m.img)
	for i := 0; i < len(dev)/testChunk; i += 16 {
		scribble(dev, i, false)
	}
	b.SetBytes(int64(len(dev)))
	b.ResetTimer()
	for range b.N {
		r, err := localHashSync(b, env.e, vol, dev, m.uuid, nil)
		require.NoError(b, err)
		require.EqualValues(b, 8, r.Stats().DiffChunks)
		r.Abort()
	}
}
