package archive

import (
	"bytes"
	"context"
	"slices"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/meta"
	"github.com/walb-go/walb/server"
)

// The expected preconditions, written from system.md §5.1 independently of
// the package's Preconditions table.
var (
	specActive          = []string{StateArchived, StateHashSync, StateWdiffRecv, StateReplSyncAsServer}
	specActiveOrStopped = append(slices.Clone(specActive), StateStopped)
	specAll             = []string{ActionMerge, ActionApply, ActionRestore, ActionReplSyncAsClient, ActionResize}
)

type specRow struct {
	states []string
	deny   []string
}

var specTable = map[Command]specRow{
	CmdInitVol:         {[]string{StateClear}, specAll},
	CmdClearVol:        {[]string{StateSyncReady, StateStopped}, specAll},
	CmdResetVol:        {[]string{StateStopped, StateSyncReady}, specAll},
	CmdStart:           {[]string{StateStopped}, specAll},
	CmdStop:            {[]string{StateArchived}, nil},
	CmdRestore:         {specActive, []string{ActionRestore, ActionResize}},
	CmdDelRestored:     {specActiveOrStopped, []string{ActionRestore, ActionResize}},
	CmdApply:           {specActive, []string{ActionRestore, ActionReplSyncAsClient, ActionApply, ActionMerge, ActionResize}},
	CmdMerge:           {specActive, []string{ActionApply, ActionMerge, ActionResize}},
	CmdResize:          {append([]string{StateSyncReady}, specActiveOrStopped...), []string{ActionRestore, ActionReplSyncAsClient, ActionApply, ActionResize}},
	CmdDisableSnapshot: {specActive, []string{ActionApply, ActionMerge}},
	CmdEnableSnapshot:  {specActive, []string{ActionApply, ActionMerge}},
	CmdGcDiff:          {specActiveOrStopped, specAll},
	CmdFullSync:        {[]string{StateSyncReady}, specAll},
	CmdWdiffTransfer:   {[]string{StateArchived}, nil},
	CmdHashSync:        {[]string{StateArchived}, specAll},
	CmdReplicate:       {specActive, []string{ActionRestore, ActionReplSyncAsClient, ActionApply, ActionMerge, ActionResize}},
	CmdReplServer:      {[]string{StateSyncReady, StateArchived}, specAll},
	CmdBlockHash:       {specActiveOrStopped, []string{ActionApply, ActionMerge, ActionResize}},
}

// tableVol is a volume with a base, three diffs (gids 0..3, 1->2 and 2->3
// mergeable) and gid 1 restored: every command has something to act on.
type tableVol struct {
	env *testEnv
	m   *model
	nxt []byte // the next diff, 3->4
}

const tvol = "tv"

func newTableVol(t *testing.T) *tableVol {
	env := newEnv(t, nil)
	ctx := testCtx(t)
	m := newModel(11, 256)
	require.NoError(t, env.e.InitVol(ctx, tvol))
	env.fullSync(ctx, tvol, m, meta.CleanSnap(0))
	for g := uint64(0); g < 3; g++ {
		require.NoError(t, env.sendDiff(ctx, tvol, m, cleanDiff(g, g+1, g > 0), m.nextWdiff(t, 5)))
	}
	require.NoError(t, env.e.Restore(ctx, tvol, 1))
	return &tableVol{env: env, m: m, nxt: m.nextWdiff(t, 5)}
}

// run calls cmd on the table volume. Commands that take effect through a
// Prepare step are prepared and cancelled, which is enough to pass or fail
// the precondition check.
func (tv *tableVol) run(ctx context.Context, cmd Command) error {
	e := tv.env.e
	switch cmd {
	case CmdInitVol:
		return e.InitVol(ctx, tvol)
	case CmdClearVol:
		return e.ClearVol(ctx, tvol)
	case CmdResetVol:
		return e.ResetVol(ctx, tvol)
	case CmdStart:
		return e.Start(ctx, tvol)
	case CmdStop:
		sctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
		defer cancel()
		return e.Stop(sctx, tvol, StopGraceful)
	case CmdRestore:
		r, err := e.PrepareRestore(tvol, 2)
		if err == nil {
			r.Cancel()
		}
		return err
	case CmdDelRestored:
		return e.DelRestored(ctx, tvol, 1)
	case CmdApply:
		a, err := e.PrepareApply(tvol, 2)
		if err == nil {
			a.Cancel()
		}
		return err
	case CmdMerge:
		m, err := e.PrepareMerge(tvol, MergeRange{GidB: 1, GidE: 3})
		if err == nil {
			m.Cancel()
		}
		return err
	case CmdResize:
		return e.Resize(ctx, tvol, 512)
	case CmdDisableSnapshot:
		return e.SetSnapshotEnabled(ctx, tvol, []uint64{0}, false)
	case CmdEnableSnapshot:
		return e.SetSnapshotEnabled(ctx, tvol, []uint64{1}, true)
	case CmdGcDiff:
		_, err := e.GcDiff(ctx, tvol)
		return err
	case CmdFullSync:
		f, err := e.BeginFullSync(ctx, tvol, 256)
		if err == nil {
			f.Abort()
		}
		return err
	case CmdWdiffTransfer:
		return tv.env.sendDiff(ctx, tvol, tv.m, cleanDiff(3, 4, false), tv.nxt)
	case CmdHashSync, CmdBlockHash:
		return tv.runHashCommand(ctx, cmd)
	case CmdReplicate, CmdReplServer:
		return tv.runReplCommand(ctx, cmd)
	}
	panic("unknown command " + cmd)
}

// enter puts the volume in state st (in memory; transient states are held
// by an open transaction) and returns the function that leaves it.
func (tv *tableVol) enter(t *testing.T, st string) func() {
	vs := tv.env.e.vols
	if !Table.IsTransient(st) {
		require.NoError(t, vs.Set(tvol, st))
		return func() {}
	}
	for _, from := range Table.States() {
		if Table.IsTransient(from) || !Table.CanChange(from, st) {
			continue
		}
		require.NoError(t, vs.Set(tvol, from))
		tx, err := vs.Begin(context.Background(), tvol, st, server.Guard{})
		require.NoError(t, err)
		return tx.Rollback
	}
	t.Fatalf("no way into %s", st)
	return nil
}

// refusedInState reports whether err is a refusal for the state.
func refusedInState(cmd Command, err error) bool {
	if errorsIs(err, ErrWrongState) {
		return true
	}
	if cmd == CmdWdiffTransfer {
		return errorsIs(err, ErrVolStopped) || errorsIs(err, ErrSyncing) || errorsIs(err, ErrWdiffRecv)
	}
	return false
}

// TestCommandStateTable runs every command in every state (system.md
// §5.1): allowed states pass the precondition check; in every other state
// the command fails with a state error and changes nothing, on disk or in
// memory.
func TestCommandStateTable(t *testing.T) {
	require.ElementsMatch(t, slices.Collect(mapKeys(specTable)), slices.Collect(mapKeys(Preconditions)))
	ctx := testCtx(t)
	for _, cmd := range sortedCommands() {
		t.Run(string(cmd), func(t *testing.T) {
			t.Parallel()
			tv := newTableVol(t)
			for _, st := range Table.States() {
				leave := tv.enter(t, st)
				before := tv.env.dirSnapshot()
				err := tv.run(ctx, cmd)
				after := tv.env.dirSnapshot()
				leave()
				if slices.Contains(specTable[cmd].states, st) {
					require.False(t, refusedInState(cmd, err), "%s in %s: %v", cmd, st, err)
					if !bytes.Equal([]byte(fmtMap(before)), []byte(fmtMap(after))) {
						tv = newTableVol(t) // it did something: start afresh
					}
					continue
				}
				require.Error(t, err, "%s in %s", cmd, st)
				require.True(t, refusedInState(cmd, err), "%s in %s: %v", cmd, st, err)
				require.Equal(t, before, after, "%s in %s changed something", cmd, st)
			}
		})
	}
}

// TestCommandActionTable runs every command while each action runs on the
// volume (in an allowed state): denied actions refuse it with
// ErrActionRunning and nothing changes.
func TestCommandActionTable(t *testing.T) {
	ctx := testCtx(t)
	for _, cmd := range sortedCommands() {
		t.Run(string(cmd), func(t *testing.T) {
			t.Parallel()
			tv := newTableVol(t)
			row := specTable[cmd]
			for _, action := range specAll {
				leaveState := tv.enter(t, row.states[0])
				end, err := tv.env.e.vols.StartAction(tvol, action, server.Guard{})
				require.NoError(t, err)
				before := tv.env.dirSnapshot()
				err = tv.run(ctx, cmd)
				after := tv.env.dirSnapshot()
				end()
				leaveState()
				if cmd == CmdStop {
					// stop denies nothing but waits (up to StopWait) for
					// running actions; here it gives up after 100 ms.
					require.ErrorIs(t, err, ErrActionRunning)
					require.Equal(t, before, after)
					continue
				}
				if !slices.Contains(row.deny, action) {
					require.False(t, errorsIs(err, ErrActionRunning), "%s with %s running: %v", cmd, action, err)
					if fmtMap(before) != fmtMap(after) {
						tv = newTableVol(t)
					}
					continue
				}
				require.Error(t, err, "%s with %s running", cmd, action)
				require.True(t, errorsIs(err, ErrActionRunning), "%s with %s running: %v", cmd, action, err)
				require.Equal(t, before, after, "%s with %s running changed something", cmd, action)
			}
		})
	}
}

// TestStoppingRefusesWork: while a stop is in progress, new actions and
// transfers are refused.
func TestStoppingRefusesWork(t *testing.T) {
	tv := newTableVol(t)
	ctx := testCtx(t)
	end, err := tv.env.e.vols.BeginStop(tvol, server.Stopping)
	require.NoError(t, err)
	defer end()
	before := tv.env.dirSnapshot()
	for _, cmd := range []Command{CmdRestore, CmdApply, CmdMerge, CmdResize, CmdWdiffTransfer, CmdDelRestored} {
		err := tv.run(ctx, cmd)
		require.ErrorIs(t, err, ErrStopping, "%s", cmd)
	}
	require.Equal(t, before, tv.env.dirSnapshot())
}
