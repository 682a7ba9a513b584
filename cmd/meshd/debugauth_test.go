package main

import (
	"context"
	"io"
	"net/http"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshd/meshd/internal/testenv"
)

// TestDebugAPIKubernetesAuth: with --debug-auth kubernetes the debug API
// takes Kubernetes bearer tokens: a ServiceAccount whose RBAC allows the
// nonResourceURLs reads /debug/proxies and /metrics, one without is
// forbidden, no token or a forged one is unauthorized (real apiserver:
// TokenRequest, TokenReview, SubjectAccessReview).
func TestDebugAPIKubernetesAuth(t *testing.T) {
	env := testenv.Kube(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const ns = "debug-auth"
	for _, n := range []string{"meshd-system", ns} {
		if err := env.FreshNamespace(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	c := env.Client
	token := func(sa string) string {
		t.Helper()
		if _, err := c.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		exp := int64(600)
		tr, err := c.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &exp}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return tr.Status.Token
	}
	reader, nobody := token("debug-reader"), token("nobody")
	if _, err := c.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: "meshd-debug-reader-test"},
		Rules: []rbacv1.PolicyRule{{NonResourceURLs: []string{"/debug/*", "/metrics"}, Verbs: []string{"get"}}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: "meshd-debug-reader-test"},
		RoleRef:  rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "meshd-debug-reader-test"},
		Subjects: []rbacv1.Subject{{Kind: "ServiceAccount", Name: "debug-reader", Namespace: ns}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = c.RbacV1().ClusterRoleBindings().Delete(context.Background(), "meshd-debug-reader-test", metav1.DeleteOptions{})
		_ = c.RbacV1().ClusterRoles().Delete(context.Background(), "meshd-debug-reader-test", metav1.DeleteOptions{})
	})

	sctx, stop := context.WithCancel(ctx)
	debugAddr := freeAddr(t)
	done := make(chan error, 1)
	go func() {
		done <- run(sctx, []string{"serve", "--kubeconfig", env.Kubeconfig, "--xds-addr", freeAddr(t), "--debug-addr", debugAddr,
			"--debug-auth", "kubernetes"}, io.Discard, io.Discard)
	}()
	defer func() { stop(); <-done }()
	waitHTTP(t, "http://"+debugAddr+"/readyz")
	get := func(path, token string) int {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+debugAddr+path, nil)
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, tc := range []struct {
		path, who, token string
		want             int
	}{
		{"/debug/proxies", "the reader", reader, 200},
		{"/metrics", "the reader", reader, 200},
		{"/debug/proxies", "a ServiceAccount without the right", nobody, 403},
		{"/metrics", "a ServiceAccount without the right", nobody, 403},
		{"/debug/proxies", "no token", "", 401},
		{"/debug/proxies", "a forged token", "eyJhbGciOiJub25lIn0.e30.x", 401},
		{"/debug/proxies", "the reader again (cached)", reader, 200},
	} {
		if got := get(tc.path, tc.token); got != tc.want {
			t.Errorf("%s as %s: %d, want %d", tc.path, tc.who, got, tc.want)
		}
	}
}
