// Package netlab plays the network part of a kubelet on one machine: pods
// are Linux network namespaces joined by veth pairs to a bridge, with
// addresses from 198.18.0.0/15 only (a benchmarking range that no real
// network uses), and processes run inside them (Envoy as the proxy uid,
// nginx, curl, tcpdump on the bridge).
//
// A Lab removes every namespace, link, file and process it made on Close.
// A lab whose owner died without Close (SIGKILL, a crash) is removed by the
// next New, processes left in its namespaces included: each lab records its
// owner's pid under StateDir.
//
// Needs root, iproute2, iptables and util-linux's setpriv.
package netlab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// StateDir holds one file per live lab: its subnet index and owner pid.
const StateDir = "/run/meshd-netlab"

// Lab is one bridge with its subnet 198.18.<k>.0/24 (gateway .1) and the
// pods on it.
type Lab struct {
	// Index k names the subnet 198.18.<k>.0/24, the bridge meshd-br<k> and
	// every namespace and link of the lab.
	Index   int
	Bridge  string
	Gateway netip.Addr
	// Dir is a world-readable work directory (the proxy uid reads its
	// bootstrap from there), removed by Close.
	Dir string

	mu    sync.Mutex
	pods  []*Pod
	procs []*Proc
	undo  []func() error
}

// Pod is a network namespace on the lab's bridge.
type Pod struct {
	Name  string
	NetNS string
	IP    netip.Addr
	lab   *Lab
}

// New creates a lab on the first free subnet, after removing the labs of
// dead owners.
func New(ctx context.Context) (*Lab, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("netlab: network namespaces need root")
	}
	for _, tool := range []string{"ip", "iptables", "setpriv"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("netlab: %w", err)
		}
	}
	if err := os.MkdirAll(StateDir, 0o755); err != nil {
		return nil, fmt.Errorf("netlab: %w", err)
	}
	reapDead(ctx)
	start := os.Getpid() % 200
	for i := range 200 {
		k := 20 + (start+i)%200
		l := &Lab{Index: k, Bridge: fmt.Sprintf("meshd-br%d", k), Gateway: netip.AddrFrom4([4]byte{198, 18, byte(k), 1})}
		// Creating the bridge is the lock: it fails if another lab has k.
		if err := run(ctx, "ip", "link", "add", l.Bridge, "type", "bridge"); err != nil {
			continue
		}
		if err := l.setUp(ctx); err != nil {
			l.Close()
			return nil, err
		}
		return l, nil
	}
	return nil, errors.New("netlab: no free subnet in 198.18.20-219.0/24")
}

func (l *Lab) setUp(ctx context.Context) error {
	l.undo = append(l.undo, func() error { return run(context.Background(), "ip", "link", "del", l.Bridge) })
	state := filepath.Join(StateDir, strconv.Itoa(l.Index))
	if err := os.WriteFile(state, []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		return fmt.Errorf("netlab: %w", err)
	}
	l.undo = append(l.undo, func() error { return os.Remove(state) })
	dir, err := os.MkdirTemp("", fmt.Sprintf("meshd-lab%d-", l.Index))
	if err != nil {
		return fmt.Errorf("netlab: %w", err)
	}
	l.Dir = dir
	l.undo = append(l.undo, func() error { return os.RemoveAll(dir) })
	if err := os.Chmod(dir, 0o755); err != nil {
		return fmt.Errorf("netlab: %w", err)
	}
	if err := run(ctx, "ip", "addr", "add", l.Gateway.String()+"/24", "dev", l.Bridge); err != nil {
		return err
	}
	return run(ctx, "ip", "link", "set", l.Bridge, "up")
}

// Addr returns 198.18.<k>.<host>.
func (l *Lab) Addr(host byte) netip.Addr {
	return netip.AddrFrom4([4]byte{198, 18, byte(l.Index), host})
}

// AddPod creates a network namespace with eth0 on the bridge, the next free
// address (from .10 up), loopback up and a default route via the gateway.
func (l *Lab) AddPod(ctx context.Context, name string) (*Pod, error) {
	l.mu.Lock()
	n := len(l.pods)
	p := &Pod{Name: name, NetNS: fmt.Sprintf("meshd-%d-%s", l.Index, name), IP: l.Addr(byte(10 + n)), lab: l}
	l.pods = append(l.pods, p)
	l.mu.Unlock()
	if n > 200 {
		return nil, errors.New("netlab: too many pods")
	}
	hostIf := fmt.Sprintf("mv%d-%d", l.Index, n)
	if err := run(ctx, "ip", "netns", "add", p.NetNS); err != nil {
		return nil, err
	}
	l.addUndo(func() error { return run(context.Background(), "ip", "netns", "del", p.NetNS) })
	steps := [][]string{
		{"ip", "link", "add", hostIf, "type", "veth", "peer", "name", "eth0", "netns", p.NetNS},
		{"ip", "link", "set", hostIf, "master", l.Bridge, "up"},
		{"ip", "-n", p.NetNS, "link", "set", "lo", "up"},
		{"ip", "-n", p.NetNS, "addr", "add", p.IP.String() + "/24", "dev", "eth0"},
		{"ip", "-n", p.NetNS, "link", "set", "eth0", "up"},
		{"ip", "-n", p.NetNS, "route", "add", "default", "via", l.Gateway.String()},
	}
	for i, s := range steps {
		if err := run(ctx, s[0], s[1:]...); err != nil {
			return nil, fmt.Errorf("netlab: pod %s: %w", name, err)
		}
		if i == 0 {
			// Deleting a namespace frees its veth asynchronously; delete it
			// at once so the name is free for the next lab.
			l.addUndo(func() error { return run(context.Background(), "ip", "link", "del", hostIf) })
		}
	}
	return p, nil
}

func (l *Lab) addUndo(f func() error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.undo = append(l.undo, f)
}

// Run runs a command in the pod's namespace and returns its combined output.
func (p *Pod) Run(ctx context.Context, name string, args ...string) (string, error) {
	out, err := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", p.NetNS, name}, args...)...).CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("netlab: %s: %s %s: %w: %s", p.Name, name, strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

// Close stops every process and removes every namespace, link and file of
// the lab, in reverse order. It reports what it could not remove.
func (l *Lab) Close() error {
	l.mu.Lock()
	procs, undo := l.procs, l.undo
	l.procs, l.undo = nil, nil
	l.mu.Unlock()
	for i := len(procs) - 1; i >= 0; i-- {
		procs[i].Stop()
	}
	var errs []error
	for i := len(undo) - 1; i >= 0; i-- {
		if err := undo[i](); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// reapDead removes the labs whose owner process is gone.
func reapDead(ctx context.Context) {
	entries, _ := os.ReadDir(StateDir)
	for _, e := range entries {
		k, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, _ := os.ReadFile(filepath.Join(StateDir, e.Name()))
		pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		if pid > 0 && syscall.Kill(pid, 0) == nil {
			continue
		}
		out, _ := exec.CommandContext(ctx, "ip", "netns", "list").Output()
		for _, line := range strings.Split(string(out), "\n") {
			if ns, _, _ := strings.Cut(line, " "); strings.HasPrefix(ns, fmt.Sprintf("meshd-%d-", k)) {
				killIn(ctx, ns)
				_ = run(ctx, "ip", "netns", "del", ns)
			}
		}
		_ = run(ctx, "ip", "link", "del", fmt.Sprintf("meshd-br%d", k))
		dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), fmt.Sprintf("meshd-lab%d-*", k)))
		for _, d := range dirs {
			_ = os.RemoveAll(d)
		}
		_ = os.Remove(filepath.Join(StateDir, e.Name()))
	}
}

// killIn kills every process left in a dead lab's namespace: a process the
// lab started dies with its owner (Pdeathsig), but what that process forked
// (nginx's workers) would live on, holding the namespace.
func killIn(ctx context.Context, ns string) {
	out, _ := exec.CommandContext(ctx, "ip", "netns", "pids", ns).Output()
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 1 && pid != os.Getpid() {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

func run(ctx context.Context, name string, args ...string) error {
	if out, err := exec.CommandContext(ctx, name, args...).CombinedOutput(); err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
