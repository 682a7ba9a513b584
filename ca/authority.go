package ca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	crand "crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"time"
)

// Authority is the signing material of the internal CA: the certificate that
// signs leaves (a root, or an intermediate of a plug-in CA), its key, the
// intermediates between it and a root, and the trust bundle (every root
// proxies must accept, more than one during a root rotation).
//
// An Authority is immutable once built; it is safe for concurrent use.
type Authority struct {
	Cert *x509.Certificate
	Key  crypto.Signer
	// ChainPEM is the signing certificate and any intermediates up to (not
	// including) the root, appended to every leaf. Empty when Cert is a root.
	ChainPEM []byte
	// Roots are the trusted roots; BundlePEM is their PEM.
	Roots     []*x509.Certificate
	BundlePEM []byte

	pool *x509.CertPool
}

// RootTTL is the lifetime of a self-signed root.
const RootTTL = 10 * 365 * 24 * time.Hour

// NewRoot creates a self-signed P-256 root valid for RootTTL from now.
func NewRoot(rand io.Reader, now time.Time, trustDomain string) (*Authority, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand)
	if err != nil {
		return nil, fmt.Errorf("ca: root key: %w", err)
	}
	serial, err := randomSerial(rand)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{Organization: []string{"meshd"}, CommonName: "meshd root CA " + trustDomain},
		NotBefore:    now.Add(-5 * time.Minute), NotAfter: now.Add(RootTTL),
		IsCA: true, BasicConstraintsValid: true, MaxPathLen: 1,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("ca: create root: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return NewAuthority(cert, key, nil, []*x509.Certificate{cert}, now)
}

// NewAuthority checks and assembles signing material: the key must match
// the certificate, the certificate must be a CA valid at now, and it must
// chain through intermediates to one of roots. Mismatched or expired
// material is refused, never repaired.
func NewAuthority(cert *x509.Certificate, key crypto.Signer, intermediates, roots []*x509.Certificate, now time.Time) (*Authority, error) {
	if !publicKeysEqual(cert, key) {
		return nil, errors.New("ca: CA key does not match the CA certificate")
	}
	if !cert.IsCA || !cert.BasicConstraintsValid || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("ca: certificate %q is not a CA that may sign certificates", cert.Subject)
	}
	if now.Before(cert.NotBefore) || now.After(cert.NotAfter) {
		return nil, fmt.Errorf("ca: CA certificate %q is not valid now (valid %s to %s)", cert.Subject, cert.NotBefore, cert.NotAfter)
	}
	if len(roots) == 0 {
		return nil, errors.New("ca: no root in the trust bundle")
	}
	a := &Authority{Cert: cert, Key: key, Roots: roots, pool: x509.NewCertPool()}
	inter := x509.NewCertPool()
	for _, r := range roots {
		a.pool.AddCert(r)
		a.BundlePEM = append(a.BundlePEM, encodeCert(r.Raw)...)
	}
	if !isIn(cert, roots) {
		for _, c := range append([]*x509.Certificate{cert}, intermediates...) {
			inter.AddCert(c)
			a.ChainPEM = append(a.ChainPEM, encodeCert(c.Raw)...)
		}
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: a.pool, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, fmt.Errorf("ca: CA certificate %q does not chain to the trust bundle: %w", cert.Subject, err)
	}
	return a, nil
}

func isIn(c *x509.Certificate, list []*x509.Certificate) bool {
	for _, x := range list {
		if bytes.Equal(x.Raw, c.Raw) {
			return true
		}
	}
	return false
}

// validator checks the leaves this Authority signs: linked to its signing
// certificate, which NewAuthority verified to its roots.
func (a *Authority) validator() Validator { return Validator{Roots: a.pool, Signer: a.Cert} }

// randomSerial returns a random positive 128-bit serial number.
func randomSerial(rand io.Reader) (*big.Int, error) {
	s, err := crand.Int(rand, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return nil, fmt.Errorf("ca: serial: %w", err)
	}
	return s.Add(s, big.NewInt(1)), nil
}
