// Package inject is meshd's sidecar injector: a mutating admission webhook
// that adds the Envoy sidecar and the interception init container to pods
// of meshed namespaces and has no side effects (it only patches the pod);
// in Secret mode, the writer that creates each pod's credentials Secret
// once the pod exists (owned by it), and the reconciler that keeps those
// Secrets fresh and removes orphans.
//
// Where it sits: beside the pipeline. It issues xDS client certificates
// through the ca Issuer and renders bootstraps with package bootstrap; cmd
// wires it to the apiserver and the mesh model.
//
// A pod's name is not known at admission (generateName), so the client
// certificate is bound to a random proxy ID recorded on the pod (annotation
// meshd.io/proxy-id) and the sidecar names its node "<pod>.<namespace>" at
// run time (--service-node from the downward API); meshd accepts the stream
// once the pod with that proxy ID is in its view.
package inject

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"time"

	bootstrapv3 "github.com/envoyproxy/go-control-plane/envoy/config/bootstrap/v3"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/clock"

	"github.com/meshd/meshd/bootstrap"
	"github.com/meshd/meshd/ca"
	"github.com/meshd/meshd/xds"
)

// Names the injector puts on pods and Secrets.
const (
	// The pod's keys (meshd.io/status, proxy-id, interception, inject) and
	// the injected containers' names are package k8s's, which reads them.
	LabelProxyID  = "meshd.io/proxy-id" // on the credentials Secret
	VolumeCreds   = "meshd-proxy-creds"
	SecretPrefix  = "meshd-proxy-"
	ReadinessPort = 15021
	ProxyUID      = 1337

	annotationSA     = "meshd.io/service-account"
	annotationPod    = "meshd.io/pod"
	annotationProbes = "meshd.io/app-probes" // JSON: readiness-port path -> app port and path
)

// Config configures an Injector.
type Config struct {
	Client kubernetes.Interface
	Issuer ca.Issuer
	// TrustDomain and MeshdNamespace name identities (the sidecar checks
	// meshd's serving certificate against spiffe://<td>/ns/<meshd ns>/sa/meshd).
	TrustDomain, MeshdNamespace string
	// XDSAddress is meshd's xDS address as sidecars reach it (default
	// meshd.<MeshdNamespace>.svc.<ClusterDomain>:15012, fully qualified:
	// the sidecar resolves it without the pod's search domains).
	XDSAddress string
	// ClusterDomain is the cluster's DNS domain (default cluster.local).
	ClusterDomain string
	// ProxyImage runs Envoy; InitImage runs `meshd iptables`.
	ProxyImage, InitImage string
	// CredsDir is where the credentials Secret is mounted in the sidecar
	// (default /etc/meshd/proxy).
	CredsDir string
	// CertTTL is the xDS client certificate's lifetime (default 24h).
	CertTTL time.Duration
	// PodCertificateSigner, if set, switches to pod-certificate mode: the
	// sidecar's credentials come from a podCertificate projected volume for
	// this signer (the kubelet makes the key; meshd's signer signs), the
	// trust bundle from its ClusterTrustBundle, and no Secret is written.
	PodCertificateSigner string
	API                  bootstrap.APIType
	Logger               *slog.Logger
	// Clock and Rand are injected (defaults: the real clock, crypto/rand).
	Clock clock.WithTicker
	Rand  io.Reader
}

// Injector mutates pods and keeps their credentials Secrets.
type Injector struct{ cfg Config }

// New returns an Injector.
func New(cfg Config) (*Injector, error) {
	if cfg.Client == nil || cfg.Issuer == nil || cfg.TrustDomain == "" || cfg.MeshdNamespace == "" {
		return nil, errors.New("inject: Client, Issuer, TrustDomain and MeshdNamespace are required")
	}
	if cfg.ProxyImage == "" || cfg.InitImage == "" {
		return nil, errors.New("inject: ProxyImage and InitImage are required")
	}
	if cfg.ClusterDomain == "" {
		cfg.ClusterDomain = "cluster.local"
	}
	if cfg.XDSAddress == "" {
		cfg.XDSAddress = "meshd." + cfg.MeshdNamespace + ".svc." + cfg.ClusterDomain + ":15012"
	}
	if cfg.CredsDir == "" {
		cfg.CredsDir = "/etc/meshd/proxy"
	}
	if cfg.CertTTL == 0 {
		cfg.CertTTL = 24 * time.Hour
	}
	if cfg.API == "" {
		cfg.API = bootstrap.Delta
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	return &Injector{cfg: cfg}, nil
}

// newProxyID returns 32 random hex digits.
func (i *Injector) newProxyID() (string, error) {
	b := make([]byte, 16)
	if _, err := io.ReadFull(i.cfg.Rand, b); err != nil {
		return "", fmt.Errorf("inject: proxy ID: %w", err)
	}
	return hex.EncodeToString(b), nil
}

// credentials renders a sidecar's Secret data: bootstrap (with the app's
// rewritten probes), path-based SDS files, and a fresh xDS client
// certificate bound to the proxy ID.
func (i *Injector) credentials(ctx context.Context, ns, sa, pod, proxyID string, probes map[string]bootstrap.AppProbe) (map[string][]byte, *ca.Certificate, error) {
	b, err := i.render(ns, sa, pod, probes)
	if err != nil {
		return nil, nil, err
	}
	id := ca.Identity{TrustDomain: i.cfg.TrustDomain, Namespace: ns, ServiceAccount: sa}
	cert, err := i.cfg.Issuer.Issue(ctx, ca.Request{Identity: id, TTL: i.cfg.CertTTL, CommonName: xds.ProxyCommonName(proxyID), Pod: ns + "/" + pod})
	if err != nil {
		return nil, nil, fmt.Errorf("inject: xDS client certificate for %s: %w", id, err)
	}
	files, err := bootstrap.Files(b, i.cfg.CredsDir, cert.ChainPEM, cert.KeyPEM, cert.BundlePEM)
	if err != nil {
		return nil, nil, err
	}
	return files, cert, nil
}

// render is the sidecar's bootstrap: node ID, meshd's address and SPIFFE
// ID, the credentials directory, the readiness listener and the app's
// probes.
func (i *Injector) render(ns, sa, pod string, probes map[string]bootstrap.AppProbe) (*bootstrapv3.Bootstrap, error) {
	nodeID := pod + "." + ns
	if pod == "" {
		nodeID = "pending." + ns // replaced at run time by --service-node
	}
	return bootstrap.Render(bootstrap.Config{
		Namespace: ns, Pod: pod, ServiceAccount: sa, NodeID: nodeID,
		XDSAddress:    i.cfg.XDSAddress,
		XDSServerSAN:  i.xdsServerSAN(),
		API:           i.cfg.API,
		CredsDir:      i.cfg.CredsDir,
		ReadinessPort: ReadinessPort,
		AppProbes:     probes,
	})
}

// secretFor builds the credentials Secret of a proxy. Its annotations keep
// what a refresh needs to render it again.
func secretFor(ns, sa, pod, proxyID string, probes map[string]bootstrap.AppProbe, data map[string][]byte) (*corev1.Secret, error) {
	annotations := map[string]string{annotationSA: sa, annotationPod: pod}
	if len(probes) > 0 {
		b, err := json.Marshal(probes)
		if err != nil {
			return nil, fmt.Errorf("inject: app probes: %w", err)
		}
		annotations[annotationProbes] = string(b)
	}
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: SecretPrefix + proxyID, Namespace: ns,
			Labels:      map[string]string{LabelProxyID: proxyID, "app.kubernetes.io/managed-by": "meshd"},
			Annotations: annotations},
		Type: corev1.SecretTypeOpaque,
		Data: data,
	}, nil
}

// secretProbes reads back the app probes a Secret was rendered with.
func secretProbes(s *corev1.Secret) (map[string]bootstrap.AppProbe, error) {
	probes, err := parseProbes(s.Annotations)
	if err != nil {
		return nil, fmt.Errorf("inject: Secret %s/%s: %w", s.Namespace, s.Name, err)
	}
	return probes, nil
}

// parseProbes reads the app probes annotation of a pod or Secret (nil when
// there is none).
func parseProbes(annotations map[string]string) (map[string]bootstrap.AppProbe, error) {
	raw := annotations[annotationProbes]
	if raw == "" {
		return nil, nil
	}
	var probes map[string]bootstrap.AppProbe
	if err := json.Unmarshal([]byte(raw), &probes); err != nil {
		return nil, fmt.Errorf("annotation %s: %w", annotationProbes, err)
	}
	return probes, nil
}
