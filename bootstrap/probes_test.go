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
	"github.com/meshd/meshd/internal/testenv"
)

// TestAppProbesCheckedBySidecar: a real Envoy with the readiness port and
// the four kinds of app probe, against a gRPC health server, a TCP
// listener, an HTTPS server and an HTTP server on 127.0.0.1. The kubelet's
// GET of each rewritten path answers 200 while the app is well and 503
// once it is not (NOT_SERVING, the listener closed, a 500), and 200 again
// when it recovers; the HTTPS check sends the probe's Host and headers.
func TestAppProbesCheckedBySidecar(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	lis := func() net.Listener {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	port := func(l net.Listener) uint32 { return uint32(l.Addr().(*net.TCPAddr).Port) }

	grpcLis := lis()
	srv := grpc.NewServer()
	hs := health.NewServer()
	healthpb.RegisterHealthServer(srv, hs)
	hs.SetServingStatus("orders", healthpb.HealthCheckResponse_SERVING)
	go func() { _ = srv.Serve(grpcLis) }()
	defer srv.Stop()

	tcpLis := lis()
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
	httpsSeen := map[string]string{} // path -> "host path X-Probe"
	https := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seenMu.Lock()
		httpsSeen[r.URL.Path] = fmt.Sprintf("%s %s %s", r.Host, r.URL.Path, r.Header.Get("X-Probe"))
		seenMu.Unlock()
		if httpsFail.Load() {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusFound) // 200-399 pass, as for the kubelet
	}))
	defer https.Close()
	httpsPort := uint32(https.Listener.Addr().(*net.TCPAddr).Port)
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if httpFail.Load() || r.URL.Path != "/healthz" {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	defer plain.Close()
	plainPort := uint32(plain.Listener.Addr().(*net.TCPAddr).Port)

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
			"/app-health/app/readyz": {Kind: bootstrap.ProbeGRPC, Port: port(grpcLis), Service: "orders", Period: 1},
			"/app-health/app/livez":  {Kind: bootstrap.ProbeTCP, Port: port(tcpLis), Period: 1},
			"/app-health/web/readyz": {Kind: bootstrap.ProbeHTTPS, Port: httpsPort, Path: "/ready", Period: 1,
				Headers: map[string]string{"Host": "web.local", "X-Probe": "kubelet"}},
			"/app-health/web/livez": {Port: plainPort, Path: "/healthz"},
			// No Host: the app is asked as 127.0.0.1:<port>.
			"/app-health/web/startupz": {Kind: bootstrap.ProbeHTTPS, Port: httpsPort, Path: "/start", Period: 1},
		}}
	path := writeWithCreds(t, cfg)
	writeCerts(t, filepath.Dir(path))
	y, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	testenv.StartEnvoy(t, testenv.EnvoyOptions{Bootstrap: string(y), AdminPort: admin})

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
	for path, want := range map[string]string{"/ready": "web.local /ready kubelet", "/start": fmt.Sprintf("127.0.0.1:%d /start ", httpsPort)} {
		seenMu.Lock()
		got := httpsSeen[path]
		seenMu.Unlock()
		if got != want {
			t.Errorf("the HTTPS check of %s came as %q (host, path, X-Probe), want %q", path, got, want)
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
