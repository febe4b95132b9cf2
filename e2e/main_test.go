package e2e

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// The binaries the tests run, as named under cmd/.
const (
	binWalbDev = "walb-dev"
	binWdevc   = "wdevc"
	binStorage = "walb-storage"
	binProxy   = "walb-proxy"
	binArchive = "walb-archive"
	binWalbc   = "walbc"
)

var allBins = []string{binWalbDev, binWdevc, binStorage, binProxy, binArchive, binWalbc}

// Set by TestMain.
var (
	binDir    string                // where the binaries were built
	workRoot  string                // parent of every test's work directory
	buildErr  error                 // the build failed: every test fails with it
	noBinary  = map[string]string{} // binaries that could not be built, and why
	qemuIOBin string                // qemu-io, "" when missing
)

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	if testing.Short() {
		// Every test skips itself; no need to build.
		return m.Run()
	}
	var err error
	// Short paths: the device daemon's unix sockets must fit in 108 bytes.
	if workRoot, err = os.MkdirTemp("", "walb-e2e-"); err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	if os.Getenv("WALB_E2E_KEEP") == "" {
		defer os.RemoveAll(workRoot)
	} else {
		fmt.Fprintln(os.Stderr, "e2e: keeping", workRoot)
	}
	binDir = filepath.Join(workRoot, "bin")
	qemuIOBin, _ = exec.LookPath("qemu-io")
	if qemuIOBin != "" || inCI() {
		// Without qemu-io every test skips: no need to build.
		buildErr = buildBinaries()
	}
	return m.Run()
}

// buildBinaries builds the commands from the module root into binDir, as
// an operator would (go build -o DIR/ ./cmd/...). A command directory
// without Go files is recorded in noBinary instead of failing the build,
// so that the tests that do not need it still run.
func buildBinaries() error {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return fmt.Errorf("go env GOMOD: %v", err)
	}
	root := filepath.Dir(strings.TrimSpace(string(out)))
	if root == "." || root == "" {
		return fmt.Errorf("e2e: not inside a Go module")
	}
	var pkgs []string
	for _, b := range allBins {
		files, _ := filepath.Glob(filepath.Join(root, "cmd", b, "*.go"))
		main := false
		for _, f := range files {
			if !strings.HasSuffix(f, "_test.go") {
				main = true
			}
		}
		if !main {
			noBinary[b] = fmt.Sprintf("cmd/%s has no Go source: the %s binary does not exist", b, b)
			continue
		}
		pkgs = append(pkgs, "./cmd/"+b)
	}
	args := []string{"build", "-o", binDir + "/"}
	if os.Getenv("WALB_E2E_RACE_BINS") != "" {
		args = append(args, "-race")
	}
	cmd := exec.Command("go", append(args, pkgs...)...)
	cmd.Dir = root
	var buf bytes.Buffer
	cmd.Stdout, cmd.Stderr = &buf, &buf
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("go %s: %v\n%s", strings.Join(cmd.Args[1:], " "), err, buf.String())
	}
	return nil
}

// inCI reports whether missing tools must fail the tests rather than skip
// them.
func inCI() bool { return os.Getenv("CI") != "" }

// requireTools skips (or, in CI, fails) t when qemu-io or one of bins is
// missing, and fails it when the build failed.
func requireTools(t *testing.T, bins ...string) {
	t.Helper()
	if testing.Short() {
		t.Skip("e2e: starts real server processes; skipped with -short")
	}
	miss := func(msg string) {
		t.Helper()
		if inCI() {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	if qemuIOBin == "" {
		miss("qemu-io not found in PATH: install qemu-utils to run the end-to-end tests")
	}
	if buildErr != nil {
		t.Fatalf("building the binaries: %v", buildErr)
	}
	for _, b := range bins {
		if why, ok := noBinary[b]; ok {
			miss("BUG (blocks this test): " + why)
		}
	}
}

// bin returns the path of a built binary.
func bin(name string) string { return filepath.Join(binDir, name) }
