package main

import (
	"context"
	"io"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/meshd/meshd/internal/testenv"
)

// TestSurvivesAPIServerAndEtcdRestarts: with the apiserver down, meshd
// reports not ready but keeps serving: the connected Envoy keeps its
// config, and a new Envoy connects and gets config and certificates from
// the internal CA. When the apiserver is back, meshd is ready again and a
// new Service reaches Envoy; the same after an etcd restart.
func TestSurvivesAPIServerAndEtcdRestarts(t *testing.T) {
	testenv.Need(t, "envoy")
	env := testenv.Kube(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	const ns = "faults"
	for _, n := range []string{"meshd-system", ns} {
		if err := env.FreshNamespace(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	addService := func(name string) {
		t.Helper()
		if _, err := env.Client.CoreV1().Services(ns).Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)}}}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	addService("before")
	dir := t.TempDir()
	caDir, xdsAddr, debugAddr := filepath.Join(dir, "ca"), freeAddr(t), freeAddr(t)
	runServe(ctx, t, "--kubeconfig", env.Kubeconfig, "--ca-dir", caDir, "--xds-addr", xdsAddr, "--debug-addr", debugAddr)
	base := "http://" + debugAddr
	waitHTTP(t, base+"/readyz")
	first := startSidecar(ctx, t, caDir, xdsAddr, ns, "one", "default")
	waitEnvoy(ctx, t, first, "/config_dump", `"name": "outbound|80|before.faults"`)

	outage := make(chan error, 1)
	go func() { outage <- env.RestartAPIServer(ctx, 8*time.Second) }()
	waitStatus(t, base+"/readyz", http.StatusServiceUnavailable, "unreachable")
	second := startSidecar(ctx, t, caDir, xdsAddr, ns, "two", "default")
	waitEnvoy(ctx, t, second, "/config_dump", `"name": "outbound|80|before.faults"`)
	waitEnvoy(ctx, t, second, "/certs", `"uri": "spiffe://cluster.local/ns/faults/sa/default"`)
	if !strings.Contains(envoyBody(ctx, t, first, "/config_dump"), `"name": "outbound|80|before.faults"`) {
		t.Error("the connected Envoy lost its config during the outage")
	}
	if err := <-outage; err != nil {
		t.Fatal(err)
	}
	waitHTTP(t, base+"/readyz")
	addService("after-apiserver")
	waitEnvoy(ctx, t, first, "/config_dump", `"name": "outbound|80|after-apiserver.faults"`)

	if err := env.RestartEtcd(ctx, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	addService("after-etcd")
	waitEnvoy(ctx, t, second, "/config_dump", `"name": "outbound|80|after-etcd.faults"`)
	waitHTTP(t, base+"/readyz")
}

// waitStatus polls url until it answers code with a body containing sub.
func waitStatus(t *testing.T, url string, code int, sub string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(url)
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == code && strings.Contains(string(b), sub) {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never answered %d with %q (last: %v)", url, code, sub, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func envoyBody(ctx context.Context, t *testing.T, e *testenv.Envoy, path string) string {
	t.Helper()
	b, err := e.Admin(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
