package main

import (
	"log/slog"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/kubernetes"

	"github.com/meshd/meshd/ca"
	"github.com/meshd/meshd/internal/config"
	"github.com/meshd/meshd/internal/podcert"
	"github.com/meshd/meshd/xds"
)

// credentialsMode is where injected sidecars' xDS credentials come from,
// and why (logged at start, shown by the debug API and `meshd check`).
type credentialsMode struct {
	Mode   podcert.Mode
	Reason string
	// Signer is the signer name sidecars' podCertificate volumes name (""
	// in Secret mode).
	Signer string
	// KeyOnNode: sidecars use their podCertificate volume for workload
	// mTLS too (--pod-certificates workload); SDS sends only references to
	// its files and the bundle.
	KeyOnNode bool
}

// decideCredentials picks the mode: pod certificates when asked for (auto)
// and the apiserver serves them, else per-pod Secrets.
func decideCredentials(cfg config.Config, client kubernetes.Interface, local bool) credentialsMode {
	switch {
	case cfg.PodCertificates == "off":
		return credentialsMode{Mode: podcert.ModeSecret, Reason: "--pod-certificates off"}
	case local:
		return credentialsMode{Mode: podcert.ModeSecret, Reason: "no cluster (--local-dir)"}
	}
	ok, why := podcert.Detect(client.Discovery())
	if !ok {
		return credentialsMode{Mode: podcert.ModeSecret, Reason: why}
	}
	m := credentialsMode{Mode: podcert.ModePodCertificate, Reason: why + "; kubelets need the PodCertificateRequest and ClusterTrustBundleProjection feature gates",
		Signer: podcert.DefaultSignerName}
	switch {
	case cfg.PodCertificates == "workload" && cfg.IssuerRef != "":
		m.Reason += "; workload certificates stay with " + cfg.IssuerRef + " (--issuer-ref): the kubelet's key cannot be certified by cert-manager"
	case cfg.PodCertificates == "workload":
		m.KeyOnNode = true
		m.Reason += "; workload mTLS certificates from the same volume (key made on the node; SDS sends references and the bundle)"
	}
	return m
}

// startPodCertificates registers the pod-certificate signer and the
// ClusterTrustBundle publisher as singletons (leader only). They consume
// PodCertificateRequests and the internal CA's bundle and produce answered
// requests and the ClusterTrustBundle. The internal CA signs, whatever
// backend signs workload certificates: it is the CA xDS client
// certificates chain to (as in Secret mode).
func startPodCertificates(lead *singletons, cfg config.Config, client kubernetes.Interface, issuer *ca.Internal, reg prometheus.Registerer, log *slog.Logger) error {
	answers := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "meshd_podcert_answers_total",
		Help: "PodCertificateRequests answered, by condition (Issued, Denied, Failed) and reason."}, []string{"condition", "reason"})
	if err := reg.Register(answers); err != nil {
		return err
	}
	signer, err := podcert.New(podcert.Config{Client: client, Issuer: issuer, TrustDomain: cfg.TrustDomain, CertTTL: cfg.CertTTL,
		NodeID: xds.NodeID, Logger: log, OnAnswer: func(cond, reason string) { answers.WithLabelValues(cond, reason).Inc() }})
	if err != nil {
		return err
	}
	bundles, err := podcert.NewBundlePublisher(podcert.BundleConfig{Client: client, Logger: log,
		Bundle: func() []byte { return issuer.Authority().BundlePEM }})
	if err != nil {
		return err
	}
	lead.Add(signer.Start)
	lead.Add(bundles.Start)
	return nil
}
