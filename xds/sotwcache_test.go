package xds_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshd/meshd/xds/resource"
)

// TestSotWByNameAcrossChanges: a SotW stream subscribed by name to a type
// that may be sent in part (endpoint sets) gets, change after change, only what changed among its names; a name it
// subscribes to while a change is on its way is sent with the next
// response; a name it dropped and asks for again is sent again; after a
// NACK the rejected version is not resent, the next one in full.
func TestSotWByNameAcrossChanges(t *testing.T) {
	pki, addr, m := serveMeshd(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	// Endpoint sets named like clusters: ClusterLoadAssignment resources.
	set := func(weights map[string]uint32, names ...string) {
		t.Helper()
		if err := setShared(ctx, m.pub, endpointSets(weights, names...)); err != nil {
			t.Fatal(err)
		}
	}
	set(nil, "a", "b", "c")
	stream, done := adsClient(t, pki, addr, pki.issue(webID, webNode))
	defer done()
	send := func(nonce string, nack bool, names ...string) {
		t.Helper()
		req := &discoveryv3.DiscoveryRequest{Node: node(webNode, nil), TypeUrl: resourcev3.EndpointType, ResponseNonce: nonce, ResourceNames: names}
		if nack {
			req.ErrorDetail = &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: "test: rejected"}
		}
		if err := stream.Send(req); err != nil {
			t.Fatal(err)
		}
	}
	type got struct {
		nonce, version string
		sent           map[string]uint32 // name -> weight of its one endpoint
	}
	recv := func() got {
		t.Helper()
		resp, err := stream.Recv()
		if err != nil {
			t.Fatal(err)
		}
		g := got{nonce: resp.Nonce, version: resp.VersionInfo, sent: map[string]uint32{}}
		for _, r := range resp.Resources {
			var cla endpointv3.ClusterLoadAssignment
			if err := proto.Unmarshal(r.Value, &cla); err != nil {
				t.Fatal(err)
			}
			g.sent[cla.ClusterName] = weightOf(&cla)
		}
		return g
	}
	want := func(step string, g got, sent map[string]uint32) {
		t.Helper()
		if fmt.Sprint(g.sent) != fmt.Sprint(sent) {
			t.Fatalf("%s: sent %v; want %v", step, g.sent, sent)
		}
	}
	send("", false, "a", "b")
	g := recv()
	want("subscribe a, b", g, map[string]uint32{"a": 1, "b": 1})
	send(g.nonce, false, "a", "b") // ACK

	set(map[string]uint32{"b": 2, "c": 2}, "a", "b", "c")
	g = recv()
	want("b and c change", g, map[string]uint32{"b": 2})
	send(g.nonce, false, "a", "b")

	// c subscribed: sent alone (the others are held at their versions).
	send(g.nonce, false, "a", "b", "c")
	g = recv()
	want("subscribe c", g, map[string]uint32{"c": 2})
	send(g.nonce, false, "a", "b", "c")

	// b dropped, then asked for again without a change in between.
	set(map[string]uint32{"a": 3, "b": 2, "c": 2}, "a", "b", "c")
	g = recv()
	want("a changes", g, map[string]uint32{"a": 3})
	send(g.nonce, false, "a", "c")
	send(g.nonce, false, "a", "b", "c")
	g = recv()
	want("b dropped and asked for again", g, map[string]uint32{"b": 2})

	// A NACK: the rejected version is not resent; the next one goes out in
	// full (what the stream holds is no longer known exactly).
	send(g.nonce, true, "a", "b", "c")
	set(map[string]uint32{"a": 3, "b": 2, "c": 4}, "a", "b", "c")
	g = recv()
	want("after a NACK, c changes", g, map[string]uint32{"a": 3, "b": 2, "c": 4})
	send(g.nonce, false, "a", "b", "c")
}

// endpointSets are one-endpoint sets named names, each endpoint's weight
// given (1 when not).
func endpointSets(weights map[string]uint32, names ...string) resource.Resources {
	var out []types.Resource
	for i, n := range names {
		w := weights[n]
		if w == 0 {
			w = 1
		}
		out = append(out, &endpointv3.ClusterLoadAssignment{ClusterName: n, Endpoints: []*endpointv3.LocalityLbEndpoints{{
			LbEndpoints: []*endpointv3.LbEndpoint{{
				HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{Address: &corev3.Address{
					Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{Address: fmt.Sprintf("198.18.0.%d", i+1),
						PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 8080}}}}}},
				LoadBalancingWeight: wrapperspb.UInt32(w),
			}}}}})
	}
	return resource.Resources{resourcev3.EndpointType: out}
}

func weightOf(cla *endpointv3.ClusterLoadAssignment) uint32 {
	return cla.GetEndpoints()[0].GetLbEndpoints()[0].GetLoadBalancingWeight().GetValue()
}
