package xds

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"testing"
)

type sub struct {
	wildcard   bool
	subscribed map[string]struct{}
	returned   map[string]string
}

func (s sub) ReturnedResources() map[string]string     { return s.returned }
func (s sub) SubscribedResources() map[string]struct{} { return s.subscribed }
func (s sub) IsWildcard() bool                         { return s.wildcard }

// randomSet is a set of up to 8 of the names r0..r9 at versions 0..2.
func randomSet(rng *rand.Rand, version string) versioned {
	vm := map[string]string{}
	for i := range 10 {
		if rng.IntN(10) < 8 {
			vm[fmt.Sprintf("r%d", i)] = fmt.Sprint(rng.IntN(3))
		}
	}
	return versioned{version: version, versionMap: vm}
}

// TestDifferenceIsCompare: for a stream holding exactly the old set (as a
// full comparison left it), the shared difference of a change sends,
// removes and records exactly what comparing every resource would.
func TestDifferenceIsCompare(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 2000 {
		old, set := randomSet(rng, "old"), randomSet(rng, "new")
		setDifference(old, &set)
		s := sub{wildcard: rng.IntN(2) == 0, subscribed: map[string]struct{}{}}
		for j := range 10 {
			if rng.IntN(2) == 0 {
				s.subscribed[fmt.Sprintf("r%d", j)] = struct{}{}
			}
		}
		_, _, s.returned = compare(s, old)
		names, removed, next := difference(s, set)
		wantNames, wantRemoved, wantNext := compare(s, set)
		slices.Sort(removed)
		slices.Sort(wantRemoved)
		if !slices.Equal(names, wantNames) || !slices.Equal(removed, wantRemoved) || !maps.Equal(next, wantNext) {
			t.Fatalf("case %d (wildcard %v, subscribed %v)\nold %v\nnew %v\ndifference: sent %v removed %v next %v\ncompare:    sent %v removed %v next %v",
				i, s.wildcard, slices.Sorted(maps.Keys(s.subscribed)), old.versionMap, set.versionMap, names, removed, next, wantNames, wantRemoved, wantNext)
		}
	}
}
