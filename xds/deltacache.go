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
)

// meshCache is the cache the ADS server answers from: it keeps each node's
// snapshot and answers delta watches (here) and SotW watches (sotwcache.go)
// from the sets the Publisher prepared. go-control-plane's snapshot cache is
// embedded only for the rest of its interface; it holds no snapshot.
//
// Why: on every snapshot of a node, go-control-plane's cache recomputes, for
// each delta watch of that node (each type, changed or not), the full
// per-resource version map of the type: with 1,000 proxies holding 1,000
// clusters and endpoint sets, an endpoint change costs millions of map
// operations and hundreds of megabytes of garbage. Here a watch is only
// looked at when its type's version changed, and a stream that holds
// exactly the set a change replaced gets the change's difference, computed
// once for every proxy sharing that set (Publisher.SetAll). The resources
// sent are the encodings computed once per change (versioned.raw), not
// marshalled again per stream.
type meshCache struct {
	cachev3.SnapshotCache
	log *slog.Logger

	mu      sync.Mutex
	snaps   map[string]*snapshot
	watches map[string]map[*deltaWatch]struct{} // by node ID
	sotw    map[string]map[*sotwWatch]struct{}  // by node ID
	// streams, if set, keeps what each SotW stream holds (sotwHeld).
	streams *streams
	// onSet, if set, is told each node whose snapshot was set (outside mu).
	onSet func(node string)
}

// notify sets the function told each node whose snapshot was set.
func (c *meshCache) notify(f func(node string)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.onSet = f
}

func newMeshCache(log *slog.Logger, streams *streams) *meshCache {
	return &meshCache{SnapshotCache: cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil), log: log,
		snaps: map[string]*snapshot{}, watches: map[string]map[*deltaWatch]struct{}{},
		sotw: map[string]map[*sotwWatch]struct{}{}, streams: streams}
}

// GetSnapshot returns the node's current snapshot.
func (c *meshCache) GetSnapshot(node string) (cachev3.ResourceSnapshot, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s := c.snaps[node]; s != nil {
		return s, nil
	}
	return nil, fmt.Errorf("xds: no snapshot for node %s", node)
}

// heldKey is an entry meshd adds to the versions a delta stream holds
// (the map go-control-plane keeps per stream and type, given back with each
// watch): the version of the set the stream holds exactly. It is not a
// resource name (no resource is named with a NUL) and is never sent.
const heldKey = "\x00meshd/set"

type deltaWatch struct {
	node string
	req  *cachev3.DeltaRequest
	sub  cachev3.Subscription
	ch   chan cachev3.DeltaResponse
	// held is the version of the set the stream holds exactly, "" when not
	// known (then the next answer compares every resource).
	held string
}

// SetSnapshot publishes a node's snapshot: the watches of the types whose
// version changed are answered.
func (c *meshCache) SetSnapshot(_ context.Context, node string, snap cachev3.ResourceSnapshot) error {
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
func (c *meshCache) set(node string, s *snapshot) func(string) {
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
func (c *meshCache) ClearSnapshot(node string) {
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
func (c *meshCache) CreateDeltaWatch(req *cachev3.DeltaRequest, sub cachev3.Subscription, ch chan cachev3.DeltaResponse) (func(), error) {
	w := &deltaWatch{node: req.GetNode().GetId(), req: req, sub: sub, ch: ch}
	// What the stream was last sent is what it holds, unless this request
	// changed its subscriptions (go-control-plane then edits the versions)
	// or starts the stream (its versions are the client's word).
	if req.GetResponseNonce() != "" && len(req.GetResourceNamesSubscribe()) == 0 && len(req.GetResourceNamesUnsubscribe()) == 0 {
		w.held = sub.ReturnedResources()[heldKey]
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if s := c.snaps[w.node]; s != nil && c.answerLocked(w, s) {
		return func() {}, nil
	}
	ws := c.watches[w.node]
	if ws == nil {
		ws = map[*deltaWatch]struct{}{}
		c.watches[w.node] = ws
	}
	ws[w] = struct{}{}
	return func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if ws := c.watches[w.node]; ws != nil {
			delete(ws, w)
			if len(ws) == 0 {
				delete(c.watches, w.node)
			}
		}
	}, nil
}

// answerLocked sends the watch what its stream lacks of snapshot s, if
// anything, and reports whether it did (the watch is then done).
func (c *meshCache) answerLocked(w *deltaWatch, s *snapshot) bool {
	typeURL := w.req.GetTypeUrl()
	set, ok := s.sets[typeURL]
	if !ok {
		set = emptySet
	}
	first := w.sub.IsWildcard() && w.req.GetResponseNonce() == ""
	if w.held == set.version && !first {
		return false
	}
	var names, removed []string
	var next map[string]string
	if w.held != "" && w.held == set.from {
		names, removed, next = difference(w.sub, set)
	} else {
		names, removed, next = compare(w.sub, set)
	}
	w.held = set.version
	if len(names) == 0 && len(removed) == 0 && !first {
		return false
	}
	resp := &deltaResponse{req: w.req, set: set, names: names, removed: removed, next: next}
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

// difference is what a stream holding exactly the set set replaced lacks:
// the set's changes, as its subscription selects them.
func difference(sub cachev3.Subscription, set versioned) (names, removed []string, next map[string]string) {
	next = maps.Clone(sub.ReturnedResources())
	for _, name := range set.changed {
		if sends(sub, name) {
			names = append(names, name)
			next[name] = set.versionMap[name]
		}
	}
	for _, name := range set.removed {
		if _, ok := next[name]; ok && sends(sub, name) {
			removed = append(removed, name)
			delete(next, name)
		}
	}
	next[heldKey] = set.version
	return names, removed, next
}

// compare is what a stream lacks, resource by resource, as go-control-plane's
// delta cache computes it: for a wildcard subscription every resource of the
// set at another version than the stream holds, and every held one no
// longer in the set; otherwise the same among the subscribed names.
func compare(sub cachev3.Subscription, set versioned) (names, removed []string, next map[string]string) {
	held := sub.ReturnedResources()
	if sub.IsWildcard() {
		next = make(map[string]string, len(set.versionMap)+1)
		for name, v := range set.versionMap {
			next[name] = v
			if held[name] != v {
				names = append(names, name)
			}
		}
		for name := range held {
			if _, ok := set.versionMap[name]; !ok && name != heldKey {
				removed = append(removed, name)
			}
		}
	} else {
		next = make(map[string]string, len(sub.SubscribedResources())+1)
		for name := range sub.SubscribedResources() {
			v, ok := set.versionMap[name]
			_, had := held[name]
			switch {
			case ok:
				next[name] = v
				if held[name] != v {
					names = append(names, name)
				}
			case had:
				removed = append(removed, name)
			}
		}
	}
	slices.Sort(names) // a stable order, as the versions are
	next[heldKey] = set.version
	return names, removed, next
}

// deltaResponse is built when the stream sends it (in the stream's
// goroutine), from the set's encodings where it has them.
type deltaResponse struct {
	req     *cachev3.DeltaRequest
	set     versioned
	names   []string
	removed []string
	next    map[string]string

	once sync.Once
	resp *discoveryv3.DeltaDiscoveryResponse
	err  error
}

func (r *deltaResponse) GetDeltaDiscoveryResponse() (*discoveryv3.DeltaDiscoveryResponse, error) {
	r.once.Do(func() {
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

func (r *deltaResponse) GetDeltaRequest() *discoveryv3.DeltaDiscoveryRequest { return r.req }
func (r *deltaResponse) GetSystemVersion() (string, error)                   { return r.set.version, nil }
func (r *deltaResponse) GetResponseVersion() string                          { return r.set.version }
func (r *deltaResponse) GetNextVersionMap() map[string]string                { return r.next }
func (r *deltaResponse) GetReturnedResources() map[string]string             { return r.next }
func (r *deltaResponse) GetContext() context.Context                         { return context.Background() }

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
