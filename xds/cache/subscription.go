package cache

import (
	"hash/maphash"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"weak"

	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"

	"github.com/meshd/meshd/xds/resource"
)

// Subscriptions kept by the cache, shared among streams.
//
// go-control-plane's server keeps, per stream and type, a map of every name
// the stream subscribes to, built from the request's names: a proxy naming
// 1,000 endpoint sets and 1,000 routes costs about 100 KB in those maps
// (half of meshd's live heap at 1,000 delta sidecars), and a SotW stream's
// map is built again from its ~1,000 names on every request, ACKs included.
// The proxies of a mesh, or of one egress scope, subscribe to the same
// names. So the cache keeps each stream's subscription itself (NoteRequest
// and NoteDeltaRequest take the names out of the request before
// go-control-plane's server reads them; see streams.go): an immutable
// value, made again only when a request changes it, whose names are the one
// canonical set of those names that every stream subscribing to them
// shares. go-control-plane's server then holds empty maps; what it does
// with a request's names (the legacy wildcard, "*") is done here, as its
// stream.Subscription does it, so that the cache answers exactly as before.

// subscription is what a stream subscribes to of one type. Never written
// once made: a request that changes it makes a new one, so a watch keeps
// the subscription of the request it answers. It implements
// go-control-plane's cachev3.Subscription.
type subscription struct {
	wildcard bool
	// legacy: no name asked yet, and the type's first request asked for
	// none: the stream is a wildcard one until it names something.
	legacy bool
	names  *nameSet
	// list is a SotW request's names as it listed them (shared with the
	// codec), to tell an ACK of the same names at once.
	list []string
	// initial is the client's versions of what it held when the delta
	// stream started (initial_resource_versions), nil for SotW.
	initial map[string]string
}

var _ cachev3.Subscription = (*subscription)(nil)

func (s *subscription) IsWildcard() bool                         { return s.wildcard }
func (s *subscription) SubscribedResources() map[string]struct{} { return s.names.m }
func (s *subscription) ReturnedResources() map[string]string     { return s.initial }

// asked is what one request said of its subscription, taken out of it.
type asked struct {
	delta bool
	// names: SotW, every name subscribed to; delta, the names added.
	names []string
	// dropped: delta, the names unsubscribed.
	dropped []string
	initial map[string]string
}

const wildcardName = "*"

// next is the subscription after a request that asked a, s being the
// type's subscription before it (nil for the type's first request).
func (s *subscription) next(a asked, sets *nameSets) *subscription {
	if s == nil {
		// The type's first request: the legacy wildcard when it names
		// nothing (go-control-plane's default for every type).
		s = &subscription{wildcard: len(a.names) == 0, legacy: true, names: sets.empty, initial: a.initial}
	}
	if s.legacy && len(a.names) == 0 {
		return s // still the legacy wildcard (a delta request's unsubscribes are ignored)
	}
	if !a.delta {
		if !s.legacy && sameList(s.list, a.names) {
			return s // an ACK of the same names
		}
		n := *s
		n.legacy, n.wildcard, n.list = false, false, a.names
		return n.withNames(sets.empty, a.names, nil, sets)
	}
	if !s.legacy && len(a.names) == 0 && len(a.dropped) == 0 {
		return s // an ACK or NACK
	}
	n := *s
	n.legacy = false
	return n.withNames(n.names, a.names, a.dropped, sets)
}

// sameList reports whether two lists of names are equal; the codec hands
// a stream repeating its names the list it decoded before, so this is
// mostly a pointer comparison.
func sameList(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	if len(a) == 0 || &a[0] == &b[0] {
		return true
	}
	return slices.Equal(a, b)
}

// withNames makes n's names base plus added minus dropped, "*" among them
// subscribing or unsubscribing the wildcard, as go-control-plane's
// stream.Subscription does (SotW: base empty, nothing dropped). n is a
// copy the caller owns.
//
// Names only added go without a map of their own when the result is a set
// already shared: a connecting proxy's ~1,000 endpoint names are compared
// with the canonical set instead of being built into a map first (which
// was a third of what meshd allocated while 1,000 proxies connected).
func (n subscription) withNames(base *nameSet, added, dropped []string, sets *nameSets) *subscription {
	if len(dropped) == 0 {
		for _, name := range added {
			if name == wildcardName {
				n.wildcard = true
			}
		}
		if len(base.m) == 0 {
			if set := sets.shareList(added); set != nil {
				n.names = set
				return &n
			}
		} else if base.hasAll(added) {
			n.names = base
			return &n
		}
	}
	m := make(map[string]struct{}, len(base.m)+len(added))
	maps.Copy(m, base.m)
	for _, name := range added {
		if name == wildcardName {
			n.wildcard = true
			continue
		}
		m[name] = struct{}{}
	}
	cloned := false
	for _, name := range dropped {
		if name == wildcardName {
			n.wildcard = false
			continue
		}
		_, was := m[name]
		delete(m, name)
		if !cloned {
			n.initial, cloned = maps.Clone(n.initial), true
		}
		if was && n.wildcard {
			// Still sent by the wildcard: the client must be told it again
			// (as an update, or as removed).
			if n.initial == nil {
				n.initial = map[string]string{}
			}
			n.initial[name] = ""
		} else {
			delete(n.initial, name)
		}
	}
	n.names = sets.share(m)
	return &n
}

// fromServer is the subscription go-control-plane's server kept, for a
// request of no stream noted (the cache used without meshd's server).
func fromServer(sub cachev3.Subscription, sets *nameSets) *subscription {
	return &subscription{wildcard: sub.IsWildcard(), names: sets.share(maps.Clone(sub.SubscribedResources())), initial: sub.ReturnedResources()}
}

// nameSet is a set of names, never written once shared.
type nameSet struct {
	m map[string]struct{}
	// at numbers the names, made when first needed (isList): the place of
	// a name's bit when a list is compared with the set.
	atOnce sync.Once
	at     map[string]int32
	// setOf is the version of the last resource set found to have exactly
	// these names (see isSetOf).
	setOf atomic.Pointer[string]
}

// isSetOf reports whether set's names are exactly s's, remembering the
// last set's version it found so: the proxies subscribing to a mesh's
// every endpoint set are compared once per version, not once each.
func (s *nameSet) isSetOf(set resource.Set) bool {
	if len(s.m) != set.Len() {
		return false
	}
	version := set.Version()
	if last := s.setOf.Load(); last != nil && *last == version {
		return true
	}
	ix := set.Index()
	for name := range s.m {
		if !ix.Has(name) {
			return false
		}
	}
	s.setOf.Store(&version)
	return true
}

// hasAll reports whether every name of list but "*" is in s.
func (s *nameSet) hasAll(list []string) bool {
	for _, name := range list {
		if _, ok := s.m[name]; !ok && name != wildcardName {
			return false
		}
	}
	return true
}

// isList reports whether list, "*" aside, names exactly s's names, each
// once (count: the list's names other than "*").
func (s *nameSet) isList(list []string, count int) bool {
	if count != len(s.m) {
		return false
	}
	s.atOnce.Do(func() {
		s.at = make(map[string]int32, len(s.m))
		for name := range s.m {
			s.at[name] = int32(len(s.at))
		}
	})
	var small [16]uint64
	seen := small[:]
	if words := (count + 63) / 64; words > len(small) {
		seen = make([]uint64, words)
	}
	for _, name := range list {
		if name == wildcardName {
			continue
		}
		i, ok := s.at[name]
		if !ok || seen[i/64]&(1<<(i%64)) != 0 {
			return false // not in s, or named twice (so another of s's is not named)
		}
		seen[i/64] |= 1 << (i % 64)
	}
	return true
}

// shareList returns the canonical set of list's names but "*" if there is
// one, else nil (the caller builds the set and shares it); t.empty for no
// names.
func (t *nameSets) shareList(list []string) *nameSet {
	var key uint64
	count := 0
	for _, name := range list {
		if name != wildcardName {
			key += maphash.String(t.seed, name)
			count++
		}
	}
	if count == 0 {
		return t.empty
	}
	t.mu.Lock()
	canon := t.byHash[key].Value()
	t.mu.Unlock()
	// A name listed twice gives another sum: the set is then found only
	// through a collision, and isList tells it apart.
	if canon != nil && canon.isList(list, count) {
		return canon
	}
	return nil
}

// nameSets is the table of canonical name sets, referred to weakly: a set
// no subscription holds any more is collected. A set is shared only if it
// has the same names (a hash collision costs sharing, not correctness).
// Safe for concurrent use.
type nameSets struct {
	mu     sync.Mutex
	seed   maphash.Seed
	byHash map[uint64]weak.Pointer[nameSet]
	swept  int
	empty  *nameSet
}

func newNameSets() *nameSets {
	return &nameSets{seed: maphash.MakeSeed(), byHash: map[uint64]weak.Pointer[nameSet]{}, empty: &nameSet{m: map[string]struct{}{}}}
}

// share returns the canonical set of m's names (m, made canonical, if
// there is none); the caller must not write m afterwards.
func (t *nameSets) share(m map[string]struct{}) *nameSet {
	if len(m) == 0 {
		return t.empty
	}
	// A sum of the names' hashes: the same for the same names in any order.
	var key uint64
	for name := range m {
		key += maphash.String(t.seed, name)
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if canon := t.byHash[key].Value(); canon != nil && maps.Equal(canon.m, m) {
		return canon
	}
	set := &nameSet{m: m}
	t.byHash[key] = weak.Make(set)
	if len(t.byHash) > 2*t.swept+64 {
		for k, p := range t.byHash {
			if p.Value() == nil {
				delete(t.byHash, k)
			}
		}
		t.swept = len(t.byHash)
	}
	return set
}
