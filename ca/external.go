package ca

import (
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"time"
)

// Helpers for issuer backends outside this package (cert-manager): the
// same checks and encodings the internal CA uses.

// EncodeKey returns a private key as PKCS#8 PEM. The result is secret.
func EncodeKey(key crypto.Signer) ([]byte, error) { return encodeKey(key) }

// ObserveIssue records one issuance (or failure) in the metrics.
func (m *Metrics) ObserveIssue(d time.Duration, c *Certificate, err error) { m.observeIssue(d, c, err) }

// ValidateExternal checks a certificate an external issuer returned before
// anyone may serve it: exactly the request's SPIFFE ID as URI SAN, not a
// CA, digitalSignature, serverAuth and clientAuth, bound to the request's
// key, currently valid, and the chain (leaf plus intermediates) verifies to
// the bundle.
func ValidateExternal(chain []*x509.Certificate, bundlePEM []byte, req Request, now time.Time) error {
	if len(chain) == 0 {
		return errors.New("validate: empty chain")
	}
	leaf := chain[0]
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
	if req.Key != nil && !publicKeysEqual(leaf, req.Key) {
		return errors.New("validate: certificate does not bind the request's key")
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(bundlePEM) {
		return errors.New("validate: empty trust bundle")
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}); err != nil {
		return fmt.Errorf("validate: chain: %w", err)
	}
	return nil
}
