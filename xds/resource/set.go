// Package resource prepares xDS resources for serving. It turns one type's
// resources into a Set (a content-hash version, the resources by name with
// the per-resource versions delta xDS compares, the names the set
// references, the resources' deterministic encodings, and what changed
// since the set it replaced), merges a proxy's own resources into the set
// it shares, encodes sets for responses once per set, and wraps a node's
// sets as a go-control-plane snapshot (Snapshot).
//
// Where it sits: under xds/publish, which prepares sets and snapshots from
// the translator's resources, and xds/cache, which answers streams from
// them. It owns what a set is; neither of them reaches into one. A Set is
// immutable once built: it is read through its methods from any goroutine,
// and what they return (maps, slices) is the set's own, not to be
// modified. It must not import xds or its other sub-packages, and does no
// I/O.
package resource

import (
	"crypto/sha256"
	"encoding/hex"
	"iter"
	"maps"
	"slices"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/meshd/meshd/internal/vec"
)

// Resources are xDS resources by type URL.
type Resources map[resourcev3.Type][]types.Resource

// Lists are xDS resources by type URL, each type's as a vec.Vec: the form
// the translator hands shared resources on in, patching its last lists
// where a change touched them (see Set.replaced).
type Lists = map[resourcev3.Type]vec.Vec[types.Resource]

// ListsOf is res as Lists, sharing res's slices (not to be edited after).
func ListsOf(res Resources) Lists {
	out := make(Lists, len(res))
	for t, items := range res {
		out[t] = vec.Of(items)
	}
	return out
}

// Set is one type's resources, prepared once when the set is built and
// then shared by every proxy that gets it unchanged: the content-hash
// version, the resources by name with the per-resource versions delta xDS
// compares, and the names the set references (routes, endpoint sets).
// Nothing in it is mutated after it is built (Since returns a new value);
// copies share the encodings, made once per set.
type Set struct {
	version string
	// blocks are the hashes the version is made of (see hashBlocks).
	blocks []blockHash
	items  vec.Vec[types.Resource]
	// idx is the resources by name, with their versions and (shared sets)
	// their deterministic encodings, which delta responses to every stream
	// reuse.
	idx  index
	refs map[resourcev3.Type]map[string]bool
	// keepsRaw: the entries hold their encodings (a shared set).
	keepsRaw bool
	// from, changed, removed: the set this one replaced (shared sets only;
	// from is "" when there was none), and the names added or changed and
	// the names gone since. A stream holding exactly that set needs only
	// these (see xds/cache).
	from             string
	changed, removed []string
	// enc: the resources as Any values, made when a SotW response first
	// needs them; reuse: the shared set a proxy's merged set extends (its
	// items are then its own resources alone), disjoint: none of them
	// replaces a shared one.
	enc      *encodings
	reuse    *Set
	disjoint bool
}

// newSet prepares a set of items (sorted by name), whose entries idx holds.
func newSet(items vec.Vec[types.Resource], idx index) Set {
	v := Set{items: items, idx: idx, enc: &encodings{}, blocks: hashBlocks(items, idx)}
	v.version = versionOf(v.blocks)
	return v
}

// Version is the set's content-hash version.
func (v Set) Version() string { return v.version }

// Len is the number of resources in the set (by name).
func (v Set) Len() int { return v.idx.len() }

// Has reports whether the set has a resource of that name.
func (v Set) Has(name string) bool { return v.Index().Has(name) }

// VersionOf is the version of the named resource, ok false when the set
// has none of that name.
func (v Set) VersionOf(name string) (version string, ok bool) { return v.Index().VersionOf(name) }

// Index is the set's resources by name, for loops that look up many names
// (a Set is a large value; an Index is a few words).
func (v Set) Index() Index { return Index{base: v.idx.baseVer, over: v.idx.overVer} }

// Index looks up a set's resources by name.
type Index struct{ base, over map[string]string }

// Has reports whether the set has a resource of that name.
func (ix Index) Has(name string) bool {
	_, ok := ix.VersionOf(name)
	return ok
}

// VersionOf is the version of the named resource, ok false when the set
// has none of that name.
func (ix Index) VersionOf(name string) (version string, ok bool) {
	if ix.over != nil {
		if v, ok := ix.over[name]; ok {
			return v, true
		}
	}
	v, ok := ix.base[name]
	return v, ok
}

// Versions yields each resource's name and version (in no order).
func (v Set) Versions() iter.Seq2[string, string] { return v.idx.versions() }

// VersionMap is each resource's version, by name: a new map (go-control-
// plane's interfaces want one; meshd reads VersionOf and Versions).
func (v Set) VersionMap() map[string]string {
	out := make(map[string]string, v.Len())
	for name, ver := range v.Versions() {
		out[name] = ver
	}
	return out
}

// Refs are the names of other types' resources the set's resources
// reference (listeners: routes; clusters: endpoint sets), by type. It is
// the set's own: callers must not modify it.
func (v Set) Refs() map[resourcev3.Type]map[string]bool { return v.refs }

// From is the version of the set this one replaced ("" when none was
// recorded: see Since).
func (v Set) From() string { return v.from }

// Changed are the names added or at a new version since From, sorted. The
// set's own: callers must not modify it.
func (v Set) Changed() []string { return v.changed }

// Removed are the names gone since From, sorted. The set's own: callers
// must not modify it.
func (v Set) Removed() []string { return v.removed }

// SameNames reports whether the set has exactly old's names: it is old, or
// was made from old (Since, replaced) with nothing added or removed.
func (v Set) SameNames(old Set) bool { return v.SameNamesAs(old.version, old.Len()) }

// SameNamesAs is SameNames for the set of version old and n resources.
func (v Set) SameNamesAs(old string, n int) bool {
	if v.version == old {
		return true
	}
	return v.from == old && len(v.removed) == 0 && v.Len() == n
}

// Since returns the set recording what changed from old, the set it
// replaces (of the same type): the names added or at a new version, and
// the names gone. A stream holding exactly old needs only these.
func (v Set) Since(old Set) Set {
	if v.from != "" && v.from == old.version {
		return v // made from old (replaced): it knows already
	}
	v.from, v.changed, v.removed = old.version, nil, nil
	for name, e := range v.idx.all() {
		if o, ok := old.idx.get(name); !ok || o.version != e.version {
			v.changed = append(v.changed, name)
		}
	}
	for name := range old.idx.all() {
		if !v.Has(name) {
			v.removed = append(v.removed, name)
		}
	}
	slices.Sort(v.changed)
	slices.Sort(v.removed)
	return v
}

// replaced returns v with items as its resources, when they are v's
// resources but for some replaced by others of the same names, in v's
// order (ok false otherwise: the set is to be built whole). Only the
// replaced resources are encoded (or found in c), their entries go on top
// of v's index (see index), and the version hashes again the blocks that
// hold an entry at a new version, then the blocks' hashes: an endpoint
// change costs the endpoint sets it touched, a comparison per chunk of
// items (a chunk of v's is v's entries: see vec) and a hash of 32 bytes
// per chunk, not a copy, a comparison or a hash of every entry. The list
// items is kept, not copied. v's own list handed on again (a type nothing
// changed in) is v, at once. The result records what changed since v.
//
// Sets whose references are worked out from every resource (listeners,
// clusters) are replaced only when nothing changed.
func (v Set) replaced(t resourcev3.Type, items vec.Vec[types.Resource], c *encodingCache) (Set, bool, error) {
	if items.Len() != v.items.Len() || !v.keepsRaw {
		return Set{}, false, nil
	}
	next := v
	next.from, next.changed, next.removed = v.version, nil, nil
	if items.Same(v.items) && !c.recordsAnew() {
		return next, true, nil
	}
	var diff []int
	for b := range items.Chunks() {
		if items.SameChunk(v.items, b) {
			continue
		}
		was := v.items.Chunk(b)
		for j, r := range items.Chunk(b) {
			if r != was[j] {
				if cachev3.GetResourceName(r) != cachev3.GetResourceName(was[j]) || len(diff) > items.Len()/4 {
					return Set{}, false, nil
				}
				diff = append(diff, b*vec.ChunkLen+j)
			}
		}
	}
	if len(diff) > 0 && (t == resourcev3.ListenerType || t == resourcev3.ClusterType) {
		return Set{}, false, nil
	}
	if c.recordsAnew() {
		// A round recording anew records what it keeps (v has the
		// encodings; a lookup that misses, v being made between rounds,
		// encodes again).
		for i, r := range items.All() {
			if _, replaced := slices.BinarySearch(diff, i); replaced {
				continue
			}
			if _, err := c.encoding(t, r); err != nil {
				return Set{}, false, err
			}
		}
	}
	if len(diff) == 0 {
		// The same resources: items in place of v's own list (the
		// translator patches items next time, and the chunks it does not
		// touch are then the set's).
		next.items = items
		return next, true, nil
	}
	next.items, next.enc = items, &encodings{}
	changes := make(map[string]*entry, len(diff))
	var touched []int // the blocks holding a replaced entry of a new version, in order
	for _, i := range diff {
		r := items.At(i)
		e, err := c.encoding(t, r) // recorded: the next round finds it too
		if err != nil {
			return Set{}, false, err
		}
		if c.adding {
			c.forget(v.items.At(i)) // replaced here (a set still holding it keeps its encoding; a later round meeting it encodes it again)
		}
		name := cachev3.GetResourceName(r)
		if old, ok := v.idx.get(name); !ok || old.version != e.version {
			next.changed = append(next.changed, name)
			touched = append(touched, i/versionBlock)
		}
		changes[name] = &entry{version: e.version, raw: e.raw, res: r}
	}
	next.idx = v.idx.replacing(changes)
	if len(touched) > 0 {
		next.blocks = slices.Clone(v.blocks)
		var buf []byte
		for _, b := range slices.Compact(touched) {
			next.blocks[b], buf = hashBlock(next.items.Chunk(b), next.idx, buf)
		}
		next.version = versionOf(next.blocks)
	}
	return next, true, nil
}

// allTypes are the types every snapshot holds, in ADS order (clusters
// before endpoints, listeners before routes).
var allTypes = [...]resourcev3.Type{resourcev3.ClusterType, resourcev3.EndpointType, resourcev3.ListenerType, resourcev3.RouteType, resourcev3.SecretType}

// NumTypes is the number of types every snapshot holds.
const NumTypes = len(allTypes)

// Types are the types every snapshot holds, in ADS order (an array: the
// caller's copy, made without allocating).
func Types() [NumTypes]resourcev3.Type { return allTypes }

// Order is a type's place in ADS order; types not served come last.
func Order(typeURL string) int {
	if i := slices.Index(allTypes[:], typeURL); i >= 0 {
		return i
	}
	return len(allTypes)
}

// ShortType is a type URL's last part (Cluster, ClusterLoadAssignment...).
func ShortType(url string) string {
	for i := len(url) - 1; i >= 0; i-- {
		if url[i] == '.' {
			return url[i+1:]
		}
	}
	return url
}

// emptySet is the prepared form of a type with no resources.
var emptySet = Set{version: "empty", idx: flatIndex(map[string]*entry{}), enc: &encodings{}}

// Empty is the prepared form of a type with no resources. It still has a
// version: a SotW client asking with version "" must be answered, or it
// waits for ever.
func Empty() Set { return emptySet }

// Merge is a proxy's set of a type: the shared set with the proxy's own
// resources (an own resource replaces a shared one of the same name). A
// type the proxy has nothing of its own in is the shared set as prepared.
func Merge(shared, own Set) Set {
	return merge(shared, own)
}

// MergeRef is Merge for a snapshot to refer to (SnapshotOf): shared itself
// when own holds nothing, which every proxy's snapshot then shares, or a
// new set.
func MergeRef(shared *Set, own Set) *Set {
	if own.items.Len() == 0 && shared.items.Len() > 0 {
		return shared
	}
	v := merge(*shared, own)
	return &v
}

func merge(shared, own Set) Set {
	switch {
	case own.items.Len() == 0 && shared.items.Len() == 0:
		return emptySet
	case own.items.Len() == 0:
		return shared
	case shared.items.Len() == 0:
		return own
	}
	h := sha256.Sum256([]byte(shared.version + "+" + own.version))
	v := Set{version: hex.EncodeToString(h[:8]), items: own.items, enc: &encodings{}, reuse: &shared}
	// The own entries over the shared ones, on the shared set's base: the
	// shared set's index is not copied (a proxy's local clusters beside
	// 10,000 shared ones), only its top layer if it has one.
	over := make(map[string]*entry, len(shared.idx.over)+own.Len())
	maps.Copy(over, shared.idx.over)
	for name, e := range own.idx.all() {
		over[name] = e
	}
	v.idx = layered(shared.idx, over)
	v.disjoint = v.Len() == shared.Len()+own.Len()
	return v
}
