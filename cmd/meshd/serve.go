package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/meshd/meshd/internal/config"
	"github.com/meshd/meshd/xds"
)

func serve(ctx context.Context, args []string, stderr io.Writer) error {
	cfg := config.Default()
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfg.RegisterFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("invalid configuration:\n%w", err)
	}
	log := newLogger(stderr)

	// xds: consumes snapshots from the translator, produces ADS streams.
	xdsServer, err := xds.New(xds.Config{Addr: cfg.XDSAddr, Logger: log})
	if err != nil {
		return err
	}
	// debug HTTP: health and readiness probes.
	debugLis, err := net.Listen("tcp", cfg.DebugAddr)
	if err != nil {
		return fmt.Errorf("debug: listen %s: %w", cfg.DebugAddr, err)
	}
	log.Info("meshd serving", "xds", xdsServer.Addr().String(), "debug", debugLis.Addr().String())

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return xdsServer.Start(ctx) })
	g.Go(func() error { return serveDebug(ctx, debugLis) })
	return g.Wait()
}

func serveDebug(ctx context.Context, lis net.Listener) error {
	mux := http.NewServeMux()
	ok := func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") }
	mux.HandleFunc("GET /healthz", ok)
	mux.HandleFunc("GET /readyz", ok)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = srv.Shutdown(shutdown)
	}()
	if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("debug: serve: %w", err)
	}
	return nil
}
