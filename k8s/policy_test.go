package k8s_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	clienttesting "k8s.io/client-go/testing"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/yaml"

	"github.com/meshd/meshd/k8s"
	"github.com/meshd/meshd/model"
)

func policyObject(t *testing.T, spec string) *unstructured.Unstructured {
	t.Helper()
	u := &unstructured.Unstructured{}
	doc := "apiVersion: meshd.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: shop}\nspec:\n" + spec
	if err := yaml.Unmarshal([]byte(doc), &u.Object); err != nil {
		t.Fatal(err)
	}
	return u
}

func TestPolicyFromObject(t *testing.T) {
	p, sel, err := k8s.PolicyFromObject(policyObject(t, `
  selector: {matchLabels: {app: web}}
  ports: [9090, 8080, 8080]
  action: ALLOW
  dryRun: true
  rules:
  - from:
      identities: [spiffe://cluster.local/ns/a/sa/b]
      serviceAccounts: [shop/frontend]
      namespaces: [monitoring, team-*, "*"]
    to: {paths: [/api/*, /healthz], methods: [GET], hosts: [Web.Shop.svc]}
  - {}
`), "cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	if sel.String() != "app=web" || p.Action != model.ActionAllow || !p.DryRun || len(p.Ports) != 2 || p.Ports[0] != 8080 {
		t.Errorf("selector %s, policy %+v", sel, p)
	}
	r := p.Rules[0]
	wantIDs := []string{"spiffe://cluster.local/ns/a/sa/b", "spiffe://cluster.local/ns/shop/sa/frontend"}
	wantPrefixes := []string{"spiffe://cluster.local/ns/", "spiffe://cluster.local/ns/monitoring/sa/", "spiffe://cluster.local/ns/team-"}
	if strings.Join(r.From.Identities, " ") != strings.Join(wantIDs, " ") || strings.Join(r.From.Prefixes, " ") != strings.Join(wantPrefixes, " ") {
		t.Errorf("from %+v", r.From)
	}
	if len(r.To.Paths) != 2 || !r.To.Paths[0].Prefix || r.To.Paths[0].Value != "/api/" || r.To.Hosts[0] != "web.shop.svc" {
		t.Errorf("to %+v", r.To)
	}
	if p.Rules[1].From != nil || p.Rules[1].To != nil {
		t.Errorf("rule {} is %+v, want any caller, any request", p.Rules[1])
	}

	for name, tc := range map[string]struct{ spec, want string }{
		"no selector":     {"  action: ALLOW\n  rules: [{}]\n", "spec.selector is missing"},
		"never matches":   {"  selector: {matchLabels: {app: web}, matchExpressions: [{key: app, operator: In, values: [db]}]}\n  action: DENY\n  rules: [{}]\n", "can never match"},
		"bad expression":  {"  selector: {matchExpressions: [{key: app, operator: In}]}\n  action: DENY\n  rules: [{}]\n", "spec.selector"},
		"bad action":      {"  selector: {}\n  action: AUDIT\n  rules: [{}]\n", `"AUDIT" is neither`},
		"no rules":        {"  selector: {}\n  action: ALLOW\n  rules: []\n", "spec.rules is empty"},
		"unknown field":   {"  selector: {}\n  action: ALLOW\n  rules: [{}]\n  priority: 1\n", `unknown field "priority"`},
		"bad port":        {"  selector: {}\n  ports: [0]\n  action: ALLOW\n  rules: [{}]\n", "0 is not a port"},
		"empty from":      {"  selector: {}\n  action: ALLOW\n  rules: [{from: {}}]\n", "names no caller"},
		"empty to":        {"  selector: {}\n  action: ALLOW\n  rules: [{to: {}}]\n", "names no request"},
		"foreign domain":  {"  selector: {}\n  action: ALLOW\n  rules: [{from: {identities: [spiffe://evil.example/ns/a/sa/b]}}]\n", "trust domain evil.example"},
		"not spiffe":      {"  selector: {}\n  action: ALLOW\n  rules: [{from: {identities: [https://cluster.local/a]}}]\n", "not a SPIFFE ID"},
		"dot segment":     {"  selector: {}\n  action: ALLOW\n  rules: [{from: {identities: [spiffe://cluster.local/ns/../sa/b]}}]\n", "segments"},
		"bad sa":          {"  selector: {}\n  action: ALLOW\n  rules: [{from: {serviceAccounts: [frontend]}}]\n", "not <namespace>/<service account>"},
		"bad namespace":   {"  selector: {}\n  action: ALLOW\n  rules: [{from: {namespaces: [Team_A]}}]\n", "neither a namespace"},
		"relative path":   {"  selector: {}\n  action: ALLOW\n  rules: [{to: {paths: [api]}}]\n", "is not a path"},
		"inner star":      {"  selector: {}\n  action: ALLOW\n  rules: [{to: {paths: [/a/*/b]}}]\n", "is not a path"},
		"lower method":    {"  selector: {}\n  action: ALLOW\n  rules: [{to: {methods: [get]}}]\n", "upper-case"},
		"host with port":  {"  selector: {}\n  action: ALLOW\n  rules: [{to: {hosts: [\"web:80\"]}}]\n", "not a host name"},
		"spec not object": {"  7\n", "spec"},
	} {
		t.Run(name, func(t *testing.T) {
			_, _, err := k8s.PolicyFromObject(policyObject(t, tc.spec), "cluster.local")
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error %v, want one holding %q", err, tc.want)
			}
		})
	}
}

// Convert attaches valid policies to the pods they select, reports the
// invalid ones and HTTP rules on TCP ports, and never fails on a policy.
func TestConvertPolicies(t *testing.T) {
	st, err := k8s.StateFromYAML([]byte(`apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: shop, labels: {app: web}}
spec: {containers: [{name: a, image: a, ports: [{name: http, containerPort: 8080}, {name: db, containerPort: 5432}]}]}
---
apiVersion: v1
kind: Pod
metadata: {name: api-0, namespace: shop, labels: {app: api}}
---
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: other, labels: {app: web}}
---
apiVersion: meshd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: web, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  action: ALLOW
  rules: [{to: {methods: [GET]}}]
---
apiVersion: meshd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: all, namespace: shop}
spec: {selector: {}, action: DENY, rules: [{from: {namespaces: [sandbox]}}]}
---
apiVersion: meshd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: broken, namespace: shop}
spec: {selector: {}, action: DENY}
`))
	if err != nil {
		t.Fatal(err)
	}
	snap, problems := k8s.Convert(st, "cluster.local")
	keys := func(w *model.Workload) string {
		var out []string
		for _, p := range w.Policies {
			out = append(out, p.Key())
		}
		return strings.Join(out, ",")
	}
	for key, want := range map[string]string{"web-0.shop": "shop/all,shop/web", "api-0.shop": "shop/all", "web-0.other": ""} {
		if got := keys(snap.Workload(key)); got != want {
			t.Errorf("%s: policies %q, want %q", key, got, want)
		}
	}
	var reasons []string
	for _, p := range problems {
		reasons = append(reasons, p.Name+":"+p.Reason)
	}
	if got := strings.Join(reasons, " "); got != "broken:InvalidAuthorizationPolicy web:HTTPRuleOnTCPPort" {
		t.Errorf("problems %q", got)
	}
}

// PolicyStatus writes Accepted and the selected pod count, keeps the
// transition time while the status holds, and writes nothing unchanged.
func TestPolicyStatus(t *testing.T) {
	gvr := schema.GroupVersionResource{Group: "meshd.io", Version: "v1alpha1", Resource: "authorizationpolicies"}
	good := policyObject(t, "  selector: {}\n  action: DENY\n  rules: [{}]\n")
	good.SetName("good")
	good.SetGeneration(3)
	bad := policyObject(t, "  selector: {}\n  action: DENY\n  rules: []\n")
	bad.SetName("bad")
	client := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{gvr: "AuthorizationPolicyList"}, good, bad)
	clk := clocktesting.NewFakePassiveClock(time.Date(2026, 12, 2, 3, 0, 0, 0, time.UTC))
	s := k8s.NewPolicyStatus(client, slog.New(slog.NewTextHandler(io.Discard, nil)), clk)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go s.Start(ctx)
	snap := &model.Snapshot{Workloads: []*model.Workload{{Name: "web-0", Namespace: "shop", Policies: []*model.Policy{{Namespace: "shop", Name: "good"}}}}}
	problems := []k8s.Problem{{Kind: k8s.PolicyKind, Namespace: "shop", Name: "bad", Reason: k8s.PolicyInvalid, Message: "not enforced: spec.rules is empty"}}
	s.Update([]*unstructured.Unstructured{good, bad}, snap, problems)
	get := func(name string) *unstructured.Unstructured {
		var u *unstructured.Unstructured
		for range 100 {
			var err error
			if u, err = client.Resource(gvr).Namespace("shop").Get(ctx, name, metav1.GetOptions{}); err == nil && u.Object["status"] != nil {
				return u
			}
			time.Sleep(10 * time.Millisecond)
		}
		t.Fatalf("no status on %s", name)
		return nil
	}
	g, b := get("good"), get("bad")
	cond := func(u *unstructured.Unstructured) map[string]any {
		conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
		return conds[0].(map[string]any)
	}
	if c := cond(g); c["status"] != "True" || c["observedGeneration"] != int64(3) || c["lastTransitionTime"] != "2026-12-02T03:00:00Z" {
		t.Errorf("good: %v", c)
	}
	if n, _, _ := unstructured.NestedInt64(g.Object, "status", "workloads"); n != 1 {
		t.Errorf("good selects %d pods, want 1", n)
	}
	if c := cond(b); c["status"] != "False" || c["reason"] != k8s.PolicyInvalid || !strings.Contains(c["message"].(string), "spec.rules is empty") {
		t.Errorf("bad: %v", c)
	}
	// The same verdicts again: nothing to write.
	before := len(client.Actions())
	clk.SetTime(clk.Now().Add(time.Hour))
	s.Update([]*unstructured.Unstructured{g, b}, snap, problems)
	time.Sleep(50 * time.Millisecond)
	if after := len(client.Actions()); after != before {
		t.Errorf("%d writes for unchanged statuses", after-before)
	}
}

// A status write that conflicts (another writer's status came first) is
// made again on the object as it now is, when its generation is the one
// the verdict was for; not when the spec moved on.
func TestPolicyStatusConflict(t *testing.T) {
	gvr := schema.GroupVersionResource{Group: "meshd.io", Version: "v1alpha1", Resource: "authorizationpolicies"}
	for _, tc := range []struct {
		name     string
		gen      int64 // the generation the other writer leaves
		rewrites bool
	}{{"same spec", 3, true}, {"spec moved on", 4, false}} {
		t.Run(tc.name, func(t *testing.T) {
			pol := policyObject(t, "  selector: {}\n  action: DENY\n  rules: [{}]\n")
			pol.SetName("good")
			pol.SetGeneration(3)
			client := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{gvr: "AuthorizationPolicyList"}, pol)
			// The first status write conflicts: someone else wrote a status
			// (and, in the second case, a new spec) in between.
			var conflicted atomic.Bool
			client.PrependReactor("update", "authorizationpolicies", func(a clienttesting.Action) (bool, runtime.Object, error) {
				if a.GetSubresource() != "status" || !conflicted.CompareAndSwap(false, true) {
					return false, nil, nil
				}
				other := pol.DeepCopy()
				other.SetGeneration(tc.gen)
				other.Object["status"] = map[string]any{"workloads": int64(7), "conditions": []any{map[string]any{"type": "Accepted", "status": "Unknown"}}}
				if err := client.Tracker().Update(gvr, other, "shop"); err != nil {
					t.Error(err)
				}
				return true, nil, apierrors.NewConflict(gvr.GroupResource(), "good", errors.New("the object has been modified"))
			})
			s := k8s.NewPolicyStatus(client, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go s.Start(ctx)
			snap := &model.Snapshot{Workloads: []*model.Workload{{Name: "web-0", Namespace: "shop", Policies: []*model.Policy{{Namespace: "shop", Name: "good"}}}}}
			s.Update([]*unstructured.Unstructured{pol}, snap, nil)
			want := int64(7)
			if tc.rewrites {
				want = 1
			}
			var n int64
			for range 100 {
				u, err := client.Resource(gvr).Namespace("shop").Get(ctx, "good", metav1.GetOptions{})
				if err != nil {
					t.Fatal(err)
				}
				if n, _, _ = unstructured.NestedInt64(u.Object, "status", "workloads"); conflicted.Load() && n == want {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			time.Sleep(50 * time.Millisecond) // and nothing written after
			u, _ := client.Resource(gvr).Namespace("shop").Get(ctx, "good", metav1.GetOptions{})
			if n, _, _ = unstructured.NestedInt64(u.Object, "status", "workloads"); !conflicted.Load() || n != want {
				t.Errorf("conflicted %v, status.workloads %d, want %d", conflicted.Load(), n, want)
			}
		})
	}
}

// The root namespace's policies apply to the pods of every namespace they
// select (by label), beside each namespace's own; a change of them reaches
// pods everywhere, as a fresh conversion would see it.
func TestRootNamespacePolicies(t *testing.T) {
	const pods = `apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: shop, labels: {app: web}}
---
apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: other, labels: {app: web}}
---
apiVersion: v1
kind: Pod
metadata: {name: api-0, namespace: other, labels: {app: api}}
---
apiVersion: meshd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: own, namespace: shop}
spec: {selector: {}, action: ALLOW, rules: [{}]}
`
	const rootPolicies = `---
apiVersion: meshd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: no-sandbox, namespace: mesh-root}
spec: {selector: {}, action: DENY, rules: [{from: {namespaces: [sandbox]}}]}
---
apiVersion: meshd.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: web-only-get, namespace: mesh-root}
spec: {selector: {matchLabels: {app: web}}, action: ALLOW, rules: [{to: {methods: [GET]}}]}
`
	state := func(doc string) *k8s.State {
		st, err := k8s.StateFromYAML([]byte(doc))
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	fresh := func(st *k8s.State) *model.Snapshot {
		c := k8s.NewConverter("cluster.local")
		c.RootNamespace = "mesh-root"
		snap, _ := c.Convert(st)
		return snap
	}
	keys := func(w *model.Workload) string {
		var out []string
		for _, p := range w.Policies {
			out = append(out, p.Key())
		}
		return strings.Join(out, ",")
	}
	// The same pod objects in every state: only the policies move.
	base, root := state(pods), state(rootPolicies)
	with := *base
	with.Policies = slices.Concat(base.Policies, root.Policies)
	conv := k8s.NewConverter("cluster.local")
	conv.RootNamespace = "mesh-root"
	steps := []struct {
		st   *k8s.State
		want map[string]string
	}{
		{base, map[string]string{"web-0.shop": "shop/own", "web-0.other": "", "api-0.other": ""}},
		{&with, map[string]string{
			"web-0.shop":  "mesh-root/no-sandbox,mesh-root/web-only-get,shop/own",
			"web-0.other": "mesh-root/no-sandbox,mesh-root/web-only-get",
			"api-0.other": "mesh-root/no-sandbox",
		}},
		{base, map[string]string{"web-0.shop": "shop/own", "web-0.other": "", "api-0.other": ""}},
	}
	for i, step := range steps {
		snap, _ := conv.Convert(step.st)
		want := fresh(step.st)
		for key, policies := range step.want {
			if got := keys(snap.Workload(key)); got != policies {
				t.Errorf("step %d: %s: policies %q, want %q", i, key, got, policies)
			}
			if got, fresh := keys(snap.Workload(key)), keys(want.Workload(key)); got != fresh {
				t.Errorf("step %d: %s: policies %q incrementally, %q converted afresh", i, key, got, fresh)
			}
		}
	}
	// Without a root namespace, mesh-root is a namespace like any other.
	snap, _ := k8s.Convert(state(pods+rootPolicies), "cluster.local")
	if got := keys(snap.Workload("web-0.other")); got != "" {
		t.Errorf("no root namespace: web-0.other has policies %q, want none", got)
	}
}
