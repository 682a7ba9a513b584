package k8s

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/meshd/meshd/internal/vec"
)

// TestKeptFollowsEvents: a kind's list kept from informer events (adds,
// updates, resyncs, deletes, tombstones) holds exactly the objects the
// events leave, an update stays in its object's place, and a list handed
// on is never edited by the events after it.
func TestKeptFollowsEvents(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 7))
	var k kept[*corev1.Pod]
	notified := 0
	h := k.handler(func() { notified++ })
	want := map[string]*corev1.Pod{}
	type handed struct {
		list vec.Vec[*corev1.Pod]
		copy []*corev1.Pod
	}
	var out []handed
	for step := range 5000 {
		key := fmt.Sprintf("p%d", r.IntN(40))
		ns := []string{"a", "b"}[r.IntN(2)]
		name := ns + "/" + key
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: key}}
		old := want[name]
		var before []*corev1.Pod
		if old != nil {
			before = k.listNow()
		}
		switch r.IntN(6) {
		case 0, 1:
			if old == nil {
				h.OnAdd(pod, false)
			} else {
				h.OnUpdate(old, pod)
				i := slices.Index(before, old)
				if k.listNow()[i] != pod {
					t.Fatalf("step %d: %s updated at place %d, not in its place", step, name, i)
				}
			}
			want[name] = pod
		case 2:
			if old != nil {
				h.OnUpdate(old, old) // a resync
			}
		case 3:
			if old != nil {
				i, last := slices.Index(before, old), before[len(before)-1]
				h.OnDelete(old)
				delete(want, name)
				if last != old && k.listNow()[i] != last {
					t.Fatalf("step %d: %s deleted at place %d, the last object not moved into it", step, name, i)
				}
			} else {
				h.OnDelete(pod) // a name never added: nothing happens
			}
		case 4:
			if old != nil { // deleted while the watch was down
				h.OnDelete(cache.DeletedFinalStateUnknown{Key: name, Obj: old})
				delete(want, name)
			}
		case 5:
			list := k.get()
			out = append(out, handed{list, list.Slice()})
		}
		got := map[string]*corev1.Pod{}
		for _, p := range k.listNow() {
			if got[keyOf(p)] != nil {
				t.Fatalf("step %d: %s twice in the list", step, keyOf(p))
			}
			got[keyOf(p)] = p
		}
		if len(got) != len(want) {
			t.Fatalf("step %d: %d objects kept, want %d", step, len(got), len(want))
		}
		for n, p := range want {
			if got[n] != p {
				t.Fatalf("step %d: %s is not the last object its events left", step, n)
			}
			if k.listNow()[k.pos[n]] != p {
				t.Fatalf("step %d: %s's place is wrong", step, n)
			}
		}
	}
	for i, h := range out {
		if !slices.Equal(h.list.Slice(), h.copy) {
			t.Fatalf("list %d handed on was edited by later events", i)
		}
	}
	if notified == 0 || len(out) == 0 {
		t.Fatalf("%d notifications, %d lists handed on: the test tested nothing", notified, len(out))
	}
}

// TestKeptIgnoresOtherKinds: an object of another kind (no informer of
// this kind hands one on) is not kept, and its deletion removes nothing.
func TestKeptIgnoresOtherKinds(t *testing.T) {
	var k kept[*corev1.Pod]
	h := k.handler(func() {})
	h.OnAdd(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "a"}}, false)
	h.OnAdd(&corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "b"}}, false)
	h.OnDelete(&corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "a"}})
	h.OnDelete("junk")
	if l := k.get().Slice(); len(l) != 1 || l[0].Name != "a" {
		t.Fatalf("kept %v, want pod x/a alone", l)
	}
}

// TestKeptTombstoneByKey: a tombstone without its object removes by key,
// for namespaced and cluster-scoped objects alike.
func TestKeptTombstoneByKey(t *testing.T) {
	var k kept[*corev1.Namespace]
	h := k.handler(func() {})
	h.OnAdd(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "a"}}, false)
	h.OnAdd(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "b"}}, false)
	h.OnDelete(cache.DeletedFinalStateUnknown{Key: "a"})
	if l := k.get().Slice(); len(l) != 1 || l[0].Name != "b" {
		t.Fatalf("after a's tombstone: %v", l)
	}
	var p kept[*corev1.Pod]
	ph := p.handler(func() {})
	ph.OnAdd(&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "x", Name: "a"}}, false)
	ph.OnDelete(cache.DeletedFinalStateUnknown{Key: "x/a"})
	if l := p.get().Slice(); len(l) != 0 {
		t.Fatalf("after x/a's tombstone: %v", l)
	}
}

// listNow is k's list with the changes since it was last handed on, as a
// slice (for the tests: the list is not handed on).
func (k *kept[T]) listNow() []T {
	if k.patch != nil {
		return k.patch.Vec().Slice()
	}
	return k.list.Slice()
}
