package ca_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"math/big"
	"net/url"
	"testing"
	"time"

	"github.com/meshd/meshd/ca"
)

// BenchmarkIssue measures meshd's whole issuance path (fresh key, template,
// sign, validate, encode) with parallel callers, in certificates/second.
func BenchmarkIssue(b *testing.B) {
	for _, kt := range []ca.KeyType{ca.KeyECDSAP256, ca.KeyRSA2048} {
		b.Run(string(kt), func(b *testing.B) {
			root, _ := ca.NewRoot(rand.Reader, time.Now(), "cluster.local")
			in, _ := ca.NewInternal(ca.InternalConfig{Authority: root, KeyType: kt})
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := in.Issue(context.Background(), ca.Request{Identity: web}); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "certs/s")
		})
	}
}

// BenchmarkRawLimit is the floor meshd is measured against: P-256 key
// generation + x509.CreateCertificate, no meshd code, same parallelism.
func BenchmarkRawLimit(b *testing.B) {
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
	caDER, _ := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, caKey.Public(), caKey)
	caCert, _ := x509.ParseCertificate(caDER)
	id, _ := url.Parse("spiffe://cluster.local/ns/demo/sa/web")
	start := time.Now()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), URIs: []*url.URL{id}, NotBefore: time.Now(), NotAfter: time.Now().Add(time.Hour)}
			if _, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, k.Public(), caKey); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "certs/s")
}
