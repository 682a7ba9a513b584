package translate

import (
	"fmt"
	"slices"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshd/meshd/model"
)

// connectTimeout bounds upstream connection set-up (TCP and TLS).
const connectTimeout = 5 * time.Second

// handshakeTimeout bounds an inbound TLS handshake.
const handshakeTimeout = 10 * time.Second

// transportSocketMatch is the endpoint metadata that selects mutual TLS
// for an endpoint with a sidecar; endpoints without one stay plaintext.
var transportSocketMatch = map[string]any{"tls": "mtls"}

// chainSet collects outbound filter chains, one per destination address and
// port: a second service claiming one is reported and left out (Envoy
// refuses a listener with two identical matches).
type chainSet struct {
	owners   map[string]string
	chains   []*listenerv3.FilterChain
	problems []model.Problem
}

func (c *chainSet) add(ip string, port uint32, svc *model.Service, chain *listenerv3.FilterChain) bool {
	key := fmt.Sprintf("%s:%d", ip, port)
	if c.owners == nil {
		c.owners = map[string]string{}
	}
	if owner, taken := c.owners[key]; taken {
		c.problems = append(c.problems, model.Problem{Kind: "Service", Namespace: svc.Namespace, Name: svc.Name, Reason: "AddressConflict",
			Message: fmt.Sprintf("destination %s is already served by service %s; this service is left out of the mesh there", key, owner)})
		return false
	}
	c.owners[key] = svc.Key()
	c.chains = append(c.chains, chain)
	return true
}

// outboundListener is the virtual listener that redirected outbound
// connections reach: matched by original destination, unknown destinations
// pass through untouched.
func outboundListener(chains []*listenerv3.FilterChain) *listenerv3.Listener {
	return &listenerv3.Listener{
		Name:             OutboundListener,
		Address:          socketAddress("0.0.0.0", OutboundPort),
		TrafficDirection: corev3.TrafficDirection_OUTBOUND,
		ListenerFilters:  []*listenerv3.ListenerFilter{originalDstFilter()},
		FilterChains:     append(slices.Clip(chains), selfChain(OutboundPort)),
		DefaultFilterChain: &listenerv3.FilterChain{
			Name:    PassthroughCluster,
			Filters: []*listenerv3.Filter{tcpProxy(PassthroughCluster, PassthroughCluster)},
		},
	}
}

// serviceChainsOf is the chains an outbound listener was made with (see
// outboundListener: its self chain comes last).
func serviceChainsOf(l *listenerv3.Listener) []*listenerv3.FilterChain {
	return l.FilterChains[:len(l.FilterChains)-1]
}

// selfChain closes connections whose destination is the listener's own
// port: one that reached it without being redirected (to the pod's address
// from another pod, or to 127.0.0.1 from the app) has itself as original
// destination, and passing it on there would connect to the listener
// again, and again, until the sidecar runs out of connections (a denial
// of service anyone who can reach the pod could set off).
func selfChain(port uint32) *listenerv3.FilterChain {
	name := fmt.Sprintf("self|%d", port)
	return &listenerv3.FilterChain{
		Name:             name,
		FilterChainMatch: &listenerv3.FilterChainMatch{DestinationPort: wrapperspb.UInt32(port)},
		Filters:          []*listenerv3.Filter{tcpProxy(name, BlackHoleCluster)},
	}
}

// registryOnlyPassthrough is the passthrough cluster of a proxy whose
// outbound traffic is registry-only (model.Workload.RegistryOnly): among
// its own resources, it stands over the shared PassthroughCluster of the
// same name, so the outbound listener, the same for every proxy, closes
// the connections it would pass through (to destinations that are not
// services of the mesh in the proxy's scope); Envoy counts them
// (cluster.PassthroughCluster.upstream_cx_none_healthy).
func registryOnlyPassthrough() *clusterv3.Cluster {
	c := blackHoleCluster()
	c.Name, c.LoadAssignment.ClusterName = PassthroughCluster, PassthroughCluster
	return c
}

// blackHoleCluster has no endpoints: tcp_proxy closes what it is given.
func blackHoleCluster() *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 BlackHoleCluster,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		ConnectTimeout:       durationpb.New(connectTimeout),
		LoadAssignment:       &endpointv3.ClusterLoadAssignment{ClusterName: BlackHoleCluster},
	}
}

// outboundChain matches a service's ClusterIP and port; with client
// affinity a TCP port's connections are hashed by their source address
// (an HTTP port's requests are, by its route).
func outboundChain(cluster, ip string, p model.Port, affinity bool) *listenerv3.FilterChain {
	var filter *listenerv3.Filter
	if p.Protocol.IsHTTP() {
		filter = hcmFilter(&hcmv3.HttpConnectionManager{
			StatPrefix: cluster,
			RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{
				ConfigSource: adsConfig(), RouteConfigName: cluster,
			}},
		})
	} else {
		tp := tcpProxyConfig(cluster, cluster)
		if affinity {
			tp.HashPolicy = []*typev3.HashPolicy{{PolicySpecifier: &typev3.HashPolicy_SourceIp_{SourceIp: &typev3.HashPolicy_SourceIp{}}}}
		}
		filter = tcpProxyFilter(tp)
	}
	return &listenerv3.FilterChain{
		Name:             cluster,
		FilterChainMatch: destinationMatch(ip, p.Port),
		Filters:          []*listenerv3.Filter{filter},
	}
}

// directChains is a chain per mesh endpoint of a headless service port, so
// connections to a pod's own address get mutual TLS too.
func directChains(svc *model.Service, p model.Port) []addrChain {
	var out []addrChain
	cluster := directClusterName(svc, p.Port)
	for _, e := range svc.Endpoints {
		if e.PortName != p.Name || e.Identity == "" {
			continue
		}
		out = append(out, addrChain{e.Address, e.Port, &listenerv3.FilterChain{
			Name:             fmt.Sprintf("%s|%s", cluster, e.Address),
			FilterChainMatch: destinationMatch(e.Address, e.Port),
			Filters:          []*listenerv3.Filter{tcpProxy(cluster, cluster)},
		}})
	}
	return out
}

func destinationMatch(ip string, port uint32) *listenerv3.FilterChainMatch {
	return &listenerv3.FilterChainMatch{
		PrefixRanges:    []*corev3.CidrRange{{AddressPrefix: ip, PrefixLen: wrapperspb.UInt32(32)}},
		DestinationPort: wrapperspb.UInt32(port),
	}
}

// routeConfig sends every request of a service port to its cluster, with
// the retries of outboundRoutes; with client affinity, to the endpoint its
// client's address hashes to.
func routeConfig(name, cluster string, affinity bool) *routev3.RouteConfiguration {
	return &routev3.RouteConfiguration{
		Name: name,
		VirtualHosts: []*routev3.VirtualHost{{
			Name:    name,
			Domains: []string{"*"},
			Routes: outboundRoutes(cluster, func() *routev3.RouteAction {
				a := &routev3.RouteAction{
					ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: cluster},
					// Streams (gRPC, long polls) are not cut by a route timeout.
					Timeout: durationpb.New(0),
				}
				if affinity {
					a.HashPolicy = []*routev3.RouteAction_HashPolicy{{PolicySpecifier: &routev3.RouteAction_HashPolicy_ConnectionProperties_{
						ConnectionProperties: &routev3.RouteAction_HashPolicy_ConnectionProperties{SourceIp: true}}}}
				}
				return a
			}),
		}},
	}
}

// edsCluster is a service port's cluster: endpoints over EDS; those with a
// sidecar get mutual TLS with the service's identities checked. With
// client affinity (the Service's sessionAffinity ClientIP) the endpoint is
// the one the client's address hashes to on a ring: the same while the
// endpoints stay, and when one comes or goes only the clients hashed next
// to it move, as kube-proxy's affinity keeps a client until its endpoint
// goes (there is no affinity timeout: a client keeps its endpoint for as
// long as the endpoints do not change).
func edsCluster(name, sni string, proto model.Protocol, ids []string, affinity bool) *clusterv3.Cluster {
	c := &clusterv3.Cluster{
		Name:                      name,
		ClusterDiscoveryType:      &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig:          &clusterv3.Cluster_EdsClusterConfig{EdsConfig: adsConfig(), ServiceName: name},
		ConnectTimeout:            durationpb.New(connectTimeout),
		CircuitBreakers:           noLimits(),
		UpstreamConnectionOptions: &clusterv3.UpstreamConnectionOptions{TcpKeepalive: keepalive()},
	}
	if affinity {
		c.LbPolicy = clusterv3.Cluster_RING_HASH
	}
	setProtocol(c, proto)
	if len(ids) > 0 {
		c.TransportSocketMatches = []*clusterv3.Cluster_TransportSocketMatch{{
			Name:            "mtls",
			Match:           mustStruct(transportSocketMatch),
			TransportSocket: upstreamTLS(sni, ids),
		}}
	}
	return c
}

// serviceCluster is the cluster of a service port (named name) that the
// shared translation and, for node-local services, each proxy's own use:
// edsCluster with the service's connection age bound.
func serviceCluster(snap *model.Snapshot, svc *model.Service, p model.Port, name string, ids []string) *clusterv3.Cluster {
	return boundAge(edsCluster(name, sni(svc), p.Protocol, ids, svc.ClientIPAffinity), p.Protocol, ids, snap.ConnectionMaxAge)
}

// directCluster reaches a headless service's mesh endpoint at the original
// destination, with mutual TLS and the service's identities checked.
func directCluster(name, sni string, proto model.Protocol, ids []string) *clusterv3.Cluster {
	c := &clusterv3.Cluster{
		Name:                      name,
		ClusterDiscoveryType:      &clusterv3.Cluster_Type{Type: clusterv3.Cluster_ORIGINAL_DST},
		LbPolicy:                  clusterv3.Cluster_CLUSTER_PROVIDED,
		ConnectTimeout:            durationpb.New(connectTimeout),
		CircuitBreakers:           noLimits(),
		TransportSocket:           upstreamTLS(sni, ids),
		UpstreamConnectionOptions: &clusterv3.UpstreamConnectionOptions{TcpKeepalive: keepalive()},
	}
	setProtocol(c, proto)
	return c
}

func passthroughCluster() *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                      PassthroughCluster,
		ClusterDiscoveryType:      &clusterv3.Cluster_Type{Type: clusterv3.Cluster_ORIGINAL_DST},
		LbPolicy:                  clusterv3.Cluster_CLUSTER_PROVIDED,
		ConnectTimeout:            durationpb.New(connectTimeout),
		CircuitBreakers:           noLimits(),
		UpstreamConnectionOptions: &clusterv3.UpstreamConnectionOptions{TcpKeepalive: keepalive()},
	}
}

// loadAssignment lists a service port's ready endpoints. The metadata that
// selects mutual TLS marks the endpoints with a sidecar: once, on their
// locality, when every one has one (Envoy reads a locality's metadata when
// an endpoint's own selects nothing); on each of them otherwise. Marked
// endpoint by endpoint, a mesh endpoint took ~80 bytes instead of ~25.
func loadAssignment(name string, svc *model.Service, p model.Port) *endpointv3.ClusterLoadAssignment {
	var lbs, meshed []*endpointv3.LbEndpoint
	for _, e := range svc.Endpoints {
		if e.PortName != p.Name || !e.Ready {
			continue
		}
		lb := &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
			Address: socketAddress(e.Address, e.Port),
		}}}
		lbs = append(lbs, lb)
		if e.Identity != "" {
			meshed = append(meshed, lb)
		}
	}
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: name}
	if len(lbs) == 0 {
		return cla
	}
	group := &endpointv3.LocalityLbEndpoints{LbEndpoints: lbs}
	if len(meshed) == len(lbs) {
		group.Metadata = mtlsMetadata()
	} else {
		for _, lb := range meshed {
			lb.Metadata = mtlsMetadata()
		}
	}
	cla.Endpoints = []*endpointv3.LocalityLbEndpoints{group}
	return cla
}

// mtlsMetadata selects the cluster's mutual TLS transport socket.
func mtlsMetadata() *corev3.Metadata {
	return &corev3.Metadata{FilterMetadata: map[string]*structpb.Struct{
		"envoy.transport_socket_match": mustStruct(transportSocketMatch),
	}}
}
