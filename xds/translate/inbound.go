package translate

import (
	"fmt"
	"slices"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshd/meshd/model"
)

// inboundListener receives connections redirected to the workload: per port
// a chain that requires a mesh client certificate, and in PERMISSIVE mode a
// second one that takes plaintext (told apart by TLS inspection), and one
// for the ports the mesh does not know (undeclaredChain). In STRICT mode
// plaintext, and ports the mesh does not know, match no chain and are
// closed; the listener's access log says so (refusedAccessLog).
//
// TLS inspection waits for the client's first bytes, at most the pod's
// detection timeout: a server-first protocol's plaintext client sends
// nothing, so in PERMISSIVE mode it is served after that wait, and in
// STRICT mode it is closed then. On STRICT pods a port declared server-first
// skips the inspection (only mutual TLS is possible there anyway).
func inboundListener(snap *model.Snapshot, w *model.Workload) *listenerv3.Listener {
	detection := snap.Detection(w)
	l := &listenerv3.Listener{
		Name:                   InboundListener,
		Address:                socketAddress("0.0.0.0", InboundPort),
		TrafficDirection:       corev3.TrafficDirection_INBOUND,
		ListenerFilters:        []*listenerv3.ListenerFilter{originalDstFilter(), tlsInspectorFilter(skipInspection(w)...)},
		ListenerFiltersTimeout: durationpb.New(detection),
		AccessLog:              refusedAccessLog(w),
		SocketOptions:          keepaliveSocketOptions(),
	}
	for _, p := range w.Ports {
		addInboundChains(l, snap, w, p)
	}
	if w.Mode == model.ModePermissive {
		l.FilterChains = append(l.FilterChains, undeclaredChain(w))
		l.ContinueOnListenerFiltersTimeout = true
	}
	l.FilterChains = append(l.FilterChains, selfChain(InboundPort))
	return l
}

// undeclaredChain takes, on a PERMISSIVE pod, connections to a port the
// mesh does not know (no Service targets it, no container declares it:
// an app's metrics or admin port reached at the pod's address) and passes
// them to the app as they came, as TCP, plaintext or the app's own TLS:
// without the mesh they reached it, and PERMISSIVE is the mode of pods
// that must still be reached so. It matches no port and no transport, so
// a known port's chains always go first. The policies that may cover such
// a port (those naming no port, or a port the mesh does not know) apply to
// every such port: stricter, never looser, than per port. The peer's
// identity is not known here (nothing is terminated), so rules that name
// callers match nobody.
func undeclaredChain(w *model.Workload) *listenerv3.FilterChain {
	a := authzOf(w, false, func(pol *model.Policy) bool {
		if len(pol.Ports) == 0 {
			return true
		}
		for _, n := range pol.Ports {
			if !slices.ContainsFunc(w.Ports, func(p model.Port) bool { return p.Port == n }) {
				return true
			}
		}
		return false
	})
	const name = "inbound|undeclared"
	tp := tcpProxyConfig(name, InboundUndeclaredCluster, append(inboundAccessLog(w), authzTCPLog(w, a)...)...)
	return &listenerv3.FilterChain{
		Name:    name,
		Filters: append(networkRBAC(a, model.Port{Protocol: model.ProtocolTCP}), tcpProxyFilter(tp)),
	}
}

// undeclaredCluster is InboundUndeclaredCluster: the connection's original
// destination, from 127.0.0.6, as TCP.
func undeclaredCluster() *clusterv3.Cluster {
	c := inboundCluster(model.Port{Protocol: model.ProtocolTCP})
	c.Name = InboundUndeclaredCluster
	return c
}

// uninspected reports whether the TLS inspector leaves a port's
// connections alone: a server-first port of a STRICT pod, where only mutual
// TLS is possible anyway.
func uninspected(w *model.Workload, p model.Port) bool {
	return w.Mode == model.ModeStrict && p.ServerFirst
}

// skipInspection returns the workload's uninspected ports.
func skipInspection(w *model.Workload) []uint32 {
	var ports []uint32
	for _, p := range w.Ports {
		if uninspected(w, p) {
			ports = append(ports, p.Port)
		}
	}
	return ports
}

// addInboundChains adds a port's chains: mutual TLS, and in PERMISSIVE
// mode plaintext too.
func addInboundChains(l *listenerv3.Listener, snap *model.Snapshot, w *model.Workload, p model.Port) {
	detection := snap.Detection(w)
	tls := inboundChain(w, p, "tls", snap.ConnectionMaxAge)
	tls.TransportSocket = downstreamTLS(snap.TrustDomain)
	// A handshake that does not complete in time is closed (a silent
	// plaintext client of an uninspected server-first port, or a stalled
	// one), not held open.
	tls.TransportSocketConnectTimeout = durationpb.New(handshakeTimeout)
	if uninspected(w, p) {
		tls.FilterChainMatch.TransportProtocol = "" // not inspected: any connection
		tls.TransportSocketConnectTimeout = durationpb.New(detection)
	}
	l.FilterChains = append(l.FilterChains, tls)
	if w.Mode == model.ModePermissive {
		// Server-speaks-first protocols send nothing to inspect: after the
		// timeout they continue as plaintext instead of being closed.
		l.FilterChains = append(l.FilterChains, inboundChain(w, p, "raw_buffer", 0))
		l.ContinueOnListenerFiltersTimeout = true
	}
}

// inboundChain forwards a port's connections to the app. A mutual TLS
// connection is closed by the server side once it is maxAge old (HTTP:
// drained, the client told to reconnect; TCP: closed), whatever the client
// does: no connection outlives the certificate it was made with, even one
// held open by a client that ignores its own bound (a stolen certificate).
func inboundChain(w *model.Workload, p model.Port, transport string, maxAge time.Duration) *listenerv3.FilterChain {
	cluster := InboundClusterName(p)
	if w.NoInterception {
		cluster = localClusterName(p)
	}
	name := fmt.Sprintf("inbound|%d|%s", p.Port, transport)
	var filter *listenerv3.Filter
	var authz *authz
	if p.Protocol.IsHTTP() {
		filter = hcmFilter(&hcmv3.HttpConnectionManager{
			StatPrefix: name,
			// The route, and with it the authorization rules, come over RDS.
			RouteSpecifier: inboundRDS(p),
			// The app sees the authenticated peer's SPIFFE ID in
			// x-forwarded-client-cert; a value the client sent is dropped.
			ForwardClientCertDetails:    hcmv3.HttpConnectionManager_SANITIZE_SET,
			SetCurrentClientCertDetails: &hcmv3.HttpConnectionManager_SetCurrentClientCertDetails{Uri: true},
			AccessLog:                   append(inboundAccessLog(w), authzHTTPLog(w)...),
			LocalReplyConfig:            appFailureReplies(),
			CommonHttpProtocolOptions:   maxDuration(maxAge),
			HttpFilters:                 httpRBACFilters(),
			// Paths are normalized before the RBAC filters match them, so
			// that /a/../admin or //admin cannot slip past a path rule.
			NormalizePath: wrapperspb.Bool(true),
			MergeSlashes:  true,
		})
	} else {
		authz = portAuthz(w, p)
		tp := tcpProxyConfig(name, cluster, append(inboundAccessLog(w), authzTCPLog(w, authz)...)...)
		if maxAge > 0 {
			tp.MaxDownstreamConnectionDuration = durationpb.New(maxAge)
		}
		filter = tcpProxyFilter(tp)
	}
	return &listenerv3.FilterChain{
		Name: name,
		FilterChainMatch: &listenerv3.FilterChainMatch{
			DestinationPort:   wrapperspb.UInt32(p.Port),
			TransportProtocol: transport,
		},
		Filters: append(networkRBAC(authz, p), filter),
	}
}

func maxDuration(maxAge time.Duration) *corev3.HttpProtocolOptions {
	if maxAge <= 0 {
		return nil
	}
	return &corev3.HttpProtocolOptions{MaxConnectionDuration: durationpb.New(maxAge)}
}

// appSourceAddress is the address the app sees inbound connections come
// from: a loopback address other than 127.0.0.1, so that an app which
// trusts 127.0.0.1 (Redis's protected mode, admin endpoints) does not trust
// every mesh caller. The interception rules let the sidecar's connections
// from it through (its others to its own pod's address go to the inbound
// listener): iptables.AppSourceAddress, the same (a test checks).
const appSourceAddress = "127.0.0.6"

// inboundCluster reaches the app where the caller was going: the pod IP and
// port the connection was redirected from (its original destination), from
// 127.0.0.6. An app that listens only on 127.0.0.1 stays unreachable from
// outside the pod, as it is without the mesh. The sidecar runs as the proxy
// uid, whose connections from 127.0.0.6 the iptables rules do not redirect.
func inboundCluster(p model.Port) *clusterv3.Cluster {
	c := &clusterv3.Cluster{
		Name:                 InboundClusterName(p),
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_ORIGINAL_DST},
		LbPolicy:             clusterv3.Cluster_CLUSTER_PROVIDED,
		ConnectTimeout:       durationpb.New(connectTimeout),
		CircuitBreakers:      noLimits(),
		UpstreamBindConfig: &corev3.BindConfig{SourceAddress: &corev3.SocketAddress{
			Address: appSourceAddress, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 0},
		}},
	}
	setProtocol(c, p.Protocol)
	return c
}

// localCluster reaches the app on 127.0.0.1:<port>: for sidecars without
// interception (see directListeners), whose inbound listeners hold the pod
// IP's port themselves.
func localCluster(p model.Port) *clusterv3.Cluster {
	name := localClusterName(p)
	c := &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		ConnectTimeout:       durationpb.New(connectTimeout),
		CircuitBreakers:      noLimits(),
		LoadAssignment: &endpointv3.ClusterLoadAssignment{
			ClusterName: name,
			Endpoints: []*endpointv3.LocalityLbEndpoints{{LbEndpoints: []*endpointv3.LbEndpoint{{
				HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
					Address: socketAddress("127.0.0.1", p.Port),
				}},
			}}}},
		},
	}
	setProtocol(c, p.Protocol)
	return c
}
