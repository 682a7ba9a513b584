package resource

import (
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
)

// Snapshot is one node's configuration: a go-control-plane ResourceSnapshot
// (any go-control-plane cache can hold it) of one prepared set per type,
// which xds/cache answers streams from. Immutable once made.
//
// The maps go-control-plane's interface returns are made for each call
// from the sets (which keep no such maps: a set patched from another
// copies only what changed); xds/cache reads the sets.
type Snapshot struct {
	// sets holds the sets of the types every snapshot holds, by their place
	// in ADS order (Order; nil: none of the type), other any other type's.
	// Sets are never changed once made: a proxy's snapshots share the sets
	// that did not move, and every proxy's the shared sets it takes as they
	// were prepared.
	sets  [NumTypes]*Set
	other map[resourcev3.Type]Set
}

var _ cachev3.ResourceSnapshot = (*Snapshot)(nil)

// NewSnapshot makes a snapshot of one set per type.
func NewSnapshot(sets map[resourcev3.Type]Set) *Snapshot {
	s := &Snapshot{}
	for t, set := range sets {
		if i := Order(t); i < NumTypes {
			s.sets[i] = &set
			continue
		}
		if s.other == nil {
			s.other = map[resourcev3.Type]Set{}
		}
		s.other[t] = set
	}
	return s
}

// SnapshotOf makes a snapshot of the sets of the types every snapshot
// holds, by their place in ADS order (nil: none of the type). It refers to
// the sets, which must not change afterwards.
func SnapshotOf(sets [NumTypes]*Set) *Snapshot { return &Snapshot{sets: sets} }

// SetOf returns the snapshot's set of a type.
func (s *Snapshot) SetOf(typeURL resourcev3.Type) (Set, bool) {
	if i := Order(typeURL); i < NumTypes {
		return s.SetAt(i)
	}
	v, ok := s.other[typeURL]
	return v, ok
}

// SetAt returns the snapshot's set of the type at place i in ADS order
// (Order).
func (s *Snapshot) SetAt(i int) (Set, bool) {
	if p := s.RefAt(i); p != nil {
		return *p, true
	}
	return Set{}, false
}

// RefAt is the snapshot's own set of the type at place i in ADS order (nil:
// none), for a snapshot to share (see SnapshotOf).
func (s *Snapshot) RefAt(i int) *Set {
	if i < 0 || i >= NumTypes {
		return nil
	}
	return s.sets[i]
}

// GetVersion returns the version of the type's set ("" without one).
func (s *Snapshot) GetVersion(typeURL string) string {
	if v, ok := s.SetOf(typeURL); ok {
		return v.Version()
	}
	return ""
}

// GetResources returns the type's resources by name (a new map).
func (s *Snapshot) GetResources(typeURL resourcev3.Type) map[string]types.Resource {
	return collect(s, typeURL, func(e *entry) types.Resource { return e.res })
}

// GetResourcesAndTTL returns the type's resources by name, without TTLs (a
// new map).
func (s *Snapshot) GetResourcesAndTTL(typeURL resourcev3.Type) map[string]types.ResourceWithTTL {
	return collect(s, typeURL, func(e *entry) types.ResourceWithTTL { return types.ResourceWithTTL{Resource: e.res} })
}

// collect maps each resource of the type's set by name (nil without one).
func collect[V any](s *Snapshot, typeURL resourcev3.Type, f func(*entry) V) map[string]V {
	v, ok := s.SetOf(typeURL)
	if !ok {
		return nil
	}
	out := make(map[string]V, v.Len())
	for name, e := range v.idx.all() {
		out[name] = f(e)
	}
	return out
}

// ConstructVersionMap does nothing: every set has its versions.
func (s *Snapshot) ConstructVersionMap() error { return nil }

// GetVersionMap returns the type's resources' versions by name (a new map).
func (s *Snapshot) GetVersionMap(typeURL string) map[string]string {
	v, ok := s.SetOf(typeURL)
	if !ok {
		return nil
	}
	return v.VersionMap()
}
