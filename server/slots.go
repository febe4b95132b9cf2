package server

import (
	"sync"

	"github.com/pkg/errors"
)

// Slots bounds how many foreground tasks run at once (walb-tools' -fg). Past
// the limit Take fails with ErrTooManyTasks ("exceeds max foreground
// tasks") instead of waiting, as the reference servers reply.
type Slots struct {
	mu   sync.Mutex
	max  int
	used int
}

// NewSlots returns a limit of max concurrent tasks.
func NewSlots(max int) *Slots { return &Slots{max: max} }

// Take reserves a slot; call release (idempotent) when the task ends.
func (s *Slots) Take() (release func(), err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.used >= s.max {
		return nil, errors.Wrapf(ErrTooManyTasks, "%d running", s.used)
	}
	s.used++
	return sync.OnceFunc(func() {
		s.mu.Lock()
		s.used--
		s.mu.Unlock()
	}), nil
}

// InUse returns the number of slots taken.
func (s *Slots) InUse() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.used
}
