package devhost

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestRegistrySurvivesReload(t *testing.T) {
	dir := t.TempDir()
	r, err := LoadRegistry(dir)
	require.NoError(t, err)
	require.Empty(t, r.Entries(), "a missing file is an empty registry")

	a := Entry{Name: "vol-a", LogDevice: "/dev/a-log", DataDevice: "/dev/a-data",
		Options: CreateOptions{MaxLogpackKB: 256, LogFlushIntervalMs: 50}}
	b := Entry{Name: "vol-b", LogDevice: "/srv/b.ldev", DataDevice: "/srv/b.ddev"}
	require.NoError(t, r.Put(b))
	require.NoError(t, r.Put(a))

	r2, err := LoadRegistry(dir)
	require.NoError(t, err)
	require.Equal(t, []Entry{a, b}, r2.Entries(), "sorted by name, options kept")

	require.NoError(t, r2.Remove("vol-a"))
	require.ErrorIs(t, r2.Remove("vol-a"), ErrNotFound)
	r3, err := LoadRegistry(dir)
	require.NoError(t, err)
	require.Equal(t, []Entry{b}, r3.Entries())
	got, ok := r3.Get("vol-b")
	require.True(t, ok)
	require.Equal(t, b, got)

	// The file is the documented format.
	raw, err := os.ReadFile(filepath.Join(dir, RegistryFile))
	require.NoError(t, err)
	var doc map[string]any
	require.NoError(t, json.Unmarshal(raw, &doc))
	require.EqualValues(t, 1, doc["version"])
	devs := doc["devices"].([]any)
	require.Len(t, devs, 1)
	require.Equal(t, "/srv/b.ldev", devs[0].(map[string]any)["log_device"])

	// Nothing but the registry is left in the directory: the temporary file
	// was renamed over it.
	ents, err := os.ReadDir(dir)
	require.NoError(t, err)
	require.Len(t, ents, 1)
	fi, err := os.Stat(filepath.Join(dir, RegistryFile))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
}

// A failed write leaves the registry as it was, in memory and on disk.
func TestRegistryFailedWriteChangesNothing(t *testing.T) {
	dir := t.TempDir()
	r, err := LoadRegistry(dir)
	require.NoError(t, err)
	a := Entry{Name: "a", LogDevice: "/a.l", DataDevice: "/a.d"}
	require.NoError(t, r.Put(a))
	before, err := os.ReadFile(filepath.Join(dir, RegistryFile))
	require.NoError(t, err)

	// Make the rename fail: the registry's name is taken by a non-empty
	// directory (permissions would not stop root).
	path := filepath.Join(dir, RegistryFile)
	require.NoError(t, os.Rename(path, path+".saved"))
	require.NoError(t, os.MkdirAll(filepath.Join(path, "x"), 0o700))
	require.Error(t, r.Put(Entry{Name: "b", LogDevice: "/b.l", DataDevice: "/b.d"}))
	require.Equal(t, []Entry{a}, r.Entries())
	require.Error(t, r.Remove("a"))
	require.Equal(t, []Entry{a}, r.Entries())
	require.NoError(t, os.RemoveAll(path))
	require.NoError(t, os.Rename(path+".saved", path))
	after, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Equal(t, before, after)
}

func TestRegistryRejectsBadFiles(t *testing.T) {
	tests := []struct {
		name, content string
		want          error
	}{
		{"garbage", "not json", ErrFailed},
		{"version", `{"version":2,"devices":[]}`, ErrVersion},
		{"no version", `{"devices":[]}`, ErrVersion},
		{"unknown field", `{"version":1,"devices":[],"extra":1}`, ErrFailed},
		{"bad name", `{"version":1,"devices":[{"name":"a b","log_device":"/l","data_device":"/d"}]}`, ErrFailed},
		{"relative path", `{"version":1,"devices":[{"name":"a","log_device":"l","data_device":"/d"}]}`, ErrFailed},
		{"duplicate", `{"version":1,"devices":[{"name":"a","log_device":"/l","data_device":"/d"},` +
			`{"name":"a","log_device":"/l2","data_device":"/d2"}]}`, ErrFailed},
		{"trailing", `{"version":1,"devices":[]} {}`, ErrFailed},
		{"truncated", `{"version":1,"devices":[{"name":"a"`, ErrFailed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			require.NoError(t, os.WriteFile(filepath.Join(dir, RegistryFile), []byte(tc.content), 0o600))
			_, err := LoadRegistry(dir)
			require.ErrorIs(t, err, tc.want)
		})
	}
}

func TestValidName(t *testing.T) {
	for _, ok := range []string{"vol0", "a", "A.b_c-9", "x2345678901234567890123456"[:25]} {
		require.NoError(t, ValidName(ok), ok)
	}
	for _, bad := range []string{"", "a b", "a/b", ".hidden", "-x", "control", "x23456789012345678901234567", "ü", "a\x00"} {
		require.ErrorIs(t, ValidName(bad), ErrInvalid, "%q", bad)
	}
	require.Equal(t, "vol0", NameFromPath("/dev/walb/vol0"))
	require.Equal(t, "vol0", NameFromPath("vol0"))
}
