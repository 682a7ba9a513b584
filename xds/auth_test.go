package xds_test

import (
	"context"
	"crypto/tls"
	"fmt"
	"strings"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/meshd/meshd/ca"
	"github.com/meshd/meshd/xds"
	"github.com/meshd/meshd/xds/resource"
)

// adsClient opens an ADS stream to meshd presenting cert (nil: none).
func adsClient(t testing.TB, pki *testPKI, addr string, cert *ca.Certificate) (discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient, func()) {
	t.Helper()
	stream, done, err := dialADS(t, pki, addr, cert)
	if err != nil {
		t.Fatal(err)
	}
	return stream, done
}

func dialADS(t testing.TB, pki *testPKI, addr string, cert *ca.Certificate) (discoveryv3.AggregatedDiscoveryService_StreamAggregatedResourcesClient, func(), error) {
	t.Helper()
	cfg := &tls.Config{RootCAs: pki.pool(), ServerName: "127.0.0.1", MinVersion: tls.VersionTLS12,
		InsecureSkipVerify: true} // the server's SAN is a SPIFFE ID; these tests are about the client side
	if cert != nil {
		cfg.Certificates = []tls.Certificate{pki.tlsCert(cert)}
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	stream, err := discoveryv3.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	done := func() { cancel(); conn.Close() }
	if err != nil {
		done()
		return nil, nil, err
	}
	return stream, done, nil
}

func node(id string, md map[string]any) *corev3.Node {
	s, _ := structpb.NewStruct(md)
	return &corev3.Node{Id: id, Metadata: s}
}

// TestRogueClientsAreRefused: a valid certificate for web-0 asking as
// another pod, with other metadata, or for other secrets gets
// PermissionDenied; no or a foreign client certificate gets no stream.
func TestRogueClientsAreRefused(t *testing.T) {
	pki := newTestPKI(t)
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	m := startMeshd(t, pki, addr)
	t.Cleanup(func() { m.stop(t) })
	webCert := pki.issue(webID, webNode)

	denied := map[string]*discoveryv3.DiscoveryRequest{
		"other node ID":                     {Node: node(xds.NodeID("demo", "db-0"), nil), TypeUrl: resourcev3.ClusterType},
		"other namespace node ID":           {Node: node(xds.NodeID("prod", "web-0"), nil), TypeUrl: resourcev3.ClusterType},
		"other service account in metadata": {Node: node(webNode, map[string]any{"SERVICE_ACCOUNT": "db"}), TypeUrl: resourcev3.ClusterType},
		"another proxy's secret":            {Node: node(webNode, nil), TypeUrl: resourcev3.SecretType, ResourceNames: []string{"db-0.demo"}},
	}
	for name, req := range denied {
		t.Run(name, func(t *testing.T) {
			stream, done := adsClient(t, pki, addr, webCert)
			defer done()
			if err := stream.Send(req); err != nil {
				t.Fatal(err)
			}
			resp, err := stream.Recv()
			if status.Code(err) != codes.PermissionDenied {
				t.Fatalf("got response %v, error %v; want PermissionDenied and nothing else", resp, err)
			}
		})
	}

	refused := map[string]*ca.Certificate{
		"no client certificate":       nil,
		"certificate of a foreign CA": newTestPKI(t).issue(webID, webNode),
	}
	for name, cert := range refused {
		t.Run(name, func(t *testing.T) {
			stream, done, err := dialADS(t, pki, addr, cert)
			if err == nil {
				defer done()
				_ = stream.Send(&discoveryv3.DiscoveryRequest{Node: node(webNode, nil), TypeUrl: resourcev3.ClusterType})
				var resp *discoveryv3.DiscoveryResponse
				if resp, err = stream.Recv(); err == nil {
					t.Fatalf("got response %v; want the stream refused", resp)
				}
			}
			// The TLS alert names the certificate; with TLS 1.3 the client
			// may first see the closed connection (its write races the
			// server's alert). Either way: refused at the transport.
			msg := err.Error()
			if !strings.Contains(msg, "certificate") && (status.Code(err) != codes.Unavailable ||
				!(strings.Contains(msg, "broken pipe") || strings.Contains(msg, "connection reset") || strings.Contains(msg, "EOF"))) {
				t.Fatalf("refused with %v; want a certificate error or the connection closed at the transport", err)
			}
		})
	}
}

// TestPersistentNACKIsNotResent: a SotW client that rejects every listener
// response gets the NACKed version once, not in a loop; meshd records the
// NACK; a new version is sent again.
func TestPersistentNACKIsNotResent(t *testing.T) {
	pki := newTestPKI(t)
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	m := startMeshd(t, pki, addr)
	t.Cleanup(func() { m.stop(t) })
	publishListener(t, m, freePort(t))
	stream, done := adsClient(t, pki, addr, pki.issue(webID, webNode))
	defer done()

	if err := stream.Send(&discoveryv3.DiscoveryRequest{Node: node(webNode, nil), TypeUrl: resourcev3.ListenerType}); err != nil {
		t.Fatal(err)
	}
	responses := make(chan *discoveryv3.DiscoveryResponse, 100)
	go func() {
		for {
			resp, err := stream.Recv()
			if err != nil {
				close(responses)
				return
			}
			responses <- resp
			// NACK everything, as a proxy that cannot take the config would.
			_ = stream.Send(&discoveryv3.DiscoveryRequest{TypeUrl: resp.TypeUrl, ResponseNonce: resp.Nonce,
				ErrorDetail: &rpcstatus.Status{Code: int32(codes.InvalidArgument), Message: "test: rejected"}})
		}
	}()
	first := <-responses
	count := 1
	timeout := time.After(2 * time.Second)
loop:
	for {
		select {
		case <-responses:
			count++
		case <-timeout:
			break loop
		}
	}
	if count != 1 {
		t.Fatalf("got %d listener responses in 2s after a persistent NACK, want 1", count)
	}
	var recorded *xds.NACK
	for _, p := range m.srv.Proxies() {
		if ts := p.Types[resourcev3.ListenerType]; p.NodeID == webNode && ts != nil {
			recorded = ts.LastNACK
		}
	}
	if recorded == nil || recorded.Version != first.VersionInfo || recorded.Error != "test: rejected" {
		t.Fatalf("NACK recorded as %+v, want version %s with the error detail", recorded, first.VersionInfo)
	}
	// A new version is sent even though the last one was NACKed.
	err := m.pub.SetProxy(context.Background(), webNode, resource.Resources{resourcev3.ListenerType: []types.Resource{inboundListener(t, freePort(t))}})
	if err != nil {
		t.Fatal(err)
	}
	select {
	case resp := <-responses:
		if resp.VersionInfo == first.VersionInfo {
			t.Fatalf("resent NACKed version %s", resp.VersionInfo)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("new version not sent after a NACK")
	}
}
