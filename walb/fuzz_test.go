package walb

import (
	"bytes"
	"context"
	"io"
	"os"
	"testing"
	"testing/iotest"

	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/internal/fixtures"
	"github.com/walb-go/walb/wlog"
)

func FuzzParseSuper(f *testing.F) {
	for _, fx := range ldevFixtures {
		b, err := os.ReadFile(fixtures.Path(f, "ldev", fx.name+".formatted.head16k.img"))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b[PageSize : PageSize+int(fx.pbs)])
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := ParseSuper(b)
		if err != nil {
			return
		}
		require.NoError(t, s.Validate())
		m := s.Marshal()
		s2, err := ParseSuper(m)
		require.NoError(t, err)
		require.Equal(t, s, s2)
		require.Equal(t, m, s2.Marshal())
	})
}

// fuzzRingPB is the ring size of the log device images FuzzReadLog builds.
const fuzzRingPB = 24

// FuzzReadLog feeds arbitrary ring contents to the log reader: it must not
// fail on damage (the log just ends), and what it extracts must be a valid
// wlog whose packs are lsid-contiguous.
func FuzzReadLog(f *testing.F) {
	const pbs = 512
	ldevBytes := (fuzzRingPB + PageSize/pbs + 2) * pbs
	base := formatMem(f, pbs, ldevBytes, make([]byte, 64<<10), 0)
	s, err := ReadSuper(bytes.NewReader(base), 0)
	if err != nil {
		f.Fatal(err)
	}
	ringOff := s.LsidOffset(0)

	// A seed with real packs, written by the device.
	ctl := newCrashCtl(1, 0)
	ldev := ctl.disk(base, pbs)
	dev, err := OpenStorage(context.Background(), ldev, ctl.disk(make([]byte, 64<<10), pbs), Options{Logger: quietLogger()})
	if err != nil {
		f.Fatal(err)
	}
	for i := range 3 {
		if _, err := dev.WriteAt(bytes.Repeat([]byte{byte(i + 1)}, 1024), int64(i)*4096); err != nil {
			f.Fatal(err)
		}
	}
	if err := dev.Trim(8192, 4096); err != nil {
		f.Fatal(err)
	}
	if err := dev.Close(); err != nil {
		f.Fatal(err)
	}
	written := ldev.snapshot()
	f.Add(written[ringOff:])
	f.Add(make([]byte, fuzzRingPB*pbs))

	f.Fuzz(func(t *testing.T, ringData []byte) {
		img := bytes.Clone(base)
		copy(img[ringOff:], ringData)
		l, err := NewLogDevice(newCrashCtl(0, 0).disk(img, pbs), 0)
		require.NoError(t, err)
		var out bytes.Buffer
		end, err := l.ReadLog(context.Background(), 0, wlog.InvalidLsid, &out)
		require.NoError(t, err)
		require.LessOrEqual(t, end, uint64(fuzzRingPB))
		st, err := wlog.Show(io.Discard, &out, wlog.ShowOptions{})
		require.NoError(t, err)
		require.Equal(t, end, st.RealEndLsid)
	})
}

// TestReadSuperShortInput checks that truncated images fail cleanly.
func TestReadSuperShortInput(t *testing.T) {
	b, err := os.ReadFile(fixtures.Path(t, "ldev", "ldev_p4096_clip.formatted.head16k.img"))
	require.NoError(t, err)
	for _, n := range []int{0, 100, PageSize, PageSize + 511, PageSize + 4095} {
		_, err := ReadSuper(bytes.NewReader(b[:n]), 0)
		require.Error(t, err, "image of %d bytes", n)
	}
	for _, n := range []int{0, 8191, 8191 + PageSize} {
		_, err := ParseSuper(make([]byte, n%PageSize))
		require.Error(t, err)
	}
}

// failWriter fails after n bytes.
type failWriter struct{ n int }

func (w *failWriter) Write(p []byte) (int, error) {
	if len(p) > w.n {
		k := w.n
		w.n = 0
		return k, io.ErrClosedPipe
	}
	w.n -= len(p)
	return len(p), nil
}

// TestReadLogStreams checks that the extracted wlog reads back through
// short and one-byte readers, and that a failing writer stops ReadLog.
func TestReadLogStreams(t *testing.T) {
	ctx := context.Background()
	l, err := OpenLogDevice(fixtures.Path(t, "ldev", "ldev_p512_wrap.restored.img"), 0)
	require.NoError(t, err)
	defer l.Close()
	var out bytes.Buffer
	_, err = l.ReadLog(ctx, 0, wlog.InvalidLsid, &out)
	require.NoError(t, err)
	for name, r := range map[string]io.Reader{
		"one-byte": iotest.OneByteReader(bytes.NewReader(out.Bytes())),
		"half":     iotest.HalfReader(bytes.NewReader(out.Bytes())),
	} {
		st, err := wlog.Show(io.Discard, r, wlog.ShowOptions{})
		require.NoError(t, err, name)
		require.Equal(t, uint64(1366), st.RealEndLsid, name)
	}
	for _, n := range []int{0, 100, 4096, 100000} {
		_, err = l.ReadLog(ctx, 0, wlog.InvalidLsid, &failWriter{n: n})
		require.ErrorIs(t, err, io.ErrClosedPipe, "fail after %d bytes", n)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_, err = l.ReadLog(cctx, 0, wlog.InvalidLsid, io.Discard)
	require.ErrorIs(t, err, context.Canceled)
	_, err = l.ReadLog(ctx, 900, 900, io.Discard)
	require.ErrorIs(t, err, ErrInvalid)
}
