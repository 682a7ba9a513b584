package load

import (
	"context"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

var secretNames = []string{"default", "ROOTCA"}

func routeName(a *anypb.Any) string {
	var r routev3.RouteConfiguration
	_ = a.UnmarshalTo(&r)
	return r.GetName()
}

func secretName(a *anypb.Any) string {
	var s tlsv3.Secret
	_ = a.UnmarshalTo(&s)
	return s.GetName()
}

// runSotW speaks state-of-the-world ADS: wildcard CDS and LDS, then EDS
// and RDS for what they name, SDS by name; every response is ACKed with
// its version and nonce.
func (s *sidecar) runSotW(ctx context.Context, client discoveryv3.AggregatedDiscoveryServiceClient) error {
	stream, err := client.StreamAggregatedResources(ctx)
	if err != nil {
		return err
	}
	type state struct{ version, nonce string }
	last := map[string]state{}
	subscribed := map[string]int{}
	send := func(typeURL string, names []string) error {
		st := last[typeURL]
		return stream.Send(&discoveryv3.DiscoveryRequest{Node: s.nodeProto(), TypeUrl: typeURL, VersionInfo: st.version,
			ResponseNonce: st.nonce, ResourceNames: names})
	}
	for _, t := range []string{resourcev3.ClusterType, resourcev3.ListenerType} {
		if err := send(t, nil); err != nil {
			return err
		}
	}
	if err := send(resourcev3.SecretType, secretNames); err != nil {
		return err
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return err
		}
		s.received.Add(int64(proto.Size(resp)))
		if err := s.handle(resp.GetTypeUrl(), resp.GetResources(), time.Now()); err != nil {
			return err
		}
		last[resp.GetTypeUrl()] = state{resp.GetVersionInfo(), resp.GetNonce()}
		var names []string
		switch resp.GetTypeUrl() {
		case resourcev3.EndpointType, resourcev3.RouteType:
			names = s.names(resp.GetTypeUrl())
		case resourcev3.SecretType:
			names = secretNames
		}
		if err := send(resp.GetTypeUrl(), names); err != nil { // the ACK
			return err
		}
		// New names to follow: (re)subscribe EDS or RDS.
		follow := map[string]string{resourcev3.ClusterType: resourcev3.EndpointType, resourcev3.ListenerType: resourcev3.RouteType}
		if next, ok := follow[resp.GetTypeUrl()]; ok {
			if n := s.names(next); len(n) != subscribed[next] && len(n) > 0 {
				subscribed[next] = len(n)
				if err := send(next, n); err != nil {
					return err
				}
			}
		}
	}
}

// runDelta speaks incremental ADS with the same subscriptions.
func (s *sidecar) runDelta(ctx context.Context, client discoveryv3.AggregatedDiscoveryServiceClient) error {
	stream, err := client.DeltaAggregatedResources(ctx)
	if err != nil {
		return err
	}
	subscribed := map[string]*nameSet{resourcev3.EndpointType: {}, resourcev3.RouteType: {}}
	first := true
	send := func(req *discoveryv3.DeltaDiscoveryRequest) error {
		if first {
			req.Node, first = s.nodeProto(), false
		}
		return stream.Send(req)
	}
	for _, t := range []string{resourcev3.ClusterType, resourcev3.ListenerType} {
		if err := send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: t}); err != nil {
			return err
		}
	}
	if err := send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resourcev3.SecretType, ResourceNamesSubscribe: secretNames}); err != nil {
		return err
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return err
		}
		s.received.Add(int64(proto.Size(resp)))
		anys := make([]*anypb.Any, 0, len(resp.GetResources()))
		for _, r := range resp.GetResources() {
			anys = append(anys, r.GetResource())
		}
		if err := s.handle(resp.GetTypeUrl(), anys, time.Now()); err != nil {
			return err
		}
		if err := send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resp.GetTypeUrl(), ResponseNonce: resp.GetNonce()}); err != nil {
			return err
		}
		follow := map[string]string{resourcev3.ClusterType: resourcev3.EndpointType, resourcev3.ListenerType: resourcev3.RouteType}
		if next, ok := follow[resp.GetTypeUrl()]; ok {
			var add []string
			for _, n := range s.names(next) {
				if id := s.shared.names.id(n); !subscribed[next].has(id) {
					subscribed[next].add(id)
					add = append(add, n)
				}
			}
			if len(add) > 0 {
				if err := send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: next, ResourceNamesSubscribe: add}); err != nil {
					return err
				}
			}
		}
	}
}
