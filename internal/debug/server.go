// Package debug serves meshd's operator HTTP API: health and readiness
// probes, Prometheus metrics, and JSON views of connected proxies and the
// configuration sent to each (private keys redacted).
//
// Where it sits: a leaf wired by cmd/meshd; it reads state through the
// function fields of Config and never changes anything.
package debug

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"net/url"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"google.golang.org/protobuf/encoding/protojson"
	"k8s.io/utils/clock"

	"github.com/meshd/meshd/xds"
)

// Config wires the debug server to the state it shows.
type Config struct {
	// Proxies lists connected proxies.
	Proxies func() []xds.ProxyStatus
	// Resources returns what meshd last published for a node, by type URL,
	// with secrets already redacted; ok is false for an unknown node.
	Resources func(nodeID string) (res map[string][]types.Resource, ok bool)
	// Certs lists the proxies' current certificates; CA describes the CA
	// (both optional).
	Certs func() []CertView
	CA    func() CAView
	// Explain answers /debug/explain (optional).
	Explain func(from, to string) (any, error)
	// Webhook reports the injection webhook for /debug/webhook (optional:
	// without it the webhook is reported disabled).
	Webhook func(ctx context.Context) WebhookView
	// Ready reports nil once meshd can serve (informers synced, CA loaded).
	Ready func() error
	// Gatherer serves /metrics (default: a fresh empty registry).
	Gatherer prometheus.Gatherer
	// Token, when set, is required as "Authorization: Bearer <token>" on
	// /debug/ paths. Required when the server listens beyond loopback
	// unless Authorize is set.
	Token string
	// Authorize, when set, decides instead of Token: the bearer token's
	// user must be allowed the path (Kubernetes TokenReview and
	// SubjectAccessReview, see internal/kubeauth); /metrics is then
	// guarded too.
	// It answers an HTTP status: 200 allowed, 401 or 403 with the reason.
	Authorize func(ctx context.Context, token, path string) (code int, reason string, err error)
	// StaleAfter marks a type stale when sent but not ACKed for this long (default 30s).
	StaleAfter time.Duration
	Logger     *slog.Logger
	// Clock decides staleness (default: the real clock).
	Clock clock.PassiveClock
}

// Handler returns the HTTP handler.
func Handler(cfg Config) http.Handler {
	if cfg.Gatherer == nil {
		cfg.Gatherer = prometheus.NewRegistry()
	}
	if cfg.StaleAfter == 0 {
		cfg.StaleAfter = 30 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	s := &server{cfg: cfg}
	mux := s.healthMux()
	mux.Handle("GET /debug/proxies", s.auth(http.HandlerFunc(s.proxies)))
	mux.Handle("GET /debug/config_dump", s.auth(http.HandlerFunc(s.configDump)))
	mux.Handle("GET /debug/certs", s.auth(http.HandlerFunc(s.certs)))
	mux.Handle("GET /debug/explain", s.auth(http.HandlerFunc(s.explain)))
	mux.Handle("GET /debug/webhook", s.auth(http.HandlerFunc(s.webhook)))
	// Go profiles (CPU, heap, goroutines), behind the same token.
	mux.Handle("GET /debug/pprof/", s.auth(http.HandlerFunc(pprof.Index)))
	mux.Handle("GET /debug/pprof/profile", s.auth(http.HandlerFunc(pprof.Profile)))
	return mux
}

// HealthHandler serves only /healthz, /readyz and /metrics: what the
// kubelet and Prometheus reach on the pod's address, without the debug
// views.
func HealthHandler(cfg Config) http.Handler {
	if cfg.Gatherer == nil {
		cfg.Gatherer = prometheus.NewRegistry()
	}
	return (&server{cfg: cfg}).healthMux()
}

// healthMux is a mux serving /healthz, /readyz and /metrics (the latter
// behind Authorize when it is set).
func (s *server) healthMux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("GET /readyz", s.readyz)
	metrics := promhttp.HandlerFor(s.cfg.Gatherer, promhttp.HandlerOpts{})
	if s.cfg.Authorize != nil {
		metrics = s.auth(metrics)
	}
	mux.Handle("GET /metrics", metrics)
	return mux
}

// CheckExposure refuses a debug address beyond loopback without a token.
func CheckExposure(addr, token string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("debug: address %q: %w", addr, err)
	}
	ip := net.ParseIP(host)
	loopback := host == "localhost" || (ip != nil && ip.IsLoopback())
	if !loopback && token == "" {
		return fmt.Errorf("debug: %s is not loopback; set a bearer token to expose the debug API", addr)
	}
	return nil
}

type server struct{ cfg Config }

// auth guards /debug/: the bearer token when one is set; without one (the
// loopback default) the Host header must name a loopback address or
// localhost, so a web page whose name an attacker re-points at 127.0.0.1
// (DNS rebinding) cannot read the API through a browser.
func (s *server) auth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.cfg.Authorize != nil {
			token, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			if !ok || token == "" {
				writeError(w, http.StatusUnauthorized, "a Kubernetes bearer token is required")
				return
			}
			code, reason, err := s.cfg.Authorize(r.Context(), token, r.URL.Path)
			switch {
			case err != nil:
				s.cfg.Logger.Warn("debug: cannot authorize", "path", r.URL.Path, "error", err)
				writeError(w, http.StatusServiceUnavailable, "cannot ask the Kubernetes API whether this request is allowed")
				return
			case code != http.StatusOK:
				writeError(w, code, reason)
				return
			}
			next.ServeHTTP(w, r)
			return
		}
		if s.cfg.Token != "" {
			got, ok := strings.CutPrefix(r.Header.Get("Authorization"), "Bearer ")
			if !ok || subtle.ConstantTimeCompare([]byte(got), []byte(s.cfg.Token)) != 1 {
				writeError(w, http.StatusUnauthorized, "a valid bearer token is required")
				return
			}
		} else if !loopbackHost(r.Host) {
			writeError(w, http.StatusForbidden, "without a token the debug API answers only requests for a loopback host (Host "+strconv.Quote(r.Host)+")")
			return
		}
		next.ServeHTTP(w, r)
	})
}

// loopbackHost reports whether a Host header names localhost or a
// loopback IP, with or without a port.
func loopbackHost(host string) bool {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	host = strings.TrimSuffix(strings.TrimPrefix(host, "["), "]")
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (s *server) readyz(w http.ResponseWriter, _ *http.Request) {
	if s.cfg.Ready != nil {
		if err := s.cfg.Ready(); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
	}
	_, _ = w.Write([]byte("ok\n"))
}

// Proxies is the body of /debug/proxies (operator commands and tests
// decode it).
type Proxies struct {
	Proxies []ProxyView `json:"proxies"`
}

// ProxyView is one row of /debug/proxies.
type ProxyView struct {
	xds.ProxyStatus
	Stale []string `json:"stale_types,omitempty"`
}

func (s *server) proxies(w http.ResponseWriter, r *http.Request) {
	if err := onlyParams(r, "node"); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	node := r.URL.Query().Get("node")
	if node != "" {
		if err := validNode(node); err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
	}
	var out []ProxyView
	if s.cfg.Proxies != nil {
		for _, p := range s.cfg.Proxies() {
			if node == "" || p.NodeID == node {
				out = append(out, ProxyView{ProxyStatus: p, Stale: s.stale(p)})
			}
		}
	}
	writeJSON(w, Proxies{Proxies: out})
}

func (s *server) stale(p xds.ProxyStatus) []string {
	var out []string
	for url, ts := range p.Types {
		if ts.SentNonce != "" && ts.SentNonce != ts.AckedNonce && (ts.LastNACK == nil || ts.LastNACK.Nonce != ts.SentNonce) &&
			s.cfg.Clock.Since(ts.SentAt) > s.cfg.StaleAfter {
			out = append(out, url)
		}
	}
	sort.Strings(out)
	return out
}

func (s *server) configDump(w http.ResponseWriter, r *http.Request) {
	if err := onlyParams(r, "proxy"); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	node := r.URL.Query().Get("proxy")
	if err := validNode(node); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	res, ok := s.cfg.Resources(node)
	if !ok {
		writeError(w, http.StatusNotFound, fmt.Sprintf("no configuration for proxy %q", node))
		return
	}
	out := map[string][]json.RawMessage{}
	for url, items := range res {
		for _, item := range items {
			b, err := protojson.Marshal(item)
			if err != nil {
				writeError(w, http.StatusInternalServerError, "encode: "+err.Error())
				return
			}
			out[url] = append(out[url], b)
		}
	}
	writeJSON(w, map[string]any{"proxy": node, "resources": out})
}

func (s *server) explain(w http.ResponseWriter, r *http.Request) {
	if err := onlyParams(r, "from", "to"); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	from, to := r.URL.Query().Get("from"), r.URL.Query().Get("to")
	for name, v := range map[string]string{"from": from, "to": to} {
		if err := validNode(v); err != nil {
			writeError(w, http.StatusBadRequest, fmt.Sprintf("%s: want <pod>.<namespace> (or <service>.<namespace> for to): %v", name, err))
			return
		}
	}
	if s.cfg.Explain == nil {
		writeError(w, http.StatusNotImplemented, "explain is not available")
		return
	}
	out, err := s.cfg.Explain(from, to)
	if err != nil {
		writeError(w, http.StatusNotFound, err.Error())
		return
	}
	writeJSON(w, out)
}

var nodePattern = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?\.[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)

// validNode checks a node ID is "<pod>.<namespace>" in Kubernetes name syntax.
func validNode(node string) error {
	if node == "" {
		return errors.New("query parameter proxy (a node ID, <pod>.<namespace>) is required")
	}
	if len(node) > 317 || !nodePattern.MatchString(node) {
		return fmt.Errorf("%q is not a node ID of the form <pod>.<namespace>", node)
	}
	return nil
}

// onlyParams rejects unknown or repeated query parameters.
func onlyParams(r *http.Request, allowed ...string) error {
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return fmt.Errorf("malformed query: %v", err)
	}
	for k, v := range q {
		known := false
		for _, a := range allowed {
			known = known || k == a
		}
		if !known {
			return fmt.Errorf("unknown query parameter %q (allowed: %s)", k, strings.Join(allowed, ", "))
		}
		if len(v) > 1 {
			return fmt.Errorf("query parameter %q given %d times", k, len(v))
		}
	}
	return nil
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(map[string]string{"error": msg})
}

// Serve runs the handler on lis until ctx ends.
func Serve(ctx context.Context, lis net.Listener, h http.Handler) error {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, MaxHeaderBytes: 64 << 10}
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("debug: serve: %w", err)
	}
	return nil
}

// WebhookView is /debug/webhook: whether meshd serves the injection
// webhook, whether its configuration trusts meshd's CA, and whether it
// answers a TLS handshake verified with that CA.
type WebhookView struct {
	Enabled       bool   `json:"enabled"`
	Address       string `json:"address,omitempty"`
	Configuration string `json:"configuration,omitempty"`
	// CABundleCurrent: the MutatingWebhookConfiguration's caBundle is the
	// mesh's current trust bundle (the apiserver can verify the webhook).
	CABundleCurrent bool `json:"ca_bundle_current"`
	// Reachable: a TLS handshake to the webhook, verified with the bundle.
	Reachable bool `json:"reachable"`
	// Callers is the client certificate name the webhook requires of its
	// callers (the apiserver's), "" when it authenticates nobody.
	Callers string `json:"callers,omitempty"`
	Problem string `json:"problem,omitempty"`
}

func (s *server) webhook(w http.ResponseWriter, r *http.Request) {
	if s.cfg.Webhook == nil {
		writeJSON(w, WebhookView{})
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
	defer cancel()
	writeJSON(w, s.cfg.Webhook(ctx))
}
