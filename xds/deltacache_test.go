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

	"github.com/meshd/meshd/xds/resource"
)

func staticClusters(names ...string) resource.Resources {
	var out []types.Resource
	for _, n := range names {
		out = append(out, &clusterv3.Cluster{Name: n, ClusterDiscoveryType: &clusterv3.Cluster_Type{Type: clusterv3.Cluster_STATIC},
			ConnectTimeout: nil})
	}
	return resource.Resources{resourcev3.ClusterType: out}
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
	if err := setShared(ctx, m.pub, staticClusters("a", "b", "c")); err != nil {
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
	if err := setShared(ctx, m.pub, changed); err != nil {
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
	// A new list (one handed on is never edited): b as before, a changed.
	changed = staticClusters("a", "b", "d")
	changed[resourcev3.ClusterType][1].(*clusterv3.Cluster).AltStatName = "changed"
	changed[resourcev3.ClusterType][0] = &clusterv3.Cluster{Name: "a", AltStatName: "changed too"}
	if err := setShared(ctx, m.pub, changed); err != nil {
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

// TestDeltaByNameAcrossChanges: a stream subscribed by name gets, change
// after change, only the changes of its names (the shared difference of
// each change), a removal of one of them, and a name subscribed later at
// its current version; a name it unsubscribed is no longer sent.
func TestDeltaByNameAcrossChanges(t *testing.T) {
	pki := newTestPKI(t)
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	m := startMeshd(t, pki, addr)
	t.Cleanup(func() { m.stop(t) })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	set := func(alt map[string]string, names ...string) {
		t.Helper()
		res := staticClusters(names...)
		for _, r := range res[resourcev3.ClusterType] {
			c := r.(*clusterv3.Cluster)
			c.AltStatName = alt[c.Name]
		}
		if err := setShared(ctx, m.pub, res); err != nil {
			t.Fatal(err)
		}
	}
	set(nil, "a", "b", "c")
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(dialConn(t, pki, addr, pki.issue(webID, webNode))).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	send := func(req *discoveryv3.DeltaDiscoveryRequest) {
		t.Helper()
		req.TypeUrl = resourcev3.ClusterType
		if err := stream.Send(req); err != nil {
			t.Fatal(err)
		}
	}
	type got struct {
		sent    map[string]string // name -> alt stat name
		removed []string
	}
	recv := func() got {
		t.Helper()
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		g := got{sent: map[string]string{}, removed: resp.RemovedResources}
		for _, r := range resp.Resources {
			var c clusterv3.Cluster
			if err := proto.Unmarshal(r.Resource.Value, &c); err != nil {
				t.Fatal(err)
			}
			g.sent[r.Name] = c.AltStatName
		}
		send(&discoveryv3.DeltaDiscoveryRequest{ResponseNonce: resp.Nonce})
		return g
	}
	want := func(step string, g got, sent map[string]string, removed ...string) {
		t.Helper()
		slices.Sort(g.removed)
		if fmt.Sprint(g.sent) != fmt.Sprint(sent) || !slices.Equal(g.removed, removed) {
			t.Fatalf("%s: sent %v removed %v; want sent %v removed %v", step, g.sent, g.removed, sent, removed)
		}
	}
	send(&discoveryv3.DeltaDiscoveryRequest{Node: node(webNode, nil), ResourceNamesSubscribe: []string{"a", "b"}})
	want("subscribe a, b", recv(), map[string]string{"a": "", "b": ""})
	set(map[string]string{"b": "1", "c": "1"}, "a", "b", "c")
	want("b and c change", recv(), map[string]string{"b": "1"})
	set(map[string]string{"a": "2", "b": "1", "c": "1"}, "a", "b", "c")
	want("a changes", recv(), map[string]string{"a": "2"})
	send(&discoveryv3.DeltaDiscoveryRequest{ResourceNamesSubscribe: []string{"c"}, ResourceNamesUnsubscribe: []string{"b"}})
	want("swap b for c", recv(), map[string]string{"c": "1"})
	set(map[string]string{"b": "3", "c": "3"}, "b", "c", "d")
	want("a goes, b and c change", recv(), map[string]string{"c": "3"}, "a")
	set(map[string]string{"b": "3", "c": "4"}, "b", "c", "d")
	want("c changes again", recv(), map[string]string{"c": "4"})
}

// TestResumeBeforeFirstPublish: a proxy reconnects to a restarted meshd
// before meshd published its first mesh config (still reading the
// cluster), announcing the versions it holds of resources it subscribes to
// by name. When the config comes and holds exactly those versions, nothing
// is sent, and meshd shows the type in sync all the same (sent and ACKed at
// the published version), not waiting for an ACK that never comes.
func TestResumeBeforeFirstPublish(t *testing.T) {
	pki := newTestPKI(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	clusters := staticClusters("a", "b")
	subscribe := func(addr string, initial map[string]string) discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient {
		t.Helper()
		stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(dialConn(t, pki, addr, pki.issue(webID, webNode))).DeltaAggregatedResources(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := stream.Send(&discoveryv3.DeltaDiscoveryRequest{Node: node(webNode, nil), TypeUrl: resourcev3.ClusterType,
			InitialResourceVersions: initial, ResourceNamesSubscribe: []string{"a", "b"}}); err != nil {
			t.Fatal(err)
		}
		return stream
	}

	// The versions a first meshd sends (content hashes: a restarted meshd
	// computes the same).
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	first := startMeshd(t, pki, addr)
	if err := setShared(ctx, first.pub, clusters); err != nil {
		t.Fatal(err)
	}
	stream := subscribe(addr, nil)
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	held := map[string]string{}
	for _, r := range resp.Resources {
		held[r.Name] = r.Version
	}
	if len(held) != 2 {
		t.Fatalf("first meshd sent %v, want a and b", held)
	}
	first.stop(t)

	addr = fmt.Sprintf("127.0.0.1:%d", freePort(t))
	m := startUnpublished(t, pki, addr)
	t.Cleanup(func() { m.stop(t) })
	resumed := subscribe(addr, held)
	defer func() { _ = resumed.CloseSend() }()
	eventually(t, "the stream open", func() error {
		for _, p := range m.srv.Proxies() {
			if p.Types[resourcev3.ClusterType] != nil {
				return nil
			}
		}
		return fmt.Errorf("no stream has asked for clusters yet")
	})
	if err := setShared(ctx, m.pub, clusters); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the resumed stream shown in sync", func() error {
		for _, p := range m.srv.Proxies() {
			ts := p.Types[resourcev3.ClusterType]
			if ts == nil {
				continue
			}
			if ts.Responses != 0 {
				return fmt.Errorf("%d responses sent to a stream holding every version", ts.Responses)
			}
			if ts.AckedVersion == "" || ts.AckedVersion != ts.SentVersion {
				return fmt.Errorf("resumed stream: sent %q acked %q", ts.SentVersion, ts.AckedVersion)
			}
			return nil
		}
		return fmt.Errorf("no stream")
	})
}
