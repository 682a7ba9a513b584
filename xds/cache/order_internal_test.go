package cache

import (
	"context"
	"io"
	"log/slog"
	"math/rand/v2"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerv3 "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/meshd/meshd/xds/resource"
)

// TestWatchesAnsweredInADSOrder: a snapshot answers a node's waiting
// watches in ADS order (clusters before endpoints, listeners before
// routes), whatever order they were opened in: a stream reads its
// responses in the order they are queued, and Envoy warms a cluster on its
// endpoints.
func TestWatchesAnsweredInADSOrder(t *testing.T) {
	sets, err := resource.Own(resource.Resources{
		resourcev3.ClusterType:  {&clusterv3.Cluster{Name: "c"}},
		resourcev3.EndpointType: {&endpointv3.ClusterLoadAssignment{ClusterName: "c"}},
		resourcev3.ListenerType: {&listenerv3.Listener{Name: "l"}},
		resourcev3.RouteType:    {&routev3.RouteConfiguration{Name: "r"}},
		resourcev3.SecretType:   {&tlsv3.Secret{Name: "s"}},
	})
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(3, 3))
	node := &corev3.Node{Id: "n"}
	for round := range 20 {
		c := New(slog.New(slog.NewTextHandler(io.Discard, nil)))
		types := resource.Types()
		rng.Shuffle(len(types), func(i, j int) { types[i], types[j] = types[j], types[i] })
		delta := make(chan cachev3.DeltaResponse, 2*len(types))
		sotw := make(chan cachev3.Response, 2*len(types))
		for _, typ := range types {
			if _, err := c.CreateDeltaWatch(&discoveryv3.DeltaDiscoveryRequest{Node: node, TypeUrl: typ}, sub{wildcard: true}, delta); err != nil {
				t.Fatal(err)
			}
			if _, err := c.CreateWatch(&discoveryv3.DiscoveryRequest{Node: node, TypeUrl: typ}, sub{wildcard: true}, sotw); err != nil {
				t.Fatal(err)
			}
		}
		if err := c.SetSnapshot(context.Background(), "n", resource.NewSnapshot(sets)); err != nil {
			t.Fatal(err)
		}
		for i, want := range resource.Types() {
			if got := (<-delta).GetDeltaRequest().GetTypeUrl(); got != want {
				t.Fatalf("round %d: delta response %d is of %s, want %s (opened in order %v)", round, i, got, want, types)
			}
			if got := (<-sotw).GetRequest().GetTypeUrl(); got != want {
				t.Fatalf("round %d: SotW response %d is of %s, want %s (opened in order %v)", round, i, got, want, types)
			}
		}
	}
}
