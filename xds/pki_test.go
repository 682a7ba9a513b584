package xds_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/meshd/meshd/ca"
)

// testPKI is a minimal mesh CA for the xds tests: a root and leaf issuance
// with SPIFFE URI SANs. (The ca package has its own, fully validated issuer;
// these tests are about the xDS protocol, so they only need real certificates.)
type testPKI struct {
	t       testing.TB
	root    *x509.Certificate
	rootKey crypto.Signer
	rootPEM []byte
}

func newTestPKI(t testing.TB) *testPKI {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "xds-test-root"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	root, _ := x509.ParseCertificate(der)
	return &testPKI{t: t, root: root, rootKey: key, rootPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

func (p *testPKI) pool() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(p.root)
	return pool
}

// issue mints a leaf for id; cn is the Subject CN (the node ID for xDS client
// certificates); ips are extra IP SANs.
func (p *testPKI) issue(id ca.Identity, cn string, ips ...net.IP) *ca.Certificate {
	p.t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		p.t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour),
		URIs: []*url.URL{id.SPIFFEID()}, IPAddresses: ips,
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.root, key.Public(), p.rootKey)
	if err != nil {
		p.t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	return &ca.Certificate{Identity: id, Leaf: leaf, Backend: "xds-test",
		ChainPEM:  pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:    pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		BundlePEM: p.rootPEM}
}

func (p *testPKI) tlsCert(c *ca.Certificate) tls.Certificate {
	p.t.Helper()
	tc, err := tls.X509KeyPair(c.ChainPEM, c.KeyPEM)
	if err != nil {
		p.t.Fatal(err)
	}
	return tc
}

// testRenewer implements sds.Renewer with the test PKI; renew forces a new
// certificate for a key, as a renewal at half-life would.
type testRenewer struct {
	pki *testPKI
	mu  sync.Mutex
	on  map[string]func()
}

func (r *testRenewer) Watch(ctx context.Context, key string, req ca.Request, onCert func(*ca.Certificate)) {
	issue := func() { onCert(r.pki.issue(req.Identity, req.Identity.String())) }
	r.mu.Lock()
	if r.on == nil {
		r.on = map[string]func(){}
	}
	r.on[key] = issue
	r.mu.Unlock()
	go func() {
		<-ctx.Done()
		r.mu.Lock()
		delete(r.on, key)
		r.mu.Unlock()
	}()
	go issue()
}

func (r *testRenewer) renew(t testing.TB, key string) {
	r.mu.Lock()
	f := r.on[key]
	r.mu.Unlock()
	if f == nil {
		t.Fatalf("no certificate watched for %s", key)
	}
	f()
}
