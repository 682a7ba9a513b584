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
	h := newPerClientHarness(t)
	web1, podless, cache := h.web1, h.podless, h.cache
	update := func(policy, eps string) {
		t.Helper()
		h.publish(strings.NewReplacer("%[1]s", policy, "%[2]s", eps).Replace(nodeLocalYAML))
	}
	expect := h.expect
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
}

// zoneYAML: web-0 in zone a, web-1 in zone b (their pods' labels, as
// Kubernetes copies them from the nodes), and the service agent with the
// endpoints %[1]s (hints as the EndpointSlice controller writes them for
// trafficDistribution PreferClose).
const zoneYAML = `
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {meshd.io/inject: enabled}}
---
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: demo, labels: {topology.kubernetes.io/zone: a}}
spec: {serviceAccountName: web, nodeName: n0}
status: {podIP: 198.18.0.10}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: demo, labels: {topology.kubernetes.io/zone: b}}
spec: {serviceAccountName: web, nodeName: n1}
status: {podIP: 198.18.0.11}
---
apiVersion: v1
kind: Service
metadata: {name: agent, namespace: demo}
spec:
  clusterIP: 198.19.0.20
  trafficDistribution: PreferClose
  ports: [{name: tcp-agent, port: 9000}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: agent-1, namespace: demo, labels: {kubernetes.io/service-name: agent}}
addressType: IPv4
ports: [{name: tcp-agent, port: 9000}]
endpoints:
%[1]s`

// TestZoneHintedServiceEndpointsPerZone: a service whose endpoints all
// carry zone hints sends each proxy the endpoints hinted for its pod's
// zone, all of them when none is hinted for it or its zone is not known
// (a proxy without a pod); once one ready endpoint has no hint, every
// proxy gets all of them; node hints (PreferSameNode) go before zone
// hints (kube-proxy's rules).
func TestZoneHintedServiceEndpointsPerZone(t *testing.T) {
	h := newPerClientHarness(t)
	web1, podless := h.web1, h.podless
	update := func(eps string) {
		t.Helper()
		h.publish(strings.ReplaceAll(zoneYAML, "%[1]s", eps))
	}
	expect := h.expect
	const (
		hintedA  = "- {addresses: [198.18.0.20], zone: a, hints: {forZones: [{name: a}]}}\n"
		hintedB  = "- {addresses: [198.18.0.21], zone: b, hints: {forZones: [{name: b}]}}\n"
		hintedAB = "- {addresses: [198.18.0.20], zone: a, hints: {forZones: [{name: a}, {name: b}]}}\n"
		bForA    = "- {addresses: [198.18.0.21], zone: b, hints: {forZones: [{name: a}]}}\n"
		noHint   = "- {addresses: [198.18.0.21], zone: b}\n"
		// PreferSameNode: node hints too (web-0 is on n0, web-1 on n1).
		aForN1 = "- {addresses: [198.18.0.20], zone: a, hints: {forZones: [{name: a}], forNodes: [{name: n1}]}}\n"
		bForN0 = "- {addresses: [198.18.0.21], zone: b, hints: {forZones: [{name: b}], forNodes: [{name: n0}]}}\n"
	)
	both := []string{"198.18.0.20", "198.18.0.21"}
	update(hintedA + hintedB)
	expect("one per zone", map[string][]string{webNode: {"198.18.0.20"}, web1: {"198.18.0.21"}, podless: both})
	update(hintedA + noHint)
	expect("one endpoint without hints", map[string][]string{webNode: both, web1: both, podless: both})
	update(hintedAB + bForA)
	expect("both for a, one for b", map[string][]string{webNode: both, web1: {"198.18.0.20"}, podless: both})
	update(hintedA + bForA)
	expect("none for b", map[string][]string{webNode: both, web1: both})
	update(aForN1 + bForN0)
	expect("node hints first", map[string][]string{webNode: {"198.18.0.21"}, web1: {"198.18.0.20"}, podless: both})
	update(hintedA + hintedB)
	expect("one per zone again", map[string][]string{webNode: {"198.18.0.20"}, web1: {"198.18.0.21"}, podless: both})
}

// perClientHarness is a Mesh with web-0 (webNode), web-1 and a proxy
// without a pod (podless) connected, for the per-client services' tests
// (their cluster outbound|9000|agent.demo).
type perClientHarness struct {
	t             *testing.T
	mesh          *xds.Mesh
	cache         cachev3.SnapshotCache
	web1, podless string
}

func newPerClientHarness(t *testing.T) *perClientHarness {
	h := &perClientHarness{t: t, web1: xds.NodeID("demo", "web-1"), podless: xds.NodeID("demo", "job-0")}
	h.mesh, h.cache, _ = connectedMesh(t, xds.Peer{NodeID: webNode, Identity: webID}, xds.Peer{NodeID: h.web1, Identity: webID},
		xds.Peer{NodeID: h.podless, Identity: webID})
	return h
}

// publish converts doc and updates the mesh with it.
func (h *perClientHarness) publish(doc string) {
	h.t.Helper()
	st, err := k8s.StateFromYAML([]byte(doc))
	if err != nil {
		h.t.Fatal(err)
	}
	snap, problems := k8s.Convert(st, "cluster.local")
	if len(problems) > 0 {
		h.t.Fatalf("problems: %v", problems)
	}
	if _, err := h.mesh.Update(context.Background(), snap); err != nil {
		h.t.Fatal(err)
	}
}

// endpoints are the addresses of the agent cluster's endpoint set in a
// proxy's snapshot, which must have the cluster.
func (h *perClientHarness) endpoints(node string) []string {
	h.t.Helper()
	const cluster = "outbound|9000|agent.demo"
	snap, err := h.cache.GetSnapshot(node)
	if err != nil {
		h.t.Fatal(err)
	}
	if _, ok := snap.GetResources(resourcev3.ClusterType)[cluster]; !ok {
		h.t.Fatalf("%s has no cluster %s", node, cluster)
	}
	cla, ok := snap.GetResources(resourcev3.EndpointType)[cluster].(*endpointv3.ClusterLoadAssignment)
	if !ok {
		h.t.Fatalf("%s has no endpoints of %s", node, cluster)
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

// expect checks the proxies' endpoints.
func (h *perClientHarness) expect(what string, want map[string][]string) {
	h.t.Helper()
	for node, w := range want {
		if got := h.endpoints(node); !slices.Equal(got, w) {
			h.t.Errorf("%s: %s reaches %v, want %v", what, node, got, w)
		}
	}
}
