package main

import (
	"bytes"
	"cmp"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/errgroup"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/meshd/meshd/bootstrap"
	"github.com/meshd/meshd/ca"
	"github.com/meshd/meshd/deploy"
	"github.com/meshd/meshd/internal/config"
	"github.com/meshd/meshd/internal/debug"
	"github.com/meshd/meshd/internal/inject"
	"github.com/meshd/meshd/xds"
)

// startInjection serves the sidecar injection webhook over TLS (meshd's
// serving certificate from the mesh CA; admission only patches pods), and
// runs as singletons the writer of the sidecars' credentials Secrets (for
// pods that exist) and the reconciler of those Secrets and of the
// webhook's caBundle. It consumes the pods and the mesh model (which proxy
// IDs pods carry) and produces patched pods and Secrets.
func startInjection(ctx context.Context, g *errgroup.Group, lead *singletons, cfg config.Config, client kubernetes.Interface, issuer *ca.Internal,
	serving *atomic.Pointer[tls.Certificate], mesh *xds.Mesh, published *atomic.Bool, pods *inject.Pods, podCertSigner string,
	reg prometheus.Registerer, log *slog.Logger) (net.Addr, error) {
	initImage, proxyImage := injectedImages(ctx, cfg, client, log)
	inj, err := inject.New(inject.Config{Client: client, Issuer: issuer, TrustDomain: cfg.TrustDomain, MeshdNamespace: cfg.Namespace,
		XDSAddress: cfg.SidecarXDSAddr, ClusterDomain: cfg.ClusterDomain, ProxyImage: proxyImage, InitImage: initImage, CredsDir: cfg.SidecarCredsDir,
		API: bootstrap.APIType(cfg.SidecarAPI), PodCertificateSigner: podCertSigner, Logger: log})
	if err != nil {
		return nil, err
	}
	lis, err := net.Listen("tcp", cfg.WebhookAddr)
	if err != nil {
		return nil, fmt.Errorf("webhook: listen %s: %w", cfg.WebhookAddr, err)
	}
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
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, TLSConfig: tlsCfg}
	g.Go(func() error {
		go func() {
			<-ctx.Done()
			shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = srv.Shutdown(shutdown)
		}()
		if err := srv.ServeTLS(lis, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("webhook: %w", err)
		}
		return nil
	})
	rc := inject.ReconcileConfig{
		WebhookName: cfg.WebhookName,
		Bundle:      func() []byte { return issuer.Authority().BundlePEM },
		InUse: func() (map[string]inject.PodRef, bool) {
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
		},
	}
	written := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meshd_inject_secrets_total",
		Help: "Sidecar credentials Secrets written for pods that exist (written), writes that failed (failed, retried), and pods carrying a proxy ID that meshd writes none for (refused)."}, []string{"result"})
	if err := reg.Register(written); err != nil {
		return nil, err
	}
	writer, err := inj.NewSecretWriter(inject.SecretWriterConfig{Pods: pods, OnWrite: func(r string) { written.WithLabelValues(r).Inc() }})
	if err != nil {
		return nil, err
	}
	// Singletons: only the leader writes Secrets and the caBundle.
	lead.Add(writer.Start)
	lead.Add(func(ctx context.Context) error { return inj.Run(ctx, rc, 30*time.Second) })
	log.Info("inject: webhook serving", "addr", lis.Addr().String(), "webhook_configuration", cfg.WebhookName)
	return lis.Addr(), nil
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

// webhookStatus checks the injection webhook as the apiserver would use it:
// its configuration's caBundle is the current bundle, and a TLS handshake to
// addr verifies with that bundle for the Service name meshd serves.
func webhookStatus(ctx context.Context, cfg config.Config, client kubernetes.Interface, bundle []byte, addr string) debug.WebhookView {
	v := debug.WebhookView{Enabled: true, Address: addr, Configuration: cfg.WebhookName}
	if cfg.WebhookClientCA != "" {
		v.Callers = cmp.Or(cfg.WebhookClientName, "any certificate of --webhook-client-ca")
	}
	var problems []string
	mwc, err := client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, cfg.WebhookName, metav1.GetOptions{})
	switch {
	case err != nil:
		problems = append(problems, fmt.Sprintf("configuration %s: %v", cfg.WebhookName, err))
	case len(mwc.Webhooks) == 0:
		problems = append(problems, fmt.Sprintf("configuration %s has no webhooks", cfg.WebhookName))
	default:
		v.CABundleCurrent = true
		for _, w := range mwc.Webhooks {
			if !bytes.Equal(w.ClientConfig.CABundle, bundle) {
				v.CABundleCurrent = false
				problems = append(problems, fmt.Sprintf("webhook %s: caBundle is not the mesh's current bundle", w.Name))
			}
		}
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(bundle)
	host, port, _ := net.SplitHostPort(addr)
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	d := tls.Dialer{Config: &tls.Config{RootCAs: pool, ServerName: "meshd." + cfg.Namespace + ".svc", MinVersion: tls.VersionTLS12}}
	if conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(host, port)); err != nil {
		problems = append(problems, fmt.Sprintf("TLS to %s: %v", addr, err))
	} else {
		v.Reachable = true
		conn.Close()
	}
	v.Problem = strings.Join(problems, "; ")
	return v
}
