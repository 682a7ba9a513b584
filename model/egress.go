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
	c := *s
	c.Services = e.Compile().Filter(s.Services)
	return &c
}

// A Scope is an egress scope ready for lookups: a scope of 20 services in
// a mesh of 1,000 costs 1,000 lookups to filter, not 20,000 comparisons.
type Scope struct {
	exact      map[scopeKey]bool
	namespaces map[string]bool // "<namespace>/*"
	wild       Egress          // "*/<name>", "*/*"
}

type scopeKey struct{ ns, name string }

// Compile returns e ready for lookups (nil for nil: every service).
func (e Egress) Compile() *Scope {
	if e == nil {
		return nil
	}
	s := &Scope{exact: map[scopeKey]bool{}, namespaces: map[string]bool{}}
	for _, entry := range e {
		ns, name, _ := strings.Cut(entry, "/")
		switch {
		case ns == "*":
			s.wild = append(s.wild, entry)
		case name == "*":
			s.namespaces[ns] = true
		default:
			s.exact[scopeKey{ns, name}] = true
		}
	}
	return s
}

// Allows reports whether the scope has svc (a nil Scope has every service).
func (s *Scope) Allows(svc *Service) bool {
	return s == nil || s.exact[scopeKey{svc.Namespace, svc.Name}] || s.namespaces[svc.Namespace] || s.wild != nil && s.wild.Allows(svc)
}

// Filter returns the services of the scope, in order.
func (s *Scope) Filter(services vec.Vec[*Service]) vec.Vec[*Service] {
	if s == nil {
		return services
	}
	var in []*Service
	for svc := range services.Values() {
		if s.Allows(svc) {
			in = append(in, svc)
		}
	}
	return vec.Of(in)
}

// Follow returns Filter of a service list, given out, the Filter of a list
// before it, and moves, what changed from that list to this one place by
// place (ServicesMoved): out itself when no service of the scope moved,
// out patched when services of the scope changed in their places (their
// endpoints, say). ok is false when the scope gains or loses a service:
// filter the list again.
func (s *Scope) Follow(out vec.Vec[*Service], moves []ServiceMove) (_ vec.Vec[*Service], ok bool) {
	var p *vec.Patch[*Service]
	for _, m := range moves {
		was, is := s.Allows(m.From), s.Allows(m.To)
		if !was && !is {
			continue
		}
		if !was || !is || m.From.Name != m.To.Name || m.From.Namespace != m.To.Namespace {
			return out, false
		}
		i, found := binarySearch(out.Len(), out.At, m.To.Key(), func(svc *Service) (string, string) { return svc.Name, svc.Namespace })
		if !found {
			return out, false
		}
		if p == nil {
			p = out.Patch()
		}
		p.Set(i, m.To)
	}
	if p == nil {
		return out, true
	}
	return p.Vec(), true
}

// ServiceMove is a service list's element that changed in its place.
type ServiceMove struct{ From, To *Service }

// ServicesMoved returns what changed from one service list to the next,
// place by place, comparing only the chunks they do not share; ok is
// false when the lists differ in length (services came or went), or in
// more than max places.
func ServicesMoved(from, to vec.Vec[*Service], max int) (moves []ServiceMove, ok bool) {
	if from.Len() != to.Len() {
		return nil, false
	}
	for c := range to.Chunks() {
		if to.SameChunk(from, c) {
			continue
		}
		a, b := from.Chunk(c), to.Chunk(c)
		for i := range b {
			if a[i] != b[i] {
				if len(moves) == max {
					return nil, false
				}
				moves = append(moves, ServiceMove{a[i], b[i]})
			}
		}
	}
	return moves, true
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
