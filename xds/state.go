package xds

import (
	"slices"
	"sync"
	"time"

	"k8s.io/utils/clock"

	"github.com/meshd/meshd/xds/resource"
)

// TypeStatus is the protocol state of one resource type on one stream.
type TypeStatus struct {
	SentVersion  string    `json:"sent_version,omitempty"`
	SentNonce    string    `json:"sent_nonce,omitempty"`
	SentAt       time.Time `json:"sent_at,omitzero"`
	AckedVersion string    `json:"acked_version,omitempty"`
	AckedNonce   string    `json:"acked_nonce,omitempty"`
	AckedAt      time.Time `json:"acked_at,omitzero"`
	Responses    int       `json:"responses"`
	NACKs        int       `json:"nacks"`
	LastNACK     *NACK     `json:"last_nack,omitempty"`
	// Subscribed lists the names the proxy asked for (empty: wildcard).
	Subscribed []string `json:"subscribed,omitempty"`
}

// NACK records a response the proxy rejected.
type NACK struct {
	Version string    `json:"version"`
	Nonce   string    `json:"nonce"`
	Error   string    `json:"error"`
	At      time.Time `json:"at"`
}

// ProxyStatus is a copy of one connected stream's state, for the debug
// endpoint and metrics.
type ProxyStatus struct {
	StreamID       int64                  `json:"stream_id"`
	NodeID         string                 `json:"node_id"`
	Identity       string                 `json:"identity"`
	ClientSerial   string                 `json:"client_cert_serial"`
	Delta          bool                   `json:"delta"`
	ConnectedSince time.Time              `json:"connected_since"`
	Types          map[string]*TypeStatus `json:"types"`
}

// stream is the live state of one stream; guarded by streams.mu.
type stream struct {
	peer      Peer
	delta     bool
	since     time.Time
	announced bool // OnConnect was called
	// types is the state of each type meshd serves, by its place in ADS
	// order (resource.Order); otherTypes any other type's.
	types      [resource.NumTypes]*TypeStatus
	otherTypes map[string]*TypeStatus
	// nonces are the versions sent with the stream's recent responses, so
	// that a NACK names the version it rejects.
	nonces sentNonces
	// unknown are the subscribed names of resources that do not exist
	// (bounded: see boundSubscriptions).
	unknown unknownNames
	// serviceType is the type URL of the stream's service ("" for ADS).
	serviceType string
	// named: a request of the stream carried the node.
	named bool
}

func (s *stream) typ(url string) *TypeStatus {
	if i := resource.Order(url); i < resource.NumTypes {
		if s.types[i] == nil {
			s.types[i] = &TypeStatus{}
		}
		return s.types[i]
	}
	ts := s.otherTypes[url]
	if ts == nil {
		if s.otherTypes == nil {
			s.otherTypes = map[string]*TypeStatus{}
		}
		ts = &TypeStatus{}
		s.otherTypes[url] = ts
	}
	return ts
}

// eachType calls f with every type the stream has a state of.
func (s *stream) eachType(f func(url string, ts *TypeStatus)) {
	for i, url := range resource.Types() {
		if s.types[i] != nil {
			f(url, s.types[i])
		}
	}
	for url, ts := range s.otherTypes {
		f(url, ts)
	}
}

// sentNonces are the type, nonce and version of a stream's last responses
// (a client answers one of the last few: one in flight per type). A ring
// searched from the newest: a response costs no allocation, where a map
// keyed by type and nonce cost two and a random eviction.
type sentNonces struct {
	ring [16]sentNonce
	next int
}

type sentNonce struct{ typeURL, nonce, version string }

func (r *sentNonces) add(typeURL, nonce, version string) {
	r.ring[r.next] = sentNonce{typeURL: typeURL, nonce: nonce, version: version}
	r.next = (r.next + 1) % len(r.ring)
}

// version is the version sent with the nonce, "" if it is not recent.
func (r *sentNonces) version(typeURL, nonce string) string {
	if nonce == "" {
		return ""
	}
	n := len(r.ring)
	for back := 1; back <= n; back++ { // newest first
		if e := &r.ring[(r.next-back+n)%n]; e.nonce == nonce && e.typeURL == typeURL {
			return e.version
		}
	}
	return ""
}

// streams holds the state of every open stream. Safe for concurrent use.
type streams struct {
	mu    sync.Mutex
	byID  map[int64]*stream
	clock clock.PassiveClock
}

func newStreams(clk clock.PassiveClock) *streams {
	return &streams{byID: map[int64]*stream{}, clock: clk}
}

func (ss *streams) open(id int64, p Peer, delta bool, serviceType string) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	ss.byID[id] = &stream{peer: p, delta: delta, serviceType: serviceType, since: ss.clock.Now()}
}

// close forgets a stream: its peer, whether it was announced to the hooks,
// and whether it was open at all.
func (ss *streams) close(id int64) (p Peer, announced, opened bool) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	s, ok := ss.byID[id]
	delete(ss.byID, id)
	if !ok {
		return Peer{}, false, false
	}
	return s.peer, s.announced, true
}

// with runs f on the stream's state under the lock.
func (ss *streams) with(id int64, f func(*stream)) bool {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	s, ok := ss.byID[id]
	if ok {
		f(s)
	}
	return ok
}

// status returns copies of every stream's state, ordered by node ID.
func (ss *streams) status() []ProxyStatus {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	out := make([]ProxyStatus, 0, len(ss.byID))
	for id, s := range ss.byID {
		ps := ProxyStatus{StreamID: id, NodeID: s.peer.NodeID, Identity: s.peer.Identity.String(), ClientSerial: s.peer.Serial,
			Delta: s.delta, ConnectedSince: s.since, Types: map[string]*TypeStatus{}}
		s.eachType(func(url string, ts *TypeStatus) {
			c := *ts
			c.Subscribed = slices.Clone(ts.Subscribed)
			if ts.LastNACK != nil {
				n := *ts.LastNACK
				c.LastNACK = &n
			}
			ps.Types[url] = &c
		})
		out = append(out, ps)
	}
	slices.SortFunc(out, func(a, b ProxyStatus) int {
		if a.NodeID != b.NodeID {
			if a.NodeID < b.NodeID {
				return -1
			}
			return 1
		}
		return int(a.StreamID - b.StreamID)
	})
	return out
}
