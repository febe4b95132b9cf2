//go:build linux

package kernel

import (
	"context"
	"os"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
)

// The real ioctl path, on a node that is not WalB's: /dev/null knows no
// ioctls, so the kernel answers ENOTTY. This is as close to the driver as a
// machine without the module gets.
func TestSysIoctlOnNonWalbNode(t *testing.T) {
	if _, err := os.Stat("/dev/null"); err != nil {
		t.Skip("no /dev/null")
	}
	ctx := context.Background()

	_, err := (&Controller{Path: "/dev/null"}).Version(ctx)
	require.ErrorIs(t, err, ErrNotSupported)
	require.ErrorIs(t, err, syscall.ENOTTY)
	require.ErrorContains(t, err, "VERSION on /dev/null")

	_, err = (&Device{Name: "x", Path: "/dev/null"}).OldestLsid(ctx)
	require.ErrorIs(t, err, ErrNotSupported)
	require.ErrorContains(t, err, "GET_OLDEST_LSID on /dev/null")
	require.ErrorContains(t, err, "not a walb device?")

	_, err = (&Controller{Path: "/dev/null"}).ListDev(ctx)
	require.ErrorIs(t, err, ErrNotSupported)
}

func TestStatBlockDevice(t *testing.T) {
	_, _, err := StatBlockDevice("/dev/null")
	require.ErrorIs(t, err, ErrNotBlockDevice)
	_, _, err = StatBlockDevice(t.TempDir())
	require.ErrorIs(t, err, ErrNotBlockDevice)
	_, _, err = StatBlockDevice("/nonexistent/dev")
	require.ErrorIs(t, err, os.ErrNotExist)

	// Loop devices have the fixed block major 7 (Documentation/admin-guide/devices.txt).
	var st syscall.Stat_t
	if syscall.Stat("/dev/loop1", &st) != nil || st.Mode&syscall.S_IFMT != syscall.S_IFBLK {
		t.Log("no /dev/loop1 block device; skipping the positive case")
		return
	}
	major, minor, err := StatBlockDevice("/dev/loop1")
	require.NoError(t, err)
	require.Equal(t, DevNum{7, 1}, DevNum{major, minor})
}
