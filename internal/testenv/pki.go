package testenv

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// testPKI is the throw-away PKI of one test environment: a CA, the apiserver's
// serving certificate, an admin client certificate and the service-account key.
type testPKI struct {
	dir                          string
	caCert, caKey                string
	serverCert, serverKey        string
	adminCert, adminKey          string
	saKey, saPub                 string
	caPEM, adminPEM, adminKeyPEM []byte
	// hookCert and hookKey are the client certificate the apiserver
	// presents to admission webhooks.
	hookCert, hookKey string
	// admissionConfig points the apiserver at webhookKubeconfig, whose
	// client certificate (CN WebhookClientName) it presents to every
	// admission webhook.
	admissionConfig string
}

// WebhookClientName is the CommonName of the client certificate the test
// apiserver presents to admission webhooks (signed by the test CA).
const WebhookClientName = "kube-apiserver-webhook-client"

type pkiSigner struct {
	cert *x509.Certificate
	key  crypto.Signer
}

func newTestPKI(dir string) (*testPKI, error) {
	p := &testPKI{dir: dir}
	ca, caPEM, caKeyPEM, err := makeCert(nil, &x509.Certificate{
		Subject: pkix.Name{CommonName: "meshd-testenv-ca"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	})
	if err != nil {
		return nil, err
	}
	p.caPEM = caPEM
	_, srvPEM, srvKeyPEM, err := makeCert(ca, &x509.Certificate{
		Subject:     pkix.Name{CommonName: "kube-apiserver"},
		DNSNames:    []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"},
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:    x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	})
	if err != nil {
		return nil, err
	}
	_, p.adminPEM, p.adminKeyPEM, err = makeCert(ca, &x509.Certificate{
		Subject:  pkix.Name{CommonName: "meshd-testenv-admin", Organization: []string{"system:masters"}},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return nil, err
	}
	_, hookPEM, hookKeyPEM, err := makeCert(ca, &x509.Certificate{
		Subject:  pkix.Name{CommonName: WebhookClientName},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return nil, err
	}
	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	saKeyDER, err := x509.MarshalPKCS8PrivateKey(saKey)
	if err != nil {
		return nil, err
	}
	saPubDER, err := x509.MarshalPKIXPublicKey(saKey.Public())
	if err != nil {
		return nil, err
	}
	files := []struct {
		field *string
		name  string
		data  []byte
	}{
		{&p.caCert, "ca.crt", caPEM}, {&p.caKey, "ca.key", caKeyPEM},
		{&p.serverCert, "apiserver.crt", srvPEM}, {&p.serverKey, "apiserver.key", srvKeyPEM},
		{&p.adminCert, "admin.crt", p.adminPEM}, {&p.adminKey, "admin.key", p.adminKeyPEM},
		{&p.saKey, "sa.key", pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: saKeyDER})},
		{&p.saPub, "sa.pub", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: saPubDER})},
	}
	var hookKubeconfig string
	files = append(files, []struct {
		field *string
		name  string
		data  []byte
	}{
		{&p.hookCert, "webhook-client.crt", hookPEM}, {&p.hookKey, "webhook-client.key", hookKeyPEM},
		// "*": the same client certificate for every webhook.
		{&hookKubeconfig, "webhook.kubeconfig", []byte(fmt.Sprintf("apiVersion: v1\nkind: Config\nusers:\n- name: \"*\"\n  user:\n    client-certificate: %s\n    client-key: %s\n",
			filepath.Join(dir, "webhook-client.crt"), filepath.Join(dir, "webhook-client.key")))},
		{&p.admissionConfig, "admission.yaml", []byte(fmt.Sprintf(`apiVersion: apiserver.config.k8s.io/v1
kind: AdmissionConfiguration
plugins:
- name: MutatingAdmissionWebhook
  configuration:
    apiVersion: apiserver.config.k8s.io/v1
    kind: WebhookAdmissionConfiguration
    kubeConfigFile: %s
- name: ValidatingAdmissionWebhook
  configuration:
    apiVersion: apiserver.config.k8s.io/v1
    kind: WebhookAdmissionConfiguration
    kubeConfigFile: %s
`, filepath.Join(dir, "webhook.kubeconfig"), filepath.Join(dir, "webhook.kubeconfig")))},
	}...)
	for _, f := range files {
		*f.field = filepath.Join(dir, f.name)
		if err := os.WriteFile(*f.field, f.data, 0o600); err != nil {
			return nil, fmt.Errorf("testenv: pki: %w", err)
		}
	}
	return p, nil
}

// makeCert creates a P-256 key and a certificate from tmpl, signed by parent
// (self-signed when parent is nil). It returns the signer and the PEMs.
func makeCert(parent *pkiSigner, tmpl *x509.Certificate) (*pkiSigner, []byte, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, nil, err
	}
	tmpl.SerialNumber = serial
	tmpl.NotBefore = time.Now().Add(-time.Hour)
	tmpl.NotAfter = time.Now().Add(48 * time.Hour)
	signerCert, signerKey := tmpl, crypto.Signer(key)
	if parent != nil {
		signerCert, signerKey = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signerCert, key.Public(), signerKey)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("testenv: pki: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, nil, err
	}
	return &pkiSigner{cert: cert, key: key},
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}), nil
}

// SelfSigned returns a throw-away self-signed CA certificate named cn and
// its key, PEM-encoded: for a test that needs credentials on disk (a
// sidecar's xDS files) but never a peer that checks them.
func SelfSigned(cn string) (certPEM, keyPEM []byte, err error) {
	_, certPEM, keyPEM, err = makeCert(nil, &x509.Certificate{Subject: pkix.Name{CommonName: cn}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature})
	return certPEM, keyPEM, err
}
