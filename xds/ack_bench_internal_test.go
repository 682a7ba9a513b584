package xds

import (
	"fmt"
	"log/slog"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"k8s.io/utils/clock"

	"github.com/meshd/meshd/ca"
	"github.com/meshd/meshd/xds/cache"
)

// BenchmarkResponseAndACK is meshd's bookkeeping for one endpoint change
// at 1,000 delta streams: each is sent a response and ACKs it (the
// callbacks go-control-plane's server calls, without the server).
func BenchmarkResponseAndACK(b *testing.B) {
	const n = 1000
	c := &callbacks{log: slog.New(slog.DiscardHandler), streams: newStreams(clock.RealClock{}), metrics: newMetrics(nil),
		cache: cache.New(slog.New(slog.DiscardHandler))}
	for i := range n {
		node := fmt.Sprintf("load-%d.demo", i)
		c.streams.open(int64(i), Peer{Identity: ca.Identity{TrustDomain: "cluster.local", Namespace: "demo", ServiceAccount: "load"}, NodeID: node}, true, "")
		if err := c.OnStreamDeltaRequest(int64(i), &discoveryv3.DeltaDiscoveryRequest{Node: &corev3.Node{Id: node}, TypeUrl: resourcev3.EndpointType}); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportAllocs()
	round := 0
	for b.Loop() {
		round++
		nonce, version := fmt.Sprint(round), fmt.Sprintf("v%d", round)
		for i := range n {
			c.OnStreamDeltaResponse(int64(i), nil, &discoveryv3.DeltaDiscoveryResponse{TypeUrl: resourcev3.EndpointType, Nonce: nonce, SystemVersionInfo: version})
			if err := c.OnStreamDeltaRequest(int64(i), &discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResponseNonce: nonce}); err != nil {
				b.Fatal(err)
			}
		}
	}
}

// A stream remembers the version sent with each of its last 16 responses,
// by type and nonce; older ones are forgotten.
func TestSentNonces(t *testing.T) {
	var r sentNonces
	for i := range 40 {
		r.add(resourcev3.EndpointType, fmt.Sprint(i), fmt.Sprintf("v%d", i))
	}
	r.add(resourcev3.ClusterType, "39", "c39")
	for i, want := range map[int]string{39: "v39", 25: "v25", 24: "", 0: ""} {
		if got := r.version(resourcev3.EndpointType, fmt.Sprint(i)); got != want {
			t.Errorf("endpoint nonce %d: version %q, want %q", i, got, want)
		}
	}
	if got := r.version(resourcev3.ClusterType, "39"); got != "c39" {
		t.Errorf("cluster nonce 39: version %q, want c39 (types are apart)", got)
	}
	if got := r.version(resourcev3.RouteType, "39"); got != "" {
		t.Errorf("route nonce 39: version %q, want none", got)
	}
	if got := r.version(resourcev3.EndpointType, ""); got != "" {
		t.Errorf("empty nonce: version %q", got)
	}
}
