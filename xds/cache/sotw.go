package cache

import (
	"context"
	"slices"
	"sync"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshd/meshd/xds/resource"
)

// State-of-the-world watches, answered by Cache from the prepared sets.
//
// Why: go-control-plane's snapshot cache answers every SotW watch of a type
// whose version moved with every subscribed resource, marshalled again for
// each stream: an endpoint change with 1,000 proxies subscribed to 1,000
// endpoint sets re-encoded about a million resources. Here
//   - listeners and clusters (the protocol wants them complete) and wildcard
//     subscriptions get the whole set, from encodings made once per set;
//   - endpoint sets, routes and secrets subscribed by name get only what the
//     stream lacks: a stream known to hold exactly the set a change replaced
//     gets the change's difference (EDS, RDS and SDS responses may carry a
//     subset: what they leave out is kept, not removed);
//   - what a stream holds is meshd's own record (sotwHeld), written when a
//     response is actually sent (a response dropped because a new request
//     of its type came first changes nothing), not go-control-plane's
//     per-stream map of every name and version.

// sotwHeld is what one SotW stream holds of one type, as far as meshd
// knows. Kept with the stream (see streams.go); guarded by mu.
type sotwHeld struct {
	mu sync.Mutex
	// version is the type's version the stream last got ("" when nothing
	// yet), or after a NACK the version it kept.
	version string
	// set is the set the stream holds exactly for the names in names (nil
	// when not known: then everything subscribed is sent). Full-state types
	// need only version.
	set   *resource.Set
	names map[string]struct{}
	// last is the subscription of the stream's last request, to tell a
	// changed subscription from an ACK at once.
	last *subscription
	// rejected is the version the stream last NACKed: it is not sent again.
	rejected string
}

// sotwWatch is one open SotW request.
type sotwWatch struct {
	node  string
	req   *cachev3.Request
	sub   *subscription
	ch    chan cachev3.Response
	held  *sotwHeld
	added map[string]struct{} // subscribed names not in held.names
	// typeOrder is the type's place in ADS order.
	typeOrder int
}

// fullState reports whether a SotW response of the type must hold every
// resource (the client removes what a response leaves out).
func fullState(typeURL string) bool {
	return typeURL == resourcev3.ListenerType || typeURL == resourcev3.ClusterType
}

// CreateWatch answers at once when the stream lacks something of its node's
// current snapshot, or waits for a snapshot that changes the type.
func (c *Cache) CreateWatch(req *cachev3.Request, sub cachev3.Subscription, ch chan cachev3.Response) (func(), error) {
	typeURL := req.GetTypeUrl()
	slot := resource.Order(typeURL)
	held, ours, _, _ := heldOf[sotwHeld](c, req, typeURL, slot, sub)
	w := &sotwWatch{node: req.GetNode().GetId(), req: req, sub: ours, ch: ch, held: held, typeOrder: slot}
	w.held.observe(w)
	c.mu.Lock()
	defer c.mu.Unlock()
	if s := c.snaps[w.node]; s != nil && c.answerSotwLocked(w, s) {
		return func() {}, nil
	}
	return wait(c, c.sotw, w.node, w), nil
}

// observe takes a request into what the stream holds: a NACK, a
// subscription that dropped or added names.
func (h *sotwHeld) observe(w *sotwWatch) {
	h.mu.Lock()
	defer h.mu.Unlock()
	req := w.req
	// A new stream's version_info is not taken at its word (it may hold
	// another replica's or an older meshd's config under that version):
	// its first request is answered with all it asks for.
	if req.GetErrorDetail() != nil {
		// The stream kept what it had before the rejected response; for a
		// subset type that is no longer known exactly.
		h.rejected, h.version, h.set, h.names = h.version, req.GetVersionInfo(), nil, nil
	}
	if h.names == nil || w.sub == h.last {
		// An ACK, or nothing held by name yet.
		h.last = w.sub
		return
	}
	h.last = w.sub
	subscribed := w.sub.SubscribedResources()
	kept := make(map[string]struct{}, len(h.names))
	for name := range h.names {
		if _, ok := subscribed[name]; ok {
			kept[name] = struct{}{} // a dropped name is forgotten by the client
		}
	}
	h.names = kept
	if len(kept) == len(subscribed) {
		// Every name kept: the subscription's own set, shared.
		h.names = subscribed
		return
	}
	for name := range subscribed {
		if _, ok := kept[name]; !ok {
			if w.added == nil {
				w.added = map[string]struct{}{}
			}
			w.added[name] = struct{}{}
		}
	}
}

// answerSotwLocked sends the watch what its stream lacks of snapshot s, if
// anything, and reports whether it did (the watch is then done).
func (c *Cache) answerSotwLocked(w *sotwWatch, s *resource.Snapshot) bool {
	typeURL := w.req.GetTypeUrl()
	set := setOf(s, w.typeOrder, typeURL)
	h := w.held
	h.mu.Lock()
	defer h.mu.Unlock()
	resp := &sotwResponse{req: w.req, held: h, set: set}
	if fullState(typeURL) || w.sub.IsWildcard() {
		if set.Version() == h.version || set.Version() == h.rejected {
			return false
		}
		resp.all = true
	} else {
		names, ok := lacking(w, h, set)
		if !ok {
			return false
		}
		resp.names = names
		resp.subscribed = w.sub.SubscribedResources()
	}
	select {
	case w.ch <- resp:
	default:
		// A watch answers once into its stream's queue, which has room for
		// one response per type.
		c.log.Error("xds: SotW response dropped: the stream's queue is full", "node", w.node, "type", typeURL)
	}
	return true
}

// lacking is what a stream subscribed by name lacks of set, and whether a
// response is due (a stream that asks for the first time is answered even
// when none of its names exist, so that it knows).
func lacking(w *sotwWatch, h *sotwHeld, set *resource.Set) ([]string, bool) {
	subscribed := w.sub.SubscribedResources()
	ix := set.Index()
	var names []string
	switch {
	case h.set != nil && h.set.Version() == set.Version():
		for name := range w.added {
			if ix.Has(name) {
				names = append(names, name)
			}
		}
	case h.set != nil && h.set.Version() == set.From() && set.From() != "" && set.Version() != h.rejected:
		// The change's difference, plus names subscribed since.
		for _, name := range set.Changed() {
			if _, ok := subscribed[name]; ok {
				names = append(names, name)
			}
		}
		for name := range w.added {
			if ix.Has(name) && !slices.Contains(set.Changed(), name) {
				names = append(names, name)
			}
		}
	case set.Version() == h.rejected:
		// Only what was not in the rejected response.
		for name := range w.added {
			if ix.Has(name) {
				names = append(names, name)
			}
		}
	default:
		var held resource.Index // what the stream holds, if known
		if h.set != nil {
			held = h.set.Index()
		}
		for name := range subscribed {
			v, ok := ix.VersionOf(name)
			if !ok {
				continue
			}
			hv, _ := held.VersionOf(name)
			if _, add := w.added[name]; add || h.set == nil || hv != v {
				names = append(names, name)
			}
		}
	}
	if len(names) == 0 {
		// Nothing new, unless the stream never heard of this type and
		// holds nothing: it is told the set's version.
		if h.version == "" && h.set == nil && w.req.GetResponseNonce() == "" {
			return nil, true
		}
		if h.set == nil && set.Version() != h.rejected {
			// What it holds is now known: every subscribed name is at the
			// set's version (or absent from it).
			h.set, h.names, h.version = set, subscribed, set.Version()
		}
		return nil, false
	}
	if len(names) < set.Len() { // the whole set goes out in its own order
		slices.Sort(names)
	}
	return names, true
}

// sotwResponse is built when the stream sends it (in the stream's
// goroutine), from the set's encodings; sending it is what records what
// the stream now holds.
type sotwResponse struct {
	req        *cachev3.Request
	held       *sotwHeld
	set        *resource.Set // the snapshot's
	all        bool          // the whole set
	names      []string      // else these
	subscribed map[string]struct{}

	once sync.Once
	resp *discoveryv3.DiscoveryResponse
	err  error
}

func (r *sotwResponse) GetDiscoveryResponse() (*discoveryv3.DiscoveryResponse, error) {
	r.once.Do(func() {
		typeURL := r.req.GetTypeUrl()
		var resources []*anypb.Any
		var body []byte
		var err error
		if r.all || len(r.names) == r.set.Len() {
			// The whole set (a proxy connecting asks for every endpoint
			// set and route): its one shared encoding, not a copy per stream.
			body, resources, err = r.set.SotwBody(typeURL)
		} else {
			resources, err = r.set.Encoded(typeURL, r.names)
		}
		if err != nil {
			r.err = err
			return
		}
		// The server writes the nonce into the response: one per send,
		// sharing the encoded resources.
		r.resp = &discoveryv3.DiscoveryResponse{VersionInfo: r.set.Version(), Resources: resources, TypeUrl: typeURL}
		if body != nil {
			// The shared resources, already encoded as entries of the
			// response's resources field (see resource.Set.SotwBody).
			r.resp.ProtoReflect().SetUnknown(body)
		}
		h := r.held
		h.mu.Lock()
		defer h.mu.Unlock()
		h.version = r.set.Version()
		if !r.all {
			h.set, h.names = r.set, r.subscribed
		}
	})
	return r.resp, r.err
}

func (r *sotwResponse) GetRequest() *discoveryv3.DiscoveryRequest { return r.req }
func (r *sotwResponse) GetVersion() (string, error)               { return r.set.Version(), nil }
func (r *sotwResponse) GetResponseVersion() string                { return r.set.Version() }

// GetReturnedResources is nil: what the stream holds is sotwHeld.
func (r *sotwResponse) GetReturnedResources() map[string]string { return nil }
func (r *sotwResponse) GetContext() context.Context             { return context.Background() }
