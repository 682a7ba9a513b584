package podcert

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"testing"
	"time"

	certsv1beta1 "k8s.io/api/certificates/v1beta1"
)

// FuzzCheckRequest: whatever a request carries (its key fields come from a
// kubelet, or from anyone allowed to create requests), checkRequest
// returns a supported key or a verdict with a reason, and never panics.
func FuzzCheckRequest(f *testing.F) {
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	csr, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	pkix, _ := x509.MarshalPKIXPublicKey(key.Public())
	f.Add(csr, []byte(nil), int32(86400))
	f.Add([]byte(nil), pkix, int32(3600))
	f.Add(csr[:len(csr)/2], pkix[1:], int32(-1))
	f.Fuzz(func(t *testing.T, stub, pkix []byte, maxSeconds int32) {
		spec := certsv1beta1.PodCertificateRequestSpec{StubPKCS10Request: stub, MaxExpirationSeconds: &maxSeconds}
		//lint:ignore SA1019 the deprecated form is input too.
		spec.PKIXPublicKey = pkix
		r := &certsv1beta1.PodCertificateRequest{Spec: spec}
		pub, v := checkRequest(r, 24*time.Hour)
		if (pub == nil) == (v == nil) {
			t.Fatalf("key %v and verdict %v: want exactly one", pub, v)
		}
		if v != nil && (v.Reason == "" || v.Message == "") {
			t.Fatalf("verdict without reason or message: %+v", v)
		}
		if pub != nil && !supportedKey(pub) {
			t.Fatalf("unsupported key %T accepted", pub)
		}
	})
}
