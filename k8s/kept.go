package k8s

import (
	"slices"
	"sync"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
)

// kept is one kind's objects as its informer's events left them, in a
// stable order: an update takes its object's place, an addition goes last,
// a deletion takes the last object into its place. A state after an
// endpoint write then hands on the slice list with one element replaced
// and the others where they were, and the Converter finds the change by
// comparing the lists place by place instead of looking every object up
// (listing from the informer's cache walks a map: every list in a new
// order). The list handed on is never edited: the next change copies it
// first (a copy of the pointers, not a walk of the cache).
//
// The events of one informer's handler come in order from one goroutine,
// so the list is the cache as of the last event handed to the handler (the
// cache itself may be ahead: that event is on its way, and brings another
// state).
type kept[T metav1.Object] struct {
	mu     sync.Mutex
	list   []T
	pos    map[string]int // by key (keyOf)
	shared bool           // list was handed on: copy it before a change
}

// handler keeps k from the informer's events and calls notify after each.
func (k *kept[T]) handler(notify func()) cache.ResourceEventHandler {
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { k.set(obj); notify() },
		UpdateFunc: func(_, obj any) { k.set(obj); notify() },
		DeleteFunc: func(obj any) { k.remove(obj); notify() },
	}
}

// get returns the list now. The caller must not edit it.
func (k *kept[T]) get() []T {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.shared = true
	return k.list
}

// keyOf is o's key as the informer's cache has it (a tombstone's).
func keyOf(o metav1.Object) string {
	if o.GetNamespace() == "" {
		return o.GetName()
	}
	return o.GetNamespace() + "/" + o.GetName()
}

// set adds obj, or puts it in the place of the object of its name.
func (k *kept[T]) set(obj any) {
	o, ok := obj.(T)
	if !ok {
		return
	}
	key := keyOf(o)
	k.mu.Lock()
	defer k.mu.Unlock()
	i, had := k.pos[key]
	if had && any(k.list[i]) == any(o) {
		return // a resync: the same object
	}
	k.own()
	if had {
		k.list[i] = o
		return
	}
	if k.pos == nil {
		k.pos = map[string]int{}
	}
	k.pos[key] = len(k.list)
	k.list = append(k.list, o)
}

// remove removes the object of obj's name (obj may be the informer's
// tombstone of an object deleted while its watch was down).
func (k *kept[T]) remove(obj any) {
	var key string
	switch o := obj.(type) {
	case cache.DeletedFinalStateUnknown:
		key = o.Key
		if m, ok := o.Obj.(T); ok {
			key = keyOf(m)
		}
	case T:
		key = keyOf(o)
	default:
		return // not of this kind
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	i, ok := k.pos[key]
	if !ok {
		return
	}
	k.own()
	last := len(k.list) - 1
	if i != last {
		k.list[i] = k.list[last]
		k.pos[keyOf(k.list[i])] = i
	}
	var zero T
	k.list[last] = zero
	k.list = k.list[:last]
	delete(k.pos, key)
}

// own makes the list k's to edit: a copy when the list was handed on.
func (k *kept[T]) own() {
	if k.shared {
		k.list = slices.Grow(slices.Clone(k.list), 1)
		k.shared = false
	}
}
