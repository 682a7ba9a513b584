package ca

import (
	"context"
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
	in.cfg.Metrics.ObserveIssue(in.cfg.Clock.Since(start), c, err)
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
	if err := a.validator().Validate([]*x509.Certificate{leaf}, req, in.cfg.Clock.Now()); err != nil {
		return nil, err
	}
	var keyPEM []byte
	if req.Key != nil {
		if keyPEM, err = EncodeKey(req.Key); err != nil {
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
