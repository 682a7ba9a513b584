// Package xds serves Envoy configuration over ADS (state-of-the-world and
// delta) with go-control-plane: the gRPC server (server.go), stream
// authentication and binding to pods (auth.go), per-client limits
// (limits.go, conncap.go, subscriptions.go), the callbacks that check every
// request and record what each stream was sent, ACKed and NACKed
// (callbacks.go, state.go: the proxy status of the debug API), the hooks
// that prepare a proxy's configuration when it connects (hooks.go), the
// Mesh that takes each model through translation to publication (mesh.go),
// and explain.
//
// Where it sits in the pipeline: the Mesh hands the model to xds/translate
// and the translated resources to xds/publish, which sets complete,
// consistent snapshots (xds/resource) in xds/cache; the Server streams them
// from that cache to the sidecars. Its sub-packages must not import it. It
// reads nothing from Kubernetes itself.
package xds

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	secretv3 "github.com/envoyproxy/go-control-plane/envoy/service/secret/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	sotwv3 "github.com/envoyproxy/go-control-plane/pkg/server/sotw/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"k8s.io/utils/clock"

	"github.com/meshd/meshd/xds/cache"
	"github.com/meshd/meshd/xds/resource"
)

// Config configures a Server.
type Config struct {
	// Addr is the listen address; "127.0.0.1:0" picks a free port.
	Addr string
	// Logger defaults to slog.Default().
	Logger *slog.Logger
	// MaxRecvMsgSize bounds one request (default 4 MiB).
	MaxRecvMsgSize int
	// DrainTimeout bounds graceful shutdown before streams are cut (default 5s).
	DrainTimeout time.Duration
	// TLS is the server's TLS configuration. It must require and verify client
	// certificates against the mesh bundle (tls.RequireAndVerifyClientCert);
	// use GetConfigForClient to follow rotations. Required.
	TLS *tls.Config
	// Hooks are told about proxies connecting and leaving (may be nil).
	Hooks Hooks
	// TrustDomain, if set, is the only trust domain whose client
	// certificates get a stream (a certificate of another domain signed by
	// a CA in the bundle is refused).
	TrustDomain string
	// Registerer receives the server's metrics (may be nil).
	Registerer prometheus.Registerer
	// Clock is the clock of the streams' state (default: the real clock).
	Clock clock.PassiveClock
	// ResolveProxy binds streams of injected sidecars (proxy-ID client
	// certificates) to their pods; nil refuses such certificates.
	ResolveProxy ProxyResolver
	// Limits bound each client (zero values: defaults).
	Limits Limits
	// Cache, if set, is the cache the server answers from; nil: the server
	// makes its own.
	Cache *cache.Cache
}

// Server is the ADS gRPC server. Cache is where snapshots are published,
// keyed by node ID; a stream only ever sees the snapshot of the node ID its
// client certificate is bound to.
type Server struct {
	cfg     Config
	Cache   *cache.Cache
	lis     net.Listener
	grpc    *grpc.Server
	streams *streams
	metrics *metrics
}

// New listens on cfg.Addr and prepares the gRPC server; Start serves.
func New(cfg Config) (*Server, error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.MaxRecvMsgSize == 0 {
		cfg.MaxRecvMsgSize = 4 << 20
	}
	if cfg.DrainTimeout == 0 {
		cfg.DrainTimeout = 5 * time.Second
	}
	if cfg.TLS == nil {
		return nil, errors.New("xds: a TLS configuration is required: proxies are identified by their client certificates")
	}
	if cfg.TLS.ClientAuth != tls.RequireAndVerifyClientCert && cfg.TLS.GetConfigForClient == nil {
		return nil, errors.New("xds: TLS must require and verify client certificates")
	}
	if err := cfg.Limits.Validate(); err != nil {
		return nil, fmt.Errorf("xds: limits: %w", err)
	}
	cfg.Limits.setDefaults()
	lis, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("xds: listen %s: %w", cfg.Addr, err)
	}
	if cfg.Cache == nil {
		cfg.Cache = cache.New(cfg.Logger)
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	s := &Server{cfg: cfg, lis: lis, Cache: cfg.Cache, streams: newStreams(cfg.Clock), metrics: newMetrics(cfg.Registerer)}
	lim := newLimiter(cfg.Limits, func(reason string) { s.metrics.limited.WithLabelValues(reason).Inc() })
	s.grpc = grpc.NewServer(
		grpc.Creds(newConnCap(credentials.NewTLS(cfg.TLS), cfg.Limits, cfg.Logger, lim.limited)),
		grpc.MaxRecvMsgSize(cfg.MaxRecvMsgSize),
		grpc.MaxConcurrentStreams(cfg.Limits.StreamsPerConnection),
		grpc.ConnectionTimeout(cfg.Limits.HandshakeTimeout),
		// No read buffer of gRPC's own: crypto/tls decrypts each record
		// into its connection's buffer, and gRPC's framer reads from that
		// (a second buffer was 8 KB per connection, 80 MB at 10,000
		// proxies). grpc-go releases write buffers after each flush.
		grpc.ReadBufferSize(0),
		// Fixed flow-control windows, as Envoy's own: grpc-go's dynamic
		// ones send a ping (bandwidth-delay estimate) on the first data
		// after each quiet spell, that is after nearly every ACK, and read
		// its answer: two more frames, each a TLS record and a system call,
		// per proxy per change.
		grpc.StaticStreamWindowSize(recvWindow),
		grpc.StaticConnWindowSize(recvWindow),
		grpc.ForceServerCodecV2(unpooledCodec{}),
		grpc.StreamInterceptor(lim.intercept),
		// No pings of meshd's own: a client is judged alive by its kernel
		// (see watchPeer). Envoy's pings are answered.
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: noPings}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: cfg.Limits.MinPingInterval, PermitWithoutStream: true}),
	)
	return s, nil
}

// recvWindow is how much a proxy may send on a stream before meshd has
// read it (grpc-go opens it further for one request up to MaxRecvMsgSize;
// the connection's window is handed back as data arrives, so a connection
// holds at most StreamsPerConnection times that). A SotW ACK naming 1,000
// resources is ~40 KB: a window update goes out every six or seven of them
// (at a quarter of the window), for the stream and for the connection.
// grpc-go's dynamic windows grew to 16 MiB.
const recvWindow = 1 << 20

// noPings is grpc-go's "infinity": its server sends no keepalive pings.
const noPings = time.Duration(math.MaxInt64)

// Addr is the address the server listens on.
func (s *Server) Addr() net.Addr { return s.lis.Addr() }

// Proxies returns the state of every open stream (copies).
func (s *Server) Proxies() []ProxyStatus { return s.streams.status() }

// Start serves ADS until ctx ends, then drains for at most DrainTimeout.
func (s *Server) Start(ctx context.Context) error {
	cb := &callbacks{log: s.cfg.Logger, streams: s.streams, hooks: s.cfg.Hooks, ctx: ctx, metrics: s.metrics, resolve: s.cfg.ResolveProxy, trustDomain: s.cfg.TrustDomain,
		cache: s.Cache, snapshot: s.Cache.GetSnapshot}
	s.Cache.OnInSync(cb.inSync)
	// Ordered ADS: a SotW stream's responses of every type go through one
	// queue, sent in the order the cache answers them (ADS order), instead
	// of a select over a channel per type rebuilt on every request (a
	// reflect.Select, 9% of meshd's CPU while 1,000 SotW proxies took
	// endpoint changes). The queue has room for one response per type
	// go-control-plane knows; a stream has at most one watch, so at most
	// one response, per type meshd serves (others are refused: served).
	ads := serverv3.NewServer(ctx, s.Cache, cb, sotwv3.WithOrderedADS())
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(s.grpc, ads)
	secretv3.RegisterSecretDiscoveryServiceServer(s.grpc, ads)
	errc := make(chan error, 1)
	go func() { errc <- s.grpc.Serve(s.lis) }()
	s.cfg.Logger.Info("xds: serving ADS", "addr", s.lis.Addr().String(), "limits", fmt.Sprintf("%+v", s.cfg.Limits))
	select {
	case err := <-errc:
		return fmt.Errorf("xds: serve: %w", err)
	case <-ctx.Done():
	}
	stopped := make(chan struct{})
	go func() { s.grpc.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-time.After(s.cfg.DrainTimeout):
		s.grpc.Stop()
	}
	if err := <-errc; err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return fmt.Errorf("xds: serve: %w", err)
	}
	return nil
}

// Published returns what the cache holds for a node, by type URL. Secrets
// are returned as published, keys included: callers that show them must
// redact (sds.Redact).
func (s *Server) Published(nodeID string) (map[string][]types.Resource, bool) {
	snap, err := s.Cache.GetSnapshot(nodeID)
	if err != nil {
		return nil, false
	}
	out := map[string][]types.Resource{}
	for _, t := range resource.Types() {
		for _, r := range snap.GetResources(t) {
			out[t] = append(out[t], r)
		}
	}
	return out, true
}
