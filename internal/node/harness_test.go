package node

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshd/meshd/internal/debug"
	"github.com/meshd/meshd/internal/testenv"
)

// Bridge is the node's pod bridge (hack/cluster/); the eavesdropper
// listens on it.
const Bridge = "meshdnode0"

// cluster is the one-node cluster of hack/cluster.sh, started for one test
// and torn down after it, also after a failure.
type cluster struct {
	t                *testing.T
	root, dir, kcfg  string
	client           kubernetes.Interface
	env              []string
	bin              string // meshd built for the host (operator commands)
	portForwardProcs []*exec.Cmd
}

// needNode checks for everything the real node needs; in CI a missing part
// fails the test, elsewhere it skips loudly.
func needNode(t *testing.T) {
	t.Helper()
	if testing.Short() {
		t.Skip("real node: not in -short")
	}
	if os.Getuid() != 0 {
		testenv.Unavailable(t, errors.New("the real node needs root (network namespaces, containerd, kubelet)"))
	}
	for _, tool := range []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "kubectl", "coredns", "image", "envoy"} {
		testenv.Need(t, tool)
	}
	for _, bin := range []string{"containerd", "runc", "ctr", "conntrack", "tcpdump", "nginx", "ldd"} {
		if _, err := exec.LookPath(bin); err != nil {
			if _, err2 := os.Stat("/usr/sbin/" + bin); err2 != nil {
				testenv.Unavailable(t, fmt.Errorf("%s not installed (bash hack/deps.sh): %w", bin, err))
			}
		}
	}
}

// startCluster runs hack/cluster.sh up with its state in out/node-e2e (a
// fixed place, so a run killed before its clean-up is cleaned up by the
// next one) and registers the tear-down.
func startCluster(t *testing.T) *cluster {
	t.Helper()
	root, err := testenv.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	c := &cluster{t: t, root: root, dir: filepath.Join(root, "out", "node-e2e")}
	c.env = append(os.Environ(), "MESHD_CLUSTER_DIR="+c.dir, "PATH="+os.Getenv("PATH")+":/usr/sbin:/sbin")
	c.kcfg = filepath.Join(c.dir, "admin.kubeconfig")
	// What a previous run of this test left behind.
	if out, err := c.run("bash", "hack/cluster.sh", "down"); err != nil {
		t.Logf("clean-up of an earlier run: %v\n%s", err, out)
	}
	if exec.Command("ip", "link", "show", Bridge).Run() == nil {
		t.Fatalf("%s exists: a one-node cluster of `make cluster` is running; stop it with `make cluster-down` first", Bridge)
	}
	t.Cleanup(func() {
		for _, p := range c.portForwardProcs {
			_ = p.Process.Kill()
			_ = p.Wait()
		}
		if t.Failed() {
			c.dumpState()
		}
		if os.Getenv("MESHD_NODE_KEEP") != "" {
			t.Logf("MESHD_NODE_KEEP set: the cluster keeps running; kubeconfig %s; stop with MESHD_CLUSTER_DIR=%s bash hack/cluster.sh down", c.kcfg, c.dir)
			return
		}
		if out, err := c.run("bash", "hack/cluster.sh", "down"); err != nil {
			t.Errorf("hack/cluster.sh down: %v\n%s", err, out)
		}
	})
	start := time.Now()
	if out, err := c.run("bash", "hack/cluster.sh", "up"); err != nil {
		t.Fatalf("hack/cluster.sh up: %v\n%s", err, tail(out, 60))
	}
	t.Logf("cluster up in %s", time.Since(start).Round(time.Second))
	rc, err := clientcmd.BuildConfigFromFlags("", c.kcfg)
	if err != nil {
		t.Fatal(err)
	}
	rc.QPS, rc.Burst = 50, 100
	if c.client, err = kubernetes.NewForConfig(rc); err != nil {
		t.Fatal(err)
	}
	return c
}

// run runs a command from the repository root with the cluster's
// environment; it returns the combined output.
func (c *cluster) run(name string, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir, cmd.Env = c.root, c.env
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// must runs a command and fails the test if it fails.
func (c *cluster) must(name string, args ...string) string {
	c.t.Helper()
	out, err := c.run(name, args...)
	if err != nil {
		c.t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, tail(out, 40))
	}
	return out
}

func (c *cluster) kubectl(args ...string) (string, error) {
	kubectl, err := testenv.ToolPath("kubectl")
	if err != nil {
		return "", err
	}
	return c.run(kubectl, append([]string{"--kubeconfig", c.kcfg}, args...)...)
}

func (c *cluster) mustKubectl(args ...string) string {
	c.t.Helper()
	out, err := c.kubectl(args...)
	if err != nil {
		c.t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, tail(out, 40))
	}
	return out
}

// apply applies manifests given as text.
func (c *cluster) apply(manifests string) {
	c.t.Helper()
	f := filepath.Join(c.t.TempDir(), "m.yaml")
	if err := os.WriteFile(f, []byte(manifests), 0o600); err != nil {
		c.t.Fatal(err)
	}
	c.mustKubectl("apply", "-f", f)
}

// portForward forwards a local port to a pod's port through the apiserver
// and the kubelet, as an operator would reach an in-cluster meshd.
func (c *cluster) portForward(ns, pod string, port int) string {
	c.t.Helper()
	local, err := testenv.FreePort()
	if err != nil {
		c.t.Fatal(err)
	}
	kubectl, _ := testenv.ToolPath("kubectl")
	cmd := exec.Command(kubectl, "--kubeconfig", c.kcfg, "-n", ns, "port-forward", "pod/"+pod, fmt.Sprintf("%d:%d", local, port))
	cmd.Env = c.env
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	c.portForwardProcs = append(c.portForwardProcs, cmd)
	addr := fmt.Sprintf("127.0.0.1:%d", local)
	waitUntil(c.t, 30*time.Second, "port-forward to "+ns+"/"+pod, func() error {
		resp, err := http.Get("http://" + addr + "/healthz")
		if err != nil {
			return err
		}
		resp.Body.Close()
		return nil
	})
	return addr
}

// proxies reads /debug/proxies of one meshd replica.
func proxies(addr string) (debug.Proxies, error) {
	var v debug.Proxies
	resp, err := http.Get("http://" + addr + "/debug/proxies")
	if err != nil {
		return v, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return v, fmt.Errorf("/debug/proxies: %s", resp.Status)
	}
	return v, json.NewDecoder(resp.Body).Decode(&v)
}

// dumpState logs what helps after a failure: pods, events, logs of meshd.
func (c *cluster) dumpState() {
	for _, args := range [][]string{
		{"get", "pods", "-A", "-o", "wide"},
		{"get", "events", "-A", "--sort-by=.lastTimestamp"},
		{"logs", "-n", "meshd-system", "-l", "app=meshd", "--tail=80", "--prefix"},
	} {
		out, err := c.kubectl(args...)
		c.t.Logf("kubectl %s (%v):\n%s", strings.Join(args, " "), err, tail(out, 80))
	}
	for _, f := range []string{"kubelet.log", "kube-apiserver.log"} {
		b, _ := os.ReadFile(filepath.Join(c.dir, "logs", f))
		c.t.Logf("%s (tail):\n%s", f, tail(string(b), 30))
	}
}

// waitUntil polls f every 500 ms until it returns nil or the timeout passes.
func waitUntil(t *testing.T, timeout time.Duration, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s: %v", what, timeout, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
