package xds_test

import (
	"context"
	"testing"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/meshd/meshd/sds"
	"github.com/meshd/meshd/xds"
)

// TestVersionsAreContentHashes: two publishers (two replicas) given the same
// resources in a different order publish the same versions; a change of
// content changes the version; nothing is published before the secrets.
func TestVersionsAreContentHashes(t *testing.T) {
	pki := newTestPKI(t)
	cert := pki.issue(webID, webNode)
	secrets := []types.Resource{sds.CertificateSecret(cert), sds.BundleSecret(cert.BundlePEM)}
	reversed := []types.Resource{secrets[1], secrets[0]}
	ctx := context.Background()

	versions := func(secretSet []types.Resource, port int) map[string]string {
		cache := cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil)
		pub := xds.NewPublisher(cache)
		if err := pub.SetShared(ctx, proxylessResources(t, port, "/")); err != nil {
			t.Fatal(err)
		}
		if _, err := cache.GetSnapshot(webNode); err == nil {
			t.Fatal("snapshot published before the proxy's secrets")
		}
		if err := pub.SetProxy(ctx, webNode, xds.Resources{resourcev3.SecretType: secretSet}); err != nil {
			t.Fatal(err)
		}
		snap, err := cache.GetSnapshot(webNode)
		if err != nil {
			t.Fatal(err)
		}
		out := map[string]string{}
		for _, typ := range []string{resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.ListenerType, resourcev3.RouteType, resourcev3.SecretType} {
			out[typ] = snap.GetVersion(typ)
		}
		return out
	}
	a, b := versions(secrets, 8080), versions(reversed, 8080)
	for typ, v := range a {
		if v == "" || b[typ] != v {
			t.Errorf("%s: replica versions %q and %q differ", typ, v, b[typ])
		}
	}
	c := versions(secrets, 9090) // endpoint port changed
	if c[resourcev3.EndpointType] == a[resourcev3.EndpointType] {
		t.Error("endpoint content changed but its version did not")
	}
	if c[resourcev3.ClusterType] != a[resourcev3.ClusterType] {
		t.Error("cluster version changed though clusters did not")
	}
}
