package server

import (
	"context"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/pkg/errors"
)

// StopState is a volume's stop progress (system.md §6.4). New work requires
// NotStopping (the proxy's sender also accepts WaitingForEmpty); long loops
// check for ForceStopping between bulks.
type StopState int

// Stop states.
const (
	NotStopping StopState = iota
	WaitingForEmpty
	Stopping
	ForceStopping
)

// String returns the walb-tools name of the stop state.
func (s StopState) String() string {
	switch s {
	case NotStopping:
		return "NotStopping"
	case WaitingForEmpty:
		return "WaitingForEmpty"
	case Stopping:
		return "Stopping"
	case ForceStopping:
		return "ForceStopping"
	}
	return "StopState(" + strconv.Itoa(int(s)) + ")"
}

// Guard states the preconditions of an operation on a volume, checked
// atomically with the state change or action start it guards. The zero
// Guard allows everything.
type Guard struct {
	// States, if not empty, lists the states the volume must be in.
	States []string
	// Steady requires the volume not to be in a transient state.
	Steady bool
	// Idle requires that no action at all is running.
	Idle bool
	// NoActions lists actions that must not be running.
	NoActions []string
	// NotStopping requires the stop state NotStopping.
	NotStopping bool
}

// ActionStat is the activity of one action on one volume.
type ActionStat struct {
	// Running is the number of running instances.
	Running int
	// LastStart is when the action last started (zero if never).
	LastStart time.Time
}

// volume is the in-memory state of one volume.
type volume struct {
	state   string
	txn     *StateTxn
	stop    StopState
	actions map[string]*ActionStat
}

func (v *volume) running() int {
	n := 0
	for _, a := range v.actions {
		n += a.Running
	}
	return n
}

// Volumes holds the current state, running actions and stop state of every
// volume of a server, driven by a StateMachine table. All checks and changes
// are atomic under one lock, so "the state is X and no Merge is running"
// cannot change between check and use. A volume the server knows nothing
// about is in the table's initial state; it is forgotten again when it
// returns there with nothing running.
type Volumes struct {
	sm      *StateMachine
	log     *slog.Logger
	mu      sync.Mutex
	vols    map[string]*volume
	changed chan struct{}
}

// NewVolumes returns an empty registry using table sm. logger receives one
// line per state change (nil: slog.Default()).
func NewVolumes(sm *StateMachine, logger *slog.Logger) *Volumes {
	if logger == nil {
		logger = slog.Default()
	}
	return &Volumes{sm: sm, log: logger, vols: map[string]*volume{}, changed: make(chan struct{})}
}

// Table returns the state table.
func (vs *Volumes) Table() *StateMachine { return vs.sm }

// get returns vol's entry, creating it in the initial state.
func (vs *Volumes) get(vol string) (*volume, error) {
	if v, ok := vs.vols[vol]; ok {
		return v, nil
	}
	if err := ValidateVolumeName(vol); err != nil {
		return nil, err
	}
	v := &volume{state: vs.sm.initial, actions: map[string]*ActionStat{}}
	vs.vols[vol] = v
	return v, nil
}

// forget drops vol's entry if it is idle in the initial state: an unknown
// volume and such a volume are the same thing.
func (vs *Volumes) forget(vol string) {
	if v, ok := vs.vols[vol]; ok && v.state == vs.sm.initial && v.txn == nil && v.stop == NotStopping && v.running() == 0 {
		delete(vs.vols, vol)
	}
}

// changedLocked records a change of vol: it wakes WaitFor callers and
// forgets vol if it is idle in the initial state.
func (vs *Volumes) changedLocked(vol string) {
	vs.forget(vol)
	close(vs.changed)
	vs.changed = make(chan struct{})
}

// check evaluates g on v.
func (vs *Volumes) check(vol string, v *volume, g Guard) error {
	if len(g.States) > 0 && !slices.Contains(g.States, v.state) {
		return errors.Wrapf(ErrWrongState, "volume %s is %s, not %s", vol, v.state, strings.Join(g.States, "|"))
	}
	if g.Steady && v.txn != nil {
		return errors.Wrapf(ErrWrongState, "volume %s is in transient state %s", vol, v.state)
	}
	if g.NotStopping && v.stop != NotStopping {
		return errors.Wrapf(ErrStopping, "volume %s is %s", vol, v.stop)
	}
	if g.Idle {
		for _, name := range slices.Sorted(maps.Keys(v.actions)) {
			if v.actions[name].Running > 0 {
				return errors.Wrapf(ErrActionRunning, "volume %s: %s is running", vol, name)
			}
		}
	}
	for _, name := range g.NoActions {
		if a := v.actions[name]; a != nil && a.Running > 0 {
			return errors.Wrapf(ErrActionRunning, "volume %s: %s is running", vol, name)
		}
	}
	return nil
}

// Set puts vol in steady state st without a transition: for loading states
// at recovery (Service.Recover) and for debug commands. It fails while a
// transaction runs on the volume.
func (vs *Volumes) Set(vol, st string) error {
	if !vs.sm.IsSteady(st) {
		return errors.Wrapf(ErrNoTransition, "set volume %s: %q is not a steady state", vol, st)
	}
	vs.mu.Lock()
	defer vs.mu.Unlock()
	v, err := vs.get(vol)
	if err != nil {
		return err
	}
	if v.txn != nil {
		return errors.Wrapf(ErrWrongState, "set volume %s: in transient state %s", vol, v.state)
	}
	v.state = st
	vs.changedLocked(vol)
	return nil
}

// State returns vol's current state (the initial state for an unknown
// volume).
func (vs *Volumes) State(vol string) string {
	vs.mu.Lock()
	defer vs.mu.Unlock()
	if v, ok := vs.vols[vol]; ok {
		return v.state
	}
	return vs.sm.initial
}

// Names returns the sorted names of the volumes not in the initial state or
// with something running.
func (vs *Volumes) Names() []string {
	vs.mu.Lock()
	defer vs.mu.Unlock()
	return slices.Sorted(maps.Keys(vs.vols))
}

// Check evaluates g on vol.
func (vs *Volumes) Check(vol string, g Guard) error {
	vs.mu.Lock()
	defer vs.mu.Unlock()
	v, err := vs.get(vol)
	if err != nil {
		return err
	}
	defer vs.forget(vol)
	return vs.check(vol, v, g)
}

// TryChange changes vol from from to to if it is in from, outside any
// transaction, and the table has the edge.
func (vs *Volumes) TryChange(vol, from, to string) bool {
	return vs.Transition(context.Background(), vol, from, to) == nil
}

// Transition changes vol from from to to. It fails with ErrWrongState if the
// volume is elsewhere (or in a transaction) and with ErrNoTransition if the
// table has no such edge.
func (vs *Volumes) Transition(ctx context.Context, vol, from, to string) error {
	vs.mu.Lock()
	defer vs.mu.Unlock()
	v, err := vs.get(vol)
	if err != nil {
		return err
	}
	defer vs.forget(vol)
	switch {
	case v.txn != nil:
		return errors.Wrapf(ErrWrongState, "volume %s is in transient state %s", vol, v.state)
	case v.state != from:
		return errors.Wrapf(ErrWrongState, "volume %s is %s, not %s", vol, v.state, from)
	case !vs.sm.CanChange(from, to):
		return errors.Wrapf(ErrNoTransition, "volume %s: %s -> %s", vol, from, to)
	}
	v.state = to
	vs.log.InfoContext(ctx, "state changed", "vol", vol, "from", from, "to", to)
	vs.changedLocked(vol)
	return nil
}

// StateTxn is a state transaction (walb-tools' StateMachineTransaction):
// the volume sits in a transient state while a command runs, and either
// Commit moves it on or Rollback returns it to where it came from. Use it
// as
//
//	tx, err := vols.Begin(ctx, vol, "FullSync", server.Guard{States: []string{"SyncReady"}, Idle: true})
//	if err != nil { return err }
//	defer tx.Rollback() // no-op after Commit
//	... work ...
//	return tx.Commit("Archived")
//
// While it is open, no other change of the volume's state is possible.
type StateTxn struct {
	vs        *Volumes
	ctx       context.Context
	vol       string
	from, via string
	done      bool
}

// Begin moves vol from its current state into the transient state via. g
// is checked first; the table must lead from the current state to via.
func (vs *Volumes) Begin(ctx context.Context, vol, via string, g Guard) (*StateTxn, error) {
	if !vs.sm.IsTransient(via) {
		return nil, errors.Wrapf(ErrNoTransition, "volume %s: %q is not a transient state", vol, via)
	}
	vs.mu.Lock()
	defer vs.mu.Unlock()
	v, err := vs.get(vol)
	if err != nil {
		return nil, err
	}
	defer vs.forget(vol)
	if v.txn != nil {
		return nil, errors.Wrapf(ErrWrongState, "volume %s is in transient state %s", vol, v.state)
	}
	if err := vs.check(vol, v, g); err != nil {
		return nil, err
	}
	if !vs.sm.CanChange(v.state, via) {
		return nil, errors.Wrapf(ErrWrongState, "volume %s is %s, which does not lead to %s", vol, v.state, via)
	}
	tx := &StateTxn{vs: vs, ctx: ctx, vol: vol, from: v.state, via: via}
	v.state, v.txn = via, tx
	vs.log.DebugContext(ctx, "state transaction begun", "vol", vol, "from", tx.from, "via", via)
	vs.changedLocked(vol)
	return tx, nil
}

// From returns the state the transaction started from.
func (tx *StateTxn) From() string { return tx.from }

// Via returns the transaction's transient state.
func (tx *StateTxn) Via() string { return tx.via }

// Commit ends the transaction in state to, which the table must allow
// after Via. On error the transaction stays open (Rollback still works).
func (tx *StateTxn) Commit(to string) error {
	vs := tx.vs
	vs.mu.Lock()
	defer vs.mu.Unlock()
	if tx.done {
		return errors.Wrapf(ErrWrongState, "volume %s: transaction %s already ended", tx.vol, tx.via)
	}
	if !vs.sm.CanChange(tx.via, to) {
		return errors.Wrapf(ErrNoTransition, "volume %s: %s -> %s", tx.vol, tx.via, to)
	}
	v := vs.vols[tx.vol]
	v.state, v.txn = to, nil
	tx.done = true
	vs.log.InfoContext(tx.ctx, "state changed", "vol", tx.vol, "from", tx.from, "via", tx.via, "to", to)
	vs.changedLocked(tx.vol)
	return nil
}

// Rollback returns the volume to From unless the transaction was committed.
// It is safe to call more than once (defer it).
func (tx *StateTxn) Rollback() {
	vs := tx.vs
	vs.mu.Lock()
	defer vs.mu.Unlock()
	if tx.done {
		return
	}
	v := vs.vols[tx.vol]
	v.state, v.txn = tx.from, nil
	tx.done = true
	vs.log.WarnContext(tx.ctx, "state rolled back", "vol", tx.vol, "via", tx.via, "to", tx.from)
	vs.changedLocked(tx.vol)
}

// StartAction checks g and starts one instance of action on vol, atomically.
// end (idempotent) marks it finished.
func (vs *Volumes) StartAction(vol, action string, g Guard) (end func(), err error) {
	vs.mu.Lock()
	defer vs.mu.Unlock()
	v, err := vs.get(vol)
	if err != nil {
		return nil, err
	}
	defer vs.forget(vol)
	if err := vs.check(vol, v, g); err != nil {
		return nil, err
	}
	a := v.actions[action]
	if a == nil {
		a = &ActionStat{}
		v.actions[action] = a
	}
	a.Running++
	a.LastStart = time.Now()
	vs.changedLocked(vol)
	return sync.OnceFunc(func() {
		vs.mu.Lock()
		defer vs.mu.Unlock()
		a.Running--
		vs.changedLocked(vol)
	}), nil
}

// NumAction returns the number of running instances of action on vol.
func (vs *Volumes) NumAction(vol, action string) int {
	vs.mu.Lock()
	defer vs.mu.Unlock()
	if v, ok := vs.vols[vol]; ok {
		if a := v.actions[action]; a != nil {
			return a.Running
		}
	}
	return 0
}

// Actions returns a copy of vol's action statistics.
func (vs *Volumes) Actions(vol string) map[string]ActionStat {
	vs.mu.Lock()
	defer vs.mu.Unlock()
	out := map[string]ActionStat{}
	if v, ok := vs.vols[vol]; ok {
		for k, a := range v.actions {
			out[k] = *a
		}
	}
	return out
}

// BeginStop moves vol's stop state from NotStopping to st (a stop command
// in progress); end returns it to NotStopping. A second stop while one is in
// progress fails with ErrStopping.
func (vs *Volumes) BeginStop(vol string, st StopState) (end func(), err error) {
	if st == NotStopping || st > ForceStopping {
		return nil, errors.Wrapf(ErrBadArgs, "begin stop of %s with %s", vol, st)
	}
	vs.mu.Lock()
	defer vs.mu.Unlock()
	v, err := vs.get(vol)
	if err != nil {
		return nil, err
	}
	defer vs.forget(vol)
	if v.stop != NotStopping {
		return nil, errors.Wrapf(ErrStopping, "volume %s is already %s", vol, v.stop)
	}
	v.stop = st
	vs.changedLocked(vol)
	return sync.OnceFunc(func() {
		vs.mu.Lock()
		defer vs.mu.Unlock()
		v.stop = NotStopping
		vs.changedLocked(vol)
	}), nil
}

// StopState returns vol's stop state.
func (vs *Volumes) StopState(vol string) StopState {
	vs.mu.Lock()
	defer vs.mu.Unlock()
	if v, ok := vs.vols[vol]; ok {
		return v.stop
	}
	return NotStopping
}

// WaitFor waits until g holds on vol, or ctx is done; then it returns the
// last reason g failed, wrapped with the context's error. A stop command
// uses it to wait (at most 60 s in walb-tools) for a steady state with no
// running action.
func (vs *Volumes) WaitFor(ctx context.Context, vol string, g Guard) error {
	for {
		vs.mu.Lock()
		v, err := vs.get(vol)
		if err == nil {
			err = vs.check(vol, v, g)
			vs.forget(vol)
		}
		ch := vs.changed
		vs.mu.Unlock()
		if err == nil || errors.Is(err, ErrBadVolumeName) {
			return err
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return errors.WithMessagef(err, "server: gave up waiting (%v)", ctx.Err())
		}
	}
}
