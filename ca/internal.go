package ca

import (
	"bytes"
	"context"
	"crypto"
	crand "crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"sync/atomic"
	"time"

	"k8s.io/utils/clock"
)

// InternalConfig configures the internal CA.
type InternalConfig struct {
	// Authority signs; swap it with SetAuthority (root rotation).
	Authority *Authority
	// TTL is the default leaf lifetime (default 24h).
	TTL time.Duration
	// KeyType is used when a Request carries no key (default ECDSA P-256).
	KeyType KeyType
	// Clock and Rand are injected (defaults: the wall clock, crypto/rand).
	Clock clock.PassiveClock
	Rand  io.Reader
	// Metrics may be nil.
	Metrics *Metrics
}

// Internal is the internal CA: it signs leaves with its Authority. Safe for
// concurrent use.
type Internal struct {
	cfg  InternalConfig
	auth atomic.Pointer[Authority]
}

// NewInternal returns the internal CA.
func NewInternal(cfg InternalConfig) (*Internal, error) {
	if cfg.Authority == nil {
		return nil, errors.New("ca: internal CA needs an authority")
	}
	if cfg.TTL == 0 {
		cfg.TTL = 24 * time.Hour
	}
	if cfg.Rand == nil {
		cfg.Rand = crand.Reader
	}
	if cfg.Clock == nil {
		cfg.Clock = clock.RealClock{}
	}
	in := &Internal{cfg: cfg}
	in.auth.Store(cfg.Authority)
	cfg.Metrics.observeRoots(cfg.Authority.Roots)
	return in, nil
}

// SetAuthority replaces the signing material (root rotation).
func (in *Internal) SetAuthority(a *Authority) {
	in.auth.Store(a)
	in.cfg.Metrics.observeRoots(a.Roots)
}

// Authority returns the current signing material.
func (in *Internal) Authority() *Authority { return in.auth.Load() }

// Bundle implements Issuer.
func (in *Internal) Bundle(context.Context) ([]byte, error) { return in.auth.Load().BundlePEM, nil }

// Issue implements Issuer: template, sign, validate.
func (in *Internal) Issue(ctx context.Context, req Request) (*Certificate, error) {
	start := in.cfg.Clock.Now()
	c, err := in.issue(ctx, req)
	in.cfg.Metrics.observeIssue(in.cfg.Clock.Since(start), c, err)
	if err != nil {
		return nil, fmt.Errorf("ca: issue %s: %w", req.Identity, err)
	}
	return c, nil
}

func (in *Internal) issue(ctx context.Context, req Request) (*Certificate, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := req.Identity.Validate(); err != nil {
		return nil, err
	}
	if req.Key == nil && req.PublicKey == nil {
		key, err := GenerateKey(in.cfg.Rand, in.cfg.KeyType)
		if err != nil {
			return nil, err
		}
		req.Key = key
	}
	a := in.auth.Load()
	ttl := req.TTL
	if ttl <= 0 {
		ttl = in.cfg.TTL
	}
	tmpl, err := leafTemplate(in.cfg.Rand, req, in.cfg.Clock.Now(), ttl, a.Cert.NotAfter)
	if err != nil {
		return nil, err
	}
	der, err := x509.CreateCertificate(in.cfg.Rand, tmpl, a.Cert, req.publicKey(), a.Key)
	if err != nil {
		return nil, fmt.Errorf("sign: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	if err := a.validate(leaf, req, in.cfg.Clock.Now()); err != nil {
		return nil, err
	}
	var keyPEM []byte
	if req.Key != nil {
		if keyPEM, err = encodeKey(req.Key); err != nil {
			return nil, err
		}
	}
	return &Certificate{Identity: req.Identity, Leaf: leaf, KeyPEM: keyPEM, BundlePEM: a.BundlePEM, Backend: "internal",
		ChainPEM: append(encodeCert(der), a.ChainPEM...)}, nil
}

// leafTemplate is the template of a workload certificate: the SPIFFE ID as
// the only URI SAN, usable for both ends of mTLS, a random serial, clamped to
// the CA's own validity.
func leafTemplate(rand io.Reader, req Request, now time.Time, ttl time.Duration, caNotAfter time.Time) (*x509.Certificate, error) {
	serial, err := randomSerial(rand)
	if err != nil {
		return nil, err
	}
	notAfter := now.Add(ttl)
	if notAfter.After(caNotAfter) {
		notAfter = caNotAfter
	}
	usage := x509.KeyUsageDigitalSignature
	if _, rsaKey := req.publicKey().(interface{ Size() int }); rsaKey {
		usage |= x509.KeyUsageKeyEncipherment
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{req.Identity.TrustDomain}},
		URIs:                  []*url.URL{req.Identity.SPIFFEID()},
		NotBefore:             now.Add(-time.Minute), // tolerate small clock skew between pods
		NotAfter:              notAfter,
		KeyUsage:              usage,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	for _, n := range req.DNSNames {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	if req.CommonName != "" {
		tmpl.Subject.CommonName = req.CommonName
	}
	tmpl.Subject.SerialNumber = req.PodUID
	return tmpl, nil
}

func hasEKU(c *x509.Certificate, want x509.ExtKeyUsage) bool {
	for _, u := range c.ExtKeyUsage {
		if u == want {
			return true
		}
	}
	return false
}

// checkLeaf checks what every issued leaf must be, whoever signed it:
// exactly the request's SPIFFE ID as URI SAN, not a CA, digitalSignature,
// serverAuth and clientAuth, bound to the request's key.
func checkLeaf(leaf *x509.Certificate, req Request) error {
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != req.Identity.String() {
		return fmt.Errorf("validate: URI SANs %v, want exactly %s", leaf.URIs, req.Identity)
	}
	if leaf.IsCA {
		return errors.New("validate: leaf is a CA")
	}
	if leaf.KeyUsage&x509.KeyUsageDigitalSignature == 0 {
		return errors.New("validate: no digitalSignature key usage")
	}
	if !hasEKU(leaf, x509.ExtKeyUsageServerAuth) || !hasEKU(leaf, x509.ExtKeyUsageClientAuth) {
		return errors.New("validate: want serverAuth and clientAuth extended key usage")
	}
	type equaler interface{ Equal(crypto.PublicKey) bool }
	if pub, ok := req.publicKey().(equaler); req.publicKey() != nil && (!ok || !pub.Equal(leaf.PublicKey)) {
		return errors.New("validate: certificate does not bind the request's key")
	}
	return nil
}

// validate checks an issued leaf before anyone may serve it.
func (a *Authority) validate(leaf *x509.Certificate, req Request, now time.Time) error {
	if err := checkLeaf(leaf, req); err != nil {
		return err
	}
	if !leaf.NotAfter.After(now) || leaf.NotAfter.After(a.Cert.NotAfter) {
		return fmt.Errorf("validate: lifetime %s..%s is outside now..CA expiry", leaf.NotBefore, leaf.NotAfter)
	}
	// The chain: x509.CreateCertificate has already checked the signature
	// against the CA key, which NewAuthority checked belongs to a.Cert, and
	// NewAuthority verified a.Cert up to the bundle. What is left is the
	// linkage and the validity windows, checked here without a second
	// signature verification.
	if !bytes.Equal(leaf.RawIssuer, a.Cert.RawSubject) ||
		(len(a.Cert.SubjectKeyId) > 0 && !bytes.Equal(leaf.AuthorityKeyId, a.Cert.SubjectKeyId)) {
		return errors.New("validate: chain: leaf is not issued by the signing CA")
	}
	if now.Before(a.Cert.NotBefore) || now.After(a.Cert.NotAfter) {
		return errors.New("validate: chain: the signing CA is not valid now")
	}
	return nil
}
