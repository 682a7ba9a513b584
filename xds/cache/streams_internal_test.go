package cache

import (
	"log/slog"
	"testing"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/meshd/meshd/xds/resource"
)

// TestHeldByStream: the record of what a stream holds is found by the
// stream's latest noted request, is the same for every request of that
// stream and type, is the stream's own, and is forgotten when the stream
// closes; a request of no noted stream gets a record of its own.
func TestHeldByStream(t *testing.T) {
	c := New(slog.New(slog.DiscardHandler))
	first := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.ClusterType}
	c.NoteDeltaRequest(1, first)
	h := heldIn[deltaHeld](c, first, resourcev3.ClusterType)
	h.sent = "v1"
	next := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.ClusterType, ResponseNonce: "1"}
	c.NoteDeltaRequest(1, next)
	if got := heldIn[deltaHeld](c, next, resourcev3.ClusterType); got != h {
		t.Fatal("the stream's next request found another record")
	}
	if got := heldIn[deltaHeld](c, first, resourcev3.ClusterType); got == h {
		t.Fatal("a request no longer the stream's latest found its record")
	}
	if got := heldIn[deltaHeld](c, next, resourcev3.EndpointType); got == h {
		t.Fatal("another type shares the record")
	}
	other := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.ClusterType}
	c.NoteDeltaRequest(2, other)
	if got := heldIn[deltaHeld](c, other, resourcev3.ClusterType); got == h || got.sent != "" {
		t.Fatal("another stream shares the record")
	}
	sotw := &discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ClusterType}
	c.NoteRequest(3, sotw)
	if a, b := heldIn[sotwHeld](c, sotw, resourcev3.ClusterType), heldIn[sotwHeld](c, sotw, resourcev3.ClusterType); a != b {
		t.Fatal("a SotW stream's record is not kept")
	}
	for id := range int64(4) {
		c.StreamClosed(id)
	}
	if n, m := len(c.held.byID), len(c.held.reqs); n != 0 || m != 0 {
		t.Fatalf("closed streams left %d records and %d requests", n, m)
	}
	if got := heldIn[deltaHeld](c, next, resourcev3.ClusterType); got == h || got.sent != "" {
		t.Fatal("a closed stream's record was found")
	}
	unnoted := &discoveryv3.DeltaDiscoveryRequest{}
	if a, b := heldIn[deltaHeld](c, unnoted, resourcev3.ClusterType), heldIn[deltaHeld](c, unnoted, resourcev3.ClusterType); a == b {
		t.Fatal("a request of no stream got a kept record")
	}
}

// heldIn is heldOf's record alone.
func heldIn[H sotwHeld | deltaHeld](c *Cache, req any, typeURL string) *H {
	h, _, _, _ := heldOf[H](c, req, typeURL, resource.Order(typeURL), sub{})
	return h
}
