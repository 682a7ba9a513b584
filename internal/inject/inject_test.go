package inject_test

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	jsonpatch "gopkg.in/evanphx/json-patch.v4"
	admissionv1 "k8s.io/api/admission/v1"
	admissionregv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/meshd/meshd/bootstrap"
	"github.com/meshd/meshd/ca"
	"github.com/meshd/meshd/internal/inject"
)

func newInjector(t testing.TB, objs ...runtime.Object) (*inject.Injector, *fake.Clientset, *ca.Internal) {
	t.Helper()
	root, err := ca.NewRoot(rand.Reader, time.Now(), "cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	issuer, err := ca.NewInternal(ca.InternalConfig{Authority: root})
	if err != nil {
		t.Fatal(err)
	}
	client := fake.NewClientset(objs...)
	inj, err := inject.New(inject.Config{Client: client, Issuer: issuer, TrustDomain: "cluster.local", MeshdNamespace: "meshd-system",
		ProxyImage: "envoy:test", InitImage: "meshd:test"})
	if err != nil {
		t.Fatal(err)
	}
	return inj, client, issuer
}

func review(t *testing.T, pod *corev1.Pod, dryRun bool) *admissionv1.AdmissionRequest {
	t.Helper()
	raw, err := json.Marshal(pod)
	if err != nil {
		t.Fatal(err)
	}
	return &admissionv1.AdmissionRequest{UID: "u1", Kind: metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
		Operation: admissionv1.Create, Namespace: "demo", Object: runtime.RawExtension{Raw: raw}, DryRun: &dryRun}
}

func appPod() *corev1.Pod {
	return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{GenerateName: "web-", Namespace: "demo"},
		Spec: corev1.PodSpec{ServiceAccountName: "web", Containers: []corev1.Container{{Name: "app", Image: "nginx"}}}}
}

// apply applies a JSON patch response to the pod.
func apply(t *testing.T, pod *corev1.Pod, resp *admissionv1.AdmissionResponse) *corev1.Pod {
	t.Helper()
	if !resp.Allowed {
		t.Fatalf("denied: %v", resp.Result)
	}
	raw, _ := json.Marshal(pod)
	if resp.Patch == nil {
		return pod
	}
	p, err := jsonpatch.DecodePatch(resp.Patch)
	if err != nil {
		t.Fatal(err)
	}
	out, err := p.Apply(raw)
	if err != nil {
		t.Fatalf("patch does not apply: %v\n%s", err, resp.Patch)
	}
	var got corev1.Pod
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatal(err)
	}
	return &got
}

// TestAdmit: a pod gets the sidecar (uid 1337, readiness, credentials
// volume), the init container and its proxy ID, and a Secret with a
// bootstrap and a client certificate bound to that ID; admitting the
// result again changes nothing; a pod without interception gets no init
// container; opted-out and hostNetwork pods pass untouched; a dry run
// creates no Secret.
func TestAdmit(t *testing.T) {
	ctx := context.Background()
	inj, client, _ := newInjector(t)
	pod := apply(t, appPod(), inj.Admit(ctx, review(t, appPod(), false)))
	id := pod.Annotations[inject.AnnotationProxyID]
	if pod.Annotations[inject.AnnotationStatus] != "injected" || len(id) != 32 {
		t.Fatalf("annotations %v", pod.Annotations)
	}
	if len(pod.Spec.Containers) != 2 || pod.Spec.Containers[1].Name != inject.ContainerProxy || len(pod.Spec.InitContainers) != 1 {
		t.Fatalf("containers %d (+%d init)", len(pod.Spec.Containers), len(pod.Spec.InitContainers))
	}
	proxy := pod.Spec.Containers[1]
	if *proxy.SecurityContext.RunAsUser != 1337 || proxy.ReadinessProbe.HTTPGet.Port.IntValue() != inject.ReadinessPort ||
		!strings.Contains(strings.Join(proxy.Args, " "), "--service-node $(POD_NAME).$(POD_NAMESPACE)") {
		t.Errorf("sidecar %+v", proxy)
	}
	if pod.Spec.Volumes[0].Secret.SecretName != inject.SecretPrefix+id {
		t.Errorf("volumes %+v", pod.Spec.Volumes)
	}
	s, err := client.CoreV1().Secrets("demo").Get(ctx, inject.SecretPrefix+id, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	certs, err := ca.ParseCertsPEM(s.Data[bootstrap.FileCertChain])
	if err != nil || certs[0].Subject.CommonName != "proxy:"+id || certs[0].URIs[0].String() != "spiffe://cluster.local/ns/demo/sa/web" {
		t.Fatalf("client certificate %v %v", certs, err)
	}
	if !strings.Contains(string(s.Data[bootstrap.FileBootstrap]), "/etc/meshd/proxy/xds-client.sds.yaml") {
		t.Error("bootstrap does not read its credentials from the mount")
	}

	direct := appPod()
	direct.Annotations = map[string]string{inject.AnnotationInterception: "none"}
	direct = apply(t, direct, inj.Admit(ctx, review(t, direct, false)))
	if len(direct.Spec.Containers) != 2 || len(direct.Spec.InitContainers) != 0 || direct.Annotations[inject.AnnotationInterception] != "none" {
		t.Errorf("interception none: containers %d (+%d init), annotations %v; want the sidecar and no init container",
			len(direct.Spec.Containers), len(direct.Spec.InitContainers), direct.Annotations)
	}

	again := inj.Admit(ctx, review(t, pod, false))
	if !again.Allowed || again.Patch != nil {
		t.Errorf("re-admission patched again: %s", again.Patch)
	}
	optOut := appPod()
	optOut.Labels = map[string]string{"meshd.io/inject": "false"}
	host := appPod()
	host.Spec.HostNetwork = true
	for name, p := range map[string]*corev1.Pod{"opted out": optOut, "hostNetwork": host} {
		if r := inj.Admit(ctx, review(t, p, false)); !r.Allowed || r.Patch != nil {
			t.Errorf("%s: %+v", name, r)
		}
	}
	before, _ := client.CoreV1().Secrets("demo").List(ctx, metav1.ListOptions{})
	if r := inj.Admit(ctx, review(t, appPod(), true)); !r.Allowed || r.Patch == nil {
		t.Errorf("dry run: %+v", r)
	}
	after, _ := client.CoreV1().Secrets("demo").List(ctx, metav1.ListOptions{})
	if len(after.Items) != len(before.Items) {
		t.Error("a dry run created a Secret")
	}
}

// TestBadReviews: garbage gets 400, a pod without containers is denied
// with a reason; nothing panics.
func TestBadReviews(t *testing.T) {
	inj, _, _ := newInjector(t)
	for _, body := range []string{"", "{", `{"request": null}`, strings.Repeat("x", 5<<20)} {
		rec := httptest.NewRecorder()
		inj.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/inject", strings.NewReader(body)))
		if rec.Code != http.StatusBadRequest {
			t.Errorf("body %.20q: %d", body, rec.Code)
		}
	}
	empty := appPod()
	empty.Spec.Containers = nil
	r := inj.Admit(context.Background(), review(t, empty, false))
	if r.Allowed || !strings.Contains(r.Result.Message, "no containers") {
		t.Errorf("pod without containers: %+v", r)
	}
	req := review(t, appPod(), false)
	req.Object.Raw = []byte(`{"spec": {"containers": "nope"}}`)
	if r := inj.Admit(context.Background(), req); r.Allowed || r.Result.Code != 400 {
		t.Errorf("undecodable pod: %+v", r)
	}
}

// TestReconcile: a Secret whose bundle is stale is refreshed, one no pod
// uses is deleted after the grace period (not before, and not while the
// view is incomplete), and the webhook's caBundle is set.
func TestReconcile(t *testing.T) {
	ctx := context.Background()
	mwc := &admissionregv1.MutatingWebhookConfiguration{ObjectMeta: metav1.ObjectMeta{Name: "meshd-sidecar-injector"},
		Webhooks: []admissionregv1.MutatingWebhook{{Name: "sidecar-injector.meshd.io"}}}
	inj, client, issuer := newInjector(t, mwc)
	used := apply(t, appPod(), inj.Admit(ctx, review(t, appPod(), false)))
	gone := apply(t, appPod(), inj.Admit(ctx, review(t, appPod(), false)))
	usedID, goneID := used.Annotations[inject.AnnotationProxyID], gone.Annotations[inject.AnnotationProxyID]
	// The fake clientset does not stamp creation times as the apiserver does.
	secrets, _ := client.CoreV1().Secrets("demo").List(ctx, metav1.ListOptions{})
	for _, s := range secrets.Items {
		s.CreationTimestamp = metav1.NewTime(time.Now().Add(-time.Minute))
		if _, err := client.CoreV1().Secrets("demo").Update(ctx, &s, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	bundle := issuer.Authority().BundlePEM
	rc := inject.ReconcileConfig{WebhookName: mwc.Name, Bundle: func() []byte { return bundle },
		InUse: func() (map[string]bool, bool) { return map[string]bool{usedID: true}, true }, OrphanGrace: time.Hour}
	res, err := inj.Reconcile(ctx, rc)
	if err != nil || res.Deleted != 0 || res.Refreshed != 0 || !res.WebhookPatched {
		t.Fatalf("first pass: %+v %v (want nothing deleted within the grace period, caBundle set)", res, err)
	}
	got, _ := client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, mwc.Name, metav1.GetOptions{})
	if string(got.Webhooks[0].ClientConfig.CABundle) != string(bundle) {
		t.Error("caBundle not set")
	}
	rc.OrphanGrace = time.Second
	rc.InUse = func() (map[string]bool, bool) { return nil, false }
	if res, _ := inj.Reconcile(ctx, rc); res.Deleted != 0 {
		t.Error("deleted while the view of pods was incomplete")
	}
	rc.InUse = func() (map[string]bool, bool) { return map[string]bool{usedID: true}, true }
	other, _ := ca.NewRoot(rand.Reader, time.Now(), "cluster.local")
	bundle = append(append([]byte{}, bundle...), other.BundlePEM...) // a rotation adds a root
	res, err = inj.Reconcile(ctx, rc)
	if err != nil || res.Deleted != 1 || res.Refreshed != 1 || !res.WebhookPatched {
		t.Fatalf("second pass: %+v %v (want the orphan deleted, the stale bundle refreshed)", res, err)
	}
	if _, err := client.CoreV1().Secrets("demo").Get(ctx, inject.SecretPrefix+goneID, metav1.GetOptions{}); err == nil {
		t.Error("the orphan Secret is still there")
	}
	// The refreshed Secret carries what the issuer now issues with.
	s, _ := client.CoreV1().Secrets("demo").Get(ctx, inject.SecretPrefix+usedID, metav1.GetOptions{})
	if string(s.Data[bootstrap.FileRootCert]) != string(issuer.Authority().BundlePEM) {
		t.Error("the refreshed Secret does not carry the issuer's bundle")
	}
	certs, err := ca.ParseCertsPEM(s.Data[bootstrap.FileCertChain])
	if err != nil || certs[0].Subject.CommonName != "proxy:"+usedID {
		t.Errorf("refreshed certificate not bound to the same proxy ID: %v %v", certs, err)
	}
}
