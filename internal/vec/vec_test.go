package vec_test

import (
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/meshd/meshd/internal/vec"
)

func TestOfAndPatch(t *testing.T) {
	for _, n := range []int{0, 1, vec.ChunkLen - 1, vec.ChunkLen, vec.ChunkLen + 1, 5*vec.ChunkLen + 7} {
		s := make([]int, n)
		for i := range s {
			s[i] = i
		}
		v := vec.Of(s)
		if v.Len() != n || !slices.Equal(v.Slice(), s) || v.Chunks() != (n+vec.ChunkLen-1)/vec.ChunkLen {
			t.Fatalf("n=%d: Of gives %v (%d chunks)", n, v.Slice(), v.Chunks())
		}
		var all []int
		for i, x := range v.All() {
			if i != x || x != v.At(i) {
				t.Fatalf("n=%d: All yields %d at %d, At says %d", n, x, i, v.At(i))
			}
			all = append(all, x)
		}
		if !slices.Equal(all, slices.Collect(v.Values())) || len(all) != n {
			t.Fatalf("n=%d: All and Values differ", n)
		}
		if n == 0 {
			continue
		}
		want := slices.Clone(s)
		p := v.Patch()
		for _, i := range []int{n - 1, 0, n / 2, n - 1} {
			p.Set(i, -i-1)
			want[i] = -i - 1
		}
		w := p.Vec()
		if !slices.Equal(w.Slice(), want) {
			t.Fatalf("n=%d: patched %v, want %v", n, w.Slice(), want)
		}
		if !slices.Equal(v.Slice(), s) || !slices.Equal(s, all) {
			t.Fatalf("n=%d: the patch changed the Vec it started from", n)
		}
		if w.Same(v) || !v.Same(v) {
			t.Fatalf("n=%d: Same", n)
		}
		for b := range w.Chunks() {
			touched := b == 0 || b == (n-1)/vec.ChunkLen || b == (n/2)/vec.ChunkLen
			if w.SameChunk(v, b) == touched {
				t.Errorf("n=%d: chunk %d shared=%v, touched=%v", n, b, w.SameChunk(v, b), touched)
			}
		}
	}
}

// BenchmarkPatch: one element replaced in a Vec of 10,000.
func BenchmarkPatch(b *testing.B) {
	v := vec.Of(make([]*int, 10000))
	x := new(int)
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		p := v.Patch()
		p.Set(i%10000, x)
		v = p.Vec()
	}
}

// TestPatchAgainstSlice: random sequences of Set, Append and Pop, with the
// Vec handed on every few changes and patched further, give what the same
// changes of a slice give; every Vec handed on keeps its elements.
func TestPatchAgainstSlice(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 7))
	var want []int
	var v vec.Vec[int]
	type handed struct {
		v    vec.Vec[int]
		want []int
	}
	var history []handed
	p := v.Patch()
	for step := range 5000 {
		switch op := r.IntN(10); {
		case op < 4 && len(want) > 0:
			i := r.IntN(len(want))
			p.Set(i, step)
			want[i] = step
		case op < 8 || len(want) == 0:
			p.Append(step)
			want = append(want, step)
		default:
			p.Pop()
			want = want[:len(want)-1]
		}
		if r.IntN(7) == 0 {
			v = p.Vec()
			if got := v.Slice(); !slices.Equal(got, want) || v.Len() != len(want) {
				t.Fatalf("step %d: %v, want %v", step, got, want)
			}
			history = append(history, handed{v, slices.Clone(want)})
			p = v.Patch()
		}
	}
	for i, h := range history {
		if !slices.Equal(h.v.Slice(), h.want) {
			t.Fatalf("the Vec handed on %d-th changed after", i)
		}
	}
}

// BenchmarkAppendMany: an informer's initial list of 100,000 objects
// appended in one patch.
func BenchmarkAppendMany(b *testing.B) {
	x := new(int)
	b.ReportAllocs()
	for b.Loop() {
		var v vec.Vec[*int]
		p := v.Patch()
		for range 100000 {
			p.Append(x)
		}
		if p.Vec().Len() != 100000 {
			b.Fatal("lost elements")
		}
	}
}

// TestPatchManyChunks: one patch touching more chunks than it tracks in
// its short list (then in a map), each chunk changed twice, equals the
// same changes of a slice and leaves the Vec it started from as it was.
func TestPatchManyChunks(t *testing.T) {
	s := make([]int, 40*vec.ChunkLen)
	for i := range s {
		s[i] = i
	}
	v := vec.Of(s)
	want := slices.Clone(s)
	p := v.Patch()
	for round := range 2 {
		for i := round; i < len(want); i += 50 {
			p.Set(i, -i)
			want[i] = -i
		}
	}
	p.Append(7)
	want = append(want, 7)
	if got := p.Vec().Slice(); !slices.Equal(got, want) {
		t.Fatal("the patched Vec differs from the patched slice")
	}
	for i, x := range v.All() {
		if x != i {
			t.Fatalf("the Vec patched from changed at %d", i)
		}
	}
}
