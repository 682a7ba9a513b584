package main

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/meshd/meshd/ca/rootca"
	"github.com/meshd/meshd/internal/testenv"
)

// TestLeaderElection: two replicas on the real apiserver; exactly one holds
// the Lease and runs the singletons. A root rotation is asked for; the
// leader steps it to the bundle phase and is then killed mid-rotation; the
// other replica takes the Lease and resumes the rotation from the state in
// the CA Secret (to the signing phase).
func TestLeaderElection(t *testing.T) {
	env := testenv.Kube(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const ns = "meshd-ha"
	if err := env.FreshNamespace(ctx, ns); err != nil {
		t.Fatal(err)
	}
	type replica struct {
		debug  string
		cancel context.CancelFunc
		done   chan error
	}
	start := func() *replica {
		rctx, rcancel := context.WithCancel(ctx)
		r := &replica{debug: freeAddr(t), cancel: rcancel, done: make(chan error, 1)}
		go func() {
			r.done <- run(rctx, []string{"serve", "--kubeconfig", env.Kubeconfig, "--namespace", ns, "--xds-addr", freeAddr(t),
				"--debug-addr", r.debug, "--lease-duration", "3s", "--root-rotation-grace", "5s", "--cert-ttl", "1m"}, io.Discard, io.Discard)
		}()
		waitHTTP(t, "http://"+r.debug+"/readyz")
		return r
	}
	a, b := start(), start()
	defer func() {
		for _, r := range []*replica{a, b} {
			r.cancel()
			<-r.done
		}
	}()
	isLeader := func(r *replica) bool {
		return strings.Contains(getBody(t, "http://"+r.debug+"/metrics"), "\nmeshd_leader 1")
	}
	var leader, follower *replica
	if err := wait.PollUntilContextCancel(ctx, 200*time.Millisecond, true, func(context.Context) (bool, error) {
		la, lb := isLeader(a), isLeader(b)
		if la == lb {
			return false, nil
		}
		leader, follower = a, b
		if lb {
			leader, follower = b, a
		}
		return true, nil
	}); err != nil {
		t.Fatal("never exactly one leader")
	}
	secrets := env.Client.CoreV1().Secrets(ns)
	s, err := secrets.Get(ctx, "meshd-ca", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	s.Annotations = map[string]string{rootca.AnnotationRotate: "true"}
	if _, err := secrets.Update(ctx, s, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	phase := func() string {
		s, err := secrets.Get(ctx, "meshd-ca", metav1.GetOptions{})
		if err != nil {
			return ""
		}
		return string(s.Data[rootca.KeyPhase])
	}
	waitPhase := func(want string) {
		t.Helper()
		if err := wait.PollUntilContextCancel(ctx, 200*time.Millisecond, true, func(context.Context) (bool, error) { return phase() == want, nil }); err != nil {
			t.Fatalf("rotation never reached phase %q (at %q)", want, phase())
		}
	}
	waitPhase(string(rootca.PhaseBundle))
	// Kill the leader mid-rotation.
	leader.cancel()
	<-leader.done
	leader.done <- nil // for the deferred clean-up
	if err := wait.PollUntilContextCancel(ctx, 200*time.Millisecond, true, func(context.Context) (bool, error) { return isLeader(follower), nil }); err != nil {
		t.Fatal("the other replica never took the Lease")
	}
	waitPhase(string(rootca.PhaseSigning))
	if l, err := env.Client.CoordinationV1().Leases(ns).Get(ctx, leaseName, metav1.GetOptions{}); err != nil || l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity == "" {
		t.Errorf("lease %v %v", l, err)
	}
}
