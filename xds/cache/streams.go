package cache

import (
	"sync"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
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
// A request of no stream noted (the cache used without that server) gets
// a fresh record: nothing is known of what its stream holds, and
// everything it subscribes to is sent.

// heldStreams is what every noted stream holds, by type: *sotwHeld for
// SotW streams, *deltaHeld for delta ones. Safe for concurrent use.
type heldStreams struct {
	mu   sync.Mutex
	byID map[int64]*heldStream
	// reqs maps each stream's latest request to the stream.
	reqs map[any]int64
}

// heldStream is one stream's records and its latest request (either kind).
type heldStream struct {
	held    map[string]any
	lastReq any
}

func newHeldStreams() heldStreams {
	return heldStreams{byID: map[int64]*heldStream{}, reqs: map[any]int64{}}
}

// NoteRequest records a SotW stream's latest request: the next watch made
// for it belongs to that stream.
func (c *Cache) NoteRequest(stream int64, req *discoveryv3.DiscoveryRequest) {
	c.held.note(stream, req)
}

// NoteDeltaRequest records a delta stream's latest request: the next delta
// watch made for it belongs to that stream.
func (c *Cache) NoteDeltaRequest(stream int64, req *discoveryv3.DeltaDiscoveryRequest) {
	c.held.note(stream, req)
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

func (hs *heldStreams) note(id int64, req any) {
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
	s.lastReq = req
	hs.reqs[req] = id
}

// heldOf returns what the stream whose latest request is req holds of a
// type (made empty on first use: *sotwHeld for SotW requests, *deltaHeld
// for delta ones), or a fresh record for a request of no stream noted
// (nothing known).
func heldOf[H sotwHeld | deltaHeld](c *Cache, req any, typeURL string) *H {
	hs := &c.held
	hs.mu.Lock()
	defer hs.mu.Unlock()
	id, ok := hs.reqs[req]
	if !ok {
		return new(H)
	}
	s := hs.byID[id]
	if s.held == nil {
		s.held = map[string]any{}
	}
	h, ok := s.held[typeURL].(*H)
	if !ok {
		h = new(H)
		if d, delta := any(h).(*deltaHeld); delta {
			d.stream = id
		}
		s.held[typeURL] = h
	}
	return h
}
