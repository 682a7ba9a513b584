package vec_test

import (
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
