package translate_test

import (
	"slices"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/meshd/meshd/internal/vec"
	"github.com/meshd/meshd/model"
	"github.com/meshd/meshd/xds/translate"
)

// TestDirectListenersScoped: a sidecar without interception whose outbound
// side is scoped (meshd.io/egress) gets local listeners for the services
// in its scope only: a listener for another one would name a route its
// shared resources do not have, and its snapshot would never be complete.
func TestDirectListenersScoped(t *testing.T) {
	svc := func(name, ip string, port uint32) *model.Service {
		return &model.Service{Namespace: "demo", Name: name, ClusterIP: ip, Ports: []model.Port{{Name: "http", Port: port, Protocol: model.ProtocolHTTP}}}
	}
	w := &model.Workload{Namespace: "demo", Name: "client-0", ServiceAccount: "client", Identity: model.SPIFFEID("cluster.local", "demo", "client"),
		IP: "127.0.0.3", Meshed: true, Mode: model.ModeStrict, NoInterception: true, Egress: model.Egress{"demo/api"}}
	snap := &model.Snapshot{TrustDomain: "cluster.local", Services: vec.Of([]*model.Service{svc("api", "198.19.0.1", 80), svc("web", "198.19.0.2", 8080)}), Workloads: []*model.Workload{w}}
	var names []string
	for _, l := range translate.Proxy(snap, w)[resourcev3.ListenerType] {
		names = append(names, cachev3.GetResourceName(l))
	}
	if want := []string{"local|80|api.demo"}; !slices.Equal(names, want) {
		t.Fatalf("listeners %v, want %v", names, want)
	}
	// Every route the listener names is in the scope's shared resources.
	shared, _ := translate.Shared(snap.Scoped(w.Egress))
	have := map[string]bool{}
	for _, r := range shared[resourcev3.RouteType] {
		have[cachev3.GetResourceName(r)] = true
	}
	for _, l := range translate.Proxy(snap, w)[resourcev3.ListenerType] {
		for ref := range cachev3.GetResourceReferences(map[string]types.ResourceWithTTL{cachev3.GetResourceName(l): {Resource: l}})[resourcev3.RouteType] {
			if !have[ref] {
				t.Errorf("listener %s names route %s, which the scope does not have", cachev3.GetResourceName(l), ref)
			}
		}
	}
}

// TestRegistryOnlyPassthrough: a registry-only proxy's own resources hold a
// PassthroughCluster without endpoints (standing over the shared one: the
// outbound listener's default chain closes what it would pass through); an
// allow-any proxy's, and a sidecar's without interception, none.
func TestRegistryOnlyPassthrough(t *testing.T) {
	w := &model.Workload{Namespace: "demo", Name: "client-0", ServiceAccount: "client", Identity: model.SPIFFEID("cluster.local", "demo", "client"),
		IP: "198.18.0.3", Meshed: true, Mode: model.ModeStrict}
	snap := &model.Snapshot{TrustDomain: "cluster.local", Services: vec.Of([]*model.Service{}), Workloads: []*model.Workload{w}}
	passthrough := func(w *model.Workload) *clusterv3.Cluster {
		for _, r := range translate.Proxy(snap, w)[resourcev3.ClusterType] {
			if c := r.(*clusterv3.Cluster); c.Name == translate.PassthroughCluster {
				return c
			}
		}
		return nil
	}
	if c := passthrough(w); c != nil {
		t.Errorf("allow-any proxy has its own %s: %v", translate.PassthroughCluster, c)
	}
	locked := *w
	locked.RegistryOnly = true
	c := passthrough(&locked)
	if c == nil || c.GetType() != clusterv3.Cluster_STATIC || len(c.GetLoadAssignment().GetEndpoints()) != 0 {
		t.Errorf("registry-only proxy's own %s: %v, want a static cluster without endpoints", translate.PassthroughCluster, c)
	}
	shared, _ := translate.Shared(snap)
	if !slices.ContainsFunc(shared[resourcev3.ClusterType], func(r types.Resource) bool { return cachev3.GetResourceName(r) == translate.PassthroughCluster }) {
		t.Errorf("the shared resources have no %s for the own one to stand over", translate.PassthroughCluster)
	}
	direct := locked
	direct.NoInterception = true
	if c := passthrough(&direct); c != nil {
		t.Errorf("sidecar without interception has its own %s", translate.PassthroughCluster)
	}
}
