package cache

import (
	"context"
	"iter"
	"maps"
	"slices"
	"sync"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/meshd/meshd/xds/resource"
)

type deltaWatch struct {
	node string
	req  *cachev3.DeltaRequest
	sub  *subscription
	ch   chan cachev3.DeltaResponse
	held *deltaHeld
	// typeOrder is the type's place in ADS order.
	typeOrder int
}

// deltaHeld is what one delta stream holds of one type, as far as meshd
// knows. Kept with the stream (see streams.go); guarded by mu.
type deltaHeld struct {
	mu sync.Mutex
	// set: the stream holds this set's version of every resource of it the
	// stream subscribes to, except the names in lacking (subscribed to
	// since, not sent yet). nil when not known: at the stream's start (the
	// client's initial versions, in the subscription, are compared) and
	// after a NACK.
	set     *resource.Set
	lacking map[string]struct{}
	// sent is the version last sent; rejected the one last NACKed, not sent
	// again.
	sent, rejected string
	// stream is the stream's ID (0: a request of no stream noted).
	stream int64
}

// wasSent reports whether the stream was sent a response of the type.
func (h *deltaHeld) wasSent() bool {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.sent != ""
}

// observe takes a request, which asked a, into what the stream holds.
func (h *deltaHeld) observe(req *cachev3.DeltaRequest, a asked) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if req.GetErrorDetail() != nil {
		// The stream kept what it had before: no longer known exactly.
		h.rejected, h.set, h.lacking = h.sent, nil, nil
		return
	}
	if h.set == nil {
		return
	}
	for _, name := range a.names {
		if name != "*" {
			if h.lacking == nil {
				h.lacking = map[string]struct{}{}
			}
			h.lacking[name] = struct{}{}
		}
	}
	for _, name := range a.dropped {
		delete(h.lacking, name) // the client forgets it: neither held nor lacking
	}
}

// CreateDeltaWatch answers at once when the stream lacks something of its
// node's current snapshot, or waits for a snapshot that changes the type.
func (c *Cache) CreateDeltaWatch(req *cachev3.DeltaRequest, sub cachev3.Subscription, ch chan cachev3.DeltaResponse) (func(), error) {
	typeURL := req.GetTypeUrl()
	slot := resource.Order(typeURL)
	held, ours, a, known := heldOf[deltaHeld](c, req, typeURL, slot, sub)
	if !known {
		// A request of no stream noted keeps its names.
		a = asked{delta: true, names: req.GetResourceNamesSubscribe(), dropped: req.GetResourceNamesUnsubscribe()}
	}
	w := &deltaWatch{node: req.GetNode().GetId(), req: req, sub: ours, ch: ch, held: held, typeOrder: slot}
	w.held.observe(req, a)
	c.mu.Lock()
	var synced []InSync
	if s := c.snaps[w.node]; s != nil && c.answerLocked(w, s, &synced) {
		c.mu.Unlock()
		return func() {}, nil
	}
	cancel := wait(c, c.watches, w.node, w)
	c.tell(synced) // unlocks c.mu
	return cancel, nil
}

// answerLocked sends the watch what its stream lacks of snapshot s, if
// anything, and reports whether it did (the watch is then done). A stream
// that started the type holding exactly the set (a proxy reconnecting
// with its versions) is sent nothing and added to synced.
func (c *Cache) answerLocked(w *deltaWatch, s *resource.Snapshot, synced *[]InSync) bool {
	typeURL := w.req.GetTypeUrl()
	set := setOf(s, w.typeOrder, typeURL)
	h := w.held
	h.mu.Lock()
	defer h.mu.Unlock()
	// A wildcard stream's first request is answered even when it lacks
	// nothing, so that it knows the type is there.
	first := w.sub.IsWildcard() && w.req.GetResponseNonce() == ""
	if set.Version() == h.rejected && !first {
		return false
	}
	var names, removed []string
	switch {
	case h.set == nil:
		names, removed = compare(w.sub, *set)
	case h.set.Version() == set.Version():
		names = lackingIn(h, *set)
	case h.set.Version() == set.From() && set.From() != "":
		names, removed = difference(w.sub, h, *set)
	default:
		names, removed = compareHeld(w.sub, h, *set)
	}
	if len(names) == 0 && len(removed) == 0 && !first {
		if h.set == nil {
			h.set, h.lacking = set, nil // nothing lacking: it holds set exactly
			if h.sent == "" && h.stream != 0 && len(w.sub.ReturnedResources()) > 0 {
				*synced = append(*synced, InSync{Stream: h.stream, TypeURL: typeURL, Version: set.Version()})
			}
		}
		return false
	}
	resp := &deltaResponse{req: w.req, held: h, set: set, names: names, removed: removed}
	select {
	case w.ch <- resp:
	default:
		// The stream's channel holds two responses per type and a type has
		// one watch answering once: this does not happen.
		c.log.Error("xds: delta response dropped: the stream's queue is full", "node", w.node, "type", typeURL)
	}
	return true
}

// sends reports whether a stream subscribed this way gets name.
func sends(sub cachev3.Subscription, name string) bool {
	if sub.IsWildcard() {
		return true
	}
	_, ok := sub.SubscribedResources()[name]
	return ok
}

// lackingIn is the names subscribed to since the stream's last response
// that set has.
func lackingIn(h *deltaHeld, set resource.Set) []string {
	var names []string
	ix := set.Index()
	for name := range h.lacking {
		if ix.Has(name) {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names
}

// difference is what a stream holding the set that set replaced lacks: the
// change, as its subscription selects it, and the names it subscribed to
// since.
func difference(sub cachev3.Subscription, h *deltaHeld, set resource.Set) (names, removed []string) {
	for _, name := range set.Changed() {
		if _, late := h.lacking[name]; !late && sends(sub, name) {
			names = append(names, name)
		}
	}
	for _, name := range set.Removed() {
		if _, late := h.lacking[name]; !late && sends(sub, name) {
			removed = append(removed, name)
		}
	}
	names = append(names, lackingIn(h, set)...)
	slices.Sort(names)
	return names, removed
}

// compareHeld is what a stream holding h lacks of set, resource by
// resource (h.set is neither set nor the set it replaced): it holds h.set's
// versions but for the names subscribed to since.
func compareHeld(sub cachev3.Subscription, h *deltaHeld, set resource.Set) (names, removed []string) {
	held := h.set.Index()
	return lacks(sub, set, 0, func(yield func(string) bool) {
		for name := range h.set.Versions() {
			if !yield(name) {
				return
			}
		}
	}, func(name string) (string, bool) {
		if _, late := h.lacking[name]; late {
			return "", false
		}
		return held.VersionOf(name)
	})
}

// compare is what a stream lacks by the per-resource versions in its
// subscription (the client's initial versions until it was sent the type:
// then none, see heldOf), as go-control-plane's delta cache computes it.
func compare(sub cachev3.Subscription, set resource.Set) (names, removed []string) {
	held := sub.ReturnedResources()
	if len(held) == 0 && !set.Merged() && lacksWhole(sub, set) {
		// A proxy connecting to the mesh: the set's one list of its names,
		// not a list and a lookup per name for each proxy.
		if all := set.SortedNames(); all != nil {
			return all, nil
		}
	}
	// A stream holding nothing (a proxy connecting) lacks everything it
	// subscribed to: one list of that size, not one grown by doubling.
	size := 0
	if len(held) == 0 {
		size = set.Len()
		if !sub.IsWildcard() {
			size = min(size, len(sub.SubscribedResources()))
		}
	}
	return lacks(sub, set, size, maps.Keys(held), func(name string) (string, bool) {
		v, ok := held[name]
		return v, ok
	})
}

// lacksWhole reports whether a stream holding nothing lacks the whole of
// set: it subscribes to every name, or to exactly the set's.
func lacksWhole(sub cachev3.Subscription, set resource.Set) bool {
	if sub.IsWildcard() {
		return true
	}
	s, ok := sub.(*subscription)
	return ok && s.names.isSetOf(set)
}

// lacks is what a stream lacks of set, resource by resource, given the
// version it holds of a name (held) and the names it may hold (heldNames):
// for a wildcard subscription every resource of the set it does not hold
// at the set's version, and every held one no longer in the set; otherwise
// the same among the subscribed names. size is the names' expected number
// (0: unknown).
func lacks(sub cachev3.Subscription, set resource.Set, size int, heldNames iter.Seq[string], held func(string) (string, bool)) (names, removed []string) {
	ix := set.Index()
	if size > 0 {
		names = make([]string, 0, size)
	}
	if sub.IsWildcard() {
		for name, v := range set.Versions() {
			if hv, ok := held(name); !ok || hv != v {
				names = append(names, name)
			}
		}
		for name := range heldNames {
			if !ix.Has(name) {
				if _, had := held(name); had {
					removed = append(removed, name)
				}
			}
		}
	} else {
		for name := range sub.SubscribedResources() {
			v, ok := ix.VersionOf(name)
			hv, had := held(name)
			switch {
			case ok && (!had || hv != v):
				names = append(names, name)
			case !ok && had:
				removed = append(removed, name)
			}
		}
	}
	sortPart(names, set)
	slices.Sort(removed)
	return names, removed
}

// sortPart sorts names lacking of set, a stable order as the versions are,
// unless they are the whole set: that goes out as the set's one encoding
// (see deltaResponse), in its order, and a connecting stream's ~1,000
// names per type are not sorted again for each proxy.
func sortPart(names []string, set resource.Set) {
	if len(names) != set.Len() {
		slices.Sort(names)
	}
}

// deltaResponse is built when the stream sends it (in the stream's
// goroutine), from the set's encodings where it has them; sending it is
// what records what the stream now holds.
type deltaResponse struct {
	req     *cachev3.DeltaRequest
	held    *deltaHeld
	set     *resource.Set // the snapshot's
	names   []string
	removed []string

	once sync.Once
	resp *discoveryv3.DeltaDiscoveryResponse
	err  error
}

func (r *deltaResponse) GetDeltaDiscoveryResponse() (*discoveryv3.DeltaDiscoveryResponse, error) {
	r.once.Do(func() {
		defer r.commit()
		typeURL := r.req.GetTypeUrl()
		r.resp = &discoveryv3.DeltaDiscoveryResponse{RemovedResources: r.removed, TypeUrl: typeURL, SystemVersionInfo: r.set.Version()}
		if len(r.names) > 0 && len(r.names) == r.set.Len() {
			// The whole set (a proxy connecting): the shared encoding.
			var body []byte
			if body, r.resp.Resources, r.err = r.set.DeltaBody(typeURL); r.err != nil {
				return
			}
			if body != nil {
				r.resp.ProtoReflect().SetUnknown(body)
			}
			return
		}
		out := make([]*discoveryv3.Resource, 0, len(r.names))
		ix := r.set.Index()
		for _, name := range r.names {
			var b []byte
			if b, r.err = r.set.Encoding(name); r.err != nil {
				return
			}
			version, _ := ix.VersionOf(name)
			out = append(out, &discoveryv3.Resource{Name: name, Version: version, Resource: &anypb.Any{TypeUrl: typeURL, Value: b}})
		}
		r.resp.Resources = out
	})
	return r.resp, r.err
}

// commit records that the stream holds the set (once sent). Names
// subscribed to since are still lacking unless sent or absent from the set.
func (r *deltaResponse) commit() {
	h := r.held
	h.mu.Lock()
	defer h.mu.Unlock()
	if r.err != nil {
		return
	}
	set := r.set
	ix := set.Index()
	for name := range h.lacking {
		if !ix.Has(name) || slices.Contains(r.names, name) {
			delete(h.lacking, name)
		}
	}
	h.set, h.sent = set, set.Version()
}

func (r *deltaResponse) GetDeltaRequest() *discoveryv3.DeltaDiscoveryRequest { return r.req }
func (r *deltaResponse) GetSystemVersion() (string, error)                   { return r.set.Version(), nil }
func (r *deltaResponse) GetResponseVersion() string                          { return r.set.Version() }

// GetNextVersionMap is an empty map of the stream's own: what the stream
// holds is deltaHeld (go-control-plane edits this map on unsubscribes).
func (r *deltaResponse) GetNextVersionMap() map[string]string    { return map[string]string{} }
func (r *deltaResponse) GetReturnedResources() map[string]string { return map[string]string{} }
func (r *deltaResponse) GetContext() context.Context             { return context.Background() }
