// Package xds serves Envoy configuration over ADS (state-of-the-world and
// delta) with go-control-plane.
//
// Where it sits in the pipeline: the translator (later stages) puts complete,
// consistent snapshots into the Server's cache; the Server streams them to the
// sidecars. It reads nothing from Kubernetes itself.
package xds

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	discoveryv3 "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	serverv3 "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
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
}

// Server is the ADS gRPC server. Cache is where snapshots are published.
type Server struct {
	cfg   Config
	Cache cachev3.SnapshotCache
	lis   net.Listener
	grpc  *grpc.Server
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
	lis, err := net.Listen("tcp", cfg.Addr)
	if err != nil {
		return nil, fmt.Errorf("xds: listen %s: %w", cfg.Addr, err)
	}
	s := &Server{cfg: cfg, lis: lis, Cache: cachev3.NewSnapshotCache(true, cachev3.IDHash{}, nil)}
	s.grpc = grpc.NewServer(
		grpc.MaxRecvMsgSize(cfg.MaxRecvMsgSize),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 15 * time.Second, PermitWithoutStream: true}),
	)
	return s, nil
}

// Addr is the address the server listens on.
func (s *Server) Addr() net.Addr { return s.lis.Addr() }

// Start serves ADS until ctx ends, then drains for at most DrainTimeout.
func (s *Server) Start(ctx context.Context) error {
	ads := serverv3.NewServer(ctx, s.Cache, nil)
	discoveryv3.RegisterAggregatedDiscoveryServiceServer(s.grpc, ads)
	errc := make(chan error, 1)
	go func() { errc <- s.grpc.Serve(s.lis) }()
	s.cfg.Logger.Info("xds: serving ADS", "addr", s.lis.Addr().String())
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
