package xds_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"strings"
	"testing"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/proto"

	"github.com/meshd/meshd/ca"
	"github.com/meshd/meshd/sds"
	"github.com/meshd/meshd/xds"
)

func dialConn(t testing.TB, pki *testPKI, addr string, cert *ca.Certificate) *grpc.ClientConn {
	t.Helper()
	cfg := &tls.Config{RootCAs: pki.pool(), MinVersion: tls.VersionTLS12, InsecureSkipVerify: true,
		Certificates: []tls.Certificate{pki.tlsCert(cert)}}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// TestDeltaNACKIsRecordedAndNotResent: a delta client that rejects every
// listener response gets it once, not in a loop, and meshd records the NACK.
func TestDeltaNACKIsRecordedAndNotResent(t *testing.T) {
	pki := newTestPKI(t)
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	m := startMeshd(t, pki, addr)
	t.Cleanup(func() { m.stop(t) })
	publishListener(t, m, freePort(t))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(dialConn(t, pki, addr, pki.issue(webID, webNode))).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&discoveryv3.DeltaDiscoveryRequest{Node: node(webNode, nil), TypeUrl: resourcev3.ListenerType}); err != nil {
		t.Fatal(err)
	}
	responses := make(chan *discoveryv3.DeltaDiscoveryResponse, 100)
	go func() {
		for {
			resp, err := stream.Recv()
			if err != nil {
				close(responses)
				return
			}
			responses <- resp
			_ = stream.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resp.TypeUrl, ResponseNonce: resp.Nonce,
				ErrorDetail: &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: "test: rejected"}})
		}
	}()
	first := <-responses
	count := 1
	timeout := time.After(2 * time.Second)
loop:
	for {
		select {
		case _, ok := <-responses:
			if !ok {
				break loop
			}
			count++
		case <-timeout:
			break loop
		}
	}
	if count != 1 {
		t.Fatalf("got %d delta listener responses in 2s after a persistent NACK, want 1", count)
	}
	var recorded *xds.NACK
	for _, p := range m.srv.Proxies() {
		if ts := p.Types[resourcev3.ListenerType]; p.NodeID == webNode && ts != nil {
			recorded = ts.LastNACK
		}
	}
	if recorded == nil || recorded.Nonce != first.Nonce || recorded.Error != "test: rejected" {
		t.Fatalf("NACK recorded as %+v, want nonce %s with the error detail", recorded, first.Nonce)
	}
}

// TestStandaloneSDS: the SecretDiscoveryService (not ADS) serves a proxy
// its "default" certificate and "ROOTCA", authenticated the same way.
func TestStandaloneSDS(t *testing.T) {
	pki := newTestPKI(t)
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	m := startMeshd(t, pki, addr)
	t.Cleanup(func() { m.stop(t) })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	stream, err := secretv3.NewSecretDiscoveryServiceClient(dialConn(t, pki, addr, pki.issue(webID, webNode))).StreamSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&discoveryv3.DiscoveryRequest{Node: node(webNode, nil), TypeUrl: resourcev3.SecretType,
		ResourceNames: []string{sds.NameDefault, sds.NameRootCA}}); err != nil {
		t.Fatal(err)
	}
	resp, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for _, r := range resp.Resources {
		names[resourceName(t, r.Value)] = true
	}
	if !names[sds.NameDefault] || !names[sds.NameRootCA] || len(resp.Resources) != 2 {
		t.Fatalf("standalone SDS answered %v", names)
	}
	// Another proxy's secret: PermissionDenied.
	stream2, err := secretv3.NewSecretDiscoveryServiceClient(dialConn(t, pki, addr, pki.issue(webID, webNode))).StreamSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_ = stream2.Send(&discoveryv3.DiscoveryRequest{Node: node(webNode, nil), TypeUrl: resourcev3.SecretType, ResourceNames: []string{"db-0.demo"}})
	if _, err := stream2.Recv(); err == nil || !contains(err.Error(), "PermissionDenied") {
		t.Fatalf("another secret over SDS: %v, want PermissionDenied", err)
	}
}

func resourceName(t *testing.T, b []byte) string {
	t.Helper()
	var s tlsv3.Secret
	if err := proto.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	return s.GetName()
}

func contains(s, sub string) bool { return strings.Contains(s, sub) }
