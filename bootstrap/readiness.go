package bootstrap

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	healthcheckv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/health_check/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshd/meshd/internal/iptables"
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

// AppProbe is a probe of the app that the kubelet sends to the readiness
// port instead, as an HTTP GET of its path there (the app's port only takes
// mutual TLS in STRICT mode). A plain-HTTP probe (Kind "") is forwarded to
// the app's Port with the original Path. The others the sidecar runs
// itself against the app's Port every Period, each check bounded by
// Timeout, and the kubelet's GET reads the last result (200, or 503 once
// a check failed): Kind "grpc" is a gRPC health check of Service, "tcp" a
// connection, "https" a GET of Path over TLS whose certificate is not
// checked (as the kubelet's), passing on 200-399.
type AppProbe struct {
	Port uint32 `json:"port"`
	Path string `json:"path"`
	Kind string `json:"kind,omitempty"`
	// Service is the gRPC health service name ("" for the server).
	Service string `json:"service,omitempty"`
	// Headers are sent with an https probe's GET (Host among them).
	Headers map[string]string `json:"headers,omitempty"`
	// Period and Timeout in seconds (defaults 10 and 1, the kubelet's).
	Period  int32 `json:"period,omitempty"`
	Timeout int32 `json:"timeout,omitempty"`
	// PodIP: the sidecar reaches the app at the pod's own address, from
	// 127.0.0.6 (which the interception lets through), as the kubelet
	// would have: an app listening only on its pod IP passes. The pod's
	// address is not known when the bootstrap is rendered, so the
	// probe's cluster is not in it but in the command-line overlay of
	// ProbeArgs, where the kubelet writes the address in. Without PodIP
	// (probes recorded by an older meshd, whose sidecars lack that
	// overlay) the app is reached on 127.0.0.1.
	PodIP bool `json:"podIP,omitempty"`
}

// Probe kinds the sidecar checks itself (AppProbe.Kind).
const (
	ProbeGRPC  = "grpc"
	ProbeTCP   = "tcp"
	ProbeHTTPS = "https"
)

// Validate reports whether the probe is one the sidecar can run.
func (p AppProbe) Validate() error {
	if p.Port == 0 || p.Port > 65535 {
		return fmt.Errorf("port %d: want 1-65535", p.Port)
	}
	switch p.Kind {
	case "", ProbeHTTPS, ProbeGRPC, ProbeTCP:
	default:
		return fmt.Errorf("kind %q: want http (empty), %s, %s or %s", p.Kind, ProbeGRPC, ProbeTCP, ProbeHTTPS)
	}
	if p.Period < 0 || p.Period > 3600 || p.Timeout < 0 || p.Timeout > 3600 {
		return fmt.Errorf("period %ds, timeout %ds: want 0-3600", p.Period, p.Timeout)
	}
	return nil
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
	clusters := []*clusterv3.Cluster{staticCluster(adminClusterName, "127.0.0.1", cfg.AdminPort)}
	probeRoutes, probeFilters, probeClusters, err := appProbes(cfg.AppProbes)
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
		HttpFilters: append(probeFilters, &hcmv3.HttpFilter{Name: "envoy.filters.http.router", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: router}}),
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

// probeRoute is one rewritten probe: the readiness-port path the kubelet
// asks, what the sidecar does for it, the cluster that does it and the
// path asked of the app.
type probeRoute struct {
	path    string
	probe   AppProbe
	cluster string
	target  string
}

// probeRoutes checks the probes and returns them in a stable order.
func probeRoutes(probes map[string]AppProbe) ([]probeRoute, error) {
	paths := make([]string, 0, len(probes))
	for p := range probes {
		paths = append(paths, p)
	}
	sort.Strings(paths)
	routes := make([]probeRoute, 0, len(paths))
	for _, p := range paths {
		probe := probes[p]
		if !strings.HasPrefix(p, AppProbePrefix) {
			return nil, fmt.Errorf("bootstrap: app probe %q: want a path under %s", p, AppProbePrefix)
		}
		if err := probe.Validate(); err != nil {
			return nil, fmt.Errorf("bootstrap: app probe %q: %w", p, err)
		}
		r := probeRoute{path: p, probe: probe, target: probe.Path}
		if !strings.HasPrefix(r.target, "/") {
			r.target = "/" + r.target
		}
		// Clusters at the pod's IP are named apart from those on
		// 127.0.0.1: a bootstrap an older meshd renders again for the pod
		// then adds its own beside the command line's instead of clashing.
		at := ""
		if probe.PodIP {
			at = "pod-ip|"
		}
		if probe.Kind != "" {
			r.cluster = "app-check|" + at + strings.ReplaceAll(strings.TrimPrefix(p, AppProbePrefix), "/", "|")
		} else {
			r.cluster = fmt.Sprintf("app-probe|%s%d", at, probe.Port)
		}
		routes = append(routes, r)
	}
	return routes, nil
}

// appProbes routes each rewritten plain-HTTP probe path to its app port,
// one cluster per port, and answers each other probe's path with a health
// check filter reading its own health-checked cluster; in a stable order.
// The clusters are those of the probes reaching the app on 127.0.0.1; the
// others are ProbeArgs's.
func appProbes(probes map[string]AppProbe) ([]*routev3.Route, []*hcmv3.HttpFilter, []*clusterv3.Cluster, error) {
	prs, err := probeRoutes(probes)
	if err != nil {
		return nil, nil, nil, err
	}
	var routes []*routev3.Route
	var filters []*hcmv3.HttpFilter
	for _, r := range prs {
		if r.probe.Kind != "" {
			f, err := healthCheckFilter(r.cluster, r.path)
			if err != nil {
				return nil, nil, nil, err
			}
			filters = append(filters, f)
			continue
		}
		routes = append(routes, &routev3.Route{
			Match: &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Path{Path: r.path}},
			Action: &routev3.Route_Route{Route: &routev3.RouteAction{
				ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: r.cluster},
				PrefixRewrite:    r.target,
			}},
		})
	}
	clusters, err := probeClusters(prs, false, "127.0.0.1")
	if err != nil {
		return nil, nil, nil, err
	}
	return routes, filters, clusters, nil
}

// probeClusters are the clusters of the probes with PodIP as given, which
// reach the app at addr: one per port for plain-HTTP probes, one per
// probe for the others.
func probeClusters(prs []probeRoute, podIP bool, addr string) ([]*clusterv3.Cluster, error) {
	var clusters []*clusterv3.Cluster
	seen := map[string]bool{}
	for _, r := range prs {
		if r.probe.PodIP != podIP || seen[r.cluster] {
			continue
		}
		seen[r.cluster] = true
		var c *clusterv3.Cluster
		if r.probe.Kind == "" {
			c = staticCluster(r.cluster, addr, r.probe.Port)
		} else {
			var err error
			if c, err = checkedCluster(r.cluster, r.probe, r.target, addr); err != nil {
				return nil, err
			}
		}
		if podIP {
			// From 127.0.0.6: the interception lets the sidecar's
			// connections from there reach the app's port directly.
			c.UpstreamBindConfig = &corev3.BindConfig{SourceAddress: &corev3.SocketAddress{Address: iptables.AppSourceAddress,
				PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 0}}}
		}
		clusters = append(clusters, c)
	}
	return clusters, nil
}

// PodIPEnv is the sidecar's environment variable holding the pod's address
// (the downward API's status.podIP); ProbeArgs's overlay refers to it.
const PodIPEnv = "POD_IP"

// ProbeArgs returns the sidecar's Envoy arguments that add the clusters of
// the probes marked PodIP (nil when none is): --config-yaml with a
// bootstrap of those clusters alone, which Envoy merges into the bootstrap
// file (appended to its clusters), reaching the app at $(POD_IP). The
// kubelet expands that reference from the container's environment
// (PodIPEnv) before Envoy starts; every other '$' is written doubled, as
// the kubelet's escape, so the probe's path, headers and service reach
// Envoy as they were.
func ProbeArgs(probes map[string]AppProbe) ([]string, error) {
	prs, err := probeRoutes(probes)
	if err != nil {
		return nil, err
	}
	for i := range prs {
		prs[i].probe, prs[i].target = prs[i].probe.kubeletEscaped(), kubeletEscape(prs[i].target)
	}
	clusters, err := probeClusters(prs, true, "$("+PodIPEnv+")")
	if err != nil || len(clusters) == 0 {
		return nil, err
	}
	j, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(&bootstrapv3.Bootstrap{
		StaticResources: &bootstrapv3.Bootstrap_StaticResources{Clusters: clusters}})
	if err != nil {
		return nil, fmt.Errorf("bootstrap: encode the probes' clusters: %w", err)
	}
	var compact bytes.Buffer // one line, without protojson's random spacing
	if err := json.Compact(&compact, j); err != nil {
		return nil, fmt.Errorf("bootstrap: encode the probes' clusters: %w", err)
	}
	return []string{"--config-yaml", compact.String()}, nil
}

// kubeletEscape doubles every '$': the kubelet's expansion of a container's
// arguments turns "$$" back into "$" and leaves the rest alone.
var kubeletEscape = strings.NewReplacer("$", "$$").Replace

// kubeletEscaped is the probe with its own strings escaped for the kubelet.
func (p AppProbe) kubeletEscaped() AppProbe {
	p.Path, p.Service = kubeletEscape(p.Path), kubeletEscape(p.Service)
	if p.Headers != nil {
		h := make(map[string]string, len(p.Headers))
		for k, v := range p.Headers {
			h[kubeletEscape(k)] = kubeletEscape(v)
		}
		p.Headers = h
	}
	return p
}

// checkedCluster is the app's port at addr checked as the probe says,
// every period (also while no traffic goes to it: none does), one failure
// making it unhealthy and one success healthy again, as the kubelet counts
// its own probe's results on top.
func checkedCluster(name string, probe AppProbe, path, addr string) (*clusterv3.Cluster, error) {
	period, timeout := time.Duration(probe.Period)*time.Second, time.Duration(probe.Timeout)*time.Second
	if period == 0 {
		period = 10 * time.Second
	}
	if timeout == 0 {
		timeout = time.Second
	}
	hc := &corev3.HealthCheck{
		Timeout:                  durationpb.New(timeout),
		Interval:                 durationpb.New(period),
		NoTrafficInterval:        durationpb.New(period),
		NoTrafficHealthyInterval: durationpb.New(period),
		UnhealthyThreshold:       wrapperspb.UInt32(1),
		HealthyThreshold:         wrapperspb.UInt32(1),
	}
	// The app is asked as the address it is reached at (Envoy would send
	// the cluster's name), unless the probe names a host.
	authority := net.JoinHostPort(addr, strconv.Itoa(int(probe.Port)))
	c := staticCluster(name, addr, probe.Port)
	c.ConnectTimeout = durationpb.New(timeout)
	c.HealthChecks = []*corev3.HealthCheck{hc}
	switch probe.Kind {
	case ProbeGRPC:
		hc.HealthChecker = &corev3.HealthCheck_GrpcHealthCheck_{GrpcHealthCheck: &corev3.HealthCheck_GrpcHealthCheck{ServiceName: probe.Service, Authority: authority}}
		opts, err := anypb.New(&httpv3.HttpProtocolOptions{UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{
			ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{Http2ProtocolOptions: &corev3.Http2ProtocolOptions{}}}}})
		if err != nil {
			return nil, err
		}
		c.TypedExtensionProtocolOptions = map[string]*anypb.Any{"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": opts}
	case ProbeTCP:
		hc.HealthChecker = &corev3.HealthCheck_TcpHealthCheck_{TcpHealthCheck: &corev3.HealthCheck_TcpHealthCheck{}}
	case ProbeHTTPS:
		check := &corev3.HealthCheck_HttpHealthCheck{Path: path, Host: authority, ExpectedStatuses: []*typev3.Int64Range{{Start: 200, End: 400}}}
		names := make([]string, 0, len(probe.Headers))
		for k := range probe.Headers {
			names = append(names, k)
		}
		sort.Strings(names)
		for _, k := range names {
			if strings.EqualFold(k, "host") {
				check.Host = probe.Headers[k]
				continue
			}
			check.RequestHeadersToAdd = append(check.RequestHeadersToAdd, &corev3.HeaderValueOption{
				Header: &corev3.HeaderValue{Key: k, Value: probe.Headers[k]}, AppendAction: corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD})
		}
		hc.HealthChecker = &corev3.HealthCheck_HttpHealthCheck_{HttpHealthCheck: check}
		// The app's certificate is not checked, as the kubelet does not.
		tlsCtx, err := anypb.New(&tlsv3.UpstreamTlsContext{})
		if err != nil {
			return nil, err
		}
		c.TransportSocket = &corev3.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: tlsCtx}}
	}
	return c, nil
}

// healthCheckFilter answers GET path with 200 while cluster is healthy and
// 503 otherwise; other requests pass on.
func healthCheckFilter(cluster, path string) (*hcmv3.HttpFilter, error) {
	cfg, err := anypb.New(&healthcheckv3.HealthCheck{
		PassThroughMode: wrapperspb.Bool(false),
		Headers: []*routev3.HeaderMatcher{{Name: ":path", HeaderMatchSpecifier: &routev3.HeaderMatcher_StringMatch{
			StringMatch: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: path}}}}},
		ClusterMinHealthyPercentages: map[string]*typev3.Percent{cluster: {Value: 100}},
	})
	if err != nil {
		return nil, err
	}
	return &hcmv3.HttpFilter{Name: cluster, ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: cfg}}, nil
}

// staticCluster reaches addr:port.
func staticCluster(name, addr string, port uint32) *clusterv3.Cluster {
	return &clusterv3.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
		ConnectTimeout:       durationpb.New(time.Second),
		LoadAssignment: &endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointv3.LocalityLbEndpoints{{
			LbEndpoints: []*endpointv3.LbEndpoint{{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{
				Endpoint: &endpointv3.Endpoint{Address: socketAddress(addr, port)}}}}}}},
	}
}
