package k8s

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/utils/clock"

	"github.com/meshd/meshd/model"
)

// ConditionAccepted is the policy condition meshd writes: True when the
// policy is enforced (reason Accepted, or HTTPRuleOnTCPPort when some of
// its HTTP conditions fail closed on TCP ports), False when it is not
// (reason InvalidAuthorizationPolicy, the message says why).
const ConditionAccepted = "Accepted"

// PolicyStatus writes the status of AuthorizationPolicies: the Accepted
// condition and how many pods the policy selects. Update hands it the
// latest verdicts; Start writes those that differ from what the objects
// hold, in the background (a slow apiserver never holds up a publish).
type PolicyStatus struct {
	client dynamic.Interface
	log    *slog.Logger
	clock  clock.PassiveClock

	mu      sync.Mutex
	pending map[string]*unstructured.Unstructured
	wake    chan struct{}
}

// NewPolicyStatus writes through client; clk is the clock for condition
// transition times (nil: the real clock).
func NewPolicyStatus(client dynamic.Interface, log *slog.Logger, clk clock.PassiveClock) *PolicyStatus {
	if clk == nil {
		clk = clock.RealClock{}
	}
	return &PolicyStatus{client: client, log: log, clock: clk, pending: map[string]*unstructured.Unstructured{}, wake: make(chan struct{}, 1)}
}

// Update computes each policy's status from the model and the problems of
// the same conversion, and queues the ones that changed. It does not
// mutate the policies (informer copies).
func (s *PolicyStatus) Update(policies []*unstructured.Unstructured, snap *model.Snapshot, problems []Problem) {
	selected := map[string]int{}
	for _, w := range snap.Workloads {
		for _, p := range w.Policies {
			selected[p.Key()]++
		}
	}
	byPolicy := map[string][]Problem{}
	for _, p := range problems {
		if p.Kind == PolicyKind {
			byPolicy[p.Namespace+"/"+p.Name] = append(byPolicy[p.Namespace+"/"+p.Name], p)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, u := range policies {
		key := u.GetNamespace() + "/" + u.GetName()
		want := policyCondition(u.GetGeneration(), selected[key], byPolicy[key])
		if sameStatus(u, want, selected[key]) {
			delete(s.pending, key)
			continue
		}
		out := u.DeepCopy()
		cond := map[string]any{"type": want.Type, "status": string(want.Status), "reason": want.Reason, "message": want.Message,
			"observedGeneration": want.ObservedGeneration, "lastTransitionTime": s.transition(u, want).UTC().Format(time.RFC3339)}
		out.Object["status"] = map[string]any{"conditions": []any{cond}, "workloads": int64(selected[key])}
		s.pending[key] = out
	}
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

// policyCondition is the Accepted condition a policy should carry.
func policyCondition(generation int64, pods int, problems []Problem) metav1.Condition {
	c := metav1.Condition{Type: ConditionAccepted, Status: metav1.ConditionTrue, Reason: "Accepted", ObservedGeneration: generation,
		Message: fmt.Sprintf("enforced on the %d pods it selects", pods)}
	if pods == 0 {
		c.Message = "valid, but it selects no pod"
	}
	var msgs []string
	for _, p := range problems {
		if p.Reason == PolicyInvalid {
			return metav1.Condition{Type: ConditionAccepted, Status: metav1.ConditionFalse, Reason: PolicyInvalid, ObservedGeneration: generation, Message: p.Message}
		}
		c.Reason = p.Reason
		msgs = append(msgs, p.Message)
	}
	if len(msgs) > 0 {
		c.Message = fmt.Sprintf("enforced on the %d pods it selects; %s", pods, strings.Join(msgs, "; "))
	}
	return c
}

func sameStatus(u *unstructured.Unstructured, want metav1.Condition, pods int) bool {
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	n, _, _ := unstructured.NestedInt64(u.Object, "status", "workloads")
	if len(conds) != 1 || n != int64(pods) {
		return false
	}
	c, _ := conds[0].(map[string]any)
	gen, _, _ := unstructured.NestedInt64(c, "observedGeneration")
	return c["type"] == want.Type && c["status"] == string(want.Status) && c["reason"] == want.Reason && c["message"] == want.Message && gen == want.ObservedGeneration
}

// transition keeps the condition's last transition time unless its status
// changes.
func (s *PolicyStatus) transition(u *unstructured.Unstructured, want metav1.Condition) time.Time {
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		m, _ := c.(map[string]any)
		if m["type"] != want.Type || m["status"] != string(want.Status) {
			continue
		}
		if ts, ok := m["lastTransitionTime"].(string); ok {
			if t, err := time.Parse(time.RFC3339, ts); err == nil {
				return t
			}
		}
	}
	return s.clock.Now()
}

// Start writes queued statuses until ctx ends. A write that fails is
// logged and dropped: the next change of the object's spec brings it back.
// A write that conflicts with another (the object changed since it was
// listed) is made again on the object as it now is when its spec is the
// same (its generation): a write of the status alone, another replica's or
// anyone's, is no change meshd rebuilds for (see policyNotifier).
func (s *PolicyStatus) Start(ctx context.Context) error {
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.wake:
		}
		s.mu.Lock()
		batch := s.pending
		s.pending = map[string]*unstructured.Unstructured{}
		s.mu.Unlock()
		for key, u := range batch {
			err := s.write(ctx, u)
			if apierrors.IsConflict(err) {
				err = s.writeAgain(ctx, u)
			}
			if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) && ctx.Err() == nil {
				s.log.Warn("k8s: policy status not written", "policy", key, "error", err)
			}
		}
	}
}

func (s *PolicyStatus) write(ctx context.Context, u *unstructured.Unstructured) error {
	_, err := s.client.Resource(PolicyResource).Namespace(u.GetNamespace()).UpdateStatus(ctx, u, metav1.UpdateOptions{FieldManager: "meshd"})
	return err
}

// writeAgain writes u's status on the policy as the apiserver now has it,
// if that is the generation u's status was worked out for and its status
// differs (a later spec brings its own status through a batch).
func (s *PolicyStatus) writeAgain(ctx context.Context, u *unstructured.Unstructured) error {
	now, err := s.client.Resource(PolicyResource).Namespace(u.GetNamespace()).Get(ctx, u.GetName(), metav1.GetOptions{})
	if err != nil {
		return err
	}
	if now.GetGeneration() != u.GetGeneration() || sameVerdict(now, u) {
		return nil
	}
	now.Object["status"] = u.Object["status"]
	return s.write(ctx, now)
}

// sameVerdict reports whether two policies' statuses say the same, their
// transition times aside (two replicas may each have set theirs).
func sameVerdict(a, b *unstructured.Unstructured) bool {
	conds, _, _ := unstructured.NestedSlice(b.Object, "status", "conditions")
	n, _, _ := unstructured.NestedInt64(b.Object, "status", "workloads")
	if len(conds) != 1 {
		return false
	}
	c, _ := conds[0].(map[string]any)
	gen, _, _ := unstructured.NestedInt64(c, "observedGeneration")
	str := func(k string) string { v, _ := c[k].(string); return v }
	want := metav1.Condition{Type: str("type"), Status: metav1.ConditionStatus(str("status")), Reason: str("reason"), Message: str("message"), ObservedGeneration: gen}
	return sameStatus(a, want, int(n))
}
