package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"errors"
	"log/slog"
	"net"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/kubernetes"

	"github.com/meshd/meshd/ca"
	"github.com/meshd/meshd/ca/rootca"
	"github.com/meshd/meshd/ca/store"
	"github.com/meshd/meshd/internal/config"
	"github.com/meshd/meshd/internal/podcert"
	"github.com/meshd/meshd/sds"
)

// credentials are meshd's CAs: the internal CA (it signs meshd's own
// serving certificate and, without --issuer-ref, every workload's) and the
// renewer workload certificates come from.
type credentials struct {
	issuer  *ca.Internal
	renewer *ca.Renewer // the internal CA's
	// workloads renews proxies' certificates: renewer, or cert-manager's.
	workloads      *ca.Renewer
	workloadIssuer string         // "" for the internal CA
	certManager    *certManagerCA // nil without --issuer-ref
	// serving is meshd's serving certificate (xDS, webhook), kept fresh by
	// waitServingCert.
	serving *atomic.Pointer[tls.Certificate]
}

func newCredentials(ctx context.Context, cfg config.Config, kube *kubeStage, reg prometheus.Registerer, log *slog.Logger) (*credentials, error) {
	metrics := ca.NewMetrics(reg)
	issuer, renewer, err := startCA(ctx, cfg, kube.client, metrics, log)
	if err != nil {
		return nil, err
	}
	c := &credentials{issuer: issuer, renewer: renewer, workloads: renewer, serving: &atomic.Pointer[tls.Certificate]{}}
	if cfg.IssuerRef != "" {
		if c.certManager, err = newCertManagerCA(cfg, kube.rc, kube.client, metrics, kube.problems, log); err != nil {
			return nil, err
		}
		c.workloads, c.workloadIssuer = c.certManager.renewer, "cert-manager "+cfg.IssuerRef
	}
	return c, nil
}

func caSecrets(cfg config.Config, client kubernetes.Interface) store.Store {
	if cfg.CADir != "" {
		return store.Files{Dir: cfg.CADir}
	}
	return store.Secrets{Client: client.CoreV1().Secrets(cfg.Namespace)}
}

func startCA(ctx context.Context, cfg config.Config, client kubernetes.Interface, metrics *ca.Metrics, log *slog.Logger) (*ca.Internal, *ca.Renewer, error) {
	root, err := rootca.LoadOrCreate(ctx, caSecrets(cfg, client), cfg.CASecret, cfg.TrustDomain, rand.Reader, time.Now())
	if err != nil {
		return nil, nil, err
	}
	issuer, err := ca.NewInternal(ca.InternalConfig{Authority: root, TTL: cfg.CertTTL, Metrics: metrics})
	if err != nil {
		return nil, nil, err
	}
	renewer, err := ca.NewRenewer(ca.RenewerConfig{Issuer: issuer, Logger: log})
	if err != nil {
		return nil, nil, err
	}
	log.Info("ca: internal CA ready", "root_serial", root.Cert.SerialNumber.Text(16), "root_expiry", root.Cert.NotAfter)
	return issuer, renewer, nil
}

// newRootFollower keeps the internal CA on the CA Secret's (or files')
// current material; the leader steps root rotations. A change re-issues
// every certificate and pushes the new bundle.
func newRootFollower(cfg config.Config, kube *kubeStage, creds *credentials, secrets *sds.Manager, lead *singletons,
	reg prometheus.Registerer, log *slog.Logger) (*rootca.Follower, error) {
	healthy := prometheus.NewGauge(prometheus.GaugeOpts{Name: "meshd_ca_secret_readable",
		Help: "1 while the CA Secret (or directory) reads as valid CA material; 0 when it is missing or corrupted (meshd keeps its CA in memory)."})
	reg.MustRegister(healthy)
	// Pod certificates live at least an hour (the apiserver's minimum) and
	// are refreshed only by the kubelet: the old root stays trusted until
	// the last one it signed has expired.
	leafTTL := cfg.CertTTL
	if kube.creds.Mode == podcert.ModePodCertificate {
		leafTTL = podcert.LongestLifetime(cfg.CertTTL)
	}
	return rootca.NewFollower(rootca.FollowConfig{Store: caSecrets(cfg, kube.client), Name: cfg.CASecret, TrustDomain: cfg.TrustDomain,
		Signer: creds.issuer, Rand: rand.Reader, LeafTTL: leafTTL, Grace: cfg.RootRotationGrace,
		Every: min(30*time.Second, cfg.RootRotationGrace/3), IsLeader: lead.IsLeader,
		Reissue: func() { creds.renewer.Reissue(); secrets.BundleChanged() },
		Healthy: func(ok bool) {
			if ok {
				healthy.Set(1)
			} else {
				healthy.Set(0)
			}
		}, Logger: log})
}

// meshdIdentity is the SPIFFE identity of meshd's own serving certificate.
func meshdIdentity(cfg config.Config) ca.Identity {
	return ca.Identity{TrustDomain: cfg.TrustDomain, Namespace: cfg.Namespace, ServiceAccount: "meshd"}
}

// waitServingCert starts keeping meshd's serving certificate fresh and waits
// for the first one.
func waitServingCert(ctx context.Context, cfg config.Config, renewer *ca.Renewer, serving *atomic.Pointer[tls.Certificate]) error {
	host, _, _ := net.SplitHostPort(cfg.XDSAddr)
	names := []string{"meshd." + cfg.Namespace + ".svc", "meshd." + cfg.Namespace + ".svc.cluster.local", "localhost", "127.0.0.1"}
	if host != "" && host != "0.0.0.0" && host != "::" {
		names = append(names, host)
	}
	first := make(chan struct{})
	var once bool
	renewer.Watch(ctx, "meshd-serving", ca.Request{Identity: meshdIdentity(cfg), DNSNames: names, CommonName: "meshd"}, func(c *ca.Certificate) {
		kp, err := tls.X509KeyPair(c.ChainPEM, c.KeyPEM)
		if err != nil {
			return
		}
		serving.Store(&kp)
		if !once {
			once = true
			close(first)
		}
	})
	select {
	case <-first:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(30 * time.Second):
		return errors.New("ca: no serving certificate within 30s")
	}
}
