package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshd/meshd/internal/config"
	"github.com/meshd/meshd/internal/debug"
	"github.com/meshd/meshd/internal/inject"
	"github.com/meshd/meshd/internal/kubeauth"
	"github.com/meshd/meshd/k8s"
	"github.com/meshd/meshd/xds"
)

// newDebug listens for the operator API (and, with --health-addr, the
// probes and metrics alone) and returns the servers as runners. It reads
// every stage; inj is nil without the webhook.
func newDebug(cfg config.Config, st *stages, inj *injection, reg *prometheus.Registry, log *slog.Logger) ([]runner, error) {
	dcfg := debugConfig(cfg, st, inj, reg, log)
	if cfg.DebugAuth == "kubernetes" {
		dcfg.Authorize = kubeauth.New(st.kube.client, 0, nil).Authorize
	}
	lis, err := net.Listen("tcp", cfg.DebugAddr)
	if err != nil {
		return nil, fmt.Errorf("debug: listen %s: %w", cfg.DebugAddr, err)
	}
	handler := debug.Handler(dcfg)
	runners := []runner{func(ctx context.Context) error { return debug.Serve(ctx, lis, handler) }}
	if cfg.HealthAddr != "" {
		healthLis, err := net.Listen("tcp", cfg.HealthAddr)
		if err != nil {
			lis.Close()
			return nil, fmt.Errorf("health: listen %s: %w", cfg.HealthAddr, err)
		}
		runners = append(runners, func(ctx context.Context) error { return debug.Serve(ctx, healthLis, debug.HealthHandler(dcfg)) })
	}
	log.Info("meshd serving", "xds", st.xds.srv.Addr().String(), "debug", lis.Addr().String(), "trust_domain", cfg.TrustDomain)
	return runners, nil
}

func debugConfig(cfg config.Config, st *stages, inj *injection, reg *prometheus.Registry, log *slog.Logger) debug.Config {
	srv, mesh := st.xds.srv, st.xds.mesh
	dcfg := debug.Config{Proxies: srv.Proxies, Resources: debug.Redacted(srv.Published), Gatherer: reg,
		Certs: func() []debug.CertView {
			var out []debug.CertView
			for node, c := range st.xds.secrets.Certificates() {
				out = append(out, debug.NewCertView(node, c.Backend, c.Leaf))
			}
			return out
		},
		CA:      func() debug.CAView { return caView(st) },
		Explain: func(from, to string) (any, error) { return xds.Explain(mesh.Snapshot(), srv.Proxies(), from, to) },
		Webhook: func(ctx context.Context) debug.WebhookView {
			if inj == nil {
				return debug.WebhookView{}
			}
			return inject.WebhookStatus(ctx, inject.StatusConfig{Client: st.kube.client, WebhookName: cfg.WebhookName, Namespace: cfg.Namespace,
				ClientCA: cfg.WebhookClientCA, ClientName: cfg.WebhookClientName}, st.creds.issuer.Authority().BundlePEM, inj.addr.String())
		},
		Token: cfg.DebugToken, Logger: log, Ready: readiness(st)}
	return dcfg
}

// caView is the CA as the debug API shows it.
func caView(st *stages) debug.CAView {
	a := st.creds.issuer.Authority()
	v := debug.CAView{Backend: "internal", WorkloadIssuer: st.creds.workloadIssuer, Signing: debug.NewRootView(a.Cert), RotationPhase: "steady",
		SidecarCredentials: string(st.kube.creds.Mode), SidecarCredentialsReason: st.kube.creds.Reason}
	for _, r := range a.Roots {
		v.Roots = append(v.Roots, debug.NewRootView(r))
	}
	if phase, since := st.root.Phase(); phase != "" {
		v.RotationPhase, v.PhaseSince = phase, since
	}
	return v
}

// readiness: the informers synced, a mesh config published, and (in a
// cluster) the apiserver reachable.
func readiness(st *stages) func() error {
	var api *k8s.APIProbe
	if st.kube.local == nil {
		api = k8s.NewAPIProbe(st.kube.client)
	}
	return func() error {
		if !st.watch.watcher.Synced() {
			return errors.New("informers not synced")
		}
		if !st.watch.published.Load() {
			return errors.New("mesh config not yet published")
		}
		if api != nil {
			return api.Reachable()
		}
		return nil
	}
}
