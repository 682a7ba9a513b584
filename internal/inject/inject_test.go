package inject_test

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	jsonpatch "gopkg.in/evanphx/json-patch.v4"
	admissionv1 "k8s.io/api/admission/v1"
	admissionregv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/meshd/meshd/bootstrap"
	"github.com/meshd/meshd/ca"
	"github.com/meshd/meshd/internal/inject"
	"github.com/meshd/meshd/internal/vec"
	"github.com/meshd/meshd/k8s"
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

// stored plays the apiserver storing an admitted pod: a name and a UID.
func stored(pod *corev1.Pod, name string) *corev1.Pod {
	pod.Name, pod.UID = name, types.UID("uid-"+name)
	return pod
}

// writeSecrets runs one pass of a Secret writer over the pods.
func writeSecrets(t *testing.T, inj *inject.Injector, pods ...*corev1.Pod) {
	t.Helper()
	feed := inject.NewPods()
	feed.Set(vec.Of(pods))
	w, err := inj.NewSecretWriter(inject.SecretWriterConfig{Pods: feed})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Pass(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// TestAdmit: a pod gets the sidecar (uid 1337, readiness, credentials
// volume), the init container and its proxy ID, and no Secret: once the
// pod exists, the Secret writer makes it with a bootstrap and a client
// certificate bound to that ID, owned by the pod; admitting the result
// again changes nothing; a pod without interception gets no init
// container; opted-out and hostNetwork pods pass untouched; a dry run
// creates no Secret.
func TestAdmit(t *testing.T) {
	ctx := context.Background()
	inj, client, _ := newInjector(t)
	pod := apply(t, appPod(), inj.Admit(ctx, review(t, appPod(), false)))
	id := pod.Annotations[k8s.AnnotationProxyID]
	if pod.Annotations[k8s.AnnotationStatus] != "injected" || len(id) != 32 {
		t.Fatalf("annotations %v", pod.Annotations)
	}
	// init containers: iptables, then the proxy as a native sidecar
	if len(pod.Spec.Containers) != 1 || len(pod.Spec.InitContainers) != 2 || pod.Spec.InitContainers[0].Name != k8s.ContainerInit ||
		pod.Spec.InitContainers[1].Name != k8s.ContainerProxy {
		t.Fatalf("containers %d (+%d init)", len(pod.Spec.Containers), len(pod.Spec.InitContainers))
	}
	proxy := pod.Spec.InitContainers[1]
	if proxy.RestartPolicy == nil || *proxy.RestartPolicy != corev1.ContainerRestartPolicyAlways || proxy.StartupProbe == nil ||
		proxy.StartupProbe.HTTPGet.Port.IntValue() != inject.ReadinessPort {
		t.Errorf("sidecar is not a native sidecar with a startup probe: %+v", proxy)
	}
	if *proxy.SecurityContext.RunAsUser != 1337 || proxy.ReadinessProbe.HTTPGet.Port.IntValue() != inject.ReadinessPort ||
		!strings.Contains(strings.Join(proxy.Args, " "), "--service-node $(POD_NAME).$(POD_NAMESPACE)") {
		t.Errorf("sidecar %+v", proxy)
	}
	if pod.Spec.Volumes[0].Secret.SecretName != inject.SecretPrefix+id {
		t.Errorf("volumes %+v", pod.Spec.Volumes)
	}
	if l, _ := client.CoreV1().Secrets("").List(ctx, metav1.ListOptions{}); len(l.Items) != 0 {
		t.Fatalf("admission created %d Secrets; want none", len(l.Items))
	}
	writeSecrets(t, inj, stored(pod, "web-abcde"))
	s, err := client.CoreV1().Secrets("demo").Get(ctx, inject.SecretPrefix+id, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(s.OwnerReferences) != 1 || s.OwnerReferences[0].UID != pod.UID || s.OwnerReferences[0].Kind != "Pod" || s.OwnerReferences[0].Name != "web-abcde" {
		t.Errorf("owner references %+v: want the pod", s.OwnerReferences)
	}
	certs, err := ca.ParseCertsPEM(s.Data[bootstrap.FileCertChain])
	if err != nil || certs[0].Subject.CommonName != "proxy:"+id || certs[0].URIs[0].String() != "spiffe://cluster.local/ns/demo/sa/web" {
		t.Fatalf("client certificate %v %v", certs, err)
	}
	if !strings.Contains(string(s.Data[bootstrap.FileBootstrap]), "/etc/meshd/proxy/xds-client.sds.yaml") {
		t.Error("bootstrap does not read its credentials from the mount")
	}

	direct := appPod()
	direct.Annotations = map[string]string{k8s.AnnotationInterception: "none"}
	direct = apply(t, direct, inj.Admit(ctx, review(t, direct, false)))
	if len(direct.Spec.Containers) != 1 || len(direct.Spec.InitContainers) != 1 || direct.Spec.InitContainers[0].Name != k8s.ContainerProxy ||
		direct.Annotations[k8s.AnnotationInterception] != "none" {
		t.Errorf("interception none: containers %d (+%d init), annotations %v; want the sidecar and no init container",
			len(direct.Spec.Containers), len(direct.Spec.InitContainers), direct.Annotations)
	}

	// A pod that arrives already injected chose its own sidecar: refused.
	again := inj.Admit(ctx, review(t, pod, false))
	if again.Allowed || !strings.Contains(again.Result.Message, `already has a container named "meshd-`) {
		t.Errorf("a pod arriving with a sidecar: %+v", again.Result)
	}
	// One that only carries the annotations gets its own proxy ID.
	posing := appPod()
	posing.Annotations = map[string]string{k8s.AnnotationStatus: "injected", k8s.AnnotationProxyID: id, "meshd.io/app-probes": `{"/app-health/x/readyz":{"port":22,"path":"/"}}`}
	if got := apply(t, posing, inj.Admit(ctx, review(t, posing, false))); got.Annotations[k8s.AnnotationProxyID] == id || inject.FindProxy(got) == nil ||
		got.Annotations["meshd.io/app-probes"] != "{}" {
		t.Errorf("a pod posing as injected kept the proxy ID or the probes it chose (%v)", got.Annotations)
	}
	optOut := appPod()
	optOut.Labels = map[string]string{"meshd.io/inject": "false"}
	host := appPod()
	host.Spec.HostNetwork = true
	if r := inj.Admit(ctx, review(t, optOut, false)); !r.Allowed || r.Patch != nil {
		t.Errorf("opted out: %+v", r)
	}
	// hostNetwork: allowed, not injected, and the creator is told why
	hostOut := apply(t, host, inj.Admit(ctx, review(t, host, false)))
	if r := inj.Admit(ctx, review(t, host, false)); !r.Allowed || len(r.Warnings) != 1 || !strings.Contains(r.Warnings[0], "hostNetwork") ||
		len(hostOut.Spec.InitContainers) != 0 || !strings.HasPrefix(hostOut.Annotations[k8s.AnnotationStatus], "skipped: hostNetwork") {
		t.Errorf("hostNetwork: %+v, annotations %v", r, hostOut.Annotations)
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
	used := stored(apply(t, appPod(), inj.Admit(ctx, review(t, appPod(), false))), "web-1")
	gone := stored(apply(t, appPod(), inj.Admit(ctx, review(t, appPod(), false))), "web-2")
	usedID, goneID := used.Annotations[k8s.AnnotationProxyID], gone.Annotations[k8s.AnnotationProxyID]
	writeSecrets(t, inj, used, gone)
	// The fake clientset does not stamp creation times as the apiserver
	// does. No owner: Secrets an older meshd wrote at admission.
	secrets, _ := client.CoreV1().Secrets("demo").List(ctx, metav1.ListOptions{})
	for _, s := range secrets.Items {
		s.OwnerReferences = nil
		s.CreationTimestamp = metav1.NewTime(time.Now().Add(-time.Minute))
		if _, err := client.CoreV1().Secrets("demo").Update(ctx, &s, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	bundle := issuer.Authority().BundlePEM
	rc := inject.ReconcileConfig{WebhookName: mwc.Name, Bundle: func() []byte { return bundle },
		InUse: func() (map[string]inject.PodRef, bool) {
			return map[string]inject.PodRef{usedID: {Name: "web-1", UID: "uid-web-1"}}, true
		}, OrphanGrace: time.Hour}
	res, err := inj.Reconcile(ctx, rc)
	if err != nil || res.Deleted != 0 || res.Refreshed != 0 || res.Owned != 1 || !res.WebhookPatched {
		t.Fatalf("first pass: %+v %v (want nothing deleted within the grace period, the used Secret owned by its pod, caBundle set)", res, err)
	}
	if s, _ := client.CoreV1().Secrets("demo").Get(ctx, inject.SecretPrefix+usedID, metav1.GetOptions{}); len(s.OwnerReferences) != 1 ||
		s.OwnerReferences[0].UID != "uid-web-1" || s.OwnerReferences[0].Kind != "Pod" {
		t.Errorf("owner references %+v: want the pod, so the garbage collector deletes the Secret with it", s.OwnerReferences)
	}
	got, _ := client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, mwc.Name, metav1.GetOptions{})
	if string(got.Webhooks[0].ClientConfig.CABundle) != string(bundle) {
		t.Error("caBundle not set")
	}
	rc.OrphanGrace = time.Second
	rc.InUse = func() (map[string]inject.PodRef, bool) { return nil, false }
	if res, _ := inj.Reconcile(ctx, rc); res.Deleted != 0 {
		t.Error("deleted while the view of pods was incomplete")
	}
	rc.InUse = func() (map[string]inject.PodRef, bool) {
		return map[string]inject.PodRef{usedID: {Name: "web-1", UID: "uid-web-1"}}, true
	}
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

// TestProbesRewritten: probes of app containers go to the readiness port
// under /app-health/<container>/, their timing kept; the Secret's
// bootstrap forwards a plain-HTTP one to the original port and path (named
// ports resolved) and checks gRPC, tcpSocket and HTTPS ones itself; exec
// probes and probes of another host are left alone.
func TestProbesRewritten(t *testing.T) {
	ctx := context.Background()
	inj, client, _ := newInjector(t)
	pod := appPod()
	pod.Spec.Containers[0].Ports = []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}
	pod.Spec.Containers[0].ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
		Path: "/ready", Port: intstr.FromString("http"), HTTPHeaders: []corev1.HTTPHeader{{Name: "X-Probe", Value: "1"}}}}, PeriodSeconds: 3}
	pod.Spec.Containers[0].LivenessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
		Path: "/healthz", Port: intstr.FromInt32(8080)}}}
	pod.Spec.Containers[0].StartupProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromString("http")}},
		PeriodSeconds: 2, TimeoutSeconds: 4, FailureThreshold: 30}
	service := "orders"
	pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{Name: "tls", Image: "x",
		ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/ok", Port: intstr.FromInt32(8443), Scheme: corev1.URISchemeHTTPS,
			HTTPHeaders: []corev1.HTTPHeader{{Name: "Host", Value: "tls.local"}}}}},
		LivenessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{GRPC: &corev1.GRPCAction{Port: 9090, Service: &service}}, PeriodSeconds: 5},
	}, corev1.Container{Name: "other", Image: "x",
		ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"true"}}}},
		LivenessProbe:  &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Host: "198.18.0.9", Port: intstr.FromInt32(5432)}}},
		StartupProbe:   &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(5433)}}, PeriodSeconds: 7200},
	})
	got := stored(apply(t, pod, inj.Admit(ctx, review(t, pod, false))), "web-1")
	writeSecrets(t, inj, got)
	want := map[string]*corev1.Probe{}
	for _, c := range got.Spec.Containers {
		for kind, p := range map[string]*corev1.Probe{"readyz": c.ReadinessProbe, "livez": c.LivenessProbe, "startupz": c.StartupProbe} {
			want[c.Name+"/"+kind] = p
		}
	}
	rewrittenTo := func(name string) bool {
		g := want[name].HTTPGet
		return g != nil && g.Port.IntValue() == inject.ReadinessPort && g.Path == "/app-health/"+name && g.Scheme == corev1.URISchemeHTTP
	}
	for _, name := range []string{"app/readyz", "app/livez", "app/startupz", "tls/readyz", "tls/livez"} {
		if !rewrittenTo(name) {
			t.Errorf("%s probe not rewritten to the readiness port: %+v", name, want[name])
		}
	}
	if p := want["app/readyz"]; len(p.HTTPGet.HTTPHeaders) != 1 || p.PeriodSeconds != 3 {
		t.Errorf("the HTTP probe lost its headers or period: %+v", p)
	}
	if p := want["app/startupz"]; p.PeriodSeconds != 2 || p.TimeoutSeconds != 4 || p.FailureThreshold != 30 {
		t.Errorf("the tcpSocket probe lost its timing: %+v", p)
	}
	if want["other/readyz"].Exec == nil || want["other/livez"].TCPSocket == nil || want["other/startupz"].TCPSocket == nil {
		t.Errorf("an exec probe, a probe of another host or one every two hours was rewritten: %+v %+v %+v", want["other/readyz"], want["other/livez"], want["other/startupz"])
	}
	s, err := client.CoreV1().Secrets("demo").Get(ctx, inject.SecretPrefix+got.Annotations[k8s.AnnotationProxyID], metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// The bootstrap routes the probes; their clusters, which need the
	// pod's address, are on the sidecar's command line for the kubelet to
	// fill in.
	b := string(s.Data[bootstrap.FileBootstrap])
	for _, want := range []string{"path: /app-health/app/readyz", "prefix_rewrite: /ready", "path: /app-health/app/livez", "prefix_rewrite: /healthz", "app-probe|pod-ip|8080",
		"app-check|pod-ip|app|startupz", "app-check|pod-ip|tls|readyz", "app-check|pod-ip|tls|livez"} {
		if !strings.Contains(b, want) {
			t.Errorf("bootstrap lacks %q", want)
		}
	}
	proxy := inject.FindProxy(got)
	overlay := ""
	for k, a := range proxy.Args {
		if a == "--config-yaml" && k+1 < len(proxy.Args) {
			overlay = proxy.Args[k+1]
		}
	}
	for _, want := range []string{`"name":"app-probe|pod-ip|8080"`, `"address":"$(POD_IP)","port_value":8080`, `"source_address":{"address":"127.0.0.6"`,
		`"name":"app-check|pod-ip|app|startupz"`, `"tcp_health_check":{}`, `"interval":"2s"`, `"timeout":"4s"`,
		`"name":"app-check|pod-ip|tls|readyz"`, `"path":"/ok"`, `"host":"tls.local"`, `"port_value":8443`,
		`"name":"app-check|pod-ip|tls|livez"`, `"service_name":"orders"`, `"authority":"$(POD_IP):9090"`, `"interval":"5s"`} {
		if !strings.Contains(overlay, want) {
			t.Errorf("the sidecar's --config-yaml lacks %s: %s", want, overlay)
		}
	}
	if strings.Contains(b, "$(POD_IP)") || strings.Contains(b, "port_value: 8080") {
		t.Error("the bootstrap holds a probe cluster")
	}
	podIP := false
	for _, e := range proxy.Env {
		podIP = podIP || e.Name == bootstrap.PodIPEnv && e.ValueFrom != nil && e.ValueFrom.FieldRef != nil && e.ValueFrom.FieldRef.FieldPath == "status.podIP"
	}
	if !podIP {
		t.Errorf("the sidecar's environment lacks %s from status.podIP: %+v", bootstrap.PodIPEnv, proxy.Env)
	}
	if strings.Contains(b+overlay, "5432") || strings.Contains(b+overlay, "5433") {
		t.Error("the probe of another host or the two-hourly one got a check")
	}
	// Without interception the app listens on 127.0.0.1 (the sidecar's
	// inbound listeners hold the pod's address): probed there, from the
	// bootstrap alone.
	direct := pod.DeepCopy()
	direct.Annotations = map[string]string{k8s.AnnotationInterception: "none"}
	gotDirect := stored(apply(t, direct, inj.Admit(ctx, review(t, direct, false))), "web-2")
	writeSecrets(t, inj, gotDirect)
	sd, err := client.CoreV1().Secrets("demo").Get(ctx, inject.SecretPrefix+gotDirect.Annotations[k8s.AnnotationProxyID], metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	bd := string(sd.Data[bootstrap.FileBootstrap])
	for _, want := range []string{"name: app-probe|8080", "name: app-check|app|startupz", "address: 127.0.0.1", "port_value: 8080", "service_name: orders"} {
		if !strings.Contains(bd, want) {
			t.Errorf("without interception, the bootstrap lacks %q", want)
		}
	}
	if args := inject.FindProxy(gotDirect).Args; slices.Contains(args, "--config-yaml") || strings.Contains(bd, "pod-ip") {
		t.Errorf("without interception the probes still go to the pod's address: %q", args)
	}
	// Opted out: every probe as the kubelet sends it.
	optOut := pod.DeepCopy()
	optOut.Annotations = map[string]string{k8s.AnnotationRewriteProbes: "false"}
	kept := apply(t, optOut, inj.Admit(ctx, review(t, optOut, false)))
	if p := kept.Spec.Containers[0].StartupProbe; p.TCPSocket == nil || p.HTTPGet != nil {
		t.Errorf("with %s=false the tcpSocket probe became %+v", k8s.AnnotationRewriteProbes, p)
	}
	if p := kept.Spec.Containers[1].LivenessProbe; p.GRPC == nil {
		t.Errorf("with %s=false the gRPC probe became %+v", k8s.AnnotationRewriteProbes, p)
	}
	if args := inject.FindProxy(kept).Args; slices.Contains(args, "--config-yaml") {
		t.Errorf("with %s=false the sidecar still gets probe clusters: %q", k8s.AnnotationRewriteProbes, args)
	}
}

// TestRefused: a pod with a container or volume named like the injected
// ones is denied with the clash named; a namespace enforcing the baseline
// Pod Security level denies a pod that needs the init container, with the
// way out, and no Secret is created for either.
func TestRefused(t *testing.T) {
	ctx := context.Background()
	inj, client, _ := newInjector(t)
	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "locked",
		Labels: map[string]string{"pod-security.kubernetes.io/enforce": "baseline"}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	clashC := appPod()
	clashC.Spec.Containers = append(clashC.Spec.Containers, corev1.Container{Name: k8s.ContainerProxy, Image: "mine"})
	clashV := appPod()
	clashV.Spec.Volumes = []corev1.Volume{{Name: inject.VolumeCreds}}
	locked := appPod()
	locked.Namespace = "locked"
	mounts := appPod()
	mounts.Spec.Containers[0].VolumeMounts = []corev1.VolumeMount{{Name: inject.VolumeCreds, MountPath: "/steal"}}
	uid := int64(inject.ProxyUID)
	asProxy := appPod()
	asProxy.Spec.SecurityContext = &corev1.PodSecurityContext{RunAsUser: &uid}
	readyPort := appPod()
	readyPort.Spec.Containers[0].Ports = []corev1.ContainerPort{{ContainerPort: 8080}, {ContainerPort: inject.ReadinessPort}}
	inboundPort := appPod()
	inboundPort.Spec.InitContainers = []corev1.Container{{Name: "setup", Image: "x", Ports: []corev1.ContainerPort{{ContainerPort: 15006, Protocol: corev1.ProtocolTCP}}}}
	for name, tc := range map[string]struct {
		pod  *corev1.Pod
		want string
	}{
		"readiness port": {readyPort, `container "app" declares port 15021, which the sidecar listens on (its readiness port)`},
		"inbound port":   {inboundPort, `container "setup" declares port 15006`},
		"container":      {clashC, `container named "meshd-proxy"`},
		"volume":         {clashV, `volume named "meshd-proxy-creds"`},
		"baseline":       {locked, `enforces Pod Security level "baseline"`},
		"mounts":         {mounts, `mounts "meshd-proxy-creds"`},
		"uid 1337":       {asProxy, "runs as uid 1337"},
	} {
		r := inj.Admit(ctx, review(t, tc.pod, false))
		if r.Allowed || !strings.Contains(r.Result.Message, tc.want) {
			t.Errorf("%s: %+v", name, r.Result)
		}
	}
	for _, ns := range []string{"demo", "locked"} {
		if l, _ := client.CoreV1().Secrets(ns).List(ctx, metav1.ListOptions{}); len(l.Items) != 0 {
			t.Errorf("%d Secrets created in %s for refused pods", len(l.Items), ns)
		}
	}
	// Without interception the pod needs no capability, and the ports
	// traffic would be redirected to are free: injected.
	direct := appPod()
	direct.Namespace = "locked"
	direct.Annotations = map[string]string{k8s.AnnotationInterception: "none"}
	direct.Spec.Containers[0].Ports = []corev1.ContainerPort{{ContainerPort: 15001}, {ContainerPort: 15006}, {ContainerPort: 15021, Protocol: corev1.ProtocolUDP}}
	if r := inj.Admit(ctx, review(t, direct, false)); !r.Allowed || r.Patch == nil {
		t.Errorf("interception none in a baseline namespace: %+v", r.Result)
	}
}

// TestExclusionsReachTheInitContainer: a pod's exclude annotations become
// the init container's interception arguments (the readiness port always
// excluded, ports sorted and unique); an annotation that does not parse,
// or a range that is not IPv4, has the pod refused with the annotation
// named.
func TestExclusionsReachTheInitContainer(t *testing.T) {
	ctx := context.Background()
	inj, _, _ := newInjector(t)
	pod := appPod()
	pod.Annotations = map[string]string{k8s.AnnotationExcludeInboundPorts: "9100, 8081,9100", k8s.AnnotationExcludeOutboundPorts: "5432",
		k8s.AnnotationExcludeOutboundCIDRs: "198.18.5.7/24, 198.19.0.1/32"}
	got := apply(t, pod, inj.Admit(ctx, review(t, pod, false)))
	want := []string{"iptables", "--proxy-uid", "1337", "--exclude-inbound-ports", "8081,9100,15021",
		"--exclude-outbound-ports", "5432", "--exclude-outbound-cidrs", "198.18.5.0/24,198.19.0.1/32"}
	if init := got.Spec.InitContainers[0]; init.Name != k8s.ContainerInit || !slices.Equal(init.Args, want) {
		t.Errorf("init container %s args %q, want %q", init.Name, init.Args, want)
	}
	plain := apply(t, appPod(), inj.Admit(ctx, review(t, appPod(), false)))
	if args, want := plain.Spec.InitContainers[0].Args, []string{"iptables", "--proxy-uid", "1337", "--exclude-inbound-ports", "15021"}; !slices.Equal(args, want) {
		t.Errorf("without annotations: args %q, want %q", args, want)
	}
	for key, v := range map[string]string{k8s.AnnotationExcludeInboundPorts: "80,http", k8s.AnnotationExcludeOutboundPorts: "70000",
		k8s.AnnotationExcludeOutboundCIDRs: "2001:db8::/32"} {
		bad := appPod()
		bad.Annotations = map[string]string{key: v}
		if r := inj.Admit(ctx, review(t, bad, false)); r.Allowed || !strings.Contains(r.Result.Message, key) {
			t.Errorf("%s=%q: allowed %v, %v; want refused naming the annotation", key, v, r.Allowed, r.Result)
		}
	}
}
