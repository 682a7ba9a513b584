package xds

import (
	"hash/maphash"
	"slices"
	"sync"
	"unsafe"
	"weak"
)

// Sharing name lists among streams.
//
// A stream keeps the names it last asked for, by type: the codec decodes a
// SotW stream's next request against them (see request.go) and the debug
// API shows them. Proxies of one mesh, or of one egress scope, name the
// same resources in the same order (the order of the sets meshd sent
// them), so each stream held its own copy of the same list: 16 bytes per
// name, plus protobuf's spare capacity, per stream and type (about 30 KB
// per proxy naming 1,000 endpoint sets and 1,000 routes). A new list is
// replaced by the one canonical copy of the same names, which every
// stream holding them shares; the lists are never written once shared.
// The table refers to them weakly: a list no stream holds any more is
// collected, so a client that sends a new list with every request leaves
// only garbage. Hash collisions cost sharing, not correctness: a list is
// shared only if it has the same names.

// minShared is the length from which a list is shared (shorter ones are
// not worth a table entry).
const minShared = 8

// sharedLists is the table of canonical lists. Safe for concurrent use.
type sharedLists struct {
	mu     sync.Mutex
	seed   maphash.Seed
	byHash map[uint64]sharedList
	// swept is the table's size after its last sweep of collected lists.
	swept int
}

// sharedList is a canonical list: a weak pointer to its first name and its
// length.
type sharedList struct {
	first weak.Pointer[string]
	n     int
}

// lists is the process's table: streams of every server share it, as
// names are shared through unique.
var lists = newSharedLists()

func newSharedLists() *sharedLists {
	return &sharedLists{seed: maphash.MakeSeed(), byHash: map[uint64]sharedList{}}
}

// share returns the canonical list of the same names as names (which the
// caller must not write afterwards), making a copy of names canonical if
// there is none.
func (l *sharedLists) share(names []string) []string {
	if len(names) < minShared {
		return names
	}
	key := l.hash(names)
	l.mu.Lock()
	defer l.mu.Unlock()
	if canon := l.byHash[key].names(); canon != nil && slices.Equal(canon, names) {
		return canon
	}
	canon := slices.Clone(names) // without protobuf's spare capacity
	l.byHash[key] = sharedList{first: weak.Make(&canon[0]), n: len(canon)}
	if len(l.byHash) > 2*l.swept+64 {
		l.sweepLocked()
	}
	return canon
}

// hash is the table's key of a list.
func (l *sharedLists) hash(names []string) uint64 {
	var h maphash.Hash
	h.SetSeed(l.seed)
	for _, n := range names {
		h.WriteString(n)
		h.WriteByte(0)
	}
	return h.Sum64()
}

// names is the list, or nil once collected.
func (e sharedList) names() []string {
	p := e.first.Value()
	if p == nil {
		return nil
	}
	// p is the first of the n names of the array the list was made with.
	return unsafe.Slice(p, e.n)
}

// sweepLocked forgets the lists collected.
func (l *sharedLists) sweepLocked() {
	for k, e := range l.byHash {
		if e.first.Value() == nil {
			delete(l.byHash, k)
		}
	}
	l.swept = len(l.byHash)
}
