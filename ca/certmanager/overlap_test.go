package certmanager

import (
	"bytes"
	"context"
	"crypto/rand"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	cmfake "github.com/cert-manager/cert-manager/pkg/client/clientset/versioned/fake"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/meshd/meshd/ca"
)

// TestPreviousCAOverlap: when the issuer's status.ca changes, every
// certificate is issued again and the previous CA stays in the served
// bundle for one certificate lifetime (Duration), then leaves it. Time is
// the fake clock's: the window is stepped through, not waited for.
func TestPreviousCAOverlap(t *testing.T) {
	fc := clocktesting.NewFakeClock(time.Now())
	const life = time.Hour
	reissues := 0
	i, err := New(Config{Client: cmfake.NewSimpleClientset(), Namespace: "meshd-system", IssuerRef: cmmeta.IssuerReference{Name: "ca"},
		Duration: life, Clock: fc, OnBundleChange: func() { reissues++ }})
	if err != nil {
		t.Fatal(err)
	}
	id := ca.Identity{TrustDomain: "cluster.local", Namespace: "demo", ServiceAccount: "web"}
	// issued returns what the issuer's CA would put in status: a leaf
	// from a fresh CA, and that CA as status.ca.
	issued := func(name string) (*cmapi.CertificateRequest, ca.Request, []byte) {
		t.Helper()
		root, err := ca.NewRoot(rand.Reader, fc.Now(), "cluster.local")
		if err != nil {
			t.Fatal(err)
		}
		in, err := ca.NewInternal(ca.InternalConfig{Authority: root, TTL: life, Clock: fc})
		if err != nil {
			t.Fatal(err)
		}
		key, err := ca.GenerateKey(rand.Reader, ca.KeyECDSAP256)
		if err != nil {
			t.Fatal(err)
		}
		req := ca.Request{Identity: id, Key: key}
		c, err := in.Issue(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		cr := &cmapi.CertificateRequest{ObjectMeta: metav1.ObjectMeta{Name: name}}
		cr.Status.Certificate, cr.Status.CA = c.ChainPEM, root.BundlePEM
		return cr, req, root.BundlePEM
	}
	served := func() []byte {
		t.Helper()
		b, err := i.Bundle(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return b
	}

	cr, req, first := issued("meshd-1")
	if _, err := i.result(cr, req); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(served(), first) || reissues != 0 {
		t.Fatalf("first CA: served %d bytes (want the first CA's %d), %d re-issues (want 0)", len(served()), len(first), reissues)
	}

	cr, req, second := issued("meshd-2")
	c, err := i.result(cr, req)
	if err != nil {
		t.Fatal(err)
	}
	both := func(b []byte) bool {
		return bytes.Contains(b, bytes.TrimSpace(first)) && bytes.Contains(b, bytes.TrimSpace(second))
	}
	if reissues != 1 || !both(served()) || !both(c.BundlePEM) {
		t.Fatalf("after the CA changed: %d re-issues (want 1); served bundle holds both CAs: %v; the certificate's: %v",
			reissues, both(served()), both(c.BundlePEM))
	}
	fc.Step(life - time.Second)
	if !both(served()) {
		t.Errorf("one second before the overlap ends the previous CA is no longer served")
	}
	fc.Step(2 * time.Second)
	if b := served(); !bytes.Equal(b, second) {
		t.Errorf("after the overlap the served bundle is %d bytes, want only the new CA's %d (previous still in: %v)",
			len(b), len(second), bytes.Contains(b, bytes.TrimSpace(first)))
	}
}
