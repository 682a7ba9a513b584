package resource

import (
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
)

// Snapshot is one node's configuration: a go-control-plane snapshot (any
// go-control-plane cache can hold it) whose GetResources returns the
// prepared name index of each set instead of building one per call, and
// whose sets are what xds/cache answers streams from. Immutable once made.
type Snapshot struct {
	*cachev3.Snapshot
	sets map[resourcev3.Type]Set
}

// NewSnapshot makes a snapshot of one set per type. The snapshot keeps
// sets: the caller must not modify it afterwards.
func NewSnapshot(sets map[resourcev3.Type]Set) *Snapshot {
	s := &Snapshot{Snapshot: &cachev3.Snapshot{VersionMap: make(map[string]map[string]string, len(sets))}, sets: sets}
	for t, v := range sets {
		s.Resources[cachev3.GetResponseType(t)] = v.resources
		s.VersionMap[t] = v.versionMap
	}
	return s
}

// SetOf returns the snapshot's set of a type.
func (s *Snapshot) SetOf(typeURL resourcev3.Type) (Set, bool) {
	v, ok := s.sets[typeURL]
	return v, ok
}

// GetResources returns the set's resources by name (the set's own map:
// callers must not modify it).
func (s *Snapshot) GetResources(typeURL resourcev3.Type) map[string]types.Resource {
	if v, ok := s.sets[typeURL]; ok {
		return v.plain
	}
	return s.Snapshot.GetResources(typeURL)
}
