package xds

import (
	"fmt"
	"math/rand/v2"
	"runtime"
	"slices"
	"strings"
	"testing"
	"unique"
	"unsafe"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"

	"github.com/meshd/meshd/xds/resource"
)

// A stream's SotW requests decode as protobuf decodes them; names that
// repeat the previous request's of the type are its strings (all of them:
// its slice), others are the canonical copies; types are kept apart.
func TestSotwRequestNames(t *testing.T) {
	var prev prevNames
	decode := func(req *discoveryv3.DiscoveryRequest) *discoveryv3.DiscoveryRequest {
		t.Helper()
		b, err := proto.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		got := &discoveryv3.DiscoveryRequest{}
		if err := decodeSotwRequest(b, sotwRequest{req: got, prev: &prev}); err != nil {
			t.Fatal(err)
		}
		if !proto.Equal(got, req) {
			t.Fatalf("decoded %v, want %v", got, req)
		}
		return got
	}
	same := func(a, b string) bool { return unsafe.StringData(a) == unsafe.StringData(b) }
	sameSlice := func(a, b []string) bool { return len(a) == len(b) && len(a) > 0 && &a[0] == &b[0] }
	var names []string
	for i := range 5 {
		names = append(names, fmt.Sprintf("outbound|80|svc-%d.demo", i))
	}
	// The canonical copies live while a handle of theirs does: held until
	// the end, or a collection between two requests (CI's load made one)
	// would let the next request's name be a new canonical copy.
	var handles []unique.Handle[string]
	for _, n := range append(slices.Clone(names), "outbound|80|new.demo") {
		handles = append(handles, unique.Make(n))
	}
	defer runtime.KeepAlive(handles)
	eds := resourcev3.EndpointType
	first := decode(&discoveryv3.DiscoveryRequest{TypeUrl: eds, ResourceNames: names,
		Node: &corev3.Node{Id: "sidecar~198.18.0.2~p.demo~demo.svc.cluster.local"}})
	for i, n := range first.ResourceNames {
		if !same(n, unique.Make(names[i]).Value()) {
			t.Fatalf("first request: name %d (%q) is not the canonical copy", i, n)
		}
	}
	ack := decode(&discoveryv3.DiscoveryRequest{TypeUrl: eds, ResourceNames: names, VersionInfo: "v1", ResponseNonce: "1"})
	if !sameSlice(ack.ResourceNames, first.ResourceNames) {
		t.Error("an ACK naming the same resources did not take the previous request's names")
	}
	// One new name, two swapped, one gone: the rest are the previous strings.
	moved := []string{names[0], names[2], names[1], names[3], "outbound|80|new.demo"}
	third := decode(&discoveryv3.DiscoveryRequest{TypeUrl: eds, ResourceNames: moved, VersionInfo: "v1", ResponseNonce: "2",
		ErrorDetail: &status.Status{Code: 3, Message: "rejected"}})
	for i, n := range third.ResourceNames {
		if !same(n, unique.Make(n).Value()) {
			t.Errorf("third request: name %d (%q) is not the canonical copy", i, n)
		}
	}
	if sameSlice(third.ResourceNames, ack.ResourceNames) {
		t.Error("a changed request took the previous slice")
	}
	// Fewer names, all repeating: a slice of their own.
	fewer := decode(&discoveryv3.DiscoveryRequest{TypeUrl: eds, ResourceNames: moved[:2]})
	if sameSlice(fewer.ResourceNames, third.ResourceNames) {
		t.Error("a shorter request shares the previous request's storage")
	}
	// Another type starts from nothing; a type meshd does not serve is
	// decoded without a previous request.
	rds := decode(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.RouteType, ResourceNames: moved[:2]})
	if sameSlice(rds.ResourceNames, fewer.ResourceNames) {
		t.Error("a route request took the endpoint request's names")
	}
	odd := decode(&discoveryv3.DiscoveryRequest{TypeUrl: "type.googleapis.com/x", ResourceNames: names})
	again := decode(&discoveryv3.DiscoveryRequest{TypeUrl: "type.googleapis.com/x", ResourceNames: names})
	if sameSlice(odd.ResourceNames, again.ResourceNames) {
		t.Error("an unserved type's names were kept")
	}
	// No names at all.
	if got := decode(&discoveryv3.DiscoveryRequest{TypeUrl: eds}); got.ResourceNames != nil {
		t.Errorf("no names decoded as %q", got.ResourceNames)
	}
}

// Whatever bytes arrive, the decoder fails where protobuf fails and
// otherwise decodes what protobuf decodes: valid requests, requests with
// unknown fields, mutated bytes, names that are not UTF-8, fields of the
// wrong wire type.
func TestSotwRequestIsProtobuf(t *testing.T) {
	rng := rand.New(rand.NewPCG(7, 11))
	types := []string{resourcev3.EndpointType, resourcev3.RouteType, resourcev3.ClusterType, "type.googleapis.com/x", ""}
	pool := []string{"a", "outbound|80|svc.demo", "outbound|80|svc-2.demo", "", "\u00e9t\u00e9", "*",
		strings.Repeat("n", 127), strings.Repeat("l", 128), strings.Repeat("x", 300)} // one- and two-byte lengths
	var prev prevNames
	var fails, ok int
	last := map[string][]string{} // by type: the last request's names
	for i := range 20000 {
		req := &discoveryv3.DiscoveryRequest{TypeUrl: types[rng.IntN(len(types))], VersionInfo: fmt.Sprint(rng.IntN(3)), ResponseNonce: fmt.Sprint(i)}
		switch rng.IntN(3) {
		case 0: // an ACK: the type's last names again
			req.ResourceNames = last[req.TypeUrl]
		case 1: // a few names
			for range rng.IntN(6) {
				req.ResourceNames = append(req.ResourceNames, pool[rng.IntN(len(pool))])
			}
		case 2: // enough to be shared with other streams (minShared)
			for range minShared + rng.IntN(4) {
				req.ResourceNames = append(req.ResourceNames, pool[rng.IntN(len(pool))])
			}
		}
		last[req.TypeUrl] = req.ResourceNames
		if rng.IntN(4) == 0 {
			req.Node = &corev3.Node{Id: "n", Cluster: "c"}
		}
		b, err := proto.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		b = mutated(rng, b, requestResourceNames)
		got := &discoveryv3.DiscoveryRequest{VersionInfo: "stale", ResourceNames: []string{"stale"}}
		if !decodesAsProtobuf(t, i, b, got, func() error { return decodeSotwRequest(b, sotwRequest{req: got, prev: &prev}) }) {
			fails++
			continue
		}
		ok++
	}
	if fails < 1000 || ok < 1000 {
		t.Fatalf("%d requests failed to decode and %d decoded: the cases do not cover both", fails, ok)
	}
}

// decodesAsProtobuf runs decode (into got) on case i's bytes b, and fails
// the test unless it fails where protobuf fails and otherwise decodes what
// protobuf decodes; it reports whether b decoded.
func decodesAsProtobuf(t *testing.T, i int, b []byte, got proto.Message, decode func() error) bool {
	t.Helper()
	want := got.ProtoReflect().New().Interface()
	wantErr := proto.Unmarshal(b, want)
	gotErr := decode()
	if (gotErr != nil) != (wantErr != nil) {
		t.Fatalf("case %d (%x): decoder error %v, protobuf error %v", i, b, gotErr, wantErr)
	}
	if wantErr == nil && !proto.Equal(got, want) {
		t.Fatalf("case %d (%x): decoded %v, protobuf decoded %v", i, b, got, want)
	}
	return wantErr == nil
}

// mutated is b as it is, or one time in six each: with an unknown field;
// with a field named (field or the one after it: names, or the type URL or
// other names) that is not UTF-8, or of the wrong wire type; with flipped
// bytes; cut short.
func mutated(rng *rand.Rand, b []byte, field protowire.Number) []byte {
	switch rng.IntN(6) {
	case 0:
		b = protowire.AppendVarint(protowire.AppendTag(b, 99, protowire.VarintType), 5)
	case 1:
		b = protowire.AppendBytes(protowire.AppendTag(b, field+protowire.Number(rng.IntN(2)), protowire.BytesType), []byte{0xff, 'a'})
	case 2:
		b = protowire.AppendVarint(protowire.AppendTag(b, field+protowire.Number(rng.IntN(2)), protowire.VarintType), 1)
	case 3:
		for range 1 + rng.IntN(3) {
			if len(b) > 0 {
				b[rng.IntN(len(b))] ^= byte(1 + rng.IntN(255))
			}
		}
	case 4:
		if len(b) > 0 {
			b = b[:rng.IntN(len(b))]
		}
	}
	return b
}

// The codec takes a stream's request through the decoder, which records
// the names as the stream's previous ones of the type.
func TestCodecDecodesSotwRequests(t *testing.T) {
	req := &discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNames: []string{"x", "y"}}
	data, err := unpooledCodec{}.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	var prev prevNames
	got := &discoveryv3.DiscoveryRequest{}
	if err := (unpooledCodec{}).Unmarshal(data, &sotwRequest{req: got, prev: &prev}); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(got, req) {
		t.Fatalf("decoded %v, want %v", got, req)
	}
	if slot := prev.names[resource.Order(resourcev3.EndpointType)]; len(slot) != 2 || &slot[0] != &got.ResourceNames[0] {
		t.Fatalf("the stream's previous names are %q, not the request's", slot)
	}
}

// An ACK repeating 1,000 names, decoded as the codec decodes it and as
// protobuf alone would.
func BenchmarkSotwACKDecode(b *testing.B) {
	req := &discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, VersionInfo: "v1", ResponseNonce: "7"}
	for i := range 1000 {
		req.ResourceNames = append(req.ResourceNames, fmt.Sprintf("outbound|8080|svc-%d.ns-%d.svc.cluster.local", i, i%50))
	}
	wire, err := proto.Marshal(req)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("codec", func(b *testing.B) {
		var prev prevNames
		b.ReportAllocs()
		for b.Loop() {
			if err := decodeSotwRequest(wire, sotwRequest{req: &discoveryv3.DiscoveryRequest{}, prev: &prev}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("protobuf", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := proto.Unmarshal(wire, &discoveryv3.DiscoveryRequest{}); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// A delta request decodes as protobuf decodes it, whatever bytes arrive
// (valid requests, unknown fields, mutated bytes, names that are not UTF-8,
// fields of the wrong wire type).
func TestDeltaRequestIsProtobuf(t *testing.T) {
	rng := rand.New(rand.NewPCG(13, 17))
	pool := []string{"a", "outbound|80|svc.demo", "outbound|80|svc-2.demo", "", "\u00e9t\u00e9", "*",
		strings.Repeat("n", 127), strings.Repeat("l", 128), strings.Repeat("x", 300)}
	var fails, ok, named int
	for i := range 20000 {
		req := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResponseNonce: fmt.Sprint(rng.IntN(3))}
		subs := rng.IntN(6)
		if rng.IntN(3) == 0 {
			subs = minShared + rng.IntN(3) // decoded against the last such request
		}
		for range subs {
			req.ResourceNamesSubscribe = append(req.ResourceNamesSubscribe, pool[rng.IntN(len(pool))])
		}
		for range rng.IntN(3) {
			req.ResourceNamesUnsubscribe = append(req.ResourceNamesUnsubscribe, pool[rng.IntN(len(pool))])
		}
		if rng.IntN(4) == 0 {
			req.Node = &corev3.Node{Id: "n", Cluster: "c"}
			req.InitialResourceVersions = map[string]string{"outbound|80|svc.demo": "v1"}
		}
		if rng.IntN(8) == 0 {
			req.ErrorDetail = &status.Status{Code: 3, Message: "rejected"}
		}
		b, err := proto.Marshal(req)
		if err != nil {
			t.Fatal(err)
		}
		b = mutated(rng, b, deltaSubscribe)
		got := &discoveryv3.DeltaDiscoveryRequest{ResponseNonce: "stale", ResourceNamesSubscribe: []string{"stale"}}
		if !decodesAsProtobuf(t, i, b, got, func() error { return decodeDeltaRequest(b, got) }) {
			fails++
			continue
		}
		ok++
		named += len(got.ResourceNamesSubscribe) + len(got.ResourceNamesUnsubscribe)
	}
	if fails < 1000 || ok < 1000 || named < 1000 {
		t.Fatalf("%d requests failed to decode, %d decoded with %d names: the cases do not cover both", fails, ok, named)
	}
}

// The codec takes a delta request through the decoder: its names are the
// canonical copies (those of a handle held meanwhile, which keeps them).
func TestCodecDecodesDeltaRequests(t *testing.T) {
	handles := []unique.Handle[string]{unique.Make("outbound|80|x.demo"), unique.Make("y"), unique.Make("z")}
	req := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNamesSubscribe: []string{"outbound|80|x.demo", "y"},
		ResourceNamesUnsubscribe: []string{"z"}, Node: &corev3.Node{Id: "web-0.demo"}}
	data, err := unpooledCodec{}.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	got := &discoveryv3.DeltaDiscoveryRequest{}
	if err := (unpooledCodec{}).Unmarshal(data, got); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(got, req) {
		t.Fatalf("decoded %v, want %v", got, req)
	}
	for i, n := range append(slices.Clone(got.ResourceNamesSubscribe), got.ResourceNamesUnsubscribe...) {
		if unsafe.StringData(n) != unsafe.StringData(handles[i].Value()) {
			t.Errorf("name %q is not the canonical copy", n)
		}
	}
}

// TestDeltaSubscribeTakesLastList: a delta request subscribing to the names
// the last one did (the proxies of a mesh connecting) is decoded to that
// request's list, one naming another list to its own (and the next is
// decoded against that one), per type; the names are canonical copies.
func TestDeltaSubscribeTakesLastList(t *testing.T) {
	decode := func(typeURL string, names []string) []string {
		t.Helper()
		b, err := proto.Marshal(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: typeURL, ResourceNamesSubscribe: names})
		if err != nil {
			t.Fatal(err)
		}
		got := &discoveryv3.DeltaDiscoveryRequest{}
		if err := decodeDeltaRequest(b, got); err != nil {
			t.Fatal(err)
		}
		if !slices.Equal(got.ResourceNamesSubscribe, names) {
			t.Fatalf("decoded %v, want %v", got.ResourceNamesSubscribe, names)
		}
		return got.ResourceNamesSubscribe
	}
	var names []string
	for i := range 20 {
		names = append(names, fmt.Sprintf("outbound|80|last-%d.demo", i))
	}
	first := decode(resourcev3.EndpointType, names)
	if again := decode(resourcev3.EndpointType, slices.Clone(names)); &again[0] != &first[0] {
		t.Error("the same names as the last request are a list of their own")
	}
	routes := decode(resourcev3.RouteType, names)
	if p := lastSubscribed[resource.Order(resourcev3.RouteType)].Load(); p == nil || &(*p)[0] != &routes[0] {
		t.Error("the routes' last list is not the one decoded")
	}
	other := slices.Clone(names)
	other[5] = "outbound|80|other.demo"
	changed := decode(resourcev3.EndpointType, other)
	if &changed[0] == &first[0] {
		t.Error("other names decoded to the last request's list")
	}
	if unsafe.StringData(changed[0]) != unsafe.StringData(first[0]) || unsafe.StringData(changed[5]) != unsafe.StringData(unique.Make(other[5]).Value()) {
		t.Error("the names are not the canonical copies")
	}
	if again := decode(resourcev3.EndpointType, slices.Clone(other)); &again[0] != &changed[0] {
		t.Error("the next request is not decoded against the last one")
	}
	if short := decode(resourcev3.EndpointType, names[:3]); len(short) != 3 {
		t.Errorf("a short list decoded to %v", short)
	}
	// A list of more than maxLastSubscribed bytes of names is not kept.
	kept := lastSubscribed[resource.Order(resourcev3.EndpointType)].Load()
	var big []string
	for i := range minShared {
		big = append(big, fmt.Sprintf("%d-%s", i, strings.Repeat("x", maxLastSubscribed/minShared)))
	}
	decode(resourcev3.EndpointType, big)
	if lastSubscribed[resource.Order(resourcev3.EndpointType)].Load() != kept {
		t.Error("a list of more than maxLastSubscribed bytes was kept")
	}
}

// A connecting proxy's subscription to 1,000 endpoint sets, decoded as the
// codec decodes it and as protobuf did before meshd took canonical copies.
func BenchmarkDeltaSubscribeDecode(b *testing.B) {
	req := &discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.EndpointType}
	for i := range 1000 {
		req.ResourceNamesSubscribe = append(req.ResourceNamesSubscribe, fmt.Sprintf("outbound|8080|svc-%d.ns-%d.svc.cluster.local", i, i%50))
	}
	wire, err := proto.Marshal(req)
	if err != nil {
		b.Fatal(err)
	}
	b.Run("codec", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if err := decodeDeltaRequest(wire, &discoveryv3.DeltaDiscoveryRequest{}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("protobuf+canonical", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			r := &discoveryv3.DeltaDiscoveryRequest{}
			if err := proto.Unmarshal(wire, r); err != nil {
				b.Fatal(err)
			}
			for i, n := range r.ResourceNamesSubscribe {
				r.ResourceNamesSubscribe[i] = unique.Make(n).Value()
			}
		}
	})
}

// FuzzSotwRequestSequence decodes two requests in turn on one stream (the
// second against the first's names, as an ACK is) and each must decode as
// protobuf decodes it, whatever the bytes.
func FuzzSotwRequestSequence(f *testing.F) {
	names := nameList("outbound|80|fuzz-svc", minShared+2)
	for _, second := range [][]string{names, append(slices.Clone(names[:5]), "outbound|80|fuzz-svx|5"), nil} {
		first, err := proto.Marshal(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNames: names})
		if err != nil {
			f.Fatal(err)
		}
		ack, err := proto.Marshal(&discoveryv3.DiscoveryRequest{TypeUrl: resourcev3.EndpointType, ResourceNames: second, VersionInfo: "v1", ResponseNonce: "1"})
		if err != nil {
			f.Fatal(err)
		}
		f.Add(first, ack)
	}
	f.Fuzz(func(t *testing.T, first, second []byte) {
		var prev prevNames
		for i, b := range [][]byte{first, second, first} {
			got := &discoveryv3.DiscoveryRequest{}
			decodesAsProtobuf(t, i, b, got, func() error { return decodeSotwRequest(b, sotwRequest{req: got, prev: &prev}) })
		}
	})
}
