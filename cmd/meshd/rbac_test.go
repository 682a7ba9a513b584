package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/meshd/meshd/internal/testenv"
	"github.com/meshd/meshd/k8s"
)

// TestServeUnderDeployRBAC applies deploy/base's ServiceAccount, RBAC and
// webhook configuration for real, then runs meshd with that ServiceAccount's
// token: it creates its CA Secret, takes the Lease, sets the webhook's
// caBundle and records an Event for a bad Service, with no "forbidden" in
// its log (the RBAC is sufficient); SubjectAccessReviews show it cannot do
// what it does not need (not broader than needed).
func TestServeUnderDeployRBAC(t *testing.T) {
	env := testenv.Kube(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := env.FreshNamespace(ctx, "meshd-system"); err != nil {
		t.Fatal(err)
	}
	base := "../../deploy/base/"
	if err := env.ApplyFiles(ctx, base+"serviceaccount.yaml", base+"rbac.yaml", base+"webhook.yaml", base+"authorizationpolicy.yaml"); err != nil {
		t.Fatal(err)
	}
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, 30*time.Second, true, func(context.Context) (bool, error) {
		return k8s.PolicyAPIServed(env.Client.Discovery())
	}); err != nil {
		t.Fatalf("the AuthorizationPolicy CRD is not served: %v", err)
	}
	// A policy meshd finds invalid: it must watch it and write its status.
	if err := env.ApplyYAML(ctx, []byte("apiVersion: meshd.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: rbac-bad, namespace: default}\n"+
		"spec: {selector: {}, action: ALLOW, rules: [{from: {identities: [spiffe://elsewhere.example/a/b]}}]}\n"), testenv.ApplyOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { // its service does not exist here: do not leave it to other tests
		_ = env.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Delete(context.Background(), "meshd-sidecar-injector", metav1.DeleteOptions{})
	})
	kubeconfig := serviceAccountKubeconfig(ctx, t, env, "meshd-system", "meshd")

	debugAddr := freeAddr(t)
	logs := runServe(ctx, t, "--kubeconfig", kubeconfig, "--namespace", "meshd-system", "--xds-addr", freeAddr(t),
		"--debug-addr", debugAddr, "--webhook-addr", freeAddr(t), "--lease-duration", "3s")
	waitHTTP(t, "http://"+debugAddr+"/readyz")
	bad := "carrier-pigeon"
	if _, err := env.Client.CoreV1().Services("default").Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "rbac-odd"},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "x", Port: 81, AppProtocol: &bad}}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = env.Client.CoreV1().Services("default").Delete(context.Background(), "rbac-odd", metav1.DeleteOptions{})
	})
	checks := map[string]func(context.Context) bool{
		"CA Secret created": func(ctx context.Context) bool {
			_, err := env.Client.CoreV1().Secrets("meshd-system").Get(ctx, "meshd-ca", metav1.GetOptions{})
			return err == nil
		},
		"Lease held": func(ctx context.Context) bool {
			l, err := env.Client.CoordinationV1().Leases("meshd-system").Get(ctx, leaseName, metav1.GetOptions{})
			return err == nil && l.Spec.HolderIdentity != nil && *l.Spec.HolderIdentity != ""
		},
		"webhook caBundle set": func(ctx context.Context) bool {
			m, err := env.Client.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, "meshd-sidecar-injector", metav1.GetOptions{})
			return err == nil && len(m.Webhooks[0].ClientConfig.CABundle) > 0
		},
		"policy status written": func(ctx context.Context) bool {
			u, err := dynamic.NewForConfigOrDie(env.Config).Resource(k8s.PolicyResource).Namespace("default").Get(ctx, "rbac-bad", metav1.GetOptions{})
			if err != nil {
				return false
			}
			conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
			return len(conds) == 1 && conds[0].(map[string]any)["status"] == "False"
		},
		"Event recorded": func(ctx context.Context) bool {
			evs, err := env.Client.CoreV1().Events("default").List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=rbac-odd"})
			return err == nil && len(evs.Items) > 0
		},
	}
	for name, ok := range checks {
		if err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) { return ok(ctx), nil }); err != nil {
			t.Errorf("%s: not under the deploy RBAC", name)
		}
	}
	if log := logs(); strings.Contains(strings.ToLower(log), "forbidden") {
		t.Errorf("meshd hit a forbidden call under the deploy RBAC:\n%s", grepLines(log, "orbidden"))
	}
	sa := "system:serviceaccount:meshd-system:meshd"
	for _, attr := range []authorizationv1.ResourceAttributes{
		{Verb: "create", Resource: "pods", Namespace: "default"},
		{Verb: "delete", Resource: "services", Namespace: "default"},
		{Verb: "update", Resource: "nodes"},
		{Verb: "update", Group: "admissionregistration.k8s.io", Resource: "mutatingwebhookconfigurations", Name: "someone-elses"},
		{Verb: "update", Group: "coordination.k8s.io", Resource: "leases", Namespace: "kube-system"},
		{Verb: "delete", Resource: "namespaces"},
	} {
		sar, err := env.Client.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{
			Spec: authorizationv1.SubjectAccessReviewSpec{User: sa, Groups: []string{"system:serviceaccounts"}, ResourceAttributes: &attr}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if sar.Status.Allowed {
			t.Errorf("the deploy RBAC allows meshd to %s %s %s (not needed)", attr.Verb, attr.Resource, attr.Name)
		}
	}
}

// serviceAccountKubeconfig writes a kubeconfig authenticating as a
// ServiceAccount with a fresh token.
func serviceAccountKubeconfig(ctx context.Context, t *testing.T, env *testenv.Env, ns, name string) string {
	t.Helper()
	exp := int64(3600)
	tok, err := env.Client.CoreV1().ServiceAccounts(ns).CreateToken(ctx, name,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &exp}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	caData := env.Config.TLSClientConfig.CAData
	if len(caData) == 0 {
		if caData, err = os.ReadFile(env.Config.TLSClientConfig.CAFile); err != nil {
			t.Fatal(err)
		}
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["test"] = &clientcmdapi.Cluster{Server: env.URL, CertificateAuthorityData: caData}
	cfg.AuthInfos["sa"] = &clientcmdapi.AuthInfo{Token: tok.Status.Token}
	cfg.Contexts["sa"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "sa"}
	cfg.CurrentContext = "sa"
	path := filepath.Join(t.TempDir(), "sa.kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	return path
}
