package xds_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/meshd/meshd/ca"
	"github.com/meshd/meshd/internal/vec"
	"github.com/meshd/meshd/model"
	"github.com/meshd/meshd/xds"
)

// BenchmarkMeshUpdate: one model change (1,000 services × 10 endpoints)
// published to 1,000 connected proxies: translation, hashing and setting
// every proxy's snapshot in the cache.
func BenchmarkMeshUpdate(b *testing.B) {
	ctx := context.Background()
	snap := benchModel(1000, 10)
	mesh, _ := benchMesh(b, snap, 1000)
	// The first publish (every proxy's first snapshot) is not a change.
	if _, err := mesh.Update(ctx, snap); err != nil {
		b.Fatal(err)
	}
	benchEndpointChanges(ctx, b, mesh, snap)
}

// withReady is snap with its first service's first endpoint ready or not:
// a new snapshot, as the model is never mutated.
func withReady(snap *model.Snapshot, ready bool) *model.Snapshot {
	svc := *snap.Services.At(0)
	svc.Endpoints = slices.Clone(svc.Endpoints)
	svc.Endpoints[0].Ready = ready
	next := *snap
	p := snap.Services.Patch()
	p.Set(0, &svc)
	next.Services = p.Vec()
	return &next
}

// benchMesh returns a Mesh with the first proxies workloads of snap
// connected, each holding its secrets.
func benchMesh(b *testing.B, snap *model.Snapshot, proxies int) (*xds.Mesh, cachev3.SnapshotCache) {
	b.Helper()
	var peers []xds.Peer
	for _, w := range snap.Workloads[:proxies] {
		id := ca.Identity{TrustDomain: "cluster.local", Namespace: w.Namespace, ServiceAccount: w.ServiceAccount}
		peers = append(peers, xds.Peer{NodeID: w.Key(), Identity: id})
	}
	mesh, cache, _ := connectedMesh(b, peers...)
	return mesh, cache
}

// benchEndpointChanges measures mesh.Update of snap with its first
// service's first endpoint ready and not, in turn: an endpoint moving, as
// in real churn.
func benchEndpointChanges(ctx context.Context, b *testing.B, mesh *xds.Mesh, snap *model.Snapshot) {
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		if _, err := mesh.Update(ctx, withReady(snap, i%2 == 0)); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkMeshUpdateScoped: BenchmarkMeshUpdate with every proxy's
// outbound side scoped to its own namespace (meshd.io/egress "./*"): 20
// services each, 50 distinct scopes. Reports the resources in a proxy's
// snapshot (unscoped: about 3,000).
func BenchmarkMeshUpdateScoped(b *testing.B) {
	ctx := context.Background()
	snap := benchModel(1000, 10)
	for _, w := range snap.Workloads {
		w.Egress = model.Egress{w.Namespace + "/*"}
	}
	mesh, cache := benchMesh(b, snap, 1000)
	if _, err := mesh.Update(ctx, snap); err != nil {
		b.Fatal(err)
	}
	ps, err := cache.GetSnapshot(snap.Workloads[0].Key())
	if err != nil {
		b.Fatal(err)
	}
	resources := 0
	for _, t := range []string{resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.ListenerType, resourcev3.RouteType} {
		resources += len(ps.GetResources(t))
	}
	benchEndpointChanges(ctx, b, mesh, snap)
	b.ReportMetric(float64(resources), "resources/proxy")
}

func benchModel(services, endpoints int) *model.Snapshot {
	snap := &model.Snapshot{TrustDomain: "cluster.local"}
	var list []*model.Service
	for i := range services {
		svc := &model.Service{Namespace: fmt.Sprintf("ns%d", i%50), Name: fmt.Sprintf("svc%d", i),
			ClusterIP: fmt.Sprintf("198.19.%d.%d", i/250, i%250+1),
			Ports:     []model.Port{{Name: "http", Port: 80, Protocol: model.ProtocolHTTP}}}
		id := model.SPIFFEID("cluster.local", svc.Namespace, svc.Name)
		for j := range endpoints {
			n := i*endpoints + j
			ip := fmt.Sprintf("198.18.%d.%d", n/250, n%250+1)
			w := &model.Workload{Namespace: svc.Namespace, Name: fmt.Sprintf("%s-%d", svc.Name, j), ServiceAccount: svc.Name,
				IP: ip, Identity: id, Meshed: true, Mode: model.ModeStrict, Ports: []model.Port{{Name: "http", Port: 8080, Protocol: model.ProtocolHTTP}}}
			snap.Workloads = append(snap.Workloads, w)
			svc.Endpoints = append(svc.Endpoints, model.Endpoint{PortName: "http", Address: ip, Port: 8080, Ready: true, Identity: id, Workload: w.Key()})
		}
		list = append(list, svc)
	}
	// Services sorted by key, as the model promises.
	slices.SortFunc(list, func(a, b *model.Service) int { return strings.Compare(a.Key(), b.Key()) })
	snap.Services = vec.Of(list)
	// Workloads sorted by key, as the model promises.
	sortWorkloads(snap.Workloads)
	return snap
}

func sortWorkloads(ws []*model.Workload) {
	slices.SortFunc(ws, func(a, b *model.Workload) int { return strings.Compare(a.Key(), b.Key()) })
}

// BenchmarkPolicyChange: an authorization policy added to and removed from
// one workload of 10,000 (1,000 services x 10 endpoints), with 1,000
// proxies connected: what meshd does between the policy's informer event
// and the new snapshot of the one affected proxy.
func BenchmarkPolicyChange(b *testing.B) {
	ctx := context.Background()
	snap := benchModel(1000, 10)
	mesh, _ := benchMesh(b, snap, 1000)
	target := snap.Workloads[0]
	policy := &model.Policy{Namespace: target.Namespace, Name: "callers", Action: model.ActionAllow,
		Rules: []model.Rule{{From: &model.Source{Identities: []string{model.SPIFFEID("cluster.local", "ns1", "svc1")}}}}}
	if _, err := mesh.Update(ctx, snap); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		// A new snapshot with a new workload: the model is never mutated.
		w := *target
		w.Policies = nil
		if i%2 == 0 {
			w.Policies = []*model.Policy{policy}
		}
		next := *snap
		next.Workloads = slices.Clone(snap.Workloads)
		next.Workloads[0] = &w
		if _, err := mesh.Update(ctx, &next); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkMeshUpdateScopedProxies: an endpoint change published to 1,000
// and 10,000 connected proxies, each scoped to 20 services: in 50 disjoint
// groups of 20 exact entries, as the load tool scopes them (the change is
// in one group: it reaches a fiftieth of the proxies), or each proxy to its
// own 20 (1,000 distinct scopes, windows over the services: the change is
// in 20 of them). What the change costs beyond the proxies it reaches grows
// with the mesh, not with the change.
func BenchmarkMeshUpdateScopedProxies(b *testing.B) {
	for _, c := range []struct{ proxies, scopes int }{{1000, 50}, {10000, 50}, {1000, 1000}} {
		b.Run(fmt.Sprintf("proxies=%d/scopes=%d", c.proxies, c.scopes), func(b *testing.B) {
			ctx := context.Background()
			snap := benchModel(1000, 10)
			n := snap.Services.Len()
			for i, w := range snap.Workloads {
				first := (i % c.scopes) * 20 // 50 groups
				if c.scopes > 50 {
					first = i % c.scopes // windows
				}
				for j := range 20 {
					svc := snap.Services.At((first + j) % n)
					w.Egress = append(w.Egress, svc.Namespace+"/"+svc.Name)
				}
				slices.Sort(w.Egress)
			}
			mesh, _ := benchMesh(b, snap, c.proxies)
			if _, err := mesh.Update(ctx, snap); err != nil {
				b.Fatal(err)
			}
			benchEndpointChanges(ctx, b, mesh, snap)
		})
	}
}

// BenchmarkMeshUpdateZoneHinted: BenchmarkMeshUpdate with the proxies in
// 3 zones and the first hinted services' endpoints hinted for them
// (trafficDistribution PreferClose): such services are every proxy's own
// (translate.PerClient), so a change to one goes over every proxy. The
// change is to the first service, hinted.
func BenchmarkMeshUpdateZoneHinted(b *testing.B) {
	for _, hinted := range []int{1, 20, 100} {
		b.Run(fmt.Sprintf("hinted=%d", hinted), func(b *testing.B) {
			ctx := context.Background()
			snap := benchModel(1000, 10)
			zones := []string{"zone-a", "zone-b", "zone-c"}
			for i, w := range snap.Workloads {
				w.Zone = zones[i%len(zones)]
			}
			p := snap.Services.Patch()
			for i := range hinted {
				svc := *snap.Services.At(i)
				svc.ZoneHints = true
				svc.Endpoints = slices.Clone(svc.Endpoints)
				for j := range svc.Endpoints {
					svc.Endpoints[j].ForZones = []string{zones[j%len(zones)]}
				}
				p.Set(i, &svc)
			}
			snap.Services = p.Vec()
			mesh, _ := benchMesh(b, snap, 1000)
			if _, err := mesh.Update(ctx, snap); err != nil {
				b.Fatal(err)
			}
			benchEndpointChanges(ctx, b, mesh, snap)
		})
	}
}
