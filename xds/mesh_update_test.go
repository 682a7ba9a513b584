package xds_test

import (
	"context"
	"slices"
	"strings"
	"testing"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/meshd/meshd/internal/vec"
	"github.com/meshd/meshd/k8s"
	"github.com/meshd/meshd/model"
	"github.com/meshd/meshd/sds"
	"github.com/meshd/meshd/xds"
	"github.com/meshd/meshd/xds/publish"
	"github.com/meshd/meshd/xds/resource"
)

// meshYAML is a ClusterIP service with one endpoint; %s is the readiness of
// a second endpoint line, %p the extra endpoint.
const meshYAML = `
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {meshd.io/inject: enabled}}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: demo}
spec:
  clusterIP: 198.19.0.10
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: demo}
spec: {serviceAccountName: web}
status: {podIP: 198.18.0.10}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: demo}
spec: {serviceAccountName: web}
status: {podIP: 198.18.0.11}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-1, namespace: demo, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints:
- addresses: [198.18.0.10]
  targetRef: {kind: Pod, namespace: demo, name: web-0}
`

func modelFrom(t *testing.T, extra string) *model.Snapshot {
	t.Helper()
	st, err := k8s.StateFromYAML([]byte(meshYAML + extra))
	if err != nil {
		t.Fatal(err)
	}
	snap, problems := k8s.Convert(st, "cluster.local")
	if len(problems) > 0 {
		t.Fatalf("problems: %v", problems)
	}
	return snap
}

// connectedMesh is a Mesh publishing into a snapshot cache (and its
// publisher), with peers connected, each holding the same secrets (only
// the mesh configuration is looked at); no model yet.
func connectedMesh(t testing.TB, peers ...xds.Peer) (*xds.Mesh, cachev3.SnapshotCache, *publish.Publisher) {
	t.Helper()
	ctx := context.Background()
	cert := newTestPKI(t).issue(webID, webNode)
	secrets := resource.Resources{resourcev3.SecretType: []types.Resource{sds.CertificateSecret(cert), sds.BundleSecret(cert.BundlePEM)}}
	cache := cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil)
	pub := publish.New(cache)
	mesh := xds.NewMesh(pub, nil)
	for _, p := range peers {
		if err := mesh.AddProxy(ctx, p); err != nil {
			t.Fatal(err)
		}
		if err := pub.SetProxy(ctx, p.NodeID, secrets); err != nil {
			t.Fatal(err)
		}
	}
	return mesh, cache, pub
}

// meshWithWeb is connectedMesh with web-0's proxy connected.
func meshWithWeb(t *testing.T) (*xds.Mesh, cachev3.SnapshotCache) {
	t.Helper()
	mesh, cache, _ := connectedMesh(t, xds.Peer{NodeID: webNode, Identity: webID})
	return mesh, cache
}

// TestEndpointChangeIsEDSOnly: a second endpoint (ready, then not ready) of
// a ClusterIP service moves only the endpoints version of a connected
// proxy; clusters, listeners and routes keep theirs, so Envoy gets an
// EDS-only update.
func TestEndpointChangeIsEDSOnly(t *testing.T) {
	ctx := context.Background()
	mesh, cache := meshWithWeb(t)
	if _, err := cache.GetSnapshot(webNode); err == nil {
		t.Fatal("published before the mesh config was known")
	}
	versions := func(extra string) map[string]string {
		t.Helper()
		if _, err := mesh.Update(ctx, modelFrom(t, extra)); err != nil {
			t.Fatal(err)
		}
		snap, err := cache.GetSnapshot(webNode)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]string{}
		for _, typ := range []string{resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.ListenerType, resourcev3.RouteType} {
			out[typ] = snap.GetVersion(typ)
		}
		return out
	}
	second := "- addresses: [198.18.0.11]\n  conditions: {ready: %s}\n  targetRef: {kind: Pod, namespace: demo, name: web-1}\n"
	one := versions("")
	two := versions(strings.Replace(second, "%s", "true", 1))
	notReady := versions(strings.Replace(second, "%s", "false", 1))
	for name, next := range map[string]map[string]string{"endpoint added": two, "endpoint not ready": notReady} {
		prev := one
		if name == "endpoint not ready" {
			prev = two
		}
		for typ, v := range next {
			moved := v != prev[typ]
			if want := typ == resourcev3.EndpointType; moved != want {
				t.Errorf("%s: %s version moved=%v, want %v", name, typ, moved, want)
			}
		}
	}
}

// TestUpdateSurvivesTranslationPanic: a model the translator panics on (a
// nil service: no conversion makes one, it stands for a bug met on some
// input) is refused with an error naming the panic, the configuration
// published before stays, and the next model publishes as usual. A proxy
// whose own resources cannot be translated is refused, not added.
func TestUpdateSurvivesTranslationPanic(t *testing.T) {
	ctx := context.Background()
	mesh, cache := meshWithWeb(t)
	good := modelFrom(t, "")
	if _, err := mesh.Update(ctx, good); err != nil {
		t.Fatal(err)
	}
	version := func() string {
		snap, err := cache.GetSnapshot(webNode)
		if err != nil {
			t.Fatal(err)
		}
		return snap.GetVersion(resourcev3.EndpointType) + snap.GetVersion(resourcev3.ClusterType)
	}
	before := version()

	bad := *good
	bad.Services = vec.Of(append(bad.Services.Slice(), nil))
	_, err := mesh.Update(ctx, &bad)
	if err == nil || !strings.Contains(err.Error(), "translation failed") || !strings.Contains(err.Error(), "nil pointer") {
		t.Fatalf("Update of a model the translator panics on: %v", err)
	}
	if v := version(); v != before {
		t.Errorf("the failed model was published: versions %s, were %s", v, before)
	}
	if mesh.Snapshot() != good {
		t.Error("the mesh's model is the failed one")
	}

	next := modelFrom(t, "- addresses: [198.18.0.11]\n  targetRef: {kind: Pod, namespace: demo, name: web-1}\n")
	if _, err := mesh.Update(ctx, next); err != nil {
		t.Fatal(err)
	}
	if v := version(); v == before {
		t.Error("the model after the failed one was not published")
	}

	// A proxy whose workload cannot be translated (a nil policy): refused.
	odd := *next
	odd.Workloads = slices.Clone(next.Workloads)
	for i, w := range odd.Workloads {
		if w.Name == "web-1" {
			c := *w
			c.Policies = []*model.Policy{nil}
			odd.Workloads[i] = &c
		}
	}
	if _, err := mesh.Update(ctx, &odd); err != nil {
		t.Fatal(err) // web-1 has no proxy yet: nothing of its own translated
	}
	web1 := xds.Peer{NodeID: "web-1.demo", Identity: webID}
	err = mesh.AddProxy(ctx, web1)
	if status.Code(err) != codes.Internal {
		t.Fatalf("AddProxy of a proxy whose configuration panics: %v, want Internal", err)
	}
	if _, err := cache.GetSnapshot(web1.NodeID); err == nil {
		t.Error("the refused proxy has a snapshot")
	}
}

// TestUpdateKeepsOwnOfProxyThatPanics: a connected proxy whose own
// resources cannot be translated (its workload has a nil policy: no
// conversion makes one, it stands for a bug met on one pod) keeps the ones
// it had, with a TranslationFailed problem naming its pod, while the rest of
// the update (here an endpoint added) is published; the next model without
// the fault translates it again and the problem is gone.
func TestUpdateKeepsOwnOfProxyThatPanics(t *testing.T) {
	ctx := context.Background()
	mesh, cache := meshWithWeb(t)
	if _, err := mesh.Update(ctx, modelFrom(t, "")); err != nil {
		t.Fatal(err)
	}
	versions := func() (eds, lds string) {
		t.Helper()
		snap, err := cache.GetSnapshot(webNode)
		if err != nil {
			t.Fatal(err)
		}
		return snap.GetVersion(resourcev3.EndpointType), snap.GetVersion(resourcev3.ListenerType)
	}
	eds, lds := versions()

	endpoint := "- addresses: [198.18.0.11]\n  targetRef: {kind: Pod, namespace: demo, name: web-1}\n"
	odd := *modelFrom(t, endpoint)
	odd.Workloads = slices.Clone(odd.Workloads)
	for i, w := range odd.Workloads {
		if w.Name == "web-0" {
			c := *w
			c.Policies = []*model.Policy{nil}
			c.Ports = []model.Port{{Name: "http", Port: 8081, Protocol: model.ProtocolHTTP}} // would move its listener and its local cluster
			odd.Workloads[i] = &c
		}
	}
	problems, err := mesh.Update(ctx, &odd)
	if err != nil {
		t.Fatalf("one proxy's own translation failed the whole update: %v", err)
	}
	var failed []model.Problem
	for _, p := range problems {
		if p.Reason == "TranslationFailed" {
			failed = append(failed, p)
		}
	}
	if len(failed) != 1 || failed[0].Kind != "Pod" || failed[0].Namespace != "demo" || failed[0].Name != "web-0" || !strings.Contains(failed[0].Message, "nil pointer") {
		t.Fatalf("problems %v, want one TranslationFailed of pod demo/web-0 naming the panic", problems)
	}
	eds2, lds2 := versions()
	if eds2 == eds {
		t.Error("the endpoint added beside the failed proxy was not published")
	}
	if lds2 != lds {
		t.Error("the failed proxy's listeners moved: its own resources were not kept")
	}
	if mesh.Snapshot() != &odd {
		t.Error("the mesh's model is not the one published")
	}

	problems, err = mesh.Update(ctx, modelFrom(t, endpoint))
	if err != nil || len(problems) != 0 {
		t.Fatalf("the model without the fault: problems %v, error %v", problems, err)
	}
}
