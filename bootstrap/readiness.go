package bootstrap

import (
	"fmt"
	"sort"
	"strings"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
)

const adminClusterName = "meshd-admin"

// ReadinessPath is what the kubelet probes on the readiness port.
const ReadinessPath = "/healthz/ready"

// StatsPath serves the sidecar's Envoy statistics in Prometheus format on
// the readiness port (read-only; the rest of the admin API stays on
// loopback): traffic, and connections refused by the inbound listener
// (listener.0.0.0.0_15006: no_filter_chain_match, downstream_pre_cx_timeout,
// downstream_cx_transport_socket_connect_timeout, ssl.connection_error).
const StatsPath = "/stats/prometheus"

// AppProbePrefix starts the readiness-port paths of rewritten app probes:
// /app-health/<container>/<readyz|livez|startupz>.
const AppProbePrefix = "/app-health/"

// AppProbe is an HTTP probe of the app that the kubelet sends to the
// readiness port instead (the app's port only takes mutual TLS): the
// sidecar forwards it to the app on 127.0.0.1:Port with the original Path.
type AppProbe struct {
	Port uint32 `json:"port"`
	Path string `json:"path"`
}

// readiness is a listener that answers GET /healthz/ready with Envoy's
// /ready (200 once the proxy is initialized, 503 before) and GET
// /stats/prometheus, forwards the rewritten app probes, and serves nothing
// else of the admin API.
func readiness(cfg Config) (*listenerv3.Listener, []*clusterv3.Cluster, error) {
	router, err := anypb.New(&routerv3.Router{})
	if err != nil {
		return nil, nil, err
	}
	routes := []*routev3.Route{{
		Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Path{Path: ReadinessPath}},
		Action: &routev3.Route_Route{Route: &routev3.RouteAction{
			ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: adminClusterName},
			PrefixRewrite:    "/ready",
		}},
	}, {
		Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Path{Path: StatsPath},
			Headers: []*routev3.HeaderMatcher{{Name: ":method", HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{
				StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: "GET"}}}}}},
		Action: &routev3.Route_Route{Route: &routev3.RouteAction{ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: adminClusterName}}},
	}}
	clusters := []*clusterv3.Cluster{staticCluster(adminClusterName, cfg.AdminPort)}
	probeRoutes, probeClusters, err := appProbes(cfg.AppProbes)
	if err != nil {
		return nil, nil, err
	}
	routes = append(routes, probeRoutes...)
	clusters = append(clusters, probeClusters...)
	hcm, err := anypb.New(&hcmv3.HttpConnectionManager{
		StatPrefix: "readiness",
		RouteSpecifier: &hcmv3.HttpConnectionManager_RouteConfig{RouteConfig: &routev3.RouteConfiguration{
			VirtualHosts: []*routev3.VirtualHost{{Name: "readiness", Domains: []string{"*"}, Routes: routes}},
		}},
		HttpFilters: []*hcmv3.HttpFilter{{Name: "envoy.filters.http.router", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: router}}},
	})
	if err != nil {
		return nil, nil, err
	}
	l := &listenerv3.Listener{
		Name:    "readiness",
		Address: socketAddress("0.0.0.0", cfg.ReadinessPort),
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
			Name: "envoy.filters.network.http_connection_manager", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: hcm},
		}}}},
	}
	return l, clusters, nil
}

// appProbes routes each rewritten probe path to its app port, one cluster
// per port, in a stable order.
func appProbes(probes map[string]AppProbe) ([]*routev3.Route, []*clusterv3.Cluster, error) {
	paths := make([]string, 0, len(probes))
	for p := range probes {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	var routes []*routev3.Route
	var clusters []*clusterv3.Cluster
	seen := map[uint32]bool{}
	for _, p := range paths {
		probe := probes[p]
		if !strings.HasPrefix(p, AppProbePrefix) || probe.Port == 0 || probe.Port > 65535 {
			return nil, nil, fmt.Errorf("bootstrap: app probe %q -> port %d: want a path under %s and a port 1-65535", p, probe.Port, AppProbePrefix)
		}
		target := probe.Path
		if !strings.HasPrefix(target, "/") {
			target = "/" + target
		}
		name := fmt.Sprintf("app-probe|%d", probe.Port)
		routes = append(routes, &routev3.Route{
			Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Path{Path: p}},
			Action: &routev3.Route_Route{Route: &routev3.RouteAction{
				ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: name},
				PrefixRewrite:    target,
			}},
		})
		if !seen[probe.Port] {
			seen[probe.Port] = true
			clusters = append(clusters, staticCluster(name, probe.Port))
		}
	}
	return routes, clusters, nil
}

// staticCluster reaches 127.0.0.1:port; the sidecar's uid is not redirected.
func staticCluster(name string, port uint32) *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		ConnectTimeout:       durationpb.New(time.Second),
		LoadAssignment: &endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointv3.LocalityLbEndpoints{{
			LbEndpoints: []*endpointv3.LbEndpoint{{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{
				Endpoint: &endpointv3.Endpoint{Address: socketAddress("127.0.0.1", port)}}}}}}},
	}
}
