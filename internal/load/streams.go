package load

import (
	"context"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
)

var secretNames = []string{"default", "ROOTCA"}

// follow maps the types whose resources name others (clusters their
// endpoint sets, listeners their route configurations) to those others'.
var follow = map[string]string{resourcev3.ClusterType: resourcev3.EndpointType, resourcev3.ListenerType: resourcev3.RouteType}

// runSotW speaks state-of-the-world ADS: wildcard CDS and LDS, then EDS
// and RDS for what they name, SDS by name; every response is ACKed with
// its version and nonce.
func (s *sidecar) runSotW(ctx context.Context) error {
	stream, err := OpenADS(ctx, s.conn, false)
	if err != nil {
		return err
	}
	type state struct{ version, nonce string }
	last := map[string]state{}
	subscribed := map[string]*nameSet{resourcev3.EndpointType: {}, resourcev3.RouteType: {}}
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
	var resp Response
	for {
		if err := stream.Recv(&resp); err != nil {
			return err
		}
		s.received.Add(int64(resp.Size))
		if err := s.handle(resp.TypeURL, resp.Resources, nil, time.Now()); err != nil {
			return err
		}
		last[resp.TypeURL] = state{resp.Version, resp.Nonce}
		var names []string
		switch resp.TypeURL {
		case resourcev3.EndpointType, resourcev3.RouteType:
			names = s.names(resp.TypeURL)
		case resourcev3.SecretType:
			names = secretNames
		}
		if err := send(resp.TypeURL, names); err != nil { // the ACK
			return err
		}
		// Other names to follow: resubscribe EDS or RDS.
		if next, ok := follow[resp.TypeURL]; ok {
			// (Not to none: an empty list is the legacy wildcard.)
			if add, drop := s.resubscribe(next, subscribed[next]); len(add)+len(drop) > 0 {
				if names := s.names(next); len(names) > 0 {
					if err := send(next, names); err != nil {
						return err
					}
				}
			}
		}
	}
}

// runDelta speaks incremental ADS with the same subscriptions.
func (s *sidecar) runDelta(ctx context.Context) error {
	stream, err := OpenADS(ctx, s.conn, true)
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
	var resp Response
	for {
		if err := stream.Recv(&resp); err != nil {
			return err
		}
		s.received.Add(int64(resp.Size))
		if err := s.handle(resp.TypeURL, resp.Resources, resp.Removed, time.Now()); err != nil {
			return err
		}
		if err := send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: resp.TypeURL, ResponseNonce: resp.Nonce}); err != nil {
			return err
		}
		if next, ok := follow[resp.TypeURL]; ok {
			if add, drop := s.resubscribe(next, subscribed[next]); len(add)+len(drop) > 0 {
				if err := send(&discoveryv3.DeltaDiscoveryRequest{TypeUrl: next, ResourceNamesSubscribe: add, ResourceNamesUnsubscribe: drop}); err != nil {
					return err
				}
			}
		}
	}
}
