package main

import (
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	admissionregv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/yaml"

	"github.com/meshd/meshd/internal/inject"
	"github.com/meshd/meshd/internal/testenv"
	"github.com/meshd/meshd/k8s"
)

// TestInjectionWithEnvoy: the real apiserver calls meshd's webhook (its
// caBundle set by meshd) for a pod created with generateName in a labelled
// namespace, dry run and real; the stored pod has the sidecar and the init
// container; its credentials Secret is written once the pod exists, owned
// by it, and none for the dry run or for forged reviews; a real Envoy started as the kubelet would
// (the Secret's files, --service-node <pod>.<ns>) connects with the
// proxy-ID certificate, is bound to its pod and gets its inbound listener.
func TestInjectionWithEnvoy(t *testing.T) {
	testenv.Need(t, "envoy")
	env := testenv.Kube(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const ns = "inject-demo"
	for _, n := range []string{"meshd-system", ns} {
		if err := env.FreshNamespace(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	c := env.Client
	nsObj, _ := c.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
	nsObj.Labels["meshd.io/inject"] = "enabled"
	if _, err := c.CoreV1().Namespaces().Update(ctx, nsObj, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	webhookAddr, xdsAddr, debugAddr := freeAddr(t), freeAddr(t), freeAddr(t)
	creds := t.TempDir()
	fail, sideEffects, path := admissionregv1.Fail, admissionregv1.SideEffectClassNone, "https://"+webhookAddr+"/inject"
	mwc := &admissionregv1.MutatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "meshd-injector-test"},
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
	sctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- run(sctx, []string{"serve", "--kubeconfig", env.Kubeconfig, "--xds-addr", xdsAddr, "--debug-addr", debugAddr,
			"--webhook-addr", webhookAddr, "--webhook-name", mwc.Name, "--sidecar-xds-addr", xdsAddr, "--sidecar-creds-dir", creds,
			"--webhook-client-ca", env.CAFile, "--webhook-client-name", testenv.WebhookClientName}, io.Discard, io.Discard)
	}()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	waitHTTP(t, "http://"+debugAddr+"/readyz")
	err := wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		got, err := c.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, mwc.Name, metav1.GetOptions{})
		return err == nil && len(got.Webhooks[0].ClientConfig.CABundle) > 0, nil
	})
	if err != nil {
		t.Fatal("meshd never set the webhook's caBundle")
	}

	web := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{GenerateName: "web-", Labels: map[string]string{"app": "web"}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "nginx", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}}}}
	// A dry run goes through the webhook (sideEffects None) and is
	// injected; nothing is written for it.
	dry, err := c.CoreV1().Pods(ns).Create(ctx, web.DeepCopy(), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
	if err != nil {
		t.Fatalf("dry-run create through the webhook: %v", err)
	}
	dryID := dry.Annotations[k8s.AnnotationProxyID]
	if inject.FindProxy(dry) == nil || dryID == "" {
		t.Fatalf("dry-run pod not injected: annotations %v", dry.Annotations)
	}
	noSecrets := func(when string) {
		t.Helper()
		l, err := c.CoreV1().Secrets("").List(ctx, metav1.ListOptions{LabelSelector: inject.LabelProxyID})
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range l.Items {
			if s.Name == inject.SecretPrefix+dryID || s.Namespace == "kube-system" {
				t.Errorf("%s: Secret %s/%s exists; want none for a dry run or a forged review", when, s.Namespace, s.Name)
			}
		}
	}
	noSecrets("after the dry run")

	pod, err := c.CoreV1().Pods(ns).Create(ctx, web, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create pod through the webhook: %v", err)
	}
	id := pod.Annotations[k8s.AnnotationProxyID]
	if len(pod.Spec.Containers) != 1 || len(pod.Spec.InitContainers) != 2 || inject.FindProxy(pod) == nil || id == "" || id == dryID {
		t.Fatalf("stored pod not injected: %d containers, %d init, annotations %v", len(pod.Spec.Containers), len(pod.Spec.InitContainers), pod.Annotations)
	}
	if y, err := yaml.Marshal(pod.Spec); err == nil {
		t.Logf("injected pod %s/%s, annotations %v, spec:\n%s", ns, pod.Name, pod.Annotations, y)
	}
	// The Secret is written once the pod exists: owned by the pod's UID,
	// which the apiserver assigns after admission.
	var secret *corev1.Secret
	err = wait.PollUntilContextCancel(ctx, 50*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		secret, err = c.CoreV1().Secrets(ns).Get(ctx, inject.SecretPrefix+id, metav1.GetOptions{})
		return err == nil, nil
	})
	if err != nil {
		t.Fatalf("credentials Secret %s never written", inject.SecretPrefix+id)
	}
	if o := secret.OwnerReferences; len(o) != 1 || o[0].Kind != "Pod" || o[0].Name != pod.Name || o[0].UID != pod.UID {
		t.Errorf("Secret owners %+v; want the pod %s (uid %s)", o, pod.Name, pod.UID)
	}
	noSecrets("once the real pod's Secret is written") // the writer has seen the pods by now
	// The apiserver's call went through (it presents its webhook client
	// certificate); a direct caller, even one trusting meshd's CA, is
	// refused and makes nothing. One holding the apiserver's client
	// certificate gets a patch, and still nothing is made: admission has
	// no side effects.
	review := `{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"x","kind":{"version":"v1","kind":"Pod"},` +
		`"operation":"CREATE","namespace":"kube-system","object":{"metadata":{"name":"forged","namespace":"kube-system"},"spec":{"containers":[{"name":"a","image":"b"}]}}}}`
	apiCert, err := tls.LoadX509KeyPair(env.WebhookCertFile, env.WebhookKeyFile)
	if err != nil {
		t.Fatal(err)
	}
	for caller, want := range map[string]int{"direct": http.StatusUnauthorized, "with the apiserver's certificate": http.StatusOK} {
		cfg := &tls.Config{InsecureSkipVerify: true}
		if want == http.StatusOK {
			cfg.Certificates = []tls.Certificate{apiCert}
		}
		client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
		resp, err := client.Post("https://"+webhookAddr+"/inject", "application/json", strings.NewReader(review))
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want || want == http.StatusOK && !strings.Contains(string(body), `"patch"`) {
			t.Errorf("forged review, %s: %s %s; want %d", caller, resp.Status, body, want)
		}
		noSecrets("after a forged review, " + caller)
	}
	// Play kubelet: the pod runs with an IP; the Secret volume's files.
	pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "198.18.0.30", PodIPs: []corev1.PodIP{{IP: "198.18.0.30"}}}
	if _, err := c.CoreV1().Pods(ns).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	for name, data := range secret.Data {
		if err := os.WriteFile(filepath.Join(creds, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	b, _ := os.ReadFile(filepath.Join(creds, "bootstrap.yaml"))
	port, _ := testenv.FreePort()
	bootstrapYAML := strings.Replace(string(b), "port_value: 15000", "port_value: "+itoa(port), 1)
	nodeID := pod.Name + "." + ns
	envoy := testenv.StartEnvoy(t, testenv.EnvoyOptions{Bootstrap: bootstrapYAML, AdminPort: port, Args: []string{"--service-node", nodeID}})

	v := waitProxies(t, "http://"+debugAddr, func(p proxyView) bool {
		return p.NodeID == nodeID && p.acked(clusterType, listenerType, secretType) // no service: no routes
	})
	if got := v.Proxies[0].Identity; got != "spiffe://cluster.local/ns/inject-demo/sa/default" {
		t.Errorf("bound proxy identity %s", got)
	}
	waitEnvoy(ctx, t, envoy, "/listeners", "inbound::0.0.0.0:15006")
	waitEnvoy(ctx, t, envoy, "/ready", "LIVE")

	// meshd check sees the webhook as the apiserver uses it; a caBundle
	// that is not the mesh's fails the check.
	check := func() string {
		var out strings.Builder
		if err := run(ctx, []string{"check", "--debug-addr", debugAddr}, &out, &out); err != nil {
			out.WriteString("error: " + err.Error())
		}
		return strings.Join(strings.Fields(out.String()), " ") // column widths vary
	}
	if out := check(); !strings.Contains(out, "OK webhook "+webhookAddr+" answers TLS") {
		t.Errorf("meshd check:\n%s\nwant the webhook OK", out)
	}
	// This apiserver does not serve PodCertificateRequest: Secret mode, and
	// meshd check says why.
	if out := check(); !strings.Contains(out, "OK credentials sidecars' xDS credentials from per-pod Secrets (key made by meshd): the apiserver does not serve certificates.k8s.io/v1beta1") {
		t.Errorf("meshd check:\n%s\nwant the Secret mode and why", out)
	}
	got, err := c.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, mwc.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	got.Webhooks[0].ClientConfig.CABundle = []byte("-----BEGIN CERTIFICATE-----\nbm90IG91cnM=\n-----END CERTIFICATE-----\n")
	if _, err := c.AdmissionregistrationV1().MutatingWebhookConfigurations().Update(ctx, got, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if out := check(); !strings.Contains(out, "FAIL webhook webhook sidecar-injector.meshd.io: caBundle is not the mesh's current bundle") {
		t.Errorf("meshd check after the caBundle was replaced:\n%s\nwant the webhook FAIL", out)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }
