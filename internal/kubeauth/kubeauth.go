// Package kubeauth authorizes requests to meshd's debug API the way
// Kubernetes components do: a bearer token is authenticated with a
// TokenReview, and the user it names must be allowed to "get" the request's
// path as a non-resource URL by a SubjectAccessReview. So Prometheus
// scrapes /metrics with its ServiceAccount, and an operator's RBAC
// (ClusterRole rules on nonResourceURLs such as /debug/*) decides who may
// read /debug/. Answers are cached briefly per token and path.
//
// Where it sits: beside the pipeline; cmd wires it into internal/debug.
package kubeauth

import (
	"context"
	"crypto/sha256"
	"fmt"
	"net/http"
	"sync"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/clock"
)

// Authorizer answers whether a token may get a path.
type Authorizer struct {
	client kubernetes.Interface
	ttl    time.Duration
	clock  clock.PassiveClock

	mu    sync.Mutex
	cache map[[32]byte]verdict
}

type verdict struct {
	code   int // http.StatusOK, StatusUnauthorized or StatusForbidden
	reason string
	until  time.Time
}

// maxCached bounds the cache; it is emptied when full.
const maxCached = 4096

// New returns an Authorizer caching verdicts for ttl (default 10s) by clk
// (nil: the real clock).
func New(client kubernetes.Interface, ttl time.Duration, clk clock.PassiveClock) *Authorizer {
	if ttl == 0 {
		ttl = 10 * time.Second
	}
	if clk == nil {
		clk = clock.RealClock{}
	}
	return &Authorizer{client: client, ttl: ttl, clock: clk, cache: map[[32]byte]verdict{}}
}

// Authorize answers http.StatusOK when the token's user may get path,
// StatusUnauthorized for a token the apiserver does not accept and
// StatusForbidden for a user without the right; reason says why not. An
// error means the apiserver could not be asked (not cached).
func (a *Authorizer) Authorize(ctx context.Context, token, path string) (code int, reason string, err error) {
	key := sha256.Sum256([]byte(token + "\x00" + path))
	a.mu.Lock()
	v, ok := a.cache[key]
	a.mu.Unlock()
	if ok && a.clock.Now().Before(v.until) {
		return v.code, v.reason, nil
	}
	v, err = a.review(ctx, token, path)
	if err != nil {
		return 0, "", err
	}
	v.until = a.clock.Now().Add(a.ttl)
	a.mu.Lock()
	if len(a.cache) >= maxCached {
		a.cache = map[[32]byte]verdict{}
	}
	a.cache[key] = v
	a.mu.Unlock()
	return v.code, v.reason, nil
}

func (a *Authorizer) review(ctx context.Context, token, path string) (verdict, error) {
	tr, err := a.client.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{
		Spec: authenticationv1.TokenReviewSpec{Token: token}}, metav1.CreateOptions{})
	if err != nil {
		return verdict{}, fmt.Errorf("kubeauth: token review: %w", err)
	}
	if !tr.Status.Authenticated {
		return verdict{code: http.StatusUnauthorized, reason: "the token is not valid: " + tr.Status.Error}, nil
	}
	u := tr.Status.User
	extra := map[string]authorizationv1.ExtraValue{}
	for k, vs := range u.Extra {
		extra[k] = authorizationv1.ExtraValue(vs)
	}
	sar, err := a.client.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{
		Spec: authorizationv1.SubjectAccessReviewSpec{User: u.Username, Groups: u.Groups, UID: u.UID, Extra: extra,
			NonResourceAttributes: &authorizationv1.NonResourceAttributes{Path: path, Verb: "get"}}}, metav1.CreateOptions{})
	if err != nil {
		return verdict{}, fmt.Errorf("kubeauth: access review: %w", err)
	}
	if !sar.Status.Allowed {
		return verdict{code: http.StatusForbidden, reason: fmt.Sprintf("%s may not get %s (RBAC nonResourceURLs)", u.Username, path)}, nil
	}
	return verdict{code: http.StatusOK}, nil
}
