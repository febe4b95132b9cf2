package server

import (
	"testing"

	"github.com/pkg/errors"
	"github.com/stretchr/testify/require"
)

func TestParseStopMode(t *testing.T) {
	all := []StopMode{StopGraceful, StopForce, StopEmpty}
	two := []StopMode{StopGraceful, StopForce}
	for _, tc := range []struct {
		in      string
		allowed []StopMode
		want    StopMode
		err     string
	}{
		{"", two, StopGraceful, ""},
		{"graceful", two, StopGraceful, ""},
		{"force", two, StopForce, ""},
		{"empty", all, StopEmpty, ""},
		{"empty", two, 0, `stop mode "empty": want graceful, force`},
		{"Force", all, 0, `stop mode "Force": want graceful, force, empty`},
		{"now", two, 0, `stop mode "now": want graceful, force`},
	} {
		got, err := ParseStopMode(tc.in, tc.allowed...)
		if tc.err != "" {
			require.True(t, errors.Is(err, ErrBadArgs), "%q: %v", tc.in, err)
			require.Contains(t, err.Error(), tc.err)
			continue
		}
		require.NoError(t, err, tc.in)
		require.Equal(t, tc.want, got, tc.in)
		if tc.in != "" {
			require.Equal(t, tc.in, got.String())
		}
	}
}
