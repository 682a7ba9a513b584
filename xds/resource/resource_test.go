package resource_test

import (
	"bytes"
	"fmt"
	"slices"
	"strings"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshd/meshd/xds/resource"
)

func clusters(names ...string) []types.Resource {
	out := make([]types.Resource, len(names))
	for i, n := range names {
		out[i] = &clusterv3.Cluster{Name: n}
	}
	return out
}

// TestWholeSetBodies: a shared set's and a merged set's whole-set bodies
// (the shared encoding plus the proxy's own resources) and Encoded values
// decode to every resource of the set, once, at the set's versions; a
// proxy's own resource stands over a shared one of the same name.
func TestWholeSetBodies(t *testing.T) {
	var enc resource.Encoder
	shared, err := enc.Shared(resource.ListsOf(resource.Resources{resourcev3.ClusterType: clusters("a", "b", "c")}), nil)
	if err != nil {
		t.Fatal(err)
	}
	own, err := resource.Own(resource.Resources{resourcev3.ClusterType: clusters("local")})
	if err != nil {
		t.Fatal(err)
	}
	over, err := resource.Own(resource.Resources{resourcev3.ClusterType: {&clusterv3.Cluster{Name: "b", AltStatName: "own"}, &clusterv3.Cluster{Name: "local"}}})
	if err != nil {
		t.Fatal(err)
	}
	// A cluster as "name", or "name/alt stat name" when it has one.
	label := func(a *anypb.Any) string {
		var c clusterv3.Cluster
		if err := a.UnmarshalTo(&c); err != nil {
			t.Fatal(err)
		}
		return strings.TrimSuffix(c.GetName()+"/"+c.GetAltStatName(), "/")
	}
	for _, tc := range []struct {
		name string
		set  resource.Set
		want []string
	}{
		{"shared", shared[resourcev3.ClusterType], []string{"a", "b", "c"}},
		{"merged", resource.Merge(shared[resourcev3.ClusterType], own[resourcev3.ClusterType]), []string{"a", "b", "c", "local"}},
		{"replacing", resource.Merge(shared[resourcev3.ClusterType], over[resourcev3.ClusterType]), []string{"a", "b/own", "c", "local"}},
	} {
		name, set := tc.name, tc.set
		body, rest, err := set.SotwBody(resourcev3.ClusterType)
		if err != nil {
			t.Fatal(err)
		}
		var sotw discoveryv3.DiscoveryResponse
		if err := proto.Unmarshal(body, &sotw); err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, a := range append(sotw.GetResources(), rest...) {
			got = append(got, label(a))
		}
		body, deltaRest, err := set.DeltaBody(resourcev3.ClusterType)
		if err != nil {
			t.Fatal(err)
		}
		var delta discoveryv3.DeltaDiscoveryResponse
		if err := proto.Unmarshal(body, &delta); err != nil {
			t.Fatal(err)
		}
		var gotDelta []string
		for _, r := range append(delta.GetResources(), deltaRest...) {
			if r.GetVersion() != set.VersionMap()[r.GetName()] {
				t.Errorf("%s: %s at version %q, the set has %q", name, r.GetName(), r.GetVersion(), set.VersionMap()[r.GetName()])
			}
			gotDelta = append(gotDelta, label(r.GetResource()))
		}
		slices.Sort(got)
		slices.Sort(gotDelta)
		if !slices.Equal(got, tc.want) || !slices.Equal(gotDelta, tc.want) || set.Len() != len(tc.want) {
			t.Errorf("%s: SotW body holds %v, delta body %v, Len %d; want %v", name, got, gotDelta, set.Len(), tc.want)
		}
		// Encoded, in the order asked.
		var ask []string
		for _, w := range slices.Backward(tc.want) {
			n, _, _ := strings.Cut(w, "/")
			ask = append(ask, n)
		}
		picked, err := set.Encoded(resourcev3.ClusterType, ask)
		if err != nil {
			t.Fatal(err)
		}
		var gotPicked []string
		for _, a := range picked {
			gotPicked = append(gotPicked, label(a))
		}
		wantPicked := slices.Clone(tc.want)
		slices.Reverse(wantPicked)
		if !slices.Equal(gotPicked, wantPicked) {
			t.Errorf("%s: Encoded(%v) = %v, want %v", name, ask, gotPicked, wantPicked)
		}
	}
}

// TestRoundsReuseEncodings: a round encodes only resource values the last
// round did not see; versions are content hashes either way, and Since
// names what changed.
func TestRoundsReuseEncodings(t *testing.T) {
	var enc resource.Encoder
	kept, moved := &clusterv3.Cluster{Name: "kept"}, &clusterv3.Cluster{Name: "moved"}
	round := enc.Begin()
	first, err := round.Shared(resource.ListsOf(resource.Resources{resourcev3.ClusterType: {kept, moved}}), nil)
	if err != nil {
		t.Fatal(err)
	}
	round.End()
	moved = &clusterv3.Cluster{Name: "moved", AltStatName: "new"}
	round = enc.Begin()
	second, err := round.Shared(resource.ListsOf(resource.Resources{resourcev3.ClusterType: {kept, moved, &clusterv3.Cluster{Name: "added"}}}), nil)
	if err != nil {
		t.Fatal(err)
	}
	round.End()
	a, b := first[resourcev3.ClusterType], second[resourcev3.ClusterType].Since(first[resourcev3.ClusterType])
	ka, _ := a.Encoding("kept")
	kb, _ := b.Encoding("kept")
	if &ka[0] != &kb[0] {
		t.Error("an unchanged resource value was encoded again")
	}
	if a.VersionMap()["kept"] != b.VersionMap()["kept"] || a.VersionMap()["moved"] == b.VersionMap()["moved"] {
		t.Errorf("versions: first %v, second %v", a.VersionMap(), b.VersionMap())
	}
	if b.From() != a.Version() || fmt.Sprint(b.Changed(), b.Removed()) != "[added moved] []" {
		t.Errorf("since the first set: from %q (want %q), changed %v, removed %v", b.From(), a.Version(), b.Changed(), b.Removed())
	}
	if a.From() != "" || a.Changed() != nil {
		t.Error("Since changed the set it was called on")
	}
}

// A set has the same names as another when it is that set, or was made
// from it with nothing added or removed, whatever changed in content.
func TestSameNames(t *testing.T) {
	var enc resource.Encoder
	set := func(cs ...types.Resource) resource.Set {
		t.Helper()
		s, err := enc.Shared(resource.ListsOf(resource.Resources{resourcev3.ClusterType: cs}), nil)
		if err != nil {
			t.Fatal(err)
		}
		return s[resourcev3.ClusterType]
	}
	old := set(clusters("a", "b")...)
	changed := set(&clusterv3.Cluster{Name: "a", AltStatName: "x"}, &clusterv3.Cluster{Name: "b"})
	for _, tc := range []struct {
		name string
		v    resource.Set
		want bool
	}{
		{"the same content", set(clusters("a", "b")...), true},
		{"changed content, since old", changed.Since(old), true},
		{"changed content, not known to be from old", changed, false},
		{"one added", set(clusters("a", "b", "c")...).Since(old), false},
		{"one removed", set(clusters("a")...).Since(old), false},
		{"one renamed", set(clusters("a", "c")...).Since(old), false},
		{"from another set", changed.Since(set(clusters("a")...)), false},
	} {
		if got := tc.v.SameNames(old); got != tc.want {
			t.Errorf("%s: SameNames %v, want %v", tc.name, got, tc.want)
		}
	}
}

// Two resources of one type and name are refused: a client would keep one
// of them, and which one would be chance.
func TestDuplicateNamesRefused(t *testing.T) {
	var enc resource.Encoder
	dup := []types.Resource{&clusterv3.Cluster{Name: "a"}, &clusterv3.Cluster{Name: "a", AltStatName: "x"}}
	if _, err := enc.Shared(resource.ListsOf(resource.Resources{resourcev3.ClusterType: dup}), nil); err == nil {
		t.Error("a shared set with two clusters named a was prepared")
	}
	if _, err := resource.Own(resource.Resources{resourcev3.ClusterType: dup}); err == nil {
		t.Error("an own set with two clusters named a was prepared")
	}
}

// A few names of a large set are encoded alone, once for every caller;
// they decode to the same bytes as the whole set's Any values, which later
// calls take once made.
func TestEncodedFew(t *testing.T) {
	var enc resource.Encoder
	var names []string
	for i := range 100 {
		names = append(names, fmt.Sprintf("c%03d", i))
	}
	sets, err := enc.Shared(resource.ListsOf(resource.Resources{resourcev3.ClusterType: clusters(names...)}), nil)
	if err != nil {
		t.Fatal(err)
	}
	set := sets[resourcev3.ClusterType]
	few := []string{"c007", "c042", "c099"}
	check := func(got []*anypb.Any, names []string) {
		t.Helper()
		for i, a := range got {
			want, err := set.Encoding(names[i])
			if err != nil || a.GetTypeUrl() != resourcev3.ClusterType || !bytes.Equal(a.GetValue(), want) {
				t.Fatalf("%s: Any %v, want the encoding of %s (%v)", names[i], a, names[i], err)
			}
		}
	}
	first, err := set.Encoded(resourcev3.ClusterType, few)
	if err != nil {
		t.Fatal(err)
	}
	check(first, few)
	again, err := set.Encoded(resourcev3.ClusterType, few[:2])
	if err != nil {
		t.Fatal(err)
	}
	if again[0] != first[0] || again[1] != first[1] {
		t.Error("the few names' Any values were made again for a second caller")
	}
	all, err := set.Encoded(resourcev3.ClusterType, names)
	if err != nil {
		t.Fatal(err)
	}
	check(all, names)
	after, err := set.Encoded(resourcev3.ClusterType, few)
	if err != nil {
		t.Fatal(err)
	}
	check(after, few)
	if after[0] != all[7] {
		t.Error("once the whole set's Any values are made, a few names do not take them")
	}
}

// TestOwnEncoderAgreesWithOwn: the own sets an OwnEncoder prepares, over
// rounds where proxies share values, keep values of the round before, and
// replace one, have Own's versions, per resource and per set.
func TestOwnEncoderAgreesWithOwn(t *testing.T) {
	var enc resource.OwnEncoder
	shared := &clusterv3.Cluster{Name: "per-client", AltStatName: "zone-a"}
	inbound := &clusterv3.Cluster{Name: "inbound"}
	for round, perClient := range []*clusterv3.Cluster{shared, shared, {Name: "per-client", AltStatName: "zone-a, moved"}} {
		r := enc.Begin()
		for proxy := range 3 {
			res := resource.Resources{resourcev3.ClusterType: {inbound, perClient, &clusterv3.Cluster{Name: fmt.Sprintf("own-%d", proxy)}}}
			got, err := r.Own(res)
			if err != nil {
				t.Fatal(err)
			}
			want, err := resource.Own(res)
			if err != nil {
				t.Fatal(err)
			}
			g, w := got[resourcev3.ClusterType], want[resourcev3.ClusterType]
			if g.Version() != w.Version() || fmt.Sprint(g.VersionMap()) != fmt.Sprint(w.VersionMap()) {
				t.Errorf("round %d, proxy %d: versions %s %v, Own's %s %v", round, proxy, g.Version(), g.VersionMap(), w.Version(), w.VersionMap())
			}
		}
		r.End()
	}
}
