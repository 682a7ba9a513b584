// Package load impersonates many sidecars against a meshd and measures how
// fast they get their configuration: each fake sidecar has its own client
// certificate, holds an ADS stream (delta or state-of-the-world) and
// subscribes the way Envoy does (clusters and listeners by wildcard, then
// endpoints and routes by name, secrets "default" and "ROOTCA"), ACKing
// every response.
package load

import (
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"math/bits"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/proto"

	"github.com/meshd/meshd/bootstrap"
	"github.com/meshd/meshd/ca"
)

// sidecar is one impersonated Envoy.
type sidecar struct {
	node   string
	delta  bool
	conn   *grpc.ClientConn
	shared *shared
	scope  map[string]bool // the clusters its scope has (nil: every one)

	mu sync.Mutex
	// Sets of interned names (see nameTable): a fleet of 10,000 sidecars
	// each holding 1,000 names in maps of strings would cost the load tool
	// more memory than the meshd it measures.
	clusters  nameSet // the EDS service names of the clusters held
	endpoints nameSet // endpoint sets held
	// listeners are the listeners held, each with the RDS route
	// configurations it names (a sidecar holds a few listeners).
	listeners map[int][]int
	routes    nameSet // named by listeners
	gotRoutes nameSet
	secrets   map[string]bool
	complete  chan struct{}
	ended     chan struct{} // closed when the stream ends
	// received is the size of the responses received (their protobuf
	// encoding, as meshd wrote them before gRPC's framing and TLS), and
	// configBytes what it was when the sidecar first held its full
	// configuration (read once complete is closed).
	received    atomic.Int64
	configBytes int64
	done        bool
	// watch, if set, is called with every ClusterLoadAssignment received.
	watch func(cla *endpointv3.ClusterLoadAssignment, at time.Time)
}

// envoyWindow is Envoy's default HTTP/2 window, stream and connection.
const envoyWindow = 256 << 20

func dial(addr string, cert *ca.Certificate, roots *x509.CertPool) (*grpc.ClientConn, error) {
	kp, err := tls.X509KeyPair(cert.ChainPEM, cert.KeyPEM)
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{kp}, RootCAs: roots, MinVersion: tls.VersionTLS12,
		// Full-size TLS records from the first byte, as Envoy (BoringSSL)
		// writes them (a 60 KB request through Envoy arrived as three 16 KB
		// records and the rest); Go's default starts at ~1 KB and grows,
		// which shapes how crypto/tls's read buffer grows on meshd's side.
		DynamicRecordSizingDisabled: true,
		// meshd's certificate carries a SPIFFE ID; the chain is verified below.
		InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			c, err := x509.ParseCertificate(raw[0])
			if err != nil {
				return err
			}
			inter := x509.NewCertPool()
			for _, r := range raw[1:] {
				if ic, err := x509.ParseCertificate(r); err == nil {
					inter.AddCert(ic)
				}
			}
			_, err = c.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
			return err
		}}
	// Envoy's flow-control windows (256 MiB per stream and connection by
	// default, fixed): grpc-go's dynamic ones would have each sidecar ping
	// meshd after nearly every response, which no Envoy does. Envoy's
	// keepalive pings as meshd's bootstrap sets them (every 30s, 30s for
	// an answer; grpc-go's after 30s without a frame from meshd).
	return grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)),
		grpc.WithStaticStreamWindowSize(envoyWindow), grpc.WithStaticConnWindowSize(envoyWindow),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: bootstrap.DefaultXDSKeepalive, Timeout: bootstrap.DefaultXDSKeepalive, PermitWithoutStream: true}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(256<<20)))
}

// run holds the stream until ctx ends.
func (s *sidecar) run(ctx context.Context) error {
	if s.delta {
		return s.runDelta(ctx)
	}
	return s.runSotW(ctx)
}

func (s *sidecar) nodeProto() *corev3.Node { return &corev3.Node{Id: s.node} }

// decoded is what the fleet needs of one resource encoding. Sidecars
// receive the same encodings (the same resource at the same version), so
// each is decoded once for the whole fleet: the load tool shares the
// machine with meshd, and its time is better spent reading streams.
type decoded struct {
	name   int                               // interned (secrets: -1)
	eds    int                               // clusters: the EDS service name, -1 if not EDS (and in shared.edsOf)
	routes []int                             // listeners: the RDS route configurations named
	cla    *endpointv3.ClusterLoadAssignment // endpoints (read-only)
	secret string
}

// shared is what the fleet's sidecars share: each encoding decoded once,
// resource names interned once.
type shared struct {
	// decodings are by encoding. A map under a lock, not a sync.Map: a
	// lookup m[string(b)] copies nothing, where a sync.Map key (an any)
	// is a copy of the whole encoding, made for every resource of every
	// response (tens of GB in a 10,000-sidecar run, on the cores meshd
	// shares).
	mu        sync.RWMutex
	decodings map[string]*decoded
	edsOf     map[int]int // a cluster's EDS service name by its name (a delta response removes a cluster by name)
	names     nameTable
}

func newShared() *shared {
	return &shared{names: nameTable{ids: map[string]int{}}, decodings: map[string]*decoded{}, edsOf: map[int]int{}}
}

func (sh *shared) decode(typeURL string, b []byte) (*decoded, error) {
	names := &sh.names
	sh.mu.RLock()
	d, ok := sh.decodings[string(b)]
	sh.mu.RUnlock()
	if ok {
		return d, nil
	}
	d = &decoded{name: -1, eds: -1}
	switch typeURL {
	case resourcev3.ClusterType:
		var c clusterv3.Cluster
		if err := proto.Unmarshal(b, &c); err != nil {
			return nil, err
		}
		d.name = names.id(c.GetName())
		if c.GetType() == clusterv3.Cluster_EDS {
			d.eds = names.id(cmp.Or(c.GetEdsClusterConfig().GetServiceName(), c.GetName()))
		}
	case resourcev3.EndpointType:
		var cla endpointv3.ClusterLoadAssignment
		if err := proto.Unmarshal(b, &cla); err != nil {
			return nil, err
		}
		d.name, d.cla = names.id(cla.GetClusterName()), &cla
	case resourcev3.ListenerType:
		var l listenerv3.Listener
		if err := proto.Unmarshal(b, &l); err != nil {
			return nil, err
		}
		d.name = names.id(l.GetName())
		for _, fc := range l.GetFilterChains() {
			for _, f := range fc.GetFilters() {
				if f.GetTypedConfig().MessageIs(&hcmv3.HttpConnectionManager{}) {
					var h hcmv3.HttpConnectionManager
					if err := f.GetTypedConfig().UnmarshalTo(&h); err == nil && h.GetRds() != nil {
						d.routes = append(d.routes, names.id(h.GetRds().GetRouteConfigName()))
					}
				}
			}
		}
	case resourcev3.RouteType:
		var r routev3.RouteConfiguration
		if err := proto.Unmarshal(b, &r); err != nil {
			return nil, err
		}
		d.name = names.id(r.GetName())
	case resourcev3.SecretType:
		var s tlsv3.Secret // per sidecar: not shared
		if err := proto.Unmarshal(b, &s); err != nil {
			return nil, err
		}
		return &decoded{secret: s.GetName()}, nil
	}
	sh.mu.Lock()
	sh.decodings[string(b)] = d
	if typeURL == resourcev3.ClusterType {
		sh.edsOf[d.name] = d.eds
	}
	sh.mu.Unlock()
	return d, nil
}

// handle records one response: its resources, and the names it removes
// (delta). A state-of-the-world response of clusters or listeners is
// every one the sidecar holds; one of endpoints or routes updates those it
// has and keeps the others, as Envoy does.
func (s *sidecar) handle(typeURL string, resources, removed [][]byte, at time.Time) error {
	ds := make([]*decoded, 0, len(resources))
	for _, b := range resources {
		d, err := s.shared.decode(typeURL, b)
		if err != nil {
			return err
		}
		ds = append(ds, d)
	}
	gone := make([]int, 0, len(removed))
	for _, name := range removed {
		id := s.shared.names.id(string(name))
		if typeURL == resourcev3.ClusterType {
			s.shared.mu.RLock()
			eds, ok := s.shared.edsOf[id]
			s.shared.mu.RUnlock()
			if !ok || eds < 0 {
				continue // not one the fleet holds as an EDS cluster
			}
			id = eds
		}
		gone = append(gone, id)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.delta {
		switch typeURL {
		case resourcev3.ClusterType:
			clear(s.clusters)
		case resourcev3.ListenerType:
			clear(s.listeners)
		}
	}
	for _, id := range gone {
		switch typeURL {
		case resourcev3.ClusterType:
			s.clusters.remove(id)
		case resourcev3.EndpointType:
			s.endpoints.remove(id)
		case resourcev3.ListenerType:
			delete(s.listeners, id)
		case resourcev3.RouteType:
			s.gotRoutes.remove(id)
		}
	}
	for _, d := range ds {
		switch typeURL {
		case resourcev3.ClusterType:
			if d.eds >= 0 {
				s.clusters.add(d.eds)
			}
		case resourcev3.EndpointType:
			s.endpoints.add(d.name)
			if s.watch != nil {
				s.watch(d.cla, at)
			}
		case resourcev3.ListenerType:
			s.listeners[d.name] = d.routes
		case resourcev3.RouteType:
			s.gotRoutes.add(d.name)
		case resourcev3.SecretType:
			s.secrets[d.secret] = true
		}
	}
	if typeURL == resourcev3.ListenerType {
		clear(s.routes)
		for _, routes := range s.listeners {
			for _, r := range routes {
				s.routes.add(r)
			}
		}
	}
	s.checkComplete()
	return nil
}

// checkComplete closes complete once the sidecar holds everything its
// listeners and clusters reference, and its secrets.
func (s *sidecar) checkComplete() {
	if s.done || len(s.secrets) < 2 || len(s.listeners) == 0 || s.clusters.empty() ||
		!s.clusters.subsetOf(s.endpoints) || !s.routes.subsetOf(s.gotRoutes) {
		return
	}
	s.done, s.configBytes = true, s.received.Load()
	close(s.complete)
}

// names returns the names of the EDS or RDS resources the sidecar's
// clusters and listeners reference.
func (s *sidecar) names(typeURL string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if set := s.referenced(typeURL); set != nil {
		return set.names(&s.shared.names)
	}
	return nil
}

// referenced is the set of EDS or RDS names the sidecar's clusters or
// listeners reference (nil for other types); s.mu held.
func (s *sidecar) referenced(typeURL string) *nameSet {
	switch typeURL {
	case resourcev3.EndpointType:
		return &s.clusters
	case resourcev3.RouteType:
		return &s.routes
	}
	return nil
}

// resubscribe returns the EDS or RDS names to subscribe to and those to
// unsubscribe from, given those subscribed to (which it updates): a delta
// stream's subscriptions follow what the clusters and listeners reference,
// as Envoy's do.
func (s *sidecar) resubscribe(typeURL string, subscribed *nameSet) (add, drop []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	want := s.referenced(typeURL)
	add = want.minus(*subscribed).names(&s.shared.names)
	drop = subscribed.minus(*want).names(&s.shared.names)
	*subscribed = slices.Clone(*want)
	return add, drop
}

func newSidecar(node string, delta bool, conn *grpc.ClientConn, sh *shared) *sidecar {
	return &sidecar{node: node, delta: delta, conn: conn, shared: sh, secrets: map[string]bool{}, listeners: map[int][]int{}, complete: make(chan struct{}),
		ended: make(chan struct{})}
}

// nameTable interns resource names for the whole fleet.
type nameTable struct {
	mu  sync.RWMutex
	ids map[string]int
	all []string
}

func (t *nameTable) id(name string) int {
	t.mu.RLock()
	i, ok := t.ids[name]
	t.mu.RUnlock()
	if ok {
		return i
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if i, ok := t.ids[name]; ok {
		return i
	}
	t.ids[name] = len(t.all)
	t.all = append(t.all, name)
	return len(t.all) - 1
}

// nameSet is a set of interned names, a bit each.
type nameSet []uint64

func (s *nameSet) add(i int) {
	for len(*s) <= i/64 {
		*s = append(*s, 0)
	}
	(*s)[i/64] |= 1 << (i % 64)
}

func (s nameSet) remove(i int) {
	if i/64 < len(s) {
		s[i/64] &^= 1 << (i % 64)
	}
}

// minus returns the names of s that o has not.
func (s nameSet) minus(o nameSet) nameSet {
	out := slices.Clone(s)
	for i := range min(len(out), len(o)) {
		out[i] &^= o[i]
	}
	return out
}

func (s nameSet) count() int {
	n := 0
	for _, w := range s {
		n += bits.OnesCount64(w)
	}
	return n
}

func (s nameSet) has(i int) bool { return i/64 < len(s) && s[i/64]&(1<<(i%64)) != 0 }

func (s nameSet) empty() bool {
	for _, w := range s {
		if w != 0 {
			return false
		}
	}
	return true
}

func (s nameSet) subsetOf(o nameSet) bool {
	for i, w := range s {
		var ow uint64
		if i < len(o) {
			ow = o[i]
		}
		if w&^ow != 0 {
			return false
		}
	}
	return true
}

// names returns the set's names, looked up under one read lock (a SotW
// ACK names every endpoint set).
func (s nameSet) names(names *nameTable) []string {
	out := make([]string, 0, s.count())
	names.mu.RLock()
	defer names.mu.RUnlock()
	for i, w := range s {
		for w != 0 {
			b := bits.TrailingZeros64(w)
			out = append(out, names.all[i*64+b])
			w &^= 1 << b
		}
	}
	return out
}
