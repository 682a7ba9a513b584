package bootstrap_test

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/meshd/meshd/bootstrap"
	"github.com/meshd/meshd/internal/kubelet"
	"github.com/meshd/meshd/internal/testenv"
)

// TestAppProbesCheckedBySidecar: a real Envoy with the readiness port and
// the four kinds of app probe, against a gRPC health server, a TCP
// listener, an HTTPS server and an HTTP server listening only on the pod's
// address (127.0.0.2 here), the probes' clusters given on the command line
// as the injector gives them, expanded as the kubelet does. The kubelet's
// GET of each rewritten path answers 200 while the app is well and 503
// once it is not (NOT_SERVING, the listener closed, a 500), and 200 again
// when it recovers; the checks come from 127.0.0.6; the HTTPS check sends
// the probe's Host and headers (or the pod's address and port), its path
// as written ('$' and all). A probe recorded by an older meshd still
// reaches its app on 127.0.0.1 from the bootstrap alone.
func TestAppProbesCheckedBySidecar(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const podIP = "127.0.0.2"
	lis := func(addr string) net.Listener {
		l, err := net.Listen("tcp", addr+":0")
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	port := func(l net.Listener) uint32 { return uint32(l.Addr().(*net.TCPAddr).Port) }

	grpcLis := lis(podIP)
	srv := grpc.NewServer()
	hs := health.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	hs.SetServingStatus("orders", healthpb.HealthCheckResponse_SERVING)
	go func() { _ = srv.Serve(grpcLis) }()
	defer srv.Stop()

	tcpLis := lis(podIP)
	go func() {
		for {
			c, err := tcpLis.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	defer tcpLis.Close()

	var httpsFail, httpFail atomic.Bool
	var seenMu sync.Mutex
	seen := map[string]string{} // path -> "host path X-Probe", or the HTTP app's caller
	https := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seenMu.Lock()
		seen[r.URL.Path] = fmt.Sprintf("%s %s %s", r.Host, r.URL.Path, r.Header.Get("X-Probe"))
		seenMu.Unlock()
		if httpsFail.Load() {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusFound) // 200-399 pass, as for the kubelet
	}))
	https.Listener.Close()
	https.Listener = lis(podIP)
	https.StartTLS()
	defer https.Close()
	httpsPort := uint32(https.Listener.Addr().(*net.TCPAddr).Port)
	plain := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host, _, _ := net.SplitHostPort(r.RemoteAddr)
		seenMu.Lock()
		seen["plain"] = host
		seenMu.Unlock()
		if httpFail.Load() || r.URL.Path != "/healthz" {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	plain.Listener.Close()
	plain.Listener = lis(podIP)
	plain.Start()
	defer plain.Close()
	plainPort := uint32(plain.Listener.Addr().(*net.TCPAddr).Port)
	// An app on 127.0.0.1 only, probed as an older meshd recorded it.
	legacy := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	defer legacy.Close()
	legacyPort := uint32(legacy.Listener.Addr().(*net.TCPAddr).Port)

	readiness, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	admin, err := testenv.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	cfg := bootstrap.Config{Namespace: "demo", NodeID: "app-0.demo", ServiceAccount: "app",
		XDSAddress: "127.0.0.1:1", XDSServerSAN: "spiffe://cluster.local/ns/meshd-system/sa/meshd",
		AdminPort: uint32(admin), ReadinessPort: uint32(readiness), InitialFetchTimeout: time.Second,
		AppProbes: map[string]bootstrap.AppProbe{
			"/app-health/app/readyz": {Kind: bootstrap.ProbeGRPC, Port: port(grpcLis), Service: "orders", Period: 1, PodIP: true},
			"/app-health/app/livez":  {Kind: bootstrap.ProbeTCP, Port: port(tcpLis), Period: 1, PodIP: true},
			"/app-health/web/readyz": {Kind: bootstrap.ProbeHTTPS, Port: httpsPort, Path: "/ready", Period: 1, PodIP: true,
				Headers: map[string]string{"Host": "web.local", "X-Probe": "kubelet $(POD_IP)"}},
			"/app-health/web/livez": {Port: plainPort, Path: "/healthz", PodIP: true},
			// No Host: the app is asked as <pod address>:<port>.
			"/app-health/web/startupz": {Kind: bootstrap.ProbeHTTPS, Port: httpsPort, Path: "/start/$(POD_IP)/$$", Period: 1, PodIP: true},
			"/app-health/old/livez":    {Port: legacyPort, Path: "/"},
		}}
	path := writeWithCreds(t, cfg)
	writeCerts(t, filepath.Dir(path))
	y, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	args, err := bootstrap.ProbeArgs(cfg.AppProbes)
	if err != nil {
		t.Fatal(err)
	}
	for k := range args {
		args[k] = kubelet.Expand(args[k], map[string]string{bootstrap.PodIPEnv: podIP})
	}
	testenv.StartEnvoy(t, testenv.EnvoyOptions{Bootstrap: string(y), AdminPort: admin, Args: args})

	probe := func(p string) int {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d%s", readiness, p), nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	expect := func(what, p string, want int) {
		t.Helper()
		got := 0
		for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
			if got = probe(p); got == want {
				return
			}
		}
		t.Errorf("%s: GET %s answered %d, want %d", what, p, got, want)
	}
	expect("gRPC service SERVING", "/app-health/app/readyz", 200)
	expect("TCP port listening", "/app-health/app/livez", 200)
	expect("HTTPS answering 302", "/app-health/web/readyz", 200)
	expect("HTTP forwarded", "/app-health/web/livez", 200)
	expect("HTTPS without a Host", "/app-health/web/startupz", 200)
	expect("HTTP forwarded to 127.0.0.1 (recorded by an older meshd)", "/app-health/old/livez", 200)
	for path, want := range map[string]string{
		"/ready":              "web.local /ready kubelet $(POD_IP)",
		"/start/$(POD_IP)/$$": fmt.Sprintf("%s:%d /start/$(POD_IP)/$$ ", podIP, httpsPort),
		"plain":               "127.0.0.6",
	} {
		seenMu.Lock()
		got := seen[path]
		seenMu.Unlock()
		if got != want {
			t.Errorf("the check of %s came as %q (host, path, X-Probe; or the caller), want %q", path, got, want)
		}
	}

	hs.SetServingStatus("orders", healthpb.HealthCheckResponse_NOT_SERVING)
	expect("gRPC service NOT_SERVING", "/app-health/app/readyz", 503)
	hs.SetServingStatus("orders", healthpb.HealthCheckResponse_SERVING)
	expect("gRPC service SERVING again", "/app-health/app/readyz", 200)
	httpsFail.Store(true)
	expect("HTTPS answering 500", "/app-health/web/readyz", 503)
	httpFail.Store(true)
	expect("HTTP forwarded, the app answering 503", "/app-health/web/livez", 503)
	tcpLis.Close()
	expect("TCP port closed", "/app-health/app/livez", 503)
	// The probes do not answer for one another.
	expect("gRPC still SERVING", "/app-health/app/readyz", 200)
	if code := probe("/app-health/nobody/readyz"); code != 404 {
		t.Errorf("a path no probe was rewritten to answered %d, want 404", code)
	}
}

// writeCerts puts a self-signed certificate, its key and itself as the
// root into dir, for the xDS connection's SDS files (never used: no meshd
// listens, but Envoy loads them).
func writeCerts(t *testing.T, dir string) {
	t.Helper()
	certPEM, keyPEM, err := testenv.SelfSigned("app-0.demo")
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{bootstrap.FileCertChain: certPEM, bootstrap.FileRootCert: certPEM, bootstrap.FileKey: keyPEM} {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
}
