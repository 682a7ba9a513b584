package xds_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/meshd/meshd/ca"
	"github.com/meshd/meshd/xds"
)

// TestChecksThatCouldBeSkipped: what a hostile client tried to get past.
//   - A client certificate of another trust domain, signed by a CA of the
//     bundle, gets no stream (PermissionDenied).
//   - DeltaSecrets with an empty type URL is checked as a secret request: a
//     name other than default/ROOTCA is PermissionDenied.
//   - A delta stream whose first request carries no node is InvalidArgument
//     (it used to be accepted and never answered).
func TestChecksThatCouldBeSkipped(t *testing.T) {
	pki := newTestPKI(t)
	addr := fmt.Sprintf("127.0.0.1:%d", freePort(t))
	m := startMeshd(t, pki, addr, func(c *xds.Config) { c.TrustDomain = "cluster.local" })
	t.Cleanup(func() { m.stop(t) })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()

	foreign := pki.issue(ca.Identity{TrustDomain: "evil.example", Namespace: "demo", ServiceAccount: "web"}, webNode)
	stream, done := adsClient(t, pki, addr, foreign)
	defer done()
	_ = stream.Send(secretsRequest(webNode))
	if _, err := stream.Recv(); status.Code(err) != codes.PermissionDenied {
		t.Errorf("certificate of trust domain evil.example: %v; want PermissionDenied", err)
	}

	sds, err := secretv3.NewSecretDiscoveryServiceClient(dialConn(t, pki, addr, pki.issue(webID, webNode))).DeltaSecrets(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_ = sds.Send(&discoveryv3.DeltaDiscoveryRequest{Node: node(webNode, nil), ResourceNamesSubscribe: []string{"db-0.demo"}})
	if _, err := sds.Recv(); status.Code(err) != codes.PermissionDenied {
		t.Errorf("DeltaSecrets with an empty type URL for another secret: %v; want PermissionDenied", err)
	}

	delta, err := discoveryv3.NewAggregatedDiscoveryServiceClient(dialConn(t, pki, addr, pki.issue(webID, webNode))).DeltaAggregatedResources(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_ = delta.Send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.ClusterType})
	if _, err := delta.Recv(); status.Code(err) != codes.InvalidArgument {
		t.Errorf("delta stream whose first request has no node: %v; want InvalidArgument", err)
	}
}
