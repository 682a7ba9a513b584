package xds_test

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"net"
	"testing"
	"time"

	"github.com/meshd/meshd/ca"
)

// testPKI is the mesh CA of the xds tests: meshd's own internal CA.
type testPKI struct {
	t       testing.TB
	in      *ca.Internal
	rootPEM []byte
}

func newTestPKI(t testing.TB) *testPKI {
	root, err := ca.NewRoot(rand.Reader, time.Now(), "cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	in, err := ca.NewInternal(ca.InternalConfig{Authority: root, TTL: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	return &testPKI{t: t, in: in, rootPEM: root.BundlePEM}
}

func (p *testPKI) pool() *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(p.rootPEM)
	return pool
}

// issue mints a leaf for id; cn is the Subject CN (the node ID for xDS client
// certificates); ips are extra IP SANs.
func (p *testPKI) issue(id ca.Identity, cn string, ips ...net.IP) *ca.Certificate {
	p.t.Helper()
	var names []string
	for _, ip := range ips {
		names = append(names, ip.String())
	}
	c, err := p.in.Issue(context.Background(), ca.Request{Identity: id, CommonName: cn, DNSNames: names})
	if err != nil {
		p.t.Fatal(err)
	}
	return c
}

func (p *testPKI) tlsCert(c *ca.Certificate) tls.Certificate {
	p.t.Helper()
	tc, err := tls.X509KeyPair(c.ChainPEM, c.KeyPEM)
	if err != nil {
		p.t.Fatal(err)
	}
	return tc
}

// testRenewer is meshd's renewal engine over the test CA; renew forces new
// certificates now, as a renewal at half-life would.
type testRenewer struct{ *ca.Renewer }

func newTestRenewer(t testing.TB, pki *testPKI) *testRenewer {
	r, err := ca.NewRenewer(ca.RenewerConfig{Issuer: pki.in})
	if err != nil {
		t.Fatal(err)
	}
	return &testRenewer{r}
}

func (r *testRenewer) renew(testing.TB, string) { r.Reissue() }
