package inject_test

import (
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshd/meshd/internal/inject"
	"github.com/meshd/meshd/internal/vec"
	"github.com/meshd/meshd/k8s"
)

// TestSecretWriterRefuses: only a pod exactly as the injector left it gets
// a Secret; one that copies or bends the injector's fields gets none, and
// the writer says why.
func TestSecretWriterRefuses(t *testing.T) {
	ctx := context.Background()
	inj, client, _ := newInjector(t)
	admitted := func(name string) *corev1.Pod {
		return stored(apply(t, appPod(), inj.Admit(ctx, review(t, appPod(), false))), name)
	}
	for name, tc := range map[string]struct {
		bend func(*corev1.Pod)
		want string // needsSecret's reason, "" for a Secret
	}{
		"as injected":       {func(*corev1.Pod) {}, ""},
		"not stored":        {func(p *corev1.Pod) { p.UID = "" }, "not stored"},
		"finished":          {func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded }, "finished"},
		"meshd's namespace": {func(p *corev1.Pod) { p.Namespace = "meshd-system" }, "namespace meshd-system"},
		"kube-system":       {func(p *corev1.Pod) { p.Namespace = "kube-system" }, "namespace kube-system"},
		"no status":         {func(p *corev1.Pod) { delete(p.Annotations, k8s.AnnotationStatus) }, "is not \"injected\""},
		"proxy ID path":     {func(p *corev1.Pod) { p.Annotations[k8s.AnnotationProxyID] = "../../x" }, "not 32 hex digits"},
		"proxy ID upper": {func(p *corev1.Pod) {
			p.Annotations[k8s.AnnotationProxyID] = strings.ToUpper(p.Annotations[k8s.AnnotationProxyID])
		}, "not 32 hex digits"},
		"other proxy ID": {func(p *corev1.Pod) { p.Annotations[k8s.AnnotationProxyID] = strings.Repeat("ab", 16) },
			"is not the Secret meshd-proxy-abab"},
		"opted out":    {func(p *corev1.Pod) { p.Labels = map[string]string{k8s.LabelInject: "false"} }, "opted out"},
		"host network": {func(p *corev1.Pod) { p.Spec.HostNetwork = true }, "hostNetwork"},
		"no sidecar": {func(p *corev1.Pod) { p.Spec.InitContainers = p.Spec.InitContainers[:1] },
			"no sidecar container"},
		"app mounts the credentials": {func(p *corev1.Pod) {
			p.Spec.Containers[0].VolumeMounts = append(p.Spec.Containers[0].VolumeMounts, corev1.VolumeMount{Name: inject.VolumeCreds, MountPath: "/steal"})
		}, `container "app" mounts the sidecar's credentials`},
		"not a Secret volume": {func(p *corev1.Pod) {
			p.Spec.Volumes[0].VolumeSource = corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}
		}, "is not the Secret"},
	} {
		t.Run(name, func(t *testing.T) {
			pod := admitted("web-" + strings.ReplaceAll(name, " ", "-"))
			tc.bend(pod)
			if _, why := inj.NeedsSecret(pod); tc.want == "" && why != "" || !strings.Contains(why, tc.want) {
				t.Errorf("needsSecret: %q, want %q", why, tc.want)
			}
			writeSecrets(t, inj, pod)
			_, err := client.CoreV1().Secrets(pod.Namespace).Get(ctx, inject.SecretPrefix+pod.Annotations[k8s.AnnotationProxyID], metav1.GetOptions{})
			if got := err == nil; got != (tc.want == "") {
				t.Errorf("Secret written: %v, want %v", got, tc.want == "")
			}
		})
	}
}

// TestSecretWriterOnce: a second writer (another replica, a new leader)
// finds the Secret there and neither fails nor writes it again; a writer
// lists the Secrets first and issues no certificate for one that exists;
// one that raced another gets AlreadyExists, which is no failure.
func TestSecretWriterOnce(t *testing.T) {
	ctx := context.Background()
	inj, client, _ := newInjector(t)
	pod := stored(apply(t, appPod(), inj.Admit(ctx, review(t, appPod(), false))), "web-1")
	name := inject.SecretPrefix + pod.Annotations[k8s.AnnotationProxyID]
	writeSecrets(t, inj, pod)
	first, err := client.CoreV1().Secrets("demo").Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	creates := func() (n int) {
		for _, a := range client.Actions() {
			if a.GetVerb() == "create" && a.GetResource().Resource == "secrets" {
				n++
			}
		}
		return n
	}
	if n := creates(); n != 1 {
		t.Fatalf("%d creates, want 1", n)
	}
	writeSecrets(t, inj, pod) // another writer: lists, finds it
	if n := creates(); n != 1 {
		t.Errorf("a second writer created the Secret again (%d creates)", n)
	}
	again, _ := client.CoreV1().Secrets("demo").Get(ctx, name, metav1.GetOptions{})
	if string(again.Data["cert-chain.pem"]) != string(first.Data["cert-chain.pem"]) {
		t.Error("the Secret changed")
	}

	// A writer that missed the Secret in its list (two replicas racing)
	// gets AlreadyExists: no error.
	feed := inject.NewPods()
	w, err := inj.NewSecretWriter(inject.SecretWriterConfig{Pods: feed})
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Pass(ctx); err != nil { // lists: the pod is not in view yet
		t.Fatal(err)
	}
	if err := client.CoreV1().Secrets("demo").Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.CoreV1().Secrets("demo").Create(ctx, first, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	feed.Set(vec.Of([]*corev1.Pod{pod}))
	if err := w.Pass(ctx); err != nil {
		t.Errorf("AlreadyExists: %v", err)
	}
}
