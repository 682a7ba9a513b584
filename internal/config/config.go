// Package config is meshd's one typed configuration: every flag of `meshd
// serve` lands in Config, defaults come from Default, and Validate says what is
// wrong before anything starts.
//
// Where it sits: cmd/meshd parses flags into a Config and hands the parts to
// each component's own Config; no component reads flags or the environment.
package config

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/meshd/meshd/bootstrap"
	"github.com/meshd/meshd/ca/certmanager"
	"github.com/meshd/meshd/model"
	"github.com/meshd/meshd/xds"
)

// Config is the configuration of `meshd serve`.
type Config struct {
	// XDSAddr is where Envoy sidecars connect for ADS (gRPC).
	XDSAddr string
	// DebugAddr serves /healthz, /readyz, /metrics and /debug/; 127.0.0.1 by default.
	DebugAddr string
	// Kubeconfig is the kubeconfig path; empty means in-cluster config, unless LocalDir is set.
	Kubeconfig string
	// LocalDir, when set, is a directory of Kubernetes YAML that replaces the cluster.
	LocalDir string
	// Namespace is meshd's own namespace (CA Secret, leases).
	Namespace string
	// TrustDomain is the SPIFFE trust domain.
	TrustDomain string
	// RootNamespace is where mesh-wide AuthorizationPolicies live (they
	// apply to the pods of every namespace); empty: Namespace.
	RootNamespace string
	// CertTTL is the lifetime of workload certificates.
	CertTTL time.Duration
	// DetectionTimeout is how long inbound sidecars wait for a client's
	// first bytes to tell mutual TLS from plaintext (model.Snapshot).
	DetectionTimeout time.Duration
	// CASecret names the Secret (in Namespace) holding the CA.
	CASecret string
	// CADir keeps the CA as files instead of a Secret (for --local-dir).
	CADir string
	// RootRotationGrace is how long each phase of a root rotation waits for
	// the change to reach every proxy before the next one.
	RootRotationGrace time.Duration
	// LeaseDuration is the singleton Lease's duration (renewal at 2/3).
	LeaseDuration time.Duration
	// HealthAddr, if set, serves /healthz, /readyz and /metrics only (for
	// the kubelet and Prometheus on the pod address; no token needed).
	HealthAddr string
	// DebugToken protects /debug/ when DebugAddr is not loopback;
	// DebugTokenFile names a file holding it instead (a token on the
	// command line is visible in ps).
	DebugToken, DebugTokenFile string
	// DebugAuth is how /debug/ (and then /metrics) authorizes: "token"
	// (DebugToken, or nothing on loopback) or "kubernetes" (a bearer token
	// checked by TokenReview and SubjectAccessReview against the path).
	DebugAuth string
	// Injection: the webhook's listen address ("" turns injection off), the
	// MutatingWebhookConfiguration whose caBundle meshd keeps, the images
	// injected, and meshd's xDS address as sidecars reach it.
	WebhookAddr, WebhookName string
	// WebhookClientCA, if set, is a PEM file of the CA(s) that sign the
	// apiserver's client certificate for admission webhooks; the webhook
	// then answers only callers presenting such a certificate (with
	// WebhookClientName as CommonName or DNS SAN, if set).
	WebhookClientCA, WebhookClientName string
	ProxyImage, InitImage              string
	SidecarXDSAddr                     string
	// ClusterDomain is the cluster's DNS domain (default cluster.local).
	ClusterDomain string
	// SidecarCredsDir is where the credentials Secret is mounted in sidecars.
	SidecarCredsDir string
	// SidecarAPI is the ADS flavour injected bootstraps use: "delta"
	// (default) or "sotw".
	SidecarAPI string
	// IssuerRef, if set ("kind/name[/group]"), makes workload certificates
	// cert-manager CertificateRequests against that Issuer (in Namespace)
	// or ClusterIssuer; the internal CA keeps meshd's own and the xDS
	// client certificates. IssuerApprove: meshd approves its own requests.
	// TrustBundle ("configmap/name/key" or "secret/name/key" in Namespace)
	// replaces the issuer's status.ca as the bundle served to proxies.
	IssuerRef     string
	IssuerApprove bool
	TrustBundle   string
	// IssuerTimeout bounds one CertificateRequest (then retried with backoff).
	IssuerTimeout time.Duration
	// HoldOff and MaxDelay batch Kubernetes events before a rebuild.
	HoldOff  time.Duration
	MaxDelay time.Duration
	// PodCertificates: "auto" (default) signs PodCertificateRequests and
	// injects sidecars whose xDS credentials come from a podCertificate
	// volume (the key made by the kubelet) when the apiserver serves the
	// API; "workload" also takes sidecars' workload mTLS certificates from
	// that volume; "off" keeps per-pod Secrets.
	PodCertificates string
	// XDSLimits bound what one xDS client can take from meshd (the
	// --xds-* flags; xds.Limits says what each means).
	XDSLimits xds.Limits
}

// Default returns the configuration used when no flag is given.
func Default() Config {
	return Config{
		XDSAddr:     "127.0.0.1:15012",
		DebugAddr:   "127.0.0.1:15014",
		Namespace:   "meshd-system",
		TrustDomain: "cluster.local",
		CertTTL:     24 * time.Hour,

		DetectionTimeout: model.DefaultDetectionTimeout,
		CASecret:         "meshd-ca",
		SidecarAPI:       "delta",
		HoldOff:          100 * time.Millisecond,
		MaxDelay:         time.Second,

		RootRotationGrace: 10 * time.Minute,
		LeaseDuration:     15 * time.Second,
		IssuerTimeout:     30 * time.Second,

		WebhookName:     "meshd-sidecar-injector",
		SidecarCredsDir: "/etc/meshd/proxy",
		DebugAuth:       "token",
		ClusterDomain:   "cluster.local",
		PodCertificates: "auto",

		XDSLimits: xds.DefaultLimits(),
	}
}

// PolicyRoot is the namespace of mesh-wide AuthorizationPolicies:
// RootNamespace, or meshd's own namespace.
func (c Config) PolicyRoot() string {
	if c.RootNamespace != "" {
		return c.RootNamespace
	}
	return c.Namespace
}

// RegisterFlags binds every field to a flag on fs, with c's values as defaults.
func (c *Config) RegisterFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.XDSAddr, "xds-addr", c.XDSAddr, "address of the ADS gRPC server")
	fs.StringVar(&c.DebugAddr, "debug-addr", c.DebugAddr, "address of the health, metrics and debug HTTP server")
	fs.StringVar(&c.Kubeconfig, "kubeconfig", c.Kubeconfig, "kubeconfig path (empty: in-cluster config)")
	fs.StringVar(&c.LocalDir, "local-dir", c.LocalDir, "directory of Kubernetes YAML to serve instead of a cluster")
	fs.StringVar(&c.Namespace, "namespace", c.Namespace, "meshd's own namespace")
	fs.StringVar(&c.TrustDomain, "trust-domain", c.TrustDomain, "SPIFFE trust domain")
	fs.StringVar(&c.RootNamespace, "root-namespace", c.RootNamespace, "the namespace whose AuthorizationPolicies apply to the pods of every namespace (default: --namespace, meshd's own)")
	fs.DurationVar(&c.CertTTL, "cert-ttl", c.CertTTL, "lifetime of workload certificates")
	fs.DurationVar(&c.DetectionTimeout, "protocol-detection-timeout", c.DetectionTimeout,
		"how long an inbound sidecar waits for a client's first bytes to tell mutual TLS from plaintext: a server-first protocol's plaintext client waits this long on PERMISSIVE pods, and is closed after it on STRICT pods (a pod's annotation meshd.io/protocol-detection-timeout overrides)")
	fs.StringVar(&c.CASecret, "ca-secret", c.CASecret, "Secret in --namespace that holds the CA")
	fs.StringVar(&c.CADir, "ca-dir", c.CADir, "keep the CA in this directory instead of a Secret (local use)")
	fs.DurationVar(&c.RootRotationGrace, "root-rotation-grace", c.RootRotationGrace, "how long each root rotation phase waits for proxies to catch up")
	fs.DurationVar(&c.LeaseDuration, "lease-duration", c.LeaseDuration, "duration of the Lease that elects the replica running the singletons")
	fs.StringVar(&c.HealthAddr, "health-addr", c.HealthAddr, "address serving only /healthz, /readyz and /metrics (empty: none)")
	fs.StringVar(&c.DebugToken, "debug-token", c.DebugToken, "bearer token required on /debug/ (required when --debug-addr is not loopback); prefer --debug-token-file")
	fs.StringVar(&c.DebugAuth, "debug-auth", c.DebugAuth, "how the debug API authorizes: token (--debug-token, or nothing on loopback) or kubernetes (TokenReview + SubjectAccessReview of the path: RBAC on nonResourceURLs decides)")
	fs.StringVar(&c.DebugTokenFile, "debug-token-file", c.DebugTokenFile, "file holding the bearer token of --debug-token (a mounted Secret; not visible in ps)")
	fs.StringVar(&c.WebhookAddr, "webhook-addr", c.WebhookAddr, "listen address of the sidecar injection webhook (empty: no injection)")
	fs.StringVar(&c.WebhookName, "webhook-name", c.WebhookName, "MutatingWebhookConfiguration whose caBundle meshd keeps current")
	fs.StringVar(&c.WebhookClientCA, "webhook-client-ca", c.WebhookClientCA, "PEM file of the CA signing the apiserver's webhook client certificate (its AdmissionConfiguration); set, the webhook answers only such callers")
	fs.StringVar(&c.WebhookClientName, "webhook-client-name", c.WebhookClientName, "with --webhook-client-ca: the CommonName or DNS SAN the caller's certificate must carry (empty: any the CA signed)")
	fs.StringVar(&c.ProxyImage, "proxy-image", c.ProxyImage, "image of the injected Envoy sidecar (default: the image of the proxy-image init container of meshd's own pod, else deploy/images.env's)")
	fs.StringVar(&c.InitImage, "init-image", c.InitImage, "image of the injected init container, which runs meshd iptables (default: the image meshd's own pod runs, else deploy/images.env's)")
	fs.StringVar(&c.SidecarXDSAddr, "sidecar-xds-addr", c.SidecarXDSAddr, "meshd's xDS address as injected sidecars reach it (default meshd.<namespace>.svc.<cluster-domain>:15012)")
	fs.StringVar(&c.ClusterDomain, "cluster-domain", c.ClusterDomain, "the cluster's DNS domain, for the default --sidecar-xds-addr")
	fs.StringVar(&c.SidecarCredsDir, "sidecar-creds-dir", c.SidecarCredsDir, "where injected sidecars mount their credentials Secret")
	fs.StringVar(&c.SidecarAPI, "sidecar-api", c.SidecarAPI, "ADS flavour of injected sidecars: delta or sotw")
	fs.StringVar(&c.IssuerRef, "issuer-ref", c.IssuerRef, "issue workload certificates through this cert-manager issuer: Issuer/<name> (in --namespace), ClusterIssuer/<name>, or kind/name/group for an external issuer (empty: internal CA)")
	fs.BoolVar(&c.IssuerApprove, "issuer-approve", c.IssuerApprove, "approve meshd's own CertificateRequests (needs the approve verb on the issuer's signer)")
	fs.DurationVar(&c.IssuerTimeout, "issuer-timeout", c.IssuerTimeout, "with --issuer-ref: how long one CertificateRequest may take before it counts as failed (then retried with backoff)")
	fs.StringVar(&c.TrustBundle, "trust-bundle", c.TrustBundle, "with --issuer-ref: serve this bundle instead of the issuer's CA: configmap/<name>/<key> or secret/<name>/<key> in --namespace")
	fs.StringVar(&c.PodCertificates, "pod-certificates", c.PodCertificates, "auto: when the apiserver serves PodCertificateRequest, sign them (signer meshd.io/spiffe), publish the trust bundle as a ClusterTrustBundle and give injected sidecars a podCertificate volume (key made by the kubelet) instead of a per-pod Secret for their xDS credentials; workload: auto, and sidecars use that volume for workload mTLS too (the key never leaves the node); off: per-pod Secrets")
	fs.DurationVar(&c.HoldOff, "hold-off", c.HoldOff, "quiet time a burst of Kubernetes changes waits for before a rebuild (a change after a quiet spell of this long goes at once)")
	fs.DurationVar(&c.MaxDelay, "max-delay", c.MaxDelay, "longest a rebuild waits while changes keep coming")
	l := &c.XDSLimits
	fs.IntVar(&l.StreamsPerIdentity, "xds-streams-per-identity", l.StreamsPerIdentity, "open xDS streams one proxy identity may hold across its connections (more: ResourceExhausted)")
	fs.IntVar(&l.ConnectionsPerIdentity, "xds-connections-per-identity", l.ConnectionsPerIdentity, "xDS connections, idle or not, one client identity may hold open")
	fs.Var((*uint32Value)(&l.StreamsPerConnection), "xds-streams-per-connection", "concurrent HTTP/2 streams on one xDS connection")
	fs.Float64Var(&l.RequestsPerSecond, "xds-request-rate", l.RequestsPerSecond, "requests read from one xDS stream per second (a flood waits)")
	fs.IntVar(&l.Burst, "xds-request-burst", l.Burst, "requests one xDS stream may send at once before --xds-request-rate applies")
	fs.DurationVar(&l.HandshakeTimeout, "xds-handshake-timeout", l.HandshakeTimeout, "time a new xDS connection has for its TLS and HTTP/2 handshake")
	fs.DurationVar(&l.PeerTimeout, "xds-peer-timeout", l.PeerTimeout, "time a client's kernel may leave data unacknowledged, its window shut or keepalive probes unanswered before its xDS connection is closed (TCP_USER_TIMEOUT and keepalive)")
	fs.DurationVar(&l.MinPingInterval, "xds-min-ping-interval", l.MinPingInterval, fmt.Sprintf("shortest interval at which an xDS client may ping (more often: its connection is closed); at most half the %s injected sidecars ping at", bootstrap.DefaultXDSKeepalive))
}

// uint32Value is a flag.Value of a uint32 field.
type uint32Value uint32

func (v *uint32Value) String() string { return strconv.FormatUint(uint64(*v), 10) }

func (v *uint32Value) Set(s string) error {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return errors.New("want a whole number from 0 to 4294967295")
	}
	*v = uint32Value(n)
	return nil
}

// Validate reports every problem of c, joined.
func (c *Config) Validate() error {
	var errs []error
	for name, addr := range map[string]string{"xds-addr": c.XDSAddr, "debug-addr": c.DebugAddr, "health-addr": orLoopback(c.HealthAddr)} {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			errs = append(errs, fmt.Errorf("--%s %q: %w", name, addr, err))
		}
	}
	if c.Kubeconfig != "" && c.LocalDir != "" {
		errs = append(errs, errors.New("--kubeconfig and --local-dir exclude each other"))
	}
	if c.LocalDir != "" && c.CADir == "" {
		errs = append(errs, errors.New("--local-dir needs --ca-dir: without a cluster the CA is kept in files"))
	}
	if c.Namespace == "" {
		errs = append(errs, errors.New("--namespace must not be empty"))
	}
	if c.TrustDomain == "" {
		errs = append(errs, errors.New("--trust-domain must not be empty"))
	}
	if c.RootNamespace != "" {
		if msgs := validation.IsDNS1123Label(c.RootNamespace); len(msgs) > 0 {
			errs = append(errs, fmt.Errorf("--root-namespace %q: not a namespace name: %s", c.RootNamespace, strings.Join(msgs, "; ")))
		}
	}
	switch {
	case c.DebugAuth != "token" && c.DebugAuth != "kubernetes":
		errs = append(errs, fmt.Errorf("--debug-auth %q: want token or kubernetes", c.DebugAuth))
	case c.DebugAuth == "kubernetes" && c.LocalDir != "":
		errs = append(errs, errors.New("--debug-auth kubernetes needs a cluster, not --local-dir"))
	}
	if c.PodCertificates != "auto" && c.PodCertificates != "off" && c.PodCertificates != "workload" {
		errs = append(errs, fmt.Errorf("--pod-certificates %q: want auto, workload or off", c.PodCertificates))
	}
	if c.SidecarAPI != "delta" && c.SidecarAPI != "sotw" {
		errs = append(errs, fmt.Errorf("--sidecar-api %q: want delta or sotw", c.SidecarAPI))
	}
	if c.DetectionTimeout < 10*time.Millisecond || c.DetectionTimeout > time.Minute {
		errs = append(errs, fmt.Errorf("--protocol-detection-timeout %s: must be from 10ms to 1m", c.DetectionTimeout))
	}
	if c.CertTTL < time.Minute {
		errs = append(errs, fmt.Errorf("--cert-ttl %s: must be at least 1m (renewal runs at half the lifetime)", c.CertTTL))
	}
	if c.WebhookAddr != "" {
		if _, _, err := net.SplitHostPort(c.WebhookAddr); err != nil {
			errs = append(errs, fmt.Errorf("--webhook-addr %q: %w", c.WebhookAddr, err))
		}
		if c.LocalDir != "" {
			errs = append(errs, errors.New("--webhook-addr needs a cluster (not --local-dir)"))
		}
	}
	if c.IssuerRef != "" {
		if _, err := certmanager.ParseRef(c.IssuerRef); err != nil {
			errs = append(errs, fmt.Errorf("--issuer-ref: %w", err))
		}
		if c.LocalDir != "" {
			errs = append(errs, errors.New("--issuer-ref needs a cluster with cert-manager (not --local-dir)"))
		}
		if c.IssuerTimeout < time.Second {
			errs = append(errs, fmt.Errorf("--issuer-timeout %s: must be at least 1s", c.IssuerTimeout))
		}
	}
	if c.TrustBundle != "" {
		if _, _, _, err := ParseBundleRef(c.TrustBundle); err != nil {
			errs = append(errs, err)
		}
		if c.IssuerRef == "" {
			errs = append(errs, errors.New("--trust-bundle needs --issuer-ref"))
		}
	}
	if c.LeaseDuration < 3*time.Second {
		errs = append(errs, fmt.Errorf("--lease-duration %s: must be at least 3s", c.LeaseDuration))
	}
	if c.RootRotationGrace < 5*time.Second {
		errs = append(errs, fmt.Errorf("--root-rotation-grace %s: must be at least 5s", c.RootRotationGrace))
	}
	if c.HoldOff <= 0 || c.MaxDelay < c.HoldOff {
		errs = append(errs, fmt.Errorf("--hold-off %s / --max-delay %s: need 0 < hold-off <= max-delay", c.HoldOff, c.MaxDelay))
	}
	return errors.Join(append(errs, c.validateXDSLimits()...)...)
}

// validateXDSLimits holds the --xds-* flags to values a production meshd
// can run with (xds.Limits takes smaller ones, for tests): a zero would
// silently mean the default, a sub-second timeout would cut clients on a
// busy node, and a ping interval near the sidecars' own would cut them.
func (c *Config) validateXDSLimits() []error {
	var errs []error
	l := c.XDSLimits
	for _, f := range []struct {
		flag string
		v    int
	}{{"xds-streams-per-identity", l.StreamsPerIdentity}, {"xds-connections-per-identity", l.ConnectionsPerIdentity},
		{"xds-streams-per-connection", int(l.StreamsPerConnection)}, {"xds-request-burst", l.Burst}} {
		if f.v < 1 {
			errs = append(errs, fmt.Errorf("--%s %d: must be at least 1", f.flag, f.v))
		}
	}
	if l.RequestsPerSecond <= 0 {
		errs = append(errs, fmt.Errorf("--xds-request-rate %g: must be above 0", l.RequestsPerSecond))
	}
	for _, f := range []struct {
		flag string
		d    time.Duration
	}{{"xds-handshake-timeout", l.HandshakeTimeout}, {"xds-peer-timeout", l.PeerTimeout}, {"xds-min-ping-interval", l.MinPingInterval}} {
		if f.d < time.Second {
			errs = append(errs, fmt.Errorf("--%s %s: must be at least 1s", f.flag, f.d))
		}
	}
	if most := bootstrap.DefaultXDSKeepalive / 2; l.MinPingInterval > most {
		errs = append(errs, fmt.Errorf("--xds-min-ping-interval %s: at most %s (injected sidecars ping every %s; pings more frequent than the interval close their connections)",
			l.MinPingInterval, most, bootstrap.DefaultXDSKeepalive))
	}
	return errs
}

func orLoopback(addr string) string {
	if addr == "" {
		return "127.0.0.1:0"
	}
	return addr
}

// ParseBundleRef parses --trust-bundle: configmap/<name>/<key> or
// secret/<name>/<key>.
func ParseBundleRef(s string) (kind, name, key string, err error) {
	parts := strings.Split(s, "/")
	if len(parts) != 3 || (parts[0] != "configmap" && parts[0] != "secret") || parts[1] == "" || parts[2] == "" {
		return "", "", "", fmt.Errorf("--trust-bundle %q: want configmap/<name>/<key> or secret/<name>/<key>", s)
	}
	return parts[0], parts[1], parts[2], nil
}
