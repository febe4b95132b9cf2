package server

import (
	"strings"

	"github.com/pkg/errors"
)

// StopMode is the option of a stop command (system.md §3.8, §4.6, §5.1):
// graceful lets running work finish, force aborts it, and empty (proxies
// only) refuses new input and keeps sending until every queue is empty.
type StopMode int

// Stop modes.
const (
	StopGraceful StopMode = iota
	StopForce
	StopEmpty
)

// String returns the mode's name as commands spell it.
func (m StopMode) String() string {
	switch m {
	case StopForce:
		return "force"
	case StopEmpty:
		return "empty"
	}
	return "graceful"
}

// ParseStopMode parses a stop command's mode argument: "" is graceful,
// and the mode must be one of allowed, the modes the server takes; any
// other is ErrBadArgs naming them.
func ParseStopMode(s string, allowed ...StopMode) (StopMode, error) {
	if s == "" {
		s = StopGraceful.String()
	}
	names := make([]string, len(allowed))
	for i, m := range allowed {
		if s == m.String() {
			return m, nil
		}
		names[i] = m.String()
	}
	return 0, errors.Wrapf(ErrBadArgs, "stop mode %q: want %s", s, strings.Join(names, ", "))
}
