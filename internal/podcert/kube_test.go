package podcert

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	certsv1beta1 "k8s.io/api/certificates/v1beta1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/meshd/meshd/ca"
	"github.com/meshd/meshd/internal/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m, testenv.WithPodCertificates())) }

const td = "cluster.local"

func nodeID(ns, pod string) string { return pod + "." + ns }

// kubeletRequest creates a PodCertificateRequest the way the kubelet does
// for a podCertificate volume: a fresh key on the "node", an empty PKCS#10
// request signed by it, the pod's identity as the apiserver would record it.
func kubeletRequest(t *testing.T, c kubernetes.Interface, pod *corev1.Pod, signer string, key crypto.Signer, maxSeconds int32) *certsv1beta1.PodCertificateRequest {
	t.Helper()
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	sa := pod.Spec.ServiceAccountName
	r := &certsv1beta1.PodCertificateRequest{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "req-", Namespace: pod.Namespace},
		Spec: certsv1beta1.PodCertificateRequestSpec{SignerName: signer, PodName: pod.Name, PodUID: pod.UID,
			ServiceAccountName: sa, ServiceAccountUID: "sa-uid-" + types.UID(sa), NodeName: types.NodeName(pod.Spec.NodeName), NodeUID: "node-uid-1",
			MaxExpirationSeconds: &maxSeconds, StubPKCS10Request: csr}}
	out, err := c.CertificatesV1beta1().PodCertificateRequests(pod.Namespace).Create(context.Background(), r, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create PodCertificateRequest: %v", err)
	}
	return out
}

// waitAnswer waits until the request has a terminal condition.
func waitAnswer(t *testing.T, c kubernetes.Interface, r *certsv1beta1.PodCertificateRequest) *certsv1beta1.PodCertificateRequest {
	t.Helper()
	for range 300 {
		cur, err := c.CertificatesV1beta1().PodCertificateRequests(r.Namespace).Get(context.Background(), r.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if terminal(cur) {
			return cur
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("request %s/%s (pod %s) not answered", r.Namespace, r.Name, r.Spec.PodName)
	return nil
}

func condition(r *certsv1beta1.PodCertificateRequest) metav1.Condition {
	return r.Status.Conditions[len(r.Status.Conditions)-1]
}

func startSigner(t *testing.T, ctx context.Context, c kubernetes.Interface, issuer ca.Issuer) context.CancelFunc {
	t.Helper()
	s, err := New(Config{Client: c, Issuer: issuer, TrustDomain: td, CertTTL: 90 * time.Minute, NodeID: nodeID,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- s.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("signer: %v", err)
		}
	})
	return cancel
}

func TestSignerAgainstAPIServer(t *testing.T) {
	env := testenv.Kube(t)
	c := env.Client
	ctx := context.Background()
	ns := fmt.Sprintf("podcert-%d", time.Now().UnixNano()%1e6)
	if _, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod, err := c.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "web-1", Namespace: ns},
		Spec: corev1.PodSpec{ServiceAccountName: "web", NodeName: "node-1", Containers: []corev1.Container{{Name: "app", Image: "app"}}}},
		metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	root, err := ca.NewRoot(rand.Reader, time.Now(), td)
	if err != nil {
		t.Fatal(err)
	}
	issuer, err := ca.NewInternal(ca.InternalConfig{Authority: root})
	if err != nil {
		t.Fatal(err)
	}
	stop := startSigner(t, ctx, c, issuer)

	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	good := kubeletRequest(t, c, pod, DefaultSignerName, key, 86400)
	gone := pod.DeepCopy()
	gone.Name, gone.UID = "web-gone", "0000-gone"
	wrongSA := pod.DeepCopy()
	wrongSA.Spec.ServiceAccountName = "admin"
	otherUID := pod.DeepCopy()
	otherUID.UID = "1111-reused-name"
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	other := kubeletRequest(t, c, pod, "example.com/other", key, 86400)
	denials := map[string]*certsv1beta1.PodCertificateRequest{
		ReasonPodNotFound:     kubeletRequest(t, c, gone, DefaultSignerName, key, 86400),
		ReasonSAMismatch:      kubeletRequest(t, c, wrongSA, DefaultSignerName, key, 86400),
		ReasonPodMismatch:     kubeletRequest(t, c, otherUID, DefaultSignerName, key, 86400),
		ReasonLifetimeTooLong: kubeletRequest(t, c, pod, DefaultSignerName, key, 2*86400),
		ReasonUnsupportedKey:  kubeletRequest(t, c, pod, DefaultSignerName, edKey, 86400),
	}

	got := waitAnswer(t, c, good)
	if cond := condition(got); cond.Type != certsv1beta1.PodCertificateRequestConditionTypeIssued {
		t.Fatalf("good request: %s %s: %s", cond.Type, cond.Reason, cond.Message)
	}
	leaf := checkIssued(t, got, root, key)
	if want := "spiffe://" + td + "/ns/" + ns + "/sa/web"; leaf.URIs[0].String() != want {
		t.Errorf("SPIFFE ID %s, want %s", leaf.URIs[0], want)
	}
	if leaf.Subject.CommonName != "web-1."+ns || ca.PodUIDOf(leaf) != string(pod.UID) {
		t.Errorf("certificate bound to %q uid %q, want web-1.%s uid %s", leaf.Subject.CommonName, ca.PodUIDOf(leaf), ns, pod.UID)
	}
	for reason, r := range denials {
		cond := condition(waitAnswer(t, c, r))
		if cond.Type != certsv1beta1.PodCertificateRequestConditionTypeDenied || cond.Reason != reason || cond.Message == "" {
			t.Errorf("want Denied %s, got %s %s: %q", reason, cond.Type, cond.Reason, cond.Message)
		}
		t.Logf("denied %s: %s", cond.Reason, cond.Message)
	}
	if cur, _ := c.CertificatesV1beta1().PodCertificateRequests(ns).Get(ctx, other.Name, metav1.GetOptions{}); len(cur.Status.Conditions) != 0 {
		t.Errorf("a request for another signer was answered: %+v", cur.Status.Conditions)
	}

	// A restarted signer answers new requests and leaves answered ones alone.
	stop()
	before := got.ResourceVersion
	startSigner(t, ctx, c, issuer)
	second := waitAnswer(t, c, kubeletRequest(t, c, pod, DefaultSignerName, key, 3600))
	if cond := condition(second); cond.Type != certsv1beta1.PodCertificateRequestConditionTypeIssued {
		t.Fatalf("after restart: %s %s: %s", cond.Type, cond.Reason, cond.Message)
	}
	if l := checkIssued(t, second, root, key); l.NotAfter.Sub(l.NotBefore) != time.Hour {
		t.Errorf("maxExpirationSeconds 3600: lifetime %s, want 1h (clamped to the request, not --cert-ttl 90m)", l.NotAfter.Sub(l.NotBefore))
	}
	again, _ := c.CertificatesV1beta1().PodCertificateRequests(ns).Get(ctx, good.Name, metav1.GetOptions{})
	if again.ResourceVersion != before {
		t.Errorf("an issued request was written again after the restart (resourceVersion %s -> %s)", before, again.ResourceVersion)
	}
}

// checkIssued checks what the kubelet will project: the chain verifies to
// the root for client and server use, binds the node's key, and the status
// times match the leaf with beginRefreshAt at half its life.
func checkIssued(t *testing.T, r *certsv1beta1.PodCertificateRequest, root *ca.Authority, key crypto.Signer) *x509.Certificate {
	t.Helper()
	certs, err := ca.ParseCertsPEM([]byte(r.Status.CertificateChain))
	if err != nil {
		t.Fatal(err)
	}
	leaf := certs[0]
	pool := x509.NewCertPool()
	pool.AddCert(root.Cert)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}}); err != nil {
		t.Errorf("issued leaf does not verify: %v", err)
	}
	if !key.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(leaf.PublicKey) {
		t.Error("issued leaf does not bind the kubelet's key")
	}
	if !r.Status.NotBefore.Time.Equal(leaf.NotBefore) || !r.Status.NotAfter.Time.Equal(leaf.NotAfter) {
		t.Errorf("status %s..%s, leaf %s..%s", r.Status.NotBefore, r.Status.NotAfter, leaf.NotBefore, leaf.NotAfter)
	}
	if want := refreshAt(leaf.NotBefore, leaf.NotAfter, 90*time.Minute, 0.5); !r.Status.BeginRefreshAt.Time.Equal(want) {
		t.Errorf("beginRefreshAt %s, want %s", r.Status.BeginRefreshAt, want)
	}
	if strings.Contains(r.Status.CertificateChain, "PRIVATE KEY") {
		t.Error("the answer carries a private key")
	}
	return leaf
}

func TestBundlePublisherFollowsRotation(t *testing.T) {
	env := testenv.Kube(t)
	ctx := context.Background()
	old, _ := ca.NewRoot(rand.Reader, time.Now(), td)
	next, _ := ca.NewRoot(rand.Reader, time.Now(), td)
	bundle := old.BundlePEM
	p, err := NewBundlePublisher(BundleConfig{Client: env.Client, Bundle: func() []byte { return bundle },
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	for _, step := range []struct {
		name  string
		roots []*ca.Authority
	}{{"steady", []*ca.Authority{old}}, {"rotation: both roots", []*ca.Authority{old, next}}, {"rotated", []*ca.Authority{next}}} {
		bundle = nil
		for _, r := range step.roots {
			bundle = append(bundle, r.BundlePEM...)
		}
		if err := p.Sync(ctx); err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		ctb, err := env.Client.CertificatesV1beta1().ClusterTrustBundles().Get(ctx, BundleName(DefaultSignerName), metav1.GetOptions{})
		if err != nil {
			t.Fatalf("%s: %v", step.name, err)
		}
		got, err := ca.ParseCertsPEM([]byte(ctb.Spec.TrustBundle))
		if err != nil || len(got) != len(step.roots) || ctb.Spec.SignerName != DefaultSignerName {
			t.Fatalf("%s: bundle of %d roots for %q (%v), want %d", step.name, len(got), ctb.Spec.SignerName, err, len(step.roots))
		}
		for i, r := range step.roots {
			if !got[i].Equal(r.Cert) {
				t.Errorf("%s: root %d is not the CA's", step.name, i)
			}
		}
	}
}
