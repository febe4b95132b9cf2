package devhost

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/walb"
	"github.com/walb-go/walb/wlog"
)

// memTarget is an in-memory io.WriterAt for redoing a wlog.
type memTarget struct{ b []byte }

func (m *memTarget) WriteAt(p []byte, off int64) (int, error) {
	if off < 0 || off+int64(len(p)) > int64(len(m.b)) {
		return 0, io.ErrShortWrite
	}
	return copy(m.b[off:], p), nil
}

// redoOnZero applies a wlog to a zero image of size bytes, discards as
// zeros (they read as zeros on the device).
func redoOnZero(t testing.TB, wl []byte, size int64) []byte {
	t.Helper()
	r, err := wlog.NewReader(bufio.NewReader(bytes.NewReader(wl)))
	require.NoError(t, err)
	tgt := &memTarget{b: make([]byte, size)}
	_, err = wlog.Redo(context.Background(), r, tgt, wlog.RedoOptions{ZeroDiscard: true, Size: size})
	require.NoError(t, err)
	return tgt.b
}

// TestControllerContract runs every control operation against the Host
// directly and through the daemon's socket: both must behave the same,
// errors included.
func TestControllerContract(t *testing.T) {
	for _, via := range []string{"host", "client"} {
		t.Run(via, func(t *testing.T) {
			d := startDaemon(t, t.TempDir())
			var ctl Controller = d.Host()
			if via == "client" {
				ctl = d.client
			}
			testContract(t, d, ctl)
		})
	}
}

func testContract(t *testing.T, d *testDaemon, ctl Controller) {
	ctx := testCtx(t)
	dir := t.TempDir()
	const ddevSize = 8 << 20
	ldev, ddev := deviceFiles(t, dir, "vol0", 4<<20, ddevSize)
	// Format for half the data device, so that resize can grow it.
	super, err := walb.FormatLogDevice(ldev, ddev, walb.FormatOptions{Name: "vol0", DeviceSize: ddevSize / 512 / 2})
	require.NoError(t, err)

	// create-wdev takes the name from the super sector when none is given.
	di, err := ctl.CreateWdev(ctx, ldev, ddev, CreateOptions{MaxLogpackKB: 64})
	require.NoError(t, err)
	require.Equal(t, "vol0", di.Name)
	require.Equal(t, StateRunning, di.State)
	require.Equal(t, "nbd://"+d.addr()+"/vol0", di.URI)
	require.EqualValues(t, ddevSize/512/2, di.SizeLB)
	require.EqualValues(t, 512, di.PBS)

	otherL, otherD := deviceFiles(t, dir, "other", 4<<20, ddevSize)
	_, err = ctl.CreateWdev(ctx, otherL, otherD, CreateOptions{Name: "vol0"})
	require.ErrorIs(t, err, ErrExists)
	_, err = ctl.CreateWdev(ctx, ldev, otherD, CreateOptions{Name: "vol1"})
	require.ErrorIs(t, err, ErrBusy, "the log device of vol0")
	_, err = ctl.CreateWdev(ctx, otherL, otherL, CreateOptions{Name: "vol1"})
	require.ErrorIs(t, err, ErrInvalid, "log and data device are one file")
	_, err = ctl.CreateWdev(ctx, otherL, otherD, CreateOptions{Name: "bad name"})
	require.ErrorIs(t, err, ErrInvalid)
	_, err = ctl.CreateWdev(ctx, otherL, otherD, CreateOptions{Name: "vol1", MaxPendingMB: 8, MinPendingMB: 8})
	require.ErrorIs(t, err, ErrInvalid, "min pending must be below max pending")
	unformatted := filepath.Join(dir, "zero.ldev")
	require.NoError(t, os.WriteFile(unformatted, make([]byte, 1<<20), 0o600))
	_, err = ctl.CreateWdev(ctx, unformatted, otherD, CreateOptions{Name: "vol1"})
	require.ErrorIs(t, err, ErrFailed, "not a formatted log device")
	_, err = ctl.CreateWdev(ctx, filepath.Join(dir, "missing"), otherD, CreateOptions{Name: "vol1"})
	require.ErrorIs(t, err, ErrNotFound)

	list, err := ctl.List(ctx)
	require.NoError(t, err)
	require.Len(t, list, 1)
	require.Equal(t, di, list[0])

	// Write through NBD, then flush: everything is permanent.
	c := d.dial(t, "vol0")
	data := randomBytes(1, 1<<20)
	_, err = c.WriteAt(data, 64<<10)
	require.NoError(t, err)
	require.NoError(t, c.Trim(2<<20, 256<<10))
	_, err = c.WriteAtFUA(data[:4096], 3<<20)
	require.NoError(t, err)
	require.NoError(t, c.Flush())

	oldest, err := ctl.OldestLsid(ctx, "vol0")
	require.NoError(t, err)
	require.Zero(t, oldest)
	permanent, err := ctl.PermanentLsid(ctx, "vol0")
	require.NoError(t, err)
	completed, err := ctl.CompletedLsid(ctx, "vol0")
	require.NoError(t, err)
	written, err := ctl.WrittenLsid(ctx, "vol0")
	require.NoError(t, err)
	require.Greater(t, permanent, uint64(2048), "1 MiB of data is 2048 PBs, plus headers")
	require.Equal(t, completed, permanent, "a flush covers every completed pack")
	require.LessOrEqual(t, written, permanent)
	usage, err := ctl.LogUsage(ctx, "vol0")
	require.NoError(t, err)
	require.GreaterOrEqual(t, usage, permanent)
	capacity, err := ctl.LogCapacity(ctx, "vol0")
	require.NoError(t, err)
	require.Equal(t, walb.RingSizeFor(512, 0, 4<<20), capacity)
	for _, f := range []func(context.Context, string) (bool, error){ctl.IsLogOverflow, ctl.IsFrozen} {
		v, err := f(ctx, "vol0")
		require.NoError(t, err)
		require.False(t, v)
	}
	fc, err := ctl.IsFlushCapable(ctx, "vol0")
	require.NoError(t, err)
	require.True(t, fc)

	// get-lsids: the same values as the single getters on an idle device,
	// in the order of formats.md §5.2, with latest and prev_written besides.
	l, err := ctl.Lsids(ctx, "vol0")
	require.NoError(t, err)
	require.Equal(t, oldest, l.Oldest)
	require.Equal(t, permanent, l.Permanent)
	require.Equal(t, completed, l.Completed)
	require.Equal(t, permanent, l.Latest, "nothing is in flight after the flush")
	require.Equal(t, permanent, l.Flush)
	require.GreaterOrEqual(t, l.Written, written, "written only grows")
	require.LessOrEqual(t, l.Written, l.Permanent)
	require.LessOrEqual(t, l.PrevWritten, l.Written)
	require.Equal(t, usage, l.Latest-l.Oldest, "log usage is latest - oldest")

	// info: the log's identity as formatted, the geometry, the flags.
	st, err := ctl.Info(ctx, "vol0")
	require.NoError(t, err)
	require.Equal(t, DeviceStatus{Name: "vol0", UUID: super.UUID, Salt: super.Salt, PBS: 512,
		SizeLB: ddevSize / 512 / 2, LogCapacityPB: capacity}, st)

	// cat-log [oldest, permanent) redone on zeros is the device.
	var wl bytes.Buffer
	end, err := ctl.CatLog(ctx, "vol0", AutoLsid, AutoLsid, &wl)
	require.NoError(t, err)
	require.Equal(t, permanent, end)
	require.True(t, bytes.Equal(readAll(t, c), redoOnZero(t, wl.Bytes(), c.Size())), "redo of the log differs from the device")
	// An explicit sub-range ends at a pack boundary at or after its end.
	wl.Reset()
	end, err = ctl.CatLog(ctx, "vol0", 0, 1, &wl)
	require.NoError(t, err)
	require.Greater(t, end, uint64(1))
	require.LessOrEqual(t, end, permanent)
	// An empty range is a wlog without packs, whose header carries the
	// identity info reports.
	wl.Reset()
	end, err = ctl.CatLog(ctx, "vol0", permanent, permanent, &wl)
	require.NoError(t, err)
	require.Equal(t, permanent, end)
	requireZero(t, redoOnZero(t, wl.Bytes(), c.Size()))
	hdr, err := wlog.ParseFileHeader(wl.Bytes())
	require.NoError(t, err)
	require.Equal(t, []any{st.UUID, st.Salt, st.PBS}, []any{hdr.UUID, hdr.Salt, hdr.PBS})
	_, err = ctl.CatLog(ctx, "vol0", 10, 5, io.Discard)
	require.ErrorIs(t, err, ErrInvalid)

	// Checkpoints.
	iv, err := ctl.CheckpointInterval(ctx, "vol0")
	require.NoError(t, err)
	require.Equal(t, 10*time.Second, iv)
	require.NoError(t, ctl.SetCheckpointInterval(ctx, "vol0", 5*time.Second))
	iv, err = ctl.CheckpointInterval(ctx, "vol0")
	require.NoError(t, err)
	require.Equal(t, 5*time.Second, iv)
	require.ErrorIs(t, ctl.SetCheckpointInterval(ctx, "vol0", 25*time.Hour), ErrInvalid)

	// set-oldest-lsid: only the checkpointed written lsid (prev_written)
	// or a pack lsid below it.
	require.ErrorIs(t, ctl.SetOldestLsid(ctx, "vol0", 5), ErrInvalid)
	l, err = ctl.Lsids(ctx, "vol0")
	require.NoError(t, err)
	require.ErrorIs(t, ctl.SetOldestLsid(ctx, "vol0", l.PrevWritten+1), ErrInvalid, "above prev_written")
	require.Eventually(t, func() bool {
		require.NoError(t, ctl.TakeCheckpoint(ctx, "vol0"))
		l, err := ctl.Lsids(ctx, "vol0")
		require.NoError(t, err)
		return l.Written == permanent && l.PrevWritten == permanent
	}, time.Minute, 10*time.Millisecond, "a checkpoint makes written prev_written")
	require.NoError(t, ctl.SetOldestLsid(ctx, "vol0", permanent))
	oldest, err = ctl.OldestLsid(ctx, "vol0")
	require.NoError(t, err)
	require.Equal(t, permanent, oldest)
	_, err = ctl.CatLog(ctx, "vol0", 0, AutoLsid, io.Discard)
	require.ErrorIs(t, err, ErrInvalid, "below the oldest lsid")

	// Freeze: reset-wal and delete-wdev are refused meanwhile.
	require.NoError(t, ctl.Freeze(ctx, "vol0", 0))
	frozen, err := ctl.IsFrozen(ctx, "vol0")
	require.NoError(t, err)
	require.True(t, frozen)
	st, err = ctl.Info(ctx, "vol0")
	require.NoError(t, err)
	require.True(t, st.Frozen)
	require.False(t, st.Overflow)
	require.ErrorIs(t, ctl.ResetWAL(ctx, "vol0"), ErrState)
	require.ErrorIs(t, ctl.DeleteWdev(ctx, "vol0", false), ErrState)
	require.NoError(t, ctl.Melt(ctx, "vol0"))
	frozen, err = ctl.IsFrozen(ctx, "vol0")
	require.NoError(t, err)
	require.False(t, frozen)

	// Resize: shrinking is refused, 0 grows to the data device.
	require.ErrorIs(t, ctl.Resize(ctx, "vol0", 100), ErrInvalid)
	require.ErrorIs(t, ctl.Resize(ctx, "vol0", ddevSize/512+1), ErrInvalid)
	require.NoError(t, ctl.Resize(ctx, "vol0", 0))
	list, err = ctl.List(ctx)
	require.NoError(t, err)
	require.EqualValues(t, ddevSize/512, list[0].SizeLB)
	require.EqualValues(t, ddevSize, d.dial(t, "vol0").Size(), "a new connection sees the new size")

	// reset-wal: every lsid 0, a new uuid and salt.
	require.NoError(t, ctl.ResetWAL(ctx, "vol0"))
	for _, get := range []func(context.Context, string) (uint64, error){ctl.OldestLsid, ctl.PermanentLsid, ctl.WrittenLsid, ctl.CompletedLsid, ctl.LogUsage} {
		v, err := get(ctx, "vol0")
		require.NoError(t, err)
		require.Zero(t, v)
	}
	l, err = ctl.Lsids(ctx, "vol0")
	require.NoError(t, err)
	require.Equal(t, walb.Lsids{}, l)
	reset, err := ctl.Info(ctx, "vol0")
	require.NoError(t, err)
	require.NotEqual(t, st.UUID, reset.UUID, "reset-wal gives the log a new uuid")
	require.EqualValues(t, ddevSize/512, reset.SizeLB, "the resize shows")
	require.False(t, reset.Frozen)

	// Unknown devices.
	unknown := map[string]error{
		"delete":     ctl.DeleteWdev(ctx, "nope", false),
		"set-oldest": ctl.SetOldestLsid(ctx, "nope", 0),
		"freeze":     ctl.Freeze(ctx, "nope", 0),
		"melt":       ctl.Melt(ctx, "nope"),
		"reset":      ctl.ResetWAL(ctx, "nope"),
		"resize":     ctl.Resize(ctx, "nope", 0),
		"checkpoint": ctl.TakeCheckpoint(ctx, "nope"),
	}
	_, unknown["oldest"] = ctl.OldestLsid(ctx, "nope")
	_, unknown["usage"] = ctl.LogUsage(ctx, "nope")
	_, unknown["overflow"] = ctl.IsLogOverflow(ctx, "nope")
	_, unknown["cat-log"] = ctl.CatLog(ctx, "nope", AutoLsid, AutoLsid, io.Discard)
	_, unknown["lsids"] = ctl.Lsids(ctx, "nope")
	_, unknown["info"] = ctl.Info(ctx, "nope")
	for op, err := range unknown {
		require.ErrorIs(t, err, ErrNotFound, op)
	}

	// delete-wdev: the export goes away, the registry forgets the device,
	// and the data reached the data device.
	want := readAll(t, c)
	require.NoError(t, ctl.DeleteWdev(ctx, "vol0", false))
	list, err = ctl.List(ctx)
	require.NoError(t, err)
	require.Empty(t, list)
	_, err = ctl.OldestLsid(ctx, "vol0")
	require.ErrorIs(t, err, ErrNotFound)
	reg, err := LoadRegistry(d.Host().BaseDir())
	require.NoError(t, err)
	require.Empty(t, reg.Entries())
	onDisk, err := os.ReadFile(ddev)
	require.NoError(t, err)
	require.Len(t, onDisk, ddevSize)
	require.True(t, bytes.Equal(want, onDisk[:len(want)]), "the data device holds what was read through NBD")
	requireZero(t, onDisk[len(want):])
	_, err = c.ReadAt(make([]byte, 512), 0)
	require.Error(t, err, "the connection to the deleted export is closed")
}

// Devices come back after a restart, with their data; the options stay in
// the registry.
func TestHostReopensDevicesAfterRestart(t *testing.T) {
	ctx := testCtx(t)
	base, dir := t.TempDir(), t.TempDir()
	ldev, ddev := deviceFiles(t, dir, "vol0", 4<<20, 4<<20)
	d := startDaemon(t, base)
	_, err := d.client.CreateWdev(ctx, ldev, ddev, CreateOptions{Name: "vol0", MaxLogpackKB: 128})
	require.NoError(t, err)
	data := randomBytes(2, 512<<10)
	_, err = d.dial(t, "vol0").WriteAt(data, 4096)
	require.NoError(t, err)
	require.NoError(t, d.client.SetCheckpointInterval(ctx, "vol0", 1500*time.Millisecond))
	require.NoError(t, d.Shutdown(ctx))

	// A crash during a registry write leaves a temporary file behind.
	tmp := filepath.Join(base, "tmpAbC123")
	require.NoError(t, os.WriteFile(tmp, []byte("partial"), 0o600))

	d2 := startDaemon(t, base)
	_, err = os.Stat(tmp)
	require.True(t, os.IsNotExist(err), "leftover temporary file removed")
	list, err := d2.client.List(ctx)
	require.NoError(t, err)
	require.Len(t, list, 1)
	require.Equal(t, StateRunning, list[0].State)
	reg, err := LoadRegistry(base)
	require.NoError(t, err)
	e, ok := reg.Get("vol0")
	require.True(t, ok)
	require.EqualValues(t, 128, e.Options.MaxLogpackKB)
	iv, err := d2.client.CheckpointInterval(ctx, "vol0")
	require.NoError(t, err)
	require.Equal(t, 1500*time.Millisecond, iv, "the checkpoint interval survives the restart")
	got := make([]byte, len(data))
	_, err = d2.dial(t, "vol0").ReadAt(got, 4096)
	require.NoError(t, err)
	require.Equal(t, data, got)
}

// A device whose files disappeared stays registered as failed: the other
// devices serve, operations on it are refused with ErrState, and
// delete-wdev removes it.
func TestHostKeepsFailedDevices(t *testing.T) {
	ctx := testCtx(t)
	base, dir := t.TempDir(), t.TempDir()
	badL, badD := deviceFiles(t, dir, "bad", 4<<20, 4<<20)
	goodL, goodD := deviceFiles(t, dir, "good", 4<<20, 4<<20)
	d := startDaemon(t, base)
	_, err := d.client.CreateWdev(ctx, badL, badD, CreateOptions{})
	require.NoError(t, err)
	_, err = d.client.CreateWdev(ctx, goodL, goodD, CreateOptions{})
	require.NoError(t, err)
	require.NoError(t, d.Shutdown(ctx))
	require.NoError(t, os.Remove(badL))

	d2 := startDaemon(t, base)
	list, err := d2.client.List(ctx)
	require.NoError(t, err)
	require.Len(t, list, 2)
	require.Equal(t, "bad", list[0].Name)
	require.Equal(t, StateFailed, list[0].State)
	require.Contains(t, list[0].Error, "bad.ldev")
	require.Empty(t, list[0].URI, "not exported")
	require.Equal(t, StateRunning, list[1].State)
	_, err = d2.client.PermanentLsid(ctx, "bad")
	require.ErrorIs(t, err, ErrState)
	require.ErrorIs(t, d2.client.Freeze(ctx, "bad", 0), ErrState)
	_, err = d2.client.Info(ctx, "bad")
	require.ErrorIs(t, err, ErrState)
	_, err = d2.client.Lsids(ctx, "bad")
	require.ErrorIs(t, err, ErrState)
	_, err = d2.client.PermanentLsid(ctx, "good")
	require.NoError(t, err)
	require.NoError(t, d2.client.DeleteWdev(ctx, "bad", false))
	list, err = d2.client.List(ctx)
	require.NoError(t, err)
	require.Len(t, list, 1)
}

func TestHostLocksBaseAndFiles(t *testing.T) {
	ctx := testCtx(t)
	base, dir := t.TempDir(), t.TempDir()
	ldev, ddev := deviceFiles(t, dir, "vol0", 4<<20, 4<<20)
	d := startDaemon(t, base)
	_, err := d.client.CreateWdev(ctx, ldev, ddev, CreateOptions{})
	require.NoError(t, err)

	_, err = OpenHost(ctx, base, HostOptions{Logger: testLogger(t)})
	require.ErrorIs(t, err, ErrBusy, "one daemon per base directory")

	// Another host on another base cannot take the files either.
	h2, err := OpenHost(ctx, t.TempDir(), HostOptions{Logger: testLogger(t)})
	require.NoError(t, err)
	defer h2.Close()
	_, err = h2.CreateWdev(ctx, ldev, ddev, CreateOptions{})
	require.ErrorIs(t, err, ErrBusy)
	_, err = OpenShared(ldev, "log device")
	require.ErrorIs(t, err, ErrBusy, "cat-log on the image of a running device")
	_, err = OpenExclusive(ddev, "data device")
	require.ErrorIs(t, err, ErrBusy)

	require.NoError(t, d.Shutdown(ctx))
	f, err := OpenShared(ldev, "log device")
	require.NoError(t, err, "free once the daemon stopped")
	f.Close()
}

// Operations in flight on a device finish before delete-wdev closes it,
// and new ones are refused meanwhile.
func TestHostDeleteWaitsForOperations(t *testing.T) {
	ctx := testCtx(t)
	dir := t.TempDir()
	ldev, ddev := deviceFiles(t, dir, "vol0", 4<<20, 4<<20)
	h, err := OpenHost(ctx, t.TempDir(), HostOptions{Logger: testLogger(t)})
	require.NoError(t, err)
	defer h.Close()
	_, err = h.CreateWdev(ctx, ldev, ddev, CreateOptions{})
	require.NoError(t, err)

	// A cat-log whose writer blocks holds the device.
	w := &blockingWriter{started: make(chan struct{}), release: make(chan struct{})}
	catDone := make(chan error, 1)
	go func() {
		_, err := h.CatLog(ctx, "vol0", 0, 0, w)
		catDone <- err
	}()
	select {
	case <-w.started:
	case err := <-catDone:
		t.Fatalf("cat-log ended before writing: %v", err)
	}
	delDone := make(chan error, 1)
	go func() { delDone <- h.DeleteWdev(ctx, "vol0", false) }()
	require.Eventually(t, func() bool {
		di, err := h.Describe(ctx, "vol0")
		return err == nil && di.State == StateDeleting
	}, time.Minute, time.Millisecond)
	_, err = h.OldestLsid(ctx, "vol0")
	require.ErrorIs(t, err, ErrState, "refused while being deleted")
	require.ErrorIs(t, h.DeleteWdev(ctx, "vol0", false), ErrState)
	select {
	case err := <-delDone:
		t.Fatalf("delete finished while an operation was running: %v", err)
	default:
	}
	close(w.release)
	require.NoError(t, <-catDone)
	require.NoError(t, <-delDone)
	_, err = h.Describe(ctx, "vol0")
	require.ErrorIs(t, err, ErrNotFound)
}

type blockingWriter struct {
	started, release chan struct{}
	once             bool
}

func (b *blockingWriter) Write(p []byte) (int, error) {
	if !b.once {
		b.once = true
		close(b.started)
		<-b.release
	}
	return len(p), nil
}

func TestHostClosedRefusesEverything(t *testing.T) {
	ctx := testCtx(t)
	h, err := OpenHost(ctx, t.TempDir(), HostOptions{Logger: testLogger(t)})
	require.NoError(t, err)
	require.NoError(t, h.Close())
	require.ErrorIs(t, h.Close(), ErrShutdown)
	_, err = h.CreateWdev(ctx, "/a", "/b", CreateOptions{Name: "x"})
	require.ErrorIs(t, err, ErrShutdown)
	_, err = h.OldestLsid(ctx, "x")
	require.ErrorIs(t, err, ErrShutdown)
	require.ErrorIs(t, h.DeleteWdev(ctx, "x", false), ErrShutdown)
}

// delete-wdev -f on a frozen device lets the writes waiting on it finish,
// instead of holding the export until the drain timeout.
func TestDeleteForceMeltsFrozenDevice(t *testing.T) {
	ctx := testCtx(t)
	d, _, ddev := daemonWithDevice(t, "vol0", 4<<20, 4<<20)
	c := d.dial(t, "vol0")
	require.NoError(t, d.client.Freeze(ctx, "vol0", 0))
	data := randomBytes(7, 64<<10)
	wrote := make(chan error, 1)
	go func() {
		_, err := c.WriteAt(data, 0)
		wrote <- err
	}()
	// Wait until the write is queued on the frozen device (the daemon runs
	// in this process, so its goroutines can be seen): only then is it an
	// NBD request in flight.
	require.Eventually(t, func() bool {
		buf := make([]byte, 4<<20)
		return bytes.Contains(buf[:runtime.Stack(buf, true)], []byte("walb.(*Device).waitAll"))
	}, time.Minute, time.Millisecond)
	require.Empty(t, wrote, "writes wait while frozen")
	require.ErrorIs(t, d.client.DeleteWdev(ctx, "vol0", false), ErrState)
	require.NoError(t, d.client.DeleteWdev(ctx, "vol0", true))
	require.NoError(t, <-wrote, "the waiting write was acknowledged before the export went away")
	got, err := os.ReadFile(ddev)
	require.NoError(t, err)
	require.True(t, bytes.Equal(data, got[:len(data)]), "and it reached the data device")
}
