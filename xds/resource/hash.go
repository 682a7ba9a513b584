package resource

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"

	"github.com/meshd/meshd/internal/vec"
)

// Own prepares a proxy's own resources (inbound listeners, secrets), type
// by type: each type's content-hash version is the hash of its resources'
// names and the hashes of their deterministic encodings, in name order.
// Two replicas with the same input agree, and a reconnect sends nothing
// new. The encodings are not kept (they are the proxy's alone); res's
// lists are, when sorted (the caller does not edit them after).
func Own(res Resources) (map[resourcev3.Type]Set, error) {
	return hashWith(ListsOf(res), false, nil, nil)
}

// OwnEncoder prepares the own resources of many proxies as Own does,
// encoding a resource value once however many proxies hold it (the
// clusters and endpoint sets of per-client services, the same values for
// every proxy of a node or zone) and reusing the last round's versions
// of the values a proxy holds again (its inbound listener, when only its
// per-client services moved). It remembers versions, not encodings (own
// sets keep none), of the last round's values only. The zero OwnEncoder
// is ready; it is not safe for concurrent use.
type OwnEncoder struct {
	last map[types.Resource]encoded
}

// OwnRound is one publish's own resources.
type OwnRound struct {
	e *OwnEncoder
	c encodingCache
}

// Begin starts a round.
func (e *OwnEncoder) Begin() *OwnRound {
	return &OwnRound{e: e, c: encodingCache{prev: e.last, next: map[types.Resource]encoded{}, versionsOnly: true}}
}

// Own is Own in the round.
func (r *OwnRound) Own(res Resources) (map[resourcev3.Type]Set, error) {
	return hashWith(ListsOf(res), false, &r.c, nil)
}

// End makes the round's versions the ones the next round reuses.
func (r *OwnRound) End() { r.e.last = r.c.next }

// Encoder prepares the sets many proxies share (the mesh's, an egress
// scope's), versioned as Own's and keeping each resource's encoding, which
// delta responses to every stream reuse. It remembers the encodings of
// resource values by value: the translator gives back the same values for
// what did not change, so a change encodes only what it touched. The zero
// Encoder is ready; it is not safe for concurrent use.
//
// Most rounds add to what it remembers (a set found unchanged, or patched,
// costs nothing per resource it kept) and forget the values a patched set
// replaced; when it remembers twice what the last round that recorded
// anew did (sets built whole leave their old values behind), a round
// records anew only what its sets hold, so that values no set holds any
// more are forgotten. An endpoint change thus costs the Encoder the
// endpoint sets it touched, whatever the mesh's size.
type Encoder struct {
	last map[types.Resource]encoded
	// full is what the last round that recorded anew recorded.
	full int
}

// Round is one round of shared sets (one model change: the mesh's and
// every scope's). It reuses the encodings of the Encoder's last round and
// records its own; End makes them the Encoder's last.
type Round struct {
	e *Encoder
	c encodingCache
}

// Begin starts a round.
func (e *Encoder) Begin() *Round {
	if e.last == nil || len(e.last) > 2*e.full+1024 {
		return &Round{e: e, c: encodingCache{prev: e.last, next: make(map[types.Resource]encoded, len(e.last))}}
	}
	return &Round{e: e, c: encodingCache{next: e.last, adding: true}}
}

// Shared prepares shared sets in the round. prev (nil: none) are the sets
// they replace: a type whose resources are the same values is prev's set,
// and one whose resources were replaced by others of the same names is
// prev's with those replaced (what an endpoint change makes), without
// going over the whole set again. The sets keep res's lists.
func (r *Round) Shared(res Lists, prev map[resourcev3.Type]Set) (map[resourcev3.Type]Set, error) {
	return hashWith(res, true, &r.c, prev)
}

// Unchanged reports whether res are the very lists prev's sets were
// prepared from (the same Vecs: the translator hands on a scope's lists
// again when nothing in it moved), so prev stands as it is, and nothing is
// to be recorded (a round that records anew goes over every set it keeps).
func (r *Round) Unchanged(res Lists, prev map[resourcev3.Type]Set) bool {
	if r.c.recordsAnew() || len(prev) == 0 || len(res) != len(prev) {
		return false
	}
	for t, items := range res {
		p, ok := prev[t]
		if !ok || !p.keepsRaw || !p.items.Same(items) {
			return false
		}
	}
	return true
}

// End makes the round's encodings the ones the next round reuses (in a
// round that recorded anew, those of the rounds before not used again are
// forgotten).
func (r *Round) End() {
	if !r.c.adding {
		r.e.last, r.e.full = r.c.next, len(r.c.next)
	}
}

// Shared prepares shared sets between rounds (a scope that appears with a
// proxy), reusing the last round's encodings and recording nothing; res's
// lists are kept as Round.Shared keeps them.
func (e *Encoder) Shared(res Lists, prev map[resourcev3.Type]Set) (map[resourcev3.Type]Set, error) {
	return hashWith(res, true, &encodingCache{prev: e.last}, prev)
}

// encoded is a resource's deterministic encoding and its version.
type encoded struct {
	raw     []byte
	version string
	// refs are a listener's references (parsing them reads every filter
	// chain's HTTP connection manager: kept with the encoding).
	refs map[resourcev3.Type]map[string]bool
}

// encodingCache keeps the encodings of shared resources by resource
// value. prev is read, next filled (what the next round may reuse; nil:
// nothing is recorded).
type encodingCache struct {
	prev, next map[types.Resource]encoded
	// adding: next is the Encoder's map, added to (what it holds is
	// there from the rounds before).
	adding bool
	// versionsOnly: next records versions (and references), not
	// encodings.
	versionsOnly bool
}

// hashWith prepares each type's set, keeping the encodings if keepRaw, and
// reusing and recording encodings in c (if not nil), and the sets of prev
// (shared sets only) where their resources are the same values.
func hashWith(res Lists, keepRaw bool, c *encodingCache, prev map[resourcev3.Type]Set) (map[resourcev3.Type]Set, error) {
	out := make(map[resourcev3.Type]Set, len(res))
	for t, items := range res {
		// Items that are prev's or in its places need no sorting (the
		// translator's lists are sorted); others are tried sorted.
		v, ok, err := fromPrev(prev, t, items, keepRaw, c)
		if err != nil {
			return nil, err
		}
		if ok {
			out[t] = v
			continue
		}
		// Sorted lists (the translator's) are kept as they came, so that
		// the next round's, patched from them, share their chunks.
		list := items
		if !sortedByName(items) {
			sorted := items.Slice()
			slices.SortFunc(sorted, func(a, b types.Resource) int {
				return compareStrings(cachev3.GetResourceName(a), cachev3.GetResourceName(b))
			})
			list = vec.Of(sorted)
			if v, ok, err = fromPrev(prev, t, list, keepRaw, c); err != nil {
				return nil, err
			}
			if ok {
				out[t] = v
				continue
			}
		}
		entries := make(map[string]*entry, list.Len())
		var refs map[resourcev3.Type]map[string]bool
		if t == resourcev3.ListenerType {
			refs = map[resourcev3.Type]map[string]bool{}
		}
		for r := range list.Values() {
			e, err := c.encoding(t, r)
			if err != nil {
				return nil, err
			}
			mergeRefs(refs, e.refs)
			ent := &entry{version: e.version, res: r}
			if keepRaw {
				ent.raw = e.raw
			}
			name := cachev3.GetResourceName(r)
			if _, dup := entries[name]; dup {
				// A client would keep one of them; which one, and what the
				// version says, would be chance.
				return nil, fmt.Errorf("xds: two %s resources named %q", ShortType(t), name)
			}
			entries[name] = ent
		}
		v = newSet(list, flatIndex(entries))
		v.keepsRaw = keepRaw
		v.refs = refs
		if t == resourcev3.ClusterType {
			named := make(map[string]types.ResourceWithTTL, list.Len())
			for r := range list.Values() {
				named[cachev3.GetResourceName(r)] = types.ResourceWithTTL{Resource: r}
			}
			v.refs = cachev3.GetResourceReferences(named)
		}
		out[t] = v
	}
	return out, nil
}

// sortedByName reports whether items are sorted by name.
func sortedByName(items vec.Vec[types.Resource]) bool {
	last := ""
	for i, r := range items.All() {
		name := cachev3.GetResourceName(r)
		if i > 0 && compareStrings(last, name) > 0 {
			return false
		}
		last = name
	}
	return true
}

// fromPrev is prev's set of type t with items as its resources (see
// Set.replaced); ok is false without one.
func fromPrev(prev map[resourcev3.Type]Set, t resourcev3.Type, items vec.Vec[types.Resource], keepRaw bool, c *encodingCache) (Set, bool, error) {
	p, ok := prev[t]
	if !ok || !keepRaw {
		return Set{}, false, nil
	}
	return p.replaced(t, items, c)
}

// mergeRefs adds from's references to into.
func mergeRefs(into, from map[resourcev3.Type]map[string]bool) {
	for t, names := range from {
		if into[t] == nil {
			into[t] = make(map[string]bool, len(names))
		}
		for n := range names {
			into[t][n] = true
		}
	}
}

// encoding returns r's encoding: the one kept, or made now (and recorded).
func (c *encodingCache) encoding(t resourcev3.Type, r types.Resource) (encoded, error) {
	e, ok := c.lookup(r)
	if !ok {
		b, err := proto.MarshalOptions{Deterministic: true}.Marshal(r)
		if err != nil {
			return encoded{}, fmt.Errorf("xds: marshal %s %s: %w", t, cachev3.GetResourceName(r), err)
		}
		rh := sha256.Sum256(b)
		e = encoded{raw: b, version: hex.EncodeToString(rh[:8])}
		if t == resourcev3.ListenerType {
			e.refs = cachev3.GetResourceReferences(map[string]types.ResourceWithTTL{cachev3.GetResourceName(r): {Resource: r}})
		}
	}
	c.record(r, e)
	return e, nil
}

func (c *encodingCache) lookup(r types.Resource) (encoded, bool) {
	if c == nil {
		return encoded{}, false
	}
	if e, ok := c.next[r]; ok {
		return e, true
	}
	e, ok := c.prev[r]
	return e, ok
}

func (c *encodingCache) record(r types.Resource, e encoded) {
	if c != nil && c.next != nil {
		if c.versionsOnly {
			e.raw = nil
		}
		c.next[r] = e
	}
}

// recordsAnew reports whether c records every resource of the round (a
// fresh map, the last round's read beside it) rather than adding to what
// it holds or recording nothing.
func (c *encodingCache) recordsAnew() bool { return c != nil && c.next != nil && !c.adding }

// forget drops r's encoding from what the next round may reuse (a value
// held by a set of another round too is encoded again if it comes back).
func (c *encodingCache) forget(r types.Resource) {
	if c != nil && c.next != nil {
		delete(c.next, r)
	}
}

func compareStrings(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
