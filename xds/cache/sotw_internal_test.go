package cache

import (
	"fmt"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"

	"github.com/meshd/meshd/xds/resource"
)

// A SotW response naming every resource of the set carries the set's one
// shared encoding (what a connecting proxy asks for), one naming part of it
// only those resources; both decode to exactly what was asked for.
func TestSotwWholeSetShared(t *testing.T) {
	var items []types.Resource
	var all []string
	for i := range 50 {
		name := fmt.Sprintf("c%02d", i)
		items = append(items, &clusterv3.Cluster{Name: name, AltStatName: "x"})
		all = append(all, name)
	}
	sets, err := resource.Own(resource.Resources{resourcev3.ClusterType: items})
	if err != nil {
		t.Fatal(err)
	}
	set := sets[resourcev3.ClusterType]
	req := &discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ClusterType}
	for _, tc := range []struct {
		names  []string
		shared bool
	}{{all, true}, {all[3:9], false}} {
		r := &sotwResponse{req: req, held: &sotwHeld{}, set: set, names: tc.names}
		resp, err := r.GetDiscoveryResponse()
		if err != nil {
			t.Fatal(err)
		}
		if shared := len(resp.ProtoReflect().GetUnknown()) > 0; shared != tc.shared {
			t.Errorf("%d of %d names: shared encoding %v, want %v", len(tc.names), len(all), shared, tc.shared)
		}
		b, err := proto.Marshal(resp)
		if err != nil {
			t.Fatal(err)
		}
		var back discoveryv3.DiscoveryResponse
		if err := proto.Unmarshal(b, &back); err != nil {
			t.Fatal(err)
		}
		got := map[string]bool{}
		for _, a := range back.GetResources() {
			var c clusterv3.Cluster
			if err := a.UnmarshalTo(&c); err != nil {
				t.Fatal(err)
			}
			got[c.GetName()] = true
		}
		if len(got) != len(tc.names) || len(back.GetResources()) != len(tc.names) {
			t.Fatalf("%d names asked: %d resources sent (%d distinct)", len(tc.names), len(back.GetResources()), len(got))
		}
		for _, n := range tc.names {
			if !got[n] {
				t.Fatalf("%s asked, not sent", n)
			}
		}
	}
}
