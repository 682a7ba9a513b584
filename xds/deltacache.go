package xds

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"k8s.io/utils/clock"
)

// Cache is the cache the ADS server answers from: it keeps each node's
// snapshot and answers delta watches (here) and SotW watches (sotwcache.go)
// from the sets the Publisher prepared. go-control-plane's snapshot cache is
// embedded only for the rest of its interface; it holds no snapshot.
//
// Why: on every snapshot of a node, go-control-plane's cache recomputes, for
// each delta watch of that node (each type, changed or not), the full
// per-resource version map of the type: with 1,000 proxies holding 1,000
// clusters and endpoint sets, an endpoint change costs millions of map
// operations and hundreds of megabytes of garbage. Here a watch is only
// looked at when its type's version changed; what a stream holds is meshd's
// own record (deltaHeld: the shared, immutable set it was sent plus the
// names it subscribed to since), not a per-stream copy of every name and
// version; a stream holding exactly the set a change replaced gets the
// change's difference, computed once for every proxy sharing that set
// (Publisher.SetAll). The resources sent are the encodings computed once per
// change (versioned.raw), not marshalled again per stream.
type Cache struct {
	cachev3.SnapshotCache
	log *slog.Logger

	mu      sync.Mutex
	snaps   map[string]*snapshot
	watches map[string]map[*deltaWatch]struct{} // by node ID
	sotw    map[string]map[*sotwWatch]struct{}  // by node ID
	// streams is the state of every open stream, shared with the server's
	// callbacks: what each stream holds is kept there.
	streams *streams
	// onSet, if set, is told each node whose snapshot was set (outside mu).
	onSet func(node string)
}

// notify sets the function told each node whose snapshot was set.
func (c *Cache) notify(f func(node string)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.onSet = f
}

// NewCache returns an empty cache, to create before the Server that answers
// from it (Config.Cache) when what publishes into it must exist first. clk
// is the clock of the streams' state (nil: the real clock).
func NewCache(log *slog.Logger, clk clock.PassiveClock) *Cache {
	if log == nil {
		log = slog.Default()
	}
	if clk == nil {
		clk = clock.RealClock{}
	}
	return &Cache{SnapshotCache: cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil), log: log,
		snaps: map[string]*snapshot{}, watches: map[string]map[*deltaWatch]struct{}{},
		sotw: map[string]map[*sotwWatch]struct{}{}, streams: newStreams(clk)}
}

// GetSnapshot returns the node's current snapshot.
func (c *Cache) GetSnapshot(node string) (cachev3.ResourceSnapshot, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s := c.snaps[node]; s != nil {
		return s, nil
	}
	return nil, fmt.Errorf("xds: no snapshot for node %s", node)
}

type deltaWatch struct {
	node string
	req  *cachev3.DeltaRequest
	sub  cachev3.Subscription
	ch   chan cachev3.DeltaResponse
	held *deltaHeld
}

// deltaHeld is what one delta stream holds of one type, as far as meshd
// knows. Kept with the stream (see streams.heldOf); guarded by mu.
type deltaHeld struct {
	mu sync.Mutex
	// set: the stream holds this set's version of every resource of it the
	// stream subscribes to, except the names in lacking (subscribed to
	// since, not sent yet). nil when not known: at the stream's start (the
	// client's initial versions, in the subscription, are compared) and
	// after a NACK.
	set     *versioned
	lacking map[string]struct{}
	// sent is the version last sent; rejected the one last NACKed, not sent
	// again.
	sent, rejected string
}

// observe takes a request into what the stream holds.
func (h *deltaHeld) observe(req *cachev3.DeltaRequest) {
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
	for _, name := range req.GetResourceNamesSubscribe() {
		if name != "*" {
			if h.lacking == nil {
				h.lacking = map[string]struct{}{}
			}
			h.lacking[name] = struct{}{}
		}
	}
	for _, name := range req.GetResourceNamesUnsubscribe() {
		delete(h.lacking, name) // the client forgets it: neither held nor lacking
	}
}

// SetSnapshot publishes a node's snapshot: the watches of the types whose
// version changed are answered.
func (c *Cache) SetSnapshot(_ context.Context, node string, snap cachev3.ResourceSnapshot) error {
	s, ok := snap.(*snapshot)
	if !ok {
		return fmt.Errorf("xds: snapshot of %s: only the Publisher's snapshots are served, not %T", node, snap)
	}
	if onSet := c.set(node, s); onSet != nil {
		onSet(node)
	}
	return nil
}

// set answers the node's watches from s, returning onSet.
func (c *Cache) set(node string, s *snapshot) func(string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.snaps[node] = s
	if ws := c.sotw[node]; len(ws) > 0 {
		for _, w := range slices.SortedFunc(maps.Keys(ws), func(a, b *sotwWatch) int {
			return typeOrder(a.req.GetTypeUrl()) - typeOrder(b.req.GetTypeUrl())
		}) {
			if c.answerSotwLocked(w, s) {
				delete(ws, w)
			}
		}
	}
	ws := c.watches[node]
	if len(ws) == 0 {
		return c.onSet
	}
	// In ADS order (clusters before endpoints, listeners before routes):
	// one stream reads its responses in the order they are queued.
	ordered := slices.SortedFunc(maps.Keys(ws), func(a, b *deltaWatch) int {
		return typeOrder(a.req.GetTypeUrl()) - typeOrder(b.req.GetTypeUrl())
	})
	for _, w := range ordered {
		if c.answerLocked(w, s) {
			delete(ws, w)
		}
	}
	return c.onSet
}

// ClearSnapshot forgets a node's snapshot; its open watches wait for a new one.
func (c *Cache) ClearSnapshot(node string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.snaps, node)
}

func typeOrder(typeURL string) int {
	if i := slices.Index(snapshotTypes, typeURL); i >= 0 {
		return i
	}
	return len(snapshotTypes)
}

// CreateDeltaWatch answers at once when the stream lacks something of its
// node's current snapshot, or waits for a snapshot that changes the type.
func (c *Cache) CreateDeltaWatch(req *cachev3.DeltaRequest, sub cachev3.Subscription, ch chan cachev3.DeltaResponse) (func(), error) {
	w := &deltaWatch{node: req.GetNode().GetId(), req: req, sub: sub, ch: ch, held: heldOf[deltaHeld](c, req, req.GetTypeUrl())}
	w.held.observe(req)
	c.mu.Lock()
	defer c.mu.Unlock()
	if s := c.snaps[w.node]; s != nil && c.answerLocked(w, s) {
		return func() {}, nil
	}
	return wait(c, c.watches, w.node, w), nil
}

// heldOf is what the stream of req holds of a type (see streams.heldOf), or
// a fresh record for a request of no stream the callbacks saw (nothing
// known).
func heldOf[H sotwHeld | deltaHeld](c *Cache, req any, typeURL string) *H {
	if c.streams != nil {
		if h, ok := c.streams.heldOf(req, typeURL).(*H); ok {
			return h
		}
	}
	return new(H)
}

// wait registers a watch of node that waits for a snapshot (under c.mu)
// and returns its cancel function.
func wait[W comparable](c *Cache, watches map[string]map[W]struct{}, node string, w W) func() {
	ws := watches[node]
	if ws == nil {
		ws = map[W]struct{}{}
		watches[node] = ws
	}
	ws[w] = struct{}{}
	return func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if ws := watches[node]; ws != nil {
			delete(ws, w)
			if len(ws) == 0 {
				delete(watches, node)
			}
		}
	}
}

// answerLocked sends the watch what its stream lacks of snapshot s, if
// anything, and reports whether it did (the watch is then done).
func (c *Cache) answerLocked(w *deltaWatch, s *snapshot) bool {
	typeURL := w.req.GetTypeUrl()
	set, ok := s.sets[typeURL]
	if !ok {
		set = emptySet
	}
	h := w.held
	h.mu.Lock()
	defer h.mu.Unlock()
	// A wildcard stream's first request is answered even when it lacks
	// nothing, so that it knows the type is there.
	first := w.sub.IsWildcard() && w.req.GetResponseNonce() == ""
	if set.version == h.rejected && !first {
		return false
	}
	var names, removed []string
	switch {
	case h.set == nil:
		names, removed = compare(w.sub, set)
	case h.set.version == set.version:
		names = lackingIn(h, set)
	case h.set.version == set.from && set.from != "":
		names, removed = difference(w.sub, h, set)
	default:
		names, removed = compareHeld(w.sub, h, set)
	}
	if len(names) == 0 && len(removed) == 0 && !first {
		if h.set == nil {
			h.set, h.lacking = &set, nil // nothing lacking: it holds set exactly
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
func lackingIn(h *deltaHeld, set versioned) []string {
	var names []string
	for name := range h.lacking {
		if _, ok := set.versionMap[name]; ok {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names
}

// difference is what a stream holding the set that set replaced lacks: the
// change, as its subscription selects it, and the names it subscribed to
// since.
func difference(sub cachev3.Subscription, h *deltaHeld, set versioned) (names, removed []string) {
	for _, name := range set.changed {
		if _, late := h.lacking[name]; !late && sends(sub, name) {
			names = append(names, name)
		}
	}
	for _, name := range set.removed {
		if _, late := h.lacking[name]; !late && sends(sub, name) {
			removed = append(removed, name)
		}
	}
	names = append(names, lackingIn(h, set)...)
	slices.Sort(names)
	return names, removed
}

// compareHeld is what a stream holding h lacks of set, resource by
// resource (h.set is neither set nor the set it replaced).
func compareHeld(sub cachev3.Subscription, h *deltaHeld, set versioned) (names, removed []string) {
	held := func(name string) (string, bool) {
		if _, late := h.lacking[name]; late {
			return "", false
		}
		v, ok := h.set.versionMap[name]
		return v, ok
	}
	if sub.IsWildcard() {
		for name, v := range set.versionMap {
			if hv, ok := held(name); !ok || hv != v {
				names = append(names, name)
			}
		}
		for name := range h.set.versionMap {
			if _, ok := set.versionMap[name]; !ok {
				if _, had := held(name); had {
					removed = append(removed, name)
				}
			}
		}
	} else {
		for name := range sub.SubscribedResources() {
			v, ok := set.versionMap[name]
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

// compare is what a stream lacks by the per-resource versions in its
// subscription (the client's initial versions), as go-control-plane's delta
// cache computes it: for a wildcard subscription every resource of the set
// at another version than the stream holds, and every held one no longer
// in the set; otherwise the same among the subscribed names.
func compare(sub cachev3.Subscription, set versioned) (names, removed []string) {
	held := sub.ReturnedResources()
	if sub.IsWildcard() {
		for name, v := range set.versionMap {
			if held[name] != v {
				names = append(names, name)
			}
		}
		for name := range held {
			if _, ok := set.versionMap[name]; !ok {
				removed = append(removed, name)
			}
		}
	} else {
		for name := range sub.SubscribedResources() {
			v, ok := set.versionMap[name]
			_, had := held[name]
			switch {
			case ok && held[name] != v:
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
func sortPart(names []string, set versioned) {
	if len(names) != len(set.versionMap) {
		slices.Sort(names)
	}
}

// deltaResponse is built when the stream sends it (in the stream's
// goroutine), from the set's encodings where it has them; sending it is
// what records what the stream now holds.
type deltaResponse struct {
	req     *cachev3.DeltaRequest
	held    *deltaHeld
	set     versioned
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
		r.resp = &discoveryv3.DeltaDiscoveryResponse{RemovedResources: r.removed, TypeUrl: typeURL, SystemVersionInfo: r.set.version}
		if len(r.names) > 0 && len(r.names) == len(r.set.plain) {
			// The whole set (a proxy connecting): the shared encoding.
			var body []byte
			if body, r.resp.Resources, r.err = r.set.deltaBody(typeURL); r.err != nil {
				return
			}
			if body != nil {
				r.resp.ProtoReflect().SetUnknown(body)
			}
			return
		}
		out := make([]*discoveryv3.Resource, 0, len(r.names))
		for _, name := range r.names {
			b := r.set.raw[name]
			if b == nil {
				if b, r.err = cachev3.MarshalResource(r.set.plain[name]); r.err != nil {
					return
				}
			}
			out = append(out, &discoveryv3.Resource{Name: name, Version: r.set.versionMap[name], Resource: &anypb.Any{TypeUrl: typeURL, Value: b}})
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
	for name := range h.lacking {
		if _, ok := set.versionMap[name]; !ok || slices.Contains(r.names, name) {
			delete(h.lacking, name)
		}
	}
	h.set, h.sent = &set, set.version
}

func (r *deltaResponse) GetDeltaRequest() *discoveryv3.DeltaDiscoveryRequest { return r.req }
func (r *deltaResponse) GetSystemVersion() (string, error)                   { return r.set.version, nil }
func (r *deltaResponse) GetResponseVersion() string                          { return r.set.version }

// GetNextVersionMap is an empty map of the stream's own: what the stream
// holds is deltaHeld (go-control-plane edits this map on unsubscribes).
func (r *deltaResponse) GetNextVersionMap() map[string]string    { return map[string]string{} }
func (r *deltaResponse) GetReturnedResources() map[string]string { return map[string]string{} }
func (r *deltaResponse) GetContext() context.Context             { return context.Background() }

// setDifference fills in what set changed from old: the names added or
// at a new version, and the names gone.
func setDifference(old versioned, set *versioned) {
	set.from = old.version
	for name, v := range set.versionMap {
		if old.versionMap[name] != v {
			set.changed = append(set.changed, name)
		}
	}
	for name := range old.versionMap {
		if _, ok := set.versionMap[name]; !ok {
			set.removed = append(set.removed, name)
		}
	}
	slices.Sort(set.changed)
	slices.Sort(set.removed)
}
