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
	if err := checkLeaf(leaf, req); err != nil {
		return err
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
