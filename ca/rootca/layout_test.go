package rootca_test

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/ca"
	"github.com/meshd/meshd/ca/rootca"
)

var web = ca.Identity{TrustDomain: "cluster.local", Namespace: "demo", ServiceAccount: "web"}

func pemCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

func pemKey(t testing.TB, k crypto.Signer) []byte {
	der, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
}

// pluginCA makes a root and an intermediate signed by it, in cacerts layout.
func pluginCA(t *testing.T, now time.Time) (map[string][]byte, *x509.Certificate) {
	t.Helper()
	root, err := ca.NewRoot(rand.Reader, now, "corp")
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ca.GenerateKey(rand.Reader, ca.KeyECDSAP256)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "corp intermediate"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(365 * 24 * time.Hour), IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, root.Cert, key.Public(), root.Key)
	if err != nil {
		t.Fatal(err)
	}
	inter, _ := x509.ParseCertificate(der)
	return map[string][]byte{
		rootca.KeyRootCert: root.BundlePEM, rootca.KeyCACert: pemCert(der), rootca.KeyCAKey: pemKey(t, key),
		rootca.KeyCertChain: append(pemCert(der), root.BundlePEM...),
	}, inter
}

func TestPluginCA(t *testing.T) {
	now := time.Now()
	data, inter := pluginCA(t, now)
	a, err := rootca.FromData(data, now)
	if err != nil {
		t.Fatal(err)
	}
	in, _ := ca.NewInternal(ca.InternalConfig{Authority: a})
	c, err := in.Issue(context.Background(), ca.Request{Identity: web})
	if err != nil {
		t.Fatal(err)
	}
	chain, err := ca.ParseCertsPEM(c.ChainPEM)
	if err != nil || len(chain) != 2 || !chain[1].Equal(inter) {
		t.Fatalf("served chain has %d certs (%v), want leaf + intermediate", len(chain), err)
	}

	other, _ := pluginCA(t, now)
	bad := map[string]func(map[string][]byte){
		"key of another CA": func(d map[string][]byte) { d[rootca.KeyCAKey] = other[rootca.KeyCAKey] },
		"intermediate of another": func(d map[string][]byte) {
			d[rootca.KeyCACert] = other[rootca.KeyCACert]
			d[rootca.KeyCAKey] = other[rootca.KeyCAKey]
		},
		"corrupted root": func(d map[string][]byte) {
			d[rootca.KeyRootCert] = []byte("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
		},
		"no key":               func(d map[string][]byte) { delete(d, rootca.KeyCAKey) },
		"key is a certificate": func(d map[string][]byte) { d[rootca.KeyCAKey] = d[rootca.KeyCACert] },
		"leaf instead of CA": func(d map[string][]byte) {
			d[rootca.KeyCACert] = c.ChainPEM[:len(pemCert(c.Leaf.Raw))]
			d[rootca.KeyCAKey] = c.KeyPEM
		},
	}
	for name, mutate := range bad {
		t.Run(name, func(t *testing.T) {
			d := map[string][]byte{}
			for k, v := range data {
				d[k] = v
			}
			mutate(d)
			if _, err := rootca.FromData(d, now); err == nil {
				t.Fatal("accepted")
			} else if strings.Contains(err.Error(), "PRIVATE") {
				t.Fatalf("error quotes key material: %v", err)
			}
		})
	}
	if _, err := rootca.FromData(data, now.Add(2*365*24*time.Hour)); err == nil {
		t.Error("expired intermediate accepted")
	}
}
