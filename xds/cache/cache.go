// Package cache is the cache the ADS server answers from: it keeps each
// node's snapshot (a *resource.Snapshot, set by xds/publish) and answers
// go-control-plane's delta watches (delta.go) and state-of-the-world
// watches (sotw.go) from the snapshot's prepared sets, keeping with each
// stream what it holds (streams.go).
//
// Why not go-control-plane's snapshot cache: on every snapshot of a node,
// it recomputes, for each delta watch of that node (each type, changed or
// not), the full per-resource version map of the type: with 1,000 proxies
// holding 1,000 clusters and endpoint sets, an endpoint change costs
// millions of map operations and hundreds of megabytes of garbage. Here a
// watch is only looked at when its type's version changed; what a stream
// holds is meshd's own record (deltaHeld, sotwHeld: the shared, immutable
// set it was sent plus the names it subscribed to since), not a per-stream
// copy of every name and version; a stream holding exactly the set a change
// replaced gets the change's difference, computed once for every proxy
// sharing that set (resource.Set.Since). The resources sent are the
// encodings computed once per change, not marshalled again per stream.
// What a stream subscribes to is kept here too (subscription.go): one
// immutable value per stream and type whose names are a set shared by
// every stream naming the same resources; go-control-plane's server is
// handed requests without names and keeps no map of them.
//
// Where it sits: between xds/publish, which sets snapshots (SetSnapshot,
// ClearSnapshot), and the gRPC server in package xds, which hands it
// go-control-plane's watches and tells it, through an explicit interface,
// which stream each request came on and when a stream closed
// (NoteRequest, NoteDeltaRequest, StreamClosed); the server hears of the
// streams found in sync without a response through OnInSync. It reads
// sets only through xds/resource's methods. It must not import xds or
// xds/publish.
package cache

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"sync"

	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"

	"github.com/meshd/meshd/xds/resource"
)

// Cache keeps each node's snapshot and answers delta and SotW watches from
// it. go-control-plane's snapshot cache is embedded only for the rest of
// its interface; it holds no snapshot. Safe for concurrent use.
type Cache struct {
	cachev3.SnapshotCache
	log *slog.Logger

	mu      sync.Mutex
	snaps   map[string]*resource.Snapshot
	watches map[string]map[*deltaWatch]struct{} // by node ID
	sotw    map[string]map[*sotwWatch]struct{}  // by node ID
	// inSync, if set, is told of streams found in sync without a response
	// (outside mu).
	inSync func([]InSync)

	// held is what each stream holds (its own lock; see streams.go).
	held heldStreams
}

// New returns an empty cache, to create before the server that answers
// from it, when what publishes into it must exist first.
func New(log *slog.Logger) *Cache {
	if log == nil {
		log = slog.Default()
	}
	return &Cache{SnapshotCache: cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil), log: log,
		snaps: map[string]*resource.Snapshot{}, watches: map[string]map[*deltaWatch]struct{}{},
		sotw: map[string]map[*sotwWatch]struct{}{}, held: newHeldStreams()}
}

// InSync is a delta stream found holding exactly the published version of
// a type it started with initial versions (a proxy reconnecting, e.g. after
// meshd restarted, possibly before meshd published again): nothing is sent
// (versions are content hashes), yet the type is in sync at Version.
type InSync struct {
	Stream  int64
	TypeURL string
	Version string
}

// OnInSync sets the function told of streams in sync without a response
// (nil: none), replacing the one set before. It is called outside the
// cache's lock, in the stream's goroutine or in the caller of SetSnapshot
// (the Publisher, under its lock): it must return quickly and must not
// publish.
func (c *Cache) OnInSync(f func([]InSync)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.inSync = f
}

// tell unlocks c.mu and passes synced on.
func (c *Cache) tell(synced []InSync) {
	f := c.inSync
	c.mu.Unlock()
	if f != nil && len(synced) > 0 {
		f(synced)
	}
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

// SetSnapshot publishes a node's snapshot: the watches of the types whose
// version changed are answered.
func (c *Cache) SetSnapshot(_ context.Context, node string, snap cachev3.ResourceSnapshot) error {
	s, ok := snap.(*resource.Snapshot)
	if !ok {
		return fmt.Errorf("xds: snapshot of %s: only the Publisher's snapshots are served, not %T", node, snap)
	}
	c.mu.Lock()
	c.tell(c.setLocked(node, s)) // unlocks c.mu
	return nil
}

// setLocked answers the node's watches from s, returning the streams found
// in sync.
func (c *Cache) setLocked(node string, s *resource.Snapshot) []InSync {
	c.snaps[node] = s
	if ws := c.sotw[node]; len(ws) > 0 {
		var buf [2 * resource.NumTypes]*sotwWatch
		for _, w := range inADSOrder(buf[:0], ws) {
			if c.answerSotwLocked(w, s) {
				delete(ws, w)
			}
		}
	}
	ws := c.watches[node]
	if len(ws) == 0 {
		return nil
	}
	// In ADS order (clusters before endpoints, listeners before routes):
	// one stream reads its responses in the order they are queued.
	var buf [2 * resource.NumTypes]*deltaWatch
	ordered := inADSOrder(buf[:0], ws)
	var synced []InSync
	for _, w := range ordered {
		if c.answerLocked(w, s, &synced) {
			delete(ws, w)
		}
	}
	return synced
}

// ordered is a watch with its type's place in ADS order (resource.Order).
type ordered interface {
	comparable
	order() int
}

func (w *sotwWatch) order() int  { return w.typeOrder }
func (w *deltaWatch) order() int { return w.typeOrder }

// inADSOrder appends a node's watches to buf in ADS order (a node has a
// watch or two per type: buf on the caller's stack holds them).
func inADSOrder[W ordered](buf []W, ws map[W]struct{}) []W {
	for w := range ws {
		buf = append(buf, w)
	}
	slices.SortFunc(buf, func(a, b W) int { return a.order() - b.order() })
	return buf
}

// ClearSnapshot forgets a node's snapshot; its open watches wait for a new one.
func (c *Cache) ClearSnapshot(node string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.snaps, node)
}

// setOf is snapshot s's set of a type, at place slot in ADS order (the
// empty set if it has none).
func setOf(s *resource.Snapshot, slot int, typeURL string) *resource.Set {
	if set := s.RefAt(slot); set != nil {
		return set
	}
	if slot >= resource.NumTypes {
		if set, ok := s.SetOf(typeURL); ok {
			return &set
		}
	}
	return &emptySet
}

// emptySet is what a stream holds of a type its snapshot has none of (sets
// are never changed: every such stream refers to this one).
var emptySet = resource.Empty()

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
