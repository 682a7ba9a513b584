package xds_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	directv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/direct_response/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshd/meshd/internal/testenv"
	"github.com/meshd/meshd/xds"
)

// TestEnvoyReceivesListenerOverADS starts the ADS server, publishes a
// snapshot with one listener, and checks that a real Envoy connected over
// ADS (SotW and delta) holds that listener.
func TestEnvoyReceivesListenerOverADS(t *testing.T) {
	for _, apiType := range []string{"GRPC", "DELTA_GRPC"} {
		t.Run(apiType, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			srv, err := xds.New(xds.Config{Addr: "127.0.0.1:0"})
			if err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- srv.Start(ctx) }()
			// Cleanups run last-in first-out: Envoy (registered later) stops first.
			t.Cleanup(func() {
				cancel()
				if err := <-done; err != nil {
					t.Errorf("server: %v", err)
				}
			})
			snap, err := cachev3.NewSnapshot("v1", map[resourcev3.Type][]types.Resource{
				resourcev3.ListenerType: {directListener(t, "smoke-listener")},
			})
			if err != nil {
				t.Fatal(err)
			}
			if err := srv.Cache.SetSnapshot(ctx, "node-a", snap); err != nil {
				t.Fatal(err)
			}
			envoy := testenv.StartEnvoy(t, testenv.EnvoyOptions{Bootstrap: adsBootstrap("node-a", apiType, srv.Addr().String())})
			wctx, wcancel := context.WithTimeout(ctx, 20*time.Second)
			defer wcancel()
			if err := envoy.WaitReady(wctx); err != nil {
				t.Fatal(err)
			}
			var dump []byte
			for !strings.Contains(string(dump), `"name": "smoke-listener"`) {
				if dump, err = envoy.Admin(wctx, "/config_dump?resource=dynamic_listeners"); err != nil {
					t.Fatalf("Envoy never held listener smoke-listener: %v\nlast dump:\n%.2000s", err, dump)
				}
				time.Sleep(100 * time.Millisecond)
			}
		})
	}
}

func directListener(t *testing.T, name string) *listenerv3.Listener {
	cfg, err := anypb.New(&directv3.Config{Response: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: "hi"}}})
	if err != nil {
		t.Fatal(err)
	}
	return &listenerv3.Listener{
		Name: name,
		Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
			Address: "127.0.0.1", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 0}}}},
		FilterChains: []*listenerv3.FilterChain{{Filters: []*listenerv3.Filter{{
			Name: "envoy.filters.network.direct_response", ConfigType: &listenerv3.Filter_TypedConfig{TypedConfig: cfg}}}}},
	}
}

func adsBootstrap(node, apiType, addr string) string {
	host, port, _ := strings.Cut(addr, ":")
	return fmt.Sprintf(`
node: {id: %s, cluster: smoke}
dynamic_resources:
  ads_config:
    api_type: %s
    transport_api_version: V3
    grpc_services: [{envoy_grpc: {cluster_name: xds}}]
  lds_config: {ads: {}, resource_api_version: V3}
  cds_config: {ads: {}, resource_api_version: V3}
static_resources:
  clusters:
  - name: xds
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
    load_assignment:
      cluster_name: xds
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: %s, port_value: %s}}}}]}]
`, node, apiType, host, port)
}
