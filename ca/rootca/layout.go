// Package rootca keeps the internal CA's root material in a store: the
// layout of the record (an internal root, or a plug-in CA in Istio's
// cacerts layout), first creation with create-if-absent semantics and the
// trust record that refuses a silently replaced root (load.go), and root
// rotation, one idempotent step at a time (rotation.go), and the Follower
// that steps it and keeps a signer on the record's current material
// (follow.go).
//
// Where it sits: between ca (which signs with the Authority built here) and
// ca/store (which persists the record). It must not use client-go or
// Kubernetes API types itself (a record is not a Secret: the store
// decides), nor import sds, xds or k8s.
package rootca

import (
	"bytes"
	"crypto/x509"
	"fmt"
	"time"

	"github.com/meshd/meshd/ca"
)

// Keys of the CA record. The internal root uses root-cert.pem + ca-key.pem
// (the root signs); a plug-in CA uses Istio's cacerts layout: ca-cert.pem
// (the signing intermediate), ca-key.pem, cert-chain.pem (intermediates up
// to the root) and root-cert.pem.
const (
	KeyRootCert  = "root-cert.pem"
	KeyCACert    = "ca-cert.pem"
	KeyCAKey     = "ca-key.pem"
	KeyCertChain = "cert-chain.pem"
)

// Root rotation state, kept in the CA record so that a restarted replica or
// a new leader resumes where the last one stopped.
const (
	KeyNextRootCert = "next-root-cert.pem"
	KeyNextCAKey    = "next-ca-key.pem"
	KeyPhase        = "rotation-phase"
	KeyPhaseSince   = "rotation-since"
	// AnnotationRotate on the CA record asks for a root rotation.
	AnnotationRotate = "meshd.io/rotate-root"
)

// Phase is where a root rotation stands.
type Phase string

const (
	// PhaseSteady: one root, it signs.
	PhaseSteady Phase = ""
	// PhaseBundle: the bundle holds old and new roots; the old one still
	// signs, while the new bundle reaches every proxy.
	PhaseBundle Phase = "bundle"
	// PhaseSigning: the new root signs and every leaf is re-issued under it;
	// the bundle still holds both.
	PhaseSigning Phase = "signing"
)

// FromData builds an Authority from CA material in the layout above
// (either an internal root or a plug-in CA, in any rotation phase); every
// inconsistency is an error.
func FromData(data map[string][]byte, now time.Time) (*ca.Authority, error) {
	roots, err := ca.ParseCertsPEM(data[KeyRootCert])
	if err != nil {
		return nil, fmt.Errorf("%s: %w", KeyRootCert, err)
	}
	key, err := ca.ParseKeyPEM(data[KeyCAKey])
	if err != nil {
		return nil, fmt.Errorf("%s: %w", KeyCAKey, err)
	}
	signing := roots[0]
	var intermediates []*x509.Certificate
	if caPEM, plugin := data[KeyCACert]; plugin {
		certs, err := ca.ParseCertsPEM(caPEM)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", KeyCACert, err)
		}
		signing = certs[0]
		if chain := data[KeyCertChain]; len(chain) > 0 {
			if intermediates, err = ca.ParseCertsPEM(chain); err != nil {
				return nil, fmt.Errorf("%s: %w", KeyCertChain, err)
			}
		}
		intermediates = withoutRoots(intermediates, roots, signing)
	}
	if nextPEM, rotating := data[KeyNextRootCert]; rotating {
		next, err := ca.ParseCertsPEM(nextPEM)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", KeyNextRootCert, err)
		}
		roots = append(roots, next[0])
		if Phase(data[KeyPhase]) == PhaseSigning {
			if key, err = ca.ParseKeyPEM(data[KeyNextCAKey]); err != nil {
				return nil, fmt.Errorf("%s: %w", KeyNextCAKey, err)
			}
			signing = next[0]
		}
	}
	return ca.NewAuthority(signing, key, intermediates, roots, now)
}

// withoutRoots drops roots and the signing certificate itself from a chain
// (cacerts' cert-chain.pem usually repeats them).
func withoutRoots(chain, roots []*x509.Certificate, signing *x509.Certificate) []*x509.Certificate {
	var out []*x509.Certificate
	for _, c := range chain {
		if !bytes.Equal(c.Raw, signing.Raw) && !containsCert(roots, c) {
			out = append(out, c)
		}
	}
	return out
}

func containsCert(list []*x509.Certificate, c *x509.Certificate) bool {
	for _, x := range list {
		if bytes.Equal(x.Raw, c.Raw) {
			return true
		}
	}
	return false
}
