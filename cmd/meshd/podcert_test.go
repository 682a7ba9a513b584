package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	admissionregv1 "k8s.io/api/admissionregistration/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	certsv1beta1 "k8s.io/api/certificates/v1beta1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/meshd/meshd/bootstrap"
	"github.com/meshd/meshd/internal/inject"
	"github.com/meshd/meshd/internal/podcert"
	"github.com/meshd/meshd/internal/testenv"
	"github.com/meshd/meshd/k8s"
)

// TestPodCertificateSidecarWithEnvoy: on an apiserver serving
// PodCertificateRequest, meshd (under deploy/base's RBAC) detects the API,
// publishes its ClusterTrustBundle and injects a sidecar whose credentials
// are a projected volume (podCertificate, clusterTrustBundle, the bootstrap
// from annotations) with no Secret. Playing the kubelet, the test makes the
// key, asks for the certificate with a PodCertificateRequest, writes the
// volume's files and starts a real Envoy: it connects with the pod-bound
// certificate (meshd never saw its key) and gets its configuration.
//
// With --pod-certificates workload the sidecar's workload certificate
// (SDS "default") is the same volume's: meshd sends only references to the
// files, and Envoy serves the inbound listener with the kubelet-held key.
func TestPodCertificateSidecarWithEnvoy(t *testing.T) {
	testenv.Need(t, "envoy")
	for _, mode := range []string{"auto", "workload"} {
		t.Run(mode, func(t *testing.T) { podCertificateSidecar(t, mode) })
	}
}

func podCertificateSidecar(t *testing.T, mode string) {
	env := testenv.KubeWith(t, testenv.WithPodCertificates())
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := env.Client
	ns := "podcert-" + mode
	for _, n := range []string{"meshd-system", ns} {
		if err := env.FreshNamespace(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	nsObj, _ := c.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
	nsObj.Labels["meshd.io/inject"] = "enabled"
	if _, err := c.CoreV1().Namespaces().Update(ctx, nsObj, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	base := "../../deploy/base/"
	if err := env.ApplyFiles(ctx, base+"serviceaccount.yaml", base+"rbac.yaml"); err != nil {
		t.Fatal(err)
	}
	webhookAddr, xdsAddr, debugAddr := freeAddr(t), freeAddr(t), freeAddr(t)
	creds := t.TempDir()
	fail, sideEffects, path := admissionregv1.Fail, admissionregv1.SideEffectClassNone, "https://"+webhookAddr+"/inject"
	mwc := &admissionregv1.MutatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "meshd-sidecar-injector"},
		Webhooks: []admissionregv1.MutatingWebhook{{Name: "sidecar-injector.meshd.io", AdmissionReviewVersions: []string{"v1"},
			SideEffects: &sideEffects, FailurePolicy: &fail, ClientConfig: admissionregv1.WebhookClientConfig{URL: &path},
			NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"meshd.io/inject": "enabled"}},
			Rules: []admissionregv1.RuleWithOperations{{Operations: []admissionregv1.OperationType{admissionregv1.Create},
				Rule: admissionregv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}}}}}}}
	if _, err := c.AdmissionregistrationV1().MutatingWebhookConfigurations().Create(ctx, mwc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = c.AdmissionregistrationV1().MutatingWebhookConfigurations().Delete(context.Background(), mwc.Name, metav1.DeleteOptions{})
	})
	kubeconfig := serviceAccountKubeconfig(ctx, t, env, "meshd-system", "meshd")
	logs := runServe(ctx, t, "--kubeconfig", kubeconfig, "--xds-addr", xdsAddr, "--debug-addr", debugAddr,
		"--webhook-addr", webhookAddr, "--sidecar-xds-addr", xdsAddr, "--sidecar-creds-dir", creds, "--lease-duration", "3s",
		"--cert-ttl", "2h", "--pod-certificates", mode, "--webhook-client-ca", env.CAFile, "--webhook-client-name", testenv.WebhookClientName)
	waitHTTP(t, "http://"+debugAddr+"/readyz")
	var ctb *certsv1beta1.ClusterTrustBundle
	err := wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		got, err := c.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, mwc.Name, metav1.GetOptions{})
		ctb, _ = c.CertificatesV1beta1().ClusterTrustBundles().Get(ctx, podcert.BundleName(podcert.DefaultSignerName), metav1.GetOptions{})
		return err == nil && len(got.Webhooks[0].ClientConfig.CABundle) > 0 && ctb != nil && ctb.Spec.TrustBundle != "", nil
	})
	if err != nil {
		t.Fatal("meshd never set the webhook's caBundle and published its ClusterTrustBundle")
	}

	secretsBefore, _ := c.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{})
	pod, err := c.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{GenerateName: "web-", Labels: map[string]string{"app": "web"}},
		Spec: corev1.PodSpec{NodeName: "node-1", ServiceAccountName: "web",
			Containers: []corev1.Container{{Name: "app", Image: "nginx", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}}}},
		metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create pod through the webhook: %v", err)
	}
	vol := credsVolume(pod)
	if inject.FindProxy(pod) == nil || vol == nil || vol.Projected == nil || pod.Annotations[k8s.AnnotationProxyID] != "" {
		t.Fatalf("pod not injected with a projected credentials volume: %+v, annotations %v", vol, pod.Annotations)
	}
	pc := vol.Projected.Sources[0].PodCertificate
	if pc == nil || pc.SignerName != podcert.DefaultSignerName || pc.KeyType != "ECDSAP256" || pc.KeyPath != bootstrap.FileKey || pc.CertificateChainPath != bootstrap.FileCertChain {
		t.Fatalf("podCertificate source %+v", pc)
	}
	if after, _ := c.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{}); len(after.Items) != len(secretsBefore.Items) {
		t.Errorf("%d Secrets made for the pod, want none", len(after.Items)-len(secretsBefore.Items))
	}

	// Play kubelet: make the key on the "node", ask meshd's signer, write the
	// projected volume's files.
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	issued := kubeletAsk(ctx, t, env, pod, key)
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	files := map[string]string{
		bootstrap.FileKey:       string(pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})),
		bootstrap.FileCertChain: issued.Status.CertificateChain,
		bootstrap.FileRootCert:  ctb.Spec.TrustBundle,
	}
	for _, item := range vol.Projected.Sources[2].DownwardAPI.Items {
		ann := strings.TrimSuffix(strings.TrimPrefix(item.FieldRef.FieldPath, "metadata.annotations['"), "']")
		files[item.Path] = pod.Annotations[ann]
	}
	for name, data := range files {
		if data == "" {
			t.Fatalf("projected file %s is empty", name)
		}
		if err := os.WriteFile(filepath.Join(creds, name), []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "198.18.0.31", PodIPs: []corev1.PodIP{{IP: "198.18.0.31"}}}
	if _, err := c.CoreV1().Pods(ns).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	port, _ := testenv.FreePort()
	bootstrapYAML := strings.Replace(files[bootstrap.FileBootstrap], "port_value: 15000", "port_value: "+itoa(port), 1)
	nodeID := pod.Name + "." + ns
	envoy := testenv.StartEnvoy(t, testenv.EnvoyOptions{Bootstrap: bootstrapYAML, AdminPort: port, Args: []string{"--service-node", nodeID}})
	v := waitProxies(t, "http://"+debugAddr, func(p proxyView) bool {
		return p.NodeID == nodeID && p.acked(clusterType, listenerType, secretType)
	})
	if got := v.Proxies[0].Identity; got != "spiffe://cluster.local/ns/"+ns+"/sa/web" {
		t.Errorf("bound proxy identity %s", got)
	}
	waitEnvoy(ctx, t, envoy, "/listeners", "inbound::0.0.0.0:15006")
	leaf, err := x509.ParseCertificate(mustPEM(t, issued.Status.CertificateChain))
	if err != nil {
		t.Fatal(err)
	}
	secrets := waitEnvoy(ctx, t, envoy, "/config_dump?resource=dynamic_active_secrets", `"name": "default"`)
	// Envoy shows a file-based secret with the files' contents, the key
	// redacted, and the directory it watches.
	onNode := strings.Contains(secrets, `"path": "`+creds+`"`)
	if strings.Contains(secrets, "LS0tLS1CRUdJTiBQUklWQVRFIEtFWS") { // base64 of "-----BEGIN PRIVATE KEY"
		t.Errorf("Envoy's admin config dump shows a private key:\n%s", secrets)
	}
	if mode == "workload" {
		// The workload certificate Envoy serves is the kubelet-held one:
		// SDS sent file references, no key.
		if !onNode {
			t.Errorf("secret default is not a reference to the podCertificate files:\n%s", secrets)
		}
		waitEnvoy(ctx, t, envoy, "/certs", leaf.SerialNumber.Text(16))
	} else if onNode {
		t.Errorf("auto mode: secret default refers to the node's files; want meshd's SDS certificate:\n%s", secrets)
	}

	var out strings.Builder
	if err := run(ctx, []string{"check", "--debug-addr", debugAddr}, &out, &out); err != nil {
		t.Errorf("meshd check: %v\n%s", err, out.String())
	}
	if s := strings.Join(strings.Fields(out.String()), " "); !strings.Contains(s, "OK credentials sidecars' xDS credentials from podCertificate volumes") {
		t.Errorf("meshd check:\n%s\nwant the pod-certificate mode", out.String())
	}
	sar, err := c.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{Spec: authorizationv1.SubjectAccessReviewSpec{
		User: "system:serviceaccount:meshd-system:meshd", Groups: []string{"system:serviceaccounts"}, ResourceAttributes: &authorizationv1.ResourceAttributes{
			Verb: "sign", Group: "certificates.k8s.io", Resource: "signers", Name: "kubernetes.io/kube-apiserver-client-pod"}}}, metav1.CreateOptions{})
	if err != nil || sar.Status.Allowed {
		t.Errorf("the deploy RBAC lets meshd sign for another signer (%v)", err)
	}
	if log := logs(); strings.Contains(strings.ToLower(log), "forbidden") {
		t.Errorf("meshd hit a forbidden call under the deploy RBAC:\n%s", grepLines(log, "orbidden"))
	}
}

func mustPEM(t *testing.T, s string) []byte {
	t.Helper()
	b, _ := pem.Decode([]byte(s))
	if b == nil {
		t.Fatalf("no PEM in %q", s)
	}
	return b.Bytes
}

func credsVolume(pod *corev1.Pod) *corev1.VolumeSource {
	for _, v := range pod.Spec.Volumes {
		if v.Name == inject.VolumeCreds {
			return &v.VolumeSource
		}
	}
	return nil
}

// kubeletAsk creates the PodCertificateRequest a kubelet would for the
// pod's podCertificate volume and waits for meshd's answer.
func kubeletAsk(ctx context.Context, t *testing.T, env *testenv.Env, pod *corev1.Pod, key *ecdsa.PrivateKey) *certsv1beta1.PodCertificateRequest {
	t.Helper()
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{}, key)
	if err != nil {
		t.Fatal(err)
	}
	maxSeconds := int32(86400)
	api := env.Client.CertificatesV1beta1().PodCertificateRequests(pod.Namespace)
	r, err := api.Create(ctx, &certsv1beta1.PodCertificateRequest{ObjectMeta: metav1.ObjectMeta{GenerateName: pod.Name + "-"},
		Spec: certsv1beta1.PodCertificateRequestSpec{SignerName: podcert.DefaultSignerName, PodName: pod.Name, PodUID: pod.UID,
			ServiceAccountName: pod.Spec.ServiceAccountName, ServiceAccountUID: "sa-uid", NodeName: "node-1", NodeUID: "node-uid",
			MaxExpirationSeconds: &maxSeconds, StubPKCS10Request: csr}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	err = wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		r, err = api.Get(ctx, r.Name, metav1.GetOptions{})
		return err == nil && len(r.Status.Conditions) > 0, nil
	})
	if err != nil {
		t.Fatalf("PodCertificateRequest %s not answered", r.Name)
	}
	if cond := r.Status.Conditions[0]; cond.Type != certsv1beta1.PodCertificateRequestConditionTypeIssued {
		t.Fatalf("PodCertificateRequest %s: %s %s: %s", r.Name, cond.Type, cond.Reason, cond.Message)
	}
	return r
}
