package meta

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

func withCrashAt(t *testing.T, step string) {
	t.Helper()
	testCrash = func(s string) bool { return s == step }
	t.Cleanup(func() { testCrash = nil })
}

func tempNames(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	var v []string
	for _, e := range ents {
		if IsTempName(e.Name()) {
			v = append(v, e.Name())
		}
	}
	return v
}

func TestWriteFileAtomic(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "state")
	require.NoError(t, WriteFileAtomic(p, []byte("old"), 0o640))
	require.NoError(t, WriteFileAtomic(p, []byte("new"), 0o600))
	b, err := os.ReadFile(p)
	require.NoError(t, err)
	require.Equal(t, "new", string(b))
	fi, err := os.Stat(p)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	require.Empty(t, tempNames(t, dir))

	require.Error(t, WriteFileAtomic(filepath.Join(dir, "missing", "x"), nil, 0o644))
}

// A crash at each durability step leaves the old content (before the rename)
// or the new one (after), and at most a temporary that CleanTemps removes.
func TestWriteFileAtomicCrash(t *testing.T) {
	for _, c := range []struct {
		step    string
		want    string
		leftTmp bool
	}{
		{"written", "old", true},
		{"synced", "old", true},
		{"renamed", "new", false},
	} {
		t.Run(c.step, func(t *testing.T) {
			dir := t.TempDir()
			p := filepath.Join(dir, "base")
			require.NoError(t, WriteFileAtomic(p, []byte("old"), 0o644))
			withCrashAt(t, c.step)
			require.ErrorIs(t, WriteFileAtomic(p, []byte("new"), 0o644), errSimulatedCrash)
			testCrash = nil
			b, err := os.ReadFile(p)
			require.NoError(t, err)
			require.Equal(t, c.want, string(b))
			left := tempNames(t, dir)
			require.Equal(t, c.leftTmp, len(left) == 1, "temporaries: %v", left)
			gone, err := CleanTemps(dir)
			require.NoError(t, err)
			require.Equal(t, left, gone)
			require.Empty(t, tempNames(t, dir))
			b, err = os.ReadFile(p)
			require.NoError(t, err)
			require.Equal(t, c.want, string(b))
		})
	}
}

func TestCleanTempsLeavesOthers(t *testing.T) {
	dir := t.TempDir()
	keep := []string{"base", "tmp", "tmpabc", "tmpabcdefg", "tmpab-def", "xtmpabcdef", "20170714024000-M--10-20.wdiff"}
	for _, n := range append(keep, "tmpA1b2C3", "tmp000000") {
		require.NoError(t, os.WriteFile(filepath.Join(dir, n), nil, 0o644))
	}
	require.NoError(t, os.Mkdir(filepath.Join(dir, "tmpDIRxxx"), 0o755))
	gone, err := CleanTemps(dir)
	require.NoError(t, err)
	require.ElementsMatch(t, []string{"tmpA1b2C3", "tmp000000"}, gone)
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	var left []string
	for _, e := range ents {
		left = append(left, e.Name())
	}
	require.ElementsMatch(t, append(keep, "tmpDIRxxx"), left)
	_, err = CleanTemps(filepath.Join(dir, "missing"))
	require.Error(t, err)
}

func TestTempFileCommitAbort(t *testing.T) {
	dir := t.TempDir()
	tf, err := CreateTemp(dir, 0o644)
	require.NoError(t, err)
	require.True(t, IsTempName(filepath.Base(tf.Name())))
	_, err = tf.Write([]byte("wdiff data"))
	require.NoError(t, err)
	require.Error(t, tf.Commit(filepath.Join(t.TempDir(), "elsewhere.wdiff")), "must stay in its directory")
	require.NoError(t, tf.Abort())
	require.Empty(t, tempNames(t, dir))

	tf, err = CreateTemp(dir, 0o644)
	require.NoError(t, err)
	_, err = tf.Write([]byte("x"))
	require.NoError(t, err)
	final := filepath.Join(dir, "20170714024000-M--10-20.wdiff")
	require.NoError(t, tf.Commit(final))
	require.NoError(t, tf.Abort(), "abort after commit is a no-op")
	b, err := os.ReadFile(final)
	require.NoError(t, err)
	require.Equal(t, "x", string(b))
	require.Error(t, tf.Commit(final))
}

func TestSaveLoadTypes(t *testing.T) {
	dir := t.TempDir()
	values := []struct {
		v    Encodable
		back Decodable
	}{
		{NewApplyingState(sn(0, 10), sn(25), ts(1500000000)), new(State)},
		{DefaultState(), new(State)},
		{LsidGid{Lsid: 100, Gid: 5, Mergeable: true, Timestamp: ts(3)}, new(LsidGid)},
		{Diff{SnapB: sn(1), SnapE: sn(2), DataSize: 9}, new(Diff)},
		{sn(4, 8), new(Snap)},
		{UUID{1, 2, 3}, new(UUID)},
	}
	for i, c := range values {
		p := filepath.Join(dir, "v")
		require.NoError(t, Save(p, c.v), "%d", i)
		require.NoError(t, Load(p, c.back), "%d", i)
		want, _ := Marshal(c.v)
		got, _ := Marshal(c.back.(Encodable))
		require.Equal(t, want, got, "%d", i)
	}
	// Plain values through the func forms (the state, path and size files).
	p := filepath.Join(dir, "state")
	require.NoError(t, SaveFunc(p, func(e *Encoder) error { return e.String("Archived") }))
	var s string
	require.NoError(t, LoadFunc(p, func(d *Decoder) (err error) { s, err = d.String(64); return }))
	require.Equal(t, "Archived", s)
	p = filepath.Join(dir, "123.cold")
	require.NoError(t, SaveFunc(p, func(e *Encoder) error { return e.U64(1500000000) }))
	var u uint64
	require.NoError(t, LoadFunc(p, func(d *Decoder) (err error) { u, err = d.U64(); return }))
	require.Equal(t, uint64(1500000000), u)

	// Encoding errors abort the save and leave the old file.
	require.Error(t, Save(p, df(sn(2), sn(1))))
	require.NoError(t, LoadFunc(p, func(d *Decoder) (err error) { u, err = d.U64(); return }))
	require.Empty(t, tempNames(t, dir))

	var st State
	require.Error(t, Load(filepath.Join(dir, "missing"), &st))
}

// Every flipped byte and every truncation of a saved file is detected,
// except a cut exactly at the trailer, which leaves a complete walb-tools
// style file holding the same value.
func TestLoadDetectsCorruption(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "base")
	orig := NewApplyingState(sn(100, 200), sn(300), ts(1500000000))
	require.NoError(t, Save(p, orig))
	img, err := os.ReadFile(p)
	require.NoError(t, err)
	body, _ := Marshal(orig)
	require.Equal(t, body, img[:len(img)-trailerSize])

	load := func(b []byte) (State, error) {
		require.NoError(t, os.WriteFile(p, b, 0o644))
		var st State
		err := Load(p, &st)
		return st, err
	}
	for i := range img {
		for _, mask := range []byte{0x01, 0x80, 0xFF} {
			b := bytes.Clone(img)
			b[i] ^= mask
			_, err := load(b)
			require.ErrorIs(t, err, ErrCorrupt, "byte %d mask %#x", i, mask)
		}
	}
	for n := 0; n < len(img); n++ {
		st, err := load(img[:n])
		if n == len(body) {
			require.NoError(t, err)
			require.True(t, orig.Equal(st))
			continue
		}
		require.ErrorIs(t, err, ErrCorrupt, "length %d", n)
	}
	_, err = load(append(bytes.Clone(img), 0))
	require.ErrorIs(t, err, ErrCorrupt)
	_, err = load(make([]byte, MaxMetaFileSize+1))
	require.ErrorIs(t, err, ErrCorrupt)
}

// Files written by walb-tools have no trailer.
func TestLoadLegacy(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "done")
	legacy := unhex(t, "14 03 00 00 FF FF") // MetaLsidGid(): lsid -1, gid -1
	require.NoError(t, os.WriteFile(p, legacy, 0o644))
	var r LsidGid
	require.NoError(t, Load(p, &r))
	require.Equal(t, DefaultLsidGid(), r)
	require.NoError(t, os.WriteFile(p, append(legacy, 0), 0o644))
	require.ErrorIs(t, Load(p, &r), ErrCorrupt)
	p = filepath.Join(dir, "state")
	readState := func() (s string, err error) {
		err = LoadFunc(p, func(d *Decoder) (err error) { s, err = d.String(64); return })
		return
	}
	require.NoError(t, os.WriteFile(p, unhex(t, "08 4172636869766564"), 0o644))
	s, err := readState()
	require.NoError(t, err)
	require.Equal(t, "Archived", s)
	require.NoError(t, os.WriteFile(p, unhex(t, "08 41726368697665"), 0o644))
	_, err = readState()
	require.ErrorIs(t, err, ErrCorrupt, "length 8 but 7 bytes")
}
