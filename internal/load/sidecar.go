// Package load impersonates many sidecars against a meshd and measures how
// fast they get their configuration: each fake sidecar has its own client
// certificate, holds an ADS stream (delta or state-of-the-world) and
// subscribes the way Envoy does (clusters and listeners by wildcard, then
// endpoints and routes by name, secrets "default" and "ROOTCA"), ACKing
// every response.
package load

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"strings"
	"sync"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshd/meshd/ca"
)

// sidecar is one impersonated Envoy.
type sidecar struct {
	node  string
	delta bool
	conn  *grpc.ClientConn

	mu        sync.Mutex
	clusters  map[string]bool // EDS clusters named by CDS
	endpoints map[string]bool // endpoint sets received
	listeners int
	routes    map[string]bool // named by listeners
	gotRoutes map[string]bool
	secrets   map[string]bool
	complete  chan struct{}
	done      bool
	// watch, if set, is called with every ClusterLoadAssignment received.
	watch func(cla *endpointv3.ClusterLoadAssignment, at time.Time)
}

func dial(addr string, cert *ca.Certificate, roots *x509.CertPool) (*grpc.ClientConn, error) {
	kp, err := tls.X509KeyPair(cert.ChainPEM, cert.KeyPEM)
	if err != nil {
		return nil, err
	}
	cfg := &tls.Config{Certificates: []tls.Certificate{kp}, RootCAs: roots, MinVersion: tls.VersionTLS12,
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
	return grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(256<<20)))
}

// run holds the stream until ctx ends.
func (s *sidecar) run(ctx context.Context) error {
	client := discoveryv3.NewAggregatedDiscoveryServiceClient(s.conn)
	if s.delta {
		return s.runDelta(ctx, client)
	}
	return s.runSotW(ctx, client)
}

func (s *sidecar) nodeProto() *corev3.Node { return &corev3.Node{Id: s.node} }

// decoded is what the fleet needs of one resource encoding. Sidecars
// receive the same encodings (the same resource at the same version), so
// each is decoded once for the whole fleet: the load tool shares the
// machine with meshd, and its time is better spent reading streams.
type decoded struct {
	name   string
	eds    string                            // clusters: the EDS service name, "" if not EDS
	routes []string                          // listeners: the RDS route configurations named
	cla    *endpointv3.ClusterLoadAssignment // endpoints (read-only)
}

var decodings sync.Map // string(encoding) -> *decoded

func decode(typeURL string, a *anypb.Any) (*decoded, error) {
	if d, ok := decodings.Load(string(a.GetValue())); ok {
		return d.(*decoded), nil
	}
	d := &decoded{}
	switch typeURL {
	case resourcev3.ClusterType:
		var c clusterv3.Cluster
		if err := a.UnmarshalTo(&c); err != nil {
			return nil, err
		}
		d.name = c.GetName()
		if c.GetType() == clusterv3.Cluster_EDS {
			d.eds = c.GetEdsClusterConfig().GetServiceName()
			if d.eds == "" {
				d.eds = c.GetName()
			}
		}
	case resourcev3.EndpointType:
		var cla endpointv3.ClusterLoadAssignment
		if err := a.UnmarshalTo(&cla); err != nil {
			return nil, err
		}
		d.name, d.cla = cla.GetClusterName(), &cla
	case resourcev3.ListenerType:
		var l listenerv3.Listener
		if err := a.UnmarshalTo(&l); err != nil {
			return nil, err
		}
		d.name = l.GetName()
		for _, fc := range l.GetFilterChains() {
			for _, f := range fc.GetFilters() {
				if f.GetTypedConfig().MessageIs(&hcmv3.HttpConnectionManager{}) {
					var h hcmv3.HttpConnectionManager
					if err := f.GetTypedConfig().UnmarshalTo(&h); err == nil && h.GetRds() != nil {
						d.routes = append(d.routes, h.GetRds().GetRouteConfigName())
					}
				}
			}
		}
	case resourcev3.RouteType:
		d.name = routeName(a)
	case resourcev3.SecretType:
		return &decoded{name: secretName(a)}, nil // per sidecar: not shared
	}
	decodings.Store(string(a.GetValue()), d)
	return d, nil
}

// handle records one response's resources.
func (s *sidecar) handle(typeURL string, resources []*anypb.Any, at time.Time) error {
	ds := make([]*decoded, 0, len(resources))
	for _, a := range resources {
		d, err := decode(typeURL, a)
		if err != nil {
			return err
		}
		ds = append(ds, d)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, d := range ds {
		switch typeURL {
		case resourcev3.ClusterType:
			if d.eds != "" {
				s.clusters[d.eds] = true
			}
		case resourcev3.EndpointType:
			s.endpoints[d.name] = true
			if s.watch != nil {
				s.watch(d.cla, at)
			}
		case resourcev3.ListenerType:
			s.listeners++
			for _, r := range d.routes {
				s.routes[r] = true
			}
		case resourcev3.RouteType:
			s.gotRoutes[d.name] = true
		case resourcev3.SecretType:
			s.secrets[d.name] = true
		}
	}
	s.checkComplete()
	return nil
}

// checkComplete closes complete once the sidecar holds everything its
// listeners and clusters reference, and its secrets.
func (s *sidecar) checkComplete() {
	if s.done || len(s.secrets) < 2 || s.listeners == 0 || len(s.clusters) == 0 {
		return
	}
	for c := range s.clusters {
		if !s.endpoints[c] {
			return
		}
	}
	for r := range s.routes {
		if !s.gotRoutes[r] {
			return
		}
	}
	s.done = true
	close(s.complete)
}

func (s *sidecar) names(typeURL string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var set map[string]bool
	switch typeURL {
	case resourcev3.EndpointType:
		set = s.clusters
	case resourcev3.RouteType:
		set = s.routes
	}
	out := make([]string, 0, len(set))
	for n := range set {
		out = append(out, n)
	}
	return out
}

func newSidecar(node string, delta bool, conn *grpc.ClientConn) *sidecar {
	return &sidecar{node: node, delta: delta, conn: conn, clusters: map[string]bool{}, endpoints: map[string]bool{},
		routes: map[string]bool{}, gotRoutes: map[string]bool{}, secrets: map[string]bool{}, complete: make(chan struct{})}
}

func typeShort(t string) string { return t[strings.LastIndex(t, ".")+1:] }
