package ca_test

import (
	clocktesting "k8s.io/utils/clock/testing"

	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/meshd/meshd/ca"
	"github.com/meshd/meshd/internal/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

var web = ca.Identity{TrustDomain: "cluster.local", Namespace: "demo", ServiceAccount: "web"}

func newInternal(t testing.TB, now time.Time) *ca.Internal {
	t.Helper()
	return internalCA(t, ca.InternalConfig{Clock: clocktesting.NewFakePassiveClock(now)})
}

// internalCA is an internal CA configured as cfg, with a new root made at
// cfg.Clock's time.
func internalCA(t testing.TB, cfg ca.InternalConfig) *ca.Internal {
	t.Helper()
	root, err := ca.NewRoot(rand.Reader, cfg.Clock.Now(), "cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	cfg.Authority = root
	in, err := ca.NewInternal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return in
}

func TestIssue(t *testing.T) {
	now := time.Now()
	in := newInternal(t, now)
	tests := map[string]struct {
		keyType ca.KeyType
		wantRSA bool
	}{
		"default p256": {}, "rsa-2048": {keyType: ca.KeyRSA2048, wantRSA: true}, "rsa-3072": {keyType: ca.KeyRSA3072, wantRSA: true},
	}
	serials := map[string]bool{}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			key, err := ca.GenerateKey(rand.Reader, tc.keyType)
			if err != nil {
				t.Fatal(err)
			}
			c, err := in.Issue(context.Background(), ca.Request{Identity: web, Key: key, TTL: 2 * time.Hour})
			if err != nil {
				t.Fatal(err)
			}
			if got := c.Leaf.URIs; len(got) != 1 || got[0].String() != "spiffe://cluster.local/ns/demo/sa/web" {
				t.Errorf("URI SANs = %v", got)
			}
			if d := c.Leaf.NotAfter.Sub(now); d < 119*time.Minute || d > 2*time.Hour {
				t.Errorf("lifetime ends %s after now, want 2h", d)
			}
			_, isRSA := c.Leaf.PublicKey.(*rsa.PublicKey)
			if _, isEC := c.Leaf.PublicKey.(*ecdsa.PublicKey); isRSA != tc.wantRSA || isEC == tc.wantRSA {
				t.Errorf("public key type %T", c.Leaf.PublicKey)
			}
			if tc.wantRSA != (c.Leaf.KeyUsage&x509.KeyUsageKeyEncipherment != 0) {
				t.Errorf("keyEncipherment set = %v for RSA = %v", !tc.wantRSA, tc.wantRSA)
			}
			pool := x509.NewCertPool()
			pool.AppendCertsFromPEM(c.BundlePEM)
			if _, err := c.Leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}}); err != nil {
				t.Errorf("leaf does not verify against its bundle: %v", err)
			}
			if serials[c.Leaf.SerialNumber.String()] {
				t.Error("serial reused")
			}
			serials[c.Leaf.SerialNumber.String()] = true
			if strings.Contains(string(c.ChainPEM), "PRIVATE") || !strings.Contains(string(c.KeyPEM), "PRIVATE KEY") {
				t.Error("key material in the wrong field")
			}
		})
	}
}

func TestIssueRefusesBadRequests(t *testing.T) {
	in := newInternal(t, time.Now())
	cancelled, cancel := context.WithCancel(context.Background())
	cancel()
	tests := map[string]struct {
		ctx context.Context
		req ca.Request
	}{
		"empty namespace":      {context.Background(), ca.Request{Identity: ca.Identity{TrustDomain: "cluster.local", ServiceAccount: "x"}}},
		"slash in sa":          {context.Background(), ca.Request{Identity: ca.Identity{TrustDomain: "cluster.local", Namespace: "a", ServiceAccount: "b/c"}}},
		"uppercase trust dom.": {context.Background(), ca.Request{Identity: ca.Identity{TrustDomain: "Cluster", Namespace: "a", ServiceAccount: "b"}}},
		"cancelled":            {cancelled, ca.Request{Identity: web}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if c, err := in.Issue(tc.ctx, tc.req); err == nil {
				t.Fatalf("issued %v", c.Leaf.URIs)
			}
		})
	}
}

func TestLeafClampedToCAExpiry(t *testing.T) {
	now := time.Now()
	root, _ := ca.NewRoot(rand.Reader, now, "cluster.local")
	in, _ := ca.NewInternal(ca.InternalConfig{Authority: root, Clock: clocktesting.NewFakePassiveClock(root.Cert.NotAfter.Add(-time.Hour))})
	c, err := in.Issue(context.Background(), ca.Request{Identity: web, TTL: 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if !c.Leaf.NotAfter.Equal(root.Cert.NotAfter) {
		t.Errorf("leaf expires %s, want clamped to CA expiry %s", c.Leaf.NotAfter, root.Cert.NotAfter)
	}
}
