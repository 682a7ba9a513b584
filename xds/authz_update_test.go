package xds_test

import (
	"context"
	"testing"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/meshd/meshd/ca"
	"github.com/meshd/meshd/k8s"
	"github.com/meshd/meshd/sds"
	"github.com/meshd/meshd/xds"
	"github.com/meshd/meshd/xds/publish"
	"github.com/meshd/meshd/xds/resource"
)

// authzYAML: two pods with an HTTP port (8080) and a TCP port (9090);
// policies are appended.
const authzYAML = `
apiVersion: v1
kind: Namespace
metadata: {name: demo, labels: {meshd.io/inject: enabled}}
---
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: demo, labels: {app: a}}
spec:
  serviceAccountName: web
  containers: [{name: c, image: c, ports: [{name: http, containerPort: 8080}, {name: tcp, containerPort: 9090}]}]
status: {podIP: 198.18.0.10}
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: demo, labels: {app: b}}
spec:
  serviceAccountName: web
  containers: [{name: c, image: c, ports: [{name: http, containerPort: 8080}, {name: tcp, containerPort: 9090}]}]
status: {podIP: 198.18.0.11}
`

// TestPolicyChangeReachesOnlySelectedProxies: a policy on web-0's HTTP port
// moves only web-0's route version (its listener, and so its connections,
// stay as they are); one on its TCP port moves only web-0's listener;
// web-1, selected by neither, keeps every version.
func TestPolicyChangeReachesOnlySelectedProxies(t *testing.T) {
	pki := newTestPKI(t)
	ctx := context.Background()
	cache := cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil)
	pub := publish.New(cache)
	mesh := xds.NewMesh(pub, nil)
	nodes := []string{xds.NodeID("demo", "web-0"), xds.NodeID("demo", "web-1")}
	for _, n := range nodes {
		id := ca.Identity{TrustDomain: "cluster.local", Namespace: "demo", ServiceAccount: "web"}
		if err := mesh.AddProxy(ctx, xds.Peer{NodeID: n, Identity: id}); err != nil {
			t.Fatal(err)
		}
		cert := pki.issue(id, n)
		if err := pub.SetProxy(ctx, n, resource.Resources{resourcev3.SecretType: []types.Resource{sds.CertificateSecret(cert), sds.BundleSecret(cert.BundlePEM)}}); err != nil {
			t.Fatal(err)
		}
	}
	versions := func(policy string) map[string]string {
		t.Helper()
		st, err := k8s.StateFromYAML([]byte(authzYAML + policy))
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
		out := map[string]string{}
		for _, n := range nodes {
			s, err := cache.GetSnapshot(n)
			if err != nil {
				t.Fatal(err)
			}
			for _, typ := range []string{resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.ListenerType, resourcev3.RouteType} {
				out[n+" "+typ] = s.GetVersion(typ)
			}
		}
		return out
	}
	policy := func(port string) string {
		return "---\napiVersion: meshd.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: demo}\n" +
			"spec: {selector: {matchLabels: {app: a}}, ports: [" + port + "], action: ALLOW, rules: [{from: {serviceAccounts: [demo/client]}}]}\n"
	}
	none := versions("")
	for port, moves := range map[string]string{"8080": resourcev3.RouteType, "9090": resourcev3.ListenerType} {
		got := versions(policy(port))
		for key, v := range got {
			want := key == nodes[0]+" "+moves
			if moved := v != none[key]; moved != want {
				t.Errorf("policy on port %s: %s moved=%v, want %v", port, key, moved, want)
			}
		}
	}
}
