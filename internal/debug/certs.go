package debug

import (
	"crypto/x509"
	"net/http"
	"sort"
	"time"
)

// CertView describes one issued certificate, without its key.
type CertView struct {
	Proxy     string    `json:"proxy"`
	Identity  string    `json:"identity"`
	Serial    string    `json:"serial"`
	Issuer    string    `json:"issuer"`
	NotBefore time.Time `json:"not_before"`
	NotAfter  time.Time `json:"not_after"`
	Backend   string    `json:"backend"`
}

// RootView describes a CA certificate.
type RootView struct {
	Subject  string    `json:"subject"`
	Serial   string    `json:"serial"`
	NotAfter time.Time `json:"not_after"`
}

// CAView is the CA's state: what signs, what is trusted, where a root
// rotation stands.
type CAView struct {
	Backend string `json:"backend"`
	// WorkloadIssuer is where workload certificates come from when that is
	// not this CA (cert-manager); this CA still signs meshd's own and the
	// xDS client certificates.
	WorkloadIssuer string     `json:"workload_issuer,omitempty"`
	Signing        RootView   `json:"signing"`
	Roots          []RootView `json:"trusted_roots"`
	RotationPhase  string     `json:"rotation_phase"`
	PhaseSince     string     `json:"rotation_phase_since,omitempty"`
	// SidecarCredentials is where injected sidecars' xDS credentials come
	// from ("pod-certificate" or "secret"), and why.
	SidecarCredentials       string `json:"sidecar_credentials,omitempty"`
	SidecarCredentialsReason string `json:"sidecar_credentials_reason,omitempty"`
}

// NewRootView summarizes a CA certificate.
func NewRootView(c *x509.Certificate) RootView {
	return RootView{Subject: c.Subject.String(), Serial: c.SerialNumber.Text(16), NotAfter: c.NotAfter.UTC()}
}

// NewCertView summarizes a proxy's certificate.
func NewCertView(proxy, backend string, leaf *x509.Certificate) CertView {
	v := CertView{Proxy: proxy, Serial: leaf.SerialNumber.Text(16), Issuer: leaf.Issuer.String(),
		NotBefore: leaf.NotBefore.UTC(), NotAfter: leaf.NotAfter.UTC(), Backend: backend}
	if len(leaf.URIs) == 1 {
		v.Identity = leaf.URIs[0].String()
	}
	return v
}

func (s *server) certs(w http.ResponseWriter, r *http.Request) {
	if err := onlyParams(r, "proxy"); err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return
	}
	proxy := r.URL.Query().Get("proxy")
	if proxy != "" {
		if err := validNode(proxy); err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
	}
	out := map[string]any{}
	if s.cfg.CA != nil {
		out["ca"] = s.cfg.CA()
	}
	certs := []CertView{}
	if s.cfg.Certs != nil {
		for _, c := range s.cfg.Certs() {
			if proxy == "" || c.Proxy == proxy {
				certs = append(certs, c)
			}
		}
	}
	sort.Slice(certs, func(i, j int) bool { return certs[i].Proxy < certs[j].Proxy })
	out["certificates"] = certs
	if len(certs) > 0 {
		earliest := certs[0].NotAfter
		for _, c := range certs {
			if c.NotAfter.Before(earliest) {
				earliest = c.NotAfter
			}
		}
		out["earliest_expiry"] = earliest
	}
	writeJSON(w, out)
}
