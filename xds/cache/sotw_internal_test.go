package cache

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/stream/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/meshd/meshd/xds/resource"
)

// A SotW response naming every resource of the set carries the set's one
// shared encoding (what a connecting proxy asks for), one naming part of it
// only those resources; both decode to exactly what was asked for.
func TestSotwWholeSetShared(t *testing.T) {
	var items []types.Resource
	var all []string
	for i := range 50 {
		name := fmt.Sprintf("c%02d", i)
		items = append(items, &clusterv3.Cluster{Name: name, AltStatName: "x"})
		all = append(all, name)
	}
	sets, err := resource.Own(resource.Resources{resourcev3.ClusterType: items})
	if err != nil {
		t.Fatal(err)
	}
	set := sets[resourcev3.ClusterType]
	req := &discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.ClusterType}
	for _, tc := range []struct {
		names  []string
		shared bool
	}{{all, true}, {all[3:9], false}} {
		r := &sotwResponse{req: req, held: &sotwHeld{}, set: &set, names: tc.names}
		resp, err := r.GetDiscoveryResponse()
		if err != nil {
			t.Fatal(err)
		}
		if shared := len(resp.ProtoReflect().GetUnknown()) > 0; shared != tc.shared {
			t.Errorf("%d of %d names: shared encoding %v, want %v", len(tc.names), len(all), shared, tc.shared)
		}
		b, err := proto.Marshal(resp)
		if err != nil {
			t.Fatal(err)
		}
		var back discoveryv3.DiscoveryResponse
		if err := proto.Unmarshal(b, &back); err != nil {
			t.Fatal(err)
		}
		got := map[string]bool{}
		for _, a := range back.GetResources() {
			var c clusterv3.Cluster
			if err := a.UnmarshalTo(&c); err != nil {
				t.Fatal(err)
			}
			got[c.GetName()] = true
		}
		if len(got) != len(tc.names) || len(back.GetResources()) != len(tc.names) {
			t.Fatalf("%d names asked: %d resources sent (%d distinct)", len(tc.names), len(back.GetResources()), len(got))
		}
		for _, n := range tc.names {
			if !got[n] {
				t.Fatalf("%s asked, not sent", n)
			}
		}
	}
}

// endpointSnapshot is a snapshot of endpoint sets named names, their
// content marked by tag.
func endpointSnapshot(t *testing.T, tag string, names ...string) *resource.Snapshot {
	t.Helper()
	var items []types.Resource
	for _, n := range names {
		items = append(items, &endpointv3.ClusterLoadAssignment{ClusterName: n, Policy: &endpointv3.ClusterLoadAssignment_Policy{OverprovisioningFactor: wrapperspb.UInt32(uint32(len(tag)))}})
	}
	sets, err := resource.Own(resource.Resources{resourcev3.EndpointType: items})
	if err != nil {
		t.Fatal(err)
	}
	return resource.NewSnapshot(sets)
}

// sotwStream plays go-control-plane's SotW server for one stream of one
// type: its subscription (go-control-plane's own) is set from each request
// before the watch is made, and a response is taken when sent.
type sotwStream struct {
	t     *testing.T
	c     *Cache
	id    int64
	sub   stream.Subscription
	nonce int
}

// watch sends names (an ACK of the last response, if any) and returns the
// channel its response comes on.
func (s *sotwStream) watch(names []string) chan cachev3.Response {
	s.t.Helper()
	req := &discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, Node: &corev3.Node{Id: "n"}, ResourceNames: names}
	if s.nonce > 0 {
		req.ResponseNonce = fmt.Sprint(s.nonce)
	}
	s.c.NoteRequest(s.id, req)
	// As go-control-plane's server does, after the callbacks noted it.
	if s.nonce == 0 && s.sub.SubscribedResources() == nil {
		s.sub = stream.NewSotwSubscription(req.GetResourceNames(), false)
	} else {
		s.sub.SetResourceSubscription(req.GetResourceNames())
	}
	ch := make(chan cachev3.Response, 1)
	if _, err := s.c.CreateWatch(req, s.sub, ch); err != nil {
		s.t.Fatal(err)
	}
	return ch
}

// names sends a response and returns the names of its endpoint sets.
func (s *sotwStream) names(r cachev3.Response) []string {
	s.t.Helper()
	resp, err := r.GetDiscoveryResponse()
	if err != nil {
		s.t.Fatal(err)
	}
	s.nonce++
	var got []string
	for _, a := range resp.GetResources() {
		var cla endpointv3.ClusterLoadAssignment
		if err := a.UnmarshalTo(&cla); err != nil {
			s.t.Fatal(err)
		}
		got = append(got, cla.GetClusterName())
	}
	return got
}

// request sends names and returns the names of the response it gets at
// once, if any.
func (s *sotwStream) request(names []string) ([]string, bool) {
	s.t.Helper()
	select {
	case r := <-s.watch(names):
		return s.names(r), true
	default:
		return nil, false
	}
}

// A stream's names are the cache's to keep: go-control-plane's server
// gets the request without them (and keeps no map of them); after an ACK
// the stream holds one map of its names, the set its subscription shares
// with every stream subscribing to the same names; and what it is sent is
// unchanged: names it adds later are sent, names it held are not sent
// again.
func TestSotwACKHoldsOneNameMap(t *testing.T) {
	c := New(nil)
	all := []string{"a", "b", "c", "d"}
	if err := c.SetSnapshot(context.Background(), "n", endpointSnapshot(t, "1", all...)); err != nil {
		t.Fatal(err)
	}
	s := &sotwStream{t: t, c: c, id: 1}
	if got, ok := s.request(all[:2]); !ok || !slices.Equal(got, all[:2]) {
		t.Fatalf("first request sent %v (%v), want %v", got, ok, all[:2])
	}
	if got, ok := s.request(all[:2]); ok {
		t.Fatalf("an ACK was answered with %v", got)
	}
	if n := len(s.sub.SubscribedResources()); n != 0 {
		t.Errorf("go-control-plane's subscription holds %d names, want none", n)
	}
	ep := resource.Order(resourcev3.EndpointType)
	h := c.held.byID[1].types[ep].held.(*sotwHeld)
	sub := c.held.byID[1].types[ep].sub
	if reflect.ValueOf(h.names).UnsafePointer() != reflect.ValueOf(sub.SubscribedResources()).UnsafePointer() {
		t.Error("after an ACK the stream holds another map of its names than its subscription's")
	}
	other := &sotwStream{t: t, c: c, id: 2}
	other.request([]string{"b", "a"})
	if c.held.byID[2].types[ep].sub.names != sub.names {
		t.Error("two streams subscribing to the same names hold two sets of them")
	}
	// A name added: only it is sent.
	if got, ok := s.request(all[:3]); !ok || !slices.Equal(got, all[2:3]) {
		t.Fatalf("adding c sent %v (%v), want [c]", got, ok)
	}
	// A name asked for that does not exist yet, then the same names again
	// (the held names are fewer than the subscription's): when it comes,
	// it is sent.
	if _, ok := s.request([]string{"a", "b", "c", "e"}); ok {
		t.Fatal("a request adding a missing name was answered")
	}
	if _, ok := s.request([]string{"a", "b", "c", "e"}); ok {
		t.Fatal("a repeated request was answered")
	}
	ch := s.watch([]string{"a", "b", "c", "e"})
	if err := c.SetSnapshot(context.Background(), "n", endpointSnapshot(t, "1", "a", "b", "c", "d", "e")); err != nil {
		t.Fatal(err)
	}
	if got := s.names(<-ch); !slices.Equal(got, []string{"e"}) {
		t.Errorf("when e came the stream was sent %v, want [e]", got)
	}
}
