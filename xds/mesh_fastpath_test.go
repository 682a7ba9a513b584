package xds_test

import (
	"context"
	"slices"
	"testing"

	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/meshd/meshd/k8s"
	"github.com/meshd/meshd/model"
	"github.com/meshd/meshd/xds"
)

// scopesYAML: services a, b (ports 80, 81), each with one endpoint outside
// the mesh, and four client pods under service account web: scoped to a,
// scoped to b, unscoped, and without interception scoped to every service
// of demo.
const scopesYAML = `
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {meshd.io/inject: enabled}}
---
apiVersion: v1
kind: Service
metadata: {name: a, namespace: demo}
spec: {clusterIP: 198.19.0.20, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: b, namespace: demo}
spec: {clusterIP: 198.19.0.21, ports: [{name: http, port: 81}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: a-1, namespace: demo, labels: {kubernetes.io/service-name: a}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [198.18.0.40]}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: b-1, namespace: demo, labels: {kubernetes.io/service-name: b}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [198.18.0.41]}]
---
apiVersion: v1
kind: Pod
metadata: {name: to-a, namespace: demo, annotations: {meshd.io/egress: demo/a}}
spec: {serviceAccountName: web}
status: {podIP: 198.18.0.30}
---
apiVersion: v1
kind: Pod
metadata: {name: to-b, namespace: demo, annotations: {meshd.io/egress: demo/b}}
spec: {serviceAccountName: web}
status: {podIP: 198.18.0.31}
---
apiVersion: v1
kind: Pod
metadata: {name: to-all, namespace: demo}
spec: {serviceAccountName: web}
status: {podIP: 198.18.0.32}
---
apiVersion: v1
kind: Pod
metadata: {name: direct, namespace: demo, annotations: {meshd.io/egress: "demo/*", meshd.io/interception: none}}
spec: {serviceAccountName: web}
status: {podIP: 198.18.0.33}
`

// TestServiceChangeReachesWhatItMoves: models that move services alone
// (the same workloads: an endpoint added, a service added, as EndpointSlice
// and Service writes make them) reach every proxy they move and none they
// do not: a proxy of another scope keeps its snapshot, a sidecar without
// interception gets the listener of a new service in its scope, and a scope
// whose last proxy left is forgotten.
func TestServiceChangeReachesWhatItMoves(t *testing.T) {
	ctx := context.Background()
	st, err := k8s.StateFromYAML([]byte(scopesYAML))
	if err != nil {
		t.Fatal(err)
	}
	m0, problems := k8s.Convert(st, "cluster.local")
	if len(problems) > 0 || len(m0.Workloads) != 4 {
		t.Fatalf("model: %d workloads, problems %v", len(m0.Workloads), problems)
	}
	nodes := []string{"to-a.demo", "to-b.demo", "to-all.demo", "direct.demo"}
	var peers []xds.Peer
	for _, n := range nodes {
		peers = append(peers, xds.Peer{NodeID: n, Identity: webID})
	}
	mesh, cache, pub := connectedMesh(t, peers...)
	type state struct {
		versions map[string]string
		names    map[string][]string
	}
	update := func(snap *model.Snapshot) map[string]state {
		t.Helper()
		if _, err := mesh.Update(ctx, snap); err != nil {
			t.Fatal(err)
		}
		out := map[string]state{}
		for _, n := range nodes {
			s, err := cache.GetSnapshot(n)
			if err != nil {
				t.Fatalf("%s: %v", n, err)
			}
			st := state{map[string]string{}, map[string][]string{}}
			for _, typ := range []string{resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.ListenerType, resourcev3.RouteType} {
				st.versions[typ] = s.GetVersion(typ)
				for name := range s.GetResources(typ) {
					st.names[typ] = append(st.names[typ], name)
				}
				slices.Sort(st.names[typ])
			}
			out[n] = st
		}
		return out
	}
	// moved checks which proxies' versions of typ moved from before to after.
	moved := func(step, typ string, before, after map[string]state, want ...string) {
		t.Helper()
		var got []string
		for _, n := range nodes {
			if before[n].versions[typ] != after[n].versions[typ] {
				got = append(got, n)
			}
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s: %s moved at %v, want %v", step, typ, got, want)
		}
	}
	s0 := update(m0)
	if got := s0["to-a.demo"].names[resourcev3.EndpointType]; !slices.Equal(got, []string{"outbound|80|a.demo"}) {
		t.Fatalf("to-a's endpoint sets %v, want a's alone", got)
	}

	// An endpoint of a added: the same workloads, so no proxy's own
	// resources move.
	m1 := *m0
	p := m0.Services.Patch()
	svcA := *p.At(0)
	svcA.Endpoints = append(slices.Clone(svcA.Endpoints), model.Endpoint{PortName: "http", Address: "198.18.0.42", Port: 8080, Ready: true})
	p.Set(0, &svcA)
	m1.Services = p.Vec()
	s1 := update(&m1)
	moved("endpoint of a added", resourcev3.EndpointType, s0, s1, "to-a.demo", "to-all.demo", "direct.demo")
	for _, typ := range []string{resourcev3.ClusterType, resourcev3.ListenerType, resourcev3.RouteType} {
		moved("endpoint of a added", typ, s0, s1)
	}

	// A service c added (port 82, no endpoints yet), in demo/*.
	m2 := m1
	p = m1.Services.Patch()
	p.Append(&model.Service{Namespace: "demo", Name: "c", ClusterIP: "198.19.0.22", Ports: []model.Port{{Name: "http", Port: 82, Protocol: model.ProtocolHTTP}}})
	m2.Services = p.Vec()
	s2 := update(&m2)
	moved("service c added", resourcev3.ClusterType, s1, s2, "to-all.demo", "direct.demo")
	moved("service c added", resourcev3.ListenerType, s1, s2, "to-all.demo", "direct.demo")
	if got := s2["direct.demo"].names[resourcev3.ListenerType]; !slices.Contains(got, "local|82|c.demo") {
		t.Errorf("the sidecar without interception has listeners %v, want local|82|c.demo among them", got)
	}

	// to-b, the last proxy of scope demo/b, leaves: the scope is forgotten.
	mesh.RemoveProxy("to-b.demo")
	pub.RemoveProxy("to-b.demo")
	nodes = slices.DeleteFunc(nodes, func(n string) bool { return n == "to-b.demo" })
	if !pub.HasScope("demo/b") {
		t.Fatal("scope demo/b unknown before its proxy left")
	}
	m3 := m2
	p = m2.Services.Patch()
	svcB := *p.At(1)
	svcB.Endpoints = nil
	p.Set(1, &svcB)
	m3.Services = p.Vec()
	s3 := update(&m3)
	if pub.HasScope("demo/b") {
		t.Error("scope demo/b still kept after its last proxy left")
	}
	moved("endpoint of b gone", resourcev3.EndpointType, s2, s3, "to-all.demo", "direct.demo")
}
