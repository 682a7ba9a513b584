package ca

import (
	"context"
	"crypto"
	"crypto/x509"
	"time"
)

// KeyType selects the private key algorithm of an issued certificate.
type KeyType string

const (
	KeyECDSAP256 KeyType = "ecdsa-p256" // default
	KeyRSA2048   KeyType = "rsa-2048"
	KeyRSA3072   KeyType = "rsa-3072"
)

// Request asks for a certificate for one workload.
type Request struct {
	Identity Identity
	// Key is the workload's private key; the certificate binds its public half.
	// Callers generate a fresh key per pod (see GenerateKey).
	Key crypto.Signer
	// TTL is the requested lifetime; zero means the issuer's default.
	TTL time.Duration
	// DNSNames are optional extra SANs (used for meshd's own serving certificate).
	DNSNames []string
	// CommonName is an optional Subject CN (the node ID of an xDS client
	// certificate binds it to one pod).
	CommonName string
	// Pod names the pod the certificate is for (namespace/name); used for labels,
	// events and audit, never for the identity itself.
	Pod string
	// PublicKey, when set instead of Key, is the public key to certify: the
	// private key stays with whoever made it (a kubelet answering a pod's
	// podCertificate volume), and the Certificate carries no KeyPEM.
	PublicKey crypto.PublicKey
	// PodUID, if set, binds the certificate to one pod object: it goes into
	// the Subject's serialNumber attribute (see PodUIDOf).
	PodUID string
}

// publicKey is the key the certificate binds: Key's public half, else
// PublicKey.
func (r Request) publicKey() crypto.PublicKey {
	if r.Key != nil {
		return r.Key.Public()
	}
	return r.PublicKey
}

// PodUIDOf returns the pod UID a certificate is bound to ("" for none).
func PodUIDOf(c *x509.Certificate) string { return c.Subject.SerialNumber }

// Certificate is an issued, validated certificate.
//
// Ownership: the Issuer returns a new value on every call; callers may keep it
// but must not mutate the slices. KeyPEM is secret: never log it, never put it
// in an error.
type Certificate struct {
	Identity Identity
	// Leaf is the parsed leaf certificate.
	Leaf *x509.Certificate
	// ChainPEM is the leaf followed by any intermediates, PEM encoded.
	ChainPEM []byte
	// KeyPEM is the PKCS#8 PEM private key matching Leaf.
	KeyPEM []byte
	// BundlePEM is the trust bundle (one or more roots) the chain verifies to.
	BundlePEM []byte
	// Backend names the issuer that signed it ("internal", "cert-manager").
	Backend string
}

// Issuer signs workload certificates. Implementations must be safe for
// concurrent use, must validate every certificate before returning it (chain
// to the bundle, SAN, key usage, lifetime), and must honour ctx cancellation.
type Issuer interface {
	Issue(ctx context.Context, req Request) (*Certificate, error)
	// Bundle returns the current trust bundle (PEM, one or more roots).
	Bundle(ctx context.Context) ([]byte, error)
}
