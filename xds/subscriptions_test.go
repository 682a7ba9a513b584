package xds_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/xds"
)

// TestSubscriptionFloodRefused: a delta stream may subscribe to the
// resources its configuration holds without limit, but to at most
// MaxUnknownNames names that do not exist per type: beyond that it gets
// ResourceExhausted (counted), while another proxy is served. Unsubscribing
// frees the allowance; an oversized name is InvalidArgument.
func TestSubscriptionFloodRefused(t *testing.T) {
	reg := prometheus.NewRegistry()
	pki, addr, m := serveMeshd(t, func(c *xds.Config) { c.Registerer = reg })
	publishListener(t, m, freePort(t))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	open := func() discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResourcesClient {
		s, err := discoveryv3.NewAggregatedDiscoveryServiceClient(dialConn(t, pki, addr, pki.issue(webID, webNode))).DeltaAggregatedResources(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.Send(&discoveryv3.DeltaDiscoveryRequest{Node: node(webNode, nil), TypeUrl: resourcev3.ListenerType}); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Recv(); err != nil {
			t.Fatal(err)
		}
		return s
	}
	names := func(prefix string, n int) []string {
		out := make([]string, n)
		for i := range out {
			out[i] = fmt.Sprintf("%s-%d", prefix, i)
		}
		return out
	}
	// Up to the allowance, across requests, unsubscribing in between.
	s := open()
	half := xds.MaxUnknownNames / 2
	for _, req := range []*discoveryv3.DeltaDiscoveryRequest{
		{TypeUrl: resourcev3.EndpointType, ResourceNamesSubscribe: names("a", half)},
		{TypeUrl: resourcev3.EndpointType, ResourceNamesUnsubscribe: names("a", half)},
		{TypeUrl: resourcev3.EndpointType, ResourceNamesSubscribe: names("b", xds.MaxUnknownNames)},
	} {
		if err := s.Send(req); err != nil {
			t.Fatal(err)
		}
	}
	// One more unknown name is too many.
	if err := s.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNamesSubscribe: []string{"one-too-many"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); status.Code(err) != codes.ResourceExhausted {
		t.Fatalf("past %d unknown names: %v; want ResourceExhausted", xds.MaxUnknownNames, err)
	}
	if n := limitedCount(t, reg, "subscribed_names"); n != 1 {
		t.Errorf("meshd_xds_limited_total{limit=subscribed_names} = %v, want 1", n)
	}
	// A name of the published configuration is always fine; a huge one is not.
	s = open()
	if err := s.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.ListenerType, ResourceNamesSubscribe: []string{"inbound"}}); err != nil {
		t.Fatal(err)
	}
	huge := make([]byte, xds.MaxNameLength+1)
	for i := range huge {
		huge[i] = 'x'
	}
	if err := s.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.ClusterType, ResourceNamesSubscribe: []string{string(huge)}}); err != nil {
		t.Fatal(err)
	}
	for {
		_, err := s.Recv()
		if err == nil {
			continue
		}
		if status.Code(err) != codes.InvalidArgument {
			t.Fatalf("a name of %d bytes: %v; want InvalidArgument", len(huge), err)
		}
		break
	}
}

// TestDeltaSubscribedShown: the status of a delta stream shows the names it
// subscribes to after each request adds some and drops others (a delta
// request carries only the change).
func TestDeltaSubscribedShown(t *testing.T) {
	pki, addr, m := serveMeshd(t)
	publishListener(t, m, freePort(t))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := discoveryv3.NewAggregatedDiscoveryServiceClient(dialConn(t, pki, addr, pki.issue(webID, webNode))).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, req := range []*discoveryv3.DeltaDiscoveryRequest{
		{Node: node(webNode, nil), TypeUrl: resourcev3.EndpointType, ResourceNamesSubscribe: []string{"c", "a", "b"}},
		{TypeUrl: resourcev3.EndpointType, ResourceNamesSubscribe: []string{"d"}, ResourceNamesUnsubscribe: []string{"a"}},
		{TypeUrl: resourcev3.EndpointType, ResourceNamesSubscribe: []string{"e"}},
		{TypeUrl: resourcev3.EndpointType, ResourceNamesUnsubscribe: []string{"e", "c"}},
	} {
		if err := s.Send(req); err != nil {
			t.Fatal(err)
		}
	}
	want := []string{"b", "d"}
	var got []string
	for ctx.Err() == nil {
		for _, p := range m.srv.Proxies() {
			if ts := p.Types[resourcev3.EndpointType]; ts != nil {
				got = ts.Subscribed
			}
		}
		if fmt.Sprint(got) == fmt.Sprint(want) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("delta stream's subscribed endpoint sets shown: %q, want %q", got, want)
}
