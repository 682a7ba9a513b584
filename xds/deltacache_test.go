package xds_test

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"

	"github.com/meshd/meshd/xds"
)

func staticClusters(names ...string) xds.Resources {
	var out []types.Resource
	for _, n := range names {
		out = append(out, &clusterv3.Cluster{Name: n, ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
			ConnectTimeout: nil})
	}
	return xds.Resources{resourcev3.ClusterType: out}
}

// TestDeltaFromSharedEncodings: delta responses built from the shared
// encodings carry the published clusters intact, send only what changed,
// name what was removed, and keep a resource's version across changes of
// others; a reconnect announcing those versions gets nothing again.
func TestDeltaFromSharedEncodings(t *testing.T) {
	pki := newTestPKI(t)
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	m := startMeshd(t, pki, addr)
	t.Cleanup(func() { m.stop(t) })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := m.pub.SetShared(ctx, staticClusters("a", "b", "c")); err != nil {
		t.Fatal(err)
	}
	open := func(initial map[string]string, names ...string) discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient {
		stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(dialConn(t, pki, addr, pki.issue(webID, webNode))).DeltaAggregatedResources(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := stream.Send(&discoveryv3.DeltaDiscoveryRequest{Node: node(webNode, nil), TypeUrl: resourcev3.ClusterType,
			InitialResourceVersions: initial, ResourceNamesSubscribe: names}); err != nil {
			t.Fatal(err)
		}
		return stream
	}
	recv := func(stream discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient) (map[string]string, []string) {
		t.Helper()
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]string{}
		for _, r := range resp.Resources {
			var c clusterv3.Cluster
			if err := proto.Unmarshal(r.Resource.Value, &c); err != nil || c.Name != r.Name || r.Version == "" {
				t.Fatalf("resource %s version %q decodes to %q (%v)", r.Name, r.Version, c.Name, err)
			}
			got[r.Name] = r.Version
		}
		_ = stream.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resp.TypeUrl, ResponseNonce: resp.Nonce})
		slices.Sort(resp.RemovedResources)
		return got, resp.RemovedResources
	}
	stream := open(nil)
	first, _ := recv(stream)
	if len(first) != 3 {
		t.Fatalf("first response %v, want a, b, c", first)
	}
	// b changes, c goes, d comes: only b and d are sent, c is removed.
	changed := staticClusters("a", "b", "d")
	changed[resourcev3.ClusterType][1].(*clusterv3.Cluster).AltStatName = "changed"
	if err := m.pub.SetShared(ctx, changed); err != nil {
		t.Fatal(err)
	}
	second, removed := recv(stream)
	if _, ok := second["a"]; ok || second["b"] == first["b"] || second["d"] == "" || !slices.Equal(removed, []string{"c"}) {
		t.Fatalf("after the change: sent %v, removed %v; want b (new version) and d, removed [c]", second, removed)
	}
	// A reconnect that knows a, b and d at these versions gets nothing
	// new: its first response is the next change, a alone.
	known := map[string]string{"a": first["a"], "b": second["b"], "d": second["d"]}
	again := open(known)
	if resent, _ := recv(again); len(resent) != 0 {
		t.Fatalf("a reconnect with current versions was sent %v again; want nothing", resent)
	}
	changed[resourcev3.ClusterType][0] = &clusterv3.Cluster{Name: "a", AltStatName: "changed too"}
	if err := m.pub.SetShared(ctx, changed); err != nil {
		t.Fatal(err)
	}
	third, _ := recv(again)
	if len(third) != 1 || third["a"] == "" || third["a"] == first["a"] {
		t.Fatalf("then a change of a: sent %v; want only a, at a new version", third)
	}
	// Subscribing by name with the current versions: nothing is sent, and
	// meshd shows the type in sync (sent and ACKed at the published version).
	named := open(map[string]string{"a": third["a"], "d": second["d"]}, "a", "d")
	defer func() { _ = named.CloseSend() }()
	eventually(t, "the resumed stream shown in sync", func() error {
		n := 0
		for _, p := range m.srv.Proxies() {
			if ts := p.Types[resourcev3.ClusterType]; p.NodeID == webNode && ts != nil && ts.Responses == 0 {
				if ts.AckedVersion == "" || ts.AckedVersion != ts.SentVersion {
					return fmt.Errorf("resumed stream: sent %q acked %q", ts.SentVersion, ts.AckedVersion)
				}
				n++
			}
		}
		if n != 1 {
			return fmt.Errorf("%d streams without responses", n)
		}
		return nil
	})
}
