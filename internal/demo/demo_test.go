package demo

import (
	"bytes"
	"context"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestDemoSmall(t *testing.T) {
	var out bytes.Buffer
	opt := Options{Dir: t.TempDir(), DeviceMiB: 16, LogMiB: 8, Snapshots: 3, WritesPerGo: 50, Seed: 3}
	require.NoError(t, Run(context.Background(), &out, opt), out.String())
	require.Contains(t, out.String(), "3 snapshots restored bit-exact")
}
