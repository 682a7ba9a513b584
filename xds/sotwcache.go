package xds

import (
	"context"
	"errors"
	"maps"
	"slices"
	"sync"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
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
// knows. Kept with the stream (see streams.heldOf); guarded by mu.
type sotwHeld struct {
	mu sync.Mutex
	// version is the type's version the stream last got ("" when nothing
	// yet), or after a NACK the version it kept.
	version string
	// set is the set the stream holds exactly for the names in names (nil
	// when not known: then everything subscribed is sent). Full-state types
	// need only version.
	set   *versioned
	names map[string]struct{}
	// lastNames are the names of the stream's last request, to tell a
	// changed subscription from an ACK cheaply.
	lastNames []string
	// rejected is the version the stream last NACKed: it is not sent again.
	rejected string
}

// sotwWatch is one open SotW request.
type sotwWatch struct {
	node  string
	req   *cachev3.Request
	sub   cachev3.Subscription
	ch    chan cachev3.Response
	held  *sotwHeld
	added map[string]struct{} // subscribed names not in held.names
}

// fullState reports whether a SotW response of the type must hold every
// resource (the client removes what a response leaves out).
func fullState(typeURL string) bool {
	return typeURL == resourcev3.ListenerType || typeURL == resourcev3.ClusterType
}

// CreateWatch answers at once when the stream lacks something of its node's
// current snapshot, or waits for a snapshot that changes the type.
func (c *Cache) CreateWatch(req *cachev3.Request, sub cachev3.Subscription, ch chan cachev3.Response) (func(), error) {
	w := &sotwWatch{node: req.GetNode().GetId(), req: req, sub: sub, ch: ch, held: heldOf[sotwHeld](c, req, req.GetTypeUrl())}
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
	names := req.GetResourceNames()
	if h.names == nil || slices.Equal(names, h.lastNames) {
		h.lastNames = names
		return
	}
	h.lastNames = names
	subscribed := w.sub.SubscribedResources()
	kept := make(map[string]struct{}, len(h.names))
	for name := range h.names {
		if _, ok := subscribed[name]; ok {
			kept[name] = struct{}{} // a dropped name is forgotten by the client
		}
	}
	h.names = kept
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
func (c *Cache) answerSotwLocked(w *sotwWatch, s *snapshot) bool {
	typeURL := w.req.GetTypeUrl()
	set, ok := s.sets[typeURL]
	if !ok {
		set = emptySet
	}
	h := w.held
	h.mu.Lock()
	defer h.mu.Unlock()
	resp := &sotwResponse{req: w.req, held: h, set: set}
	if fullState(typeURL) || w.sub.IsWildcard() {
		if set.version == h.version || set.version == h.rejected {
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
func lacking(w *sotwWatch, h *sotwHeld, set versioned) ([]string, bool) {
	subscribed := w.sub.SubscribedResources()
	var names []string
	switch {
	case h.set != nil && h.set.version == set.version:
		for name := range w.added {
			if _, ok := set.versionMap[name]; ok {
				names = append(names, name)
			}
		}
	case h.set != nil && h.set.version == set.from && set.from != "" && set.version != h.rejected:
		// The change's difference, plus names subscribed since.
		for _, name := range set.changed {
			if _, ok := subscribed[name]; ok {
				names = append(names, name)
			}
		}
		for name := range w.added {
			if _, ok := set.versionMap[name]; ok && !slices.Contains(set.changed, name) {
				names = append(names, name)
			}
		}
	case set.version == h.rejected:
		// Only what was not in the rejected response.
		for name := range w.added {
			if _, ok := set.versionMap[name]; ok {
				names = append(names, name)
			}
		}
	default:
		for name := range subscribed {
			v, ok := set.versionMap[name]
			if !ok {
				continue
			}
			if _, add := w.added[name]; add || h.set == nil || h.set.versionMap[name] != v {
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
		if h.set == nil && set.version != h.rejected {
			// What it holds is now known: every subscribed name is at the
			// set's version (or absent from it).
			h.set, h.names, h.version = &set, subscribed, set.version
		}
		return nil, false
	}
	slices.Sort(names)
	return names, true
}

// sotwResponse is built when the stream sends it (in the stream's
// goroutine), from the set's encodings; sending it is what records what
// the stream now holds.
type sotwResponse struct {
	req        *cachev3.Request
	held       *sotwHeld
	set        versioned
	all        bool     // the whole set
	names      []string // else these
	subscribed map[string]struct{}

	once sync.Once
	resp *discoveryv3.DiscoveryResponse
	err  error
}

func (r *sotwResponse) GetDiscoveryResponse() (*discoveryv3.DiscoveryResponse, error) {
	r.once.Do(func() {
		typeURL := r.req.GetTypeUrl()
		enc, err := r.set.encodings(typeURL)
		if err != nil {
			r.err = err
			return
		}
		var resources []*anypb.Any
		var body []byte
		if r.all {
			if body, resources, err = r.set.sotwBody(typeURL); err != nil {
				r.err = err
				return
			}
		} else {
			resources = make([]*anypb.Any, 0, len(r.names))
			for _, name := range r.names {
				resources = append(resources, enc.byName[name])
			}
		}
		// The server writes the nonce into the response: one per send,
		// sharing the encoded resources.
		r.resp = &discoveryv3.DiscoveryResponse{VersionInfo: r.set.version, Resources: resources, TypeUrl: typeURL}
		if body != nil {
			// The shared resources, already encoded as entries of the
			// response's resources field (see sotwBody).
			r.resp.ProtoReflect().SetUnknown(body)
		}
		h := r.held
		h.mu.Lock()
		defer h.mu.Unlock()
		h.version = r.set.version
		if !r.all {
			set := r.set
			h.set, h.names = &set, r.subscribed
		}
	})
	return r.resp, r.err
}

func (r *sotwResponse) GetRequest() *discoveryv3.DiscoveryRequest { return r.req }
func (r *sotwResponse) GetVersion() (string, error)               { return r.set.version, nil }
func (r *sotwResponse) GetResponseVersion() string                { return r.set.version }

// GetReturnedResources is nil: what the stream holds is sotwHeld.
func (r *sotwResponse) GetReturnedResources() map[string]string { return nil }
func (r *sotwResponse) GetContext() context.Context             { return context.Background() }

// encodings are a set's resources as Any values, made once per set and
// shared by every response that carries them.
type encodings struct {
	once   sync.Once
	all    []*anypb.Any
	byName map[string]*anypb.Any
	err    error

	// The whole set as entries of a response's resources field, SotW
	// (google.protobuf.Any) and delta (Resource), made once per shared set.
	sotwOnce, deltaOnce sync.Once
	sotw, delta         []byte
	sotwErr, deltaErr   error
}

// A full configuration (every listener, cluster, endpoint set of the mesh,
// about 1 MB at 1,000 services) goes to every proxy that connects. Encoded
// field by field for each, the encoding of each response dominated meshd's
// CPU in a connect storm. Instead the set's resources are encoded once as
// the bytes of the response's repeated resources field, and each response
// carries them as its unknown fields: protobuf writes them verbatim, and a
// parser reads repeated entries wherever they are in the message. A
// proxy's own resources (merged sets) go in the resources field as usual.

// sotwBody returns the set as SotW resources-field bytes plus the Any
// values not in them (a merged set's own resources); body is nil when the
// set cannot be split so (its own resources replace shared ones by name).
func (v versioned) sotwBody(typeURL string) (body []byte, rest []*anypb.Any, err error) {
	enc, err := v.encodings(typeURL)
	if err != nil {
		return nil, nil, err
	}
	switch {
	case v.reuse == nil:
		enc.sotwOnce.Do(func() {
			for _, a := range enc.all {
				b, err := proto.Marshal(&discoveryv3.DiscoveryResponse{Resources: []*anypb.Any{a}})
				if err != nil {
					enc.sotwErr = err
					return
				}
				enc.sotw = append(enc.sotw, b...)
			}
		})
		return enc.sotw, nil, enc.sotwErr
	case len(v.plain) == len(v.items): // shared and own names are disjoint
		body, _, err := v.reuse.sotwBody(typeURL)
		if err != nil {
			return nil, nil, err
		}
		for _, name := range v.own(enc) {
			rest = append(rest, enc.byName[name])
		}
		return body, rest, nil
	}
	return nil, enc.all, nil
}

// deltaBody is sotwBody for delta responses carrying the whole set.
func (v versioned) deltaBody(typeURL string) (body []byte, rest []*discoveryv3.Resource, err error) {
	enc, err := v.encodings(typeURL)
	if err != nil {
		return nil, nil, err
	}
	switch {
	case v.reuse == nil:
		enc.deltaOnce.Do(func() {
			for _, name := range slices.Sorted(maps.Keys(enc.byName)) {
				b, err := proto.Marshal(&discoveryv3.DeltaDiscoveryResponse{Resources: []*discoveryv3.Resource{v.deltaResource(enc, name)}})
				if err != nil {
					enc.deltaErr = err
					return
				}
				enc.delta = append(enc.delta, b...)
			}
		})
		return enc.delta, nil, enc.deltaErr
	case len(v.plain) == len(v.items):
		body, _, err := v.reuse.deltaBody(typeURL)
		if err != nil {
			return nil, nil, err
		}
		for _, name := range v.own(enc) {
			rest = append(rest, v.deltaResource(enc, name))
		}
		return body, rest, nil
	}
	for _, name := range slices.Sorted(maps.Keys(enc.byName)) {
		rest = append(rest, v.deltaResource(enc, name))
	}
	return nil, rest, nil
}

func (v versioned) deltaResource(enc *encodings, name string) *discoveryv3.Resource {
	return &discoveryv3.Resource{Name: name, Version: v.versionMap[name], Resource: enc.byName[name]}
}

// own returns the names of a merged set's resources that are not the
// shared set's.
func (v versioned) own(enc *encodings) []string {
	var out []string
	for _, name := range slices.Sorted(maps.Keys(enc.byName)) {
		if _, shared := v.reuse.plain[name]; !shared {
			out = append(out, name)
		}
	}
	return out
}

func (v versioned) encodings(typeURL string) (*encodings, error) {
	e := v.enc
	if e == nil {
		return nil, errors.New("xds: a set without encodings")
	}
	e.once.Do(func() {
		e.byName = make(map[string]*anypb.Any, len(v.plain))
		e.all = make([]*anypb.Any, 0, len(v.plain))
		for _, name := range slices.Sorted(maps.Keys(v.plain)) {
			var a *anypb.Any
			if v.reuse != nil {
				// A proxy's merged set: the shared resources' Any values are
				// the shared set's.
				if se, err := v.reuse.encodings(typeURL); err == nil {
					a = se.byName[name]
				}
			}
			if a == nil {
				b := v.raw[name]
				if b == nil {
					var err error
					if b, err = cachev3.MarshalResource(v.plain[name]); err != nil {
						e.err = err
						return
					}
				}
				a = &anypb.Any{TypeUrl: typeURL, Value: b}
			}
			e.byName[name] = a
			e.all = append(e.all, a)
		}
	})
	return e, e.err
}
