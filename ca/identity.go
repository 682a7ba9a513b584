// Package ca is meshd's certificate authority core: it turns a workload
// identity into a short-lived X.509 certificate whose only URI SAN is the
// workload's SPIFFE ID. It owns identities, keys, the signing Authority and
// its trust bundle, the internal CA (template and sign, internal.go), the
// one Validator every backend's certificates pass (validate.go), renewal
// (renewer.go) and the CA metrics.
//
// Where it sits in the pipeline: the sds package asks an Issuer for
// certificates and serves them to proxies; cmd/meshd chooses the backend
// (the internal CA here, or ca/certmanager). Where the root comes from and
// how it rotates is ca/rootca's; how it is stored, ca/store's. ca must not
// import client-go, its own sub-packages, sds, xds or k8s.
package ca

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// Identity names a workload: the SPIFFE ID
// spiffe://<TrustDomain>/ns/<Namespace>/sa/<ServiceAccount>.
type Identity struct {
	TrustDomain    string
	Namespace      string
	ServiceAccount string
}

// SPIFFEID returns the identity as a URL.
func (id Identity) SPIFFEID() *url.URL {
	return &url.URL{Scheme: "spiffe", Host: id.TrustDomain, Path: "/ns/" + id.Namespace + "/sa/" + id.ServiceAccount}
}

// String returns the SPIFFE ID as a string.
func (id Identity) String() string { return id.SPIFFEID().String() }

// Validate reports whether every part of the identity is present and a valid
// path segment (no '/', no dot segments, no percent-encoding).
func (id Identity) Validate() error {
	if id.TrustDomain == "" {
		return errors.New("ca: identity: empty trust domain")
	}
	if strings.ContainsAny(id.TrustDomain, "/:@?#% ") || strings.ToLower(id.TrustDomain) != id.TrustDomain {
		return fmt.Errorf("ca: identity: invalid trust domain %q", id.TrustDomain)
	}
	for name, seg := range map[string]string{"namespace": id.Namespace, "service account": id.ServiceAccount} {
		if seg == "" || seg == "." || seg == ".." || strings.ContainsAny(seg, "/?#%@: ") {
			return fmt.Errorf("ca: identity: invalid %s %q", name, seg)
		}
	}
	return nil
}

// ParseSPIFFEID parses spiffe://<td>/ns/<ns>/sa/<sa>. Any other shape is an error.
func ParseSPIFFEID(s string) (Identity, error) {
	u, err := url.Parse(s)
	if err != nil {
		return Identity{}, fmt.Errorf("ca: spiffe id %q: %w", s, err)
	}
	if u.Scheme != "spiffe" || u.User != nil || u.RawQuery != "" || u.Fragment != "" || u.Port() != "" || u.Opaque != "" {
		return Identity{}, fmt.Errorf("ca: spiffe id %q: not of the form spiffe://<trust-domain>/ns/<ns>/sa/<sa>", s)
	}
	parts := strings.Split(u.Path, "/")
	if len(parts) != 5 || parts[0] != "" || parts[1] != "ns" || parts[3] != "sa" {
		return Identity{}, fmt.Errorf("ca: spiffe id %q: path is not /ns/<ns>/sa/<sa>", s)
	}
	id := Identity{TrustDomain: u.Host, Namespace: parts[2], ServiceAccount: parts[4]}
	if err := id.Validate(); err != nil {
		return Identity{}, err
	}
	if id.String() != s {
		return Identity{}, fmt.Errorf("ca: spiffe id %q: not in canonical form", s)
	}
	return id, nil
}
