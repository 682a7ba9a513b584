package xds

import (
	"bytes"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"testing"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"

	"github.com/meshd/meshd/xds/resource"
)

// nameList is n names, each its own string (as decoded from a request).
func nameList(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s|%d", prefix, i)
	}
	return out
}

func sameArray(a, b []string) bool { return len(a) > 0 && len(b) > 0 && &a[0] == &b[0] }

func TestSharedListsShareEqualLists(t *testing.T) {
	l := newSharedLists()
	a, b := nameList("outbound|80|svc", 100), nameList("outbound|80|svc", 100)
	ca, cb := l.share(a), l.share(b)
	if !slices.Equal(ca, a) || !slices.Equal(cb, b) {
		t.Fatal("a shared list does not have the names it was given")
	}
	if !sameArray(ca, cb) {
		t.Error("two lists of the same names are not shared")
	}
	if sameArray(ca, a) || sameArray(cb, b) {
		t.Error("the canonical list is the caller's slice: the caller may still write it")
	}
	if c := l.share(nameList("outbound|80|other", 100)); sameArray(c, ca) {
		t.Error("lists of other names share one array")
	}
	// Another order is another list.
	rev := slices.Clone(a)
	slices.Reverse(rev)
	if c := l.share(rev); sameArray(c, ca) || !slices.Equal(c, rev) {
		t.Error("a list in another order was given the canonical list of the first order")
	}
	short := nameList("x", minShared-1)
	if c := l.share(short); !sameArray(c, short) {
		t.Error("a short list was copied")
	}
}

func TestSharedListsCollisionIsNotShared(t *testing.T) {
	l := newSharedLists()
	a, b := nameList("a", 50), nameList("b", 50)
	cb := l.share(b)
	// b's canonical list under a's key: a hash collision.
	l.byHash[l.hash(a)] = l.byHash[l.hash(b)]
	ca := l.share(a)
	if !slices.Equal(ca, a) || sameArray(ca, cb) {
		t.Fatalf("a list colliding with another got the other's names: %v", ca[:3])
	}
	if got := l.share(nameList("a", 50)); !sameArray(got, ca) {
		t.Error("the list that replaced a colliding entry is not shared")
	}
}

// A client sending a new list with every request leaves garbage, not a
// growing table.
func TestSharedListsForgetCollectedLists(t *testing.T) {
	l := newSharedLists()
	kept := l.share(nameList("kept", 20))
	for i := range 5000 {
		l.share(nameList(fmt.Sprint("junk", i), 20))
		if i%1000 == 999 {
			runtime.GC()
		}
	}
	runtime.GC()
	l.share(nameList("last", 20))
	l.mu.Lock()
	l.sweepLocked()
	n := len(l.byHash)
	l.mu.Unlock()
	if n > 10 {
		t.Errorf("the table holds %d lists after 5,000 lists nobody keeps", n)
	}
	if c := l.share(nameList("kept", 20)); !sameArray(c, kept) {
		t.Error("a list still held was forgotten")
	}
	runtime.KeepAlive(kept)
}

// Two SotW streams asking for the same names hold one list, and an ACK
// repeating them is decoded to it.
func TestSotwStreamsShareNames(t *testing.T) {
	wire, err := proto.Marshal(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNames: nameList("outbound|80|shared-svc", 200)})
	if err != nil {
		t.Fatal(err)
	}
	var prev1, prev2 prevNames
	r1, r2, ack := &discoveryv3.DiscoveryRequest{}, &discoveryv3.DiscoveryRequest{}, &discoveryv3.DiscoveryRequest{}
	for _, d := range []sotwRequest{{req: r1, prev: &prev1}, {req: r2, prev: &prev2}, {req: ack, prev: &prev1}} {
		if err := decodeSotwRequest(wire, d); err != nil {
			t.Fatal(err)
		}
	}
	if !sameArray(r1.ResourceNames, r2.ResourceNames) || !sameArray(ack.ResourceNames, r1.ResourceNames) {
		t.Error("two streams naming the same resources hold two lists")
	}
	if !slices.Equal(r2.ResourceNames, nameList("outbound|80|shared-svc", 200)) {
		t.Error("the shared list does not have the request's names")
	}
	// And one encoding of the names, which an ACK is compared with.
	slot := resource.Order(resourcev3.EndpointType)
	if run1, run2 := prev1.runs[slot], prev2.runs[slot]; run1 == nil || run1 != run2 || !bytes.Contains(wire, *run1) {
		t.Errorf("the streams hold runs %p and %p, not one shared encoding of the names", run1, run2)
	}
	// An ACK naming one resource differently (the same length) is not the list.
	other := nameList("outbound|80|shared-svc", 200)
	other[100] = strings.Replace(other[100], "shared", "sharex", 1)
	changed, err := proto.Marshal(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNames: other})
	if err != nil {
		t.Fatal(err)
	}
	r3 := &discoveryv3.DiscoveryRequest{}
	if err := decodeSotwRequest(changed, sotwRequest{req: r3, prev: &prev1}); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(r3.ResourceNames, other) || prev1.runs[slot] == prev2.runs[slot] {
		t.Error("a changed name was taken for the stream's previous one")
	}
}
