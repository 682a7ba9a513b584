package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"path"
	"sync/atomic"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshd/meshd/bootstrap"
	"github.com/meshd/meshd/ca"
	"github.com/meshd/meshd/internal/config"
	"github.com/meshd/meshd/sds"
	"github.com/meshd/meshd/xds"
	"github.com/meshd/meshd/xds/cache"
	"github.com/meshd/meshd/xds/publish"
	"github.com/meshd/meshd/xds/resource"
)

// xdsStage is the ADS server with what feeds it: the mesh (the model
// translated for every proxy) and the SDS manager (each proxy's secrets).
type xdsStage struct {
	srv     *xds.Server
	mesh    *xds.Mesh
	secrets *sds.Manager
}

// newXDS assembles the ADS server: TLS from the mesh CA (serving certificate
// kept fresh by the renewer, client certificates checked against the current
// bundle), the cache and Publisher, the SDS manager between streams and
// secrets, and the Mesh. Each is whole when made: the cache comes first, so
// the Publisher, the Mesh and the server's hooks exist before the server.
func newXDS(cfg config.Config, creds *credentials, keyOnNode bool, reg prometheus.Registerer, log *slog.Logger) (*xdsStage, error) {
	xdsCache := cache.New(log)
	pub := publish.New(xdsCache)
	if err := pub.RegisterMetrics(reg); err != nil {
		return nil, err
	}
	// Sidecars with a podCertificate volume use its files for mTLS when the
	// key stays on the node (--pod-certificates workload).
	onNode := sds.NodeFiles{Chain: path.Join(cfg.SidecarCredsDir, bootstrap.FileCertChain), Key: path.Join(cfg.SidecarCredsDir, bootstrap.FileKey)}
	mgr, err := sds.New(sds.Config{Renewer: creds.workloads, Logger: log, NodeFiles: onNode,
		Bundle: func() []byte { return creds.issuer.Authority().BundlePEM }, OnSecrets: publishSecrets(pub, log)})
	if err != nil {
		return nil, err
	}
	mesh := xds.NewMesh(pub, log)
	// Injected sidecars' certificates are bound to a proxy ID on their pod.
	resolve := func(nodeID string) (xds.BoundPod, bool) {
		w := mesh.Snapshot().Workload(nodeID)
		if w == nil {
			return xds.BoundPod{}, false
		}
		return xds.BoundPod{ProxyID: w.ProxyID, UID: w.UID}, true
	}
	hooks := &xds.ProxyHooks{Secrets: mgr, Publisher: pub, Mesh: mesh, KeyOnNode: keyOnNode}
	srv, err := xds.New(xds.Config{Addr: cfg.XDSAddr, TLS: xdsTLS(creds), Hooks: hooks, Registerer: reg, Logger: log,
		ResolveProxy: resolve, TrustDomain: cfg.TrustDomain, Cache: xdsCache, Limits: cfg.XDSLimits})
	if err != nil {
		return nil, err
	}
	reg.MustRegister(leafExpiry(mgr))
	return &xdsStage{srv: srv, mesh: mesh, secrets: mgr}, nil
}

// xdsTLS is TLS 1.3 only (sidecars' client certificates travel encrypted),
// meshd's current serving certificate, client certificates verified against
// the current bundle. One configuration serves every handshake until the
// authority or the serving certificate changes: a connection keeps the
// configuration it was accepted with, and one built per handshake cost each
// proxy its own parsed copy of the bundle and each handshake the parsing.
func xdsTLS(creds *credentials) *tls.Config {
	type built struct {
		authority *ca.Authority
		serving   *tls.Certificate
		cfg       *tls.Config
	}
	var last atomic.Pointer[built]
	return &tls.Config{MinVersion: tls.VersionTLS13, NextProtos: []string{"h2"},
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			authority, serving := creds.issuer.Authority(), creds.serving.Load()
			if b := last.Load(); b != nil && b.authority == authority && b.serving == serving {
				return b.cfg, nil
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(authority.BundlePEM) {
				return nil, errors.New("xds: empty trust bundle")
			}
			if serving == nil {
				return nil, errors.New("xds: no serving certificate yet")
			}
			cfg := &tls.Config{MinVersion: tls.VersionTLS13, NextProtos: []string{"h2"}, Certificates: []tls.Certificate{*serving},
				ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert}
			last.Store(&built{authority: authority, serving: serving, cfg: cfg})
			return cfg, nil
		}}
}

// publishSecrets publishes a proxy's secrets as SDS resources.
func publishSecrets(pub *publish.Publisher, log *slog.Logger) func(node string, secrets []*tlsv3.Secret) {
	return func(node string, secrets []*tlsv3.Secret) {
		res := make([]types.Resource, len(secrets))
		for i, s := range secrets {
			res[i] = s
		}
		if err := pub.SetProxy(context.Background(), node, resource.Resources{resourcev3.SecretType: res}); err != nil {
			log.Error("xds: publish secrets", "proxy", node, "error", err)
		}
	}
}

// leafExpiry is the expiry of the proxy certificate that expires first.
func leafExpiry(secrets *sds.Manager) prometheus.Collector {
	return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "meshd_ca_earliest_leaf_expiry_timestamp_seconds",
		Help: "Expiry (Unix time) of the proxy certificate that expires first; 0 with no proxy."}, func() float64 {
		var earliest time.Time
		for _, c := range secrets.Certificates() {
			if earliest.IsZero() || c.Leaf.NotAfter.Before(earliest) {
				earliest = c.Leaf.NotAfter
			}
		}
		if earliest.IsZero() {
			return 0
		}
		return float64(earliest.Unix())
	})
}
