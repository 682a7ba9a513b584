package deploy_test

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"io"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"

	"github.com/meshd/meshd/internal/config"
	"github.com/meshd/meshd/internal/testenv"
)

// renderChart renders charts/meshd with the Helm library (tools/helmrender,
// built by `make tools`) into namespace ns, with --set values.
func renderChart(t *testing.T, ns string, set ...string) ([]byte, error) {
	t.Helper()
	bin := testenv.Need(t, "helmrender")
	args := []string{"--namespace", ns}
	for _, s := range set {
		args = append(args, "--set", s)
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.Command(bin, append(args, "charts/meshd")...)
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, errors.New(strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// objects decodes a YAML stream into objects keyed kind/namespace/name.
func objects(t *testing.T, data []byte) map[string]*unstructured.Unstructured {
	t.Helper()
	out := map[string]*unstructured.Unstructured{}
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	for {
		obj := &unstructured.Unstructured{}
		if err := dec.Decode(&obj.Object); errors.Is(err, io.EOF) {
			return out
		} else if err != nil {
			t.Fatal(err)
		}
		if len(obj.Object) > 0 {
			out[obj.GetKind()+"/"+obj.GetNamespace()+"/"+obj.GetName()] = obj
		}
	}
}

// meshdArgs returns the meshd container's args of the rendered Deployment.
func meshdArgs(t *testing.T, objs map[string]*unstructured.Unstructured, ns string) []string {
	t.Helper()
	u, ok := objs["Deployment/"+ns+"/meshd"]
	if !ok {
		t.Fatalf("no Deployment %s/meshd rendered", ns)
	}
	var d appsv1.Deployment
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, &d); err != nil {
		t.Fatal(err)
	}
	for _, c := range d.Spec.Template.Spec.Containers {
		if c.Name == "meshd" {
			return c.Args
		}
	}
	t.Fatal("no meshd container")
	return nil
}

// TestChartPassesServerSideDryRun renders the chart with its defaults and
// with the values a user changes (issuer, trust domain, lifetime, replicas,
// debug exposure, images, no webhook), checks that meshd accepts the
// rendered command line (its own flag parsing and Validate), and applies
// every object with server-side dry-run to the real apiserver.
func TestChartPassesServerSideDryRun(t *testing.T) {
	env := testenv.Kube(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	tests := map[string]struct {
		ns       string
		set      []string
		wantArgs []string
		wantObjs []string
		noObjs   []string
	}{
		"defaults": {ns: "meshd-system",
			wantArgs: []string{"--debug-addr=127.0.0.1:15014", "--webhook-addr=0.0.0.0:15017", "--namespace=meshd-system"},
			wantObjs: []string{"MutatingWebhookConfiguration//meshd-sidecar-injector", "PodDisruptionBudget/meshd-system/meshd"}},
		"cert-manager ClusterIssuer, approved by meshd": {ns: "meshd-system",
			set:      []string{"issuer.kind=ClusterIssuer", "issuer.name=mesh-ca", "issuer.approve=true", "issuer.trustBundle=configmap/mesh-roots/ca.crt", "issuer.timeout=2m"},
			wantArgs: []string{"--issuer-ref=ClusterIssuer/mesh-ca", "--issuer-approve", "--trust-bundle=configmap/mesh-roots/ca.crt", "--issuer-timeout=2m"},
			wantObjs: []string{"ClusterRole//meshd-approve", "ClusterRoleBinding//meshd-approve"}},
		"Issuer in another namespace, trust domain, lifetime, one replica": {ns: "mesh",
			set:      []string{"issuer.kind=Issuer", "issuer.name=mesh-ca", "trustDomain=example.org", "certificateLifetime=12h", "replicas=1", "resources.limits.memory=512Mi"},
			wantArgs: []string{"--issuer-ref=Issuer/mesh-ca", "--trust-domain=example.org", "--cert-ttl=12h", "--namespace=mesh"},
			noObjs:   []string{"PodDisruptionBudget/mesh/meshd"}},
		"external issuer": {ns: "meshd-system",
			set:      []string{"issuer.kind=VaultIssuer", "issuer.name=vault", "issuer.group=vault.example.com"},
			wantArgs: []string{"--issuer-ref=VaultIssuer/vault/vault.example.com"}},
		"debug API exposed with Kubernetes auth": {ns: "meshd-system",
			set:      []string{"debug.address=0.0.0.0:15014", "debug.auth=kubernetes", "debug.readerRole=true"},
			wantArgs: []string{"--debug-addr=0.0.0.0:15014", "--debug-auth=kubernetes"},
			wantObjs: []string{"ClusterRole//meshd-debug-reader"}},
		"debug API exposed with a token Secret, images, no webhook": {ns: "meshd-system",
			set: []string{"debug.address=0.0.0.0:15014", "debug.tokenSecret=meshd-debug-token", "webhook.enabled=false",
				"image.meshd=registry.example/meshd:v1", "image.proxy=registry.example/proxy:v1", "image.pullPolicy=IfNotPresent"},
			wantArgs: []string{"--debug-token-file=/etc/meshd/debug-token/token"},
			noObjs:   []string{"MutatingWebhookConfiguration//meshd-sidecar-injector"}},
		"xDS limits as extra flags": {ns: "meshd-system",
			set:      []string{"extraArgs={--xds-streams-per-identity=16,--xds-request-rate=100,--hold-off=50ms}"},
			wantArgs: []string{"--xds-streams-per-identity=16", "--xds-request-rate=100", "--hold-off=50ms"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			out, err := renderChart(t, tc.ns, tc.set...)
			if err != nil {
				t.Fatal(err)
			}
			objs := objects(t, out)
			args := meshdArgs(t, objs, tc.ns)
			for _, a := range tc.wantArgs {
				if !slices.Contains(args, a) {
					t.Errorf("args %q lack %s", args, a)
				}
			}
			for _, k := range tc.wantObjs {
				if objs[k] == nil {
					t.Errorf("%s not rendered", k)
				}
			}
			for _, k := range tc.noObjs {
				if objs[k] != nil {
					t.Errorf("%s rendered", k)
				}
			}
			// meshd itself accepts the command line.
			cfg := config.Default()
			fs := flag.NewFlagSet("serve", flag.ContinueOnError)
			cfg.RegisterFlags(fs)
			if args[0] != "serve" {
				t.Fatalf("args %q do not start with serve", args)
			}
			if err := fs.Parse(args[1:]); err != nil {
				t.Fatalf("meshd serve %q: %v", args[1:], err)
			}
			if err := cfg.Validate(); err != nil {
				t.Fatalf("meshd serve %q: %v", args[1:], err)
			}
			if err := env.EnsureNamespace(ctx, tc.ns); err != nil {
				t.Fatal(err)
			}
			if err := env.ApplyYAML(ctx, out, testenv.ApplyOptions{DryRun: true}); err != nil {
				t.Fatal(err)
			}
		})
	}
	// Values meshd would refuse are refused at render time.
	for name, set := range map[string][]string{
		"exposed without auth":      {"debug.address=0.0.0.0:15014"},
		"unknown debug auth":        {"debug.auth=none"},
		"issuer without name":       {"issuer.kind=ClusterIssuer"},
		"external issuer, no group": {"issuer.kind=VaultIssuer", "issuer.name=v"},
	} {
		if _, err := renderChart(t, "meshd-system", set...); err == nil {
			t.Errorf("%s: rendered", name)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
}

// TestChartMatchesKustomizeBase: the chart with its defaults and the
// Kustomize base (rendered by the real kubectl kustomize) hold the same
// objects, field for field (RBAC rules, webhook configuration, container
// args, ports, probes, security contexts, resources, Services, PDB), apart
// from the labels Helm adds and the Namespace (Helm's --create-namespace).
func TestChartMatchesKustomizeBase(t *testing.T) {
	kubectl := testenv.Need(t, "kubectl")
	out, err := renderChart(t, "meshd-system")
	if err != nil {
		t.Fatal(err)
	}
	base, err := exec.Command(kubectl, "kustomize", "base").Output()
	if err != nil {
		t.Fatalf("kubectl kustomize base: %v", err)
	}
	chart, kust := objects(t, out), objects(t, base)
	delete(kust, "Namespace//meshd-system")
	if len(kust) < 8 {
		t.Fatalf("the base holds only %d objects", len(kust))
	}
	for _, objs := range []map[string]*unstructured.Unstructured{chart, kust} {
		for _, o := range objs {
			o.SetLabels(nil)
			o.SetAnnotations(nil)
		}
	}
	if d := cmp.Diff(kust, chart); d != "" {
		t.Errorf("chart and base differ (-base +chart):\n%s", d)
	}
}
