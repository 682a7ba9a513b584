package inject

import (
	"testing"

	corev1 "k8s.io/api/core/v1"

	"github.com/meshd/meshd/internal/vec"
)

// The same list of pods again is no change for the Secret writer; a new
// list, even of the same pods, is.
func TestPodsSetSameList(t *testing.T) {
	p := NewPods()
	changed := func() bool {
		select {
		case <-p.changed:
			return true
		default:
			return false
		}
	}
	pods := []*corev1.Pod{{}, {}}
	list := vec.Of(pods)
	p.Set(list)
	if !changed() {
		t.Fatal("the first pods were no change")
	}
	p.Set(list)
	if changed() {
		t.Error("the same list again was a change")
	}
	p.Set(vec.Of(append([]*corev1.Pod(nil), pods...)))
	if !changed() {
		t.Error("a new list was no change")
	}
}
