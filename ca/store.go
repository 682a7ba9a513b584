package ca

import (
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Keys of the CA Secret. The internal root uses root-cert.pem + ca-key.pem
// (the root signs); a plug-in CA uses Istio's cacerts layout: ca-cert.pem
// (the signing intermediate), ca-key.pem, cert-chain.pem (intermediates up
// to the root) and root-cert.pem.
const (
	KeyRootCert  = "root-cert.pem"
	KeyCACert    = "ca-cert.pem"
	KeyCAKey     = "ca-key.pem"
	KeyCertChain = "cert-chain.pem"
)

// SecretClient is the part of a typed Secrets client (one namespace) the CA
// uses: client.CoreV1().Secrets(namespace).
type SecretClient interface {
	Get(ctx context.Context, name string, opts metav1.GetOptions) (*corev1.Secret, error)
	Create(ctx context.Context, s *corev1.Secret, opts metav1.CreateOptions) (*corev1.Secret, error)
}

// LoadOrCreateRoot returns the internal root kept in Secret name. On first
// start it creates a self-signed root with create-if-absent semantics: when
// several replicas race, the one whose Create wins defines the root and the
// others read it back. An existing Secret that does not hold valid, matching
// material is an error: the root is never silently replaced.
//
// A mesh remembers that it has a root: next to the CA Secret, a record
// (Secret <name>-trust, public data only) holds the trust bundle. A CA
// Secret that is missing while the record exists was deleted: that is an
// error, not a first start, because a new root would silently cut every
// sidecar off.
func LoadOrCreateRoot(ctx context.Context, secrets SecretClient, name, trustDomain string, rand io.Reader, now time.Time) (*Authority, error) {
	s, err := secrets.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		if rec, rerr := secrets.Get(ctx, TrustRecordName(name), metav1.GetOptions{}); rerr == nil {
			// A replica starting at the same time may have created both
			// since our first read: the CA Secret is there now.
			if s, err = secrets.Get(ctx, name, metav1.GetOptions{}); err == nil {
				return loadAndRecord(ctx, secrets, name, s, now)
			} else if !apierrors.IsNotFound(err) {
				return nil, fmt.Errorf("ca: read CA secret %s: %w", name, err)
			}
			return nil, fmt.Errorf("ca: the CA secret %s is gone but this mesh trusts a root (recorded in %s, %d bytes of bundle): "+
				"restore %s from a backup; only to start a new mesh root on purpose (every sidecar must then be re-injected), delete %s",
				name, TrustRecordName(name), len(rec.Data[KeyRootCert]), name, TrustRecordName(name))
		} else if !apierrors.IsNotFound(rerr) {
			return nil, fmt.Errorf("ca: read trust record %s: %w", TrustRecordName(name), rerr)
		}
		a, err := createRoot(ctx, secrets, name, trustDomain, rand, now)
		if err != nil {
			return nil, err
		}
		return a, recordTrust(ctx, secrets, name, a)
	}
	if err != nil {
		return nil, fmt.Errorf("ca: read CA secret %s: %w", name, err)
	}
	return loadAndRecord(ctx, secrets, name, s, now)
}

func loadAndRecord(ctx context.Context, secrets SecretClient, name string, s *corev1.Secret, now time.Time) (*Authority, error) {
	a, err := authorityFromSecret(s, now)
	if err != nil {
		return nil, err
	}
	return a, recordTrust(ctx, secrets, name, a)
}

// TrustRecordName is the Secret that records a mesh's trust bundle.
func TrustRecordName(caSecret string) string { return caSecret + "-trust" }

// recordTrust creates the trust record if it is missing (a mesh created
// before records existed gets one at its next start).
func recordTrust(ctx context.Context, secrets SecretClient, name string, a *Authority) error {
	rec := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: TrustRecordName(name), Labels: map[string]string{"app.kubernetes.io/managed-by": "meshd"}},
		Type:       corev1.SecretTypeOpaque,
		Data:       map[string][]byte{KeyRootCert: a.BundlePEM},
	}
	if _, err := secrets.Create(ctx, rec, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("ca: create trust record %s: %w", rec.Name, err)
	}
	return nil
}

func createRoot(ctx context.Context, secrets SecretClient, name, trustDomain string, rand io.Reader, now time.Time) (*Authority, error) {
	a, err := NewRoot(rand, now, trustDomain)
	if err != nil {
		return nil, err
	}
	keyPEM, err := encodeKey(a.Key)
	if err != nil {
		return nil, err
	}
	s := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"app.kubernetes.io/managed-by": "meshd"}},
		Type:       corev1.SecretTypeOpaque,
		Data:       map[string][]byte{KeyRootCert: a.BundlePEM, KeyCAKey: keyPEM},
	}
	_, err = secrets.Create(ctx, s, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		// Another replica won the race: use its root.
		return LoadRoot(ctx, secrets, name, now)
	}
	if err != nil {
		return nil, fmt.Errorf("ca: create CA secret %s: %w", name, err)
	}
	return a, nil
}

// LoadRoot reads the CA kept in Secret name; it never creates one.
func LoadRoot(ctx context.Context, secrets SecretClient, name string, now time.Time) (*Authority, error) {
	s, err := secrets.Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("ca: read CA secret %s: %w", name, err)
	}
	return authorityFromSecret(s, now)
}

// authorityFromSecret reads either layout: an internal root (root-cert.pem +
// ca-key.pem) or a plug-in CA (ca-cert.pem present).
func authorityFromSecret(s *corev1.Secret, now time.Time) (*Authority, error) {
	a, err := AuthorityFromPEM(s.Data, now)
	if err != nil {
		return nil, fmt.Errorf("ca: CA secret %s/%s: %w", s.Namespace, s.Name, err)
	}
	return a, nil
}

// AuthorityFromPEM builds an Authority from CA material in the Secret layout
// above; every inconsistency is an error.
func AuthorityFromPEM(data map[string][]byte, now time.Time) (*Authority, error) {
	roots, err := ParseCertsPEM(data[KeyRootCert])
	if err != nil {
		return nil, fmt.Errorf("%s: %w", KeyRootCert, err)
	}
	key, err := ParseKeyPEM(data[KeyCAKey])
	if err != nil {
		return nil, fmt.Errorf("%s: %w", KeyCAKey, err)
	}
	signing := roots[0]
	var intermediates []*x509.Certificate
	if caPEM, plugin := data[KeyCACert]; plugin {
		certs, err := ParseCertsPEM(caPEM)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", KeyCACert, err)
		}
		signing = certs[0]
		if chain := data[KeyCertChain]; len(chain) > 0 {
			if intermediates, err = ParseCertsPEM(chain); err != nil {
				return nil, fmt.Errorf("%s: %w", KeyCertChain, err)
			}
		}
		intermediates = withoutRoots(intermediates, roots, signing)
	}
	if nextPEM, rotating := data[KeyNextRootCert]; rotating {
		next, err := ParseCertsPEM(nextPEM)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", KeyNextRootCert, err)
		}
		roots = append(roots, next[0])
		if Phase(data[KeyPhase]) == PhaseSigning {
			if key, err = ParseKeyPEM(data[KeyNextCAKey]); err != nil {
				return nil, fmt.Errorf("%s: %w", KeyNextCAKey, err)
			}
			signing = next[0]
		}
	}
	return NewAuthority(signing, key, intermediates, roots, now)
}

// withoutRoots drops roots and the signing certificate itself from a chain
// (cacerts' cert-chain.pem usually repeats them).
func withoutRoots(chain, roots []*x509.Certificate, signing *x509.Certificate) []*x509.Certificate {
	var out []*x509.Certificate
	for _, c := range chain {
		if !isIn(c, roots) && !isIn(c, []*x509.Certificate{signing}) {
			out = append(out, c)
		}
	}
	return out
}
