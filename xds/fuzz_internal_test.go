package xds

import (
	"io"
	"log/slog"
	"testing"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/protobuf/types/known/structpb"
	"k8s.io/utils/clock"

	"github.com/meshd/meshd/ca"
	"github.com/meshd/meshd/sds"
	"github.com/meshd/meshd/xds/cache"
)

// FuzzRequests feeds the request checks what a hostile client controls:
// node ID and metadata, type URL, resource names, nonces and NACK text, on
// SotW and delta, for a stream bound to web-0.demo. It must never panic, a
// request for another node or for secrets other than default/ROOTCA must
// be refused, and what a stream keeps stays bounded.
func FuzzRequests(f *testing.F) {
	f.Add("web-0.demo", "demo", "web", resourcev3.SecretType, "default", "n1", "")
	f.Add("db-0.demo", "demo", "web", resourcev3.ClusterType, "outbound|80|web.demo", "", "")
	f.Add("web-0.demo", "x", "y", "", "ROOTCA", "nonce", "rejected")
	f.Add("", "", "", "type.googleapis.com/evil.T", "\x00\xff", "\xff", "\x00")
	f.Fuzz(func(t *testing.T, nodeID, ns, sa, typeURL, name, nonce, nack string) {
		c := &callbacks{log: slog.New(slog.NewTextHandler(io.Discard, nil)), streams: newStreams(clock.RealClock{}), metrics: newMetrics(nil),
			cache:       cache.New(slog.New(slog.DiscardHandler)),
			trustDomain: "cluster.local"}
		peer := Peer{Identity: ca.Identity{TrustDomain: "cluster.local", Namespace: "demo", ServiceAccount: "web"}, NodeID: "web-0.demo"}
		for _, delta := range []bool{false, true} {
			c.streams.open(1, peer, delta, "")
			md, _ := structpb.NewStruct(map[string]any{"NAMESPACE": ns, "SERVICE_ACCOUNT": sa})
			node := &corev3.Node{Id: nodeID, Metadata: md}
			var detail *rpcstatus.Status
			if nack != "" {
				detail = &rpcstatus.Status{Message: nack}
			}
			var err error
			if delta {
				err = c.OnStreamDeltaRequest(1, &discoveryv3.DeltaDiscoveryRequest{Node: node, TypeUrl: typeURL,
					ResourceNamesSubscribe: []string{name}, ResponseNonce: nonce, ErrorDetail: detail})
			} else {
				err = c.OnStreamRequest(1, &discoveryv3.DiscoveryRequest{Node: node, TypeUrl: typeURL,
					ResourceNames: []string{name}, ResponseNonce: nonce, ErrorDetail: detail})
			}
			if err == nil && nodeID != peer.NodeID {
				t.Fatalf("request as node %q accepted on a stream of %s", nodeID, peer.NodeID)
			}
			if err == nil && typeURL == resourcev3.SecretType && name != sds.NameDefault && name != sds.NameRootCA {
				t.Fatalf("secret %q accepted", name)
			}
			c.streams.with(1, func(s *stream) {
				s.eachType(func(_ string, ts *TypeStatus) {
					if ts.LastNACK != nil && len(ts.LastNACK.Error) > maxNACKText+64 {
						t.Fatalf("NACK text of %d bytes kept", len(ts.LastNACK.Error))
					}
				})
			})
			c.closed(1)
		}
	})
}
