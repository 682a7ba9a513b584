package bootstrap

import (
	"fmt"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"sigs.k8s.io/yaml"

	// Register the Envoy types that appear inside Any fields, so protojson can
	// write them out.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/upstreams/http/v3"
)

// YAML renders a message (a bootstrap) as YAML with Envoy's field names.
func YAML(m proto.Message) ([]byte, error) {
	j, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("bootstrap: encode: %w", err)
	}
	y, err := yaml.JSONToYAML(j)
	if err != nil {
		return nil, fmt.Errorf("bootstrap: encode: %w", err)
	}
	return y, nil
}

// sdsDocument is the file form of path-based SDS: {resources: [<Any>]}.
func sdsDocument(m proto.Message) ([]byte, error) {
	a, err := anypb.New(m)
	if err != nil {
		return nil, err
	}
	j, err := protojson.MarshalOptions{UseProtoNames: true}.Marshal(a)
	if err != nil {
		return nil, fmt.Errorf("bootstrap: encode sds file: %w", err)
	}
	y, err := yaml.JSONToYAML([]byte(`{"resources":[` + string(j) + `]}`))
	if err != nil {
		return nil, fmt.Errorf("bootstrap: encode sds file: %w", err)
	}
	return y, nil
}
