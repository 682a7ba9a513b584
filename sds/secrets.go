// Package sds turns issued certificates into Envoy Secret resources: per
// proxy, secret "default" (the pod's certificate chain and key) and "ROOTCA"
// (the trust bundle as a validation context).
//
// Where it sits in the pipeline: ca issues and renews certificates; sds keeps
// one set of secrets per connected proxy and hands them to the snapshot
// publisher in xds, which serves them before anything that references them.
package sds

import (
	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"

	"github.com/meshd/meshd/ca"
)

// Secret names served to every proxy.
const (
	NameDefault = "default"
	NameRootCA  = "ROOTCA"
)

// CertificateSecret returns secret "default" for an issued certificate. The
// returned message holds the private key: never log or dump it unredacted.
func CertificateSecret(c *ca.Certificate) *tlsv3.Secret {
	return &tlsv3.Secret{
		Name: NameDefault,
		Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
			CertificateChain: inline(c.ChainPEM),
			PrivateKey:       inline(c.KeyPEM),
		}},
	}
}

// BundleSecret returns secret "ROOTCA" holding the trust bundle (one or more
// roots). Peer SAN checks live in the listeners and clusters, not here, so
// one ROOTCA serves every proxy.
func BundleSecret(bundlePEM []byte) *tlsv3.Secret {
	return &tlsv3.Secret{
		Name: NameRootCA,
		Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
			TrustedCa: inline(bundlePEM),
		}},
	}
}

func inline(b []byte) *corev3.DataSource {
	return &corev3.DataSource{Specifier: &corev3.DataSource_InlineBytes{InlineBytes: b}}
}

// Redact returns a copy of s with private key material replaced by a marker,
// for debug output.
func Redact(s *tlsv3.Secret) *tlsv3.Secret {
	tc := s.GetTlsCertificate()
	if tc == nil {
		return s
	}
	return &tlsv3.Secret{Name: s.GetName(), Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
		CertificateChain: tc.GetCertificateChain(),
		PrivateKey: &corev3.DataSource{Specifier: &corev3.DataSource_InlineString{
			InlineString: "[redacted]"}},
	}}}
}
