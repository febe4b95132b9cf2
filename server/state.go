package server

import (
	"fmt"
	"slices"
	"strings"

	"github.com/pkg/errors"
)

// Transition is one row of a state table: From -> Via -> To, where Via is a
// transient state held while the command runs (empty for a direct change).
// A row with a Via gives three edges: From->Via, Via->To (commit) and
// Via->From (rollback on failure).
type Transition struct {
	From, Via, To string
}

// StateMachine is an immutable state table shared by all volumes of a
// server. Steady states are those that appear as From or To (they are
// persisted); transient states are those that appear as Via (never
// persisted: after a crash the volume is back in a steady state, system.md
// §7). Per-volume current states live in Volumes.
type StateMachine struct {
	initial   string
	rows      []Transition
	states    []string // in order of first appearance
	transient map[string]bool
	edges     map[[2]string]bool
}

// NewStateMachine builds a table from its rows. initial is the state of a
// volume the server knows nothing about (walb-tools: Clear); it must be
// steady. A state may not be both steady and transient.
func NewStateMachine(initial string, rows ...Transition) (*StateMachine, error) {
	m := &StateMachine{
		initial:   initial,
		rows:      slices.Clone(rows),
		transient: map[string]bool{},
		edges:     map[[2]string]bool{},
	}
	steady := map[string]bool{}
	add := func(s string) {
		if !slices.Contains(m.states, s) {
			m.states = append(m.states, s)
		}
	}
	for i, r := range rows {
		if r.From == "" || r.To == "" {
			return nil, errors.Errorf("server: state table row %d %v: empty From or To", i, r)
		}
		steady[r.From], steady[r.To] = true, true
		add(r.From)
		if r.Via == "" {
			m.edges[[2]string{r.From, r.To}] = true
		} else {
			m.transient[r.Via] = true
			add(r.Via)
			m.edges[[2]string{r.From, r.Via}] = true
			m.edges[[2]string{r.Via, r.To}] = true
			m.edges[[2]string{r.Via, r.From}] = true
		}
		add(r.To)
	}
	for s := range m.transient {
		if steady[s] {
			return nil, errors.Errorf("server: state %q is both steady and transient", s)
		}
	}
	if !steady[initial] {
		return nil, errors.Errorf("server: initial state %q is not a steady state of the table", initial)
	}
	return m, nil
}

// MustStateMachine is NewStateMachine for tables written in the source; it
// panics on an invalid table.
func MustStateMachine(initial string, rows ...Transition) *StateMachine {
	m, err := NewStateMachine(initial, rows...)
	if err != nil {
		panic(err)
	}
	return m
}

// Initial returns the state of unknown volumes.
func (m *StateMachine) Initial() string { return m.initial }

// States returns every state, in order of first appearance in the table.
func (m *StateMachine) States() []string { return slices.Clone(m.states) }

// IsState reports whether s appears in the table.
func (m *StateMachine) IsState(s string) bool { return slices.Contains(m.states, s) }

// IsTransient reports whether s is a transient (Via) state.
func (m *StateMachine) IsTransient(s string) bool { return m.transient[s] }

// IsSteady reports whether s is a steady state of the table.
func (m *StateMachine) IsSteady(s string) bool { return m.IsState(s) && !m.transient[s] }

// CanChange reports whether the table has the edge from -> to.
func (m *StateMachine) CanChange(from, to string) bool { return m.edges[[2]string{from, to}] }

// String renders the table as rows "From -> Via -> To", for status output
// and documentation.
func (m *StateMachine) String() string {
	var b strings.Builder
	for _, r := range m.rows {
		if r.Via == "" {
			fmt.Fprintf(&b, "%s -> %s\n", r.From, r.To)
		} else {
			fmt.Fprintf(&b, "%s -> %s -> %s\n", r.From, r.Via, r.To)
		}
	}
	return b.String()
}
