package k8s

import (
	"context"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"

	"github.com/meshd/meshd/internal/testenv"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

// TestWatcherAgainstAPIServer: the watcher hands on nothing before sync,
// then the full state, then a new state after a change.
func TestWatcherAgainstAPIServer(t *testing.T) {
	env := testenv.Kube(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	ns := "watcher-test"
	if err := env.EnsureNamespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	svc := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: ns},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80}}}}
	if _, err := env.Client.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	states := make(chan *State, 16)
	w, err := New(Config{Client: env.Client, HoldOff: 20 * time.Millisecond, MaxDelay: 200 * time.Millisecond,
		OnState: func(_ context.Context, s *State) { states <- s }})
	if err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- w.Start(wctx) }()
	defer func() { wcancel(); <-done }()

	first := <-states
	if !w.Synced() {
		t.Fatal("state handed on before the informers synced")
	}
	if !hasService(first, ns, "web") {
		t.Fatalf("initial state lacks service %s/web", ns)
	}
	svc2 := svc.DeepCopy()
	svc2.Name = "db"
	if _, err := env.Client.CoreV1().Services(ns).Create(ctx, svc2, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	withDB := awaitState(ctx, t, states, "the new service", func(s *State) bool { return hasService(s, ns, "db") })

	// A pod: the next states list the pods again, and hand on the
	// services' list unchanged (no service event came).
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: ns},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "nginx"}}}}
	if _, err := env.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	withPod := awaitState(ctx, t, states, "the new pod", func(s *State) bool { return hasPod(s, ns, "p") })
	if !withPod.Services.Same(withDB.Services) {
		t.Error("the services were listed again though none changed")
	}
	if err := env.Client.CoreV1().Pods(ns).Delete(ctx, "p", metav1.DeleteOptions{GracePeriodSeconds: new(int64)}); err != nil {
		t.Fatal(err)
	}
	awaitState(ctx, t, states, "the pod gone", func(s *State) bool { return !hasPod(s, ns, "p") && hasService(s, ns, "db") })
}

// awaitState returns the first state handed on that is ok.
func awaitState(ctx context.Context, t *testing.T, states <-chan *State, what string, ok func(*State) bool) *State {
	t.Helper()
	for {
		select {
		case s := <-states:
			if ok(s) {
				return s
			}
		case <-ctx.Done():
			t.Fatalf("no state with %s", what)
		}
	}
}

func hasPod(s *State, ns, name string) bool {
	for p := range s.Pods.Values() {
		if p.Namespace == ns && p.Name == name {
			return true
		}
	}
	return false
}

func hasService(s *State, ns, name string) bool {
	for svc := range s.Services.Values() {
		if svc.Namespace == ns && svc.Name == name {
			return len(svc.ManagedFields) == 0
		}
	}
	return false
}

// A CRD installed after meshd started: policies are watched from then on,
// and the next state holds them.
func TestPoliciesWatchedOnceTheirCRDIsInstalled(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "mesh.yaml"), []byte(localMesh+"---\napiVersion: meshd.io/v1alpha1\nkind: AuthorizationPolicy\n"+
		"metadata: {name: p, namespace: demo}\nspec: {selector: {}, action: DENY, rules: [{}]}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// The informer path, on client-go's in-memory API (test-only fakes).
	data, err := os.ReadFile(filepath.Join(dir, "mesh.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	st, err := StateFromYAML(data)
	if err != nil {
		t.Fatal(err)
	}
	client := fake.NewClientset(st.Namespaces.At(0), st.Services.At(0), st.Pods.At(0))
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
		map[schema.GroupVersionResource]string{PolicyResource: PolicyKind + "List"}, st.Policies[0])
	var installed atomic.Bool
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	states := make(chan *State, 16)
	w, err := New(Config{Client: client, Dynamic: dyn, HoldOff: 10 * time.Millisecond, MaxDelay: 50 * time.Millisecond,
		PoliciesServed: func() (bool, error) { return installed.Load(), nil }, PolicyRecheck: 20 * time.Millisecond,
		OnState: func(_ context.Context, s *State) { states <- s }})
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = w.Start(ctx) }()
	waitState(ctx, t, states, func(s *State) bool { return s.Pods.Len() == 1 && len(s.Policies) == 0 })
	installed.Store(true)
	waitState(ctx, t, states, func(s *State) bool { return len(s.Policies) == 1 })
}

// TestPolicyNotifier: a policy's status write (meshd's own) is not a
// change; an edit of its spec, an add and a delete are.
func TestPolicyNotifier(t *testing.T) {
	n := 0
	h := policyNotifier(func() { n++ })
	pol := func(action, status string) *unstructured.Unstructured {
		u := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "meshd.io/v1alpha1", "kind": "AuthorizationPolicy",
			"metadata": map[string]any{"name": "p", "namespace": "ns", "generation": int64(1)},
			"spec":     map[string]any{"action": action, "rules": []any{map[string]any{}}}}}
		if status != "" {
			u.Object["status"] = map[string]any{"workloads": int64(1), "conditions": []any{map[string]any{"type": status}}}
		}
		return u
	}
	h.OnAdd(pol("ALLOW", ""), false)
	h.OnUpdate(pol("ALLOW", ""), pol("ALLOW", "Accepted"))
	if n != 1 {
		t.Fatalf("after an add and a status write: %d notifications, want 1", n)
	}
	h.OnUpdate(pol("ALLOW", "Accepted"), pol("DENY", "Accepted"))
	noSpec := pol("DENY", "Accepted")
	delete(noSpec.Object, "spec")
	h.OnUpdate(pol("DENY", "Accepted"), noSpec)
	h.OnUpdate(pol("DENY", ""), "not a policy")
	h.OnDelete(pol("DENY", "Accepted"))
	if n != 5 {
		t.Fatalf("after two spec edits, an update of another type and a delete: %d notifications, want 5", n)
	}
}
