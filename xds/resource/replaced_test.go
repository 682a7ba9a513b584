package resource_test

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"reflect"
	"slices"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"

	"github.com/meshd/meshd/internal/vec"
	"github.com/meshd/meshd/xds/resource"
)

// TestReplacedIsBuilt: sets prepared from the sets they replace (the same
// resource values kept, some replaced by new values of the same names, as
// an endpoint change does; some rounds adding or removing names) are, every
// round, what preparing the same resources from nothing gives: version,
// per-resource versions, encodings, references, whole-set bodies, and what
// changed since the set before.
func TestReplacedIsBuilt(t *testing.T) {
	r := rand.New(rand.NewPCG(5, 9))
	names := func(n int) []string {
		var out []string
		for i := range n {
			out = append(out, fmt.Sprintf("svc%03d", i))
		}
		return out
	}
	cur := map[resourcev3.Type][]types.Resource{}
	for _, name := range names(400) {
		cur[resourcev3.EndpointType] = append(cur[resourcev3.EndpointType], cla(name, r.IntN(3)))
		cur[resourcev3.ClusterType] = append(cur[resourcev3.ClusterType], edsCluster(name))
	}
	var enc resource.Encoder
	var prev, older map[resourcev3.Type]resource.Set
	var last resource.Lists
	replacedRounds := 0
	for step := range 300 {
		// Every other round, the lists of the same length are the last
		// round's patched (as the translator hands them on: the chunks not
		// touched are the last lists'); the others are new lists.
		res, lists := resource.Resources{}, resource.Lists{}
		for typ, items := range cur {
			res[typ] = slices.Clone(items)
			lists[typ] = vec.Of(res[typ])
			if was := last[typ]; step%2 == 1 && was.Len() == len(items) {
				p := was.Patch()
				for i, x := range items {
					if x != was.At(i) {
						p.Set(i, x)
					}
				}
				lists[typ] = p.Vec()
			}
		}
		last = lists
		round := enc.Begin()
		got, err := round.Shared(lists, prev)
		if err != nil {
			t.Fatal(err)
		}
		round.End()
		want, err := (&resource.Encoder{}).Shared(resource.ListsOf(res), nil)
		if err != nil {
			t.Fatal(err)
		}
		for typ, w := range want {
			g := got[typ]
			if older != nil { // what changed since a set before the one replaced
				if err := sameSet(g.Since(older[typ]), w.Since(older[typ]), typ); err != nil {
					t.Fatalf("step %d, %s, since two sets before: %v", step, typ, err)
				}
			}
			if prev != nil {
				if g.From() == prev[typ].Version() {
					replacedRounds++
				}
				g, w = g.Since(prev[typ]), w.Since(prev[typ])
			}
			if err := sameSet(g, w, typ); err != nil {
				t.Fatalf("step %d, %s: %v", step, typ, err)
			}
			// go-control-plane's view of the set, as its snapshot gives it.
			gs := resource.NewSnapshot(map[resourcev3.Type]resource.Set{typ: g})
			ws := resource.NewSnapshot(map[resourcev3.Type]resource.Set{typ: w})
			if !reflect.DeepEqual(gs.GetResourcesAndTTL(typ), ws.GetResourcesAndTTL(typ)) || gs.GetVersion(typ) != ws.GetVersion(typ) ||
				!reflect.DeepEqual(gs.GetVersionMap(typ), ws.GetVersionMap(typ)) {
				t.Fatalf("step %d, %s: go-control-plane's view differs", step, typ)
			}
			// A proxy's own resources over the set: one in place of a
			// shared one, one of its own.
			own, err := resource.Own(resource.Resources{typ: {edsCluster(fmt.Sprintf("svc%03d", step%400)), edsCluster("own")}})
			if err != nil {
				t.Fatal(err)
			}
			if err := sameSet(resource.Merge(g, own[typ]), resource.Merge(w, own[typ]), typ); err != nil {
				t.Fatalf("step %d, %s, merged: %v", step, typ, err)
			}
		}
		prev, older = got, prev
		// The next round: most endpoint sets kept, some replaced (with the
		// same content or another), sometimes a service added or gone.
		eps, cls := cur[resourcev3.EndpointType], cur[resourcev3.ClusterType]
		for i := range eps {
			switch r.IntN(100) {
			case 0:
				eps[i] = cla(name(eps[i]), r.IntN(3))
			case 1:
				eps[i] = proto.Clone(eps[i].(*endpointv3.ClusterLoadAssignment)) // the same content, a new value
			}
		}
		switch r.IntN(10) {
		case 0:
			i := r.IntN(len(eps))
			eps, cls = slices.Delete(eps, i, i+1), slices.Delete(cls, i, i+1)
		case 1:
			n := fmt.Sprintf("new%03d", step)
			eps, cls = append(eps, cla(n, 1)), append(cls, edsCluster(n))
		}
		cur[resourcev3.EndpointType], cur[resourcev3.ClusterType] = eps, cls
	}
	if replacedRounds < 100 {
		t.Fatalf("only %d sets were made from the ones they replace", replacedRounds)
	}
}

func name(r types.Resource) string { return r.(*endpointv3.ClusterLoadAssignment).ClusterName }

func cla(name string, port int) *endpointv3.ClusterLoadAssignment {
	return &endpointv3.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointv3.LocalityLbEndpoints{{
		LbEndpoints: []*endpointv3.LbEndpoint{{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
			Hostname: fmt.Sprintf("host-%d", port)}}}}}}}
}

func edsCluster(name string) *clusterv3.Cluster {
	return &clusterv3.Cluster{Name: name, ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
		EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{ServiceName: name}}
}

func sameSet(g, w resource.Set, typ resourcev3.Type) error {
	if g.Version() != w.Version() || !reflect.DeepEqual(g.VersionMap(), w.VersionMap()) || g.Len() != w.Len() {
		return fmt.Errorf("version %s (%d), want %s (%d)", g.Version(), g.Len(), w.Version(), w.Len())
	}
	for n, v := range w.Versions() {
		if got, ok := g.VersionOf(n); !ok || got != v {
			return fmt.Errorf("%s: version %q (%v), want %q", n, got, ok, v)
		}
	}
	if _, ok := g.VersionOf("absent"); ok || g.Has("absent") {
		return fmt.Errorf("a name not in the set is there")
	}
	if !reflect.DeepEqual(g.Refs(), w.Refs()) {
		return fmt.Errorf("refs %v, want %v", g.Refs(), w.Refs())
	}
	if !slices.Equal(g.Changed(), w.Changed()) || !slices.Equal(g.Removed(), w.Removed()) {
		return fmt.Errorf("changed %v removed %v, want %v %v", g.Changed(), g.Removed(), w.Changed(), w.Removed())
	}
	for n := range w.VersionMap() {
		ge, err1 := g.Encoding(n)
		we, err2 := w.Encoding(n)
		if err1 != nil || err2 != nil || !bytes.Equal(ge, we) || !g.Has(n) {
			return fmt.Errorf("%s: encoding differs (%v, %v)", n, err1, err2)
		}
	}
	gb, _, err1 := g.SotwBody(typ)
	wb, _, err2 := w.SotwBody(typ)
	if err1 != nil || err2 != nil || !bytes.Equal(gb, wb) {
		return fmt.Errorf("SotW bodies differ (%v, %v)", err1, err2)
	}
	gb, _, err1 = g.DeltaBody(typ)
	wb, _, err2 = w.DeltaBody(typ)
	if err1 != nil || err2 != nil || !bytes.Equal(gb, wb) {
		return fmt.Errorf("delta bodies differ (%v, %v)", err1, err2)
	}
	return nil
}
