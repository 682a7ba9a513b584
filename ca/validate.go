package ca

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"time"
)

// Validator is the one check every issued certificate passes before anyone
// may serve it, whichever backend signed it (the internal CA, cert-manager
// or an external issuer behind it): the leaf carries exactly the request's
// SPIFFE ID as URI SAN, is not a CA, has digitalSignature and both
// serverAuth and clientAuth, binds the request's key, is valid now, and
// the chain verifies to Roots (or, for the internal CA's own leaves, is
// linked to its Signer).
type Validator struct {
	// Roots is the trust bundle the chain must verify to: the bundle
	// proxies will use, so that peers accept the certificate.
	Roots *x509.CertPool
	// Signer, when the caller signed the leaf itself (the internal CA), is
	// the signing certificate, already verified to the roots: the leaf must
	// name it as issuer and must not outlive it, and it must be valid now.
	Signer *x509.Certificate
}

// ValidatorForBundle is the Validator of an external issuer's
// certificates: the chain must verify to the PEM bundle.
func ValidatorForBundle(bundlePEM []byte) (Validator, error) {
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(bundlePEM) {
		return Validator{}, errors.New("validate: empty trust bundle")
	}
	return Validator{Roots: roots}, nil
}

// Validate checks chain (the leaf, then any intermediates) issued for req.
func (v Validator) Validate(chain []*x509.Certificate, req Request, now time.Time) error {
	if len(chain) == 0 {
		return errors.New("validate: empty chain")
	}
	leaf := chain[0]
	if err := checkLeaf(leaf, req); err != nil {
		return err
	}
	if s := v.Signer; s != nil {
		// The internal CA's own leaf: x509.CreateCertificate has already
		// checked the signature against the signing key, which NewAuthority
		// checked belongs to Signer, and NewAuthority verified Signer up to
		// the roots. What is left is the linkage and the validity windows,
		// checked without a second signature verification (which would
		// halve the issuance rate).
		if !leaf.NotAfter.After(now) || leaf.NotAfter.After(s.NotAfter) {
			return fmt.Errorf("validate: lifetime %s..%s is outside now..CA expiry", leaf.NotBefore, leaf.NotAfter)
		}
		if !bytes.Equal(leaf.RawIssuer, s.RawSubject) || (len(s.SubjectKeyId) > 0 && !bytes.Equal(leaf.AuthorityKeyId, s.SubjectKeyId)) {
			return errors.New("validate: chain: leaf is not issued by the signing CA")
		}
		if now.Before(s.NotBefore) || now.After(s.NotAfter) {
			return errors.New("validate: chain: the signing CA is not valid now")
		}
		return nil
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: v.Roots, Intermediates: inter, CurrentTime: now,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}); err != nil {
		return fmt.Errorf("validate: chain: %w", err)
	}
	return nil
}

// checkLeaf checks what every leaf must be, whoever signed it.
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
	if !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageServerAuth) || !slices.Contains(leaf.ExtKeyUsage, x509.ExtKeyUsageClientAuth) {
		return errors.New("validate: want serverAuth and clientAuth extended key usage")
	}
	type equaler interface{ Equal(crypto.PublicKey) bool }
	if pub, ok := req.publicKey().(equaler); req.publicKey() != nil && (!ok || !pub.Equal(leaf.PublicKey)) {
		return errors.New("validate: certificate does not bind the request's key")
	}
	return nil
}
