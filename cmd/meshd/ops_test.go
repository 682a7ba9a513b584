package main

import (
	"bytes"
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// TestCheckFails: `meshd check` fails, and says why, when a proxy rejects
// its config, the CA is near expiry, or meshd is not ready; it warns about
// a webhook that authenticates no caller.
func TestCheckFails(t *testing.T) {
	expiry := time.Now().Add(72 * time.Hour).UTC().Format(time.RFC3339)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/readyz":
			http.Error(w, "not ready: informers not synced", http.StatusServiceUnavailable)
		case "/debug/certs":
			io.WriteString(w, `{"ca":{"backend":"internal","signing":{"serial":"ab","not_after":"`+expiry+`"},"trusted_roots":[{}],"rotation_phase":"steady"}}`)
		case "/debug/webhook":
			io.WriteString(w, `{"enabled":true,"address":"198.18.0.1:15017","configuration":"meshd-sidecar-injector","ca_bundle_current":true,"reachable":true}`)
		case "/debug/proxies":
			io.WriteString(w, `{"proxies":[{"node_id":"web-0.demo","types":{"type.googleapis.com/envoy.config.listener.v3.Listener":`+
				`{"sent_version":"v2","sent_nonce":"7","acked_version":"v1","last_nack":{"nonce":"7","error":"bad filter"}}}}]}`)
		}
	}))
	defer srv.Close()
	var out bytes.Buffer
	err := run(context.Background(), []string{"check", "--debug-addr", strings.TrimPrefix(srv.URL, "http://")}, &out, io.Discard)
	if err == nil {
		t.Fatalf("check passed:\n%s", out.String())
	}
	got := strings.Join(strings.Fields(out.String()), " ") // column widths vary
	for _, want := range []string{"FAIL ready", "WARN ca", "expires in 72h", "FAIL proxies", "web-0.demo rejects Listener: bad filter",
		"WARN webhook 198.18.0.1:15017 answers TLS", "it authenticates no caller"} {
		if !strings.Contains(got, want) {
			t.Errorf("check output lacks %q:\n%s", want, out.String())
		}
	}
	if err := run(context.Background(), []string{"check", "-o", "xml"}, io.Discard, io.Discard); err == nil {
		t.Error("-o xml accepted")
	}
}
