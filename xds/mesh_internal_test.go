package xds

import (
	"slices"
	"testing"

	"github.com/meshd/meshd/model"
)

// TestWorkloadsMoved: from one key-sorted workload list to the next, the
// keys of the workloads added, removed and replaced (a new pointer), and
// none of those kept (the same pointer), wherever they sit.
func TestWorkloadsMoved(t *testing.T) {
	w := func(name string) *model.Workload { return &model.Workload{Namespace: "demo", Name: name} }
	a, b, c, d, e := w("a"), w("b"), w("c"), w("d"), w("e")
	c2 := w("c")
	for _, tc := range []struct {
		from, to []*model.Workload
		want     []string
	}{
		{[]*model.Workload{a, b, c}, []*model.Workload{a, b, c}, nil},
		{[]*model.Workload{a, b, c}, []*model.Workload{a, b, c2}, []string{"c.demo"}},
		{[]*model.Workload{a, c, e}, []*model.Workload{a, b, c, d, e}, []string{"b.demo", "d.demo"}},
		{[]*model.Workload{a, b, c, d, e}, []*model.Workload{b, d}, []string{"a.demo", "c.demo", "e.demo"}},
		{[]*model.Workload{a, b, c}, []*model.Workload{b, c2, d}, []string{"a.demo", "c.demo", "d.demo"}},
		{nil, []*model.Workload{a}, []string{"a.demo"}},
		{[]*model.Workload{a}, nil, []string{"a.demo"}},
	} {
		if got := workloadsMoved(tc.from, tc.to); !slices.Equal(got, tc.want) {
			t.Errorf("workloadsMoved(%v, %v) = %v, want %v", keys(tc.from), keys(tc.to), got, tc.want)
		}
	}
}

func keys(ws []*model.Workload) []string {
	var out []string
	for _, w := range ws {
		out = append(out, w.Key())
	}
	return out
}
