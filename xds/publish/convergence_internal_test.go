package publish

import (
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	dto "github.com/prometheus/client_model/go"

	"github.com/meshd/meshd/xds/resource"
)

// convergenceSnapshot is a snapshot of one cluster and one endpoint set,
// their contents (and so versions) set by c and e.
func convergenceSnapshot(t *testing.T, c, e string) *resource.Snapshot {
	t.Helper()
	sets, err := resource.Own(resource.Resources{
		resourcev3.ClusterType:  []types.Resource{&clusterv3.Cluster{Name: "c", AltStatName: c}},
		resourcev3.EndpointType: []types.Resource{&endpointv3.ClusterLoadAssignment{ClusterName: "c" + e}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return resource.NewSnapshot(sets)
}

func observed(t *testing.T, p *Publisher) uint64 {
	t.Helper()
	var m dto.Metric
	if err := p.convergence.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetHistogram().GetSampleCount()
}

// TestConvergenceWaitsForEveryMovedType: a change's convergence is
// observed once the proxy ACKed every type the change moved, at the
// version published; an ACK of an older version, of a type not moved or
// not served counts for nothing, and a change published before the first
// was ACKed leaves one observation for both.
func TestConvergenceWaitsForEveryMovedType(t *testing.T) {
	p := New(nil)
	first := convergenceSnapshot(t, "1", "1")
	p.trackLocked("n", first) // the proxy's first snapshot: no change to wait for
	p.changedAt = time.Now()
	next := convergenceSnapshot(t, "2", "2")
	p.trackLocked("n", next)
	version := func(s *resource.Snapshot, typeURL string) string { return s.GetVersion(typeURL) }
	p.OnACK("n", resourcev3.ClusterType, version(first, resourcev3.ClusterType)) // an older version
	p.OnACK("n", resourcev3.ListenerType, "x")                                   // a type not moved
	p.OnACK("n", "type.googleapis.com/unknown", version(next, resourcev3.ClusterType))
	p.OnACK("n", resourcev3.ClusterType, version(next, resourcev3.ClusterType))
	if n := observed(t, p); n != 0 {
		t.Fatalf("observed %d convergences with the endpoints not ACKed", n)
	}
	// Another change moving the endpoints again before they were ACKed.
	last := convergenceSnapshot(t, "2", "3")
	p.trackLocked("n", last)
	p.OnACK("n", resourcev3.EndpointType, version(next, resourcev3.EndpointType))
	if n := observed(t, p); n != 0 {
		t.Fatalf("observed %d convergences on an ACK of a replaced version", n)
	}
	p.OnACK("n", resourcev3.EndpointType, version(last, resourcev3.EndpointType))
	if n := observed(t, p); n != 1 {
		t.Fatalf("observed %d convergences once every moved type was ACKed, want 1", n)
	}
	p.OnACK("n", resourcev3.EndpointType, version(last, resourcev3.EndpointType))
	if n := observed(t, p); n != 1 {
		t.Fatalf("a repeated ACK observed again: %d", n)
	}
}
