package model

import (
	"fmt"
	"slices"
	"strings"

	"github.com/meshd/meshd/internal/vec"
)

// Egress is the part of the mesh a workload's sidecar is configured for: the
// services it calls. A sidecar's outbound configuration (listener chains,
// clusters, routes, endpoint sets) then grows with what the workload talks
// to, not with the cluster, and so does what meshd keeps and sends for it.
// A call to a service outside the scope leaves the sidecar as it would
// without the mesh (original destination, plaintext): a STRICT server
// refuses it.
//
// Each entry is "<namespace>/<service>", either part "*" for any; nil is
// every service (no scope). Entries are sorted and unique.
type Egress []string

// ParseEgress reads a scope as written in the meshd.io/egress annotation:
// comma-separated "<namespace>/<service>" entries, "." for the workload's
// own namespace, "*" for any namespace or service ("./*": its own
// namespace's services). "*/*" among them means every service (nil).
func ParseEgress(s, namespace string) (Egress, error) {
	var out Egress
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		ns, name, ok := strings.Cut(f, "/")
		if !ok {
			return nil, fmt.Errorf("%q is not <namespace>/<service>", f)
		}
		if ns == "." {
			ns = namespace
		}
		for _, part := range []string{ns, name} {
			if part != "*" && !IsDNSLabel(part) {
				return nil, fmt.Errorf("%q: %q is neither \"*\" nor a Kubernetes name", f, part)
			}
		}
		if ns == "*" && name == "*" {
			return nil, nil
		}
		out = append(out, ns+"/"+name)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%q names no service (\"*/*\" is every service)", s)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// Allows reports whether the scope includes svc.
func (e Egress) Allows(svc *Service) bool {
	if e == nil {
		return true
	}
	for _, entry := range e {
		ns, name, _ := strings.Cut(entry, "/")
		if (ns == "*" || ns == svc.Namespace) && (name == "*" || name == svc.Name) {
			return true
		}
	}
	return false
}

// Key identifies the scope: workloads with the same key share one
// configuration. "" for no scope.
func (e Egress) Key() string { return strings.Join(e, ",") }

// Scoped returns the snapshot as a sidecar with scope e sees it: only the
// services e allows (s itself when e is nil). Workloads are all kept.
func (s *Snapshot) Scoped(e Egress) *Snapshot {
	if e == nil {
		return s
	}
	// Exact entries by lookup, wildcards by Allows: a scope of 20 services
	// in a mesh of 1,000 costs 1,000 lookups, not 20,000 comparisons.
	type key struct{ ns, name string }
	exact, namespaces := map[key]bool{}, map[string]bool{}
	var wild Egress // "*/<name>"
	for _, entry := range e {
		ns, name, _ := strings.Cut(entry, "/")
		switch {
		case ns == "*":
			wild = append(wild, entry)
		case name == "*":
			namespaces[ns] = true
		default:
			exact[key{ns, name}] = true
		}
	}
	c := *s
	var in []*Service
	for svc := range s.Services.Values() {
		if exact[key{svc.Namespace, svc.Name}] || namespaces[svc.Namespace] || wild != nil && wild.Allows(svc) {
			in = append(in, svc)
		}
	}
	c.Services = vec.Of(in)
	return &c
}

// IsDNSLabel reports whether s is a DNS-1123 label, as Kubernetes names
// namespaces (k8s checks it agrees with the apiserver's validation).
func IsDNSLabel(s string) bool {
	if s == "" || len(s) > 63 {
		return false
	}
	for i, r := range s {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9':
		case r == '-' && i > 0 && i < len(s)-1:
		default:
			return false
		}
	}
	return true
}
