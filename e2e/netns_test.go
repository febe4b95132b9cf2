package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// netns is a Linux network namespace joined to the test's own namespace
// by a veth pair: the servers started in it (wrap) are a separate host on
// a point-to-point /30 link, reachable at nsIP from the rest of the group
// (which reaches it through hostIP's interface). Cutting the link (cut:
// ip link set hostIf down) makes every packet between the two sides
// vanish, as a pulled cable does: established connections hang until a
// timeout, new ones fail.
type netns struct {
	t      testing.TB
	name   string // ip netns name, unique per test run
	hostIf string // veth end in the test's namespace
	nsIf   string // veth end inside the namespace
	hostIP string // hostIf's address
	nsIP   string // nsIf's address: the servers in the namespace listen on it
}

// nsSeq numbers the namespaces of one test binary run.
var nsSeq atomic.Int32

// sweepOnce runs sweepStaleNetns once per test binary.
var sweepOnce sync.Once

// nsPrefix starts the name of every namespace the tests make; the test
// binary's process id follows.
const nsPrefix = "walb-e2e-"

// sweepStaleNetns deletes the namespaces left by an earlier test binary
// that died before its cleanups ran (a -timeout panic, a SIGKILL): those
// named after a process id that no longer runs. The servers that ran in
// them died with that binary (Pdeathsig); deleting a namespace deletes
// its veth pair.
func sweepStaleNetns(t testing.TB) {
	out, err := run(context.Background(), "ip", "netns", "list")
	if err != nil {
		return
	}
	for _, l := range strings.Split(out, "\n") {
		f := strings.Fields(l)
		if len(f) == 0 || !strings.HasPrefix(f[0], nsPrefix) {
			continue
		}
		pidStr, _, _ := strings.Cut(strings.TrimPrefix(f[0], nsPrefix), "-")
		pid, err := strconv.Atoi(pidStr)
		if err != nil || pid <= 0 || syscall.Kill(pid, 0) == nil {
			continue // not ours, or its test binary still runs
		}
		stale := &netns{t: t, name: f[0]}
		if _, err := stale.ip("netns", "del", f[0]); err == nil {
			t.Logf("deleted the stale network namespace %s of a test binary that is gone", f[0])
		}
	}
}

// requireNetns skips (or, in CI, fails) t unless network namespaces can be
// made: the tests run as root and iproute2's ip and tc are installed.
func requireNetns(t testing.TB) {
	t.Helper()
	miss := func(msg string) {
		t.Helper()
		if inCI() {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	if os.Geteuid() != 0 {
		miss("network namespace tests need root (ip netns add, veth pairs)")
	}
	for _, tool := range []string{"ip", "tc"} {
		if _, err := exec.LookPath(tool); err != nil {
			miss(tool + " not found in PATH: install iproute2 to run the network namespace tests")
		}
	}
}

// newNetns creates a namespace and its veth link, up, with the first
// address of a random 10.x.y.z/30 on the test's side and the second
// inside. The namespace, its link and every process still running in it
// are removed when the test ends; namespaces left by a test binary that
// died are removed first.
func newNetns(t testing.TB) *netns {
	t.Helper()
	requireNetns(t)
	sweepOnce.Do(func() { sweepStaleNetns(t) })
	var r [4]byte
	_, _ = rand.Read(r[:])
	tag := hex.EncodeToString(r[:3]) // interface names are at most 15 bytes
	seq := nsSeq.Add(1)
	n := &netns{
		t:      t,
		name:   fmt.Sprintf("%s%d-%s-%d", nsPrefix, os.Getpid(), tag, seq),
		hostIf: fmt.Sprintf("wb%s%dh", tag, seq%10),
		nsIf:   fmt.Sprintf("wb%s%dn", tag, seq%10),
	}
	// A random /30 within 10.200.0.0 - 10.249.255.255: parallel runs do
	// not clash.
	a, b, c := 200+int(r[0])%50, int(r[1]), int(r[2])&^3
	n.hostIP = fmt.Sprintf("10.%d.%d.%d", a, b, c+1)
	n.nsIP = fmt.Sprintf("10.%d.%d.%d", a, b, c+2)

	t.Cleanup(n.remove)
	steps := [][]string{
		{"netns", "add", n.name},
		{"link", "add", n.hostIf, "type", "veth", "peer", "name", n.nsIf, "netns", n.name},
		{"addr", "add", n.hostIP + "/30", "dev", n.hostIf},
		{"link", "set", n.hostIf, "up"},
		{"-n", n.name, "addr", "add", n.nsIP + "/30", "dev", n.nsIf},
		{"-n", n.name, "link", "set", n.nsIf, "up"},
		{"-n", n.name, "link", "set", "lo", "up"},
	}
	for _, s := range steps {
		if _, err := n.ip(s...); err != nil {
			msg := fmt.Sprintf("making network namespace %s: %v", n.name, err)
			if inCI() {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
	}
	n.waitLink(true)
	t.Logf("network namespace %s: %s (%s) <-> %s (%s, inside)", n.name, n.hostIP, n.hostIf, n.nsIP, n.nsIf)
	return n
}

// ip runs ip with args.
func (n *netns) ip(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return run(ctx, "ip", args...)
}

// wrap returns the command line that runs binary with args inside the
// namespace. ip netns exec execs the binary in place, so the process id
// is the server's own and signals reach it directly.
func (n *netns) wrap(binary string, args []string) (string, []string) {
	ipPath, err := exec.LookPath("ip")
	if err != nil {
		ipPath = "ip"
	}
	return ipPath, append([]string{"netns", "exec", n.name, binary}, args...)
}

// cut takes the link down on the test's side: the namespace's host is off
// the network until restore.
func (n *netns) cut() {
	n.t.Helper()
	if _, err := n.ip("link", "set", n.hostIf, "down"); err != nil {
		n.t.Fatal(err)
	}
	n.t.Logf("network: link %s cut", n.hostIf)
}

// restore brings the link back up and waits until it carries packets.
func (n *netns) restore() {
	n.t.Helper()
	if _, err := n.ip("link", "set", n.hostIf, "up"); err != nil {
		n.t.Fatal(err)
	}
	n.waitLink(true)
	n.t.Logf("network: link %s restored", n.hostIf)
}

// waitLink waits until both veth ends report the carrier state up.
func (n *netns) waitLink(up bool) {
	n.t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		h, err1 := n.ip("-o", "link", "show", n.hostIf)
		i, err2 := n.ip("-n", n.name, "-o", "link", "show", n.nsIf)
		if err1 == nil && err2 == nil && strings.Contains(h, "LOWER_UP") == up && strings.Contains(i, "LOWER_UP") == up {
			// The connected route comes back with the address; it is
			// there once the carrier is.
			return
		}
		if time.Now().After(deadline) {
			n.t.Fatalf("veth %s/%s not %v after 10 s: %q %q (%v %v)", n.hostIf, n.nsIf, up, h, i, err1, err2)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// shape limits the rate of what the test's side sends into the namespace
// (a token bucket, tc tbf), so that transfers toward it last long enough
// to be cut in the middle.
func (n *netns) shape(rate string) {
	n.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := run(ctx, "tc", "qdisc", "replace", "dev", n.hostIf, "root", "tbf",
		"rate", rate, "burst", "64kb", "latency", "500ms"); err != nil {
		msg := fmt.Sprintf("rate limit on %s (tc tbf, kernel module sch_tbf): %v", n.hostIf, err)
		if inCI() {
			n.t.Fatal(msg)
		}
		n.t.Skip(msg)
	}
}

// unshape removes the rate limit.
func (n *netns) unshape() {
	n.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if _, err := run(ctx, "tc", "qdisc", "del", "dev", n.hostIf, "root"); err != nil {
		n.t.Fatal(err)
	}
}

// remove kills whatever still runs in the namespace (only the test's own
// servers can: the namespace is the test's) by process id, and deletes
// the namespace, which deletes the veth pair with it.
func (n *netns) remove() {
	if out, err := n.ip("netns", "pids", n.name); err == nil {
		for _, f := range strings.Fields(out) {
			if pid, err := strconv.Atoi(f); err == nil && pid > 1 {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := n.ip("netns", "del", n.name)
		if err == nil || !n.exists() {
			break
		}
		if time.Now().After(deadline) {
			n.t.Errorf("deleting network namespace %s: %v", n.name, err)
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	// The veth pair dies with the namespace, asynchronously: wait for it,
	// and delete it if it stays.
	deadline = time.Now().Add(10 * time.Second)
	for n.linkExists() {
		if time.Now().After(deadline) {
			if _, err := n.ip("link", "del", n.hostIf); err != nil && n.linkExists() {
				n.t.Errorf("deleting veth %s: %v", n.hostIf, err)
			}
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// linkExists reports whether the veth end on the test's side exists.
func (n *netns) linkExists() bool {
	_, err := n.ip("link", "show", n.hostIf)
	return err == nil
}

// exists reports whether the namespace is still listed.
func (n *netns) exists() bool {
	out, err := n.ip("netns", "list")
	if err != nil {
		return false
	}
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) > 0 && f[0] == n.name {
			return true
		}
	}
	return false
}
