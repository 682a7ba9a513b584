package main

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"golang.org/x/sync/errgroup"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshd/meshd/bootstrap"
	"github.com/meshd/meshd/ca"
	"github.com/meshd/meshd/ca/rootca"
	"github.com/meshd/meshd/ca/store"
	"github.com/meshd/meshd/internal/config"
	"github.com/meshd/meshd/internal/debug"
	"github.com/meshd/meshd/internal/inject"
	"github.com/meshd/meshd/internal/kubeauth"
	"github.com/meshd/meshd/internal/podcert"
	"github.com/meshd/meshd/k8s"
	"github.com/meshd/meshd/sds"
	"github.com/meshd/meshd/xds"
)

func newServeCmd() *cobra.Command {
	cfg := config.Default()
	cmd := &cobra.Command{
		Use:   "serve",
		Short: "Run the control plane",
		Long: `Run the control plane: watch Kubernetes (or a directory of YAML), mint
per-pod certificates, serve xDS to the sidecars, inject sidecars.`,
		Example: `  # in a cluster (deploy/base or the Helm chart run this)
  meshd serve --xds-addr=0.0.0.0:15012 --webhook-addr=0.0.0.0:15017 -n meshd-system

  # from a kubeconfig, the CA in files
  meshd serve --kubeconfig ~/.kube/config --ca-dir /tmp/meshd-ca

  # without a cluster: Kubernetes objects from YAML files
  meshd serve --local-dir ./objects --ca-dir /tmp/meshd-ca`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error { return serve(cmd.Context(), cfg, cmd.ErrOrStderr()) },
	}
	gfs := flag.NewFlagSet("serve", flag.ContinueOnError)
	cfg.RegisterFlags(gfs)
	gfs.VisitAll(func(f *flag.Flag) {
		pf := pflag.PFlagFromGoFlag(f)
		if f.Name == "namespace" {
			pf.Shorthand = "n"
		}
		cmd.Flags().AddFlag(pf)
	})
	return cmd
}

func serve(ctx context.Context, cfg config.Config, stderr io.Writer) error {
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("invalid configuration:\n%w", err)
	}
	if cfg.DebugTokenFile != "" {
		b, err := os.ReadFile(cfg.DebugTokenFile)
		if err != nil {
			return fmt.Errorf("--debug-token-file: %w", err)
		}
		if cfg.DebugToken = strings.TrimSpace(string(b)); cfg.DebugToken == "" {
			return fmt.Errorf("--debug-token-file %s is empty", cfg.DebugTokenFile)
		}
	}
	if cfg.DebugAuth == "token" {
		if err := debug.CheckExposure(cfg.DebugAddr, cfg.DebugToken); err != nil {
			return err
		}
	}
	log := newLogger(stderr)
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))

	// Kubernetes source: a cluster (client), or a directory of YAML (local;
	// then client is nil).
	client, rc, local, err := kubeClient(cfg, log)
	if err != nil {
		return err
	}
	// Authorization policies: watched through the dynamic client (from when
	// their CRD is installed); their status written back in a cluster.
	dyn, policiesServed, err := policyClient(client, rc, local)
	if err != nil {
		return err
	}
	var policyStatus *k8s.PolicyStatus
	if local == nil {
		policyStatus = k8s.NewPolicyStatus(dyn, log, nil)
	}
	problems := k8s.NewProblemReporter(ctx, client, log)
	defer problems.Shutdown()
	creds := decideCredentials(cfg, client, local != nil)
	log.Info("credentials: sidecar xDS credentials mode", "mode", string(creds.Mode), "reason", creds.Reason)
	// CA: root from the CA Secret (created once, shared by replicas), or files.
	caMetrics := ca.NewMetrics(reg)
	issuer, renewer, err := startCA(ctx, cfg, client, caMetrics, log)
	if err != nil {
		return err
	}
	// Workload certificates: the internal CA, or cert-manager (--issuer-ref).
	workloads, workloadIssuer := renewer, ""
	var cmCA *certManagerCA
	if cfg.IssuerRef != "" {
		if cmCA, err = newCertManagerCA(cfg, rc, client, caMetrics, problems, log); err != nil {
			return err
		}
		workloads, workloadIssuer = cmCA.renewer, "cert-manager "+cfg.IssuerRef
	}
	// xds: consumes the Publisher's snapshots, produces ADS streams over mTLS.
	serving := &atomic.Pointer[tls.Certificate]{}
	srv, mesh, secrets, err := newXDS(cfg, issuer, workloads, serving, creds.KeyOnNode, reg, log)
	if err != nil {
		return err
	}
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "meshd_ca_earliest_leaf_expiry_timestamp_seconds",
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
	}))
	if err := waitServingCert(ctx, cfg, renewer, serving); err != nil {
		return err
	}
	// k8s: informers -> batched state -> model (bad objects reported as
	// Events) -> mesh: translated and published to every proxy.
	var published atomic.Bool
	pods := inject.NewPods() // the pods, for the injector's Secret writer
	wcfg := k8s.Config{Client: client, Dynamic: dyn, PoliciesServed: policiesServed, HoldOff: cfg.HoldOff, MaxDelay: cfg.MaxDelay, Logger: log,
		OnState: func(ctx context.Context, st *k8s.State) {
			pods.Set(st.Pods)
			snap, probs := k8s.Convert(st, cfg.TrustDomain)
			// A connection made just before a renewal (at about two thirds
			// of a certificate's life) still ends before that certificate.
			snap.ConnectionMaxAge = cfg.CertTTL / 3
			snap.DetectionTimeout = cfg.DetectionTimeout
			if policyStatus != nil {
				policyStatus.Update(st.Policies, snap, probs)
			}
			// Translation finds its own (two services on one address):
			// reported with conversion's, as Events on the objects.
			tprobs, err := mesh.Update(ctx, snap)
			problems.Report(append(probs, tprobs...))
			if err != nil {
				log.Error("xds: publish mesh config", "error", err)
				return
			}
			published.Store(true)
			log.Info("xds: mesh config published", "services", len(snap.Services), "workloads", len(snap.Workloads), "skipped", len(probs))
		}}
	if local != nil {
		wcfg.Source = local
	}
	watcher, err := k8s.New(wcfg)
	if err != nil {
		return err
	}
	debugLis, err := net.Listen("tcp", cfg.DebugAddr)
	if err != nil {
		return fmt.Errorf("debug: listen %s: %w", cfg.DebugAddr, err)
	}
	api := &apiProbe{client: client}
	var phase atomic.Pointer[[2]string]    // root rotation phase and since, as followRoot last read them
	var webhookAddr atomic.Pointer[string] // where the injection webhook listens, once it does
	dcfg := debug.Config{Proxies: srv.Proxies, Resources: debug.Redacted(srv.Published), Gatherer: reg,
		Certs: func() []debug.CertView {
			var out []debug.CertView
			for node, c := range secrets.Certificates() {
				out = append(out, debug.NewCertView(node, c.Backend, c.Leaf))
			}
			return out
		},
		CA: func() debug.CAView {
			a := issuer.Authority()
			v := debug.CAView{Backend: "internal", WorkloadIssuer: workloadIssuer, Signing: debug.NewRootView(a.Cert), RotationPhase: "steady",
				SidecarCredentials: string(creds.Mode), SidecarCredentialsReason: creds.Reason}
			for _, r := range a.Roots {
				v.Roots = append(v.Roots, debug.NewRootView(r))
			}
			if p := phase.Load(); p != nil && p[0] != "" {
				v.RotationPhase, v.PhaseSince = p[0], p[1]
			}
			return v
		},
		Explain: func(from, to string) (any, error) { return xds.Explain(mesh.Snapshot(), srv.Proxies(), from, to) },
		Webhook: func(ctx context.Context) debug.WebhookView {
			if cfg.WebhookAddr == "" {
				return debug.WebhookView{}
			}
			addr := webhookAddr.Load()
			if addr == nil {
				return debug.WebhookView{Enabled: true, Configuration: cfg.WebhookName, Problem: "the webhook server has not started yet"}
			}
			return webhookStatus(ctx, cfg, client, issuer.Authority().BundlePEM, *addr)
		},
		Token: cfg.DebugToken, Logger: log, Ready: func() error {
			if !watcher.Synced() {
				return errors.New("informers not synced")
			}
			if !published.Load() {
				return errors.New("mesh config not yet published")
			}
			if local == nil {
				return api.reachable()
			}
			return nil
		}}
	if cfg.DebugAuth == "kubernetes" {
		dcfg.Authorize = kubeauth.New(client, 0, nil).Authorize
	}
	handler := debug.Handler(dcfg)
	log.Info("meshd serving", "xds", srv.Addr().String(), "debug", debugLis.Addr().String(), "trust_domain", cfg.TrustDomain)

	g, ctx := errgroup.WithContext(ctx)
	g.Go(func() error { return srv.Start(ctx) })
	if cmCA != nil {
		g.Go(func() error { return cmCA.run(ctx) })
	}
	g.Go(func() error { return watcher.Start(ctx) })
	if policyStatus != nil {
		g.Go(func() error { return policyStatus.Start(ctx) })
	}
	g.Go(func() error { return debug.Serve(ctx, debugLis, handler) })
	if cfg.HealthAddr != "" {
		healthLis, err := net.Listen("tcp", cfg.HealthAddr)
		if err != nil {
			return fmt.Errorf("health: listen %s: %w", cfg.HealthAddr, err)
		}
		g.Go(func() error { return debug.Serve(ctx, healthLis, debug.HealthHandler(dcfg)) })
	}
	// ca: the CA Secret (or files) -> root rotation steps, authority swaps.
	every := min(30*time.Second, cfg.RootRotationGrace/3)
	// leader: singletons under a Lease (always this replica without a cluster).
	var electionClient kubernetes.Interface
	if local == nil {
		electionClient = client
	}
	lead := newSingletons(electionClient, cfg.Namespace, cfg.LeaseDuration, reg, log)
	caHealthy := prometheus.NewGauge(prometheus.GaugeOpts{Name: "meshd_ca_secret_readable",
		Help: "1 while the CA Secret (or directory) reads as valid CA material; 0 when it is missing or corrupted (meshd keeps its CA in memory)."})
	reg.MustRegister(caHealthy)
	g.Go(func() error {
		// Pod certificates live at least an hour (the apiserver's minimum)
		// and are refreshed only by the kubelet: the old root stays trusted
		// until the last one it signed has expired.
		leafTTL := cfg.CertTTL
		if creds.Mode == podcert.ModePodCertificate {
			leafTTL = podcert.LongestLifetime(cfg.CertTTL)
		}
		reissue := func() { renewer.Reissue(); secrets.BundleChanged() }
		return followRoot(ctx, cfg, leafTTL, caSecrets(cfg, client), issuer, reissue, every, lead.IsLeader, &phase, caHealthy, log)
	})
	// podcert: PodCertificateRequests -> answers signed by the internal CA;
	// its bundle -> a ClusterTrustBundle (leader, when the cluster has them).
	if creds.Mode == podcert.ModePodCertificate {
		if err := startPodCertificates(lead, cfg, client, issuer, reg, log); err != nil {
			return err
		}
	}
	// inject: pods -> sidecars + credentials (podCertificate volumes, or
	// Secrets written once the pods exist; cluster mode, if enabled).
	if cfg.WebhookAddr != "" {
		addr, err := startInjection(ctx, g, lead, cfg, client, issuer, serving, mesh, &published, pods, creds.Signer, reg, log)
		if err != nil {
			return err
		}
		a := addr.String()
		webhookAddr.Store(&a)
	}
	g.Go(func() error { return lead.Run(ctx) })
	return g.Wait()
}

func kubeClient(cfg config.Config, log *slog.Logger) (kubernetes.Interface, *rest.Config, *k8s.LocalDir, error) {
	if cfg.LocalDir != "" {
		local, err := k8s.NewLocalDir(cfg.LocalDir, time.Second, log)
		if err != nil {
			return nil, nil, nil, err
		}
		return nil, nil, local, nil
	}
	var rc *rest.Config
	var err error
	if cfg.Kubeconfig != "" {
		rc, err = clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
	} else {
		rc, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, nil, nil, fmt.Errorf("kubernetes client: %w (use --kubeconfig, or --local-dir without a cluster)", err)
	}
	client, err := kubernetes.NewForConfig(rc)
	return client, rc, nil, err
}

// policyClient is where AuthorizationPolicies are read in a cluster, with
// how to tell whether their CRD is installed there (a local dir serves them
// itself: nil).
func policyClient(client kubernetes.Interface, rc *rest.Config, local *k8s.LocalDir) (dynamic.Interface, func() (bool, error), error) {
	if local != nil {
		return nil, nil, nil
	}
	dyn, err := dynamic.NewForConfig(rc)
	return dyn, func() (bool, error) { return k8s.PolicyAPIServed(client.Discovery()) }, err
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

// newXDS assembles the ADS server: TLS from the mesh CA (serving certificate
// kept fresh by the renewer, client certificates checked against the current
// bundle), the Publisher, and the SDS manager between streams and secrets.
func newXDS(cfg config.Config, issuer *ca.Internal, workloads *ca.Renewer, serving *atomic.Pointer[tls.Certificate], keyOnNode bool, reg prometheus.Registerer, log *slog.Logger) (*xds.Server, *xds.Mesh, *sds.Manager, error) {
	// TLS 1.3 only: sidecars' client certificates travel encrypted.
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS13, NextProtos: []string{"h2"},
		GetConfigForClient: func(*tls.ClientHelloInfo) (*tls.Config, error) {
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(issuer.Authority().BundlePEM) {
				return nil, errors.New("xds: empty trust bundle")
			}
			c := serving.Load()
			if c == nil {
				return nil, errors.New("xds: no serving certificate yet")
			}
			return &tls.Config{MinVersion: tls.VersionTLS13, NextProtos: []string{"h2"}, Certificates: []tls.Certificate{*c},
				ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert}, nil
		}}
	hooks := &xds.ProxyHooks{}
	var mesh *xds.Mesh
	// Injected sidecars' certificates are bound to a proxy ID on their pod.
	resolve := func(nodeID string) (xds.BoundPod, bool) {
		w := mesh.Snapshot().Workload(nodeID)
		if w == nil {
			return xds.BoundPod{}, false
		}
		return xds.BoundPod{ProxyID: w.ProxyID, UID: w.UID}, true
	}
	srv, err := xds.New(xds.Config{Addr: cfg.XDSAddr, TLS: tlsCfg, Hooks: hooks, Registerer: reg, Logger: log, ResolveProxy: resolve, TrustDomain: cfg.TrustDomain})
	if err != nil {
		return nil, nil, nil, err
	}
	pub := xds.NewPublisher(srv.Cache)
	if err := pub.RegisterMetrics(reg); err != nil {
		return nil, nil, nil, err
	}
	// Sidecars with a podCertificate volume use its files for mTLS when the
	// key stays on the node (--pod-certificates workload).
	onNode := sds.NodeFiles{Chain: path.Join(cfg.SidecarCredsDir, bootstrap.FileCertChain), Key: path.Join(cfg.SidecarCredsDir, bootstrap.FileKey)}
	mgr, err := sds.New(sds.Config{Renewer: workloads, Logger: log, NodeFiles: onNode, Bundle: func() []byte { return issuer.Authority().BundlePEM },
		OnSecrets: func(node string, secrets []*tlsv3.Secret) {
			res := make([]types.Resource, len(secrets))
			for i, s := range secrets {
				res[i] = s
			}
			if err := pub.SetProxy(context.Background(), node, xds.Resources{resourcev3.SecretType: res}); err != nil {
				log.Error("xds: publish secrets", "proxy", node, "error", err)
			}
		}})
	if err != nil {
		return nil, nil, nil, err
	}
	mesh = xds.NewMesh(pub, log)
	hooks.Secrets, hooks.Publisher, hooks.Mesh, hooks.KeyOnNode = mgr, pub, mesh, keyOnNode
	return srv, mesh, mgr, nil
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

// apiProbe reports whether the apiserver answers /readyz (checked at most
// every 2 s). While it does not, meshd keeps serving the last config and
// issuing certificates, but reports not ready for new config.
type apiProbe struct {
	client kubernetes.Interface
	mu     sync.Mutex
	at     time.Time
	err    error
}

func (p *apiProbe) reachable() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if time.Since(p.at) < 2*time.Second {
		return p.err
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	p.err = nil
	if err := p.client.Discovery().RESTClient().Get().AbsPath("/readyz").Do(ctx).Error(); err != nil {
		p.err = fmt.Errorf("kubernetes API unreachable (serving the last config): %w", err)
	}
	p.at = time.Now()
	return p.err
}
