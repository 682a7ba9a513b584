// Package translate turns the mesh model into Envoy resources. It is pure:
// a model.Snapshot in, resources out, no I/O, no clock, no globals.
//
// Where it sits in the pipeline: k8s builds the model; Shared runs once per
// model change and produces what every proxy shares (the outbound listener,
// clusters, routes, endpoints); Proxy runs per connected proxy and produces
// only what is its own (the inbound listener and its local clusters). The
// xds Publisher merges both with the proxy's secrets into its snapshot.
//
// Traffic path: the app's outbound connection is redirected to the outbound
// listener (15001), matched by original destination (service ClusterIP and
// port, or a headless service's endpoint) and sent to the service's cluster,
// which speaks mutual TLS to endpoints that have a sidecar and checks their
// SPIFFE IDs. The peer's sidecar receives it on the inbound listener (15006),
// which requires a mesh client certificate (STRICT) or also accepts
// plaintext (PERMISSIVE), and forwards to the app on 127.0.0.1:<port>.
package translate

import (
	"fmt"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/meshd/meshd/model"
)

// Ports of the sidecar's listeners (the iptables rules redirect to them).
const (
	OutboundPort = 15001
	InboundPort  = 15006
)

// Names of resources that are not per service.
const (
	OutboundListener   = "outbound"
	InboundListener    = "inbound"
	PassthroughCluster = "PassthroughCluster"
)

// Resources are xDS resources by type URL. Every slice is sorted by name.
type Resources = map[resourcev3.Type][]types.Resource

// ClusterName returns the outbound cluster (and route and endpoint set) name
// of a service port: outbound|<port>|<name>.<namespace>.
func ClusterName(svc *model.Service, port uint32) string {
	return fmt.Sprintf("outbound|%d|%s", port, svc.Key())
}

// directClusterName is the cluster for connections straight to a mesh
// endpoint of a headless service (original destination, mutual TLS).
func directClusterName(svc *model.Service, port uint32) string {
	return fmt.Sprintf("outbound-direct|%d|%s", port, svc.Key())
}

// InboundClusterName returns the cluster that reaches the app on a port of
// the proxy's own pod (at the connection's original destination):
// inbound|<port>, or
// inbound-h2|<port> for HTTP/2 and gRPC ports.
func InboundClusterName(p model.Port) string {
	if p.Protocol == model.ProtocolHTTP2 || p.Protocol == model.ProtocolGRPC {
		return fmt.Sprintf("inbound-h2|%d", p.Port)
	}
	return fmt.Sprintf("inbound|%d", p.Port)
}

// localClusterName is InboundClusterName's counterpart for sidecars without
// interception (forwarding to 127.0.0.1).
func localClusterName(p model.Port) string { return "local-" + InboundClusterName(p) }

// Shared returns the resources every proxy shares: the outbound listener;
// per service port a cluster, its endpoints and (for HTTP ports) its route
// configuration; and the local clusters the inbound listeners forward to
// (127.0.0.1:<port>, the same for every pod with that port). Problems it finds in the model (two services claiming
// one address and port) are returned; the first service in key order keeps
// the address.
func Shared(snap *model.Snapshot) (Resources, []model.Problem) {
	res := Resources{}
	add := func(t resourcev3.Type, r types.Resource) { res[t] = append(res[t], r) }
	add(resourcev3.ClusterType, passthroughCluster())
	var chains chainSet
	for _, svc := range snap.Services {
		ids := identities(svc)
		for _, p := range svc.Ports {
			name := ClusterName(svc, p.Port)
			add(resourcev3.ClusterType, boundAge(edsCluster(name, sni(svc), p.Protocol, ids), p.Protocol, ids, snap.ConnectionMaxAge))
			add(resourcev3.EndpointType, loadAssignment(name, svc, p))
			if p.Protocol.IsHTTP() {
				add(resourcev3.RouteType, routeConfig(name, name))
			}
			if svc.ClusterIP != "" {
				chains.add(svc.ClusterIP, p.Port, svc, outboundChain(name, svc.ClusterIP, p))
				continue
			}
			if direct := directChains(svc, p, &chains); direct {
				add(resourcev3.ClusterType, boundAge(directCluster(directClusterName(svc, p.Port), sni(svc), p.Protocol, ids), p.Protocol, ids, snap.ConnectionMaxAge))
			}
		}
	}
	add(resourcev3.ListenerType, outboundListener(chains.chains))
	seen := map[string]bool{}
	for _, w := range snap.Workloads {
		for _, p := range w.Ports {
			if w.NoInterception {
				if name := localClusterName(p); !seen[name] {
					seen[name] = true
					add(resourcev3.ClusterType, localCluster(p))
				}
				continue
			}
			if name := InboundClusterName(p); !seen[name] {
				seen[name] = true
				add(resourcev3.ClusterType, inboundCluster(p))
			}
		}
	}
	sortResources(res)
	return res, chains.problems
}

// Proxy returns a proxy's own resources: the inbound listener with a filter
// chain per port of its workload (forwarding to the shared local clusters),
// and per HTTP port its route (with the port's authorization rules).
// A workload without ports gets no inbound listener (Envoy refuses one
// without filter chains): connections redirected to it are refused.
//
// A workload without interception gets, instead, listeners on real
// addresses (directListeners).
func Proxy(snap *model.Snapshot, w *model.Workload) Resources {
	res := Resources{}
	if w.NoInterception {
		if ls := directListeners(snap, w); len(ls) > 0 {
			res[resourcev3.ListenerType] = ls
			addRoutes(res, inboundRoutes(w))
		}
		return res
	}
	if len(w.Ports) == 0 {
		return res
	}
	res[resourcev3.ListenerType] = []types.Resource{inboundListener(snap, w)}
	addRoutes(res, inboundRoutes(w))
	return res
}

// addRoutes adds the inbound HTTP ports' routes (RDS, with the
// authorization rules), if any.
func addRoutes(res Resources, routes []types.Resource) {
	if len(routes) > 0 {
		res[resourcev3.RouteType] = routes
	}
}

// identities returns the distinct SPIFFE IDs of a service's mesh endpoints,
// ready or not (so readiness changes stay EDS-only), sorted.
func identities(svc *model.Service) []string {
	seen := map[string]bool{}
	var ids []string
	for _, e := range svc.Endpoints {
		if e.Identity != "" && !seen[e.Identity] {
			seen[e.Identity] = true
			ids = append(ids, e.Identity)
		}
	}
	sortStrings(ids)
	return ids
}

// sni is the server name upstream TLS sends: the service's DNS name (for
// the server's logs; identity is checked by SPIFFE ID, not by name).
func sni(svc *model.Service) string { return svc.Name + "." + svc.Namespace + ".svc" }
