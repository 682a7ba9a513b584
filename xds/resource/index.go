package resource

import (
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"iter"
	"maps"
	"math"
	"strconv"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
)

// entry is one resource of a set: its version, its deterministic encoding
// (shared sets; nil otherwise) and its value.
type entry struct {
	version string
	raw     []byte
	res     types.Resource
}

// index is a set's resources by name, in two layers: base, shared by the
// sets patched from one another, and over, what replaced or was added to
// base's entries. A set patched from another copies only over and its own
// changes, not every entry: an endpoint change at 10,000 services copies
// a few entries, not 10,000. When over outgrows overMax of base, a patch
// merges the layers into a new base. Neither map is modified once a set
// holds the index.
type index struct {
	base, over map[string]*entry
	// added is the number of over's names not in base.
	added int
}

// flatIndex is an index of one layer.
func flatIndex(m map[string]*entry) index { return index{base: m} }

func (x index) get(name string) (*entry, bool) {
	if e, ok := x.over[name]; ok {
		return e, true
	}
	e, ok := x.base[name]
	return e, ok
}

func (x index) len() int { return len(x.base) + x.added }

// all yields every entry once, over's in place of base's.
func (x index) all() iter.Seq2[string, *entry] {
	return func(yield func(string, *entry) bool) {
		for name, e := range x.base {
			if o, ok := x.over[name]; ok {
				e = o
			}
			if !yield(name, e) {
				return
			}
		}
		if x.added == 0 {
			return
		}
		for name, e := range x.over {
			if _, ok := x.base[name]; !ok && !yield(name, e) {
				return
			}
		}
	}
}

// overMax bounds over for a base of n entries: a patch copies over, and a
// merge copies base, so both cost about the square root of n per change.
func overMax(n int) int { return max(8, int(math.Sqrt(float64(n)))) }

// replacing returns the index with changes in place of entries of the same
// names (x must have every name; none is added): a new index, x is
// unchanged.
func (x index) replacing(changes map[string]*entry) index {
	over := make(map[string]*entry, len(x.over)+len(changes))
	maps.Copy(over, x.over)
	maps.Copy(over, changes)
	if len(over) > overMax(len(x.base)) {
		base := maps.Clone(x.base)
		maps.Copy(base, over)
		return flatIndex(base) // over's added names are base's now
	}
	return index{base: x.base, over: over, added: x.added}
}

// Versions: a set's version is the hash of the exclusive-or of its
// entries' hashes, each the hash of the entry's name and version. The same
// resources give the same version in any order (two replicas agree), and a
// set patched from another updates its predecessor's sum with the entries
// it replaced instead of hashing every entry again.

// versionSum is the exclusive-or of a set's entries' hashes.
type versionSum [2]uint64

// entryHash is the hash of one entry's name and version.
func entryHash(name, version string) versionSum {
	buf := make([]byte, 0, 24+len(name)+len(version))
	buf = strconv.AppendInt(buf, int64(len(name)), 10)
	buf = append(append(append(append(buf, ':'), name...), ':'), version...)
	h := sha256.Sum256(buf)
	return versionSum{binary.LittleEndian.Uint64(h[:8]), binary.LittleEndian.Uint64(h[8:16])}
}

func (s *versionSum) add(name, version string) {
	h := entryHash(name, version)
	s[0] ^= h[0]
	s[1] ^= h[1]
}

// version is the set version of the sum.
func (s versionSum) version() string {
	var b [16]byte
	binary.LittleEndian.PutUint64(b[:8], s[0])
	binary.LittleEndian.PutUint64(b[8:], s[1])
	h := sha256.Sum256(b[:])
	return hex.EncodeToString(h[:8])
}
