package podcert

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	certsv1beta1 "k8s.io/api/certificates/v1beta1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// BundleConfig configures a BundlePublisher.
type BundleConfig struct {
	Client kubernetes.Interface
	// SignerName defaults to DefaultSignerName.
	SignerName string
	// Bundle returns the current trust bundle (PEM roots); during a root
	// rotation it holds the old and the new root.
	Bundle func() []byte
	// Every is how often the bundle is compared (default 10s).
	Every  time.Duration
	Logger *slog.Logger
}

// BundlePublisher keeps one ClusterTrustBundle for the signer equal to the
// mesh trust bundle, so that pods (clusterTrustBundle projected volumes,
// the sidecars' own xDS trust included) and workloads outside the mesh
// trust mesh identities the Kubernetes way. Run it on the leader.
type BundlePublisher struct{ cfg BundleConfig }

// NewBundlePublisher returns a BundlePublisher.
func NewBundlePublisher(cfg BundleConfig) (*BundlePublisher, error) {
	if cfg.Client == nil || cfg.Bundle == nil {
		return nil, errors.New("podcert: Client and Bundle are required")
	}
	if cfg.SignerName == "" {
		cfg.SignerName = DefaultSignerName
	}
	if cfg.Every == 0 {
		cfg.Every = 10 * time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &BundlePublisher{cfg: cfg}, nil
}

// BundleName is the ClusterTrustBundle meshd writes for a signer: the
// signer name with '/' as ':' (the apiserver requires that prefix), then
// "roots".
func BundleName(signer string) string { return strings.ReplaceAll(signer, "/", ":") + ":roots" }

// BundleLabels are the labels of the ClusterTrustBundle meshd writes; a
// clusterTrustBundle projection selects it by them.
func BundleLabels() map[string]string {
	return map[string]string{"app.kubernetes.io/managed-by": "meshd"}
}

// Start publishes at once and then whenever the bundle changes, until ctx
// ends. Failures are logged and retried at the next tick.
func (p *BundlePublisher) Start(ctx context.Context) error {
	t := time.NewTicker(p.cfg.Every)
	defer t.Stop()
	for {
		if err := p.Sync(ctx); err != nil && ctx.Err() == nil {
			p.cfg.Logger.Error("podcert: ClusterTrustBundle not current", "error", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

// Sync makes the ClusterTrustBundle hold the current bundle.
func (p *BundlePublisher) Sync(ctx context.Context) error {
	want := string(normalize(p.cfg.Bundle()))
	if want == "" {
		return errors.New("podcert: the trust bundle is empty")
	}
	api := p.cfg.Client.CertificatesV1beta1().ClusterTrustBundles()
	name := BundleName(p.cfg.SignerName)
	cur, err := api.Get(ctx, name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		_, err = api.Create(ctx, &certsv1beta1.ClusterTrustBundle{
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: BundleLabels()},
			Spec:       certsv1beta1.ClusterTrustBundleSpec{SignerName: p.cfg.SignerName, TrustBundle: want}}, metav1.CreateOptions{})
	case err == nil && cur.Spec.TrustBundle != want:
		cur.Spec.TrustBundle = want
		_, err = api.Update(ctx, cur, metav1.UpdateOptions{})
	case err == nil:
		return nil
	}
	if err != nil {
		return fmt.Errorf("podcert: ClusterTrustBundle %s: %w", name, err)
	}
	p.cfg.Logger.Info("podcert: ClusterTrustBundle published", "name", name, "signer", p.cfg.SignerName, "roots", bytes.Count([]byte(want), []byte("BEGIN CERTIFICATE")))
	return nil
}

// normalize keeps only the PEM blocks, without headers or text between
// them: the form the apiserver accepts.
func normalize(bundle []byte) []byte {
	var out bytes.Buffer
	for _, b := range pemCerts(bundle) {
		out.Write(b)
	}
	return out.Bytes()
}
