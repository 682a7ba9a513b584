package testenv_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"net/url"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/meshd/meshd/internal/testenv"
)

// TestCertManagerSignsSPIFFERequest: the real cert-manager controller, run
// out of cluster, brings up SelfSigned ClusterIssuer -> CA Certificate -> CA
// Issuer (Env.CertManagerCAIssuer), approves a CertificateRequest with a
// SPIFFE URI SAN and signs it.
func TestCertManagerSignsSPIFFERequest(t *testing.T) {
	env := testenv.Kube(t)
	ns := "cm-smoke"
	cm := env.CertManagerCAIssuer(t, ns, "mesh-ca")
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()

	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	spiffe, _ := url.Parse("spiffe://cluster.local/ns/demo/sa/default")
	csrDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{spiffe}}, key)
	if err != nil {
		t.Fatal(err)
	}
	cr := &cmapi.CertificateRequest{ObjectMeta: metav1.ObjectMeta{Name: "spiffe-test"}, Spec: cmapi.CertificateRequestSpec{
		Request:   pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER}),
		IssuerRef: cmmeta.IssuerReference{Name: "mesh-ca", Kind: "Issuer", Group: "cert-manager.io"},
		Duration:  &metav1.Duration{Duration: time.Hour},
		Usages:    []cmapi.KeyUsage{cmapi.UsageDigitalSignature, cmapi.UsageKeyEncipherment, cmapi.UsageClientAuth, cmapi.UsageServerAuth},
	}}
	if _, err := cm.CertmanagerV1().CertificateRequests(ns).Create(ctx, cr, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var signed *cmapi.CertificateRequest
	if err := wait.PollUntilContextCancel(ctx, 200*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		signed, err = cm.CertmanagerV1().CertificateRequests(ns).Get(ctx, "spiffe-test", metav1.GetOptions{})
		return err == nil && len(signed.Status.Certificate) > 0, nil
	}); err != nil {
		t.Fatalf("CertificateRequest not signed: %v; conditions %+v", err, signed.Status.Conditions)
	}
	block, _ := pem.Decode(signed.Status.Certificate)
	leaf, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != spiffe.String() {
		t.Errorf("signed certificate URIs = %v, want %s", leaf.URIs, spiffe)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(signed.Status.CA)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("certificate does not verify against status.ca: %v", err)
	}
}
