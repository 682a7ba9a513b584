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

// demoMesh: web-0 (the sidecar under test) behind an HTTP service, a TCP
// service elsewhere, a PERMISSIVE pod behind a headless service. %s is
// where a second web endpoint goes.
const demoMesh = `
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {meshd.io/inject: enabled}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  clusterIP: 198.19.0.10
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: demo}
spec: {serviceAccountName: web}
status: {podIP: 198.18.0.10}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: demo, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- addresses: [198.18.0.10]
  targetRef: {kind: Pod, namespace: demo, name: web-0}
%s---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: demo}
spec:
  clusterIP: 198.19.0.20
  ports: [{name: pg, port: 5432}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-1, namespace: demo, labels: {kubernetes.io/service-name: db}}
addressType: IPv4
ports: [{name: pg, port: 5432}]
endpoints:
- addresses: [198.18.0.20]
  targetRef: {kind: Pod, namespace: demo, name: db-0}
---
apiVersion: v1
kind: Pod
metadata: {name: db-0, namespace: demo, labels: {meshd.io/mtls-mode: PERMISSIVE}}
spec: {serviceAccountName: db}
status: {podIP: 198.18.0.20}
---
apiVersion: v1
kind: Service
metadata: {name: db-headless, namespace: demo}
spec:
  clusterIP: None
  ports: [{name: pg, port: 5432}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: db-headless-1, namespace: demo, labels: {kubernetes.io/service-name: db-headless}}
addressType: IPv4
ports: [{name: pg, port: 5432}]
endpoints:
- addresses: [198.18.0.20]
  targetRef: {kind: Pod, namespace: demo, name: db-0}
`

// secondWeb is a second web endpoint for demoMesh.
const secondWeb = `- addresses: [198.18.0.11]
  targetRef: {kind: Pod, namespace: demo, name: web-1}
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
// proxy with its identity and ACKs, and no key material leaks. Envoy accepts
// the translated config (every type ACKed, nothing NACKed, the outbound and
// inbound listeners active), and a new endpoint in the directory reaches it
// as an EDS-only update.
func TestServeLocalWithRealEnvoy(t *testing.T) {
	testenv.Need(t, "envoy")
	healthAddr := freeAddr(t)
	md := serveLocal(t, "--health-addr", healthAddr)
	ctx, localDir, caDir, xdsAddr, debugAddr, base := md.ctx, md.localDir, md.caDir, md.xdsAddr, md.debugAddr, md.base
	waitHTTP(t, "http://"+healthAddr+"/readyz") // the probe address: health only
	if resp, err := http.Get("http://" + healthAddr + "/debug/proxies"); err != nil || resp.StatusCode != http.StatusNotFound {
		t.Errorf("the health address serves debug views: %v %v", resp, err)
	}

	envoy := startSidecar(ctx, t, caDir, xdsAddr, "demo", "web-0", "web")

	proxies := waitProxies(t, base, func(p proxyView) bool { return p.acked(xdsTypes...) })
	p := proxies.Proxies[0]
	if p.NodeID != "web-0.demo" || p.Identity != "spiffe://cluster.local/ns/demo/sa/web" {
		t.Errorf("proxy %s with identity %s, want web-0.demo as spiffe://cluster.local/ns/demo/sa/web", p.NodeID, p.Identity)
	}
	for _, path := range []string{"/debug/proxies", "/debug/config_dump?proxy=web-0.demo", "/debug/certs", "/debug/explain?from=web-0.demo&to=db.demo", "/metrics"} {
		if body := getBody(t, base+path); strings.Contains(body, "PRIVATE KEY") {
			t.Errorf("%s shows key material", path)
		}
	}
	m := getBody(t, base+"/metrics")
	for _, want := range []string{"meshd_xds_connected_streams 1", `meshd_ca_certificates_issued_total{backend="internal"}`,
		`meshd_xds_push_ack_seconds_count{type="Cluster"}`, "meshd_ca_earliest_leaf_expiry_timestamp_seconds 1", `meshd_config_updates_total{result="published"}`} {
		if !strings.Contains(m, want) {
			t.Errorf("metrics lack %s", want)
		}
	}
	checkEnvoyConfig(ctx, t, envoy, p)
	checkOperatorCommands(ctx, t, debugAddr)

	// A second web endpoint: only the endpoints version moves.
	if err := os.WriteFile(filepath.Join(localDir, "mesh.yaml"), []byte(fmt.Sprintf(demoMesh, secondWeb)), 0o644); err != nil {
		t.Fatal(err)
	}
	after := waitProxies(t, base, func(q proxyView) bool {
		return q.Types[endpointType].AckedVersion != p.Types[endpointType].AckedVersion && q.acked(xdsTypes...)
	}).Proxies[0]
	for _, typ := range xdsTypes {
		if moved := after.Types[typ].AckedVersion != p.Types[typ].AckedVersion; moved != (typ == endpointType) {
			t.Errorf("after an endpoint change %s moved=%v", typ, moved)
		}
	}
	waitEnvoy(ctx, t, envoy, "/clusters", "outbound|80|web.demo::198.18.0.11:8080::")
	// That change's convergence (noticed -> every moved type ACKed) was measured.
	if m := getBody(t, base+"/metrics"); !strings.Contains(m, "meshd_xds_convergence_seconds_count 1") {
		t.Errorf("no convergence observed for the endpoint change:\n%s", grepLines(m, "convergence"))
	}
}

// localMeshd is a `meshd serve --local-dir` run by serveLocal.
type localMeshd struct {
	ctx                                       context.Context
	localDir, caDir, xdsAddr, debugAddr, base string
}

// serveLocal runs `meshd serve` on a local directory holding demoMesh, with
// extra flags, until the test ends, and waits until it is ready.
func serveLocal(t *testing.T, extra ...string) localMeshd {
	t.Helper()
	dir := t.TempDir()
	m := localMeshd{localDir: filepath.Join(dir, "mesh"), caDir: filepath.Join(dir, "ca"), xdsAddr: freeAddr(t), debugAddr: freeAddr(t)}
	m.base = "http://" + m.debugAddr
	if err := os.MkdirAll(m.localDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(m.localDir, "mesh.yaml"), []byte(fmt.Sprintf(demoMesh, "")), 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	m.ctx = ctx
	runServe(ctx, t, append([]string{"--local-dir", m.localDir, "--ca-dir", m.caDir, "--xds-addr", m.xdsAddr, "--debug-addr", m.debugAddr}, extra...)...)
	waitHTTP(t, m.base+"/readyz")
	return m
}

// runServe runs `meshd serve` with args until the test ends (or ctx
// does): an error it ends with fails the test, and its log is shown when
// the test failed. It returns the log so far.
func runServe(ctx context.Context, t *testing.T, args ...string) (log func() string) {
	t.Helper()
	sctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	logs := &testenv.SyncBuffer{}
	log = logs.String
	go func() { done <- run(sctx, append([]string{"serve"}, args...), io.Discard, logs) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
		if t.Failed() {
			t.Logf("meshd log:\n%s", log())
		}
	})
	return log
}

// TestServeXDSLimitFlags: the --xds-* flags reach the xDS server. With one
// stream per identity, a second real Envoy of the same pod is refused
// (the default, 8, takes both), and a limit that cannot work stops meshd
// before it starts.
func TestServeXDSLimitFlags(t *testing.T) {
	testenv.Need(t, "envoy")
	m := serveLocal(t, "--xds-streams-per-identity", "1")
	startSidecar(m.ctx, t, m.caDir, m.xdsAddr, "demo", "web-0", "web")
	waitProxies(t, m.base, func(p proxyView) bool { return p.acked(xdsTypes...) })
	startSidecar(m.ctx, t, m.caDir, m.xdsAddr, "demo", "web-0", "web")
	// The counter is shown at 0 from the start: wait for a refusal.
	limited := `meshd_xds_limited_total{limit="streams_per_identity"} `
	refused := func() bool {
		line := grepLines(getBody(t, m.base+"/metrics"), limited)
		var n float64
		_, err := fmt.Sscan(strings.TrimPrefix(strings.TrimSpace(line), limited), &n)
		return err == nil && n >= 1
	}
	deadline := time.Now().Add(30 * time.Second)
	for !refused() {
		if time.Now().After(deadline) {
			t.Fatalf("a second stream of web-0.demo was not refused:\n%s", grepLines(getBody(t, m.base+"/metrics"), "meshd_xds_"))
		}
		time.Sleep(200 * time.Millisecond)
	}
	if metrics := getBody(t, m.base+"/metrics"); !strings.Contains(metrics, "meshd_xds_connected_streams 1\n") {
		t.Errorf("not one connected stream:\n%s", grepLines(metrics, "connected_streams"))
	}

	err := run(context.Background(), []string{"serve", "--local-dir", m.localDir, "--ca-dir", t.TempDir(), "--xds-request-rate", "0",
		"--xds-min-ping-interval", "1m"}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "--xds-request-rate 0") || !strings.Contains(err.Error(), "--xds-min-ping-interval 1m0s") {
		t.Errorf("serve with impossible limits: %v", err)
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

const (
	clusterType  = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	endpointType = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
	listenerType = "type.googleapis.com/envoy.config.listener.v3.Listener"
	routeType    = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
	secretType   = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
)

var xdsTypes = []string{clusterType, endpointType, listenerType, routeType, secretType}

type proxyView struct {
	NodeID   string `json:"node_id"`
	Identity string `json:"identity"`
	Types    map[string]struct {
		SentVersion  string `json:"sent_version"`
		AckedVersion string `json:"acked_version"`
		NACK         any    `json:"last_nack"`
	} `json:"types"`
}

// acked reports whether every type's sent version is ACKed.
func (p proxyView) acked(types ...string) bool {
	for _, typ := range types {
		s := p.Types[typ]
		if s.AckedVersion == "" || s.AckedVersion != s.SentVersion {
			return false
		}
	}
	return true
}

type proxiesView struct {
	Proxies []proxyView `json:"proxies"`
}

// waitProxies polls /debug/proxies until exactly one proxy satisfies ok;
// a NACK fails the test at once.
func waitProxies(t *testing.T, base string, ok func(proxyView) bool) proxiesView {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		var v proxiesView
		body := getBody(t, base+"/debug/proxies")
		if err := json.Unmarshal([]byte(body), &v); err != nil {
			t.Fatal(err)
		}
		for _, p := range v.Proxies {
			for typ, s := range p.Types {
				if s.NACK != nil {
					t.Fatalf("Envoy NACKed %s: %v", typ, s.NACK)
				}
			}
		}
		if len(v.Proxies) == 1 && ok(v.Proxies[0]) {
			return v
		}
		if time.Now().After(deadline) {
			t.Fatalf("the proxy never reached the expected state: %s", body)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// checkEnvoyConfig reads Envoy's own view: both listeners active, the
// clusters with the endpoints and SPIFFE checks meshd translated.
func checkEnvoyConfig(ctx context.Context, t *testing.T, envoy *testenv.Envoy, p proxyView) {
	t.Helper()
	dump := waitEnvoy(ctx, t, envoy, "/config_dump?include_eds", `"name": "inbound"`)
	for _, want := range []string{
		`"name": "outbound"`,
		`"name": "outbound|80|web.demo"`,
		`"name": "outbound|5432|db.demo"`,
		`"name": "outbound-direct|5432|db-headless.demo"`,
		`"exact": "spiffe://cluster.local/ns/demo/sa/db"`,
		`"prefix": "spiffe://cluster.local/"`,
	} {
		if !strings.Contains(dump, want) {
			t.Errorf("Envoy's config_dump lacks %s", want)
		}
	}
	listeners := waitEnvoy(ctx, t, envoy, "/listeners", "inbound::0.0.0.0:15006")
	if !strings.Contains(listeners, "outbound::0.0.0.0:15001") {
		t.Errorf("Envoy's active listeners: %s", listeners)
	}
	waitEnvoy(ctx, t, envoy, "/clusters", "outbound|80|web.demo::198.18.0.10:8080::")
}

// waitEnvoy polls an admin path until its body contains want (up to 60 s:
// after an apiserver outage client-go's informers retry with a backoff of
// up to 30 s).
func waitEnvoy(ctx context.Context, t *testing.T, envoy *testenv.Envoy, path, want string) string {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		b, err := envoy.Admin(ctx, path)
		if err == nil && strings.Contains(string(b), want) {
			return string(b)
		}
		if time.Now().After(deadline) {
			t.Fatalf("Envoy %s never showed %q (err %v):\n%.3000s\nEnvoy log:\n%s", path, want, err, b, envoy.Log())
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// startSidecar renders a pod's bootstrap with `meshd bootstrap` and starts
// a real Envoy with it.
func startSidecar(ctx context.Context, t *testing.T, caDir, xdsAddr, ns, pod, sa string) *testenv.Envoy {
	t.Helper()
	dir := t.TempDir()
	_, adminPort, _ := net.SplitHostPort(freeAddr(t))
	err := run(ctx, []string{"bootstrap", "--ca-dir", caDir, "--namespace", ns, "--pod", pod, "--service-account", sa,
		"--xds-addr", xdsAddr, "--out", dir, "--admin-port", adminPort}, io.Discard, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "bootstrap.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var port int
	fmt.Sscan(adminPort, &port)
	return testenv.StartEnvoy(t, testenv.EnvoyOptions{Bootstrap: string(b), AdminPort: port})
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
	if err := env.FreshNamespace(ctx, "meshd-system"); err != nil {
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
	// The CA Secret deleted: meshd refuses to start instead of minting a
	// new root that no sidecar trusts.
	if err := env.Client.CoreV1().Secrets("meshd-system").Delete(context.Background(), "meshd-ca", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	err = run(context.Background(), []string{"serve", "--kubeconfig", env.Kubeconfig, "--xds-addr", freeAddr(t), "--debug-addr", freeAddr(t)}, io.Discard, io.Discard)
	if err == nil || !strings.Contains(err.Error(), "restore meshd-ca from a backup") {
		t.Errorf("serve with the CA Secret deleted: %v, want a refusal", err)
	}
	if _, err := env.Client.CoreV1().Secrets("meshd-system").Get(context.Background(), "meshd-ca", metav1.GetOptions{}); err == nil {
		t.Error("a new CA Secret was created")
	}
}

// checkOperatorCommands runs the CLI against the debug API of the running
// meshd: web-0's sidecar is connected and synced, its certificate listed,
// and explain finds that db-0 (expected in the mesh) has no sidecar.
func checkOperatorCommands(ctx context.Context, t *testing.T, debugAddr string) {
	t.Helper()
	cmds := map[string]struct {
		args []string
		want []string
	}{
		"proxy-status": {[]string{"proxy-status", "--debug-addr", debugAddr}, []string{"web-0.demo", "spiffe://cluster.local/ns/demo/sa/web", "SYNCED"}},
		"certs":        {[]string{"certs", "--debug-addr", debugAddr}, []string{"rotation steady", "web-0.demo", "spiffe://cluster.local/ns/demo/sa/web"}},
		"explain": {[]string{"explain", "--debug-addr", debugAddr, "--from", "web-0.demo", "--to", "db.demo"},
			[]string{"web-0.demo -> db.demo: MTLS", "cluster outbound|5432|db.demo", "spiffe://cluster.local/ns/demo/sa/db", "! server db-0.demo should have a sidecar but none is connected"}},
		"proxy-config": {[]string{"proxy-config", "web-0.demo", "--debug-addr", debugAddr, "--type", "listeners"}, []string{`"name": "inbound"`, `"name": "outbound"`}},
		"check":        {[]string{"check", "--debug-addr", debugAddr}, []string{"OK    ready", "OK    ca", "OK    proxies  1 connected, all in sync", "SKIP  webhook"}},
		"status yaml":  {[]string{"proxy-status", "--debug-addr", debugAddr, "-o", "yaml"}, []string{"node_id: web-0.demo"}},
	}
	for name, c := range cmds {
		var out bytes.Buffer
		if err := run(ctx, c.args, &out, io.Discard); err != nil {
			t.Errorf("meshd %s: %v", name, err)
			continue
		}
		flat := strings.Join(strings.Fields(out.String()), " ") // column widths follow the longest check name
		for _, w := range c.want {
			if !strings.Contains(flat, strings.Join(strings.Fields(w), " ")) {
				t.Errorf("meshd %s output lacks %q:\n%s", name, w, out.String())
			}
		}
		if strings.Contains(out.String(), "PRIVATE KEY") {
			t.Errorf("meshd %s shows key material", name)
		}
	}
	var out bytes.Buffer
	if err := run(ctx, []string{"explain", "--debug-addr", debugAddr, "--from", "nobody.demo", "--to", "db.demo"}, &out, io.Discard); err == nil || !strings.Contains(err.Error(), "no pod") {
		t.Errorf("explain from an unknown pod: %v, want a clear error", err)
	}
}
