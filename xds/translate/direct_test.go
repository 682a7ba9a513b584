package translate_test

import (
	"slices"
	"testing"

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
