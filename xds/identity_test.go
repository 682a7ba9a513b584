package xds_test

import (
	"context"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/bootstrap"
	"github.com/meshd/meshd/ca"
)

// TestSecretsFollowTheIdentity: while web-0's real Envoy is connected and
// serving with web's certificate, a stream for the same node authenticated
// as another service account (a CA-signed certificate naming web-0.demo)
// gets PermissionDenied and no secret, over SotW and delta; web-0 keeps
// its certificate.
func TestSecretsFollowTheIdentity(t *testing.T) {
	pki, addr, m := serveMeshd(t)
	inPort := freePort(t)
	publishListener(t, m, inPort)
	envoy := startSidecar(t, pki, addr, bootstrap.Delta)
	conn := waitHandshake(t, pki, inPort)
	serial := conn.ConnectionState().PeerCertificates[0].SerialNumber.Text(16)
	conn.Close()
	waitCerts(t, envoy, serial)

	other := ca.Identity{TrustDomain: "cluster.local", Namespace: "demo", ServiceAccount: "client"}
	forged := pki.issue(other, webNode) // CN web-0.demo, SAN .../sa/client
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	sotw, done := adsClient(t, pki, addr, forged)
	defer done()
	if err := sotw.Send(secretsRequest(webNode)); err != nil {
		t.Fatal(err)
	}
	if resp, err := sotw.Recv(); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("SotW stream as %s for %s: response %v, error %v; want PermissionDenied and nothing", other, webNode, resp, err)
	}

	delta, err := discoveryv3.NewAggregatedDiscoveryServiceClient(dialConn(t, pki, addr, forged)).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := delta.Send(&discoveryv3.DeltaDiscoveryRequest{Node: node(webNode, nil), TypeUrl: resourcev3.SecretType,
		ResourceNamesSubscribe: []string{"default", "ROOTCA"}}); err != nil {
		t.Fatal(err)
	}
	if resp, err := delta.Recv(); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("delta stream as %s for %s: response %v, error %v; want PermissionDenied and nothing", other, webNode, resp, err)
	}

	// web-0 is still served its own certificate, and handshakes use it.
	conn = waitHandshake(t, pki, inPort)
	defer conn.Close()
	if got := conn.ConnectionState().PeerCertificates[0]; got.URIs[0].String() != webID.String() {
		t.Errorf("web-0 now presents %v", got.URIs)
	}
}
