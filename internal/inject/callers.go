package inject

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"slices"
)

// CallerCheck admits only the apiserver to the webhook: a client
// certificate signed by the CA it was configured with (the apiserver
// presents one to admission webhooks when its AdmissionConfiguration names
// a kubeconfig with it), optionally with a given name. A nil *CallerCheck
// admits everyone.
type CallerCheck struct {
	pool *x509.CertPool
	name string
}

// NewCallerCheck reads the CA file; with no file it returns nil (no check).
func NewCallerCheck(caFile, name string) (*CallerCheck, error) {
	if caFile == "" {
		if name != "" {
			return nil, errors.New("inject: a webhook client name needs the CA of the webhook client certificate too")
		}
		return nil, nil
	}
	b, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("inject: webhook client CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("inject: webhook client CA %s holds no PEM certificate", caFile)
	}
	return &CallerCheck{pool: pool, name: name}, nil
}

// Configure makes the TLS server ask for and verify client certificates.
// A handshake without one still succeeds (meshd's own webhook check and
// load balancers' TLS probes make such handshakes); Guard refuses their
// requests.
func (c *CallerCheck) Configure(cfg *tls.Config) {
	if c == nil {
		return
	}
	cfg.ClientCAs, cfg.ClientAuth = c.pool, tls.VerifyClientCertIfGiven
}

// Guard answers 401 to a request without a verified client certificate of
// the configured name.
func (c *CallerCheck) Guard(next http.Handler) http.Handler {
	if c == nil {
		return next
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil || len(r.TLS.VerifiedChains) == 0 {
			http.Error(w, "meshd: the injection webhook answers only the apiserver: a client certificate of its webhook CA is required", http.StatusUnauthorized)
			return
		}
		leaf := r.TLS.VerifiedChains[0][0]
		if c.name != "" && leaf.Subject.CommonName != c.name && !slices.Contains(leaf.DNSNames, c.name) {
			http.Error(w, fmt.Sprintf("meshd: webhook caller %q is not %q", leaf.Subject.CommonName, c.name), http.StatusForbidden)
			return
		}
		next.ServeHTTP(w, r)
	})
}
