package archive

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/wdiff"
)

// TestBadVolumeNames: names that could escape the base directory or break
// image names are refused by every command before anything is touched.
func TestBadVolumeNames(t *testing.T) {
	env := newEnv(t, nil)
	ctx := testCtx(t)
	before := env.dirSnapshot()
	for _, name := range []string{"", "../x", "..", "a/b", "a_b", "x y", strings.Repeat("v", 65), "vol\x00"} {
		calls := map[string]error{
			"init-vol":  env.e.InitVol(ctx, name),
			"clear-vol": env.e.ClearVol(ctx, name),
			"reset-vol": env.e.ResetVol(ctx, name),
			"start":     env.e.Start(ctx, name),
			"stop":      env.e.Stop(ctx, name, StopForce),
			"restore":   env.e.Restore(ctx, name, 1),
			"apply":     env.e.Apply(ctx, name, 1),
			"merge":     env.e.Merge(ctx, name, MergeRange{GidB: 0, GidE: 5}),
			"resize":    env.e.Resize(ctx, name, 100),
			"del":       env.e.DelRestored(ctx, name, 1),
			"snapshot":  env.e.SetSnapshotEnabled(ctx, name, []uint64{1}, true),
			"wdiff":     env.e.ReceiveWdiff(ctx, name, WdiffHeader{Sender: SenderProxy, SizeLB: 8, Diff: cleanDiff(0, 1, false)}, bytes.NewReader(nil)),
		}
		_, calls["gc"] = env.e.GcDiff(ctx, name)
		_, calls["full-sync"] = env.e.BeginFullSync(ctx, name, 8)
		_, calls["state"] = env.e.State(name)
		_, calls["diffs"] = env.e.Diffs(name, 0, 10)
		for cmd, err := range calls {
			require.ErrorIs(t, err, ErrBadVolumeName, "%s %q", cmd, name)
		}
	}
	require.Equal(t, before, env.dirSnapshot())
}

// TestUnknownVolumeAndGids: commands on a volume without a directory are
// wrong-state or not-found; gids that cannot be served are refused with
// the right error and nothing changes.
func TestUnknownVolumeAndGids(t *testing.T) {
	tv := newTableVol(t)
	env, e := tv.env, tv.env.e
	ctx := testCtx(t)
	before := env.dirSnapshot()
	const unknown = "nosuch"
	require.ErrorIs(t, e.Restore(ctx, unknown, 1), ErrWrongState)
	require.ErrorIs(t, e.Apply(ctx, unknown, 1), ErrWrongState)
	require.ErrorIs(t, e.ClearVol(ctx, unknown), ErrWrongState)
	require.ErrorIs(t, e.Start(ctx, unknown), ErrWrongState)
	require.ErrorIs(t, e.Stop(ctx, unknown, StopGraceful), ErrWrongState)
	_, err := e.Base(unknown)
	require.ErrorIs(t, err, ErrNotFound)
	_, err = e.VolSize(unknown)
	require.ErrorIs(t, err, ErrNotFound)
	pts, err := e.Restorable(unknown, true)
	require.NoError(t, err)
	require.Empty(t, pts)

	require.ErrorIs(t, e.Restore(ctx, tvol, 99), ErrNotRestorable)
	require.ErrorIs(t, e.Restore(ctx, tvol, 1), ErrExists, "already restored")
	require.ErrorIs(t, e.DelRestored(ctx, tvol, 2), ErrNotFound)
	require.ErrorIs(t, e.Apply(ctx, tvol, 0), ErrNothingToApply)
	require.ErrorIs(t, e.Merge(ctx, tvol, MergeRange{GidB: 3, GidE: 10}), ErrNothingToMerge)
	require.ErrorIs(t, e.Merge(ctx, tvol, MergeRange{GidB: 2, GidE: 1}), ErrBadArgs)
	require.ErrorIs(t, e.Resize(ctx, tvol, 100), ErrShrink)
	require.ErrorIs(t, e.SetSnapshotEnabled(ctx, tvol, []uint64{7}, true), ErrNotFound)
	_, err = e.NumAction(tvol, "Dance")
	require.ErrorIs(t, err, ErrBadArgs)
	require.Equal(t, before, env.dirSnapshot())
}

// TestCorruptWdiffStreams: a damaged, truncated or malformed wdiff stream
// is refused (ErrCorruptStream) and leaves nothing behind; a good stream
// read in small pieces is accepted.
func TestCorruptWdiffStreams(t *testing.T) {
	tv := newTableVol(t)
	env, e := tv.env, tv.env.e
	ctx := testCtx(t)
	good := tv.nxt
	d := cleanDiff(3, 4, false)
	send := func(data []byte, sizeLB uint64) error {
		return e.ReceiveWdiff(ctx, tvol, WdiffHeader{Sender: SenderProxy, UUID: tv.m.uuid, SizeLB: sizeLB, Diff: d}, bytes.NewReader(data))
	}
	flip := func(off int) []byte {
		b := bytes.Clone(good)
		b[off] ^= 0x40
		return b
	}
	indexed := newModel(5, 256).wdiff(t, 3, true)
	before := env.dirSnapshot()
	cases := map[string][]byte{
		"empty":            nil,
		"header only":      good[:wdiff.FileHeaderSize],
		"short header":     good[:10],
		"bad header csum":  flip(1),
		"bad pack csum":    flip(wdiff.FileHeaderSize + 2),
		"bad data":         flip(wdiff.FileHeaderSize + wdiff.PackHeaderSize + 5),
		"cut in a pack":    good[:wdiff.FileHeaderSize+wdiff.PackHeaderSize+7],
		"no end pack":      good[:len(good)-wdiff.PackHeaderSize],
		"cut in end pack":  good[:len(good)-100],
		"trailing garbage": append(bytes.Clone(good), 1, 2, 3),
		"two files":        append(bytes.Clone(good), good...),
		"indexed layout":   indexed,
	}
	for name, data := range cases {
		err := send(data, 256)
		require.ErrorIs(t, err, ErrCorruptStream, name)
		require.Equal(t, before, env.dirSnapshot(), name)
	}
	// Records past the announced volume size.
	require.ErrorIs(t, send(good, 4), ErrCorruptStream)
	require.Equal(t, before, env.dirSnapshot())

	// Good data, read one byte or half a buffer at a time.
	err := e.ReceiveWdiff(ctx, tvol, WdiffHeader{Sender: SenderProxy, UUID: tv.m.uuid, SizeLB: 256, Diff: d}, iotest.OneByteReader(bytes.NewReader(good)))
	require.NoError(t, err)
	next := tv.m.nextWdiff(t, 5)
	err = e.ReceiveWdiff(ctx, tvol, WdiffHeader{Sender: SenderProxy, UUID: tv.m.uuid, SizeLB: 256, Diff: cleanDiff(4, 5, true)}, iotest.HalfReader(bytes.NewReader(next)))
	require.NoError(t, err)
	// A failing reader keeps its error.
	boom := iotest.ErrReader(context.Canceled)
	err = e.ReceiveWdiff(ctx, tvol, WdiffHeader{Sender: SenderProxy, UUID: tv.m.uuid, SizeLB: 256, Diff: cleanDiff(5, 6, true)}, boom)
	require.ErrorIs(t, err, context.Canceled)
	st, _ := e.State(tvol)
	require.Equal(t, StateArchived, st)
}

// TestFullSyncBadInput: a full sync that is malformed or incomplete is
// refused and the volume goes back to SyncReady.
func TestFullSyncBadInput(t *testing.T) {
	env := newEnv(t, nil)
	ctx := testCtx(t)
	const vol = "fs"
	require.NoError(t, env.e.InitVol(ctx, vol))
	_, err := env.e.BeginFullSync(ctx, vol, 0)
	require.ErrorIs(t, err, ErrBadArgs)

	f, err := env.e.BeginFullSync(ctx, vol, 16)
	require.NoError(t, err)
	_, err = f.Write(make([]byte, 100))
	require.ErrorIs(t, err, ErrCorruptStream)
	_, err = f.Write(make([]byte, 8*512))
	require.NoError(t, err)
	require.ErrorIs(t, f.WriteZeros(9), ErrCorruptStream, "past the size")
	require.ErrorIs(t, f.Commit(meta.CleanSnap(0), diffTs(0), meta.UUID{1}), ErrCorruptStream, "short")
	st, _ := env.e.State(vol)
	require.Equal(t, StateSyncReady, st)

	// Aborted: still SyncReady, and a retry works.
	f, err = env.e.BeginFullSync(ctx, vol, 16)
	require.NoError(t, err)
	_, err = env.e.BeginFullSync(ctx, vol, 16)
	require.ErrorIs(t, err, ErrWrongState, "one full sync at a time")
	f.Abort()
	st, _ = env.e.State(vol)
	require.Equal(t, StateSyncReady, st)
	m := newModel(1, 16)
	env.fullSync(ctx, vol, m, meta.CleanSnap(5))
	require.Equal(t, shaOf(m.img), env.baseSHA(vol))
	require.Equal(t, shaOf(m.img), env.restoredSHA(ctx, vol, 5))
}
