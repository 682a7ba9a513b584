// Package vec is an immutable list stored in chunks of ChunkLen elements,
// for the long lists meshd's pipeline hands from stage to stage and
// patches in a few places per change (10,000 endpoint sets, one of them
// new): a patch copies the chunks it touches and the list of chunks (a
// slice header per ChunkLen elements), not every element, and a stage
// finds what changed by comparing chunks by identity before elements.
//
// Where it sits: a leaf package under every stage that hands such lists
// on (k8s's state and converter, model's snapshot, xds/translate's
// resources, xds/resource's sets); it knows nothing of any of them.
package vec

import "iter"

// ChunkLen is the number of elements per chunk (the last may hold fewer).
const ChunkLen = 64

// Vec is an immutable list. The zero Vec is empty. A Vec and what its
// methods return are never modified: a change makes a new Vec (Patch),
// which shares the chunks it did not touch. Safe to read from any
// goroutine.
type Vec[T any] struct {
	chunks [][]T
	n      int
}

// Of is s as a Vec, sharing s's array: s must not be edited after.
func Of[T any](s []T) Vec[T] {
	if len(s) == 0 {
		return Vec[T]{}
	}
	chunks := make([][]T, 0, (len(s)+ChunkLen-1)/ChunkLen)
	for from := 0; from < len(s); from += ChunkLen {
		to := min(from+ChunkLen, len(s))
		chunks = append(chunks, s[from:to:to])
	}
	return Vec[T]{chunks: chunks, n: len(s)}
}

// Len is the number of elements.
func (v Vec[T]) Len() int { return v.n }

// At is the element at i (0 <= i < Len).
func (v Vec[T]) At(i int) T { return v.chunks[i/ChunkLen][i%ChunkLen] }

// Chunks is the number of chunks.
func (v Vec[T]) Chunks() int { return len(v.chunks) }

// Chunk is the elements of chunk b, those at b*ChunkLen onwards; the
// caller must not modify them.
func (v Vec[T]) Chunk(b int) []T { return v.chunks[b] }

// SameChunk reports whether chunk b of v and of w is the same array (so
// the same elements), told without comparing an element.
func (v Vec[T]) SameChunk(w Vec[T], b int) bool {
	a, c := v.chunks[b], w.chunks[b]
	return len(a) == len(c) && (len(a) == 0 || &a[0] == &c[0])
}

// Same reports whether v and w are one Vec (the same chunk list).
func (v Vec[T]) Same(w Vec[T]) bool {
	return v.n == w.n && (len(v.chunks) == 0 || &v.chunks[0] == &w.chunks[0])
}

// All yields each element with its place, in order.
func (v Vec[T]) All() iter.Seq2[int, T] {
	return func(yield func(int, T) bool) {
		for b, c := range v.chunks {
			for j, x := range c {
				if !yield(b*ChunkLen+j, x) {
					return
				}
			}
		}
	}
}

// Values yields each element in order.
func (v Vec[T]) Values() iter.Seq[T] {
	return func(yield func(T) bool) {
		for _, c := range v.chunks {
			for _, x := range c {
				if !yield(x) {
					return
				}
			}
		}
	}
}

// Slice is the elements as a new slice.
func (v Vec[T]) Slice() []T {
	out := make([]T, 0, v.n)
	for _, c := range v.chunks {
		out = append(out, c...)
	}
	return out
}

// Patch starts a new Vec equal to v, to be changed in places: v is not
// changed.
func (v Vec[T]) Patch() *Patch[T] { return &Patch[T]{v: v} }

// Patch builds a Vec from another with elements replaced, added at the end
// or removed from it: the first change copies the chunk list, the first
// change in a chunk copies the chunk. Not safe for concurrent use.
type Patch[T any] struct {
	v     Vec[T]
	spine bool // v.chunks is the patch's own copy
	// touched are the chunks copied while they are few (most patches);
	// owned holds them instead once they are many (an informer's initial
	// list appended in one patch).
	touched []int
	owned   map[int]bool
}

// Set puts x at i (0 <= i < Len).
func (p *Patch[T]) Set(i int, x T) {
	p.ownSpine()
	b := i / ChunkLen
	p.ownChunk(b)
	p.v.chunks[b][i%ChunkLen] = x
}

// Len is the number of elements now.
func (p *Patch[T]) Len() int { return p.v.n }

// At is the element at i now.
func (p *Patch[T]) At(i int) T { return p.v.At(i) }

// Append adds x at the end.
func (p *Patch[T]) Append(x T) {
	p.ownSpine()
	if p.v.n%ChunkLen == 0 { // a new chunk, the patch's own
		c := make([]T, 1, ChunkLen)
		c[0] = x
		p.v.chunks = append(p.v.chunks, c)
		p.touch(len(p.v.chunks) - 1)
	} else {
		b := len(p.v.chunks) - 1
		p.ownChunk(b)
		p.v.chunks[b] = append(p.v.chunks[b], x)
	}
	p.v.n++
}

// Pop removes the last element (Len > 0).
func (p *Patch[T]) Pop() {
	p.ownSpine()
	b := len(p.v.chunks) - 1
	if len(p.v.chunks[b]) == 1 {
		p.v.chunks[b] = nil
		p.v.chunks = p.v.chunks[:b]
	} else {
		p.ownChunk(b)
		c := p.v.chunks[b]
		var zero T
		c[len(c)-1] = zero // not kept alive by the array
		p.v.chunks[b] = c[:len(c)-1]
	}
	p.v.n--
}

func (p *Patch[T]) ownSpine() {
	if !p.spine {
		p.v.chunks, p.spine = append([][]T(nil), p.v.chunks...), true
	}
}

func (p *Patch[T]) ownChunk(b int) {
	if !p.copied(b) {
		p.v.chunks[b] = append(make([]T, 0, ChunkLen), p.v.chunks[b]...)
		p.touch(b)
	}
}

// touch records chunk b as the patch's own.
func (p *Patch[T]) touch(b int) {
	if p.owned != nil {
		p.owned[b] = true
		return
	}
	p.touched = append(p.touched, b)
	if len(p.touched) > 16 {
		p.owned = make(map[int]bool, 2*len(p.touched))
		for _, t := range p.touched {
			p.owned[t] = true
		}
		p.touched = nil
	}
}

// copied reports whether chunk b is the patch's own.
func (p *Patch[T]) copied(b int) bool {
	if p.owned != nil {
		return p.owned[b]
	}
	for _, t := range p.touched {
		if t == b {
			return true
		}
	}
	return false
}

// Vec is the result; the Patch is not to be used after.
func (p *Patch[T]) Vec() Vec[T] { return p.v }
