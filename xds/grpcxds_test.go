package xds_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	matcherv3 "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	grpcxds "google.golang.org/grpc/xds"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshd/meshd/ca"
	"github.com/meshd/meshd/xds"
	"github.com/meshd/meshd/xds/resource"
)

// TestGRPCXDSClient drives grpc-go's own xDS client (proxyless gRPC) through
// meshd over mutual TLS: it fetches LDS, RDS, CDS and EDS and completes an
// RPC; then a route it cannot accept is NACKed, and meshd records the NACK
// and does not resend it in a loop.
func TestGRPCXDSClient(t *testing.T) {
	pki := newTestPKI(t)
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	m := startMeshd(t, pki, addr)
	t.Cleanup(func() { m.stop(t) })
	backend := startHealthServer(t)
	if err := setShared(context.Background(), m.pub, proxylessResources(t, backend, "/")); err != nil {
		t.Fatal(err)
	}

	clientID := ca.Identity{TrustDomain: "cluster.local", Namespace: "demo", ServiceAccount: "client"}
	resolver, err := grpcxds.NewXDSResolverWithConfigForTesting(grpcBootstrap(t, pki, addr, clientID, xds.NodeID("demo", "client-0")))
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient("xds:///backend.demo", grpc.WithResolvers(resolver), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true))
	if err != nil || resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("RPC through meshd-configured xDS: %v, %v", resp, err)
	}

	// A route regex grpc-go cannot compile: it must NACK it.
	if err := setShared(context.Background(), m.pub, proxylessResources(t, backend, "[")); err != nil {
		t.Fatal(err)
	}
	node := xds.NodeID("demo", "client-0")
	var nack *xds.NACK
	eventually(t, "route NACK recorded", func() error {
		routes := typeStatus(m, node, resourcev3.RouteType)
		if routes == nil || routes.LastNACK == nil {
			return fmt.Errorf("no NACK yet: %+v", routes)
		}
		nack = routes.LastNACK
		return nil
	})
	if !strings.Contains(nack.Error, "regex") && !strings.Contains(nack.Error, "[") {
		t.Errorf("NACK detail %q does not explain the bad regex", nack.Error)
	}
	// The client keeps its last good config.
	if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Errorf("RPC after the NACK: %v", err)
	}
	// Not resent in a loop: the next route response is the fix, and once
	// the client ACKs it the stream holds exactly one response more than
	// at the NACK and the NACK is still the only one (a server that
	// answered the NACK with the same config would have sent it before the
	// fix, and the client would have NACKed it again).
	st := typeStatus(m, node, resourcev3.RouteType)
	responses, badVersion := st.Responses, st.SentVersion
	if err := setShared(context.Background(), m.pub, proxylessResources(t, backend, "/.*")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the fixed route ACKed", func() error {
		r := typeStatus(m, node, resourcev3.RouteType)
		if r == nil || r.AckedVersion != r.SentVersion || r.SentVersion == badVersion {
			return fmt.Errorf("not yet: %+v", r)
		}
		return nil
	})
	if after := typeStatus(m, node, resourcev3.RouteType); after.Responses != responses+1 || after.NACKs != 1 {
		t.Errorf("route responses %d -> %d and %d NACKs after the fix; want one more response and the one NACK: the bad route was resent", responses, after.Responses, after.NACKs)
	}
}

func typeStatus(m *meshd, node, typeURL string) *xds.TypeStatus {
	for _, p := range m.srv.Proxies() {
		if p.NodeID == node {
			return p.Types[typeURL]
		}
	}
	return nil
}

func startHealthServer(t *testing.T) int {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	healthpb.RegisterHealthServer(s, health.NewServer())
	go func() { _ = s.Serve(lis) }()
	t.Cleanup(s.Stop)
	return lis.Addr().(*net.TCPAddr).Port
}

// proxylessResources: listener backend.demo -> route (prefix match, or a
// safe regex when regex is not "/") -> EDS cluster -> the backend port.
func proxylessResources(t *testing.T, port int, regex string) resource.Resources {
	ads := &corev3.ConfigSource{ResourceApiVersion: corev3.ApiVersion_V3, ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}
	hcm := mustAny(t, &hcmv3.HttpConnectionManager{
		RouteSpecifier: &hcmv3.HttpConnectionManager_Rds{Rds: &hcmv3.Rds{RouteConfigName: "backend-route", ConfigSource: ads}},
		HttpFilters:    []*hcmv3.HttpFilter{{Name: "router", ConfigType: &hcmv3.HttpFilter_TypedConfig{TypedConfig: mustAny(t, &routerv3.Router{})}}},
	})
	match := &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_Prefix{Prefix: "/"}}
	if regex != "/" {
		match = &routev3.RouteMatch{PathSpecifier: &routev3.RouteMatch_SafeRegex{SafeRegex: &matcherv3.RegexMatcher{Regex: regex}}}
	}
	return resource.Resources{
		resourcev3.ListenerType: {&listenerv3.Listener{Name: "backend.demo", ApiListener: &listenerv3.ApiListener{ApiListener: hcm}}},
		resourcev3.RouteType: {&routev3.RouteConfiguration{Name: "backend-route", VirtualHosts: []*routev3.VirtualHost{{
			Name: "backend", Domains: []string{"backend.demo"},
			Routes: []*routev3.Route{{Match: match, Action: &routev3.Route_Route{Route: &routev3.RouteAction{
				ClusterSpecifier: &routev3.RouteAction_Cluster{Cluster: "backend"}}}}},
		}}}},
		resourcev3.ClusterType: {&clusterv3.Cluster{Name: "backend", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
			EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{EdsConfig: ads}, LbPolicy: clusterv3.Cluster_ROUND_ROBIN}},
		resourcev3.EndpointType: {&endpointv3.ClusterLoadAssignment{ClusterName: "backend", Endpoints: []*endpointv3.LocalityLbEndpoints{{
			LoadBalancingWeight: wrapUint32(1), Locality: &corev3.Locality{Region: "test"},
			LbEndpoints: []*endpointv3.LbEndpoint{{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
				Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
					Address: "127.0.0.1", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: uint32(port)}}}}}}}},
		}}}},
	}
}

// grpcBootstrap writes the client's credentials and returns grpc-go's xDS
// bootstrap: mTLS to meshd through the file_watcher-based "tls" creds.
func grpcBootstrap(t *testing.T, pki *testPKI, addr string, id ca.Identity, nodeID string) []byte {
	dir := t.TempDir()
	cert := pki.issue(id, nodeID)
	files := map[string][]byte{"cert.pem": cert.ChainPEM, "key.pem": cert.KeyPEM, "ca.pem": pki.rootPEM}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	b, err := json.Marshal(map[string]any{
		"xds_servers": []any{map[string]any{
			"server_uri": addr, "server_features": []string{"xds_v3"},
			"channel_creds": []any{map[string]any{"type": "tls", "config": map[string]any{
				"ca_certificate_file": filepath.Join(dir, "ca.pem"),
				"certificate_file":    filepath.Join(dir, "cert.pem"),
				"private_key_file":    filepath.Join(dir, "key.pem"),
			}}},
		}},
		"node": map[string]any{"id": nodeID, "metadata": map[string]any{"NAMESPACE": id.Namespace, "SERVICE_ACCOUNT": id.ServiceAccount}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func wrapUint32(v uint32) *wrapperspb.UInt32Value { return wrapperspb.UInt32(v) }
