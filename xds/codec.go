package xds

import (
	"fmt"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
)

// unpooledCodec is gRPC's proto codec without its buffer pool for what
// meshd sends, and without a per-stream copy of a shared full
// configuration.
//
// A proxy's full configuration is one message of up to a few MiB. gRPC's
// codec encodes it into a pooled buffer, and after a connect storm of
// 1,000 proxies its pool held about a gigabyte of them for reuse that never
// comes (full configurations are sent once per proxy). Here each response
// is encoded into its own slice, garbage once written.
//
// Most of a full configuration is the set every proxy shares, encoded once
// and carried as the response's unknown fields (see resource.Set.SotwBody).
// Protobuf writes unknown fields last and verbatim, so the encoding is the
// rest of the message followed by those bytes: the codec hands gRPC the
// two pieces, and the shared bytes are written from the one copy every
// stream refers to instead of being copied into a new ~1 MiB buffer per
// stream (a gigabyte of garbage in a 1,000-proxy connect storm).
type unpooledCodec struct{}

// sharedBodyMin is the size of unknown fields from which they are sent
// by reference rather than copied.
const sharedBodyMin = 4 << 10

func (unpooledCodec) Name() string { return "proto" }

func (unpooledCodec) Marshal(v any) (mem.BufferSlice, error) {
	m, ok := v.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("xds: cannot encode %T: not a proto message", v)
	}
	r := m.ProtoReflect()
	body := r.GetUnknown()
	if len(body) < sharedBodyMin {
		b, err := proto.Marshal(m)
		if err != nil {
			return nil, err
		}
		return mem.BufferSlice{mem.SliceBuffer(b)}, nil
	}
	// The message is the sending stream's own (the server sets its nonce
	// just before): taking the body off for the encoding and putting it
	// back races with nothing.
	r.SetUnknown(nil)
	head, err := proto.Marshal(m)
	r.SetUnknown(body)
	if err != nil {
		return nil, err
	}
	return mem.BufferSlice{mem.SliceBuffer(head), mem.SliceBuffer(body)}, nil
}

func (unpooledCodec) Unmarshal(data mem.BufferSlice, v any) error {
	buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
	defer buf.Free()
	switch r := v.(type) {
	case *sotwRequest:
		return decodeSotwRequest(buf.ReadOnlyData(), *r)
	case *discoveryv3.DeltaDiscoveryRequest:
		return decodeDeltaRequest(buf.ReadOnlyData(), r)
	case proto.Message:
		return proto.Unmarshal(buf.ReadOnlyData(), r)
	}
	return fmt.Errorf("xds: cannot decode into %T: not a proto message", v)
}
