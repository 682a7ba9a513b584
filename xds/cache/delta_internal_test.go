package cache

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"runtime"
	"slices"
	"testing"

	clusterv3 "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"github.com/meshd/meshd/xds/resource"
)

type sub struct {
	wildcard   bool
	subscribed map[string]struct{}
	returned   map[string]string
}

func (s sub) ReturnedResources() map[string]string     { return s.returned }
func (s sub) SubscribedResources() map[string]struct{} { return s.subscribed }
func (s sub) IsWildcard() bool                         { return s.wildcard }

// randomSet is a set of up to 8 of the clusters r0..r9, each at one of
// three contents (and so versions).
func randomSet(t *testing.T, rng *rand.Rand) resource.Set {
	var items []types.Resource
	for i := range 10 {
		if rng.IntN(10) < 8 {
			items = append(items, &clusterv3.Cluster{Name: fmt.Sprintf("r%d", i), AltStatName: fmt.Sprint(rng.IntN(3))})
		}
	}
	sets, err := resource.Own(resource.Resources{resourcev3.ClusterType: items})
	if err != nil {
		t.Fatal(err)
	}
	return sets[resourcev3.ClusterType]
}

// TestDifferenceIsCompare: for a stream holding the old set, the shared
// difference of a change (and the resource-by-resource comparison with the
// held set, used when the stream holds an older one) sends and removes
// exactly what comparing every resource with per-resource versions would,
// also for names the stream subscribed to after it was sent the old set.
func TestDifferenceIsCompare(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 5000 {
		old := randomSet(t, rng)
		set := randomSet(t, rng).Since(old)
		s := sub{wildcard: rng.IntN(2) == 0, subscribed: map[string]struct{}{}}
		h := &deltaHeld{set: &old}
		for j := range 10 {
			name := fmt.Sprintf("r%d", j)
			if rng.IntN(2) == 0 && !s.wildcard {
				s.subscribed[name] = struct{}{}
				if rng.IntN(4) == 0 {
					if h.lacking == nil {
						h.lacking = map[string]struct{}{}
					}
					h.lacking[name] = struct{}{} // subscribed since
				}
			}
		}
		// The per-resource versions such a stream holds.
		s.returned = map[string]string{}
		for name, v := range old.VersionMap() {
			if _, late := h.lacking[name]; !late && sends(s, name) {
				s.returned[name] = v
			}
		}
		wantNames, wantRemoved := compare(s, set)
		// Names are in order unless they are the whole set (that goes out
		// as the set's encoding, in its order): compared as sets.
		slices.Sort(wantNames)
		for how, f := range map[string]func() ([]string, []string){
			"difference":  func() ([]string, []string) { return difference(s, h, set) },
			"compareHeld": func() ([]string, []string) { return compareHeld(s, h, set) },
		} {
			names, removed := f()
			if len(names) < len(set.VersionMap()) && !slices.IsSorted(names) {
				t.Fatalf("case %d %s: part of the set not in order: %v", i, how, names)
			}
			slices.Sort(names)
			slices.Sort(removed)
			if !slices.Equal(names, wantNames) || !slices.Equal(removed, wantRemoved) {
				t.Fatalf("case %d %s (wildcard %v, subscribed %v, lacking %v)\nold %v\nnew %v\ngot:     sent %v removed %v\ncompare: sent %v removed %v",
					i, how, s.wildcard, slices.Sorted(maps.Keys(s.subscribed)), slices.Sorted(maps.Keys(h.lacking)), old.VersionMap(), set.VersionMap(),
					names, removed, wantNames, wantRemoved)
			}
		}
	}
}

// TestCompareWholeSetIsLacks: a stream holding nothing is sent the set's
// shared list of names when it subscribes to all of them (or to the
// wildcard), and otherwise what comparing name by name gives, over random
// sets and subscriptions sharing canonical name sets (so that a set of
// names found to be one set's is asked again about others).
func TestCompareWholeSetIsLacks(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	sets := newNameSets()
	var keep []*subscription
	for i := range 5000 {
		set := randomSet(t, rng)
		var names []string
		if rng.IntN(3) == 0 {
			names = slices.Collect(maps.Keys(set.VersionMap())) // exactly the set's
		} else {
			for j := range 10 {
				if rng.IntN(2) == 0 {
					names = append(names, fmt.Sprintf("r%d", j))
				}
			}
		}
		if rng.IntN(8) == 0 {
			names = append(names, wildcardName)
		}
		s := (*subscription)(nil).next(asked{delta: true, names: names}, sets)
		keep = append(keep, s)
		got, gotRemoved := compare(s, set)
		want, wantRemoved := lacks(s, set, 0, func(func(string) bool) {}, func(string) (string, bool) { return "", false })
		slices.Sort(want)
		if !slices.Equal(slices.Sorted(slices.Values(got)), want) || len(gotRemoved) != 0 || len(wantRemoved) != 0 {
			t.Fatalf("case %d: subscribed %v (wildcard %v) to %v: sent %v, want %v", i, slices.Sorted(maps.Keys(s.names.m)), s.wildcard, set.VersionMap(), got, want)
		}
		shared := s.wildcard || maps.Equal(s.names.m, setNames(set))
		if set.Len() > 0 && shared && &got[0] != &set.SortedNames()[0] {
			t.Fatalf("case %d: the whole set's names are a list of the stream's own", i)
		}
	}
	runtime.KeepAlive(keep)
}

func setNames(set resource.Set) map[string]struct{} {
	m := map[string]struct{}{}
	for name := range set.VersionMap() {
		m[name] = struct{}{}
	}
	return m
}
