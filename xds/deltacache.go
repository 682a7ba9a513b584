package xds

import (
	"sync"
	"sync/atomic"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// encodings are the shared resource sets currently published, with each
// resource's encoding computed once per change (Publisher.hashAll).
// go-control-plane's delta cache marshals (and hashes) every resource it
// sends again for every stream; with 1,000 proxies that is 1,000 encodings
// of each shared cluster and endpoint set per change. Delta responses are
// built from these encodings instead; a resource whose version is not the
// current shared one (a proxy's own, or a response racing a change) is
// marshalled as before.
type encodings struct {
	sets atomic.Pointer[map[resourcev3.Type]versioned]
}

func (e *encodings) set(shared map[resourcev3.Type]versioned) {
	if e != nil {
		e.sets.Store(&shared)
	}
}

// lookup returns the encoding of name at version, or nil.
func (e *encodings) lookup(typeURL, name, version string) []byte {
	sets := e.sets.Load()
	if sets == nil {
		return nil
	}
	v, ok := (*sets)[typeURL]
	if !ok || v.versionMap[name] != version {
		return nil
	}
	return v.raw[name]
}

// encodedDelta is a delta response whose shared resources come from
// encodings. The versions it sends are meshd's per-resource content hashes
// (the same the cache compares), so a reconnecting Envoy's
// initial_resource_versions match and nothing is resent.
type encodedDelta struct {
	*cachev3.RawDeltaResponse
	removed []string
	enc     *encodings

	once sync.Once
	resp *discoveryv3.DeltaDiscoveryResponse
	err  error
}

func (r *encodedDelta) GetDeltaDiscoveryResponse() (*discoveryv3.DeltaDiscoveryResponse, error) {
	r.once.Do(func() {
		typeURL := r.GetDeltaRequest().GetTypeUrl()
		versions := r.GetReturnedResources()
		raw := r.GetRawResources()
		out := make([]*discoveryv3.Resource, 0, len(raw))
		for _, res := range raw {
			name := cachev3.GetResourceName(res.Resource)
			version := versions[name]
			b := r.enc.lookup(typeURL, name, version)
			if b == nil {
				if b, r.err = cachev3.MarshalResource(res.Resource); r.err != nil {
					return
				}
			}
			out = append(out, &discoveryv3.Resource{Name: name, Version: version, Resource: &anypb.Any{TypeUrl: typeURL, Value: b}})
		}
		r.resp = &discoveryv3.DeltaDiscoveryResponse{Resources: out, RemovedResources: r.removed, TypeUrl: typeURL,
			SystemVersionInfo: r.SystemVersionInfo}
	})
	return r.resp, r.err
}

// removedResources is what go-control-plane's createDeltaResponse removes:
// for a wildcard subscription every returned resource no longer in the
// set, otherwise every subscribed and returned one no longer in it.
func removedResources(sub cachev3.Subscription, next map[string]string) []string {
	var out []string
	for name := range sub.ReturnedResources() {
		if _, ok := next[name]; ok {
			continue
		}
		if !sub.IsWildcard() {
			if _, ok := sub.SubscribedResources()[name]; !ok {
				continue
			}
		}
		out = append(out, name)
	}
	return out
}

// CreateDeltaWatch hands the cache a channel of its own and forwards the
// response, built from the shared encodings, to the stream's channel. The
// forwarder never sends after the watch is cancelled: the stream closes its
// channel right after cancelling its watches.
func (g *nackGuard) CreateDeltaWatch(req *cachev3.DeltaRequest, sub cachev3.Subscription, ch chan cachev3.DeltaResponse) (func(), error) {
	inner := make(chan cachev3.DeltaResponse, 1)
	cancelInner, err := g.SnapshotCache.CreateDeltaWatch(req, sub, inner)
	if err != nil {
		return cancelInner, err
	}
	var mu sync.Mutex
	cancelled := false
	done := make(chan struct{})
	go func() {
		select {
		case resp := <-inner:
			// Under mu: once cancel has returned, the stream may change
			// sub and close ch; until then neither happens.
			mu.Lock()
			defer mu.Unlock()
			if cancelled {
				return
			}
			if raw, ok := resp.(*cachev3.RawDeltaResponse); ok {
				resp = &encodedDelta{RawDeltaResponse: raw, removed: removedResources(sub, raw.GetReturnedResources()), enc: g.enc}
			}
			ch <- resp // buffered for one response per type: never blocks
		case <-done:
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			mu.Lock()
			cancelled = true
			mu.Unlock()
			close(done)
			if cancelInner != nil {
				cancelInner()
			}
		})
	}, nil
}
