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
// length, and one to the encoding of its run of fields once a SotW request
// gave it (see shareRun).
type sharedList struct {
	first weak.Pointer[string]
	n     int
	run   weak.Pointer[[]byte]
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
	canon, _ := l.shareRun(names, nil)
	return canon
}

// shareRun is share for names a SotW request held as one run of fields
// (see decodeSotwRun), run (if not nil) the run's bytes. It also returns
// the shared copy of those bytes that goes with the canonical list (nil
// for a list too short to share): the encoding of a list as such a run is
// the only one there is (a one-byte tag and length before each name), so
// every stream holding the list shares one, and a request whose run is the
// same bytes names exactly the list's names.
func (l *sharedLists) shareRun(names []string, run []byte) ([]string, *[]byte) {
	if len(names) < minShared {
		return names, nil
	}
	key := l.hash(names)
	l.mu.Lock()
	defer l.mu.Unlock()
	e := l.byHash[key]
	canon := e.names()
	if canon == nil || !slices.Equal(canon, names) {
		canon = slices.Clone(names) // without protobuf's spare capacity
		e = sharedList{first: weak.Make(&canon[0]), n: len(canon)}
		l.byHash[key] = e
		if len(l.byHash) > 2*l.swept+64 {
			l.sweepLocked()
		}
	}
	if run == nil {
		return canon, nil
	}
	if p := e.run.Value(); p != nil {
		return canon, p
	}
	p := new([]byte)
	*p = slices.Clone(run)
	e.run = weak.Make(p)
	l.byHash[key] = e
	return canon, p
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
