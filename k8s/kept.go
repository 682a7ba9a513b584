package k8s

import (
	"sync"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"

	"github.com/meshd/meshd/internal/vec"
)

// kept is one kind's objects as its informer's events left them, in a
// stable order: an update takes its object's place, an addition goes last,
// a deletion takes the last object into its place. A state after an
// endpoint write then hands on the slice list with one element replaced
// and the others where they were, and the Converter finds the change by
// comparing the lists' chunks (see vec) and then the objects of the chunk
// not shared, instead of looking every object up (listing from the
// informer's cache walks a map: every list in a new order). The list
// handed on is never edited: the changes after it patch a copy of the
// chunks they touch (a chunk of 64 pointers and the list of chunks, not
// the whole list and not a walk of the cache).
//
// The events of one informer's handler come in order from one goroutine,
// so the list is the cache as of the last event handed to the handler (the
// cache itself may be ahead: that event is on its way, and brings another
// state).
type kept[T metav1.Object] struct {
	mu    sync.Mutex
	list  vec.Vec[T]     // the list handed on last (or the first)
	patch *vec.Patch[T]  // the changes since, nil if none
	pos   map[string]int // by key (keyOf), the places in the list now
}

// handler keeps k from the informer's events and calls notify after each.
func (k *kept[T]) handler(notify func()) cache.ResourceEventHandler {
	return cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { k.set(obj); notify() },
		UpdateFunc: func(_, obj any) { k.set(obj); notify() },
		DeleteFunc: func(obj any) { k.remove(obj); notify() },
	}
}

// get returns the list now.
func (k *kept[T]) get() vec.Vec[T] {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.patch != nil {
		k.list, k.patch = k.patch.Vec(), nil
	}
	return k.list
}

// now is the list with the changes since it was handed on (under mu).
func (k *kept[T]) now() *vec.Patch[T] {
	if k.patch == nil {
		k.patch = k.list.Patch()
	}
	return k.patch
}

// at is the object at place i now (under mu).
func (k *kept[T]) at(i int) T {
	if k.patch != nil {
		return k.patch.At(i)
	}
	return k.list.At(i)
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
	if had && any(k.at(i)) == any(o) {
		return // a resync: the same object
	}
	p := k.now()
	if had {
		p.Set(i, o)
		return
	}
	if k.pos == nil {
		k.pos = map[string]int{}
	}
	k.pos[key] = p.Len()
	p.Append(o)
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
	p := k.now()
	last := p.Len() - 1
	if i != last {
		moved := p.At(last)
		p.Set(i, moved)
		k.pos[keyOf(moved)] = i
	}
	p.Pop()
	delete(k.pos, key)
}
