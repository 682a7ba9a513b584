package kubeauth_test

import (
	"context"
	"net/http"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	clocktesting "k8s.io/utils/clock/testing"

	"github.com/meshd/meshd/internal/kubeauth"
)

// TestVerdictCachedForTTL: a verdict is reused until the clock passes its
// TTL, then the apiserver is asked again. (The reviews against a real
// apiserver are exercised by cmd/meshd's debugauth_test.go.)
func TestVerdictCachedForTTL(t *testing.T) {
	client := fake.NewClientset()
	allowed, reviews := true, 0
	client.PrependReactor("create", "tokenreviews", func(k8stesting.Action) (bool, runtime.Object, error) {
		reviews++
		return true, &authenticationv1.TokenReview{Status: authenticationv1.TokenReviewStatus{
			Authenticated: true, User: authenticationv1.UserInfo{Username: "alice"}}}, nil
	})
	client.PrependReactor("create", "subjectaccessreviews", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, &authorizationv1.SubjectAccessReview{Status: authorizationv1.SubjectAccessReviewStatus{Allowed: allowed}}, nil
	})
	clk := clocktesting.NewFakePassiveClock(time.Date(2026, 12, 2, 7, 0, 0, 0, time.UTC))
	a := kubeauth.New(client, 10*time.Second, clk)
	ask := func(want int) {
		t.Helper()
		code, reason, err := a.Authorize(context.Background(), "token", "/debug/proxies")
		if err != nil || code != want {
			t.Fatalf("code %d (%s), error %v; want %d", code, reason, err, want)
		}
	}
	ask(http.StatusOK)
	allowed = false
	clk.SetTime(clk.Now().Add(9 * time.Second))
	ask(http.StatusOK) // cached
	if reviews != 1 {
		t.Fatalf("%d token reviews within the TTL, want 1", reviews)
	}
	clk.SetTime(clk.Now().Add(2 * time.Second))
	ask(http.StatusForbidden)
	if reviews != 2 {
		t.Fatalf("%d token reviews after the TTL, want 2", reviews)
	}
}
