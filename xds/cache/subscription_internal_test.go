package cache

import (
	"context"
	"fmt"
	"maps"
	"math/rand/v2"
	"runtime"
	"slices"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/stream/v3"

	"github.com/meshd/meshd/xds/resource"
)

// randomNames is up to 4 of the names r0..r5 and "*", possibly repeated.
func randomNames(rng *rand.Rand) []string {
	var names []string
	for range rng.IntN(5) {
		if rng.IntN(7) == 0 {
			names = append(names, wildcardName)
		} else {
			names = append(names, fmt.Sprintf("r%d", rng.IntN(6)))
		}
	}
	return names
}

// TestSubscriptionIsGoControlPlanes: the subscription the cache keeps
// after each request of a stream is the one go-control-plane's server
// would have kept from the same requests (wildcard, legacy wildcard,
// names, and a delta stream's initial versions with its unsubscribes),
// for random sequences of SotW and delta requests.
func TestSubscriptionIsGoControlPlanes(t *testing.T) {
	rng := rand.New(rand.NewPCG(3, 4))
	sets := newNameSets()
	for i := range 20000 {
		delta := i%2 == 0
		var ours *subscription
		var theirs stream.Subscription
		for j := range 1 + rng.IntN(6) {
			var a asked
			if delta {
				a = asked{delta: true, names: randomNames(rng), dropped: randomNames(rng)}
				if j == 0 && rng.IntN(2) == 0 {
					a.initial = map[string]string{"r0": "1", "r3": "2", "r5": "3"}
				}
				if j == 0 {
					theirs = stream.NewDeltaSubscription(a.names, a.dropped, maps.Clone(a.initial), true)
				} else {
					theirs.UpdateResourceSubscriptions(a.names, a.dropped)
				}
			} else {
				a = asked{names: randomNames(rng)}
				if j == 0 {
					theirs = stream.NewSotwSubscription(a.names, true)
				} else {
					theirs.SetResourceSubscription(a.names)
				}
			}
			before := fmt.Sprint(a.initial)
			ours = ours.next(a, sets)
			if fmt.Sprint(a.initial) != before {
				t.Fatal("the request's initial versions were written")
			}
			if ours.IsWildcard() != theirs.IsWildcard() || !maps.Equal(ours.SubscribedResources(), theirs.SubscribedResources()) {
				t.Fatalf("sequence %d, request %d (%+v): got wildcard %v names %v, go-control-plane has %v %v",
					i, j, a, ours.IsWildcard(), ours.SubscribedResources(), theirs.IsWildcard(), theirs.SubscribedResources())
			}
			if delta && !maps.Equal(ours.ReturnedResources(), theirs.ReturnedResources()) {
				t.Fatalf("sequence %d, request %d (%+v): initial versions %v, go-control-plane has %v", i, j, a, ours.ReturnedResources(), theirs.ReturnedResources())
			}
		}
	}
}

// TestSubscriptionsShareNames: streams subscribing to the same names hold
// one set of them, whatever the order or the route (one request, or names
// added and dropped); a repeated request keeps the subscription as it is;
// sets no subscription holds are forgotten.
func TestSubscriptionsShareNames(t *testing.T) {
	sets := newNameSets()
	a := (*subscription)(nil).next(asked{names: []string{"x", "y", "z"}}, sets)
	b := (*subscription)(nil).next(asked{names: []string{"z", "x", "y"}}, sets)
	if a.names != b.names {
		t.Error("the same names in another order are another set")
	}
	c := (*subscription)(nil).next(asked{delta: true, names: []string{"x", "w"}}, sets)
	c = c.next(asked{delta: true, names: []string{"y", "z"}, dropped: []string{"w"}}, sets)
	if c.names != a.names {
		t.Error("the same names subscribed over delta requests are another set")
	}
	if again := a.next(asked{names: a.list}, sets); again != a {
		t.Error("a SotW ACK of the same list made a new subscription")
	}
	if again := a.next(asked{names: []string{"x", "y", "z"}}, sets); again.names != a.names {
		t.Error("a SotW request of equal names made a new set")
	}
	if again := c.next(asked{delta: true}, sets); again != c {
		t.Error("a delta ACK made a new subscription")
	}
	if d := a.next(asked{names: []string{"x"}}, sets); d.names == a.names || len(d.names.m) != 1 {
		t.Errorf("other names share the set: %v", d.names.m)
	}
	for i := range 10000 {
		if i%500 == 0 {
			runtime.GC()
		}
		(*subscription)(nil).next(asked{names: []string{fmt.Sprint(i)}}, sets)
	}
	if n := len(sets.byHash); n > 2500 {
		t.Errorf("10,000 sets nobody holds left %d entries", n)
	}
	runtime.KeepAlive(a)
	runtime.KeepAlive(c)
}

// TestSubscriptionFindsSharedSetFromList: a stream naming the names of a
// set already shared (a proxy connecting to a mesh others are in) gets
// that set without a map of its own, in any order, with "*" among them;
// a list naming one of them twice, or one more, is not that set; a delta
// request adding names the stream has keeps its set.
func TestSubscriptionFindsSharedSetFromList(t *testing.T) {
	sets := newNameSets()
	names := make([]string, 1000)
	for i := range names {
		names[i] = fmt.Sprintf("outbound|80||svc-%d.ns.svc.cluster.local", i)
	}
	first := (*subscription)(nil).next(asked{delta: true, names: names}, sets)
	shuffled := slices.Clone(names)
	rand.New(rand.NewPCG(1, 2)).Shuffle(len(shuffled), func(i, j int) { shuffled[i], shuffled[j] = shuffled[j], shuffled[i] })
	withWildcard := append(slices.Clone(shuffled), wildcardName)
	(*subscription)(nil).next(asked{delta: true, names: shuffled}, sets) // the set's numbering, made once
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range 20 {
		if s := (*subscription)(nil).next(asked{delta: true, names: shuffled}, sets); s.names != first.names || s.wildcard {
			t.Fatal("the same names in another order are not the shared set")
		}
		if s := (*subscription)(nil).next(asked{names: withWildcard}, sets); s.names != first.names || !s.wildcard {
			t.Fatal("the same names and the wildcard are not the shared set and a wildcard")
		}
	}
	runtime.ReadMemStats(&after)
	// A map of 1,000 names is ~40 KB; a subscription is what may be
	// allocated.
	if perStream := (after.TotalAlloc - before.TotalAlloc) / 40; perStream > 2048 {
		t.Errorf("finding the shared set of 1,000 names allocated %d bytes per stream", perStream)
	}
	twice := slices.Clone(names)
	twice[999] = twice[0]
	if first.names.isList(twice, len(twice)) {
		t.Error("a list naming one name twice and missing another is the set")
	}
	other := slices.Clone(names)
	other[3] = "not-in-the-set"
	if first.names.isList(other, len(other)) {
		t.Error("a list naming one name the set does not have is the set")
	}
	if s := (*subscription)(nil).next(asked{delta: true, names: twice}, sets); len(s.names.m) != 999 || s.names == first.names {
		t.Errorf("a list naming one name twice subscribes to %d names", len(s.names.m))
	}
	more := append(slices.Clone(names), "one-more")
	if s := (*subscription)(nil).next(asked{names: more}, sets); len(s.names.m) != 1001 {
		t.Errorf("a list of one name more subscribes to %d names", len(s.names.m))
	}
	if s := first.next(asked{delta: true, names: names[:10]}, sets); s.names != first.names {
		t.Error("a delta request adding names the stream has made a new set")
	}
	s := first.next(asked{delta: true, names: []string{"new"}}, sets)
	if _, written := first.names.m["new"]; len(s.names.m) != 1001 || written || len(first.names.m) != 1000 {
		t.Errorf("adding a name: %d names, the shared set now %d", len(s.names.m), len(first.names.m))
	}
}

// TestInitialVersionsKeptUntilSent: a delta stream's initial versions
// (a proxy reconnecting) are compared until the stream is sent the type,
// then no longer kept: its ~1,000 names and versions do not stay with the
// stream for its life. go-control-plane's server gets the requests without
// names or versions.
func TestInitialVersionsKeptUntilSent(t *testing.T) {
	c := New(nil)
	if err := c.SetSnapshot(context.Background(), "n", endpointSnapshot(t, "1", "a", "b")); err != nil {
		t.Fatal(err)
	}
	slot := resource.Order(resourcev3.EndpointType)
	node := &corev3.Node{Id: "n"}
	first := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, Node: node,
		ResourceNamesSubscribe: []string{"a", "b"}, InitialResourceVersions: map[string]string{"a": "old", "b": "old"}}
	c.NoteDeltaRequest(1, first)
	if first.GetResourceNamesSubscribe() != nil || first.GetInitialResourceVersions() != nil {
		t.Fatal("the request handed on to go-control-plane's server still has its names or versions")
	}
	ch := make(chan cachev3.DeltaResponse, 2)
	if _, err := c.CreateDeltaWatch(first, stream.NewDeltaSubscription(nil, nil, nil, true), ch); err != nil {
		t.Fatal(err)
	}
	if got := c.held.byID[1].types[slot].sub.ReturnedResources(); len(got) != 2 {
		t.Fatalf("before anything was sent the initial versions are %v", got)
	}
	r := <-ch
	if names := r.(*deltaResponse).names; len(names) != 2 {
		t.Fatalf("first response sends %v, want a and b (their initial versions are old)", names)
	}
	if _, err := r.GetDeltaDiscoveryResponse(); err != nil {
		t.Fatal(err)
	}
	ack := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, Node: node, ResponseNonce: "1"}
	c.NoteDeltaRequest(1, ack)
	if _, err := c.CreateDeltaWatch(ack, stream.NewDeltaSubscription(nil, nil, nil, true), ch); err != nil {
		t.Fatal(err)
	}
	sub := c.held.byID[1].types[slot].sub
	if sub.ReturnedResources() != nil {
		t.Errorf("after the type was sent the stream keeps initial versions %v", sub.ReturnedResources())
	}
	if len(sub.SubscribedResources()) != 2 {
		t.Errorf("the subscription lost its names: %v", sub.SubscribedResources())
	}
}
