package xds

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc/credentials"
)

// connCap wraps the server's TLS credentials to bound the connections one
// client identity holds open (idle or not): each costs buffers and a slot
// in the kernel, and a client needs one, a few during a reconnect. A
// connection beyond the cap is closed right after its handshake.
type connCap struct {
	credentials.TransportCredentials
	max         int
	peerTimeout time.Duration
	log         *slog.Logger
	watchFailed sync.Once
	limited     func(reason string)

	mu   sync.Mutex
	open map[string]int
}

func newConnCap(inner credentials.TransportCredentials, limits Limits, log *slog.Logger, limited func(string)) *connCap {
	return &connCap{TransportCredentials: inner, max: limits.ConnectionsPerIdentity, peerTimeout: limits.PeerTimeout,
		log: log, limited: limited, open: map[string]int{}}
}

// ServerHandshake has the kernel watch the peer (watchPeer), runs the TLS
// handshake (reading through a recordConn), then counts the connection
// against its client certificate's identity until it closes.
func (c *connCap) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	if err := watchPeer(raw, c.peerTimeout); err != nil {
		// Served all the same: a dead peer is then found only when a
		// write fails.
		c.watchFailed.Do(func() {
			c.log.Warn("xds: the kernel cannot watch client connections; dead clients are found late", "err", err)
		})
	}
	conn, info, err := c.TransportCredentials.ServerHandshake(newRecordConn(raw))
	if err != nil {
		return conn, info, err
	}
	tlsInfo, ok := info.(credentials.TLSInfo)
	chains := tlsInfo.State.VerifiedChains
	if !ok || len(chains) == 0 || len(chains[0]) == 0 {
		return conn, info, nil // no identity: streams are refused later
	}
	p, err := peerFromCert(chains[0][0])
	if err != nil {
		return conn, info, nil
	}
	key := p.limitKey()
	c.mu.Lock()
	if c.open[key] >= c.max {
		c.mu.Unlock()
		c.limited("connections_per_identity")
		conn.Close()
		return nil, nil, fmt.Errorf("xds: %s already holds %d connections (the limit)", key, c.max)
	}
	c.open[key]++
	c.mu.Unlock()
	return &countedConn{Conn: conn, release: func() {
		c.mu.Lock()
		defer c.mu.Unlock()
		if c.open[key]--; c.open[key] <= 0 {
			delete(c.open, key)
		}
	}}, info, nil
}

// Clone keeps the cap shared by the clones gRPC makes.
func (c *connCap) Clone() credentials.TransportCredentials { return c }

// ClientHandshake is not used by a server.
func (c *connCap) ClientHandshake(ctx context.Context, authority string, raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return c.TransportCredentials.ClientHandshake(ctx, authority, raw)
}

type countedConn struct {
	net.Conn
	once    sync.Once
	release func()
}

func (c *countedConn) Close() error {
	c.once.Do(c.release)
	return c.Conn.Close()
}
