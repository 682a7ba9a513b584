package main

import (
	"cmp"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/meshd/meshd/bootstrap"
	"github.com/meshd/meshd/deploy"
	"github.com/meshd/meshd/internal/config"
	"github.com/meshd/meshd/internal/inject"
	"github.com/meshd/meshd/xds"
)

// injection is the sidecar injection webhook, served over TLS (meshd's
// serving certificate from the mesh CA; admission only patches pods).
type injection struct {
	addr net.Addr
	lis  net.Listener
	srv  *http.Server
}

// newInjection listens for the webhook and registers as singletons the
// writer of the sidecars' credentials Secrets (for pods that exist) and the
// reconciler of those Secrets and of the webhook's caBundle. It consumes
// the pods and the mesh model (which proxy IDs pods carry) and produces
// patched pods and Secrets.
func newInjection(ctx context.Context, cfg config.Config, st *stages, reg prometheus.Registerer, log *slog.Logger) (*injection, error) {
	initImage, proxyImage := injectedImages(ctx, cfg, st.kube.client, log)
	inj, err := inject.New(inject.Config{Client: st.kube.client, Issuer: st.creds.issuer, TrustDomain: cfg.TrustDomain, MeshdNamespace: cfg.Namespace,
		XDSAddress: cfg.SidecarXDSAddr, ClusterDomain: cfg.ClusterDomain, ProxyImage: proxyImage, InitImage: initImage, CredsDir: cfg.SidecarCredsDir,
		API: bootstrap.APIType(cfg.SidecarAPI), PodCertificateSigner: st.kube.creds.Signer, Logger: log})
	if err != nil {
		return nil, err
	}
	srv, err := webhookServer(cfg, inj, st.creds.serving, log)
	if err != nil {
		return nil, err
	}
	if err := addSecretJobs(cfg, inj, st, reg); err != nil {
		return nil, err
	}
	lis, err := net.Listen("tcp", cfg.WebhookAddr)
	if err != nil {
		return nil, fmt.Errorf("webhook: listen %s: %w", cfg.WebhookAddr, err)
	}
	log.Info("inject: webhook serving", "addr", lis.Addr().String(), "webhook_configuration", cfg.WebhookName)
	return &injection{addr: lis.Addr(), lis: lis, srv: srv}, nil
}

// webhookServer is the HTTPS server of /inject: callers checked with
// --webhook-client-ca, meshd's current serving certificate.
func webhookServer(cfg config.Config, inj *inject.Injector, serving *atomic.Pointer[tls.Certificate], log *slog.Logger) (*http.Server, error) {
	callers, err := inject.NewCallerCheck(cfg.WebhookClientCA, cfg.WebhookClientName)
	if err != nil {
		return nil, err
	}
	if callers == nil {
		log.Warn("inject: webhook callers are not authenticated: it answers anyone reaching its port (with patches only: admission writes nothing); set --webhook-client-ca to the CA of the apiserver's webhook client certificate")
	}
	mux := http.NewServeMux()
	mux.Handle("/inject", callers.Guard(inj))
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			if c := serving.Load(); c != nil {
				return c, nil
			}
			return nil, errors.New("webhook: no serving certificate yet")
		}}
	callers.Configure(tlsCfg)
	return &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, TLSConfig: tlsCfg}, nil
}

// serve runs the webhook until ctx ends (then shuts it down within 5 s).
func (i *injection) serve(ctx context.Context) error {
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = i.srv.Shutdown(shutdown)
	}()
	if err := i.srv.ServeTLS(i.lis, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("webhook: %w", err)
	}
	return nil
}

// addSecretJobs registers the singletons (only the leader writes Secrets
// and the caBundle): the Secret writer and the reconciler.
func addSecretJobs(cfg config.Config, inj *inject.Injector, st *stages, reg prometheus.Registerer) error {
	rc := inject.ReconcileConfig{
		WebhookName: cfg.WebhookName,
		Bundle:      func() []byte { return st.creds.issuer.Authority().BundlePEM },
		InUse:       func() (map[string]inject.PodRef, bool) { return proxyIDsInUse(st.xds.mesh, st.watch.published) },
	}
	written := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meshd_inject_secrets_total",
		Help: "Sidecar credentials Secrets written for pods that exist (written), writes that failed (failed, retried), and pods carrying a proxy ID that meshd writes none for (refused)."}, []string{"result"})
	if err := reg.Register(written); err != nil {
		return err
	}
	writer, err := inj.NewSecretWriter(inject.SecretWriterConfig{Pods: st.watch.pods, OnWrite: func(r string) { written.WithLabelValues(r).Inc() }})
	if err != nil {
		return err
	}
	st.lead.Add(writer.Start)
	st.lead.Add(func(ctx context.Context) error { return inj.Run(ctx, rc, 30*time.Second) })
	return nil
}

// proxyIDsInUse are the proxy IDs the published model's workloads carry
// (false before the first model is published).
func proxyIDsInUse(mesh *xds.Mesh, published *atomic.Bool) (map[string]inject.PodRef, bool) {
	snap := mesh.Snapshot()
	if snap == nil || !published.Load() {
		return nil, false
	}
	ids := map[string]inject.PodRef{}
	for _, w := range snap.Workloads {
		if w.ProxyID != "" {
			ids[w.ProxyID] = inject.PodRef{Name: w.Name, UID: types.UID(w.UID)}
		}
	}
	return ids, true
}

// injectedImages picks the images to inject: the flags, else those meshd's
// own pod runs (POD_NAME/POD_NAMESPACE from the downward API), else
// deploy/images.env's.
func injectedImages(ctx context.Context, cfg config.Config, client kubernetes.Interface, log *slog.Logger) (initImage, proxyImage string) {
	initImage, proxyImage = cfg.InitImage, cfg.ProxyImage
	source := "flags"
	if name, ns := os.Getenv("POD_NAME"), os.Getenv("POD_NAMESPACE"); (initImage == "" || proxyImage == "") && name != "" && ns != "" {
		pod, err := client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			log.Warn("inject: cannot read meshd's own pod for the images to inject; using the defaults", "pod", ns+"/"+name, "err", err)
		} else {
			fromInit, fromProxy := inject.ImagesFromPod(pod)
			initImage, proxyImage = cmp.Or(initImage, fromInit), cmp.Or(proxyImage, fromProxy)
			source = "meshd's pod " + ns + "/" + name
		}
	}
	def := deploy.DefaultImages()
	if initImage == "" || proxyImage == "" {
		source += ", defaults"
	}
	initImage, proxyImage = cmp.Or(initImage, def.Meshd), cmp.Or(proxyImage, def.Proxy)
	log.Info("inject: images", "init", initImage, "proxy", proxyImage, "from", source)
	return initImage, proxyImage
}
