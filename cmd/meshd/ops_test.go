package main

import (
	"bytes"
	"context"
	"encoding/json"
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

// TestExplainPrintsBalancing: a port whose endpoints are picked otherwise
// than round robin says how on its line.
func TestExplainPrintsBalancing(t *testing.T) {
	var v explainView
	if err := json.Unmarshal([]byte(`{"verdict":"mtls","ports":[
		{"port":80,"protocol":"http","filter_chain":"outbound|80|web.demo","cluster":"outbound|80|web.demo","balancing":"client-ip-affinity,node-local"},
		{"port":90,"protocol":"tcp","filter_chain":"outbound|90|web.demo","cluster":"outbound|90|web.demo"}]}`), &v); err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	v.print(&out, "client-0.demo", "web.demo")
	for _, want := range []string{"cluster outbound|80|web.demo (client-ip-affinity,node-local)\n", "cluster outbound|90|web.demo\n"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("explain printed:\n%s\nwant a line ending %q", out.String(), want)
		}
	}
}
