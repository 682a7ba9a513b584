package bootstrap

import (
	"fmt"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"sigs.k8s.io/yaml"

	// Register the Envoy types that appear inside Any fields, so protojson can
	// write them out.
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
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

// Files returns everything a sidecar's credentials directory holds: the
// bootstrap (as "bootstrap.yaml"), the path-based SDS files, and the xDS
// client certificate chain, key and trust bundle. The map holds a private
// key: never log it.
func Files(b *bootstrapv3.Bootstrap, credsDir string, chainPEM, keyPEM, bundlePEM []byte) (map[string][]byte, error) {
	files, err := SDSFiles(credsDir)
	if err != nil {
		return nil, err
	}
	if files[FileBootstrap], err = YAML(b); err != nil {
		return nil, err
	}
	files[FileCertChain], files[FileKey], files[FileRootCert] = chainPEM, keyPEM, bundlePEM
	return files, nil
}

// FileBootstrap is the bootstrap's file name in the credentials directory.
const FileBootstrap = "bootstrap.yaml"
