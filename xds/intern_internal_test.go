package xds

import (
	"fmt"
	"testing"
	"unique"
	"unsafe"

	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"k8s.io/utils/clock"
)

// A SotW request repeating the stream's previous names gets the previous
// request's copies; a name that moved or is new gets the canonical copy;
// every value stays what the proxy sent.
func TestInternRepeated(t *testing.T) {
	c := &callbacks{streams: newStreams(clock.RealClock{})}
	c.streams.open(1, Peer{}, false, "")
	fresh := func(names ...string) []string { // copies with their own storage
		out := make([]string, len(names))
		for i, n := range names {
			out[i] = string([]byte(n))
		}
		return out
	}
	same := func(a, b string) bool { return unsafe.StringData(a) == unsafe.StringData(b) }
	var want []string
	for i := range 5 {
		want = append(want, fmt.Sprintf("outbound|80|svc-%d.demo", i))
	}
	first := fresh(want...)
	c.internRepeated(1, resourcev3.EndpointType, first)
	for i, n := range first {
		if n != want[i] || !same(n, unique.Make(want[i]).Value()) {
			t.Fatalf("first request: name %d (%q) is not the canonical copy", i, n)
		}
	}
	c.streams.with(1, func(s *stream) { s.typ(resourcev3.EndpointType).Subscribed = first })

	// The ACK: the same names and one new one, one moved place.
	second := fresh(want[0], want[1], want[3], want[2], want[4], "outbound|80|new.demo")
	c.internRepeated(1, resourcev3.EndpointType, second)
	for i, n := range second {
		if !same(n, unique.Make(n).Value()) {
			t.Errorf("second request: name %d (%q) is not the canonical copy", i, n)
		}
	}
	if second[3] != want[2] || second[5] != "outbound|80|new.demo" {
		t.Errorf("second request changed: %q", second)
	}
	// Another type of the stream is interned apart.
	other := fresh(want[0])
	c.internRepeated(1, resourcev3.RouteType, other)
	if !same(other[0], first[0]) {
		t.Error("a name of another type is not the canonical copy")
	}
}
