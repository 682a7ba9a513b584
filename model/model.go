// Package model is meshd's neutral mesh model: services with their ports,
// protocols and endpoints, and workloads with their identities and mesh
// settings.
//
// Where it sits in the pipeline: k8s converts informer state into a
// Snapshot; the xds translator turns a Snapshot into Envoy resources. The
// model imports neither client-go nor Envoy protos, and a Snapshot is never
// mutated once handed on: readers share it without locks.
package model

import (
	"cmp"
	"slices"
	"strings"
	"time"

	"github.com/meshd/meshd/internal/vec"
)

// Protocol is how a port's traffic is handled.
type Protocol string

// Protocols. HTTP, HTTP2 and GRPC go through an HTTP connection manager;
// TCP is proxied as bytes.
const (
	ProtocolTCP   Protocol = "TCP"
	ProtocolHTTP  Protocol = "HTTP"
	ProtocolHTTP2 Protocol = "HTTP2"
	ProtocolGRPC  Protocol = "GRPC"
)

// IsHTTP reports whether p is handled by an HTTP connection manager.
func (p Protocol) IsHTTP() bool {
	return p == ProtocolHTTP || p.IsHTTP2()
}

// IsHTTP2 reports whether p is spoken over HTTP/2 (HTTP/2 and gRPC).
func (p Protocol) IsHTTP2() bool { return p == ProtocolHTTP2 || p == ProtocolGRPC }

// Mode is what a workload's inbound side accepts.
type Mode string

// Modes. STRICT accepts only mutual TLS from the mesh; PERMISSIVE also
// accepts plaintext (for migrating workloads into the mesh).
const (
	ModeStrict     Mode = "STRICT"
	ModePermissive Mode = "PERMISSIVE"
)

// SameList reports whether a and b are the same list (one backing array,
// one length), not merely equal ones. Lists handed on are never edited
// (a Snapshot's, a k8s.State's), so the same list is the same content,
// told without comparing an element.
func SameList[T any](a, b []T) bool {
	return len(a) == len(b) && (len(a) == 0 || &a[0] == &b[0])
}

// Snapshot is the whole mesh at one moment. Services and Workloads are
// sorted by Key; nothing in a Snapshot may be mutated after it is built.
type Snapshot struct {
	// TrustDomain is the SPIFFE trust domain of every mesh identity.
	TrustDomain string
	// ConnectionMaxAge bounds how long a sidecar keeps an HTTP connection
	// to another sidecar (0: no bound), so that a renewed or revoked
	// certificate is soon the one every connection was made with.
	ConnectionMaxAge time.Duration
	// DetectionTimeout is how long an inbound sidecar waits for a client's
	// first bytes to tell mutual TLS from plaintext (0: DefaultDetectionTimeout);
	// a workload may set its own.
	DetectionTimeout time.Duration
	// Services are a vec.Vec: the next snapshot shares the chunks no
	// changed service is in (an endpoint change copies one chunk, not
	// 10,000 pointers), and the translator finds the changed services by
	// comparing chunks before services (see vec).
	Services  vec.Vec[*Service]
	Workloads []*Workload
	// ChangedAt is when the Kubernetes change this snapshot reflects was
	// first noticed; proxy convergence is measured from it.
	ChangedAt time.Time
}

// Service is a Kubernetes Service in the mesh.
type Service struct {
	Namespace, Name string
	// ClusterIP is the virtual IP, "" for headless services.
	ClusterIP string
	// Ports are sorted by Port.
	Ports []Port
	// Endpoints are sorted by address, then port name.
	Endpoints []Endpoint
	// ClientIPAffinity is the Service's sessionAffinity ClientIP: a
	// client keeps reaching the same endpoint, chosen by its address.
	ClientIPAffinity bool
	// NodeLocal is the Service's internalTrafficPolicy Local (services
	// with a ClusterIP only): a client reaches only the endpoints on its
	// own node, and none when its node has none.
	NodeLocal bool
	// ZoneHints: every ready endpoint carries zone hints (Endpoint.
	// ForZones; EndpointSlices get them for trafficDistribution
	// PreferClose/PreferSameZone and topology-aware routing), so a client
	// in a zone reaches the endpoints hinted for it, as kube-proxy sends
	// it; NodeHints the same with node hints (Endpoint.ForNodes,
	// trafficDistribution PreferSameNode). See Service.ForClient. Services
	// with a ClusterIP only.
	ZoneHints, NodeHints bool
}

// PerClient reports whether the endpoints a client reaches depend on
// where the client is (NodeLocal, ZoneHints, NodeHints): such a service's
// clusters and endpoint sets are each proxy's own, not shared.
func (s *Service) PerClient() bool { return s.NodeLocal || s.ZoneHints || s.NodeHints }

// ForClient returns the endpoints of port a client on node in zone
// reaches, as kube-proxy picks them ("" node or zone: not known), and by
// which rule (by, "" for every endpoint):
//   - NodeLocal: the ones on the client's node (none if it has none;
//     by "node-local"); all of them when the node is not known;
//   - NodeHints: the ones hinted for the client's node when there is any
//     such ready endpoint (by "node:<node>"); else
//   - ZoneHints: the ones hinted for the client's zone when there is any
//     such ready endpoint (by "zone:<zone>");
//   - else all of them.
func (s *Service) ForClient(p Port, node, zone string) (eps []Endpoint, by string) {
	if s.NodeLocal && node != "" {
		for _, e := range s.Endpoints {
			if e.PortName == p.Name && e.Node == node {
				eps = append(eps, e)
			}
		}
		return eps, "node-local"
	}
	if !s.NodeLocal && s.NodeHints && node != "" {
		if eps := hinted(s.Endpoints, p, func(e Endpoint) []string { return e.ForNodes }, node); eps != nil {
			return eps, "node:" + node
		}
	}
	if !s.NodeLocal && s.ZoneHints && zone != "" {
		if eps := hinted(s.Endpoints, p, func(e Endpoint) []string { return e.ForZones }, zone); eps != nil {
			return eps, "zone:" + zone
		}
	}
	for _, e := range s.Endpoints {
		if e.PortName == p.Name {
			eps = append(eps, e)
		}
	}
	return eps, ""
}

// hinted returns port p's endpoints whose hints (of the kind hints reads)
// name, or nil when none of them is ready.
func hinted(eps []Endpoint, p Port, hints func(Endpoint) []string, name string) []Endpoint {
	var out []Endpoint
	ready := false
	for _, e := range eps {
		if e.PortName == p.Name && slices.Contains(hints(e), name) {
			out = append(out, e)
			ready = ready || e.Ready
		}
	}
	if !ready {
		return nil
	}
	return out
}

// Key returns "name.namespace".
func (s *Service) Key() string { return s.Name + "." + s.Namespace }

// Port is one service port.
type Port struct {
	Name     string
	Port     uint32
	Protocol Protocol
	// ServerFirst: the server speaks first (SMTP, MySQL, banners), so a
	// plaintext client sends nothing to detect TLS by; declared with a
	// Service port's appProtocol or the pod annotation
	// meshd.io/server-first-ports.
	ServerFirst bool
}

// Endpoint is one address behind one service port, as EndpointSlices report
// it (named target ports already resolved).
type Endpoint struct {
	// PortName names the service port this endpoint serves.
	PortName string
	Address  string
	// Port is the workload's port (the resolved target port).
	Port  uint32
	Ready bool
	// Identity is the SPIFFE ID of the workload behind the address when it
	// is in the mesh (has a sidecar), "" otherwise: traffic to it stays
	// plaintext.
	Identity string
	// Workload is the Key of the pod behind the address, "" if unknown.
	Workload string
	// Node is the node the endpoint is on, "" if unknown.
	Node string
	// Terminating: the endpoint's pod is terminating but still serving
	// (not ready). Such endpoints are used, as kube-proxy uses them, only
	// by a port none of whose endpoints is ready: Ready is then set too.
	Terminating bool
	// ForZones and ForNodes are the zones and nodes whose clients the
	// EndpointSlice hints this endpoint for (sorted), none if it has no
	// such hints.
	ForZones, ForNodes []string
}

// Workload is a pod.
type Workload struct {
	Namespace, Name string
	// UID is the pod's UID.
	UID            string
	ServiceAccount string
	// IP is the pod IP, "" before it has one.
	IP string
	// Node is the node the pod runs on, "" before it is scheduled.
	Node string
	// Zone is its node's zone, from the pod's label topology.kubernetes.io/
	// zone (which Kubernetes copies from the node when the pod is bound,
	// with PodTopologyLabelsAdmission: beta and on since 1.35), "" if it
	// has none.
	Zone string
	// Identity is the pod's SPIFFE ID.
	Identity string
	// Meshed reports whether the pod has a sidecar.
	Meshed bool
	// ProxyID is the ID of the sidecar injected into the pod (its xDS client
	// certificate is bound to it), "" if not injected.
	ProxyID string
	// Mode is what its inbound side accepts.
	Mode Mode
	// NoInterception: nothing redirects the pod's traffic to its sidecar
	// (no iptables rules: no NET_ADMIN, or several sidecars sharing one
	// host's network). The sidecar's listeners bind real addresses instead:
	// see translate.Proxy.
	NoInterception bool
	// RegistryOnly: the sidecar refuses the app's connections to
	// destinations that are not services of the mesh in its egress scope
	// (annotation meshd.io/outbound-traffic: registry-only), instead of
	// passing them through. Sidecars without interception cannot.
	RegistryOnly bool
	// DetectionTimeout, when not 0, replaces the snapshot's for this pod
	// (annotation meshd.io/protocol-detection-timeout).
	DetectionTimeout time.Duration
	// Ports are the pod's inbound ports (service target ports that resolve
	// to this pod, and declared container ports), sorted by Port, unique,
	// but the Bypassed ones.
	Ports []Port
	// Bypassed are ports whose inbound traffic skips the sidecar (the
	// pod's interception leaves them alone): reached directly in
	// plaintext, so its endpoints on them carry no Identity. Sorted.
	Bypassed []uint32
	// Policies are the valid authorization policies that select the pod,
	// sorted by Key (see Authorize).
	Policies []*Policy
	// Egress is the scope of its sidecar's outbound configuration (nil:
	// every service).
	Egress Egress
}

// Key returns "name.namespace", which is also the proxy's node ID.
func (w *Workload) Key() string { return w.Name + "." + w.Namespace }

// Bypasses reports whether port's inbound traffic skips the sidecar.
func (w *Workload) Bypasses(port uint32) bool {
	_, found := slices.BinarySearch(w.Bypassed, port)
	return found
}

// DefaultDetectionTimeout is the inbound detection wait when neither the
// mesh nor the pod sets one (Envoy's own default is 15 s).
const DefaultDetectionTimeout = 5 * time.Second

// Detection returns how long w's sidecar waits for a client's first bytes.
func (s *Snapshot) Detection(w *Workload) time.Duration {
	switch {
	case w.DetectionTimeout > 0:
		return w.DetectionTimeout
	case s.DetectionTimeout > 0:
		return s.DetectionTimeout
	}
	return DefaultDetectionTimeout
}

// Workload returns the workload with the given key (a proxy's node ID), or
// nil.
func (s *Snapshot) Workload(key string) *Workload {
	if s == nil {
		return nil
	}
	i, ok := binarySearch(len(s.Workloads), func(i int) *Workload { return s.Workloads[i] }, key, func(w *Workload) (string, string) { return w.Name, w.Namespace })
	if !ok {
		return nil
	}
	return s.Workloads[i]
}

// Service returns the service with the given key, or nil.
func (s *Snapshot) Service(key string) *Service {
	if s == nil {
		return nil
	}
	i, ok := binarySearch(s.Services.Len(), s.Services.At, key, func(svc *Service) (string, string) { return svc.Name, svc.Namespace })
	if !ok {
		return nil
	}
	return s.Services.At(i)
}

// binarySearch finds key in the n items (at gives each) sorted by their
// keys, "name.namespace" of the parts nameOf gives (compared without
// building them: a proxy's lookup on every model change, for every proxy).
func binarySearch[T any](n int, at func(int) T, key string, nameOf func(T) (name, namespace string)) (int, bool) {
	lo, hi := 0, n
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		if name, ns := nameOf(at(mid)); compareKey(name, ns, key) < 0 {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	if lo == n {
		return lo, false
	}
	name, ns := nameOf(at(lo))
	return lo, compareKey(name, ns, key) == 0
}

// compareKey compares name+"."+namespace with key.
func compareKey(name, namespace, key string) int {
	n := min(len(name), len(key))
	if c := strings.Compare(name[:n], key[:n]); c != 0 {
		return c
	}
	if n == len(key) {
		return 1 // key is a prefix of name: the key built is longer
	}
	if c := cmp.Compare('.', key[n]); c != 0 {
		return c
	}
	return strings.Compare(namespace, key[n+1:])
}

// SPIFFEID returns the identity of a service account:
// spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>.
func SPIFFEID(trustDomain, namespace, serviceAccount string) string {
	return "spiffe://" + trustDomain + "/ns/" + namespace + "/sa/" + serviceAccount
}

// Problem is an object (or part of one) meshd left out because it is
// invalid for the mesh: found in conversion (package k8s) or in translation
// (package translate, e.g. two services claiming one address), reported the
// same way, as a Warning Event on the object and a log line.
type Problem struct {
	Kind, Namespace, Name string
	Reason, Message       string
	// UID is the object's, where known (for the Event's involved object).
	UID string
}

func (p Problem) String() string {
	return p.Kind + " " + p.Namespace + "/" + p.Name + ": " + p.Reason + ": " + p.Message
}
