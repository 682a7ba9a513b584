package xds

import (
	"fmt"

	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/proto"
)

// unpooledCodec is gRPC's proto codec without its buffer pool for what
// meshd sends. A proxy's full configuration is one message of up to a few
// MiB; gRPC's codec encodes it into a pooled buffer, and after a connect
// storm of 1,000 proxies its pool held about a gigabyte of them for reuse
// that never comes (full configurations are sent once per proxy). Here each
// response is encoded into its own slice, garbage once written.
type unpooledCodec struct{}

func (unpooledCodec) Name() string { return "proto" }

func (unpooledCodec) Marshal(v any) (mem.BufferSlice, error) {
	m, ok := v.(proto.Message)
	if !ok {
		return nil, fmt.Errorf("xds: cannot encode %T: not a proto message", v)
	}
	b, err := proto.Marshal(m)
	if err != nil {
		return nil, err
	}
	return mem.BufferSlice{mem.SliceBuffer(b)}, nil
}

func (unpooledCodec) Unmarshal(data mem.BufferSlice, v any) error {
	m, ok := v.(proto.Message)
	if !ok {
		return fmt.Errorf("xds: cannot decode into %T: not a proto message", v)
	}
	buf := data.MaterializeToBuffer(mem.DefaultBufferPool())
	defer buf.Free()
	return proto.Unmarshal(buf.ReadOnlyData(), m)
}
