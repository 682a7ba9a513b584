package main

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"

	cmclient "github.com/cert-manager/cert-manager/pkg/client/clientset/versioned"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"github.com/meshd/meshd/ca"
	"github.com/meshd/meshd/ca/certmanager"
	"github.com/meshd/meshd/internal/config"
	"github.com/meshd/meshd/k8s"
)

// certManagerCA is the workload CA with --issuer-ref: every proxy's
// certificate is a CertificateRequest against the operator's issuer. Its
// renewer re-issues everything when the bundle changes; a failed issuance
// leaves the proxy on its current certificate and puts an Event on the pod.
type certManagerCA struct {
	issuer  *certmanager.Issuer
	renewer *ca.Renewer
	bundle  *bundleSource // nil: the issuer's status.ca
}

func newCertManagerCA(cfg config.Config, rc *rest.Config, client kubernetes.Interface, metrics *ca.Metrics,
	problems *k8s.ProblemReporter, log *slog.Logger) (*certManagerCA, error) {
	ref, err := certmanager.ParseRef(cfg.IssuerRef)
	if err != nil {
		return nil, err
	}
	cm, err := cmclient.NewForConfig(rc)
	if err != nil {
		return nil, err
	}
	c := &certManagerCA{}
	icfg := certmanager.Config{Client: cm, Namespace: cfg.Namespace, IssuerRef: ref, Duration: cfg.CertTTL,
		Approve: cfg.IssuerApprove, Timeout: cfg.IssuerTimeout, Metrics: metrics, Logger: log,
		OnBundleChange: func() { c.renewer.Reissue() }}
	if cfg.TrustBundle != "" {
		kind, name, key, _ := config.ParseBundleRef(cfg.TrustBundle)
		c.bundle = &bundleSource{client: client, namespace: cfg.Namespace, kind: kind, name: name, key: key, log: log,
			onChange: func() { c.renewer.Reissue() }}
		icfg.TrustBundle = c.bundle.get
	}
	if c.issuer, err = certmanager.New(icfg); err != nil {
		return nil, err
	}
	c.renewer, err = ca.NewRenewer(ca.RenewerConfig{Issuer: c.issuer, Logger: log, OnError: func(_ string, req ca.Request, err error) {
		if ns, pod, ok := strings.Cut(req.Pod, "/"); ok {
			problems.Warn(k8s.Problem{Kind: "Pod", Namespace: ns, Name: pod, Reason: "CertificateIssueFailed",
				Message: fmt.Sprintf("meshd could not get a certificate for %s from %s (the proxy keeps its current one; retrying): %v", req.Identity, cfg.IssuerRef, err)})
		}
	}})
	if err != nil {
		return nil, err
	}
	log.Info("ca: workload certificates through cert-manager", "issuer", cfg.IssuerRef, "approve", cfg.IssuerApprove, "trust_bundle", cfg.TrustBundle)
	return c, nil
}

// run follows meshd's CertificateRequests (and the trust bundle) until ctx ends.
func (c *certManagerCA) run(ctx context.Context) error {
	if c.bundle != nil {
		go c.bundle.run(ctx)
	}
	return c.issuer.Start(ctx)
}

// bundleSource follows one key of a ConfigMap or Secret (trust-manager
// style) through an informer on that one object.
type bundleSource struct {
	client                     kubernetes.Interface
	namespace, kind, name, key string
	log                        *slog.Logger
	onChange                   func()

	mu  sync.Mutex
	pem []byte
}

func (b *bundleSource) get() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.pem
}

func (b *bundleSource) run(ctx context.Context) {
	var rc cache.Getter = b.client.CoreV1().RESTClient()
	var obj runtime.Object = &corev1.ConfigMap{}
	resource := "configmaps"
	if b.kind == "secret" {
		obj, resource = &corev1.Secret{}, "secrets"
	}
	lw := cache.NewListWatchFromClient(rc, resource, b.namespace, fields.OneTermEqualSelector("metadata.name", b.name))
	_, ctrl := cache.NewInformerWithOptions(cache.InformerOptions{ListerWatcher: lw, ObjectType: obj,
		Handler: cache.ResourceEventHandlerFuncs{AddFunc: b.set, UpdateFunc: func(_, n any) { b.set(n) }}})
	ctrl.RunWithContext(ctx)
}

func (b *bundleSource) set(obj any) {
	var data []byte
	switch o := obj.(type) {
	case *corev1.ConfigMap:
		data = []byte(o.Data[b.key])
	case *corev1.Secret:
		data = o.Data[b.key]
	}
	if certs, err := ca.ParseCertsPEM(data); err != nil || len(certs) == 0 {
		b.log.Error("ca: trust bundle has no certificate; keeping the previous one", "source", b.kind+"/"+b.name, "key", b.key)
		return
	}
	b.mu.Lock()
	changed := b.pem != nil && !bytes.Equal(b.pem, data)
	b.pem = data
	b.mu.Unlock()
	if changed {
		b.log.Info("ca: trust bundle changed; issuing every certificate again", "source", b.kind+"/"+b.name)
		b.onChange()
	}
}
