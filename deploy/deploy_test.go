// Package deploy holds meshd's Kubernetes manifests; this test validates them
// against the real kube-apiserver.
package deploy_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/yaml"

	"github.com/meshd/meshd/internal/testenv"
	"github.com/meshd/meshd/k8s"
)

func TestMain(m *testing.M) { os.Exit(testenv.Main(m)) }

// TestManifestsPassServerSideDryRun applies every manifest of the Kustomize
// base (and the plain examples) with server-side dry-run: the apiserver
// validates schema, defaults and admission without persisting anything.
func TestManifestsPassServerSideDryRun(t *testing.T) {
	env := testenv.Kube(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	// Namespaced objects need their namespace to exist for a dry-run.
	for _, ns := range []string{"meshd-system", "demo"} {
		if err := env.EnsureNamespace(ctx, ns); err != nil {
			t.Fatal(err)
		}
	}
	var kust struct {
		Resources []string `json:"resources"`
	}
	b, err := os.ReadFile("base/kustomization.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, &kust); err != nil {
		t.Fatal(err)
	}
	if len(kust.Resources) == 0 {
		t.Fatal("kustomization lists no resources")
	}
	// The example policy needs its CRD to exist, not only to pass a dry-run.
	if err := env.ApplyFiles(ctx, filepath.Join("base", "authorizationpolicy.yaml")); err != nil {
		t.Fatal(err)
	}
	if err := wait.PollUntilContextCancel(ctx, 100*time.Millisecond, true, func(context.Context) (bool, error) {
		return k8s.PolicyAPIServed(env.Client.Discovery())
	}); err != nil {
		t.Fatalf("the AuthorizationPolicy CRD is not served: %v", err)
	}
	files := []string{filepath.Join("examples", "app-namespace.yaml"), filepath.Join("examples", "sample-app.yaml"),
		filepath.Join("examples", "authorization-policy.yaml")}
	for _, r := range kust.Resources {
		files = append(files, filepath.Join("base", r))
	}
	// The check can fail: an invalid object is refused.
	bad := []byte("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: bad, namespace: meshd-system}\nspec: {replicas: -1}\n")
	if err := env.ApplyYAML(ctx, bad, testenv.ApplyOptions{DryRun: true}); err == nil {
		t.Fatal("an invalid Deployment passed the dry-run")
	}
	for _, f := range files {
		t.Run(f, func(t *testing.T) {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			if err := env.ApplyYAML(ctx, data, testenv.ApplyOptions{DryRun: true}); err != nil {
				t.Fatal(err)
			}
		})
	}
}
