package k8s_test

import (
	"encoding/json"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/meshd/meshd/k8s"
)

// FuzzPolicyFromObject: whatever a policy's spec holds, the check returns a
// policy or an error, never panics, and a policy it returns has rules.
func FuzzPolicyFromObject(f *testing.F) {
	for _, seed := range []string{
		`{"selector":{},"action":"ALLOW","rules":[{}]}`,
		`{"selector":{"matchLabels":{"app":"web"},"matchExpressions":[{"key":"app","operator":"NotIn","values":["web"]}]},"action":"DENY","rules":[{"from":{"namespaces":["a*"]}}]}`,
		`{"selector":{},"ports":[80,0],"action":"ALLOW","dryRun":true,"rules":[{"from":{"identities":["spiffe://cluster.local/a/../b"],"serviceAccounts":["x/y"]},"to":{"paths":["/a*"],"methods":["GET"],"hosts":["h"]}}]}`,
		`{"selector":null,"rules":7}`,
		`[]`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, spec []byte) {
		var v any
		if json.Unmarshal(spec, &v) != nil {
			return
		}
		u := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "meshd.io/v1alpha1", "kind": "AuthorizationPolicy",
			"metadata": map[string]any{"name": "p", "namespace": "ns"}, "spec": v}}
		p, sel, err := k8s.PolicyFromObject(u, "cluster.local")
		if err == nil && (p == nil || sel == nil || len(p.Rules) == 0) {
			t.Fatalf("accepted %s as %+v with selector %v", spec, p, sel)
		}
	})
}
