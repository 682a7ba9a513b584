package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshd/meshd/internal/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

const demoMesh = `
apiVersion: v1
kind: Namespace
metadata: {name: demo}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  clusterIP: 198.19.0.10
  ports: [{name: http, port: 80, targetPort: 8080}]
`

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestServeLocalWithRealEnvoy runs `meshd serve` on a local directory and
// connects a real Envoy whose bootstrap `meshd bootstrap` rendered: the
// stream is authenticated by the client certificate, the debug API shows the
// proxy with its identity and ACKs, and no key material leaks.
func TestServeLocalWithRealEnvoy(t *testing.T) {
	testenv.Need(t, "envoy")
	dir := t.TempDir()
	localDir, caDir := filepath.Join(dir, "mesh"), filepath.Join(dir, "ca")
	if err := os.MkdirAll(localDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(localDir, "mesh.yaml"), []byte(demoMesh), 0o644); err != nil {
		t.Fatal(err)
	}
	xdsAddr, debugAddr := freeAddr(t), freeAddr(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	var logs bytes.Buffer
	go func() {
		done <- run(ctx, []string{"serve", "--local-dir", localDir, "--ca-dir", caDir, "--xds-addr", xdsAddr, "--debug-addr", debugAddr}, io.Discard, &syncWriter{w: &logs})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
		if t.Failed() {
			t.Logf("meshd log:\n%s", logs.String())
		}
	})
	base := "http://" + debugAddr
	waitHTTP(t, base+"/readyz")

	adminAddr := freeAddr(t)
	_, adminPort, _ := net.SplitHostPort(adminAddr)
	var out bytes.Buffer
	err := run(ctx, []string{"bootstrap", "--ca-dir", caDir, "--namespace", "demo", "--pod", "web-0", "--service-account", "web",
		"--xds-addr", xdsAddr, "--out", filepath.Join(dir, "web-0"), "--admin-port", adminPort}, &out, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "web-0", "bootstrap.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var port int
	fmt.Sscan(adminPort, &port)
	testenv.StartEnvoy(t, testenv.EnvoyOptions{Bootstrap: string(b), AdminPort: port})

	var proxies struct {
		Proxies []struct {
			NodeID   string `json:"node_id"`
			Identity string `json:"identity"`
			Types    map[string]struct {
				AckedVersion string `json:"acked_version"`
			} `json:"types"`
		} `json:"proxies"`
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		body := getBody(t, base+"/debug/proxies")
		if err := json.Unmarshal([]byte(body), &proxies); err != nil {
			t.Fatal(err)
		}
		if len(proxies.Proxies) == 1 && proxies.Proxies[0].Types["type.googleapis.com/envoy.config.cluster.v3.Cluster"].AckedVersion != "" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("Envoy never connected and ACKed clusters: %s", body)
		}
		time.Sleep(100 * time.Millisecond)
	}
	p := proxies.Proxies[0]
	if p.NodeID != "web-0.demo" || p.Identity != "spiffe://cluster.local/ns/demo/sa/web" {
		t.Errorf("proxy %s with identity %s, want web-0.demo as spiffe://cluster.local/ns/demo/sa/web", p.NodeID, p.Identity)
	}
	for _, path := range []string{"/debug/proxies", "/debug/config_dump?proxy=web-0.demo", "/metrics"} {
		if body := getBody(t, base+path); strings.Contains(body, "PRIVATE KEY") {
			t.Errorf("%s shows key material", path)
		}
	}
	if m := getBody(t, base+"/metrics"); !strings.Contains(m, "meshd_xds_connected_streams 1") || !strings.Contains(m, `meshd_ca_certificates_issued_total{backend="internal"}`) {
		t.Errorf("metrics lack the connected stream or issued certificates")
	}
}

func waitHTTP(t *testing.T, url string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s never answered 200 (last: %v)", url, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func getBody(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// TestServeAgainstAPIServer runs `meshd serve --kubeconfig` against the real
// apiserver: it creates the CA Secret, syncs its informers (ready), and a
// second instance started on the same cluster uses the same root.
func TestServeAgainstAPIServer(t *testing.T) {
	env := testenv.Kube(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := env.EnsureNamespace(ctx, "meshd-system"); err != nil {
		t.Fatal(err)
	}
	start := func() (string, chan error) {
		debugAddr := freeAddr(t)
		done := make(chan error, 1)
		go func() {
			done <- run(ctx, []string{"serve", "--kubeconfig", env.Kubeconfig, "--xds-addr", freeAddr(t), "--debug-addr", debugAddr}, io.Discard, io.Discard)
		}()
		waitHTTP(t, "http://"+debugAddr+"/readyz")
		return debugAddr, done
	}
	_, done1 := start()
	s1, err := env.Client.CoreV1().Secrets("meshd-system").Get(ctx, "meshd-ca", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("CA secret not created: %v", err)
	}
	_, done2 := start()
	s2, _ := env.Client.CoreV1().Secrets("meshd-system").Get(ctx, "meshd-ca", metav1.GetOptions{})
	if string(s1.Data["root-cert.pem"]) != string(s2.Data["root-cert.pem"]) || s1.ResourceVersion != s2.ResourceVersion {
		t.Error("a second replica changed the CA secret")
	}
	cancel()
	for _, d := range []chan error{done1, done2} {
		if err := <-d; err != nil {
			t.Errorf("serve: %v", err)
		}
	}
}
