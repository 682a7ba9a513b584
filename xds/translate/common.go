package translate

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"time"

	accesslogv3 "github.com/envoyproxy/go-control-plane/envoy/config/accesslog/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	celv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/filters/cel/v3"
	streamv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/access_loggers/stream/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	origdstv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/original_dst/v3"
	tlsinspectorv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/listener/tls_inspector/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tcpproxyv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshd/meshd/model"
)

// inboundLogFormat is the sidecar's inbound access log line: which mesh
// identity (if any) reached which port, over which TLS version, with which
// certificate (serial, expiry) at what time.
const inboundLogFormat = "[meshd inbound] start=%%START_TIME%% pod=%s port=%%DOWNSTREAM_LOCAL_PORT%% peer=%%DOWNSTREAM_PEER_URI_SAN%% " +
	"tls=%%DOWNSTREAM_TLS_VERSION%% peer_serial=%%DOWNSTREAM_PEER_SERIAL%% peer_not_after=%%DOWNSTREAM_PEER_CERT_V_END%% " +
	"code=%%RESPONSE_CODE%% flags=%%RESPONSE_FLAGS%% bytes_in=%%BYTES_RECEIVED%% bytes_out=%%BYTES_SENT%%\n"

func socketAddress(ip string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: ip, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}

// adsConfig points a resource at the ADS stream it came from.
func adsConfig() *corev3.ConfigSource {
	return &corev3.ConfigSource{
		ResourceApiVersion:    corev3.ApiVersion_V3,
		ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}},
	}
}

func originalDstFilter() *listenerv3.ListenerFilter {
	return &listenerv3.ListenerFilter{
		Name:       "envoy.filters.listener.original_dst",
		ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: mustAny(&origdstv3.OriginalDst{})},
	}
}

// tlsInspectorFilter detects TLS, except on connections to the given
// destination ports.
func tlsInspectorFilter(skipPorts ...uint32) *listenerv3.ListenerFilter {
	f := &listenerv3.ListenerFilter{
		Name:       "envoy.filters.listener.tls_inspector",
		ConfigType: &listenerv3.ListenerFilter_TypedConfig{TypedConfig: mustAny(&tlsinspectorv3.TlsInspector{})},
	}
	var skip []*listenerv3.ListenerFilterChainMatchPredicate
	for _, p := range skipPorts {
		skip = append(skip, &listenerv3.ListenerFilterChainMatchPredicate{Rule: &listenerv3.ListenerFilterChainMatchPredicate_DestinationPortRange{
			DestinationPortRange: &typev3.Int32Range{Start: int32(p), End: int32(p) + 1},
		}})
	}
	switch len(skip) {
	case 0:
	case 1:
		f.FilterDisabled = skip[0]
	default:
		f.FilterDisabled = &listenerv3.ListenerFilterChainMatchPredicate{Rule: &listenerv3.ListenerFilterChainMatchPredicate_OrMatch{
			OrMatch: &listenerv3.ListenerFilterChainMatchPredicate_MatchSet{Rules: skip},
		}}
	}
	return f
}

func tcpProxy(statPrefix, cluster string, logs ...*accesslogv3.AccessLog) *listenerv3.Filter {
	return tcpProxyFilter(tcpProxyConfig(statPrefix, cluster, logs...))
}

func tcpProxyConfig(statPrefix, cluster string, logs ...*accesslogv3.AccessLog) *tcpproxyv3.TcpProxy {
	return &tcpproxyv3.TcpProxy{
		StatPrefix:       statPrefix,
		ClusterSpecifier: &tcpproxyv3.TcpProxy_Cluster{Cluster: cluster},
		AccessLog:        logs,
		// No idle bound (Envoy's default closes a connection quiet for an
		// hour: a pooled database connection, a subscription waiting for
		// events). Without the mesh nothing closed it; a peer that is gone
		// is found by keepalive (see keepalive).
		IdleTimeout: durationpb.New(0),
		// A refused connection (an endpoint going away) is tried again,
		// on another endpoint where one exists.
		MaxConnectAttempts: wrapperspb.UInt32(numRetries + 1),
	}
}

func tcpProxyFilter(tp *tcpproxyv3.TcpProxy) *listenerv3.Filter {
	return &listenerv3.Filter{
		Name:       "envoy.filters.network.tcp_proxy",
		ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(tp)},
	}
}

// noLimits lifts Envoy's default circuit breakers, 1,024 connections,
// pending requests and requests at once per cluster: without the mesh an
// app had as many connections to a service as it opened (a database pool,
// thousands of WebSockets), and with them the 1,025th failed at once
// (overflow). Concurrent retries keep Envoy's bound (3), so that a
// failing endpoint does not bring a retry storm.
func noLimits() *clusterv3.CircuitBreakers {
	return &clusterv3.CircuitBreakers{Thresholds: []*clusterv3.CircuitBreakers_Thresholds{{
		MaxConnections:     wrapperspb.UInt32(math.MaxUint32),
		MaxPendingRequests: wrapperspb.UInt32(math.MaxUint32),
		MaxRequests:        wrapperspb.UInt32(math.MaxUint32),
	}}}
}

// keepalive is the TCP keepalive of the sidecars' connections across the
// network (to other pods and beyond, and from other pods' sidecars): a
// peer gone without a word (its node lost, a partition) is found within
// about 7 minutes and its connection closed, so the app's end of it, on
// loopback where its own keepalive can find nothing, is closed too. It
// also keeps middleboxes' state for quiet connections alive.
func keepalive() *corev3.TcpKeepalive {
	return &corev3.TcpKeepalive{
		KeepaliveTime:     wrapperspb.UInt32(keepaliveIdle),
		KeepaliveInterval: wrapperspb.UInt32(keepaliveInterval),
		KeepaliveProbes:   wrapperspb.UInt32(keepaliveProbes),
	}
}

// Keepalive timing: probes after 5 minutes of quiet, every 30 s, 4 lost
// ones closing the connection.
const (
	keepaliveIdle     = 300
	keepaliveInterval = 30
	keepaliveProbes   = 4
)

// keepaliveSocketOptions set keepalive on a listener's socket, which the
// connections it accepts inherit (Linux).
func keepaliveSocketOptions() []*corev3.SocketOption {
	const solSocket, soKeepalive, ipprotoTCP, tcpKeepidle, tcpKeepintvl, tcpKeepcnt = 1, 9, 6, 4, 5, 6
	opt := func(desc string, level, name, v int64) *corev3.SocketOption {
		return &corev3.SocketOption{Description: desc, Level: level, Name: name,
			Value: &corev3.SocketOption_IntValue{IntValue: v}, State: corev3.SocketOption_STATE_PREBIND}
	}
	return []*corev3.SocketOption{
		opt("SO_KEEPALIVE", solSocket, soKeepalive, 1),
		opt("TCP_KEEPIDLE", ipprotoTCP, tcpKeepidle, keepaliveIdle),
		opt("TCP_KEEPINTVL", ipprotoTCP, tcpKeepintvl, keepaliveInterval),
		opt("TCP_KEEPCNT", ipprotoTCP, tcpKeepcnt, keepaliveProbes),
	}
}

// hcmFilter completes an HTTP connection manager with the router, after
// the HTTP filters it has, and with what apps did without the mesh:
// WebSocket upgrades (Envoy refuses an upgrade it was not configured for
// with a 403) and HTTP/1.0 requests (refused with a 426 otherwise; ab and
// old health checkers send them). Between sidecars a request keeps its
// client's protocol (setProtocol), so an upgraded connection crosses both
// hops as it came.
func hcmFilter(hcm *hcmv3.HttpConnectionManager) *listenerv3.Filter {
	hcm.UpgradeConfigs = []*hcmv3.HttpConnectionManager_UpgradeConfig{{UpgradeType: "websocket"}}
	// Nor is a quiet stream cut (Envoy's default: after 5 minutes without
	// data, a WebSocket, a long poll or an event stream waiting for news),
	// as a quiet TCP connection is not.
	hcm.StreamIdleTimeout = durationpb.New(0)
	// The app's own Server header reaches its clients (Envoy writes its
	// name over it by default).
	hcm.ServerHeaderTransformation = hcmv3.HttpConnectionManager_PASS_THROUGH
	hcm.HttpProtocolOptions = &corev3.Http1ProtocolOptions{AcceptHttp_10: true}
	// Nor does Envoy add its own headers (x-envoy-upstream-service-time
	// on every answer; x-envoy-expected-rq-timeout-ms, x-envoy-attempt-
	// count on requests): apps and their clients see the headers they
	// saw without the mesh.
	hcm.HttpFilters = append(hcm.HttpFilters, &hcmv3.HttpFilter{
		Name:       "envoy.filters.http.router",
		ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(&routerv3.Router{SuppressEnvoyHeaders: true})},
	})
	return &listenerv3.Filter{
		Name:       "envoy.filters.network.http_connection_manager",
		ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: mustAny(hcm)},
	}
}

func inboundAccessLog(w *model.Workload) []*accesslogv3.AccessLog {
	return stdoutLog(fmt.Sprintf(inboundLogFormat, w.Key()))
}

// refusedLogFormat is the inbound listener's own log line, for connections
// that ended in a failure: no chain for the port or transport (flag NR, a
// plaintext client of a STRICT port), a failed handshake (reason), the
// detection or handshake timeout (detail), the app unreachable (UF).
const refusedLogFormat = "[meshd refused] start=%%START_TIME%% pod=%s port=%%DOWNSTREAM_LOCAL_PORT%% from=%%DOWNSTREAM_REMOTE_ADDRESS%% " +
	"flags=%%RESPONSE_FLAGS%% reason=%%DOWNSTREAM_TRANSPORT_FAILURE_REASON%% detail=%%CONNECTION_TERMINATION_DETAILS%%\n"

// refusedFilter keeps the listener's log to failed connections (the chains
// log the others).
const refusedFilter = `response.flags != 0u || connection.transport_failure_reason != "" || connection.termination_details != ""`

func refusedAccessLog(w *model.Workload) []*accesslogv3.AccessLog {
	logs := stdoutLog(fmt.Sprintf(refusedLogFormat, w.Key()))
	logs[0].Filter = &accesslogv3.AccessLogFilter{FilterSpecifier: &accesslogv3.AccessLogFilter_ExtensionFilter{
		ExtensionFilter: &accesslogv3.ExtensionFilter{
			Name:       "envoy.access_loggers.extension_filters.cel",
			ConfigType: &accesslogv3.ExtensionFilter_TypedConfig{TypedConfig: mustAny(&celv3.ExpressionFilter{Expression: refusedFilter})},
		},
	}}
	return logs
}

func stdoutLog(line string) []*accesslogv3.AccessLog {
	format := &corev3.SubstitutionFormatString{Format: &corev3.SubstitutionFormatString_TextFormatSource{
		TextFormatSource: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: line}},
	}}
	return []*accesslogv3.AccessLog{{
		Name: "envoy.access_loggers.stdout",
		ConfigType: &accesslogv3.AccessLog_TypedConfig{TypedConfig: mustAny(&streamv3.StdoutAccessLog{
			AccessLogFormat: &streamv3.StdoutAccessLog_LogFormat{LogFormat: format},
		})},
	}}
}

// setProtocol makes an HTTP cluster (HTTP, HTTP/2, gRPC) speak upstream
// the protocol its client spoke downstream: a request crosses both hops
// and reaches the app as its client sent it, whatever the port's name or
// appProtocol says (gRPC, HTTP/2 without TLS, on a port named http-*; a
// WebSocket, or curl, on a port declared HTTP/2 or gRPC), as it did
// without the mesh. The peer's sidecar tells the two apart by the
// connection's first bytes (its listeners' codec is AUTO; no ALPN is
// negotiated between sidecars). TCP clusters are left alone.
func setProtocol(c *clusterv3.Cluster, p model.Protocol) {
	if !p.IsHTTP() {
		return
	}
	c.TypedExtensionProtocolOptions = map[string]*anypb.Any{
		"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": mustAny(&httpv3.HttpProtocolOptions{UpstreamProtocolOptions: downstreamProtocol()}),
	}
}

// downstreamProtocol is the upstream protocol of setProtocol.
func downstreamProtocol() *httpv3.HttpProtocolOptions_UseDownstreamProtocolConfig {
	return &httpv3.HttpProtocolOptions_UseDownstreamProtocolConfig{UseDownstreamProtocolConfig: &httpv3.HttpProtocolOptions_UseDownstreamHttpConfig{
		HttpProtocolOptions:  &corev3.Http1ProtocolOptions{},
		Http2ProtocolOptions: &corev3.Http2ProtocolOptions{},
	}}
}

// boundAge makes a mesh HTTP cluster close each upstream connection
// gracefully once it is maxAge old (draining it: no request fails), so the
// next request opens a new one with the certificates current then. TCP
// clusters and clusters without mesh endpoints are left alone.
func boundAge(c *clusterv3.Cluster, p model.Protocol, ids []string, maxAge time.Duration) *clusterv3.Cluster {
	if maxAge <= 0 || len(ids) == 0 || !p.IsHTTP() {
		return c
	}
	opts := &httpv3.HttpProtocolOptions{
		CommonHttpProtocolOptions: &corev3.HttpProtocolOptions{MaxConnectionDuration: durationpb.New(maxAge)},
		UpstreamProtocolOptions:   downstreamProtocol(),
	}
	c.TypedExtensionProtocolOptions = map[string]*anypb.Any{"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": mustAny(opts)}
	return c
}

// mustAny wraps a message built here; marshalling a well-formed message
// cannot fail, so a failure is a programming error. The encoding is
// deterministic (map fields, such as an RBAC filter's policies, in key
// order), so that the same content is the same bytes, and so the same
// version, on every translation and every replica: with anypb.New a
// sidecar's listener could get a new version (and Envoy drain it) when
// nothing in it changed.
func mustAny(m proto.Message) *anypb.Any {
	a := &anypb.Any{}
	if err := anypb.MarshalFrom(a, m, proto.MarshalOptions{Deterministic: true}); err != nil {
		panic(fmt.Sprintf("translate: marshal %T: %v", m, err))
	}
	return a
}

func mustStruct(m map[string]any) *structpb.Struct {
	s, err := structpb.NewStruct(m)
	if err != nil {
		panic(fmt.Sprintf("translate: struct %v: %v", m, err))
	}
	return s
}

func sortResources(res Resources) {
	for _, items := range res {
		slices.SortFunc(items, func(a, b types.Resource) int {
			return cmp.Compare(cachev3.GetResourceName(a), cachev3.GetResourceName(b))
		})
	}
}

func sortStrings(s []string) { slices.Sort(s) }
