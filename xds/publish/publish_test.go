package publish_test

import (
	"context"
	"errors"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"

	"github.com/meshd/meshd/xds/publish"
	"github.com/meshd/meshd/xds/resource"
)

const node = "web-0.demo"

// shared is a cluster taking its endpoints over ADS and its endpoint set,
// whose endpoint listens on port.
func shared(port uint32) resource.Resources {
	ads := &corev3.ConfigSource{ResourceApiVersion: corev3.ApiVersion_V3, ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}
	return resource.Resources{
		resourcev3.ClusterType: {&clusterv3.Cluster{Name: "backend", ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
			EdsClusterConfig: &clusterv3.Cluster_EdsClusterConfig{EdsConfig: ads}}},
		resourcev3.EndpointType: {&endpointv3.ClusterLoadAssignment{ClusterName: "backend", Endpoints: []*endpointv3.LocalityLbEndpoints{{
			LbEndpoints: []*endpointv3.LbEndpoint{{HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
				Address: &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
					Address: "127.0.0.1", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port}}}}}}}}}}},
		},
	}
}

// secrets are a proxy's two secrets (a certificate and a bundle, inline).
func secrets() []types.Resource {
	inline := func(s string) *corev3.DataSource {
		return &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{InlineString: s}}
	}
	return []types.Resource{
		&tlsv3.Secret{Name: "default", Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
			CertificateChain: inline("chain"), PrivateKey: inline("key")}}},
		&tlsv3.Secret{Name: "ROOTCA", Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			TrustedCa: inline("roots")}}},
	}
}

// TestVersionsAreContentHashes: two publishers (two replicas) given the same
// resources in a different order publish the same versions; a change of
// content changes the version; nothing is published before the secrets.
func TestVersionsAreContentHashes(t *testing.T) {
	ctx := context.Background()
	versions := func(secretSet []types.Resource, port uint32) map[string]string {
		cache := cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil)
		pub := publish.New(cache)
		if err := pub.SetAll(ctx, time.Time{}, shared(port), nil); err != nil {
			t.Fatal(err)
		}
		if _, err := cache.GetSnapshot(node); err == nil {
			t.Fatal("snapshot published before the proxy's secrets")
		}
		if err := pub.SetProxy(ctx, node, resource.Resources{resourcev3.SecretType: secretSet}); err != nil {
			t.Fatal(err)
		}
		snap, err := cache.GetSnapshot(node)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]string{}
		for _, typ := range resource.Types() {
			out[typ] = snap.GetVersion(typ)
		}
		return out
	}
	s := secrets()
	a, b := versions(s, 8080), versions([]types.Resource{s[1], s[0]}, 8080)
	for typ, v := range a {
		if v == "" || b[typ] != v {
			t.Errorf("%s: replica versions %q and %q differ", typ, v, b[typ])
		}
	}
	c := versions(s, 9090) // endpoint port changed
	if c[resourcev3.EndpointType] == a[resourcev3.EndpointType] {
		t.Error("endpoint content changed but its version did not")
	}
	if c[resourcev3.ClusterType] != a[resourcev3.ClusterType] {
		t.Error("cluster version changed though clusters did not")
	}
}

// Shared sets that reference what they lack are refused, also when they
// replace complete ones, whatever moved: an endpoint set gone or renamed,
// a cluster naming another. An endpoint change is published.
func TestIncompleteSharedIsRefused(t *testing.T) {
	ctx := context.Background()
	renamed := func(res resource.Resources, typ, name string) resource.Resources {
		out := resource.Resources{}
		for k, v := range res {
			out[k] = v
		}
		switch r := res[typ][0].(type) {
		case *clusterv3.Cluster:
			c := proto.Clone(r).(*clusterv3.Cluster)
			c.Name = name
			out[typ] = []types.Resource{c}
		case *endpointv3.ClusterLoadAssignment:
			e := proto.Clone(r).(*endpointv3.ClusterLoadAssignment)
			e.ClusterName = name
			out[typ] = []types.Resource{e}
		}
		return out
	}
	for _, tc := range []struct {
		name string
		next resource.Resources
		ok   bool
	}{
		{"endpoint change", shared(9090), true},
		{"endpoint set gone", resource.Resources{resourcev3.ClusterType: shared(8080)[resourcev3.ClusterType]}, false},
		{"endpoint set renamed", renamed(shared(9090), resourcev3.EndpointType, "other"), false},
		{"cluster renamed", renamed(shared(8080), resourcev3.ClusterType, "other"), false},
		{"cluster naming another endpoint set", func() resource.Resources {
			res := shared(8080)
			c := proto.Clone(res[resourcev3.ClusterType][0]).(*clusterv3.Cluster)
			c.EdsClusterConfig.ServiceName = "other"
			res[resourcev3.ClusterType] = []types.Resource{c}
			return res
		}(), false},
	} {
		pub := publish.New(cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil))
		if err := pub.SetAll(ctx, time.Time{}, shared(8080), nil); err != nil {
			t.Fatal(err)
		}
		if err := pub.SetAll(ctx, time.Time{}, tc.next, nil); (err == nil) != tc.ok {
			t.Errorf("%s: published: %v, want %v (error %v)", tc.name, err == nil, tc.ok, err)
		}
	}
}

// TestIncompleteProxyIsRefused: a proxy's snapshot whose own resources
// reference what neither they nor the shared ones have is refused, whether
// its own resources or the shared ones moved; an endpoint change (the
// completeness check skipped: nothing it reads moved) is published.
func TestIncompleteProxyIsRefused(t *testing.T) {
	ctx := context.Background()
	ads := &corev3.ConfigSource{ResourceApiVersion: corev3.ApiVersion_V3, ConfigSourceSpecifier: &corev3.ConfigSource_Ads{Ads: &corev3.AggregatedConfigSource{}}}
	own := func(endpoints string) map[string]resource.Resources {
		return map[string]resource.Resources{node: {resourcev3.SecretType: secrets(), resourcev3.ClusterType: {&clusterv3.Cluster{Name: "mine",
			ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_EDS},
			EdsClusterConfig:     &clusterv3.Cluster_EdsClusterConfig{EdsConfig: ads, ServiceName: endpoints}}}}}
	}
	renamed := shared(8080)
	c := proto.Clone(renamed[resourcev3.ClusterType][0]).(*clusterv3.Cluster)
	c.Name = "other"
	e := proto.Clone(renamed[resourcev3.EndpointType][0]).(*endpointv3.ClusterLoadAssignment)
	e.ClusterName = "other"
	renamed = resource.Resources{resourcev3.ClusterType: {c}, resourcev3.EndpointType: {e}}

	cache := cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil)
	pub := publish.New(cache)
	if err := pub.SetAll(ctx, time.Time{}, shared(8080), own("backend")); err != nil {
		t.Fatal(err)
	}
	checks := pub.Checks()
	if checks == 0 {
		t.Fatal("the first snapshot was not checked for completeness")
	}
	for i, port := range []uint32{9090, 8080, 9090} {
		if err := pub.SetAll(ctx, time.Time{}, shared(port), nil); err != nil {
			t.Fatalf("endpoint change %d: %v", i, err)
		}
		if n := pub.Checks(); n != checks {
			t.Fatalf("endpoint change %d: checked for completeness again (%d checks, %d before)", i, n, checks)
		}
		snap, err := cache.GetSnapshot(node)
		if err != nil {
			t.Fatal(err)
		}
		if got := snap.GetResources(resourcev3.EndpointType)["backend"].(*endpointv3.ClusterLoadAssignment); got.GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress().GetPortValue() != port {
			t.Fatalf("endpoint change %d not published", i)
		}
	}
	if err := pub.SetAll(ctx, time.Time{}, shared(9090), own("missing")); err == nil {
		t.Error("own cluster naming a missing endpoint set (own resources moved): published")
	}
	if err := pub.SetAll(ctx, time.Time{}, shared(9090), own("backend")); err != nil {
		t.Fatal(err)
	}
	if err := pub.SetAll(ctx, time.Time{}, renamed, nil); err == nil {
		t.Error("own cluster naming an endpoint set the shared ones no longer have (shared names moved): published")
	}
}

// A change composes again only the proxies whose shared resources or own
// resources moved, and every proxy's snapshot is what it would be composed
// from now: after changes in one scope, in the mesh's shared resources, a
// proxy moving between scopes, and a scope forgotten.
func TestChangeComposesOnlyProxiesItMoves(t *testing.T) {
	ctx := context.Background()
	cache := cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil)
	pub := publish.New(cache)
	nodes := map[string]string{"a1": "a", "a2": "a", "b1": "b", "u1": ""}
	own := map[string]resource.Resources{}
	for n := range nodes {
		own[n] = resource.Resources{resourcev3.SecretType: secrets()}
	}
	ports := map[string]uint32{"": 8080, "a": 8081, "b": 8082}
	set := func(scopeOf map[string]string, own map[string]resource.Resources, scopes ...string) {
		t.Helper()
		sc := map[string]resource.Lists{}
		for _, s := range scopes {
			sc[s] = resource.ListsOf(shared(ports[s]))
		}
		if err := pub.SetScoped(ctx, time.Time{}, resource.ListsOf(shared(ports[""])), sc, own, scopeOf); err != nil {
			t.Fatal(err)
		}
	}
	// check requires n proxies composed since the last check, and every
	// proxy's endpoint port to be its scope's (the mesh's for "").
	composed := 0
	check := func(step string, n int, want map[string]string) {
		t.Helper()
		if got := pub.Composed() - composed; got != n {
			t.Errorf("%s: %d proxies composed, want %d", step, got, n)
		}
		composed = pub.Composed()
		for node, scope := range want {
			snap, err := cache.GetSnapshot(node)
			if err != nil {
				t.Fatalf("%s: %s: %v", step, node, err)
			}
			cla := snap.GetResources(resourcev3.EndpointType)["backend"].(*endpointv3.ClusterLoadAssignment)
			if got := cla.GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress().GetPortValue(); got != ports[scope] {
				t.Errorf("%s: %s has port %d, want %d (scope %q)", step, node, got, ports[scope], scope)
			}
		}
	}
	set(nodes, own, "a", "b")
	check("first", 4, nodes)
	set(nodes, nil, "a", "b")
	check("nothing moved", 0, nodes)
	ports["a"] = 9081
	set(nodes, nil, "a", "b")
	check("scope a moved", 2, nodes)
	ports[""] = 9080
	set(nodes, nil, "a", "b")
	check("the mesh's shared resources moved", 1, nodes)
	set(nodes, map[string]resource.Resources{"b1": {resourcev3.SecretType: secrets()}}, "a", "b")
	check("b1's own resources given again", 1, nodes)
	nodes["a2"] = "b"
	set(map[string]string{"a2": "b"}, nil, "a", "b")
	check("a2 moved to scope b", 1, nodes)
	// Scope b forgotten: its proxies fall back to the mesh's resources.
	set(nil, nil, "a")
	check("scope b forgotten", 2, map[string]string{"a1": "a", "a2": "", "b1": "", "u1": ""})
	set(nil, nil, "a", "b")
	check("scope b back", 2, nodes)
}

// TestSnapshotsShareSets: every proxy's snapshot refers to the one shared
// set of each type it has nothing of its own in, and a proxy's next
// snapshot keeps the sets of the types that did not move: an endpoint
// change costs a proxy no copy of any set.
func TestSnapshotsShareSets(t *testing.T) {
	ctx := context.Background()
	cache := cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil)
	pub := publish.New(cache)
	if err := pub.SetAll(ctx, time.Time{}, shared(8080), nil); err != nil {
		t.Fatal(err)
	}
	snaps := func() [2]*resource.Snapshot {
		var out [2]*resource.Snapshot
		for i, n := range []string{node, "api-0.demo"} {
			s, err := cache.GetSnapshot(n)
			if err != nil {
				t.Fatal(err)
			}
			out[i] = s.(*resource.Snapshot)
		}
		return out
	}
	for _, n := range []string{node, "api-0.demo"} {
		if err := pub.SetProxy(ctx, n, resource.Resources{resourcev3.SecretType: secrets()}); err != nil {
			t.Fatal(err)
		}
	}
	before := snaps()
	cds, eds, sds := resource.Order(resourcev3.ClusterType), resource.Order(resourcev3.EndpointType), resource.Order(resourcev3.SecretType)
	for _, i := range []int{cds, eds} {
		if before[0].RefAt(i) == nil || before[0].RefAt(i) != before[1].RefAt(i) {
			t.Errorf("type %d: the proxies' snapshots hold sets %p and %p, not the one shared set", i, before[0].RefAt(i), before[1].RefAt(i))
		}
	}
	if before[0].RefAt(sds) == before[1].RefAt(sds) {
		t.Error("the proxies' secrets are one set")
	}
	// An endpoint change.
	if err := pub.SetAll(ctx, time.Time{}, shared(8081), nil); err != nil {
		t.Fatal(err)
	}
	after := snaps()
	for p := range after {
		if after[p] == before[p] {
			t.Fatalf("proxy %d: no new snapshot for the endpoint change", p)
		}
		for _, i := range []int{cds, sds} {
			if after[p].RefAt(i) != before[p].RefAt(i) {
				t.Errorf("proxy %d, type %d: a new set though nothing of it moved", p, i)
			}
		}
		if after[p].RefAt(eds) == before[p].RefAt(eds) || after[p].RefAt(eds) != after[0].RefAt(eds) {
			t.Errorf("proxy %d: endpoints not the one new shared set", p)
		}
	}
}

// failingCache fails every SetSnapshot while fail is set.
type failingCache struct {
	cachev3.SnapshotCache
	fail bool
}

func (c *failingCache) SetSnapshot(ctx context.Context, node string, snap cachev3.ResourceSnapshot) error {
	if c.fail {
		return errors.New("cache refuses")
	}
	return c.SnapshotCache.SetSnapshot(ctx, node, snap)
}

// TestFailedPublishIsTriedAgain: a proxy whose snapshot the cache refused
// is composed again by the next change, also one that moves nothing of
// its (a change of another scope's resources), until it is published.
func TestFailedPublishIsTriedAgain(t *testing.T) {
	ctx := context.Background()
	cache := &failingCache{SnapshotCache: cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil)}
	pub := publish.New(cache)
	own := map[string]resource.Resources{"a1": {resourcev3.SecretType: secrets()}, "b1": {resourcev3.SecretType: secrets()}}
	scopeOf := map[string]string{"a1": "a", "b1": "b"}
	set := func(portB uint32, own map[string]resource.Resources, scopeOf map[string]string) error {
		return pub.SetScoped(ctx, time.Time{}, resource.ListsOf(shared(8080)),
			map[string]resource.Lists{"a": resource.ListsOf(shared(8081)), "b": resource.ListsOf(shared(portB))}, own, scopeOf)
	}
	if err := set(8082, own, scopeOf); err != nil {
		t.Fatal(err)
	}
	cache.fail = true
	// a1's own resources move; its snapshot is refused.
	if err := set(8082, map[string]resource.Resources{"a1": {resourcev3.SecretType: secrets()[:1]}}, nil); err == nil {
		t.Fatal("a refused snapshot was not an error")
	}
	cache.fail = false
	composed := pub.Composed()
	// Only scope b moves: a1 is tried again all the same.
	if err := set(9082, nil, nil); err != nil {
		t.Fatal(err)
	}
	if got := pub.Composed() - composed; got != 2 {
		t.Errorf("%d proxies composed, want 2 (b1, whose scope moved, and a1, refused before)", got)
	}
	snap, err := cache.GetSnapshot("a1")
	if err != nil {
		t.Fatal(err)
	}
	if n := len(snap.GetResources(resourcev3.SecretType)); n != 1 {
		t.Errorf("a1 has %d secrets, want the 1 its refused snapshot had", n)
	}
	composed = pub.Composed()
	if err := set(9082, nil, nil); err != nil {
		t.Fatal(err)
	}
	if got := pub.Composed() - composed; got != 0 {
		t.Errorf("nothing moved: %d proxies composed, want 0", got)
	}
}
