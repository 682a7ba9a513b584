package cache

import (
	"sync"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"

	"github.com/meshd/meshd/xds/resource"
)

// What each stream holds outlives its watches (one per request), so it is
// kept by stream. go-control-plane hands the cache a request, not the
// stream it came on: the server tells the cache first. Its contract:
//   - NoteRequest (SotW) or NoteDeltaRequest is called with every request
//     of a stream before go-control-plane hands that request to the cache
//     (go-control-plane's OnStreamRequest/OnStreamDeltaRequest callbacks
//     run first, in the stream's goroutine), so CreateWatch and
//     CreateDeltaWatch find the stream by the request;
//   - StreamClosed is called once a stream has ended; what it held is
//     forgotten.
//
// Noting a request also takes its subscription out of it (the names it
// subscribes to or drops, a delta stream's initial versions): the cache
// keeps each stream's subscription itself, shared among streams (see
// subscription.go), and go-control-plane's server, reading the request
// after the callbacks, keeps empty maps. The subscription is taken in when
// go-control-plane hands the cache the request (a SotW request it ignores,
// its nonce being stale, changes nothing), so a watch answers the request
// it was made for.
//
// A request of no stream noted (the cache used without that server) gets
// a fresh record: nothing is known of what its stream holds, and
// everything it subscribes to is sent; its subscription is the one
// go-control-plane's server kept.

// heldStreams is what every noted stream holds, by type: *sotwHeld for
// SotW streams, *deltaHeld for delta ones. Safe for concurrent use.
type heldStreams struct {
	mu   sync.Mutex
	byID map[int64]*heldStream
	// reqs maps each stream's latest request to the stream.
	reqs map[any]int64
	// sets are the name sets the streams' subscriptions share.
	sets *nameSets
}

// heldStream is one stream's records and its latest request (either kind),
// with what that request asked of its subscription until it is taken in.
type heldStream struct {
	// types holds the records of the types meshd serves, by their place in
	// ADS order (resource.Order); other those of any other type.
	types   [resource.NumTypes]heldType
	other   map[string]*heldType
	lastReq any
	// asked is what lastReq asked of its subscription, until taken in
	// (pending).
	asked   asked
	pending bool
}

// heldType is what a stream holds of one type (*sotwHeld or *deltaHeld)
// and its subscription.
type heldType struct {
	held any
	sub  *subscription
}

func newHeldStreams() heldStreams {
	return heldStreams{byID: map[int64]*heldStream{}, reqs: map[any]int64{}, sets: newNameSets()}
}

// NoteRequest records a SotW stream's latest request: the next watch made
// for it belongs to that stream. It takes the request's names out of it
// (read them first).
func (c *Cache) NoteRequest(stream int64, req *discoveryv3.DiscoveryRequest) {
	c.held.note(stream, req, asked{names: req.GetResourceNames()})
	req.ResourceNames = nil
}

// NoteDeltaRequest records a delta stream's latest request: the next delta
// watch made for it belongs to that stream. It takes the names subscribed
// and unsubscribed and the initial versions out of the request (read them
// first).
func (c *Cache) NoteDeltaRequest(stream int64, req *discoveryv3.DeltaDiscoveryRequest) {
	c.held.note(stream, req, asked{delta: true, names: req.GetResourceNamesSubscribe(), dropped: req.GetResourceNamesUnsubscribe(), initial: req.GetInitialResourceVersions()})
	req.ResourceNamesSubscribe, req.ResourceNamesUnsubscribe, req.InitialResourceVersions = nil, nil, nil
}

// StreamClosed forgets what a stream held.
func (c *Cache) StreamClosed(stream int64) {
	hs := &c.held
	hs.mu.Lock()
	defer hs.mu.Unlock()
	s, ok := hs.byID[stream]
	if !ok {
		return
	}
	delete(hs.byID, stream)
	if s.lastReq != nil {
		delete(hs.reqs, s.lastReq)
	}
}

func (hs *heldStreams) note(id int64, req any, a asked) {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	s := hs.byID[id]
	if s == nil {
		s = &heldStream{}
		hs.byID[id] = s
	}
	if s.lastReq != nil {
		delete(hs.reqs, s.lastReq)
	}
	s.lastReq, s.asked, s.pending = req, a, true
	hs.reqs[req] = id
}

// heldOf returns what the stream whose latest request is req holds of a
// type (made empty on first use: *sotwHeld for SotW requests, *deltaHeld
// for delta ones), or a fresh record for a request of no stream noted
// (nothing known), with the stream's subscription after req (sub, the one
// go-control-plane's server kept, for a request of no stream noted) and
// what req asked (known false if nothing is known). slot is the type's
// place in ADS order.
func heldOf[H sotwHeld | deltaHeld](c *Cache, req any, typeURL string, slot int, sub cachev3.Subscription) (h *H, next *subscription, a asked, known bool) {
	hs := &c.held
	hs.mu.Lock()
	defer hs.mu.Unlock()
	id, ok := hs.reqs[req]
	if !ok {
		return new(H), fromServer(sub, hs.sets), asked{}, false
	}
	s := hs.byID[id]
	var t *heldType
	if slot < resource.NumTypes {
		t = &s.types[slot]
	} else {
		if s.other == nil {
			s.other = map[string]*heldType{}
		}
		if t = s.other[typeURL]; t == nil {
			t = &heldType{}
			s.other[typeURL] = t
		}
	}
	h, ok = t.held.(*H)
	if !ok {
		h = new(H)
		if d, delta := any(h).(*deltaHeld); delta {
			d.stream = id
		}
		t.held = h
	}
	if !s.pending {
		// Taken in already (a request handed to the cache twice): as it is.
		if t.sub != nil {
			return h, t.sub, asked{}, false
		}
		return h, fromServer(sub, hs.sets), asked{}, false
	}
	a = s.asked
	s.asked, s.pending = asked{}, false
	t.sub = t.sub.next(a, hs.sets)
	if d, delta := any(h).(*deltaHeld); delta && t.sub.initial != nil && d.wasSent() {
		// The initial versions count only until the stream is first sent
		// the type (as go-control-plane's server keeps them): not kept
		// for the stream's life.
		n := *t.sub
		n.initial = nil
		t.sub = &n
	}
	return h, t.sub, a, true
}
