package translate

import (
	"fmt"
	"net/netip"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/meshd/meshd/model"
)

// directListeners are the listeners of a sidecar nothing is redirected to
// (meshd.io/interception: none), like Istio's sidecars without traffic
// capture:
//
//   - inbound, per port of the workload, a listener on <pod IP>:<port> with
//     the inbound chains (mutual TLS, the peer's SPIFFE ID checked); the app
//     listens on 127.0.0.1:<port>, where the sidecar forwards;
//   - outbound, per service port in its scope (model.Workload.Egress: the
//     sidecar has no other service's cluster or route), a listener the app
//     connects to instead of the service: on 127.0.0.1:<service port>, or on
//     the pod IP when that is itself a loopback address (several such
//     sidecars on one host, as in `make demo` without root). Never on a
//     routable pod IP: other pods could then send through this pod's
//     identity. A port already taken on that address (by an inbound
//     listener, or a service earlier in key order) is left out.
//
// The shared outbound listener (0.0.0.0:15001) is still sent; nothing
// reaches it.
func directListeners(snap *model.Snapshot, w *model.Workload) []types.Resource {
	var out []types.Resource
	ip, err := netip.ParseAddr(w.IP)
	if err != nil {
		return nil // no pod IP yet
	}
	taken := map[string]bool{}
	for _, p := range w.Ports {
		l := &listenerv3.Listener{
			Name:                   fmt.Sprintf("%s|%d", InboundListener, p.Port),
			Address:                socketAddress(w.IP, p.Port),
			TrafficDirection:       corev3.TrafficDirection_INBOUND,
			ListenerFilters:        []*listenerv3.ListenerFilter{tlsInspectorFilter(skipInspection(w)...)},
			ListenerFiltersTimeout: durationpb.New(snap.Detection(w)),
			AccessLog:              refusedAccessLog(w),
			SocketOptions:          keepaliveSocketOptions(),
		}
		addInboundChains(l, snap, w, p)
		out = append(out, l)
		taken[fmt.Sprintf("%s:%d", w.IP, p.Port)] = true
	}
	bind := "127.0.0.1"
	if ip.IsLoopback() {
		bind = w.IP
	}
	for svc := range snap.Scoped(w.Egress).Services.Values() {
		if svc.ClusterIP == "" {
			continue // headless: the app reaches its pods by address
		}
		for _, p := range svc.Ports {
			key := fmt.Sprintf("%s:%d", bind, p.Port)
			if taken[key] {
				continue
			}
			taken[key] = true
			name := ClusterName(svc, p.Port)
			chain := outboundChain(name, svc.ClusterIP, p, svc.ClientIPAffinity)
			chain.FilterChainMatch = nil
			out = append(out, &listenerv3.Listener{
				Name:             "local" + name[len("outbound"):],
				Address:          socketAddress(bind, p.Port),
				TrafficDirection: corev3.TrafficDirection_OUTBOUND,
				FilterChains:     []*listenerv3.FilterChain{chain},
			})
		}
	}
	res := Resources{resourcev3.ListenerType: out}
	sortResources(res)
	return res[resourcev3.ListenerType]
}
