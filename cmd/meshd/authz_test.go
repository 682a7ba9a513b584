package main

import (
	"context"
	"io"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"

	"github.com/meshd/meshd/internal/testenv"
	"github.com/meshd/meshd/k8s"
)

// TestAuthorizationPolicyOnAPIServer: the CRD of deploy/base on the real
// apiserver. Its schema refuses a malformed policy at admission; a policy
// the schema admits but meshd finds invalid (a selector that can never
// match, an identity of another trust domain) gets Accepted=False and a
// Warning Event, while a valid one beside it gets Accepted=True and reaches
// the selected pod's real Envoy as RBAC configuration.
func TestAuthorizationPolicyOnAPIServer(t *testing.T) {
	testenv.Need(t, "envoy")
	env := testenv.Kube(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const ns = "authz-demo"
	for _, n := range []string{"meshd-system", ns} {
		if err := env.FreshNamespace(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	if err := env.ApplyFiles(ctx, filepath.Join("..", "..", "deploy", "base", "authorizationpolicy.yaml")); err != nil {
		t.Fatal(err)
	}
	err := wait.PollUntilContextCancel(ctx, 200*time.Millisecond, true, func(context.Context) (bool, error) {
		return k8s.PolicyAPIServed(env.Client.Discovery())
	})
	if err != nil {
		t.Fatalf("the CRD is not served: %v", err)
	}
	nsObj, err := env.Client.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	nsObj.Labels = map[string]string{"meshd.io/inject": "enabled"}
	if _, err := env.Client.CoreV1().Namespaces().Update(ctx, nsObj, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	runPod(ctx, t, env, ns, "web-0", "198.18.0.20")

	// The schema refuses what it can see.
	malformed := `apiVersion: meshd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: malformed, namespace: authz-demo}
spec: {selector: {}, action: allow, rules: []}
`
	if err := env.ApplyYAML(ctx, []byte(malformed), testenv.ApplyOptions{}); err == nil || !strings.Contains(err.Error(), "action") {
		t.Fatalf("a policy with action allow and no rules was admitted: %v", err)
	}
	policies := `apiVersion: meshd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: web-callers, namespace: authz-demo}
spec:
  selector: {matchLabels: {app: web}}
  action: ALLOW
  rules:
  - from: {serviceAccounts: [authz-demo/client]}
    to: {paths: [/api/*], methods: [GET]}
---
apiVersion: meshd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: never, namespace: authz-demo}
spec:
  selector:
    matchLabels: {app: web}
    matchExpressions: [{key: app, operator: DoesNotExist}]
  action: DENY
  rules:
  - from: {identities: [spiffe://elsewhere.example/ns/x/sa/y]}
`
	if err := env.ApplyYAML(ctx, []byte(policies), testenv.ApplyOptions{}); err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	caDir, xdsAddr, debugAddr := filepath.Join(dir, "ca"), freeAddr(t), freeAddr(t)
	sctx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- run(sctx, []string{"serve", "--kubeconfig", env.Kubeconfig, "--ca-dir", caDir, "--xds-addr", xdsAddr, "--debug-addr", debugAddr}, io.Discard, io.Discard)
	}()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("serve: %v", err)
		}
	})
	waitHTTP(t, "http://"+debugAddr+"/readyz")
	envoy := startSidecar(ctx, t, caDir, xdsAddr, ns, "web-0", "default")
	dump := waitEnvoy(ctx, t, envoy, "/config_dump", "authz-demo/web-callers/rule-0")
	for _, want := range []string{"RBACPerRoute", "spiffe://cluster.local/ns/authz-demo/sa/client", "/api/"} {
		if !strings.Contains(dump, want) {
			t.Errorf("web-0's config_dump lacks %q", want)
		}
	}
	if strings.Contains(dump, "authz-demo/never") {
		t.Error("the invalid policy reached the sidecar")
	}

	dyn, err := dynamic.NewForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	condition := func(name string) (status, reason, message string, workloads int64) {
		u, err := dyn.Resource(k8s.PolicyResource).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
		workloads, _, _ = unstructured.NestedInt64(u.Object, "status", "workloads")
		for _, c := range conds {
			m, _ := c.(map[string]any)
			if m["type"] == k8s.ConditionAccepted {
				status, _ = m["status"].(string)
				reason, _ = m["reason"].(string)
				message, _ = m["message"].(string)
			}
		}
		return status, reason, message, workloads
	}
	err = wait.PollUntilContextCancel(ctx, 200*time.Millisecond, true, func(context.Context) (bool, error) {
		okStatus, _, _, pods := condition("web-callers")
		badStatus, _, _, _ := condition("never")
		return okStatus == "True" && pods == 1 && badStatus == "False", nil
	})
	status, reason, message, _ := condition("never")
	t.Logf("never: Accepted=%s %s: %s", status, reason, message)
	if err != nil {
		okStatus, okReason, okMessage, pods := condition("web-callers")
		t.Fatalf("conditions: web-callers Accepted=%s %s %q (%d pods), never Accepted=%s %s %q", okStatus, okReason, okMessage, pods, status, reason, message)
	}
	if reason != k8s.PolicyInvalid || !strings.Contains(message, "can never match") || !strings.Contains(message, "elsewhere.example") {
		t.Errorf("never: reason %s, message %q: want both problems named", reason, message)
	}
	err = wait.PollUntilContextCancel(ctx, 200*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		evs, err := env.Client.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=never"})
		if err != nil {
			return false, err
		}
		for _, e := range evs.Items {
			if e.Type == "Warning" && e.Reason == k8s.PolicyInvalid && e.InvolvedObject.Kind == k8s.PolicyKind {
				t.Logf("event: %s %s: %s", e.Type, e.Reason, e.Message)
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Fatalf("no Warning Event on the invalid policy: %v", err)
	}

	// Convergence through the apiserver: the policy changed five times,
	// each time from the apply's return to web-0's Envoy holding the new
	// route (informer, hold-off, translation, push, Envoy's update).
	var took []time.Duration
	for i := range 5 {
		methods, want := "[GET]", `"exact": "GET"`
		if i%2 == 0 {
			methods, want = "[PATCH]", `"exact": "PATCH"`
		}
		start := time.Now()
		if err := env.ApplyYAML(ctx, []byte(strings.Replace(strings.Split(policies, "---")[0], "[GET]", methods, 1)), testenv.ApplyOptions{}); err != nil {
			t.Fatal(err)
		}
		applied := time.Since(start)
		for {
			b, err := envoy.Admin(ctx, "/config_dump?resource=dynamic_route_configs")
			if err == nil && strings.Contains(string(b), want) {
				break
			}
			if ctx.Err() != nil {
				t.Fatalf("web-0's Envoy never showed %s", want)
			}
			time.Sleep(5 * time.Millisecond)
		}
		took = append(took, time.Since(start)-applied)
	}
	t.Logf("policy change to web-0's Envoy (after the apply returned): %v", took)
}
