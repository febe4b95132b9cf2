package nbd

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"sync"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestClientReadWriteRoundTrip(t *testing.T) {
	mem := NewMemoryBackend(3<<20 + 777) // not a multiple of any block size
	_, addr := startServer(t, Options{MaxRequestSize: 256 << 10}, testExport{name: "d", backend: mem})
	c := dialClient(t, addr, ClientOptions{Export: "d"})
	require.Equal(t, mem.Size(), c.Size())

	for i, tc := range []struct {
		off int64
		n   int
	}{
		{0, 512}, {1, 1}, {4095, 3}, {100000, 1 << 20}, // 1 MiB is split into 256 KiB requests
		{mem.Size() - 777, 777}, {12345, 256 << 10}, {0, 0},
	} {
		data := randomBytes(uint64(i), tc.n)
		n, err := c.WriteAt(data, tc.off)
		require.NoError(t, err)
		require.Equal(t, tc.n, n)
		got := make([]byte, tc.n)
		n, err = c.ReadAt(got, tc.off)
		require.NoError(t, err)
		require.Equal(t, tc.n, n)
		require.Equal(t, data, got)
		require.Equal(t, data, mem.Bytes()[tc.off:tc.off+int64(tc.n)])
	}

	// io.ReaderAt semantics at the end of the export.
	got := make([]byte, 1000)
	n, err := c.ReadAt(got, mem.Size()-10)
	require.ErrorIs(t, err, io.EOF)
	require.Equal(t, 10, n)
	n, err = c.ReadAt(got, mem.Size())
	require.ErrorIs(t, err, io.EOF)
	require.Zero(t, n)
}

// TestRequestErrors drives every error path of the command table on the
// wire and checks the connection stays usable afterwards.
func TestRequestErrors(t *testing.T) {
	const size = 1 << 20
	const maxReq = 64 << 10
	exports := []testExport{
		{name: "rw", backend: NewMemoryBackend(size)},
		{name: "ro", backend: NewMemoryBackend(size), readOnly: true},
		{name: "plain", backend: plainBackend{NewMemoryBackend(size)}},
	}
	_, addr := startServer(t, Options{MaxRequestSize: maxReq}, exports...)
	for _, tc := range []struct {
		name    string
		export  string
		flags   uint16
		typ     uint16
		off     uint64
		length  uint32
		payload bool
		want    Errno
	}{
		{name: "read past end", export: "rw", typ: cmdRead, off: size - 512, length: 1024, want: EINVAL},
		{name: "read offset past end", export: "rw", typ: cmdRead, off: size + 1, length: 0, want: EINVAL},
		{name: "read offset overflow", export: "rw", typ: cmdRead, off: ^uint64(0), length: 2, want: EINVAL},
		{name: "read too long", export: "rw", typ: cmdRead, length: maxReq + 1, want: EINVAL},
		{name: "read at end, empty", export: "rw", typ: cmdRead, off: size, length: 0, want: 0},
		{name: "write past end", export: "rw", typ: cmdWrite, off: size - 100, length: 200, payload: true, want: ENOSPC},
		{name: "write too long", export: "rw", typ: cmdWrite, length: maxReq + 512, payload: true, want: EINVAL},
		{name: "trim past end", export: "rw", typ: cmdTrim, off: size, length: 1, want: EINVAL},
		{name: "zeroes past end", export: "rw", typ: cmdWriteZeroes, off: size - 1, length: 2, want: ENOSPC},
		{name: "trim longer than max block is fine", export: "rw", typ: cmdTrim, length: size, want: 0},
		{name: "zeroes longer than max block is fine", export: "rw", typ: cmdWriteZeroes, length: size, want: 0},
		{name: "read-only write", export: "ro", typ: cmdWrite, length: 512, payload: true, want: EPERM},
		{name: "read-only trim", export: "ro", typ: cmdTrim, length: 512, want: EPERM},
		{name: "read-only zeroes", export: "ro", typ: cmdWriteZeroes, length: 512, want: EPERM},
		{name: "read-only read", export: "ro", typ: cmdRead, length: 512, want: 0},
		{name: "read-only flush", export: "ro", typ: cmdFlush, want: 0},
		{name: "read-only FUA not advertised", export: "ro", flags: cmdFlagFUA, typ: cmdRead, length: 1, want: EINVAL},
		{name: "unknown command", export: "rw", typ: 99, want: EINVAL},
		{name: "cache not supported", export: "rw", typ: cmdCache, length: 512, want: EINVAL},
		{name: "block status not negotiated", export: "rw", typ: cmdBlockStatus, length: 512, want: EINVAL},
		{name: "DF without structured replies", export: "rw", flags: cmdFlagDF, typ: cmdRead, length: 512, want: EINVAL},
		{name: "NO_HOLE on write", export: "rw", flags: cmdFlagNoHole, typ: cmdWrite, length: 512, payload: true, want: EINVAL},
		{name: "FAST_ZERO not advertised", export: "rw", flags: cmdFlagFastZero, typ: cmdWriteZeroes, length: 512, want: EINVAL},
		{name: "unknown flag", export: "rw", flags: 1 << 9, typ: cmdRead, length: 512, want: EINVAL},
		{name: "FUA read ignored", export: "rw", flags: cmdFlagFUA, typ: cmdRead, length: 512, want: 0},
		{name: "FUA flush ignored", export: "rw", flags: cmdFlagFUA, typ: cmdFlush, want: 0},
		{name: "flush not advertised", export: "plain", typ: cmdFlush, want: EINVAL},
		{name: "trim not advertised", export: "plain", typ: cmdTrim, length: 512, want: EINVAL},
		{name: "FUA not advertised", export: "plain", flags: cmdFlagFUA, typ: cmdWrite, length: 512, payload: true, want: EINVAL},
		{name: "zeroes by plain writes", export: "plain", typ: cmdWriteZeroes, length: 512, want: 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := dialRaw(t, addr)
			r.start()
			r.goExport(tc.export)
			var payload []byte
			if tc.payload {
				payload = bytes.Repeat([]byte{0x5a}, int(tc.length))
			}
			r.request(tc.flags, tc.typ, 0xfeed, tc.off, tc.length, payload)
			r.expectReply(0xfeed, tc.want)
			if tc.want == 0 && tc.typ == cmdRead {
				r.read(int(tc.length))
			}
			// The stream is still in sync: a valid request works.
			r.request(0, cmdRead, 2, 0, 4, nil)
			r.expectReply(2, 0)
			r.read(4)
		})
	}
}

// plainBackend hides MemoryBackend's optional interfaces.
type plainBackend struct{ m *MemoryBackend }

func (p plainBackend) ReadAt(b []byte, off int64) (int, error)  { return p.m.ReadAt(b, off) }
func (p plainBackend) WriteAt(b []byte, off int64) (int, error) { return p.m.WriteAt(b, off) }
func (p plainBackend) Size() int64                              { return p.m.Size() }

func TestWriteBeyondDoSThresholdCloses(t *testing.T) {
	_, addr := startServer(t, Options{MaxRequestSize: 64 << 10}, testExport{name: "d", backend: NewMemoryBackend(1 << 20)})
	r := dialRaw(t, addr)
	r.start()
	r.goExport("d")
	// The header alone announces 32 MiB of payload the server won't read.
	r.request(0, cmdWrite, 1, 0, dosPayloadThreshold, nil)
	r.expectClosed()
}

func TestBadRequestMagicCloses(t *testing.T) {
	_, addr := startServer(t, Options{}, testExport{name: "d", backend: NewMemoryBackend(1 << 20)})
	r := dialRaw(t, addr)
	r.start()
	r.goExport("d")
	r.write(bytes.Repeat([]byte{0x41}, requestHeaderSize))
	r.expectClosed()
}

func TestGarbageInsteadOfHandshakeCloses(t *testing.T) {
	_, addr := startServer(t, Options{}, testExport{name: "d", backend: NewMemoryBackend(1 << 20)})
	for i := range 5 {
		r := dialRaw(t, addr)
		r.greeting()
		r.write(randomBytes(uint64(i), 200+i*1000))
		// Whatever the garbage parsed as, the server never hangs: it
		// either closes or answers; draining until EOF must terminate.
		_, err := io.Copy(io.Discard, r.br)
		require.NoError(t, err)
	}
	// The server still serves well-behaved clients.
	c := dialClient(t, addr, ClientOptions{Export: "d"})
	_, err := c.ReadAt(make([]byte, 512), 0)
	require.NoError(t, err)
}

// recordingBackend records which durable and zeroing paths the server took.
type recordingBackend struct {
	*MemoryBackend
	mu     sync.Mutex
	events []string
}

func (b *recordingBackend) record(e string) {
	b.mu.Lock()
	b.events = append(b.events, e)
	b.mu.Unlock()
}

func (b *recordingBackend) take() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	e := b.events
	b.events = nil
	return e
}

func (b *recordingBackend) WriteAt(p []byte, off int64) (int, error) {
	b.record("write")
	return b.MemoryBackend.WriteAt(p, off)
}

func (b *recordingBackend) Flush() error {
	b.record("flush")
	return nil
}

func (b *recordingBackend) Trim(off, length int64) error {
	b.record(fmt.Sprintf("trim %d+%d", off, length))
	return nil
}

func (b *recordingBackend) WriteZeroes(off, length int64, mayTrim bool) error {
	b.record(fmt.Sprintf("zero %d+%d trim=%v", off, length, mayTrim))
	return b.MemoryBackend.WriteZeroes(off, length, mayTrim)
}

type fuaRecordingBackend struct{ *recordingBackend }

func (b fuaRecordingBackend) WriteAtFUA(p []byte, off int64) (int, error) {
	b.record("fua-write")
	return b.MemoryBackend.WriteAt(p, off)
}

func TestFUAAndFlushPaths(t *testing.T) {
	rec := &recordingBackend{MemoryBackend: NewMemoryBackend(1 << 20)}
	fua := fuaRecordingBackend{&recordingBackend{MemoryBackend: NewMemoryBackend(1 << 20)}}
	_, addr := startServer(t, Options{},
		testExport{name: "flusher", backend: rec},
		testExport{name: "fua", backend: fua})

	r := dialRaw(t, addr)
	r.start()
	r.goExport("flusher")
	steps := []struct {
		flags  uint16
		typ    uint16
		off    uint64
		length uint32
		want   []string
	}{
		{0, cmdWrite, 0, 512, []string{"write"}},
		{cmdFlagFUA, cmdWrite, 512, 512, []string{"write", "flush"}},
		{0, cmdFlush, 0, 0, []string{"flush"}},
		{0, cmdTrim, 4096, 8192, []string{"trim 4096+8192"}},
		{cmdFlagFUA, cmdTrim, 0, 4096, []string{"trim 0+4096", "flush"}},
		{0, cmdWriteZeroes, 8192, 4096, []string{"zero 8192+4096 trim=true"}},
		{cmdFlagNoHole, cmdWriteZeroes, 8192, 4096, []string{"zero 8192+4096 trim=false"}},
		{cmdFlagNoHole | cmdFlagFUA, cmdWriteZeroes, 0, 512, []string{"zero 0+512 trim=false", "flush"}},
	}
	for i, s := range steps {
		var payload []byte
		if s.typ == cmdWrite {
			payload = make([]byte, s.length)
		}
		r.request(s.flags, s.typ, uint64(i), s.off, s.length, payload)
		r.expectReply(uint64(i), 0)
		require.Equal(t, s.want, rec.take(), "step %d", i)
	}

	r2 := dialRaw(t, addr)
	r2.start()
	_, flags := r2.goExport("fua")
	require.NotZero(t, flags&FlagSendFUA)
	r2.request(cmdFlagFUA, cmdWrite, 1, 0, 512, make([]byte, 512))
	r2.expectReply(1, 0)
	require.Equal(t, []string{"fua-write"}, fua.take(), "FUAWriter replaces write+flush")
}

func TestWriteZeroesFallbackWritesZeros(t *testing.T) {
	mem := NewMemoryBackend(3 << 20)
	copy(mem.data, bytes.Repeat([]byte{0xff}, len(mem.data)))
	_, addr := startServer(t, Options{}, testExport{name: "d", backend: plainBackend{mem}})
	c := dialClient(t, addr, ClientOptions{Export: "d"})
	require.Equal(t, FlagHasFlags|FlagSendWriteZeroes, c.Flags())
	require.NoError(t, c.WriteZeroes(100, 2<<20+5, false))
	data := mem.Bytes()
	require.Equal(t, bytes.Repeat([]byte{0xff}, 100), data[:100])
	require.Equal(t, make([]byte, 2<<20+5), data[100:100+2<<20+5])
	require.Equal(t, byte(0xff), data[100+2<<20+5])
}

func TestTransmissionFlagsFollowBackend(t *testing.T) {
	mem := NewMemoryBackend(4096)
	for _, tc := range []struct {
		name string
		b    Backend
		ro   bool
		want TransmissionFlags
	}{
		{"plain", plainBackend{mem}, false, FlagHasFlags | FlagSendWriteZeroes},
		{"plain ro", plainBackend{mem}, true, FlagHasFlags | FlagReadOnly},
		{"memory", mem, false, FlagHasFlags | FlagSendFlush | FlagSendFUA | FlagSendTrim | FlagSendWriteZeroes | FlagCanMultiConn},
		{"memory ro", mem, true, FlagHasFlags | FlagReadOnly | FlagSendFlush | FlagCanMultiConn},
		{"read-only wrapper", ReadOnly(plainBackend{mem}), false, FlagHasFlags | FlagSendFlush | FlagSendFUA | FlagSendWriteZeroes | FlagCanMultiConn},
		{"fua only", fuaOnly{plainBackend{mem}}, false, FlagHasFlags | FlagSendFUA | FlagSendWriteZeroes},
		{"no multi-conn", singleConn{plainBackend{mem}}, false, FlagHasFlags | FlagSendWriteZeroes},
	} {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, exportFlags(tc.b, tc.ro), "%v", exportFlags(tc.b, tc.ro))
		})
	}
}

type fuaOnly struct{ plainBackend }

func (f fuaOnly) WriteAtFUA(p []byte, off int64) (int, error) { return f.WriteAt(p, off) }

type singleConn struct{ plainBackend }

func (singleConn) CanMultiConn() bool { return false }

var (
	errNoSpace    = &os.PathError{Op: "write", Path: "disk", Err: syscall.ENOSPC}
	errReadOnlyFS = &os.PathError{Op: "write", Path: "disk", Err: syscall.EROFS}
)

// failingBackend fails reads and writes with a chosen error, or makes reads
// short.
type failingBackend struct {
	*MemoryBackend
	mu    sync.Mutex
	err   error
	short bool
}

func (f *failingBackend) setErr(err error) {
	f.mu.Lock()
	f.err = err
	f.mu.Unlock()
}

func (f *failingBackend) ReadAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	err, short := f.err, f.short
	f.mu.Unlock()
	if err != nil {
		return 0, err
	}
	if short {
		return len(p) / 2, nil
	}
	return f.MemoryBackend.ReadAt(p, off)
}

func (f *failingBackend) WriteAt(p []byte, off int64) (int, error) {
	f.mu.Lock()
	err := f.err
	f.mu.Unlock()
	if err != nil {
		return 0, err
	}
	return f.MemoryBackend.WriteAt(p, off)
}

func TestConcurrentRequestsAreBounded(t *testing.T) {
	gate := newGateBackend(1 << 20)
	_, addr := startServer(t, Options{MaxInFlight: 16}, testExport{name: "g", backend: gate})
	r := dialRaw(t, addr)
	r.start()
	r.goExport("g")
	const n = 40
	for i := range n {
		r.request(0, cmdRead, uint64(i), uint64(i)*512, 512, nil)
	}
	// Exactly 16 reads reach the backend before any completes.
	for range 16 {
		<-gate.entered
	}
	close(gate.release)
	seen := make(map[uint64]bool)
	for range n {
		errno, h := r.reply()
		require.Zero(t, errno)
		require.False(t, seen[h], "duplicate reply for handle %d", h)
		seen[h] = true
		r.read(512)
	}
	require.Equal(t, 16, gate.maxConcurrent())
}

func TestConcurrentClientTraffic(t *testing.T) {
	mem := NewMemoryBackend(8 << 20)
	_, addr := startServer(t, Options{}, testExport{name: "d", backend: mem})
	c := dialClient(t, addr, ClientOptions{Export: "d"})
	const workers = 24
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			region := int64(w) * (mem.Size() / workers)
			for i := range 20 {
				data := randomBytes(uint64(w*1000+i), 4096+i*1000)
				off := region + int64(i*97)
				if _, err := c.WriteAt(data, off); err != nil {
					errs <- err
					return
				}
				got := make([]byte, len(data))
				if _, err := c.ReadAt(got, off); err != nil {
					errs <- err
					return
				}
				if !bytes.Equal(data, got) {
					errs <- fmt.Errorf("worker %d step %d: data mismatch", w, i)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
}

func TestDiscFinishesInFlightRequests(t *testing.T) {
	gate := newGateBackend(1 << 20)
	copy(gate.data[1024:], "in flight")
	_, addr := startServer(t, Options{}, testExport{name: "g", backend: gate})
	r := dialRaw(t, addr)
	r.start()
	r.goExport("g")
	r.request(0, cmdRead, 5, 1024, 9, nil)
	<-gate.entered
	r.request(0, cmdDisc, 6, 0, 0, nil)
	close(gate.release)
	r.expectReply(5, 0)
	require.Equal(t, []byte("in flight"), r.read(9))
	r.expectClosed()
}

func TestBackendErrorsMapToErrno(t *testing.T) {
	fb := &failingBackend{MemoryBackend: NewMemoryBackend(1 << 20)}
	_, addr := startServer(t, Options{}, testExport{name: "f", backend: fb})
	c := dialClient(t, addr, ClientOptions{Export: "f"})
	for _, tc := range []struct {
		err  error
		want Errno
	}{
		{errNoSpace, ENOSPC},
		{errReadOnlyFS, EPERM},
		{io.ErrUnexpectedEOF, EIO},
	} {
		fb.setErr(tc.err)
		_, err := c.WriteAt(make([]byte, 512), 0)
		require.ErrorIs(t, err, tc.want)
		_, err = c.ReadAt(make([]byte, 512), 0)
		require.ErrorIs(t, err, tc.want)
	}
	fb.setErr(nil)
	fb.mu.Lock()
	fb.short = true
	fb.mu.Unlock()
	_, err := c.ReadAt(make([]byte, 512), 0)
	require.ErrorIs(t, err, EIO, "a short read without error is an I/O error")
}
