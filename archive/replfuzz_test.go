package archive

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/pkg/errors"
	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/server"
	"github.com/walb-go/walb/wdiff"
	"github.com/walb-go/walb/wire"
)

// FuzzReplSync plays the source side of ProtoReplSync against a real
// target server over loopback TCP: a valid handshake and repl-sync
// arguments, then the fuzzed bytes as the rest of the session. The first
// byte of an input picks the target and the form of the bytes:
//
//	bit 0  0: fzSync, a SyncReady volume (first phase FULL)
//	       1: fzArch, an Archived volume with a base and two diffs, of the
//	          source's lineage (first phase none: the DIFF / HASH loop)
//	bit 1  0: the bytes go to the socket as they are (raw frames)
//	       1: the bytes are frames without their CRC (type u8, length u32,
//	          payload), re-framed with a correct CRC, so that mutations of
//	          a recorded session reach the code behind the frame layer
//
// The seeds are sessions of a genuine source (Engine.Replicate) recorded
// by a proxy. Properties: the handler ends by itself (every read of the
// client is bounded by a deadline, so a hang fails), allocation stays
// bounded whatever sizes the bytes declare, no temporary file is left,
// the other volume never changes, and the volume is either exactly as
// before or, only once the target acknowledged a step, consistently
// changed: Archived (persisted), its old restore points unchanged, every
// restore point restorable. A SyncReady target may keep the resume point
// of an interrupted FULL (partial base image, full_repl_state), as
// ProtoReplSync documents.
//
// WALB_WRITE_REPLFUZZ_CORPUS=1 rewrites testdata/fuzz/FuzzReplSync from
// freshly recorded sessions.
func FuzzReplSync(f *testing.F) {
	rf := newReplFuzz(f)
	seeds := rf.recordSeeds(f)
	for _, s := range seeds {
		f.Add(s.sel, s.body)
	}
	// Hand-made openings: nothing, a lone DONT, an unknown action, a
	// frame announcing a huge payload.
	f.Add(byte(1), []byte{})
	f.Add(byte(1), wire.AppendFrame(nil, wire.FrameU64, binary.LittleEndian.AppendUint64(nil, uint64(ReplDont))))
	f.Add(byte(3), append([]byte{byte(wire.FrameU64), 8, 0, 0, 0}, binary.LittleEndian.AppendUint64(nil, 9)...))
	f.Add(byte(0), []byte{byte(wire.FrameU64), 0xff, 0xff, 0xff, 0x00})
	// A HASH step's opening (no genuine session can be replayed: the
	// target draws the hash seed), so that the fuzzer starts inside it.
	f.Add(byte(3), rf.hashOpening(f))
	if os.Getenv("WALB_WRITE_REPLFUZZ_CORPUS") == "1" {
		writeReplFuzzCorpus(f, seeds)
	}
	f.Fuzz(func(t *testing.T, sel byte, data []byte) {
		vol, other := fzSync, fzArch
		if sel&1 == 1 {
			vol, other = fzArch, fzSync
		}
		body := data
		if sel&2 != 0 {
			body = reframe(data)
		}
		var before runtime.MemStats
		runtime.ReadMemStats(&before)
		res := rf.session(t, vol, body)
		var after runtime.MemStats
		runtime.ReadMemStats(&after)
		// What a session may allocate: a few bulks and frames of the
		// bounded sizes (MaxBulkLB, MaxFrame growth steps), plus a
		// small multiple of what was actually sent.
		limit := uint64(32<<20) + 16*uint64(len(body))
		require.LessOrEqual(t, after.TotalAlloc-before.TotalAlloc, limit, "session allocated %d bytes for %d bytes of input", after.TotalAlloc-before.TotalAlloc, len(body))
		rf.check(t, vol, other, res)
	})
}

const (
	fzSync = "fs" // the SyncReady target volume
	fzArch = "fa" // the Archived target volume
	// fzSizeLB keeps the volumes (and so the recorded seeds) tiny.
	fzSizeLB = 16
	fzBulkLB = 4
	// fzTimeout bounds a session: the client half-closes after its bytes,
	// so a target that does not end by then hangs.
	fzTimeout = 20 * time.Second
)

// replFuzz is the source archive a0 and the target t of FuzzReplSync,
// with the target's volumes as they must be before each input.
type replFuzz struct {
	a0, t    *fzServer
	aUUID    map[string]meta.UUID         // a0's archive uuid per volume
	pristine map[string]map[string]string // volPrint of the target's volumes
	shas     map[uint64]string            // fzArch: image of each restore point
	ctx      context.Context
}

// fzServer is an archive server on loopback TCP (startArchive needs a
// *testing.T; fuzz setup has a *testing.F).
type fzServer struct {
	s    *Server
	addr string
	root string
}

func startFzServer(tb testing.TB, root string) *fzServer {
	tb.Helper()
	env := openEnv(tb, root, nil) // makes the directories and the store
	_ = env.e.Close()
	s, err := NewServer(server.Config{ID: "fz", Addr: "127.0.0.1:0", Logger: quiet, MaxForeground: 4}, env.cfg)
	require.NoError(tb, err)
	require.NoError(tb, s.Listen())
	done := make(chan error, 1)
	go func() { done <- s.Run(context.Background()) }()
	tb.Cleanup(func() {
		s.Shutdown(server.Graceful)
		<-done
	})
	fs := &fzServer{s: s, addr: s.Addr().String(), root: root}
	// Connections are served once Recover is done.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := wire.Dial(ctx, fs.addr, "fz", "get", nil, "host-type")
	require.NoError(tb, err)
	defer c.Close()
	require.NoError(tb, c.ExpectOK(ctx))
	ht, err := c.RecvString(ctx)
	require.NoError(tb, err)
	require.Equal(tb, HostType, ht)
	return fs
}

func (s *fzServer) env(tb testing.TB) *testEnv {
	return &testEnv{t: tb, root: s.root, e: s.s.Engine()}
}

// newReplFuzz builds a0 (fzSync: a base and two diffs; fzArch: a base and
// four) and the target (fzSync SyncReady; fzArch replicated from a0 up to
// gid 2) and records the target's pristine state.
func newReplFuzz(f *testing.F) *replFuzz {
	ctx, cancel := context.WithCancel(context.Background())
	f.Cleanup(cancel)
	rf := &replFuzz{ctx: ctx, aUUID: map[string]meta.UUID{}, pristine: map[string]map[string]string{}, shas: map[uint64]string{}}
	rf.a0 = startFzServer(f, f.TempDir())
	rf.t = startFzServer(f, f.TempDir())
	e0 := rf.a0.s.Engine()
	for i, vol := range []string{fzSync, fzArch} {
		m := newModel(uint64(40+i), fzSizeLB)
		env := rf.a0.env(f)
		env.initArchived(ctx, vol, m)
		n := map[string]int{fzSync: 2, fzArch: 4}[vol]
		for g := range uint64(n) {
			// fzArch: 0->1, 1->2, 2->3 explicit, 3->4 mergeable (so that
			// a merged DIFF step differs from dontMerge); fzSync: 0->1
			// explicit, 1->2 mergeable.
			mergeable := g == uint64(n-1)
			require.NoError(f, env.sendDiff(ctx, vol, m, cleanDiff(g, g+1, mergeable), m.nextWdiff(f, 1)))
		}
		u, err := e0.ArchiveUUID(vol)
		require.NoError(f, err)
		rf.aUUID[vol] = u
		require.NoError(f, rf.t.s.Engine().InitVol(ctx, vol))
	}
	rf.rebuildArch(f)
	for _, vol := range []string{fzSync, fzArch} {
		rf.pristine[vol] = rf.volPrint(f, vol)
	}
	e1 := rf.t.s.Engine()
	pts, err := e1.Restorable(fzArch, true)
	require.NoError(f, err)
	require.Len(f, pts, 3)
	for _, p := range pts {
		rf.shas[p.Gid()] = rf.t.env(f).restoredSHA(ctx, fzArch, p.Gid())
	}
	require.Equal(f, rf.pristine[fzArch], rf.volPrint(f, fzArch), "restoring changes nothing")
	return rf
}

// rebuildArch makes the target's fzArch (SyncReady, empty) what a0 makes
// of it when replicating up to gid 2: its base and the diffs 0->1, 1->2.
func (rf *replFuzz) rebuildArch(tb testing.TB) {
	err := rf.a0.s.Engine().Replicate(rf.ctx, fzArch, ReplicateOptions{ClientOptions: ClientOptions{ClientID: "a0"},
		Addr: rf.t.addr, Mode: ReplByGid, N: 2, BulkLB: fzBulkLB})
	require.NoError(tb, err)
}

// reset returns a changed volume of the target to its pristine state.
func (rf *replFuzz) reset(tb testing.TB, vol string) {
	e := rf.t.s.Engine()
	if st, _ := e.State(vol); st == StateArchived {
		require.NoError(tb, e.Stop(rf.ctx, vol, StopGraceful))
	}
	require.NoError(tb, e.ClearVol(rf.ctx, vol))
	require.NoError(tb, e.InitVol(rf.ctx, vol))
	if vol == fzArch {
		rf.rebuildArch(tb)
	}
	require.Equal(tb, rf.pristine[vol], rf.volPrint(tb, vol), "reset %s", vol)
}

// volPrint describes what a session may change in vol: the files of its
// directory and its images with their content hashes, its states in
// memory and on disk, base, uuids, diffs and restore points.
func (rf *replFuzz) volPrint(tb testing.TB, vol string) map[string]string {
	e := rf.t.s.Engine()
	out := map[string]string{}
	dir := filepath.Join(rf.t.root, "base", vol)
	for _, n := range fzReadDir(tb, dir) {
		out["file:"+n] = shaOf(readAllFile(tb, filepath.Join(dir, n)))
	}
	imgs := filepath.Join(rf.t.root, "images")
	for _, n := range fzReadDir(tb, imgs) {
		if n == baseImageName(vol) || strings.HasPrefix(n, "wr_"+vol+"_") {
			out["image:"+n] = shaOf(readAllFile(tb, filepath.Join(imgs, n)))
		}
	}
	st, err := e.State(vol)
	require.NoError(tb, err)
	out["state"] = st
	disk, err := loadState(dir)
	require.NoError(tb, err)
	out["state-file"] = disk
	v, err := e.volume(vol)
	require.NoError(tb, err)
	out["base"] = v.getBase().StringTs()
	v.mu.Lock()
	out["uuid"], out["archive-uuid"] = v.uuid.String(), v.archiveUUID.String()
	v.mu.Unlock()
	var names []string
	for _, d := range v.diffs.All() {
		n, err := meta.FileName(d)
		require.NoError(tb, err)
		names = append(names, n)
	}
	out["diffs"] = fmtStrings(names)
	// Restorable refuses a volume that is not Archived.
	if pts, err := e.Restorable(vol, true); err == nil {
		for _, p := range pts {
			out["restorable"] += p.String() + ";"
		}
	}
	return out
}

// fzResult is what the fuzz client saw of a session.
type fzResult struct {
	accepted bool // the repl-sync was accepted
	acks     int  // Ack frames: steps the target says are committed
	errCode  wire.Code
}

// session dials the target with a valid handshake for vol and the
// source's archive uuid (DO_RESYNC 0), sends body, half-closes, and
// reads everything the target answers until it closes the connection.
func (rf *replFuzz) session(t testing.TB, vol string, body []byte) fzResult {
	nc, err := net.DialTimeout("tcp", rf.t.addr, fzTimeout)
	require.NoError(t, err)
	defer nc.Close()
	require.NoError(t, nc.SetDeadline(time.Now().Add(fzTimeout)))
	msg := []byte("WALBGO\x01\x00")
	msg = wire.AppendFrame(msg, wire.FrameHello, helloPayload("fuzz", ProtoReplSync, vol, rf.aUUID[vol].String(), "0"))
	wdone := make(chan struct{})
	go func() {
		defer close(wdone)
		// The target may refuse and close early: write errors are its
		// business, not the test's.
		if _, err := nc.Write(append(msg, body...)); err == nil {
			_ = nc.(*net.TCPConn).CloseWrite()
		}
	}()
	out, rerr := io.ReadAll(nc)
	<-wdone
	var ne net.Error
	if errors.As(rerr, &ne) && ne.Timeout() {
		t.Fatalf("repl-sync %s: no end within %v (%d bytes sent, %d received)", vol, fzTimeout, len(body), len(out))
	}
	return parseTargetOutput(t, out)
}

func helloPayload(id, cmd string, args ...string) []byte {
	p := binary.LittleEndian.AppendUint32(nil, wire.DefaultMaxFrame)
	for _, s := range []string{id, cmd} {
		p = binary.LittleEndian.AppendUint16(p, uint16(len(s)))
		p = append(p, s...)
	}
	p = binary.LittleEndian.AppendUint32(p, uint32(len(args)))
	for _, s := range args {
		p = binary.LittleEndian.AppendUint32(p, uint32(len(s)))
		p = append(p, s...)
	}
	return p
}

// parseTargetOutput checks the target's side of the wire (its preamble,
// an ok Welcome, then well-formed frames) and counts what matters.
func parseTargetOutput(t testing.TB, out []byte) fzResult {
	var res fzResult
	require.GreaterOrEqual(t, len(out), wire.PreambleSize, "no preamble from the target")
	fr := wire.NewFrameReader(bytes.NewReader(out[wire.PreambleSize:]), wire.MaxMaxFrame)
	typ, p, err := fr.Next()
	require.NoError(t, err)
	require.Equal(t, wire.FrameWelcome, typ)
	require.NotContains(t, string(p), "error", "welcome")
	for first := true; ; first = false {
		typ, p, err := fr.Next()
		if err == io.EOF {
			return res
		}
		// A connection reset may cut the target's last frame; what
		// arrived whole counts.
		if err != nil {
			require.ErrorIs(t, err, wire.ErrTruncated)
			return res
		}
		switch typ {
		case wire.FrameReply:
			require.NotEmpty(t, p)
			switch p[0] {
			case 1:
				require.True(t, first, "accept in the middle of a session")
				res.accepted = true
			case 2:
				require.GreaterOrEqual(t, len(p), 2)
				n := int(p[1])
				require.GreaterOrEqual(t, len(p), 2+n)
				res.errCode = wire.Code(p[2 : 2+n])
			}
		case wire.FrameAck:
			res.acks++
		}
		if first {
			require.True(t, res.accepted || res.errCode != "", "the target opened with %v", typ)
		}
	}
}

// check verifies the properties after a session on vol, then resets vol
// if it changed.
func (rf *replFuzz) check(t testing.TB, vol, other string, res fzResult) {
	e := rf.t.s.Engine()
	require.True(t, res.accepted, "a valid opening is accepted (error %q)", res.errCode)
	// The handler has returned when the connection closes; its
	// transactions are rolled back by then.
	for end := time.Now().Add(5 * time.Second); ; {
		st, err := e.State(vol)
		require.NoError(t, err)
		if st == StateSyncReady || st == StateArchived || time.Now().After(end) {
			break
		}
		time.Sleep(time.Millisecond)
	}
	require.Equal(t, rf.pristine[other], rf.volPrint(t, other), "the other volume changed")
	for _, n := range fzReadDir(t, filepath.Join(rf.t.root, "base", vol)) {
		require.False(t, meta.IsTempName(n), "temporary %s left", n)
	}
	for _, n := range fzReadDir(t, filepath.Join(rf.t.root, "images")) {
		require.False(t, strings.HasPrefix(n, ".imgtmp-"), "temporary image %s left", n)
	}
	now := rf.volPrint(t, vol)
	if maps.Equal(now, rf.pristine[vol]) {
		return
	}
	require.Equal(t, now["state"], now["state-file"], "a transient state is persisted")
	switch now["state"] {
	case StateSyncReady:
		// An interrupted FULL: the base image may be partly written and
		// full_repl_state hold the resume point; nothing else.
		require.Equal(t, fzSync, vol, "an Archived target went SyncReady without DO_RESYNC")
		require.Zero(t, res.acks, "FULL acknowledged but the volume is SyncReady")
		require.Equal(t, rf.pristine[vol]["restorable"], now["restorable"])
		require.Equal(t, rf.pristine[vol]["diffs"], now["diffs"])
		require.Equal(t, rf.pristine[vol]["base"], now["base"])
		st, ok, err := e.FullReplState(vol)
		require.NoError(t, err)
		if ok {
			v, err := e.volume(vol)
			require.NoError(t, err)
			v.mu.Lock()
			size := v.sizeLB
			v.mu.Unlock()
			require.LessOrEqual(t, st.ProgressLB, size, "resume point past the base image")
		}
	case StateArchived:
		require.NotZero(t, res.acks, "the volume changed, but no step was acknowledged")
		pts, err := e.Restorable(vol, true)
		require.NoError(t, err)
		require.NotEmpty(t, pts)
		var gids []uint64
		for _, p := range pts {
			gids = append(gids, p.Gid())
		}
		for g := range rf.shas {
			if vol == fzArch {
				require.Contains(t, gids, g, "restore point %d lost", g)
			}
		}
		env := rf.t.env(t)
		for _, g := range gids {
			sha := env.restoredSHA(rf.ctx, vol, g)
			if want, ok := rf.shas[g]; ok && vol == fzArch {
				require.Equal(t, want, sha, "the image of gid %d changed", g)
			}
		}
	default:
		t.Fatalf("volume %s left %s", vol, now["state"])
	}
	rf.reset(t, vol)
}

// reframe turns the structured form (per frame: type u8, length u32 LE,
// payload; a length past the end takes what is left) into frames with a
// correct CRC.
func reframe(data []byte) []byte {
	var out []byte
	for len(data) > 0 {
		typ := wire.FrameType(data[0])
		data = data[1:]
		n := len(data)
		if len(data) >= 4 {
			n = int(min(binary.LittleEndian.Uint32(data), uint32(len(data)-4)))
			data = data[4:]
		} else {
			data = data[len(data):]
			n = 0
		}
		out = wire.AppendFrame(out, typ, data[:n])
		data = data[n:]
	}
	return out
}

// unframe is the inverse of reframe for a well-formed frame stream.
func unframe(tb testing.TB, raw []byte) []byte {
	var out []byte
	fr := wire.NewFrameReader(bytes.NewReader(raw), wire.MaxMaxFrame)
	for {
		typ, p, err := fr.Next()
		if err == io.EOF {
			return out
		}
		require.NoError(tb, err)
		out = append(out, byte(typ))
		out = binary.LittleEndian.AppendUint32(out, uint32(len(p)))
		out = append(out, p...)
	}
}

// hashOpening is, in the structured form, the frames that open a HASH
// step on fzArch from its latest snapshot (gid 2) to gid 3, then a
// truncated data stream.
func (rf *replFuzz) hashOpening(tb testing.TB) []byte {
	u, err := rf.a0.s.Engine().UUID(fzArch)
	require.NoError(tb, err)
	d := meta.Diff{SnapB: meta.CleanSnap(2), SnapE: meta.CleanSnap(3), Mergeable: true, CompDiff: true, Timestamp: diffTs(3)}
	var val bytes.Buffer
	require.NoError(tb, meta.NewEncoder(&val).Value(d))
	var raw []byte
	for _, n := range []uint64{uint64(ReplHash), fzSizeLB, fzBulkLB} {
		raw = wire.AppendFrame(raw, wire.FrameU64, binary.LittleEndian.AppendUint64(nil, n))
	}
	raw = wire.AppendFrame(raw, wire.FrameValue, val.Bytes())
	raw = wire.AppendFrame(raw, wire.FrameBytes, u[:])
	raw = wire.AppendFrame(raw, wire.FrameChunk, []byte("WHSD\x01\x00"))
	return unframe(tb, raw)
}

// fzSeed is one recorded session as a fuzz input.
type fzSeed struct {
	name string
	sel  byte
	body []byte
}

// recordSeeds records sessions of a genuine source against the pristine
// target, each in both forms, resetting the target after each.
func (rf *replFuzz) recordSeeds(f *testing.F) []fzSeed {
	none, err := wdiff.ParseCompression("none")
	require.NoError(f, err)
	type rec struct {
		name string
		vol  string
		opt  ReplicateOptions
	}
	var out []fzSeed
	for _, r := range []rec{
		{"full", fzSync, ReplicateOptions{Mode: ReplBySize}},
		{"full-none", fzSync, ReplicateOptions{Mode: ReplBySize, Compression: &none, BulkLB: 2 * fzBulkLB, DontMerge: true}},
		{"diff-merged", fzArch, ReplicateOptions{Mode: ReplBySize}},
		{"diff-dontmerge", fzArch, ReplicateOptions{Mode: ReplBySize, DontMerge: true}},
		{"dont", fzArch, ReplicateOptions{Mode: ReplByGid, N: 2}},
	} {
		opt := r.opt
		opt.ClientID = "a0"
		if opt.BulkLB == 0 {
			opt.BulkLB = fzBulkLB
		}
		raw := recordSession(f, rf.t.addr, func(addr string) error {
			opt.Addr = addr
			return rf.a0.s.Engine().Replicate(rf.ctx, r.vol, opt)
		})
		body := sessionBody(f, raw)
		var sel byte
		if r.vol == fzArch {
			sel = 1
		}
		out = append(out, fzSeed{r.name + "-raw", sel, body}, fzSeed{r.name + "-frames", sel | 2, unframe(f, body)})
		if !maps.Equal(rf.pristine[r.vol], rf.volPrint(f, r.vol)) {
			rf.reset(f, r.vol)
		}
	}
	return out
}

// recordSession runs run with the address of a proxy to target and
// returns every byte the client sent.
func recordSession(tb testing.TB, target string, run func(addr string) error) []byte {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(tb, err)
	defer ln.Close()
	var rec bytes.Buffer
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		s, err := net.Dial("tcp", target)
		if err != nil {
			return
		}
		defer s.Close()
		back := make(chan struct{})
		go func() {
			_, _ = io.Copy(c, s)
			_ = c.(*net.TCPConn).CloseWrite()
			close(back)
		}()
		_, _ = io.Copy(io.MultiWriter(s, &rec), c)
		_ = s.(*net.TCPConn).CloseWrite()
		<-back
	}()
	require.NoError(tb, run(ln.Addr().String()))
	<-done
	return rec.Bytes()
}

// sessionBody drops the preamble and the Hello frame of a recorded
// client stream.
func sessionBody(tb testing.TB, raw []byte) []byte {
	require.Greater(tb, len(raw), wire.PreambleSize)
	fr := wire.NewFrameReader(bytes.NewReader(raw[wire.PreambleSize:]), wire.MaxMaxFrame)
	typ, _, err := fr.Next()
	require.NoError(tb, err)
	require.Equal(tb, wire.FrameHello, typ)
	return bytes.Clone(raw[wire.PreambleSize+int(fr.Offset()):])
}

// writeReplFuzzCorpus writes the recorded seeds in Go's corpus format.
func writeReplFuzzCorpus(tb testing.TB, seeds []fzSeed) {
	dir := filepath.Join("testdata", "fuzz", "FuzzReplSync")
	require.NoError(tb, os.MkdirAll(dir, 0o755))
	for _, s := range seeds {
		text := fmt.Sprintf("go test fuzz v1\nbyte(%q)\n[]byte(%q)\n", rune(s.sel), s.body)
		require.NoError(tb, os.WriteFile(filepath.Join(dir, s.name), []byte(text), 0o644))
	}
}

func fzReadDir(tb testing.TB, dir string) []string {
	ents, err := os.ReadDir(dir)
	require.NoError(tb, err)
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}
