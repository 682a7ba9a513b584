package xds

import (
	"errors"
	"fmt"
	"sync"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"golang.org/x/time/rate"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Limits bound what one client can take from meshd, so a misbehaving or
// compromised sidecar cannot starve the others.
type Limits struct {
	// StreamsPerIdentity bounds the open streams of one proxy identity
	// (what its client certificate is bound to: SPIFFE ID and pod or proxy
	// ID) across all its connections (default 8; a sidecar needs one, a few
	// more cover reconnect overlap).
	StreamsPerIdentity int
	// RequestsPerSecond and Burst throttle the requests read from one
	// stream (default 50/s, burst 100); a flood waits, it is not served
	// faster.
	RequestsPerSecond float64
	Burst             int
	// StreamsPerConnection bounds concurrent HTTP/2 streams on one
	// connection (default 16).
	StreamsPerConnection uint32
	// HandshakeTimeout bounds a new connection's TLS and HTTP/2 handshake
	// (default 30s; a connection that never finishes it is closed). In a
	// reconnect storm on busy nodes a handshake can take seconds: at 10s,
	// three of five runs of 10,000 load-tool sidecars connecting at
	// 1,000/s lost 29, 1 and 38 streams right after their TLS handshake;
	// at 30s, five runs lost none.
	HandshakeTimeout time.Duration
	// ConnectionsPerIdentity bounds the connections, idle or not, one
	// client identity holds open (default 16).
	ConnectionsPerIdentity int
	// PeerTimeout is how long a client's kernel may leave meshd without a
	// sign of life before its connection is closed (default 60s): no
	// acknowledgement of what meshd sent, or a receive window that stays
	// shut, or no answer to TCP keepalive probes on an idle connection
	// (see peer.go).
	PeerTimeout time.Duration
	// MinPingInterval is how often a client may ping meshd (default 10s;
	// Envoy's bootstrap pings every 30s): a client pinging more often has
	// its connection closed (grpc-go's too_many_pings).
	MinPingInterval time.Duration
}

func (l *Limits) setDefaults() {
	if l.StreamsPerIdentity == 0 {
		l.StreamsPerIdentity = 8
	}
	if l.RequestsPerSecond == 0 {
		l.RequestsPerSecond, l.Burst = 50, 100
	}
	if l.Burst == 0 {
		l.Burst = int(l.RequestsPerSecond) + 1
	}
	if l.StreamsPerConnection == 0 {
		l.StreamsPerConnection = 16
	}
	if l.HandshakeTimeout == 0 {
		l.HandshakeTimeout = 30 * time.Second
	}
	if l.ConnectionsPerIdentity == 0 {
		l.ConnectionsPerIdentity = 16
	}
	if l.PeerTimeout == 0 {
		l.PeerTimeout = time.Minute
	}
	if l.MinPingInterval == 0 {
		l.MinPingInterval = 10 * time.Second
	}
}

// DefaultLimits are the limits a zero Limits stands for.
func DefaultLimits() Limits {
	var l Limits
	l.setDefaults()
	return l
}

// Validate reports every limit that cannot work (a negative one), joined;
// zero values stand for the defaults.
func (l Limits) Validate() error {
	var errs []error
	for _, c := range []struct {
		what string
		v    int
	}{{"streams per identity", l.StreamsPerIdentity}, {"connections per identity", l.ConnectionsPerIdentity}, {"request burst", l.Burst}} {
		if c.v < 0 {
			errs = append(errs, fmt.Errorf("%s %d: must not be negative", c.what, c.v))
		}
	}
	if l.RequestsPerSecond < 0 {
		errs = append(errs, fmt.Errorf("requests per second %g: must not be negative", l.RequestsPerSecond))
	}
	for _, c := range []struct {
		what string
		d    time.Duration
	}{{"handshake timeout", l.HandshakeTimeout}, {"peer timeout", l.PeerTimeout}, {"minimum ping interval", l.MinPingInterval}} {
		if c.d < 0 {
			errs = append(errs, fmt.Errorf("%s %s: must not be negative", c.what, c.d))
		}
	}
	return errors.Join(errs...)
}

// limiter enforces Limits as a gRPC stream interceptor.
type limiter struct {
	limits  Limits
	limited func(reason string)

	mu   sync.Mutex
	open map[string]int // identity -> open streams
}

// limitKey is what the per-client limits count by: the identity a client
// certificate is bound to (SPIFFE ID and pod or proxy ID).
func (p Peer) limitKey() string { return p.Identity.String() + "|" + p.NodeID + "|" + p.ProxyID }

func newLimiter(l Limits, limited func(reason string)) *limiter {
	return &limiter{limits: l, limited: limited, open: map[string]int{}}
}

func (l *limiter) intercept(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	p, err := PeerFromContext(ss.Context())
	if err != nil {
		return err // the handler would refuse it the same way
	}
	key := p.limitKey()
	l.mu.Lock()
	if l.open[key] >= l.limits.StreamsPerIdentity {
		l.mu.Unlock()
		l.limited("streams_per_identity")
		return status.Errorf(codes.ResourceExhausted, "xds: %s (%s%s) already has %d open streams (the limit)", p.Identity, p.NodeID, p.ProxyID, l.limits.StreamsPerIdentity)
	}
	l.open[key]++
	l.mu.Unlock()
	defer func() {
		l.mu.Lock()
		if l.open[key]--; l.open[key] <= 0 {
			delete(l.open, key)
		}
		l.mu.Unlock()
	}()
	return handler(srv, &throttledStream{ServerStream: ss, rate: rate.NewLimiter(rate.Limit(l.limits.RequestsPerSecond), l.limits.Burst), limited: l.limited})
}

// throttledStream reads requests no faster than its rate, and decodes a
// SotW request's names against its previous request's (see request.go).
type throttledStream struct {
	grpc.ServerStream
	rate    *rate.Limiter
	limited func(reason string)
	prev    prevNames
}

func (s *throttledStream) RecvMsg(m any) error {
	if !s.rate.Allow() {
		s.limited("request_rate")
		if err := s.rate.Wait(s.Context()); err != nil {
			return status.FromContextError(s.Context().Err()).Err()
		}
	}
	if req, ok := m.(*discoveryv3.DiscoveryRequest); ok {
		return s.ServerStream.RecvMsg(&sotwRequest{req: req, prev: &s.prev})
	}
	return s.ServerStream.RecvMsg(m)
}
