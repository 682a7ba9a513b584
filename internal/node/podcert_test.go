package node

import (
	"context"
	"crypto/x509"
	"fmt"
	"strings"
	"testing"
	"time"

	certsv1beta1 "k8s.io/api/certificates/v1beta1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshd/meshd/ca"
	"github.com/meshd/meshd/internal/inject"
	"github.com/meshd/meshd/internal/pcap"
	"github.com/meshd/meshd/internal/podcert"
)

// TestRealNodePodCertificates is TestRealNode's user in the cluster's own
// pod-certificate mode (the node's apiserver and kubelet have the feature):
// meshd deployed from deploy/base with no mode flag detects the API, the
// injected sidecars' xDS credentials are podCertificate volumes whose keys
// the kubelet makes, no Secret exists per pod, meshd's trust bundle is a
// ClusterTrustBundle that follows a root rotation, and the client's mTLS
// traffic through workload-certificate renewals (SDS, --cert-ttl 1m), the
// rotation and new pods under the new root has no failed request.
func TestRealNodePodCertificates(t *testing.T) {
	needNode(t)
	c := startCluster(t)
	marker := "page-" + randomHex(8)
	c.buildImages(marker)
	c.deployMeshd("--cert-ttl="+certTTL.String(), "--root-rotation-grace=60s")

	stopCapture := pcap.Tcpdump(t, Bridge, 32, "tcp")
	server, client := workloads(marker)
	c.apply(server)
	waitReady(t, c, "shop", "app=web", 3)
	c.waitEndpoints("web", 3)
	c.apply(client)
	waitReady(t, c, "shop", "app=client", 1)
	start := time.Now()
	logf(t, "every pod Ready with kubelet-made xDS keys; client calling http://web/ %d times a second", rate)

	c.keysOnNode(t)
	c.rootRotationFollowed(t)
	c.keysOnNode(t) // the pods started under the new root too
	c.operatorsSeeEveryProxy(t)

	if rest := minRun - time.Since(start); rest > 0 {
		time.Sleep(rest)
	}
	ok, failed, failures := c.clientSummary()
	c.clientNeverRestarted(t)
	elapsed := time.Since(start)
	capt, err := pcap.Read(stopCapture())
	if err != nil {
		t.Fatal(err)
	}
	logf(t, "traffic for %s: %d requests ok, %d failed", elapsed.Round(time.Second), ok, failed)
	if failed != 0 {
		t.Errorf("%d requests failed:\n%s", failed, strings.Join(failures, "\n"))
	}
	if ok+failed < 5000 {
		t.Errorf("only %d requests made, want at least 5,000", ok+failed)
	}
	if capt.Contains(marker) {
		t.Errorf("the page (marker %s) crossed the bridge in clear", marker)
	}
	checkHandshakes(t, capt)
	c.checkRenewals(t)
}

// keysOnNode: each meshed pod's sidecar credentials are a projected
// podCertificate volume for meshd's signer, no per-pod Secret exists, and
// the pod's PodCertificateRequests (made by the kubelet) carry only a
// public key and were answered Issued by meshd with a certificate bound to
// the pod (SPIFFE ID of its service account, its name and UID); meshd's
// xDS server saw each sidecar's stream with that pod UID.
func (c *cluster) keysOnNode(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	if s, err := c.client.CoreV1().Secrets("shop").List(ctx, metav1.ListOptions{LabelSelector: inject.LabelProxyID}); err != nil {
		t.Error(err)
	} else if len(s.Items) != 0 {
		t.Errorf("per-pod Secrets in shop: %v, want none", names(s.Items))
	}
	logs := c.mustKubectl("-n", "meshd-system", "logs", "-l", "app=meshd", "--tail=-1", "--prefix")
	if !strings.Contains(logs, `mode=pod-certificate`) {
		t.Errorf("meshd did not log the pod-certificate mode:\n%s", grepLines(logs, "credentials"))
	}
	pods, err := c.client.CoreV1().Pods("shop").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	reqs, err := c.client.CertificatesV1beta1().PodCertificateRequests("shop").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		if p.Status.Phase != corev1.PodRunning || p.DeletionTimestamp != nil {
			continue
		}
		if err := podCertVolume(&p); err != nil {
			t.Errorf("pod %s: %v", p.Name, err)
		}
		issued := 0
		for _, r := range reqs.Items {
			if r.Spec.PodUID != p.UID {
				continue
			}
			if err := checkIssuedRequest(&r, &p); err != nil {
				t.Errorf("pod %s: request %s: %v", p.Name, r.Name, err)
				continue
			}
			issued++
		}
		if issued == 0 {
			t.Errorf("pod %s: no Issued PodCertificateRequest", p.Name)
		}
		if !strings.Contains(logs, "proxy="+p.Name+".shop") || !strings.Contains(logs, "pod_uid="+string(p.UID)) {
			t.Errorf("pod %s: meshd logged no xDS stream bound to its UID %s", p.Name, p.UID)
		}
		logf(t, "pod %s: xDS credentials from a podCertificate volume, %d request(s) issued by meshd with the kubelet's key", p.Name, issued)
	}
}

func podCertVolume(p *corev1.Pod) error {
	for _, v := range p.Spec.Volumes {
		if v.Name != inject.VolumeCreds {
			continue
		}
		if v.Projected == nil || len(v.Projected.Sources) == 0 || v.Projected.Sources[0].PodCertificate == nil ||
			v.Projected.Sources[0].PodCertificate.SignerName != podcert.DefaultSignerName {
			return fmt.Errorf("credentials volume is not a podCertificate projection for %s: %+v", podcert.DefaultSignerName, v.VolumeSource)
		}
		return nil
	}
	return fmt.Errorf("no volume %s", inject.VolumeCreds)
}

// checkIssuedRequest: a kubelet's request (a public key, no private key
// anywhere) answered Issued with a certificate bound to the pod.
func checkIssuedRequest(r *certsv1beta1.PodCertificateRequest, p *corev1.Pod) error {
	if r.Spec.SignerName != podcert.DefaultSignerName {
		return fmt.Errorf("signer %s", r.Spec.SignerName)
	}
	//lint:ignore SA1019 a kubelet sends the key in either form.
	if len(r.Spec.StubPKCS10Request) == 0 && len(r.Spec.PKIXPublicKey) == 0 {
		return fmt.Errorf("carries no public key")
	}
	if len(r.Status.Conditions) == 0 {
		return fmt.Errorf("not answered")
	}
	if cond := r.Status.Conditions[0]; cond.Type != certsv1beta1.PodCertificateRequestConditionTypeIssued {
		return fmt.Errorf("%s %s: %s", cond.Type, cond.Reason, cond.Message)
	}
	if strings.Contains(r.Status.CertificateChain, "PRIVATE KEY") {
		return fmt.Errorf("the answer carries a private key")
	}
	certs, err := ca.ParseCertsPEM([]byte(r.Status.CertificateChain))
	if err != nil {
		return err
	}
	leaf := certs[0]
	sa := p.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	if want := "spiffe://cluster.local/ns/shop/sa/" + sa; len(leaf.URIs) != 1 || leaf.URIs[0].String() != want {
		return fmt.Errorf("URI SANs %v, want %s", leaf.URIs, want)
	}
	if leaf.Subject.CommonName != p.Name+".shop" || ca.PodUIDOf(leaf) != string(p.UID) {
		return fmt.Errorf("bound to %s uid %s, want %s.shop uid %s", leaf.Subject.CommonName, ca.PodUIDOf(leaf), p.Name, p.UID)
	}
	return nil
}

// rootRotationFollowed asks meshd for a root rotation (meshd ca
// rotate-root) under traffic: the ClusterTrustBundle holds old and new
// roots; once the new root signs, a new pod's kubelet-made key is
// certified under it and the pod starts and joins the traffic.
func (c *cluster) rootRotationFollowed(t *testing.T) {
	t.Helper()
	ctx := context.Background()
	old := c.bundleRoots(t)
	if len(old) != 1 {
		t.Fatalf("ClusterTrustBundle holds %d roots before the rotation, want 1", len(old))
	}
	out := c.must(c.bin, "ca", "rotate-root", "--kubeconfig", c.kcfg, "--namespace", "meshd-system")
	logf(t, "meshd ca rotate-root: %s", strings.TrimSpace(out))
	var next *x509.Certificate
	waitUntil(t, 2*time.Minute, "the ClusterTrustBundle to hold the old and the new root", func() error {
		roots := c.bundleRoots(t)
		if len(roots) != 2 {
			return fmt.Errorf("%d roots", len(roots))
		}
		for _, r := range roots {
			if !r.Equal(old[0]) {
				next = r
			}
		}
		if next == nil || !roots[0].Equal(old[0]) && !roots[1].Equal(old[0]) {
			return fmt.Errorf("the old root is not among them")
		}
		return nil
	})
	logf(t, "ClusterTrustBundle %s holds the old and the new root", podcert.BundleName(podcert.DefaultSignerName))
	waitUntil(t, 3*time.Minute, "the new root to sign", func() error {
		out, err := c.run(c.bin, "ca", "status", "--kubeconfig", c.kcfg, "--namespace", "meshd-system")
		if err != nil || !strings.Contains(out, "phase: signing") {
			return fmt.Errorf("%v: %s", err, out)
		}
		return nil
	})
	logf(t, "the new root signs; scaling web from 3 to 5: the new pods' certificates chain to it")
	before, _ := c.client.CoreV1().Pods("shop").List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
	c.scale("web", 5)
	pods, _ := c.client.CoreV1().Pods("shop").List(ctx, metav1.ListOptions{LabelSelector: "app=web"})
	reqs, err := c.client.CertificatesV1beta1().PodCertificateRequests("shop").List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(next)
	fresh := 0
	for _, p := range pods.Items {
		if names(before.Items)[p.Name] {
			continue
		}
		fresh++
		underNew := 0
		for _, r := range reqs.Items {
			if r.Spec.PodUID != p.UID || r.Status.CertificateChain == "" {
				continue
			}
			certs, err := ca.ParseCertsPEM([]byte(r.Status.CertificateChain))
			if err == nil {
				_, err = certs[0].Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
			}
			if err != nil {
				t.Errorf("new pod %s: its certificate does not chain to the new root: %v", p.Name, err)
				continue
			}
			underNew++
		}
		if underNew == 0 {
			t.Errorf("new pod %s: no certificate issued under the new root", p.Name)
		}
	}
	if fresh != 2 {
		t.Errorf("%d new web pods, want 2", fresh)
	}
	c.waitEndpoints("web", 5)
}

// bundleRoots reads meshd's ClusterTrustBundle.
func (c *cluster) bundleRoots(t *testing.T) []*x509.Certificate {
	t.Helper()
	ctb, err := c.client.CertificatesV1beta1().ClusterTrustBundles().Get(context.Background(), podcert.BundleName(podcert.DefaultSignerName), metav1.GetOptions{})
	if err != nil {
		t.Fatalf("ClusterTrustBundle: %v", err)
	}
	if ctb.Spec.SignerName != podcert.DefaultSignerName {
		t.Errorf("ClusterTrustBundle for signer %q", ctb.Spec.SignerName)
	}
	roots, err := ca.ParseCertsPEM([]byte(ctb.Spec.TrustBundle))
	if err != nil {
		t.Fatal(err)
	}
	return roots
}

func names[T any, PT interface {
	*T
	GetName() string
}](items []T) map[string]bool {
	out := map[string]bool{}
	for i := range items {
		out[PT(&items[i]).GetName()] = true
	}
	return out
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
