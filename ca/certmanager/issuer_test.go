package certmanager_test

import (
	"context"
	"crypto/rand"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	cmclient "github.com/cert-manager/cert-manager/pkg/client/clientset/versioned"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/meshd/meshd/ca"
	"github.com/meshd/meshd/ca/certmanager"
	"github.com/meshd/meshd/internal/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

const ns = "meshd-system"

var web = ca.Identity{TrustDomain: "cluster.local", Namespace: "demo", ServiceAccount: "web"}

func startIssuer(t testing.TB, cm cmclient.Interface, ref string, timeout time.Duration) *certmanager.Issuer {
	t.Helper()
	r, err := certmanager.ParseRef(ref)
	if err != nil {
		t.Fatal(err)
	}
	iss, err := certmanager.New(certmanager.Config{Client: cm, Namespace: ns, IssuerRef: r, Timeout: timeout, Duration: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- iss.Start(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return iss
}

func key(t testing.TB) ca.Request {
	k, err := ca.GenerateKey(rand.Reader, ca.KeyECDSAP256)
	if err != nil {
		t.Fatal(err)
	}
	return ca.Request{Identity: web, Key: k, Pod: "demo/web-0"}
}

// TestIssueThroughCertManager: the real cert-manager CA Issuer signs
// meshd's request; the certificate carries the SPIFFE ID, binds meshd's
// key, verifies to status.ca; the request is deleted afterwards.
func TestIssueThroughCertManager(t *testing.T) {
	env := testenv.Kube(t)
	cm := env.CertManagerCAIssuer(t, ns, "mesh-ca")
	iss := startIssuer(t, cm, "Issuer/mesh-ca", 60*time.Second)
	c, err := iss.Issue(context.Background(), key(t))
	if err != nil {
		t.Fatal(err)
	}
	if c.Leaf.URIs[0].String() != web.String() || c.Backend != "cert-manager" || !strings.Contains(c.Leaf.Issuer.CommonName, "mesh-ca") {
		t.Errorf("certificate %v from %s issued by %s", c.Leaf.URIs, c.Backend, c.Leaf.Issuer)
	}
	if b, err := iss.Bundle(context.Background()); err != nil || string(b) != string(c.BundlePEM) {
		t.Errorf("bundle %v", err)
	}
	left, err := cm.CertmanagerV1().CertificateRequests(ns).List(context.Background(), metav1.ListOptions{LabelSelector: certmanager.LabelManaged})
	if err != nil || len(left.Items) != 0 {
		t.Errorf("%d CertificateRequests left after issuance (%v)", len(left.Items), err)
	}
}

// TestIssuerProblems: a missing issuer times out with cert-manager's
// reason; with cert-manager down a new request waits and then fails
// clearly; a request a policy approver denies fails with the denial's
// reason; failed requests do not pile up.
func TestIssuerProblems(t *testing.T) {
	env := testenv.Kube(t)
	cm := env.CertManagerCAIssuer(t, ns, "mesh-ca")
	ctx := context.Background()

	_, err := startIssuer(t, cm, "Issuer/does-not-exist", 10*time.Second).Issue(ctx, key(t))
	if err == nil || !strings.Contains(err.Error(), "not issued") || !strings.Contains(err.Error(), "Issuer/does-not-exist") {
		t.Errorf("missing issuer: %v", err)
	}
	t.Logf("missing issuer: %v", err)

	iss := startIssuer(t, cm, "Issuer/mesh-ca", 5*time.Second)
	if _, err := iss.Issue(ctx, key(t)); err != nil {
		t.Fatal(err)
	}
	// cert-manager down: nothing answers; the error says so.
	env.StopCertManager()
	t.Cleanup(func() { env.StartCertManager(t) })
	if _, err := iss.Issue(ctx, key(t)); err == nil || !strings.Contains(err.Error(), "no condition yet") {
		t.Errorf("cert-manager down: %v, want a timeout saying nothing answered", err)
	}

	// A policy approver (this test) denies the request before cert-manager
	// (still down, so its own approver cannot race) sees it.
	deny := make(chan error, 1)
	go func() {
		deny <- wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, 5*time.Second, true, func(ctx context.Context) (bool, error) {
			list, err := cm.CertmanagerV1().CertificateRequests(ns).List(ctx, metav1.ListOptions{LabelSelector: certmanager.LabelManaged})
			if err != nil || len(list.Items) == 0 {
				return false, nil
			}
			cr := list.Items[0]
			cr.Status.Conditions = []cmapi.CertificateRequestCondition{{Type: cmapi.CertificateRequestConditionDenied,
				Status: cmmeta.ConditionTrue, Reason: "PolicyDenied", Message: "service account web may not have this identity",
				LastTransitionTime: &metav1.Time{Time: time.Now()}}}
			_, err = cm.CertmanagerV1().CertificateRequests(ns).UpdateStatus(ctx, &cr, metav1.UpdateOptions{})
			return err == nil, nil
		})
	}()
	_, err = iss.Issue(ctx, key(t))
	if derr := <-deny; derr != nil {
		t.Fatalf("the test could not deny the request: %v", derr)
	}
	if err == nil || !strings.Contains(err.Error(), "denied: PolicyDenied: service account web may not have this identity") {
		t.Errorf("denied request: %v", err)
	}
	t.Logf("denied: %v", err)

	left, err := cm.CertmanagerV1().CertificateRequests(ns).List(ctx, metav1.ListOptions{LabelSelector: certmanager.LabelManaged})
	if err != nil || len(left.Items) != 0 {
		t.Errorf("%d CertificateRequests left after failed issuance (%v)", len(left.Items), err)
	}
}

// BenchmarkIssueThroughCertManager: parallel issuance through the real
// cert-manager controller (CA Issuer): certificates/s and latency.
func BenchmarkIssueThroughCertManager(b *testing.B) {
	env := testenv.Kube(b)
	cm := env.CertManagerCAIssuer(b, ns, "mesh-ca")
	iss := startIssuer(b, cm, "Issuer/mesh-ca", 60*time.Second)
	var mu sync.Mutex
	var lat []time.Duration
	start := time.Now()
	b.SetParallelism(8)
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			t0 := time.Now()
			if _, err := iss.Issue(context.Background(), key(b)); err != nil {
				b.Error(err)
				return
			}
			mu.Lock()
			lat = append(lat, time.Since(t0))
			mu.Unlock()
		}
	})
	b.ReportMetric(float64(len(lat))/time.Since(start).Seconds(), "certs/s")
	if len(lat) > 0 {
		slices.Sort(lat)
		b.ReportMetric(float64(lat[len(lat)/2].Milliseconds()), "ms-p50")
		b.ReportMetric(float64(lat[len(lat)*99/100].Milliseconds()), "ms-p99")
	}
}
