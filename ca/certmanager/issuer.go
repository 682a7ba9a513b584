// Package certmanager is meshd's second issuer backend: every workload
// certificate is a cert-manager CertificateRequest against the Issuer or
// ClusterIssuer the operator already trusts (any issuer group, so external
// issuers work). meshd generates the key, sends only the CSR, waits for the
// request through an informer, validates what comes back like the internal
// CA's own certificates, and deletes the request.
//
// Where it sits: behind the ca.Issuer interface; the renewal engine and the
// SDS manager use it exactly like the internal CA, and its certificates
// pass the same ca.Validator. It must not import sds, xds, k8s or the
// internal CA's ca/rootca and ca/store.
package certmanager

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	cmclient "github.com/cert-manager/cert-manager/pkg/client/clientset/versioned"
	cminformers "github.com/cert-manager/cert-manager/pkg/client/informers/externalversions"
	"golang.org/x/time/rate"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/clock"

	"github.com/meshd/meshd/ca"
)

// Labels on meshd's CertificateRequests.
const (
	LabelManaged = "meshd.io/managed-request"
	LabelPod     = "meshd.io/pod"
)

// Config configures an Issuer.
type Config struct {
	Client cmclient.Interface
	// Namespace is where the CertificateRequests are created (meshd's own;
	// an Issuer reference must live there).
	Namespace string
	IssuerRef cmmeta.IssuerReference
	// Duration requested (default 24h); a request's TTL wins.
	Duration time.Duration
	// Approve: meshd approves its own requests (needs the approve verb on
	// the issuer's signer); otherwise cert-manager's approver or a policy
	// approver must.
	Approve bool
	// Timeout bounds one issuance (default 30s).
	Timeout time.Duration
	// TrustBundle, if set, supplies the trust bundle served to proxies
	// (trust-manager style: the operator controls CA overlap there);
	// otherwise the issuer's status.ca is the bundle.
	TrustBundle func() []byte
	// OnBundleChange (optional) is called when status.ca changes, so every
	// certificate can be issued again under the new CA. The previous CA
	// stays in the served bundle for one certificate lifetime so proxies
	// not yet re-issued are still trusted meanwhile.
	OnBundleChange func()
	// QPS and Burst rate-limit request creation (default 50 and 100).
	QPS   float64
	Burst int
	// Metrics (optional) record issuance.
	Metrics *ca.Metrics
	Logger  *slog.Logger
	// Clock and Rand are injected (defaults: the wall clock, crypto/rand):
	// the clock times issuance, the garbage collection and the previous
	// CA's overlap; Rand makes keys and signs CSRs.
	Clock clock.WithTicker
	Rand  io.Reader
}

// Issuer implements ca.Issuer through cert-manager.
type Issuer struct {
	cfg     Config
	limiter *rate.Limiter

	mu      sync.Mutex
	waiters map[string]chan *cmapi.CertificateRequest
	synced  chan struct{}
	bundle  []byte // the last status.ca a request returned
	// previous status.ca, still served until previousUntil after a change
	previous      []byte
	previousUntil time.Time
}

// Bundle implements ca.Issuer: the configured trust bundle, else the CA
// the issuer returned last (empty before the first issuance).
func (i *Issuer) Bundle(context.Context) ([]byte, error) {
	if i.cfg.TrustBundle != nil {
		if b := i.cfg.TrustBundle(); len(b) > 0 {
			return b, nil
		}
	}
	i.mu.Lock()
	defer i.mu.Unlock()
	if len(i.bundle) == 0 {
		return nil, errors.New("certmanager: no trust bundle known yet")
	}
	return i.servedLocked(i.cfg.Clock.Now()), nil
}

// servedLocked is the CA bundle served: the current status.ca, plus the
// previous one during its overlap after a change.
func (i *Issuer) servedLocked(now time.Time) []byte {
	if len(i.previous) == 0 || now.After(i.previousUntil) {
		return i.bundle
	}
	return append(append(bytes.TrimSpace(bytes.Clone(i.bundle)), '\n'), i.previous...)
}

var _ ca.Issuer = (*Issuer)(nil)

// New returns an Issuer; Start must run before Issue returns anything.
func New(cfg Config) (*Issuer, error) {
	if cfg.Client == nil || cfg.Namespace == "" || cfg.IssuerRef.Name == "" {
		return nil, errors.New("certmanager: Client, Namespace and IssuerRef.Name are required")
	}
	switch cfg.IssuerRef.Kind {
	case "":
		cfg.IssuerRef.Kind = "Issuer"
	case "Issuer", "ClusterIssuer":
	default:
		if cfg.IssuerRef.Group == "" || cfg.IssuerRef.Group == "cert-manager.io" {
			return nil, fmt.Errorf("certmanager: issuer kind %q: want Issuer or ClusterIssuer", cfg.IssuerRef.Kind)
		}
	}
	if cfg.IssuerRef.Group == "" {
		cfg.IssuerRef.Group = "cert-manager.io"
	}
	if cfg.Duration == 0 {
		cfg.Duration = 24 * time.Hour
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 30 * time.Second
	}
	if cfg.QPS == 0 {
		cfg.QPS, cfg.Burst = 50, 100
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	if cfg.Rand == nil {
		cfg.Rand = crand.Reader
	}
	return &Issuer{cfg: cfg, limiter: rate.NewLimiter(rate.Limit(cfg.QPS), max(cfg.Burst, 1)),
		waiters: map[string]chan *cmapi.CertificateRequest{}, synced: make(chan struct{})}, nil
}

// ParseRef parses "kind/name[/group]" (e.g. ClusterIssuer/mesh-ca or
// Issuer/vault/vault.example.com).
func ParseRef(s string) (cmmeta.IssuerReference, error) {
	parts := strings.Split(s, "/")
	if len(parts) < 2 || len(parts) > 3 || parts[0] == "" || parts[1] == "" {
		return cmmeta.IssuerReference{}, fmt.Errorf("issuer reference %q: want kind/name[/group]", s)
	}
	ref := cmmeta.IssuerReference{Kind: parts[0], Name: parts[1]}
	if len(parts) == 3 {
		ref.Group = parts[2]
	}
	return ref, nil
}

// Start runs the informer over meshd's CertificateRequests and collects the
// garbage a crash left, until ctx ends.
func (i *Issuer) Start(ctx context.Context) error {
	factory := cminformers.NewSharedInformerFactoryWithOptions(i.cfg.Client, 0, cminformers.WithNamespace(i.cfg.Namespace),
		cminformers.WithTweakListOptions(func(o *metav1.ListOptions) { o.LabelSelector = LabelManaged }))
	inf := factory.Certmanager().V1().CertificateRequests().Informer()
	notify := func(obj any) {
		cr, ok := obj.(*cmapi.CertificateRequest)
		if !ok {
			return
		}
		i.mu.Lock()
		ch := i.waiters[cr.Name]
		i.mu.Unlock()
		if ch != nil {
			select {
			case ch <- cr:
			default: // the waiter has one pending; it re-reads the latest
				select {
				case <-ch:
				default:
				}
				ch <- cr
			}
		}
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{AddFunc: notify, UpdateFunc: func(_, n any) { notify(n) }}); err != nil {
		return err
	}
	factory.Start(ctx.Done())
	defer factory.Shutdown()
	if !cache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		return nil
	}
	close(i.synced)
	tick := i.cfg.Clock.NewTicker(max(i.cfg.Timeout, 30*time.Second))
	defer tick.Stop()
	for {
		i.collectGarbage(ctx, inf.GetStore().List(), i.cfg.Clock.Now())
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C():
		}
	}
}

// collectGarbage deletes meshd's requests left by a crash (this replica's
// or another's): every request ends deleted within Timeout of its creation,
// so one older than twice that, which nobody here waits for, is garbage.
// Requests other replicas are waiting for are younger and stay.
func (i *Issuer) collectGarbage(ctx context.Context, objs []any, now time.Time) {
	for _, obj := range objs {
		cr, ok := obj.(*cmapi.CertificateRequest)
		if !ok || now.Sub(cr.CreationTimestamp.Time) < 2*i.cfg.Timeout {
			continue
		}
		i.mu.Lock()
		_, waited := i.waiters[cr.Name]
		i.mu.Unlock()
		if waited {
			continue
		}
		err := i.cfg.Client.CertmanagerV1().CertificateRequests(cr.Namespace).Delete(ctx, cr.Name, metav1.DeleteOptions{})
		if err != nil && !apierrors.IsNotFound(err) {
			i.cfg.Logger.Warn("certmanager: collect a left-over CertificateRequest", "request", cr.Name, "error", err)
			continue
		}
		i.cfg.Logger.Info("certmanager: collected a left-over CertificateRequest", "request", cr.Name, "created", cr.CreationTimestamp.Time)
	}
}

// Issue implements ca.Issuer.
func (i *Issuer) Issue(ctx context.Context, req ca.Request) (*ca.Certificate, error) {
	start := i.cfg.Clock.Now()
	c, err := i.issue(ctx, req)
	i.cfg.Metrics.ObserveIssue(i.cfg.Clock.Since(start), c, err)
	return c, err
}

func (i *Issuer) issue(ctx context.Context, req ca.Request) (*ca.Certificate, error) {
	select {
	case <-i.synced:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	ctx, cancel := context.WithTimeout(ctx, i.cfg.Timeout)
	defer cancel()
	if req.Key == nil && req.PublicKey != nil {
		// A CertificateRequest carries a CSR, which only the private key
		// can sign, and the key is on the node.
		return nil, errors.New("certmanager: cannot certify a bare public key: cert-manager takes a CSR signed by the private key")
	}
	key := req.Key
	if key == nil {
		var err error
		if key, err = ca.GenerateKey(i.cfg.Rand, ca.KeyECDSAP256); err != nil {
			return nil, err
		}
		req.Key = key
	}
	csr, err := i.csr(req)
	if err != nil {
		return nil, err
	}
	if err := i.limiter.Wait(ctx); err != nil {
		return nil, fmt.Errorf("certmanager: rate limit: %w", err)
	}
	cr, err := i.create(ctx, req, csr)
	if err != nil {
		return nil, err
	}
	defer i.finish(cr.Name)
	done, err := i.wait(ctx, cr)
	if err != nil {
		return nil, err
	}
	return i.result(done, req)
}

// csr builds the request: the SPIFFE ID as the only URI SAN.
func (i *Issuer) csr(req ca.Request) ([]byte, error) {
	u, err := url.Parse(req.Identity.String())
	if err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificateRequest(i.cfg.Rand, &x509.CertificateRequest{
		Subject: pkix.Name{CommonName: req.CommonName}, URIs: []*url.URL{u}, DNSNames: req.DNSNames}, req.Key)
	if err != nil {
		return nil, fmt.Errorf("certmanager: CSR: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

func (i *Issuer) create(ctx context.Context, req ca.Request, csr []byte) (*cmapi.CertificateRequest, error) {
	d := i.cfg.Duration
	if req.TTL > 0 {
		d = req.TTL
	}
	pod := strings.NewReplacer("/", ".").Replace(req.Pod)
	if len(pod) > 63 {
		pod = pod[:63]
	}
	cr := &cmapi.CertificateRequest{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "meshd-", Namespace: i.cfg.Namespace,
			Labels:      map[string]string{LabelManaged: "true", LabelPod: strings.Trim(pod, ".-_")},
			Annotations: map[string]string{"meshd.io/identity": req.Identity.String(), "meshd.io/pod": req.Pod}},
		Spec: cmapi.CertificateRequestSpec{Request: csr, Duration: &metav1.Duration{Duration: d}, IssuerRef: i.cfg.IssuerRef,
			Usages: []cmapi.KeyUsage{cmapi.UsageDigitalSignature, cmapi.UsageKeyEncipherment, cmapi.UsageClientAuth, cmapi.UsageServerAuth}},
	}
	api := i.cfg.Client.CertmanagerV1().CertificateRequests(i.cfg.Namespace)
	created, err := api.Create(ctx, cr, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("certmanager: create CertificateRequest for %s: %w", req.Identity, err)
	}
	i.mu.Lock()
	i.waiters[created.Name] = make(chan *cmapi.CertificateRequest, 1)
	i.mu.Unlock()
	if i.cfg.Approve {
		created.Status.Conditions = append(created.Status.Conditions, cmapi.CertificateRequestCondition{
			Type: cmapi.CertificateRequestConditionApproved, Status: cmmeta.ConditionTrue, Reason: "meshd",
			Message: "approved by meshd for " + req.Identity.String(), LastTransitionTime: &metav1.Time{Time: i.cfg.Clock.Now()}})
		if _, err := api.UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil && !apierrors.IsConflict(err) {
			i.finish(created.Name)
			return nil, fmt.Errorf("certmanager: approve %s: %w", created.Name, err)
		}
	}
	return created, nil
}

// wait follows the request until it is issued or ends otherwise.
func (i *Issuer) wait(ctx context.Context, cr *cmapi.CertificateRequest) (*cmapi.CertificateRequest, error) {
	i.mu.Lock()
	ch := i.waiters[cr.Name]
	i.mu.Unlock()
	last := cr
	for {
		if done, err := verdict(last, i.cfg.IssuerRef); done || err != nil {
			return last, err
		}
		select {
		case cur := <-ch:
			last = cur
		case <-ctx.Done():
			reason := "no condition yet (is cert-manager running, does the issuer exist?)"
			if c := condition(last, cmapi.CertificateRequestConditionReady); c != nil {
				reason = fmt.Sprintf("Ready=%s %s: %s", c.Status, c.Reason, c.Message)
			}
			return nil, fmt.Errorf("certmanager: CertificateRequest %s/%s for %s/%s not issued in %s: %s",
				cr.Namespace, cr.Name, i.cfg.IssuerRef.Kind, i.cfg.IssuerRef.Name, i.cfg.Timeout, reason)
		}
	}
}

// verdict: issued (true, nil), still waiting (false, nil), or ended with
// the condition's reason.
func verdict(cr *cmapi.CertificateRequest, ref cmmeta.IssuerReference) (bool, error) {
	if c := condition(cr, cmapi.CertificateRequestConditionDenied); c != nil && c.Status == cmmeta.ConditionTrue {
		return false, fmt.Errorf("certmanager: CertificateRequest %s denied: %s: %s", cr.Name, c.Reason, c.Message)
	}
	if c := condition(cr, cmapi.CertificateRequestConditionInvalidRequest); c != nil && c.Status == cmmeta.ConditionTrue {
		return false, fmt.Errorf("certmanager: CertificateRequest %s invalid: %s: %s", cr.Name, c.Reason, c.Message)
	}
	if c := condition(cr, cmapi.CertificateRequestConditionReady); c != nil {
		switch {
		case c.Status == cmmeta.ConditionTrue && len(cr.Status.Certificate) > 0:
			return true, nil
		case c.Reason == cmapi.CertificateRequestReasonFailed || c.Reason == cmapi.CertificateRequestReasonDenied:
			return false, fmt.Errorf("certmanager: CertificateRequest %s failed at %s/%s: %s: %s", cr.Name, ref.Kind, ref.Name, c.Reason, c.Message)
		}
	}
	return false, nil
}

func condition(cr *cmapi.CertificateRequest, t cmapi.CertificateRequestConditionType) *cmapi.CertificateRequestCondition {
	for k := range cr.Status.Conditions {
		if cr.Status.Conditions[k].Type == t {
			return &cr.Status.Conditions[k]
		}
	}
	return nil
}

// result validates the issued chain.
func (i *Issuer) result(cr *cmapi.CertificateRequest, req ca.Request) (*ca.Certificate, error) {
	chain, err := ca.ParseCertsPEM(cr.Status.Certificate)
	if err != nil {
		return nil, fmt.Errorf("certmanager: %s: status.certificate: %w", cr.Name, err)
	}
	now := i.cfg.Clock.Now()
	var served []byte
	if i.cfg.TrustBundle != nil {
		served = i.cfg.TrustBundle()
	} else if len(cr.Status.CA) > 0 {
		i.mu.Lock()
		changed := len(i.bundle) > 0 && !bytes.Equal(i.bundle, cr.Status.CA)
		if changed {
			i.previous, i.previousUntil = i.bundle, now.Add(i.cfg.Duration)
		}
		i.bundle = cr.Status.CA
		served = i.servedLocked(now)
		i.mu.Unlock()
		if changed {
			i.cfg.Logger.Info("certmanager: the issuer's CA changed; issuing every certificate again", "issuer", i.cfg.IssuerRef.Name)
			if i.cfg.OnBundleChange != nil {
				i.cfg.OnBundleChange()
			}
		}
	}
	if len(served) == 0 {
		return nil, fmt.Errorf("certmanager: %s: the issuer returned no CA and no trust bundle is configured", cr.Name)
	}
	// Validated against what proxies will trust, so peers accept it.
	v, err := ca.ValidatorForBundle(served)
	if err == nil {
		err = v.Validate(chain, req, now)
	}
	if err != nil {
		return nil, fmt.Errorf("certmanager: %s: %w", cr.Name, err)
	}
	keyPEM, err := ca.EncodeKey(req.Key)
	if err != nil {
		return nil, err
	}
	var chainPEM []byte
	for _, c := range chain {
		chainPEM = append(chainPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})...)
	}
	return &ca.Certificate{Identity: req.Identity, Leaf: chain[0], ChainPEM: chainPEM, KeyPEM: keyPEM, BundlePEM: served, Backend: "cert-manager"}, nil
}

// finish ends a request, issued or not (its reason went into the error):
// informer events stop going to it, and it is deleted so nothing piles up
// with churn.
func (i *Issuer) finish(name string) {
	i.mu.Lock()
	delete(i.waiters, name)
	i.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := i.cfg.Client.CertmanagerV1().CertificateRequests(i.cfg.Namespace).Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		i.cfg.Logger.Warn("certmanager: delete CertificateRequest", "request", name, "error", err)
	}
}
