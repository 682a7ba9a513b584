package xds_test

import (
	"context"
	"slices"
	"strings"
	"testing"

	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/meshd/meshd/k8s"
	"github.com/meshd/meshd/xds"
)

// nodeLocalYAML: web-0 on node a, web-1 on node b, and the service agent
// (internalTrafficPolicy %[1]s) with an endpoint on each node (%[2]s: the
// endpoints' lines).
const nodeLocalYAML = `
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {meshd.io/inject: enabled}}
---
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: demo}
spec: {serviceAccountName: web, nodeName: a}
status: {podIP: 198.18.0.10}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: demo}
spec: {serviceAccountName: web, nodeName: b}
status: {podIP: 198.18.0.11}
---
apiVersion: v1
kind: Service
metadata: {name: agent, namespace: demo}
spec:
  clusterIP: 198.19.0.20
  internalTrafficPolicy: %[1]s
  ports: [{name: tcp-agent, port: 9000}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: agent-1, namespace: demo, labels: {kubernetes.io/service-name: agent}}
addressType: IPv4
ports: [{name: tcp-agent, port: 9000}]
endpoints:
%[2]s`

const (
	agentOnA = "- {addresses: [198.18.0.20], nodeName: a}\n"
	agentOnB = "- {addresses: [198.18.0.21], nodeName: b}\n"
)

// TestNodeLocalServiceEndpointsPerNode: a service with internalTrafficPolicy
// Local sends each proxy only the endpoints on its pod's node (none when
// its node has none), and a proxy without a pod all of them; an endpoint
// going moves only its node's proxies' endpoints; the policy back to
// Cluster gives every proxy both. The outbound chain is shared throughout.
func TestNodeLocalServiceEndpointsPerNode(t *testing.T) {
	ctx := context.Background()
	web1 := xds.NodeID("demo", "web-1")
	podless := xds.NodeID("demo", "job-0")
	mesh, cache, _ := connectedMesh(t, xds.Peer{NodeID: webNode, Identity: webID}, xds.Peer{NodeID: web1, Identity: webID},
		xds.Peer{NodeID: podless, Identity: webID})
	const cluster = "outbound|9000|agent.demo"
	endpoints := func(node string) []string {
		t.Helper()
		snap, err := cache.GetSnapshot(node)
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := snap.GetResources(resourcev3.ClusterType)[cluster]; !ok {
			t.Fatalf("%s has no cluster %s", node, cluster)
		}
		cla, ok := snap.GetResources(resourcev3.EndpointType)[cluster].(*endpointv3.ClusterLoadAssignment)
		if !ok {
			t.Fatalf("%s has no endpoints of %s", node, cluster)
		}
		var out []string
		for _, group := range cla.Endpoints {
			for _, lb := range group.LbEndpoints {
				out = append(out, lb.GetEndpoint().GetAddress().GetSocketAddress().GetAddress())
			}
		}
		slices.Sort(out)
		return out
	}
	update := func(policy, eps string) {
		t.Helper()
		st, err := k8s.StateFromYAML([]byte(strings.NewReplacer("%[1]s", policy, "%[2]s", eps).Replace(nodeLocalYAML)))
		if err != nil {
			t.Fatal(err)
		}
		snap, problems := k8s.Convert(st, "cluster.local")
		if len(problems) > 0 {
			t.Fatalf("problems: %v", problems)
		}
		if _, err := mesh.Update(ctx, snap); err != nil {
			t.Fatal(err)
		}
	}
	expect := func(what string, want map[string][]string) {
		t.Helper()
		for node, w := range want {
			if got := endpoints(node); !slices.Equal(got, w) {
				t.Errorf("%s: %s reaches %v, want %v", what, node, got, w)
			}
		}
	}
	update("Local", agentOnA+agentOnB)
	expect("Local", map[string][]string{webNode: {"198.18.0.20"}, web1: {"198.18.0.21"}, podless: {"198.18.0.20", "198.18.0.21"}})
	chainVersion := func(node string) string {
		s, _ := cache.GetSnapshot(node)
		return s.GetVersion(resourcev3.ListenerType)
	}
	listeners := chainVersion(webNode)
	update("Local", agentOnA)
	expect("node b's endpoint gone", map[string][]string{webNode: {"198.18.0.20"}, web1: nil, podless: {"198.18.0.20"}})
	if chainVersion(webNode) != listeners {
		t.Error("an endpoint of a node-local service moved the listeners")
	}
	update("Cluster", agentOnA+agentOnB)
	expect("Cluster", map[string][]string{webNode: {"198.18.0.20", "198.18.0.21"}, web1: {"198.18.0.20", "198.18.0.21"}})
	update("Local", agentOnA+agentOnB)
	expect("Local again", map[string][]string{webNode: {"198.18.0.20"}, web1: {"198.18.0.21"}})
	var _ cachev3.SnapshotCache = cache
}
