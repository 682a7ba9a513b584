package debug_test

import (
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/meshd/meshd/internal/debug"
	"github.com/meshd/meshd/xds"
)

const fakeKey = "-----BEGIN PRIVATE KEY-----\nTOPSECRETKEYMATERIAL\n-----END PRIVATE KEY-----\n"

func testServer(t *testing.T, token string) *httptest.Server {
	t.Helper()
	now := time.Date(2026, 11, 22, 12, 0, 0, 0, time.UTC)
	h := debug.Handler(debug.Config{
		Token: token,
		Clock: clocktesting.NewFakePassiveClock(now),
		Proxies: func() []xds.ProxyStatus {
			return []xds.ProxyStatus{{NodeID: "web-0.demo", Identity: "spiffe://cluster.local/ns/demo/sa/web", Types: map[string]*xds.TypeStatus{
				resourcev3.ListenerType: {SentNonce: "2", SentAt: now.Add(-time.Minute), AckedNonce: "1"},
				resourcev3.SecretType:   {SentNonce: "3", SentAt: now.Add(-time.Minute), AckedNonce: "3"},
			}}}
		},
		Resources: debug.Redacted(func(node string) (map[string][]types.Resource, bool) {
			if node != "web-0.demo" {
				return nil, false
			}
			return map[string][]types.Resource{resourcev3.SecretType: {&tlsv3.Secret{Name: "default",
				Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
					CertificateChain: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: "CHAIN"}},
					PrivateKey:       &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: []byte(fakeKey)}}}}}}}, true
		}),
	})
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return srv
}

func get(t *testing.T, url, token string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestEndpoints(t *testing.T) {
	srv := testServer(t, "")
	tests := map[string]struct {
		path     string
		wantCode int
		want     string
	}{
		"healthz":            {"/healthz", 200, "ok"},
		"readyz":             {"/readyz", 200, "ok"},
		"metrics":            {"/metrics", 200, ""},
		"proxies":            {"/debug/proxies", 200, `"node_id": "web-0.demo"`},
		"stale listener":     {"/debug/proxies?node=web-0.demo", 200, `"type.googleapis.com/envoy.config.listener.v3.Listener"`},
		"config dump":        {"/debug/config_dump?proxy=web-0.demo", 200, `[redacted]`},
		"unknown proxy":      {"/debug/config_dump?proxy=db-0.demo", 404, "no configuration"},
		"missing proxy":      {"/debug/config_dump", 400, "required"},
		"malformed proxy":    {"/debug/config_dump?proxy=../../etc", 400, "not a node ID"},
		"unknown parameter":  {"/debug/proxies?nodes=x", 400, "unknown query parameter"},
		"repeated parameter": {"/debug/config_dump?proxy=a.b&proxy=c.d", 400, "given 2 times"},
		"malformed query":    {"/debug/proxies?node=%zz", 400, "malformed query"},
		"not found":          {"/debug/nothing", 404, ""},
		"profiles":           {"/debug/pprof/", 200, "goroutine"},
		"heap profile":       {"/debug/pprof/heap?debug=1", 200, "heap profile"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			code, body := get(t, srv.URL+tc.path, "")
			if code != tc.wantCode || !strings.Contains(body, tc.want) {
				t.Fatalf("GET %s = %d %q, want %d containing %q", tc.path, code, body, tc.wantCode, tc.want)
			}
			if strings.Contains(body, "TOPSECRETKEYMATERIAL") || strings.Contains(body, "PRIVATE KEY") {
				t.Fatalf("GET %s leaked key material: %s", tc.path, body)
			}
		})
	}
}

func TestTokenRequiredWhenSet(t *testing.T) {
	srv := testServer(t, "s3cret")
	if code, _ := get(t, srv.URL+"/debug/proxies", ""); code != http.StatusUnauthorized {
		t.Errorf("no token: %d, want 401", code)
	}
	if code, _ := get(t, srv.URL+"/debug/proxies", "wrong"); code != http.StatusUnauthorized {
		t.Errorf("wrong token: %d, want 401", code)
	}
	if code, _ := get(t, srv.URL+"/debug/pprof/heap", ""); code != http.StatusUnauthorized {
		t.Errorf("profile without token: %d, want 401", code)
	}
	if code, _ := get(t, srv.URL+"/debug/proxies", "s3cret"); code != http.StatusOK {
		t.Errorf("right token: %d, want 200", code)
	}
	if code, _ := get(t, srv.URL+"/healthz", ""); code != http.StatusOK {
		t.Errorf("probes need no token: %d", code)
	}
}

func TestCheckExposure(t *testing.T) {
	for addr, wantErr := range map[string]bool{"127.0.0.1:15014": false, "localhost:1": false, "[::1]:1": false, "0.0.0.0:15014": true, "198.18.0.5:1": true} {
		if err := debug.CheckExposure(addr, ""); (err != nil) != wantErr {
			t.Errorf("CheckExposure(%s) = %v, want error %v", addr, err, wantErr)
		}
		if err := debug.CheckExposure(addr, "tok"); err != nil {
			t.Errorf("CheckExposure(%s, token) = %v", addr, err)
		}
	}
}

// TestDNSRebindingRefused: without a token, /debug/ answers only requests
// for a loopback host; a page whose name was re-pointed at 127.0.0.1 sends
// its own name and is refused. With a token the token decides.
func TestDNSRebindingRefused(t *testing.T) {
	h := debug.Handler(debug.Config{Resources: func(string) (map[string][]types.Resource, bool) { return nil, false }})
	for host, want := range map[string]int{"127.0.0.1:15014": 200, "localhost:15014": 200, "[::1]:15014": 200, "evil.example:15014": 403, "198.18.0.1:15014": 403} {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodGet, "/debug/proxies", nil)
		req.Host = host
		h.ServeHTTP(rec, req)
		if rec.Code != want {
			t.Errorf("Host %s: status %d, want %d", host, rec.Code, want)
		}
	}
	withToken := debug.Handler(debug.Config{Token: "s3cret", Resources: func(string) (map[string][]types.Resource, bool) { return nil, false }})
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodGet, "/debug/proxies", nil)
	req.Host = "meshd.meshd-system.svc:15014"
	req.Header.Set("Authorization", "Bearer s3cret")
	withToken.ServeHTTP(rec, req)
	if rec.Code != 200 {
		t.Errorf("with the token, another Host: status %d", rec.Code)
	}
}

func FuzzQueries(f *testing.F) {
	h := debug.Handler(debug.Config{Resources: func(string) (map[string][]types.Resource, bool) { return nil, false }})
	for _, s := range []string{"proxy=web-0.demo", "proxy=%zz", "node=a&node=b", "proxy=" + strings.Repeat("a", 400) + ".b", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, q string) {
		for _, p := range []string{"/debug/config_dump", "/debug/proxies"} {
			rec := httptest.NewRecorder()
			req := httptest.NewRequest(http.MethodGet, "/", nil)
			req.URL.Path, req.URL.RawQuery, req.Host = p, q, "127.0.0.1:15014"
			h.ServeHTTP(rec, req)
			if rec.Code != 200 && rec.Code != 400 && rec.Code != 404 {
				t.Fatalf("%s?%s: status %d", p, q, rec.Code)
			}
		}
	})
}
