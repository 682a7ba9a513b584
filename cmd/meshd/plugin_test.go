package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshd/meshd/internal/testenv"
)

// TestKubectlPlugin: the real kubectl finds meshd installed as
// kubectl-meshd on the PATH, runs `kubectl meshd check` and `kubectl meshd
// proxy-status` against a meshd serving the real apiserver, and completes
// `kubectl meshd prox` through kubectl_complete-meshd. Without
// --debug-addr the operator verbs look for meshd's pods through the
// apiserver with the kubeconfig: none gives a clear error, and a meshd pod
// gets a pods/portforward request to the debug port its arguments name.
// (The test apiserver has no kubelet, so that port-forward cannot connect;
// internal/node's real-node test runs `kubectl meshd proxy-status` through
// a real kubelet to the pods' loopback debug API.)
func TestKubectlPlugin(t *testing.T) {
	kubectl := testenv.Need(t, "kubectl")
	env := testenv.Kube(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	bin := t.TempDir()
	plugin := filepath.Join(bin, "kubectl-meshd")
	if out, err := exec.Command("go", "build", "-o", plugin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	if err := os.Symlink(plugin, filepath.Join(bin, "kubectl_complete-meshd")); err != nil {
		t.Fatal(err)
	}
	// Only this PATH: no other kubectl-meshd may answer. HOME without a
	// kubeconfig, KUBECONFIG the test apiserver's.
	cmdEnv := []string{"PATH=" + bin + ":/usr/bin:/bin", "HOME=" + t.TempDir(), "KUBECONFIG=" + env.Kubeconfig}
	kc := func(args ...string) (string, error) {
		cmd := exec.CommandContext(ctx, kubectl, args...)
		cmd.Env = cmdEnv
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		return out.String(), err
	}

	out, err := kc("plugin", "list")
	if err != nil || !strings.Contains(out, plugin) {
		t.Fatalf("kubectl plugin list: %v\n%s", err, out)
	}
	out, err = kc("meshd", "proxy-status", "--help")
	if err != nil || !strings.Contains(out, "kubectl meshd proxy-status [flags]") {
		t.Fatalf("kubectl meshd proxy-status --help: %v\n%s", err, out)
	}
	out, err = kc("__complete", "meshd", "prox")
	if err != nil || !strings.Contains(out, "proxy-config") || !strings.Contains(out, "proxy-status") {
		t.Errorf("kubectl __complete meshd prox: %v\n%s", err, out)
	}

	for _, ns := range []string{"meshd-system", "plugin-empty"} {
		if err := env.FreshNamespace(ctx, ns); err != nil {
			t.Fatal(err)
		}
	}
	debugAddr := freeAddr(t)
	sctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- run(sctx, []string{"serve", "--kubeconfig", env.Kubeconfig, "--ca-dir", filepath.Join(t.TempDir(), "ca"),
			"--xds-addr", freeAddr(t), "--debug-addr", debugAddr}, io.Discard, io.Discard)
	}()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	waitHTTP(t, "http://"+debugAddr+"/readyz")
	out, err = kc("meshd", "check", "--debug-addr", debugAddr)
	if err != nil || !strings.Contains(out, "OK    ready") {
		t.Errorf("kubectl meshd check: %v\n%s", err, out)
	}
	out, err = kc("meshd", "proxy-status", "--debug-addr", debugAddr, "-o", "json")
	var ps struct{ Proxies []json.RawMessage }
	if err != nil || json.Unmarshal([]byte(out), &ps) != nil || ps.Proxies == nil {
		t.Errorf("kubectl meshd proxy-status -o json: %v\n%s", err, out)
	}

	// Through the apiserver: no meshd pod.
	out, err = kc("meshd", "proxy-status", "-n", "plugin-empty")
	if err == nil || !strings.Contains(out, "no running meshd pod in namespace plugin-empty with labels app=meshd") {
		t.Errorf("kubectl meshd proxy-status -n plugin-empty: %v\n%s", err, out)
	}
	// A meshd pod (no kubelet runs it): the port-forward is asked for the
	// port of its --debug-addr and the apiserver's answer is reported.
	pod, err := env.Client.CoreV1().Pods("meshd-system").Create(ctx, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "meshd-plugin-test", Labels: map[string]string{"app": "meshd"}},
		Spec: corev1.PodSpec{NodeName: testenv.NodeName, Containers: []corev1.Container{{Name: "meshd", Image: "meshd",
			Args: []string{"serve", "--debug-addr=127.0.0.1:15099", "--debug-auth=kubernetes"}}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = env.Client.CoreV1().Pods("meshd-system").Delete(context.Background(), pod.Name, *metav1.NewDeleteOptions(0))
	})
	pod.Status = corev1.PodStatus{Phase: corev1.PodRunning}
	if _, err := env.Client.CoreV1().Pods("meshd-system").UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	out, err = kc("meshd", "proxy-status")
	if err == nil || !strings.Contains(out, "port-forward to pod meshd-system/meshd-plugin-test port 15099") {
		t.Errorf("kubectl meshd proxy-status: %v\n%s", err, out)
	}
	t.Logf("kubectl meshd proxy-status, a meshd pod without a kubelet: %s", strings.TrimSpace(out))
}
