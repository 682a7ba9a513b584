// Package bootstrap renders the Envoy bootstrap of a sidecar from typed
// protos: node identity, ADS over mutual TLS to meshd, and the xDS client
// certificate and trust bundle read from files through path-based SDS with a
// watched directory, so a rewritten Secret volume rotates them without a
// restart.
//
// Where it sits: the injector (and `meshd bootstrap`) call Render; nothing
// here does I/O. The files it describes are written by the caller.
package bootstrap

import (
	"errors"
	"fmt"
	"net"
	"path"
	"strconv"
	"strings"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	caresv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/network/dns_resolver/cares/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	httpv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/meshd/meshd/xds/translate"
)

// EnvoyFlags are the sidecar's Envoy command-line flags besides the
// bootstrap file and node: no hot restart, warnings only in its own log, and
// access log lines (the mesh's connection record) written out every second
// instead of Envoy's default ten.
func EnvoyFlags(concurrency int) []string {
	return []string{"--concurrency", strconv.Itoa(concurrency), "--disable-hot-restart", "--log-level", "warn",
		"--file-flush-interval-msec", "1000"}
}

// APIType selects the ADS flavour.
type APIType string

const (
	// Delta (incremental) ADS is the default: a proxy gets only what changed,
	// which matters once endpoints churn in a large mesh.
	Delta APIType = "delta"
	SotW  APIType = "sotw"
)

// File names inside the sidecar's credentials directory.
const (
	FileCertChain = "cert-chain.pem" // xDS client certificate chain
	FileKey       = "key.pem"        // its private key
	FileRootCert  = "root-cert.pem"  // mesh trust bundle (verifies meshd)
	FileClientSDS = "xds-client.sds.yaml"
	FileCASDS     = "xds-ca.sds.yaml"
)

// Secret names of the xDS connection's own credentials (not served by meshd).
const (
	secretXDSClient = "xds-client"
	secretXDSCA     = "xds-ca"
	xdsClusterName  = "meshd-xds"
)

// Config describes one sidecar.
type Config struct {
	Namespace, Pod, ServiceAccount, PodUID string
	// NodeID defaults to "<pod>.<namespace>", the CN of the client certificate.
	NodeID string
	// XDSAddress is meshd's host:port, or several comma-separated (replicas
	// reached directly; Envoy fails over between them).
	XDSAddress string
	// XDSServerSAN is the SPIFFE ID meshd's serving certificate must carry.
	XDSServerSAN string
	// API defaults to Delta.
	API APIType
	// CredsDir is where the credential files live in the sidecar.
	CredsDir string
	// AdminPort defaults to DefaultAdminPort (bound to 127.0.0.1).
	AdminPort uint32
	// ReadinessPort, if set, adds a listener on 0.0.0.0:<port> answering
	// /healthz/ready from Envoy's own /ready (the kubelet probes it; the
	// admin API stays on loopback).
	ReadinessPort uint32
	// AppProbes are the app's HTTP probes the kubelet sends to the readiness
	// port instead, by path on that port (needs ReadinessPort).
	AppProbes map[string]AppProbe
	// InitialFetchTimeout for mesh resources. Default 0 (wait for ever): a
	// listener that references a workload secret must not go live without it,
	// and meshd publishes secrets first, so waiting is never long.
	InitialFetchTimeout time.Duration
	// XDSKeepalive is how often Envoy pings meshd (default 30s); a
	// connection that brings no frame at all for as long again after a
	// ping is closed, and Envoy connects again (to another replica if
	// there are several). Without it a sidecar whose meshd vanished (its
	// node down, a network partition) would keep the connection, and the
	// config it had, for good: Envoy sends nothing on a quiet stream. Any
	// frame counts as an answer, so a large response under way does not
	// make meshd look dead, and the wait is long so that a meshd slowed
	// by a reconnect storm is not left for another. meshd accepts pings
	// every 10s or less often (xds.Limits.MinPingInterval).
	XDSKeepalive time.Duration
}

// DefaultAdminPort is Envoy's admin port, on 127.0.0.1, unless
// Config.AdminPort says otherwise (injected sidecars have it).
const DefaultAdminPort = 15000

// DefaultXDSKeepalive is Config.XDSKeepalive's default, what injected
// sidecars get.
const DefaultXDSKeepalive = 30 * time.Second

func (c *Config) defaults() error {
	if c.Namespace == "" || c.ServiceAccount == "" || (c.Pod == "" && c.NodeID == "") {
		return errors.New("bootstrap: namespace, service account and the pod (or a node ID) are required")
	}
	for _, a := range strings.Split(c.XDSAddress, ",") {
		if _, _, err := net.SplitHostPort(a); err != nil {
			return fmt.Errorf("bootstrap: xds address %q: %w", a, err)
		}
	}
	if c.CredsDir == "" || !path.IsAbs(c.CredsDir) {
		return fmt.Errorf("bootstrap: credentials directory %q must be an absolute path", c.CredsDir)
	}
	if c.XDSServerSAN == "" {
		return errors.New("bootstrap: the SAN expected of meshd is required")
	}
	if c.NodeID == "" {
		c.NodeID = c.Pod + "." + c.Namespace
	}
	if c.XDSKeepalive == 0 {
		c.XDSKeepalive = DefaultXDSKeepalive
	}
	if c.API == "" {
		c.API = Delta
	}
	if c.API != Delta && c.API != SotW {
		return fmt.Errorf("bootstrap: api %q: want %q or %q", c.API, Delta, SotW)
	}
	if c.AdminPort == 0 {
		c.AdminPort = DefaultAdminPort
	}
	return nil
}

// Render builds the bootstrap.
func Render(cfg Config) (*bootstrapv3.Bootstrap, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	md, err := structpb.NewStruct(map[string]any{
		"NAMESPACE": cfg.Namespace, "POD_NAME": cfg.Pod, "SERVICE_ACCOUNT": cfg.ServiceAccount, "POD_UID": cfg.PodUID,
	})
	if err != nil {
		return nil, err
	}
	xdsCluster, err := xdsCluster(cfg)
	if err != nil {
		return nil, err
	}
	api := corev3.ApiConfigSource_DELTA_GRPC
	if cfg.API == SotW {
		api = corev3.ApiConfigSource_GRPC
	}
	ads := func() *corev3.ConfigSource {
		return &corev3.ConfigSource{ResourceApiVersion: corev3.ApiVersion_V3,
			InitialFetchTimeout:   durationpb.New(cfg.InitialFetchTimeout),
			ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}
	}
	b := &bootstrapv3.Bootstrap{
		Node:  &corev3.Node{Id: cfg.NodeID, Cluster: cfg.ServiceAccount + "." + cfg.Namespace, Metadata: md},
		Admin: &bootstrapv3.Admin{Address: socketAddress("127.0.0.1", cfg.AdminPort)},
		DynamicResources: &bootstrapv3.Bootstrap_DynamicResources{
			AdsConfig: &corev3.ApiConfigSource{ApiType: api, TransportApiVersion: corev3.ApiVersion_V3,
				SetNodeOnFirstMessageOnly: true,
				GrpcServices: []*corev3.GrpcService{{TargetSpecifier: &corev3.GrpcService_EnvoyGrpc_{
					EnvoyGrpc: &corev3.GrpcService_EnvoyGrpc{ClusterName: xdsClusterName}}}}},
			LdsConfig: ads(),
			CdsConfig: ads(),
		},
		StaticResources: &bootstrapv3.Bootstrap_StaticResources{Clusters: []*clusterv3.Cluster{xdsCluster}},
	}
	if cfg.ReadinessPort != 0 {
		l, cs, err := readiness(cfg)
		if err != nil {
			return nil, err
		}
		b.StaticResources.Listeners = append(b.StaticResources.Listeners, l)
		b.StaticResources.Clusters = append(b.StaticResources.Clusters, cs...)
	}
	return b, nil
}

// xdsCluster is the static cluster to meshd: HTTP/2, mutual TLS with the
// client certificate and bundle from path-based SDS, meshd's SAN checked.
func xdsCluster(cfg Config) (*clusterv3.Cluster, error) {
	addrs := strings.Split(cfg.XDSAddress, ",")
	host, _, _ := net.SplitHostPort(addrs[0])
	allIPs := true
	var lbs []*endpointv3.LbEndpoint
	for _, a := range addrs {
		h, portStr, _ := net.SplitHostPort(a)
		port, err := strconv.ParseUint(portStr, 10, 16)
		if err != nil {
			return nil, fmt.Errorf("bootstrap: xds port %q: %w", portStr, err)
		}
		allIPs = allIPs && net.ParseIP(h) != nil
		lbs = append(lbs, &endpointv3.LbEndpoint{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{
			Endpoint: &endpointv3.Endpoint{Address: socketAddress(h, uint32(port))}}})
	}
	tlsCtx := &tlsv3.UpstreamTlsContext{
		CommonTlsContext: &tlsv3.CommonTlsContext{
			TlsParams:                      translate.TLSParams(), // TLS 1.3: the client certificate travels encrypted
			TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{pathSDS(cfg.CredsDir, secretXDSClient, FileClientSDS)},
			ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
				DefaultValidationContext: &tlsv3.CertificateValidationContext{MatchTypedSubjectAltNames: []*tlsv3.SubjectAltNameMatcher{{
					SanType: tlsv3.SubjectAltNameMatcher_URI,
					Matcher: &matcherv3.StringMatcher{MatchPattern: &matcherv3.StringMatcher_Exact{Exact: cfg.XDSServerSAN}},
				}}},
				ValidationContextSdsSecretConfig: pathSDS(cfg.CredsDir, secretXDSCA, FileCASDS),
			}},
		},
	}
	if net.ParseIP(host) == nil {
		tlsCtx.Sni = host // SNI carries names only, never addresses
	}
	tlsAny, err := anypb.New(tlsCtx)
	if err != nil {
		return nil, err
	}
	h2, err := anypb.New(&httpv3.HttpProtocolOptions{UpstreamProtocolOptions: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_{
		ExplicitHttpConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig{ProtocolConfig: &httpv3.HttpProtocolOptions_ExplicitHttpConfig_Http2ProtocolOptions{
			Http2ProtocolOptions: &corev3.Http2ProtocolOptions{ConnectionKeepalive: &corev3.KeepaliveSettings{
				Interval: durationpb.New(cfg.XDSKeepalive), Timeout: durationpb.New(cfg.XDSKeepalive)}}}}}})
	if err != nil {
		return nil, err
	}
	discovery := clusterv3.Cluster_STRICT_DNS
	var resolver *corev3.TypedExtensionConfig
	if allIPs {
		discovery = clusterv3.Cluster_STATIC
	} else if resolver, err = exactNameResolver(); err != nil {
		return nil, err
	}
	return &clusterv3.Cluster{
		TypedDnsResolverConfig: resolver,
		Name:                   xdsClusterName,
		ClusterDiscoveryType:   &clusterv3.Cluster_Type{Type: discovery},
		ConnectTimeout:         durationpb.New(5 * time.Second),
		TypedExtensionProtocolOptions: map[string]*anypb.Any{
			"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": h2,
		},
		TransportSocket: &corev3.TransportSocket{Name: "envoy.transport_sockets.tls",
			ConfigType: &corev3.TransportSocket_TypedConfig{TypedConfig: tlsAny}},
		LoadAssignment: &endpointv3.ClusterLoadAssignment{ClusterName: xdsClusterName, Endpoints: []*endpointv3.LocalityLbEndpoints{{
			LbEndpoints: lbs}}},
	}, nil
}

// exactNameResolver resolves meshd's name as given, without the pod's
// search domains: with a fully qualified name and the kubelet's ndots:5,
// each lookup is one query instead of one per search domain.
func exactNameResolver() (*corev3.TypedExtensionConfig, error) {
	cfg, err := anypb.New(&caresv3.CaresDnsResolverConfig{
		DnsResolverOptions: &corev3.DnsResolverOptions{NoDefaultSearchDomain: true}})
	if err != nil {
		return nil, err
	}
	return &corev3.TypedExtensionConfig{Name: "envoy.network.dns_resolver.cares", TypedConfig: cfg}, nil
}

func pathSDS(dir, name, file string) *tlsv3.SdsSecretConfig {
	return &tlsv3.SdsSecretConfig{Name: name, SdsConfig: &corev3.ConfigSource{ResourceApiVersion: corev3.ApiVersion_V3,
		ConfigSourceSpecifier: &corev3.ConfigSource_PathConfigSource{PathConfigSource: &corev3.PathConfigSource{
			Path: path.Join(dir, file), WatchedDirectory: &corev3.WatchedDirectory{Path: dir}}}}}
}

func socketAddress(host string, port uint32) *corev3.Address {
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: host, PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}}
}

// SDSFiles returns the two path-based SDS documents (file name -> content)
// that point Envoy at the credential files in dir. They never change; the
// PEM files next to them do.
func SDSFiles(dir string) (map[string][]byte, error) {
	file := func(name string) *corev3.DataSource {
		return &corev3.DataSource{Specifier: &corev3.DataSource_Filename{Filename: path.Join(dir, name)}}
	}
	client := &tlsv3.Secret{Name: secretXDSClient, Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
		CertificateChain: file(FileCertChain), PrivateKey: file(FileKey)}}}
	bundle := &tlsv3.Secret{Name: secretXDSCA, Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
		TrustedCa: file(FileRootCert)}}}
	out := map[string][]byte{}
	for name, msg := range map[string]proto.Message{FileClientSDS: client, FileCASDS: bundle} {
		b, err := sdsDocument(msg)
		if err != nil {
			return nil, err
		}
		out[name] = b
	}
	return out, nil
}
