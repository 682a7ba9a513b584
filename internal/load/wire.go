package load

import (
	"context"
	"errors"
	"fmt"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
)

// Response is what a sidecar reads of a DiscoveryResponse or a
// DeltaDiscoveryResponse, read off the wire without protobuf's decoder:
// the load tool shares the machine with the meshd it measures, and
// decoding every response into messages (an Any, a type URL string and a
// copy of each resource, then proto.Size of it all) was about 30% of
// its CPU. What the fleet needs of a resource it decodes once for every
// sidecar (see shared.decode).
type Response struct {
	TypeURL string
	Version string // SotW's version_info (delta: system_version_info)
	Nonce   string
	// Resources are the resources' encodings (their Any's value), in
	// order; they share the response's buffer and are valid until the
	// next Recv.
	Resources [][]byte
	// Removed are the names a delta response removes (sharing its buffer
	// as Resources do).
	Removed [][]byte
	// Size is the response's encoded size (what proto.Size would say).
	Size int
}

// Stream is an ADS stream that sends requests as protobuf messages and
// reads responses into Response.
type Stream struct {
	grpc.ClientStream
	delta bool
	buf   mem.Buffer // the last response's, until the next Recv
}

// OpenADS opens a delta (delta) or state-of-the-world ADS stream on conn.
func OpenADS(ctx context.Context, conn grpc.ClientConnInterface, delta bool) (*Stream, error) {
	desc, method := &discoveryv3.AggregatedDiscoveryService_ServiceDesc.Streams[0], discoveryv3.AggregatedDiscoveryService_StreamAggregatedResources_FullMethodName
	if delta {
		desc, method = &discoveryv3.AggregatedDiscoveryService_ServiceDesc.Streams[1], discoveryv3.AggregatedDiscoveryService_DeltaAggregatedResources_FullMethodName
	}
	cs, err := conn.NewStream(ctx, desc, method, grpc.ForceCodecV2(wireCodec{}))
	if err != nil {
		return nil, err
	}
	return &Stream{ClientStream: cs, delta: delta}, nil
}

// Send sends a request (a DiscoveryRequest or DeltaDiscoveryRequest).
func (s *Stream) Send(req proto.Message) error { return s.SendMsg(req) }

// Recv reads the next response into r, which holds the previous one no
// longer.
func (s *Stream) Recv(r *Response) error {
	if s.buf != nil {
		s.buf.Free()
		s.buf = nil
	}
	w := wireResponse{delta: s.delta, into: r}
	err := s.RecvMsg(&w)
	s.buf = w.buf
	return err
}

// wireResponse carries Recv's destination through the codec, and back the
// buffer its resources share.
type wireResponse struct {
	delta bool
	into  *Response
	buf   mem.Buffer
}

// wireCodec marshals requests as gRPC's protobuf codec does (into its
// pool's buffers: a SotW ACK names every endpoint set) and reads responses
// with decodeResponse.
type wireCodec struct{}

var protoCodec = encoding.GetCodecV2(grpcproto.Name)

func (wireCodec) Name() string { return grpcproto.Name }

func (wireCodec) Marshal(v any) (mem.BufferSlice, error) { return protoCodec.Marshal(v) }

func (wireCodec) Unmarshal(data mem.BufferSlice, v any) error {
	w, ok := v.(*wireResponse)
	if !ok {
		return fmt.Errorf("load: cannot decode into %T", v)
	}
	// A copy of its own, from gRPC's pool (freed by the next Recv): gRPC
	// reuses data's buffers once this returns. Not a new slice each time:
	// fresh megabytes for every response cost more in page faults than
	// protobuf's whole decoding did.
	w.buf = data.MaterializeToBuffer(mem.DefaultBufferPool())
	return decodeResponse(w.buf.ReadOnlyData(), w.delta, w.into)
}

// decodeResponse reads b, a DiscoveryResponse (delta false) or a
// DeltaDiscoveryResponse, into r. Every resource must be of the
// response's type, as Envoy requires.
func decodeResponse(b []byte, delta bool, r *Response) error {
	*r = Response{Resources: r.Resources[:0], Removed: r.Removed[:0], Size: len(b)}
	var anyTypes [][]byte // each resource's type URL, checked at the end
	err := EachBytesField(b, func(num protowire.Number, v []byte) error {
		switch {
		case num == 2 && !delta: // resources (Any)
			t, val, err := readAny(v)
			if err != nil {
				return err
			}
			anyTypes, r.Resources = append(anyTypes, t), append(r.Resources, val)
		case num == 2: // resources (Resource); its resource (Any) is field 2
			var t, val []byte
			found := false
			if err := EachBytesField(v, func(num protowire.Number, v []byte) error {
				if num != 2 {
					return nil
				}
				var err error
				t, val, err = readAny(v)
				found = true
				return err
			}); err != nil {
				return err
			}
			if !found {
				return errors.New("load: a delta resource without its resource")
			}
			anyTypes, r.Resources = append(anyTypes, t), append(r.Resources, val)
		case num == 1:
			r.Version = string(v)
		case num == 4:
			r.TypeURL = string(v)
		case num == 5:
			r.Nonce = string(v)
		case num == 6 && delta: // removed_resources
			r.Removed = append(r.Removed, v)
		}
		return nil
	})
	if err != nil {
		return err
	}
	for _, t := range anyTypes {
		if string(t) != r.TypeURL {
			return fmt.Errorf("load: a %s resource in a %s response", t, r.TypeURL)
		}
	}
	return nil
}

// readAny returns a google.protobuf.Any's type URL and value.
func readAny(b []byte) (typeURL, value []byte, err error) {
	value = []byte{} // an empty value is a resource all the same
	err = EachBytesField(b, func(num protowire.Number, v []byte) error {
		switch num {
		case 1:
			typeURL = v
		case 2:
			value = v
		}
		return nil
	})
	return typeURL, value, err
}

// EachBytesField calls f with the number and value of each
// length-delimited field of b (the kind every field read here is, strings
// and messages), skipping the others, and stops at f's first error or at
// bytes that are not protobuf.
func EachBytesField(b []byte, f func(num protowire.Number, v []byte) error) error {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		if typ != protowire.BytesType {
			if n = protowire.ConsumeFieldValue(num, typ, b); n < 0 {
				return protowire.ParseError(n)
			}
			b = b[n:]
			continue
		}
		v, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return protowire.ParseError(n)
		}
		b = b[n:]
		if err := f(num, v); err != nil {
			return err
		}
	}
	return nil
}
