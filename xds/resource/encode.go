package resource

import (
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
)

// encodings are a set's resources as Any values, made once per set and
// shared by every response that carries them.
type encodings struct {
	once sync.Once
	// all, in the order of names: the set's resources (a merged set: its
	// own; see encodings), and byName the same by name.
	names  []string
	all    []*anypb.Any
	byName map[string]*anypb.Any
	err    error
	// made is set once all and byName are.
	made atomic.Bool

	// sorted is an unmerged set's names, sorted (see SortedNames).
	sortedOnce sync.Once
	sorted     []string

	// some are the Any values of the few resources a change touched, made
	// for the streams that need only those (see Encoded) while the whole
	// set's are not made.
	someMu sync.Mutex
	some   map[string]*anypb.Any

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

// SotwBody returns the set as SotW resources-field bytes plus the Any
// values not in them (a merged set's own resources); body is nil when the
// set cannot be split so (its own resources replace shared ones by name).
// The body is shared by every response: callers must not modify it.
func (v Set) SotwBody(typeURL string) (body []byte, rest []*anypb.Any, err error) {
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
	case v.disjoint: // the shared set's body, then the own resources
		body, _, err := v.reuse.SotwBody(typeURL)
		if err != nil {
			return nil, nil, err
		}
		return body, slices.Clone(enc.all), nil
	}
	_, all, err := v.mergedAll(typeURL, enc)
	return nil, all, err
}

// DeltaBody is SotwBody for delta responses carrying the whole set.
func (v Set) DeltaBody(typeURL string) (body []byte, rest []*discoveryv3.Resource, err error) {
	enc, err := v.encodings(typeURL)
	if err != nil {
		return nil, nil, err
	}
	switch {
	case v.reuse == nil:
		enc.deltaOnce.Do(func() {
			for i, a := range enc.all {
				b, err := proto.Marshal(&discoveryv3.DeltaDiscoveryResponse{Resources: []*discoveryv3.Resource{v.deltaResource(enc.names[i], a)}})
				if err != nil {
					enc.deltaErr = err
					return
				}
				enc.delta = append(enc.delta, b...)
			}
		})
		return enc.delta, nil, enc.deltaErr
	case v.disjoint:
		body, _, err := v.reuse.DeltaBody(typeURL)
		if err != nil {
			return nil, nil, err
		}
		for i, a := range enc.all {
			rest = append(rest, v.deltaResource(enc.names[i], a))
		}
		return body, rest, nil
	}
	names, all, err := v.mergedAll(typeURL, enc)
	if err != nil {
		return nil, nil, err
	}
	for i, a := range all {
		rest = append(rest, v.deltaResource(names[i], a))
	}
	return nil, rest, nil
}

// Encoded returns the named resources of the set as Any values, in the
// order of names, made once per set and shared by every response (callers
// must not modify them). Every name must be the set's.
func (v Set) Encoded(typeURL string, names []string) ([]*anypb.Any, error) {
	if e := v.enc; e != nil && v.reuse == nil && !e.made.Load() && len(names) <= v.Len()/8 {
		// A few names of a set whose whole Any index is not made (the
		// endpoint sets a change touched, to streams holding the rest):
		// those alone, not the set's thousands.
		return v.encodedSome(e, typeURL, names)
	}
	enc, err := v.encodings(typeURL)
	if err != nil {
		return nil, err
	}
	if v.reuse == nil {
		out := make([]*anypb.Any, 0, len(names))
		for _, name := range names {
			out = append(out, enc.byName[name])
		}
		return out, nil
	}
	// A merged set: its own resources', the shared set's for the rest.
	out := make([]*anypb.Any, len(names))
	var shared []string
	var at []int
	for i, name := range names {
		if a, ok := enc.byName[name]; ok {
			out[i] = a
		} else {
			shared, at = append(shared, name), append(at, i)
		}
	}
	if len(shared) > 0 {
		sh, err := v.reuse.Encoded(typeURL, shared)
		if err != nil {
			return nil, err
		}
		for j, i := range at {
			out[i] = sh[j]
		}
	}
	return out, nil
}

func (v Set) encodedSome(e *encodings, typeURL string, names []string) ([]*anypb.Any, error) {
	e.someMu.Lock()
	defer e.someMu.Unlock()
	if e.some == nil {
		e.some = make(map[string]*anypb.Any, len(names))
	}
	out := make([]*anypb.Any, 0, len(names))
	for _, name := range names {
		a := e.some[name]
		if a == nil {
			b, err := v.Encoding(name)
			if err != nil {
				return nil, err
			}
			a = &anypb.Any{TypeUrl: typeURL, Value: b}
			e.some[name] = a
		}
		out = append(out, a)
	}
	return out, nil
}

// Encoding returns one resource's encoding: the one kept when the set was
// prepared (shared sets), or made now. Every name must be the set's.
func (v Set) Encoding(name string) ([]byte, error) {
	e, ok := v.idx.get(name)
	if !ok {
		return nil, fmt.Errorf("xds: no resource %q in the set", name)
	}
	if e.raw != nil {
		return e.raw, nil
	}
	return cachev3.MarshalResource(e.res)
}

func (v Set) deltaResource(name string, a *anypb.Any) *discoveryv3.Resource {
	version, _ := v.VersionOf(name)
	return &discoveryv3.Resource{Name: name, Version: version, Resource: a}
}

// mergedAll is every resource of a merged set whose own resources replace
// shared ones, by name: its own Any values and the shared set's.
func (v Set) mergedAll(typeURL string, enc *encodings) ([]string, []*anypb.Any, error) {
	names := v.names()
	all, err := v.Encoded(typeURL, names)
	return names, all, err
}

// Merged reports whether the set is a proxy's own resources merged into a
// shared set (SortedNames is then nil).
func (v Set) Merged() bool { return v.reuse != nil }

// SortedNames returns the names of a set no proxy's own resources are
// merged into (a prepared shared set, or a proxy's own secrets), sorted,
// made once and shared by every caller, who must not modify them; nil for
// a merged set.
func (v Set) SortedNames() []string {
	e := v.enc
	if v.reuse != nil || e == nil {
		return nil
	}
	e.sortedOnce.Do(func() { e.sorted = v.names() })
	return e.sorted
}

// names are the set's names, sorted.
func (v Set) names() []string {
	out := make([]string, 0, v.Len())
	for name := range v.idx.all() {
		out = append(out, name)
	}
	slices.Sort(out)
	return out
}

func (v Set) encodings(typeURL string) (*encodings, error) {
	e := v.enc
	if e == nil {
		return nil, errors.New("xds: a set without encodings")
	}
	e.once.Do(func() {
		// A merged set's shared resources are the shared set's: only its
		// own are made here (a proxy's few local clusters beside the
		// mesh's thousands, which took 64 KB per proxy and type as a
		// second index).
		names := v.SortedNames()
		if v.reuse != nil {
			names = v.ownNames()
		}
		e.names = names
		e.byName = make(map[string]*anypb.Any, len(names))
		e.all = make([]*anypb.Any, 0, len(names))
		for _, name := range names {
			b, err := v.Encoding(name)
			if err != nil {
				e.err = err
				return
			}
			a := &anypb.Any{TypeUrl: typeURL, Value: b}
			e.byName[name] = a
			e.all = append(e.all, a)
		}
		e.made.Store(e.err == nil)
	})
	return e, e.err
}

// ownNames are a merged set's own resources' names, sorted.
func (v Set) ownNames() []string {
	out := make([]string, 0, v.items.Len())
	for r := range v.items.Values() {
		out = append(out, cachev3.GetResourceName(r))
	}
	slices.Sort(out)
	return out
}
