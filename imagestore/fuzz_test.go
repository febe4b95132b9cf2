package imagestore

import (
	"path/filepath"
	"strings"
	"testing"
)

// FuzzValidName checks that every accepted name stays a direct child of
// the store directory, is harmless as a command-line argument, and cannot
// be mistaken for a temporary file, and that the temporary names made from
// it fit a file name.
func FuzzValidName(f *testing.F) {
	for _, s := range []string{"wb_vol", "wr_v_12", "../x", "a/b", ".", "..", "-x", "a..b", "", "x\x00", TempPrefix + "a-12345678"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		if ValidName(name) != nil {
			return
		}
		const root = "/store"
		p := filepath.Join(root, name)
		if filepath.Dir(p) != root || filepath.Base(p) != name {
			t.Fatalf("%q escapes the store: %s", name, p)
		}
		if strings.ContainsAny(name, "/\x00 \t\n*?$`'\"\\;&|<>()[]{}~") || name[0] == '-' {
			t.Fatalf("%q has an unsafe character", name)
		}
		if IsTempName(name) {
			t.Fatalf("%q looks like a temporary name", name)
		}
		tmp, err := tempName(name)
		if err != nil {
			t.Fatal(err)
		}
		if !IsTempName(tmp) || ValidName(tmp) == nil || len(tmp) > 255 || strings.Contains(tmp, "/") {
			t.Fatalf("temporary name %q for %q", tmp, name)
		}
	})
}
