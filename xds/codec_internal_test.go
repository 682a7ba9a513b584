package xds

import (
	"bytes"
	"testing"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// The codec's two-piece encoding of a response carrying a shared body is
// byte for byte what protobuf writes for the whole message, decodes to
// every resource, and leaves the message as it was.
func TestCodecSharedBody(t *testing.T) {
	var body []byte
	first := 0 // the size of the first entry: a small body
	for i := range 200 {
		b, err := proto.Marshal(&discoveryv3.DeltaDiscoveryResponse{Resources: []*discoveryv3.Resource{{
			Name: "cluster-" + string(rune('a'+i%26)), Version: "v1",
			Resource: &anypb.Any{TypeUrl: "type.googleapis.com/x", Value: bytes.Repeat([]byte{byte(i)}, 64)}}}})
		if err != nil {
			t.Fatal(err)
		}
		body = append(body, b...)
		if first == 0 {
			first = len(b)
		}
	}
	for _, size := range []int{0, first, len(body)} {
		resp := &discoveryv3.DeltaDiscoveryResponse{TypeUrl: "type.googleapis.com/x", SystemVersionInfo: "v7", Nonce: "3",
			Resources: []*discoveryv3.Resource{{Name: "own", Version: "o1"}}}
		resp.ProtoReflect().SetUnknown(body[:size])
		want, err := proto.Marshal(resp)
		if err != nil {
			t.Fatal(err)
		}
		data, err := unpooledCodec{}.Marshal(resp)
		if err != nil {
			t.Fatal(err)
		}
		if pieces := len(data); (size >= sharedBodyMin) != (pieces == 2) {
			t.Errorf("body of %d bytes: encoded in %d pieces", size, pieces)
		}
		if got := data.Materialize(); !bytes.Equal(got, want) {
			t.Fatalf("body of %d bytes: encoding differs from protobuf's (%d vs %d bytes)", size, len(got), len(want))
		}
		if got := resp.ProtoReflect().GetUnknown(); !bytes.Equal(got, body[:size]) {
			t.Fatalf("body of %d bytes: the message lost its unknown fields (%d bytes left)", size, len(got))
		}
		var back discoveryv3.DeltaDiscoveryResponse
		if err := (unpooledCodec{}).Unmarshal(data, &back); err != nil {
			t.Fatal(err)
		}
		if size == len(body) && len(back.GetResources()) != 201 {
			t.Fatalf("decoded %d resources, want 201", len(back.GetResources()))
		}
	}
}
