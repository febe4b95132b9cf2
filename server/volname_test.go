package server

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/walb-go/walb/wire"
)

func TestValidateVolumeName(t *testing.T) {
	good := []string{"a", "vol0", "VOL-1", "0", "-", strings.Repeat("x", 64), "a-b-c-0123456789"}
	bad := []string{
		"", strings.Repeat("x", 65), "..", ".", "a/b", "/abs", "../etc", "a b", "a\x00b", "vol_1",
		"vol.1", "é", "a\\b", "a\nb", "~", "a:b", "*",
	}
	for _, n := range good {
		require.NoError(t, ValidateVolumeName(n), n)
	}
	for _, n := range bad {
		err := ValidateVolumeName(n)
		require.ErrorIs(t, err, ErrBadVolumeName, "%q", n)
		require.Equal(t, wire.ErrBadRequest, wire.CodeOf(err))
	}
}
