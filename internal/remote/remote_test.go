package remote

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

func TestDebugPort(t *testing.T) {
	tests := map[string]struct {
		args     []string
		wantPort int
		wantKube bool
	}{
		"deploy/base":            {args: []string{"serve", "--xds-addr=0.0.0.0:15012", "--debug-addr=127.0.0.1:15014"}, wantPort: 15014},
		"no --debug-addr":        {args: []string{"serve"}, wantPort: DefaultDebugPort},
		"separate value":         {args: []string{"serve", "--debug-addr", "0.0.0.0:9000", "--debug-auth", "kubernetes"}, wantPort: 9000, wantKube: true},
		"single dash":            {args: []string{"serve", "-debug-addr=[::1]:9001", "-debug-auth=kubernetes"}, wantPort: 9001, wantKube: true},
		"token auth":             {args: []string{"serve", "--debug-auth=token", "--debug-addr=0.0.0.0:9002"}, wantPort: 9002},
		"malformed address":      {args: []string{"serve", "--debug-addr=nonsense"}, wantPort: DefaultDebugPort},
		"flag without its value": {args: []string{"serve", "--debug-addr"}, wantPort: DefaultDebugPort},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			p := &corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "meshd", Args: tc.args}}}}
			port, kube := DebugPort(p)
			if port != tc.wantPort || kube != tc.wantKube {
				t.Errorf("DebugPort(%q) = %d, %v; want %d, %v", tc.args, port, kube, tc.wantPort, tc.wantKube)
			}
		})
	}
}

// TestKubeconfigLoad: none anywhere is ErrNoKubeconfig (the operator
// commands then use 127.0.0.1:15014), also inside a pod; a named file that
// is missing or bad, or an unknown context, is an error of its own.
func TestKubeconfigLoad(t *testing.T) {
	t.Setenv("HOME", t.TempDir())
	t.Setenv("KUBECONFIG", "")
	t.Setenv("KUBERNETES_SERVICE_HOST", "198.19.0.1") // as in a pod
	t.Setenv("KUBERNETES_SERVICE_PORT", "443")
	if _, err := (Kubeconfig{}).Load(); !errors.Is(err, ErrNoKubeconfig) {
		t.Errorf("no kubeconfig: %v", err)
	}
	bad := filepath.Join(t.TempDir(), "config")
	if err := os.WriteFile(bad, []byte("apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: {server: 'https://127.0.0.1:1'}}]\n"+
		"users: [{name: u, user: {token: secret-token}}]\ncontexts: [{name: x, context: {cluster: c, user: u}}]\ncurrent-context: x\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	rc, err := (Kubeconfig{Path: bad}).Load()
	if err != nil || rc.Host != "https://127.0.0.1:1" || bearerToken(rc) != "secret-token" {
		t.Errorf("kubeconfig: %+v, %v", rc, err)
	}
	if _, err := (Kubeconfig{Path: bad, Context: "nope"}).Load(); err == nil || errors.Is(err, ErrNoKubeconfig) {
		t.Errorf("unknown context: %v", err)
	}
	if _, err := (Kubeconfig{Path: filepath.Join(t.TempDir(), "missing")}).Load(); err == nil || errors.Is(err, ErrNoKubeconfig) {
		t.Errorf("missing file: %v", err)
	}
}
