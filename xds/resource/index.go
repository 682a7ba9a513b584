package resource

import (
	"crypto/sha256"
	"encoding/hex"
	"iter"
	"maps"
	"math"
	"strconv"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"

	"github.com/meshd/meshd/internal/vec"
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
	// baseVer and overVer are base's and over's versions by name: the
	// per-name comparisons of delta and SotW streams read them without
	// reaching each entry (a lookup in a map of strings, as they did
	// before sets had layers).
	baseVer, overVer map[string]string
	// added is the number of over's names not in base.
	added int
}

// flatIndex is an index of one layer.
func flatIndex(m map[string]*entry) index {
	return index{base: m, baseVer: versionsOf(m)}
}

// layered is base with over on top.
func layered(base index, over map[string]*entry) index {
	x := index{base: base.base, baseVer: base.baseVer, over: over, overVer: versionsOf(over)}
	for name := range over {
		if _, ok := base.base[name]; !ok {
			x.added++
		}
	}
	return x
}

func versionsOf(m map[string]*entry) map[string]string {
	out := make(map[string]string, len(m))
	for name, e := range m {
		out[name] = e.version
	}
	return out
}

// versions yields every entry's name and version once, over's in place
// of base's.
func (x index) versions() iter.Seq2[string, string] { return layers(x.baseVer, x.overVer, x.added) }

func (x index) get(name string) (*entry, bool) {
	if len(x.over) > 0 {
		if e, ok := x.over[name]; ok {
			return e, true
		}
	}
	e, ok := x.base[name]
	return e, ok
}

func (x index) len() int { return len(x.base) + x.added }

// all yields every entry once, over's in place of base's.
func (x index) all() iter.Seq2[string, *entry] { return layers(x.base, x.over, x.added) }

// layers yields every name of base and over once, with over's value in
// place of base's; added is the number of over's names not in base.
func layers[V any](base, over map[string]V, added int) iter.Seq2[string, V] {
	return func(yield func(string, V) bool) {
		if len(over) == 0 { // one layer (most sets): no lookup per entry
			for name, v := range base {
				if !yield(name, v) {
					return
				}
			}
			return
		}
		for name, v := range base {
			if o, ok := over[name]; ok {
				v = o
			}
			if !yield(name, v) {
				return
			}
		}
		if added == 0 {
			return
		}
		for name, v := range over {
			if _, ok := base[name]; !ok && !yield(name, v) {
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
	return index{base: x.base, baseVer: x.baseVer, over: over, overVer: versionsOf(over), added: x.added}
}

// Versions: a set's version is the hash of its blocks' hashes, a block
// being versionBlock entries in name order and its hash the hash of each
// entry's name and version. The same resources give the same version in
// any order (two replicas agree; the items are sorted first); a set patched
// from another hashes again only the blocks that hold a replaced entry,
// and the blocks' hashes, instead of every entry. Every hash is SHA-256:
// unlike a sum of entry hashes, whose linearity would let whoever shapes
// enough resources cancel out a change, two contents with one version need
// a SHA-256 collision.

// versionBlock is the number of entries hashed together: a chunk of the
// set's items (see vec).
const versionBlock = vec.ChunkLen

// blockHash is the hash of one block of entries.
type blockHash [sha256.Size]byte

// hashBlock hashes a block of items (in name order), each entry's version
// read from idx.
func hashBlock(items []types.Resource, idx index, buf []byte) (blockHash, []byte) {
	h := sha256.New()
	for _, r := range items {
		name := cachev3.GetResourceName(r)
		e, _ := idx.get(name)
		buf = strconv.AppendInt(buf[:0], int64(len(name)), 10)
		buf = append(append(append(append(append(buf, ':'), name...), ':'), e.version...), '\n')
		h.Write(buf)
	}
	var out blockHash
	h.Sum(out[:0])
	return out, buf
}

// hashBlocks hashes every block of items (sorted by name).
func hashBlocks(items vec.Vec[types.Resource], idx index) []blockHash {
	out := make([]blockHash, items.Chunks())
	var buf []byte
	for b := range out {
		out[b], buf = hashBlock(items.Chunk(b), idx, buf)
	}
	return out
}

// versionOf is the set version of its blocks' hashes.
func versionOf(blocks []blockHash) string {
	h := sha256.New()
	for _, b := range blocks {
		h.Write(b[:])
	}
	return hex.EncodeToString(h.Sum(nil)[:8])
}
