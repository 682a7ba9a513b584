package main

import (
	"context"
	"fmt"
	"log/slog"
	"strings"

	cmclient "github.com/cert-manager/cert-manager/pkg/client/clientset/versioned"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

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
	bundle  *certmanager.BundleSource // nil: the issuer's status.ca
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
		c.bundle = certmanager.NewBundleSource(certmanager.BundleConfig{Client: client, Namespace: cfg.Namespace, Kind: kind, Name: name, Key: key,
			Logger: log, OnChange: func() { c.renewer.Reissue() }})
		icfg.TrustBundle = c.bundle.PEM
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
		go func() { _ = c.bundle.Start(ctx) }()
	}
	return c.issuer.Start(ctx)
}
