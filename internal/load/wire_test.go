package load

import (
	"bytes"
	"slices"
	"strings"
	"testing"

	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
)

func endpointAnys(t *testing.T, names ...string) []*anypb.Any {
	t.Helper()
	var out []*anypb.Any
	for _, n := range names {
		a, err := anypb.New(&endpointv3.ClusterLoadAssignment{ClusterName: n})
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, a)
	}
	return out
}

// TestDecodeResponse reads what protobuf wrote, SotW and delta, as
// protobuf reads it.
func TestDecodeResponse(t *testing.T) {
	anys := append(endpointAnys(t, "a", "b"), &anypb.Any{TypeUrl: resourcev3.EndpointType}) // an empty resource too
	sotw := &discoveryv3.DiscoveryResponse{VersionInfo: "v7", Resources: anys, Canary: true, TypeUrl: resourcev3.EndpointType, Nonce: "n3"}
	var deltaResources []*discoveryv3.Resource
	for i, a := range anys {
		deltaResources = append(deltaResources, &discoveryv3.Resource{Name: string(rune('a' + i)), Version: "x", Resource: a,
			Aliases: []string{"alias"}, Ttl: durationpb.New(5)})
	}
	delta := &discoveryv3.DeltaDiscoveryResponse{SystemVersionInfo: "s1", Resources: deltaResources, TypeUrl: resourcev3.EndpointType,
		RemovedResources: []string{"gone", "gone too"}, Nonce: "n4"}
	for _, tc := range []struct {
		name    string
		msg     proto.Message
		delta   bool
		version string
		nonce   string
		removed []string
	}{
		{"sotw", sotw, false, "v7", "n3", nil},
		{"delta", delta, true, "s1", "n4", []string{"gone", "gone too"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := proto.Marshal(tc.msg)
			if err != nil {
				t.Fatal(err)
			}
			r := Response{Resources: [][]byte{[]byte("left over")}}
			if err := decodeResponse(b, tc.delta, &r); err != nil {
				t.Fatal(err)
			}
			if r.TypeURL != resourcev3.EndpointType || r.Version != tc.version || r.Nonce != tc.nonce || r.Size != len(b) {
				t.Errorf("got %+v", r)
			}
			var removed []string
			for _, n := range r.Removed {
				removed = append(removed, string(n))
			}
			if !slices.Equal(removed, tc.removed) {
				t.Errorf("removed: got %q, want %q", removed, tc.removed)
			}
			if len(r.Resources) != len(anys) {
				t.Fatalf("got %d resources, want %d", len(r.Resources), len(anys))
			}
			for i, a := range anys {
				if !bytes.Equal(r.Resources[i], a.GetValue()) {
					t.Errorf("resource %d: got %q, want %q", i, r.Resources[i], a.GetValue())
				}
			}
		})
	}
}

// TestDecodeResponseRefuses: a resource of another type than its
// response's, a delta resource without its resource, and a truncated
// encoding are errors.
func TestDecodeResponseRefuses(t *testing.T) {
	mixed := &discoveryv3.DiscoveryResponse{TypeUrl: resourcev3.ClusterType, Resources: endpointAnys(t, "a")}
	empty := &discoveryv3.DeltaDiscoveryResponse{TypeUrl: resourcev3.EndpointType, Resources: []*discoveryv3.Resource{{Name: "a"}}}
	whole := &discoveryv3.DiscoveryResponse{TypeUrl: resourcev3.EndpointType, Resources: endpointAnys(t, "a"), Nonce: "n"}
	for _, tc := range []struct {
		name  string
		msg   proto.Message
		delta bool
		cut   int
		want  string
	}{
		{"another type", mixed, false, 0, "resource in a"},
		{"no resource", empty, true, 0, "without its resource"},
		{"truncated", whole, false, 2, "unexpected EOF"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := proto.Marshal(tc.msg)
			if err != nil {
				t.Fatal(err)
			}
			var r Response
			err = decodeResponse(b[:len(b)-tc.cut], tc.delta, &r)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error with %q", err, tc.want)
			}
		})
	}
}
